"""Bridge worker process: pjsua2 SIP/RTP on one side, the local participant channel on the other.

Run as ``python -m bridge.worker --sip-port 5060 --rtp-start 10000 --rtp-end 10100 --control-fd 3``
(normally by :class:`bridge.service.supervisor.WorkerSupervisor`). See docs/bridge.md.

This module is the orchestration: pjsua2 callbacks (:class:`WorkerCall`, :class:`WorkerAccount`)
become :class:`~bridge.worker.call.CallMachine` events, and the machine's actions are carried out
on the SIP call (:mod:`bridge.worker.endpoint`), the room leg (:mod:`bridge.worker.room_leg`) and
the control channel (:mod:`bridge.worker.control_client`).

Threads: every SIP callback and every pjsua2 API call happens in the asyncio thread. Only the
AudioMediaPort callbacks run on the conference-bridge clock thread (null sound device); they touch
deques and, once per conference tick, wake the asyncio loop (:meth:`Worker._clock_wake`), which
then polls pjsua and pumps every call's media in one batch (:meth:`Worker._service`). Without
calls a :data:`POLL_S` timer polls pjsua instead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import pjsua2 as pj

import bridge.control as control
from bridge.worker.call import (
    Action,
    Answer,
    Bye,
    CallMachine,
    JoinRoom,
    LeaveRoom,
    Phase,
    PlayPrompt,
    Reject,
    SendPin,
    Status,
)
from bridge.worker.control_client import ControlClient
from bridge.worker.endpoint import (
    SipEndpoint,
    WorkerOptions,
    add_headers,
    codec_rate,
    stream_codec,
)
from bridge.worker.outbound import OutboundDialer
from bridge.worker.port import BridgePort
from bridge.worker.prompt import pin_prompt
from bridge.worker.room_leg import RoomLeg, RoomLegEvents
from bridge.worker.sdes import parse_offer
from bridge.worker.sipmsg import (
    SipParseError,
    get_header,
    parse_headers,
    parse_name_addr,
    via_transport,
)
from bridge.worker.source import true_source
from bridge.worker.tick import TickGate
from bridge.worker.wake import sip_socket_fds

log = logging.getLogger("bridge.worker.worker")

#: Poll period of libHandleEvents when no conference tick woke the loop for that long (no call
#: has a bridge port yet). With calls up the clock wakes the loop every 20 ms instead.
POLL_S = 0.020
#: Poll period with no call at all, when SIP arriving on pjsua's sockets wakes the loop
#: (bridge/worker/wake.py): only pjsua's timers (retransmissions, graveyard) wait for it.
IDLE_POLL_S = 0.1
#: Period of the housekeeping tick (call timers, RTP counters, releasing finished pj objects).
TICK_S = 0.25
#: How often Python hands the GIL over: short, so the bridge clock thread is never held up by
#: a long-running Python thread for more than a fraction of a 20 ms frame.
SWITCH_INTERVAL_S = 0.0005


def _prompt_frame(prompt: deque[bytes], silence: bytes) -> bytes:
    return prompt.popleft() if prompt else silence


def jbuf_counters(state: Any) -> dict[str, int]:
    """A pjmedia ``JbufState``'s counters for the end-of-call line: frames lost (never arrived),
    discarded (late or surplus), gets while empty, the current prefetch (frames) and the delay."""
    return {
        "lost": int(state.lost),
        "discard": int(state.discard),
        "empty": int(state.empty),
        "prefetch": int(state.prefetch),
        "avg_delay_ms": int(state.avgDelayMsec),
        "max_delay_ms": int(state.maxDelayMsec),
    }


@dataclass
class CallRecord:
    """Everything the worker holds for one call (pj objects are released only from the loop).

    ``pj_call`` is a weak proxy: the endpoint alone owns the ``pj.Call``
    (``SipEndpoint.live_calls``), so closures and reference cycles around a record can never
    decide when it is destroyed.
    """

    pj_call: WorkerCall
    machine: CallMachine
    invite: control.InviteRequest
    #: Set right after construction (its callbacks need the record).
    leg: RoomLeg = field(init=False)
    port: BridgePort | None = None
    media_index: int = -1
    codec: str = ""
    call_key: int = 0
    #: Prompt frames (PCM at the bridge clock rate) still to play to the phone during PIN entry.
    prompt: deque[bytes] = field(default_factory=deque)
    #: The phone stream's pjmedia jitter-buffer counters as last polled (end-of-call line).
    jbuf: dict[str, int] = field(default_factory=dict)


class WorkerCall(pj.Call):  # type: ignore[misc]
    """pjsua2 director: forwards callbacks (asyncio thread) to the worker."""

    def __init__(self, worker: Worker, acc: pj.Account, call_id: int) -> None:
        super().__init__(acc, call_id)
        self.worker = worker

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        self.worker.on_call_state(self)

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        self.worker.on_call_media_state(self)

    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802
        self.worker.on_phone_dtmf(self, prm.digit)

    def onCallTransferStatus(self, prm: Any) -> None:  # noqa: N802
        rec = self.worker.calls.get(self.getId())
        if rec is not None:  # transfers are bridge/worker/outbound.py's
            self.worker.outbound.on_inbound_transfer_status(rec.invite.call_id, prm)


class WorkerAccount(pj.Account):  # type: ignore[misc]
    """pjsua2 director of the worker's one account: hands new INVITEs to the worker."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        self.worker.on_incoming_call(self, prm)


class Worker:
    """One pjsua2 endpoint serving up to ``max_calls`` calls; see the module docstring."""

    def __init__(self, opts: WorkerOptions) -> None:
        self.opts = opts
        self.endpoint = SipEndpoint(opts)
        self.control = ControlClient(self._on_control, self._stop_soon)
        self.calls: dict[int, CallRecord] = {}
        self._stop = asyncio.Event()
        #: Outbound calls and transfers (bridge/worker/outbound.py).
        self.outbound = OutboundDialer(self.endpoint, self.control, opts, self._active_call)
        self.outbound.on_rx = self._clock_wake
        self.outbound.ports_changed = self._ports_changed
        self._loop: asyncio.AbstractEventLoop | None = None
        #: A wake-up from the clock thread is queued and not yet run (read/written under the GIL).
        self._wake_pending = False
        #: Ports registered with the bridge, and when the clock thread wakes the loop for them.
        self._gate = TickGate()
        self._last_tick = 0.0
        #: pjsua's SIP sockets watched by the loop (empty: not found, poll every POLL_S).
        self._wake_fds: list[int] = []
        self._poll_timer: asyncio.TimerHandle | None = None
        self._poll_period = POLL_S
        #: Clock-driven service runs (for tests and the end-of-run log).
        self.services = 0

    # --- control channel ----------------------------------------------------------------------
    def _on_control(self, msg: control.Message) -> None:
        if isinstance(msg, control.Shutdown):
            self._stop.set()
        elif self.outbound.handle(msg):
            pass

    def _stop_soon(self) -> None:
        # Supervisor gone: nobody can route calls any more, exit cleanly.
        self._stop.set()

    def _active_call(self, call_id: str) -> tuple[WorkerCall, RoomLeg] | None:
        """The answered inbound call with SIP Call-ID ``call_id`` and its room leg (transfers)."""
        for rec in self.calls.values():
            if rec.invite.call_id == call_id and rec.machine.phase is Phase.ACTIVE:
                return rec.pj_call, rec.leg
        return None

    # --- SIP events (asyncio thread, from libHandleEvents) ------------------------------------
    def on_incoming_call(self, acc: WorkerAccount, prm: Any) -> None:
        """A new INVITE: describe it to the supervisor and wait for its decision."""
        call = WorkerCall(self, acc, prm.callId)
        self.endpoint.adopt(call)
        rdata = prm.rdata
        try:
            _start, headers = parse_headers(str(rdata.wholeMsg))
            frm = parse_name_addr(get_header(headers, "From") or "")
            to = parse_name_addr(get_header(headers, "To") or "")
        except SipParseError as exc:
            log.info("rejecting INVITE with unparsable headers: %s", exc.message)
            self.endpoint.reject_now(call, 400, "Bad Request")
            self.control.send(
                control.CallState(
                    call_id="",
                    state="rejected",
                    reason="Bad Request",
                    status=400,
                    cause="bad-request",
                )
            )
            return
        # Behind the SIP front the packet comes from Kamailio; the caller's own address is in
        # X-Roomline-Source, trusted only from the front (bridge/worker/source.py).
        source, headers = true_source(str(rdata.srcAddress), headers, self.opts.front_sources)
        invite = control.InviteRequest(
            id=self.control.new_id(),
            call_id=get_header(headers, "Call-ID") or "",
            from_user=frm.user,
            from_host=frm.host,
            from_tag=frm.tag,
            to_user=to.user,
            to_host=to.host,
            src_ip=source.ip,
            src_port=source.port,
            user_agent=get_header(headers, "User-Agent") or "",
            transport=source.transport or via_transport(get_header(headers, "Via")),
            headers=headers,
            authorization=get_header(headers, "Proxy-Authorization"),
        )
        rec = CallRecord(
            cast(WorkerCall, weakref.proxy(call)),
            # The offer's SRTP side, checked against the trunk's media_encryption (sdes.py).
            CallMachine(invite.call_id, time.monotonic(), parse_offer(str(rdata.wholeMsg))),
            invite,
            call_key=id(call),
        )
        rec.leg = RoomLeg(self._leg_events(rec), request_id=invite.id, rate=self.opts.bridge_rate)
        self.calls[prm.callId] = rec
        asyncio.get_running_loop().create_task(self._decide(rec))

    def _leg_events(self, rec: CallRecord) -> RoomLegEvents:
        def dtmf(digit: str) -> None:
            if rec.machine.phase is not Phase.ACTIVE:
                return
            prm = pj.CallSendDtmfParam()
            prm.digits = digit
            prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
            try:
                rec.pj_call.sendDtmf(prm)
            except pj.Error as exc:
                log.info("cannot send DTMF: %s", exc.info())

        return RoomLegEvents(
            joined=lambda: self._run(rec, rec.machine.on_room_joined(time.monotonic())),
            audio=lambda: self._run(rec, rec.machine.on_room_audio(time.monotonic())),
            left=lambda reason: self._run(rec, rec.machine.on_room_left(reason)),
            dtmf=dtmf,
        )

    async def _decide(self, rec: CallRecord) -> None:
        """Ask the supervisor where the INVITE goes (503 if it does not answer in time)."""
        fallback = control.InviteResult(id=rec.invite.id, status=503)
        res = await self.control.request(rec.invite, fallback)
        if rec.machine.phase is Phase.ENDED:
            return  # caller cancelled meanwhile
        if res is fallback:
            self._run(rec, rec.machine.on_no_decision())
            return
        rec.leg.identity = res.identity
        self._run(rec, rec.machine.on_decision(res, time.monotonic()))

    async def _check_pin(self, rec: CallRecord, digits: str) -> None:
        """Ask the supervisor whether the PIN is right (503 if it does not answer in time)."""
        req_id = self.control.new_id()
        call_id = rec.invite.call_id
        # The digits are the room's secret: log only how many there were.
        log.info("call %s: PIN entered (%d digits)", call_id, len(digits))
        res = await self.control.request(
            control.PinEntered(id=req_id, call_id=call_id, digits=digits),
            control.PinResult(id=req_id, call_id=call_id, status=503, reason="no pin decision"),
        )
        if res.status == 200:
            rec.leg.identity = res.identity
        self._run(rec, rec.machine.on_pin_result(res, time.monotonic()))

    def on_call_state(self, call: WorkerCall) -> None:
        """A call ended on the SIP side (BYE, CANCEL, failure): finish it and release it."""
        ci = call.getInfo()
        rec = self.calls.get(ci.id)
        if rec is None or ci.state != pj.PJSIP_INV_STATE_DISCONNECTED:
            return
        acts = rec.machine.on_sip_disconnected(ci.lastStatusCode, ci.lastReason)
        self.outbound.inbound_call_ended(rec.invite.call_id)
        self._run(rec, acts)
        self._release(ci.id)

    def on_call_media_state(self, call: WorkerCall) -> None:
        """The call's media changed (answer, hold, resume): (re)connect the bridge port."""
        # Keep the CallInfo alive while iterating its media: the SWIG vector belongs to it.
        ci = call.getInfo()
        rec = self.calls.get(ci.id)
        if rec is None:
            return
        now = time.monotonic()
        for mi in ci.media:
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            held = mi.status in (pj.PJSUA_CALL_MEDIA_REMOTE_HOLD, pj.PJSUA_CALL_MEDIA_NONE)
            rec.machine.on_hold(held, now)
            if mi.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                am = call.getAudioMedia(mi.index)
                if rec.port is None:
                    rec.port = BridgePort(f"br{ci.id}", self.opts.bridge_rate, self._clock_wake)
                    self._gate.ports += 1
                # (Re)connect both ways: after a re-INVITE (hold/resume, session refresh) the
                # stream may be recreated; startTransmit is idempotent for an existing link.
                am.startTransmit(rec.port)
                rec.port.startTransmit(am)
                rec.media_index = mi.index
                if not rec.codec:
                    rec.codec = stream_codec(call, mi.index)
                    rec.leg.set_phone_rate(codec_rate(rec.codec))
            break

    def on_phone_dtmf(self, call: WorkerCall, digit: str) -> None:
        """A key the phone pressed: part of a PIN while one is collected, else for the room."""
        rec = self.calls.get(call.getId())
        if rec is None:
            return
        if rec.machine.phase in (Phase.PIN, Phase.PIN_CHECK):
            # The PIN is for the bridge, not the room (there is no room channel yet anyway).
            self._run(rec, rec.machine.on_pin_digit(digit, time.monotonic()))
            return
        rec.leg.send_dtmf(digit)

    # --- action execution ---------------------------------------------------------------------
    def _run(self, rec: CallRecord, acts: list[Action]) -> None:
        for act in acts:
            try:
                self._do(rec, act)
            except pj.Error as exc:
                log.warning("pjsua2 error on %s: %s", type(act).__name__, exc.info())

    def _do(self, rec: CallRecord, act: Action) -> None:
        if isinstance(act, Answer):
            prm = pj.CallOpParam(True)
            prm.statusCode = act.status
            if act.status == 200 and rec.machine.decision is not None:
                add_headers(prm, rec.machine.decision.answer_headers())
            rec.pj_call.answer(prm)
        elif isinstance(act, Reject):
            prm = pj.CallOpParam()
            prm.statusCode = 403 if act.drop and act.status < 300 else act.status
            prm.reason = act.reason if not act.drop else ""
            add_headers(prm, act.headers)
            self._report(rec, "rejected", act.reason, act.status, act.cause)
            rec.pj_call.hangup(prm)
        elif isinstance(act, Bye):
            rec.pj_call.hangup(pj.CallOpParam())
        elif isinstance(act, JoinRoom):
            res = rec.machine.decision
            assert res is not None  # JoinRoom only follows an accepting decision
            asyncio.get_running_loop().create_task(self._join(rec, res))
        elif isinstance(act, LeaveRoom):
            rec.leg.leave()
        elif isinstance(act, PlayPrompt):
            rec.prompt.extend(pin_prompt(self.opts.bridge_rate))
        elif isinstance(act, SendPin):
            rec.prompt.clear()
            asyncio.get_running_loop().create_task(self._check_pin(rec, act.digits))
        elif isinstance(act, Status):
            rec.leg.set_call_status(act.status)
            self._report(rec, act.status, act.reason, 200 if act.status == "active" else 0)

    async def _join(self, rec: CallRecord, res: control.InviteResult) -> None:
        if await rec.leg.join(res.socket, res.token, res.room):
            if rec.machine.phase is Phase.ENDED:
                rec.leg.close()  # the call ended while we connected

    def _report(
        self, rec: CallRecord, state: str, reason: str, status: int, cause: str = ""
    ) -> None:
        res = rec.machine.decision
        active = sum(1 for r in self.calls.values() if r.machine.phase is not Phase.ENDED)
        self.control.send(
            control.CallState(
                call_id=rec.invite.call_id,
                state=state,
                reason=reason,
                status=status,
                codec=rec.codec,
                room=res.room if res else "",
                identity=res.identity if res else "",
                active_calls=active,
                cause=cause,
            )
        )

    # --- periodic work ------------------------------------------------------------------------
    def _pump_media(self) -> None:
        """Move audio between every call's bridge port and its room leg."""
        for rec in self.calls.values():
            port = rec.port
            if port is None:
                continue
            if rec.machine.phase is Phase.ACTIVE:
                rec.leg.pump(port)
                continue
            # Early media (pjsua puts the SDP answer in the 180): drop what the phone sends
            # while ringing instead of bursting up to 2 s of stale audio into the room later.
            port.produce = None
            port.rx.clear()
            if rec.machine.phase in (Phase.PIN, Phase.PIN_CHECK):
                # Answered for PIN entry: the prompt, then silence (no underrun clicks).
                port.fill(functools.partial(_prompt_frame, rec.prompt, port.silence))

    def _tick(self) -> None:
        now = time.monotonic()
        for rec in list(self.calls.values()):
            if rec.media_index >= 0 and rec.machine.phase is Phase.ACTIVE:
                try:
                    st = rec.pj_call.getStreamStat(rec.media_index)
                    rec.machine.on_rx_packets(st.rtcp.rxStat.pkt, now)
                    rec.jbuf = jbuf_counters(st.jbuf)
                except pj.Error:
                    pass
            self._run(rec, rec.machine.tick(now))
        self.outbound.tick(now)
        self.endpoint.sweep(now)

    def _release(self, pj_id: int) -> None:
        rec = self.calls.pop(pj_id, None)
        if rec is None:
            return
        if rec.port is not None:
            # Destroy the pjmedia side while we still hold the port (see bridge/worker/port.py:
            # letting the last reference drop freed it twice when a bridge callback raced in).
            rec.port.close()
            self._gate.ports -= 1
            log.info(
                "call %s ended: port rx=%d tx=%d underruns=%d produced=%d; phone jitter buffer %s;"
                " room inputs %s",
                rec.invite.call_id,
                rec.port.rx_frames,
                rec.port.tx_frames,
                rec.port.underruns,
                rec.port.produced,
                rec.jbuf,
                rec.leg.input_stats(),
            )
            log.info("%s", self._gate.stats.log_line())
        # pjsua may report DISCONNECTED synchronously inside our own hangup(), before the
        # LeaveRoom action of the same batch runs: leave here so the room always hears it.
        rec.leg.leave()
        self.endpoint.bury([rec.port])
        self.endpoint.bury_call(rec.call_key)

    def _ports_changed(self, delta: int) -> None:
        """An outbound call's port was registered with the bridge (+1) or closed (-1)."""
        self._gate.ports += delta

    def _clock_wake(self) -> None:
        """Clock thread, after a port received its frame: run :meth:`_service` once this tick.

        The wake-up is sent after the *last* port of the tick (the bridge delivers to every port
        in one pass), so the loop does not compete for the GIL with the clock thread while it is
        still serving the other ports (bridge/worker/tick.py). Should a port miss a tick, the
        :meth:`_poll` timer services the loop anyway.
        """
        if not self._gate.delivered(time.monotonic()) or self._wake_pending:
            return
        loop = self._loop
        if loop is None:
            return
        self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._service)
        except RuntimeError:  # loop closed during shutdown
            self._wake_pending = False

    def _service(self) -> None:
        """Poll pjsua and pump every call's media (one batch per conference tick)."""
        self._wake_pending = False
        self.services += 1
        self.endpoint.handle_events()
        self._pump_media()
        self.outbound.pump()
        now = time.monotonic()
        self._gate.serviced(now)
        if now - self._last_tick >= TICK_S:
            self._last_tick = now
            self._tick()
        if self._poll_period != POLL_S and not self._idle():
            self._arm_poll(POLL_S)  # a call arrived while the slow poll was armed

    def _idle(self) -> bool:
        """No call, outbound call, transfer or SIP connection: only a watched SIP socket can give
        the loop work."""
        return not (
            self.calls
            or self.outbound.calls
            or self.outbound.inbound_transfers
            or self.endpoint.connections
        )

    def _poll(self) -> None:
        """Timer: service pjsua if nothing else did lately, then re-arm at the right period."""
        self._poll_timer = None
        if self._gate.timer_due(time.monotonic(), self._poll_period):
            self._service()
        if self._poll_timer is None:
            self._arm_poll(IDLE_POLL_S if self._wake_fds and self._idle() else POLL_S)

    def _arm_poll(self, period: float) -> None:
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        self._poll_period = period
        assert self._loop is not None
        self._poll_timer = self._loop.call_later(period, self._poll)

    def _watch_sip_sockets(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the loop when SIP arrives, so that an idle worker can poll slowly."""
        self._wake_fds = sip_socket_fds(self.opts.sip_port)
        for fd in self._wake_fds:
            loop.add_reader(fd, self._service)
        if not self._wake_fds:
            log.info(
                "SIP sockets of port %d not found: polling every %.0f ms",
                self.opts.sip_port,
                POLL_S * 1000,
            )

    async def _shutdown(self) -> None:
        """Hang up, finish the tasks that hold call records, then tear pjsua down."""
        self.endpoint.hangup_all()
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for rec in self.calls.values():
            if rec.port is not None:
                rec.port.close()
            rec.leg.close()
        self.calls.clear()
        self.outbound.close()
        self.endpoint.destroy()

    async def run(self) -> None:
        """Start pjsua and the control channel, poll until stopped, then tear everything down."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.endpoint.start(lambda: WorkerAccount(self))
        if self.opts.control_fd >= 0:
            await self.control.open(self.opts.control_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.control.send(
            control.Ready(
                sip_port=self.opts.sip_port, max_calls=self.endpoint.max_calls, pid=os.getpid()
            )
        )
        self._watch_sip_sockets(loop)
        self._arm_poll(POLL_S)
        try:
            await self._stop.wait()
        finally:
            if self._poll_timer is not None:
                self._poll_timer.cancel()
            for fd in self._wake_fds:
                loop.remove_reader(fd)
            await self._shutdown()

"""Bridge worker process: pjsua2 SIP/RTP on one side, the local participant channel on the other.

Run as ``python -m bridge.worker --sip-port 5060 --rtp-start 10000 --rtp-end 10100 --control-fd 3``
(normally by :class:`bridge.service.supervisor.WorkerSupervisor`). See docs/bridge.md.

Threads: pjsua2 runs with ``threadCnt=0, mainThreadOnly=True``; the asyncio loop polls
``libHandleEvents(0)`` every 10 ms, so every SIP callback and every pjsua2 API call happens in the
asyncio thread (no pjproject#3125-style GIL deadlocks, no thread registration, simple state). Only
the AudioMediaPort callbacks run on the conference-bridge clock thread (null sound device), and
they only touch deques (bridge/worker/port.py).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import pjsua2 as pj
from livekit.protocol import models, rtc

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
from bridge.worker.dtmf import DtmfError, digit_to_code
from bridge.worker.mixer import Mixer
from bridge.worker.port import FRAME_BYTES, BridgePort
from bridge.worker.prompt import pin_prompt
from bridge.worker.sipmsg import (
    SipParseError,
    get_header,
    parse_headers,
    parse_name_addr,
    via_transport,
)
from bridge.worker.source import true_source
from sfu.local.client import ChannelClient
from sfu.local.codec import OPUS_PT, OpusDecoder, OpusEncoder, RtpError, RtpPacketizer, parse_rtp

log = logging.getLogger("bridge.worker.worker")

#: Poll period of libHandleEvents and the media pump. 10 ms keeps tx topped up well inside the
#: bridge's 20 ms tick and adds ≤10 ms to SIP/RTP handling.
POLL_S = 0.010
#: Frames kept queued towards the bridge (3 × 20 ms): rides out a poll delayed by a busy host.
#: 2 frames saved ~20 ms one-way (bench/bench_sip.py) but, in a full test-suite run on the loaded
#: 2-core machine, the phone's audio after a hold/resume fell to 13.5 dB SNR (>30 dB otherwise):
#: robustness wins over those 20 ms.
TX_TARGET = 3
#: Room-side jitter buffer start level (frames). 2 saved another ~20 ms but under a loaded host
#: (SFU and SDK publisher stalls of 80+ ms) it re-buffered audibly in the full-stack tests.
ROOM_JITTER_TARGET = 3
#: How long the supervisor may take to decide on an INVITE before we answer 503.
DECISION_TIMEOUT_S = 10.0
#: Grace before dropping Python refs of a finished call (the bridge removes ports asynchronously).
GRAVEYARD_S = 2.0
#: ``sys.getrefcount`` of a finished Call held only by ``Worker.dead_calls`` while it is swept
#: (the list's tuple, the loop variable and the getrefcount argument).
_SOLE_OWNER_REFS = 3
_SILENCE = bytes(FRAME_BYTES)


@dataclass
class CallRecord:
    """Everything the worker holds for one call (pj objects are released only from the loop).

    ``pj_call`` is a weak proxy: the worker alone owns the ``pj.Call`` (``Worker.live_calls``),
    so closures and reference cycles around a record can never decide when it is destroyed.
    """

    pj_call: WorkerCall
    machine: CallMachine
    invite: control.InviteRequest
    port: BridgePort | None = None
    media_index: int = -1
    channel: ChannelClient | None = None
    mixer: Mixer = field(default_factory=lambda: Mixer(OpusDecoder, ROOM_JITTER_TARGET))
    encoder: OpusEncoder | None = None
    packetizer: RtpPacketizer = field(default_factory=RtpPacketizer)
    track_sid: str = ""
    identity: str = ""
    room_audio_seen: bool = False
    codec: str = ""
    request_id: int = 0
    call_key: int = 0
    #: Prompt frames (48 kHz PCM) still to play to the phone during PIN entry.
    prompt: deque[bytes] = field(default_factory=deque)


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


class WorkerAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        self.worker.on_incoming_call(self, prm)


@dataclass
class WorkerOptions:
    sip_port: int = 5060
    sip_host: str = "0.0.0.0"
    public_ip: str = ""
    rtp_start: int = 10000
    rtp_end: int = 20000
    control_fd: int = -1
    max_calls: int = 32
    tcp: bool = True
    log_level: int = 1
    # Front mode (bridge/service/workers.py): RTP binds/advertises apart from SIP (SIP stays on
    # loopback), and X-Roomline-Source is trusted only from these front ip:port sources.
    rtp_host: str | None = None  # None = sip_host
    rtp_public_ip: str | None = None  # None = public_ip
    front_sources: tuple[str, ...] = ()


class Worker:
    """One pjsua2 endpoint serving up to ``max_calls`` calls; see the module docstring."""

    def __init__(self, opts: WorkerOptions) -> None:
        self.opts = opts
        self.ep: pj.Endpoint | None = None
        self.acc: WorkerAccount | None = None
        self.calls: dict[int, CallRecord] = {}
        self.graveyard: list[tuple[float, list[Any]]] = []
        # Strong refs to every pj.Call (see _slot_reused for why their destruction is managed).
        self.live_calls: dict[int, WorkerCall] = {}
        self.dead_calls: list[tuple[float, WorkerCall]] = []
        self.max_calls = 0
        self._pending: dict[int, asyncio.Future[control.InviteResult]] = {}
        self._pending_pin: dict[int, asyncio.Future[control.PinResult]] = {}
        self._next_id = 1
        self._writer: asyncio.StreamWriter | None = None
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- pjsua2 setup / teardown --------------------------------------------------------------
    def start_endpoint(self) -> None:
        o = self.opts
        ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = o.max_calls
        cfg.uaConfig.userAgent = "roomline"
        cfg.logConfig.level = o.log_level
        cfg.logConfig.consoleLevel = o.log_level
        cfg.logConfig.msgLogging = o.log_level >= 4
        # 16 kHz bridge keeps G.722 wideband; the 48 kHz port is resampled in C (recipe §3.2).
        cfg.medConfig.clockRate = 16000
        cfg.medConfig.sndClockRate = 16000
        cfg.medConfig.audioFramePtime = 20
        cfg.medConfig.ptime = 20
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.noVad = True
        # Phone-leg jitter buffer: start at 1 frame and let pjmedia's adaptive prefetch grow to
        # 8 (160 ms) on a jittery trunk; the defaults held more on clean links (~10 ms p50).
        cfg.medConfig.jbInit = 1
        cfg.medConfig.jbMinPre = 1
        cfg.medConfig.jbMaxPre = 8
        ep.libInit(cfg)
        self.max_calls = detect_max_calls()

        for kind, enabled in ((pj.PJSIP_TRANSPORT_UDP, True), (pj.PJSIP_TRANSPORT_TCP, o.tcp)):
            if not enabled:
                continue
            tcfg = pj.TransportConfig()
            tcfg.port = o.sip_port
            if o.sip_host not in ("", "0.0.0.0"):
                tcfg.boundAddress = o.sip_host
            if o.public_ip:
                tcfg.publicAddress = o.public_ip
            ep.transportCreate(kind, tcfg)
        # REQUIRED: the null device's master port clocks the bridge (setNoDev → 0 frames).
        ep.audDevManager().setNullDev()
        for ci in ep.codecEnum2():
            ep.codecSetPriority(ci.codecId, 0)
        for codec_id, prio in (("G722/16000", 250), ("PCMU/8000", 240), ("PCMA/8000", 230)):
            ep.codecSetPriority(codec_id, prio)
        ep.libStart()
        self.ep = ep

        acfg = pj.AccountConfig()
        host = o.public_ip or (o.sip_host if o.sip_host not in ("", "0.0.0.0") else "127.0.0.1")
        acfg.idUri = f"sip:bridge@{host}:{o.sip_port}"
        # RFC 4028: answer session-timer refreshes so carriers that require them keep the call.
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
        acfg.callConfig.timerSessExpiresSec = 1800
        acfg.callConfig.timerMinSESec = 90
        mt = acfg.mediaConfig.transportConfig
        mt.port = o.rtp_start
        mt.portRange = max(0, o.rtp_end - o.rtp_start)
        rtp_public = o.public_ip if o.rtp_public_ip is None else o.rtp_public_ip
        rtp_host = o.sip_host if o.rtp_host is None else o.rtp_host
        if rtp_public:
            mt.publicAddress = rtp_public
        if rtp_host not in ("", "0.0.0.0"):
            mt.boundAddress = rtp_host
        acc = WorkerAccount(self)
        acc.create(acfg, True)
        self.acc = acc

    async def destroy_endpoint(self) -> None:
        """Teardown order from media-recipes §3.4.4: calls/ports/account before libDestroy."""
        if self.ep is None:
            return
        self.ep.hangupAllCalls()
        for _ in range(20):
            self.ep.libHandleEvents(10)
        # Tasks (decision waits, channel readers) hold CallRecords; finish them first.
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for rec in self.calls.values():
            if rec.port is not None:
                rec.port.active = False
            if rec.channel is not None:
                rec.channel.close()
        self.calls.clear()
        self.graveyard.clear()
        self.live_calls.clear()
        self.dead_calls.clear()
        if self.acc is not None:
            self.acc.shutdown()
            self.acc = None
        gc.collect()
        self.ep.libDestroy()
        self.ep = None

    # --- control channel ----------------------------------------------------------------------
    def send(self, msg: control.Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(control.encode(msg))

    async def _control_reader(self, reader: asyncio.StreamReader) -> None:
        try:
            async for msg in control.messages(reader):
                self._handle_control(msg)
        finally:
            # Supervisor gone: nobody can route calls any more, exit cleanly.
            self._stop.set()

    def _handle_control(self, msg: control.Message) -> None:
        if isinstance(msg, control.InviteResult):
            fut = self._pending.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, control.PinResult):
            pin_fut = self._pending_pin.pop(msg.id, None)
            if pin_fut is not None and not pin_fut.done():
                pin_fut.set_result(msg)
        elif isinstance(msg, control.Hangup):
            for rec in list(self.calls.values()):
                if rec.invite.call_id == msg.call_id:
                    self._run(rec, rec.machine.hangup(msg.reason or "hangup requested"))
        elif isinstance(msg, control.Shutdown):
            self._stop.set()

    # --- SIP events (asyncio thread, from libHandleEvents) ------------------------------------
    def on_incoming_call(self, acc: WorkerAccount, prm: Any) -> None:
        call = WorkerCall(self, acc, prm.callId)
        self.live_calls[id(call)] = call
        rdata = prm.rdata
        src = str(rdata.srcAddress)
        try:
            _start, headers = parse_headers(str(rdata.wholeMsg))
            frm = parse_name_addr(get_header(headers, "From") or "")
            to = parse_name_addr(get_header(headers, "To") or "")
        except SipParseError as exc:
            log.info("rejecting INVITE with unparsable headers: %s", exc.message)
            self._hangup_now(call, 400, "Bad Request")
            return
        source, headers = true_source(src, headers, self.opts.front_sources)
        req_id = self._next_id
        self._next_id += 1
        invite = control.InviteRequest(
            id=req_id,
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
            CallMachine(invite.call_id, time.monotonic()),
            invite,
        )
        rec.call_key = id(call)
        rec.request_id = req_id
        self.calls[prm.callId] = rec
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[control.InviteResult] = loop.create_future()
        self._pending[req_id] = fut
        self.send(invite)
        loop.create_task(self._await_decision(rec, fut))

    async def _await_decision(
        self, rec: CallRecord, fut: asyncio.Future[control.InviteResult]
    ) -> None:
        try:
            res = await asyncio.wait_for(fut, DECISION_TIMEOUT_S)
        except TimeoutError:
            self._pending.pop(rec.request_id, None)
            res = control.InviteResult(id=rec.request_id, status=503)
        if rec.machine.phase is Phase.ENDED:
            return  # caller cancelled meanwhile
        rec.identity = res.identity
        self._run(rec, rec.machine.on_decision(res, time.monotonic()))

    def _ask_pin(self, rec: CallRecord, digits: str) -> None:
        req_id = self._next_id
        self._next_id += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[control.PinResult] = loop.create_future()
        self._pending_pin[req_id] = fut
        # The digits are the room's secret: log only how many there were.
        log.info("call %s: PIN entered (%d digits)", rec.invite.call_id, len(digits))
        self.send(control.PinEntered(id=req_id, call_id=rec.invite.call_id, digits=digits))
        loop.create_task(self._await_pin(rec, req_id, fut))

    async def _await_pin(
        self, rec: CallRecord, req_id: int, fut: asyncio.Future[control.PinResult]
    ) -> None:
        try:
            res = await asyncio.wait_for(fut, DECISION_TIMEOUT_S)
        except TimeoutError:
            self._pending_pin.pop(req_id, None)
            res = control.PinResult(
                id=req_id, call_id=rec.invite.call_id, status=503, reason="no pin decision"
            )
        if res.status == 200:
            rec.identity = res.identity
        self._run(rec, rec.machine.on_pin_result(res, time.monotonic()))

    def _hangup_now(self, call: WorkerCall, status: int, reason: str) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = status
        prm.reason = reason
        try:
            call.hangup(prm)
        except pj.Error:
            pass
        self._bury_call(id(call))

    def on_call_state(self, call: WorkerCall) -> None:
        ci = call.getInfo()
        rec = self.calls.get(ci.id)
        if rec is None or ci.state != pj.PJSIP_INV_STATE_DISCONNECTED:
            return
        acts = rec.machine.on_sip_disconnected(ci.lastStatusCode, ci.lastReason)
        self._run(rec, acts)
        self._release(ci.id)

    def on_call_media_state(self, call: WorkerCall) -> None:
        ci = call.getInfo()  # keep alive while iterating media (recipe §3.4.7)
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
                    rec.port = BridgePort(f"br{ci.id}")
                # (Re)connect both ways: after a re-INVITE (hold/resume, session refresh) the
                # stream may be recreated; startTransmit is idempotent for an existing link.
                am.startTransmit(rec.port)
                rec.port.startTransmit(am)
                rec.media_index = mi.index
                if not rec.codec:
                    rec.codec = _stream_codec(call, mi.index)
            break

    def on_phone_dtmf(self, call: WorkerCall, digit: str) -> None:
        rec = self.calls.get(call.getId())
        if rec is None:
            return
        if rec.machine.phase in (Phase.PIN, Phase.PIN_CHECK):
            # The PIN is for the bridge, not the room (there is no room channel yet anyway).
            self._run(rec, rec.machine.on_pin_digit(digit, time.monotonic()))
            return
        if rec.channel is None:
            return
        try:
            code = digit_to_code(digit)
        except DtmfError:
            return
        pkt = models.DataPacket(
            kind=models.DataPacket.RELIABLE,
            participant_identity=rec.identity,
            sip_dtmf=models.SipDTMF(code=code, digit=digit.lower()),
        )
        rec.channel.send_data(pkt)

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
                _add_headers(prm, rec.machine.decision.headers)
            rec.pj_call.answer(prm)
        elif isinstance(act, Reject):
            prm = pj.CallOpParam()
            prm.statusCode = 403 if act.drop and act.status < 300 else act.status
            prm.reason = act.reason if not act.drop else ""
            _add_headers(prm, act.headers)
            self._report(rec, "rejected", act.reason, act.status)
            rec.pj_call.hangup(prm)
        elif isinstance(act, Bye):
            rec.pj_call.hangup(pj.CallOpParam())
        elif isinstance(act, JoinRoom):
            asyncio.get_running_loop().create_task(self._join(rec))
        elif isinstance(act, LeaveRoom):
            self._leave_room(rec)
        elif isinstance(act, PlayPrompt):
            rec.prompt.extend(pin_prompt())
        elif isinstance(act, SendPin):
            rec.prompt.clear()
            self._ask_pin(rec, act.digits)
        elif isinstance(act, Status):
            if rec.channel is not None:
                upd = rtc.UpdateParticipantMetadata(
                    attributes={"sip.callStatus": act.status}, request_id=rec.request_id
                )
                rec.channel.send_signal(rtc.SignalRequest(update_metadata=upd))
            self._report(rec, act.status, act.reason, 200 if act.status == "active" else 0)

    def _leave_room(self, rec: CallRecord) -> None:
        """SignalRequest leave, then close (idempotent: a closed channel ignores writes)."""
        if rec.channel is None:
            return
        leave = rtc.LeaveRequest(
            can_reconnect=False,
            reason=models.DisconnectReason.CLIENT_INITIATED,
            action=rtc.LeaveRequest.DISCONNECT,
        )
        rec.channel.send_signal(rtc.SignalRequest(leave=leave))
        rec.channel.close()

    def _report(self, rec: CallRecord, state: str, reason: str, status: int) -> None:
        res = rec.machine.decision
        active = sum(1 for r in self.calls.values() if r.machine.phase is not Phase.ENDED)
        self.send(
            control.CallState(
                call_id=rec.invite.call_id,
                state=state,
                reason=reason,
                status=status,
                codec=rec.codec,
                room=res.room if res else "",
                identity=res.identity if res else "",
                active_calls=active,
            )
        )

    # --- room leg -----------------------------------------------------------------------------
    async def _join(self, rec: CallRecord) -> None:
        res = rec.machine.decision
        assert res is not None
        ch = ChannelClient(
            on_signal=lambda m: self._on_room_signal(rec, m),
            on_rtp=lambda sid, p: self._on_room_rtp(rec, sid, p),
            on_data=lambda d: self._on_room_data(rec, d),
            on_closed=lambda reason: self._run(rec, rec.machine.on_room_left(reason)),
        )
        try:
            await ch.connect(res.socket, res.token, res.room)
        except OSError as exc:
            log.warning("cannot reach room socket: %s", exc)
            self._run(rec, rec.machine.on_room_left("room unavailable"))
            return
        if rec.machine.phase is Phase.ENDED:
            ch.close()
            return
        rec.channel = ch

    def _on_room_signal(self, rec: CallRecord, msg: rtc.SignalResponse) -> None:
        which = msg.WhichOneof("message")
        now = time.monotonic()
        if which == "join":
            rec.identity = msg.join.participant.identity or rec.identity
            add = rtc.AddTrackRequest(
                cid="sip-audio",
                name="phone",
                type=models.TrackType.AUDIO,
                source=models.TrackSource.MICROPHONE,
            )
            assert rec.channel is not None or True
            if rec.channel is not None:
                rec.channel.send_signal(rtc.SignalRequest(add_track=add))
            self._run(rec, rec.machine.on_room_joined(now))
            if _other_sip(msg.join.other_participants, rec.identity):
                self._run(rec, rec.machine.on_room_audio(now))
        elif which == "track_published":
            rec.track_sid = msg.track_published.track.sid
        elif which == "update":
            if _other_sip(msg.update.participants, rec.identity):
                self._run(rec, rec.machine.on_room_audio(now))
        elif which == "leave":
            if rec.channel is not None:
                rec.channel.close()
            self._run(rec, rec.machine.on_room_left("removed from room"))

    def _on_room_rtp(self, rec: CallRecord, sid: str, data: bytes) -> None:
        try:
            pkt = parse_rtp(data)
        except RtpError:
            return
        if pkt.payload_type != OPUS_PT or not pkt.payload:
            return
        rec.mixer.push(sid, pkt.sequence, pkt.payload)
        if not rec.room_audio_seen:
            rec.room_audio_seen = True
            self._run(rec, rec.machine.on_room_audio(time.monotonic()))

    def _on_room_data(self, rec: CallRecord, pkt: models.DataPacket) -> None:
        if pkt.WhichOneof("value") != "sip_dtmf" or rec.machine.phase is not Phase.ACTIVE:
            return
        digit = pkt.sip_dtmf.digit
        try:
            digit_to_code(digit)
        except DtmfError:
            try:
                digit = "0123456789*#ABCD"[pkt.sip_dtmf.code]
            except IndexError:
                return
        prm = pj.CallSendDtmfParam()
        prm.digits = digit.upper()
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        try:
            rec.pj_call.sendDtmf(prm)
        except pj.Error as exc:
            log.info("cannot send DTMF: %s", exc.info())

    # --- periodic work ------------------------------------------------------------------------
    def _pump_media(self) -> None:
        """Phone → room: encode what the bridge delivered. Room → phone: keep tx topped up."""
        for rec in self.calls.values():
            port = rec.port
            if port is None:
                continue
            if rec.machine.phase is not Phase.ACTIVE:
                # Early media (pjsua puts the SDP answer in the 180): drop what the phone sends
                # while ringing instead of bursting up to 2 s of stale audio into the room later.
                port.rx.clear()
                if rec.machine.phase in (Phase.PIN, Phase.PIN_CHECK):
                    # Answered for PIN entry: the prompt, then silence (no underrun clicks).
                    while len(port.tx) < TX_TARGET:
                        port.tx.append(rec.prompt.popleft() if rec.prompt else _SILENCE)
                continue
            ch, sid = rec.channel, rec.track_sid
            while port.rx:
                pcm = port.rx.popleft()
                if ch is None or not sid:
                    continue
                if rec.encoder is None:
                    rec.encoder = OpusEncoder()
                for payload in rec.encoder.encode(pcm):
                    ch.send_rtp(sid, rec.packetizer.packet(payload))
            while len(port.tx) < TX_TARGET:
                port.tx.append(rec.mixer.next_frame())

    def _tick(self) -> None:
        now = time.monotonic()
        for rec in list(self.calls.values()):
            if rec.media_index >= 0 and rec.machine.phase is Phase.ACTIVE:
                try:
                    st = rec.pj_call.getStreamStat(rec.media_index)
                    rec.machine.on_rx_packets(st.rtcp.rxStat.pkt, now)
                except pj.Error:
                    pass
            self._run(rec, rec.machine.tick(now))
        self.graveyard = [(t, objs) for t, objs in self.graveyard if now - t < GRAVEYARD_S]
        self._sweep_dead_calls(now)

    def _bury_call(self, key: int) -> None:
        call = self.live_calls.pop(key, None)
        if call is not None:
            self.dead_calls.append((time.monotonic(), call))

    def _sweep_dead_calls(self, now: float) -> None:
        """Destroy finished Calls, but only while their pjsua slot is free and we hold the
        last reference, so that ``Call::~Call()`` can only touch its own, finished call."""
        keep: list[tuple[float, WorkerCall]] = []
        for ended, call in self.dead_calls:
            if (
                now - ended < GRAVEYARD_S
                or _slot_reused(call)
                or sys.getrefcount(call) > _SOLE_OWNER_REFS
            ):
                keep.append((ended, call))
        self.dead_calls = keep

    def _release(self, pj_id: int) -> None:
        rec = self.calls.pop(pj_id, None)
        if rec is None:
            return
        if rec.port is not None:
            rec.port.active = False  # before any reference drop (recipe §3.4.3)
            log.info(
                "call %s ended: port rx=%d tx=%d underruns=%d; room inputs %s",
                rec.invite.call_id,
                rec.port.rx_frames,
                rec.port.tx_frames,
                rec.port.underruns,
                {sid: vars(i.jitter.stats) for sid, i in rec.mixer.inputs.items()},
            )
        # pjsua may report DISCONNECTED synchronously inside our own hangup(), before the
        # LeaveRoom action of the same batch runs: leave here so the room always hears it.
        self._leave_room(rec)
        self.graveyard.append((time.monotonic(), [rec.port]))
        self._bury_call(rec.call_key)

    async def _poller(self) -> None:
        assert self.ep is not None
        last_tick = 0.0
        while not self._stop.is_set():
            self.ep.libHandleEvents(0)
            self._pump_media()
            now = time.monotonic()
            if now - last_tick >= 0.25:
                last_tick = now
                self._tick()
            await asyncio.sleep(POLL_S)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        sys.setswitchinterval(0.0005)  # GIL hand-off to the bridge clock thread (recipe §3.4.3)
        self.start_endpoint()
        if self.opts.control_fd >= 0:
            sock = socket.socket(fileno=self.opts.control_fd)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            self._writer = writer
            self._loop.create_task(self._control_reader(reader))
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)
        self.send(
            control.Ready(sip_port=self.opts.sip_port, max_calls=self.max_calls, pid=os.getpid())
        )
        try:
            await self._poller()
        finally:
            await self.destroy_endpoint()


def detect_max_calls() -> int:
    """The effective per-process call cap after ``libInit``.

    pjsua clamps ``maxCalls`` to the compile-time ``PJSUA_MAX_CALLS`` without telling pjsua2 (the
    PyPI wheel has 4). pjsua2 has no getter, but the wheel's extension exports the pjsua C API, so
    ``pjsua_call_get_max_count()`` is read through ctypes from the already-loaded module.
    """
    lib = ctypes.CDLL(pj._pjsua2.__file__)
    fn = lib.pjsua_call_get_max_count
    fn.restype = ctypes.c_uint
    return int(fn())


def _slot_reused(call: WorkerCall) -> bool:
    """Whether destroying this finished ``pj.Call`` now would hit somebody else's call.

    pjsua2 never resets ``Call.id`` when a call ends, and ``Call::~Call()`` clears the user data
    of slot ``id`` and hangs it up (603 before the answer, BYE after) if that slot is active.
    pjsua reuses slots at once (4 per process), so a dead Call freed while a newer call holds
    its slot would end that newer call and orphan its callbacks. Seen in the full-stack tests
    when cyclic GC freed a finished call's record at a random moment.
    """
    try:
        return bool(call.isActive())
    except pj.Error:
        return False


def _stream_codec(call: WorkerCall, idx: int) -> str:
    try:
        si = call.getStreamInfo(idx)
        return f"{si.codecName}/{si.codecClockRate}"
    except pj.Error:
        return ""


def _add_headers(prm: Any, headers: dict[str, str]) -> None:
    for name, value in headers.items():
        h = pj.SipHeader()
        h.hName = name
        h.hValue = value
        prm.txOption.headers.append(h)


def _other_sip(participants: Any, me: str) -> bool:
    return any(
        p.kind == models.ParticipantInfo.Kind.SIP
        and p.identity != me
        and p.state != models.ParticipantInfo.State.DISCONNECTED
        for p in participants
    )


def parse_args(argv: list[str] | None = None) -> WorkerOptions:
    ap = argparse.ArgumentParser(prog="python -m bridge.worker", description=__doc__)
    ap.add_argument("--sip-port", type=int, default=5060)
    ap.add_argument("--sip-host", default="0.0.0.0", help="address to bind SIP and RTP to")
    ap.add_argument(
        "--public-ip", default="", help="address for SDP c= and Contact (sip.public_ip)"
    )
    ap.add_argument("--rtp-start", type=int, default=10000)
    ap.add_argument("--rtp-end", type=int, default=20000)
    ap.add_argument("--control-fd", type=int, default=-1, help="socketpair fd for JSON lines")
    ap.add_argument("--max-calls", type=int, default=32, help="requested; clamped by the build")
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--log-level", type=int, default=1, help="pjsua log level 0-6")
    ap.add_argument("--rtp-host", default=None, help="address RTP binds to (default: --sip-host)")
    ap.add_argument("--rtp-public-ip", default=None, help="SDP c= address (default: --public-ip)")
    ap.add_argument(
        "--front-source",
        action="append",
        default=[],
        help="ip:port of the SIP front; X-Roomline-Source is trusted only from there",
    )
    a = ap.parse_args(argv)
    if not 0 < a.rtp_start <= a.rtp_end < 65536:
        ap.error("need 0 < rtp-start <= rtp-end < 65536")
    return WorkerOptions(
        sip_port=a.sip_port,
        sip_host=a.sip_host,
        public_ip=a.public_ip,
        rtp_start=a.rtp_start,
        rtp_end=a.rtp_end,
        control_fd=a.control_fd,
        max_calls=a.max_calls,
        tcp=not a.no_tcp,
        log_level=a.log_level,
        rtp_host=a.rtp_host,
        rtp_public_ip=a.rtp_public_ip,
        front_sources=tuple(a.front_source),
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="worker %(message)s")
    opts = parse_args(argv)
    asyncio.run(Worker(opts).run())
    # A pj object that still escaped (e.g. held by a traceback) would assert in its destructor
    # during interpreter finalisation, after libDestroy; pjsua is already down, so skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

"""Outbound calls and cold transfers in the bridge worker (pjsua2 side of issue 11).

:class:`OutboundDialer` carries out the supervisor's :class:`~bridge.control.Dial`: the callee
joins the room at once (``sip.callStatus=dialing``) over the local channel, then the INVITE goes to
the trunk from a per-call pjsua2 account whose From is ``"display" <sip:number@from_host>`` and
whose credentials answer 401/407 digest challenges. Progress goes back as
:class:`~bridge.control.DialProgress` and into ``sip.callStatus``:

``dialing`` → ``ringing`` (first 18x) → ``automation`` (after the 200 OK while the initial DTMF
plays as RFC 4733, ``w`` = 0.5 s pause) → ``active`` → ``hangup`` (normal end only). A final
non-2xx (or no answer within ``ringing_timeout``: CANCEL) makes the callee leave the room with
LiveKit's disconnect reason (USER_REJECTED / USER_UNAVAILABLE / SIP_TRUNK_FAILURE).

``play_dialtone`` plays an ETSI ringing tone (425 Hz, 1 s on / 4 s off) into the room until the
callee answers or sends early media; 183 early media reaches the room like call audio.

Transfers (:class:`~bridge.control.Transfer`) send a REFER in the dialog (pjsua2 ``Call.xfer``);
``onCallTransferStatus`` gives the NOTIFY sipfrag status (or the REFER's own failure). Success
(2xx) ends the call (``hangup``), failure reports the status and the call goes on. While the
transfer runs with ``play_dialtone`` the phone (outbound callee or inbound caller) hears the
ringing tone instead of the room (:class:`TransferTone` as the leg's ``tone``); the room is heard
again as soon as the outcome is known.

Everything runs on the worker's asyncio thread (pjsua2 callbacks come from ``libHandleEvents``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pjsua2 as pj
from livekit.protocol import models, rtc

import bridge.control as control
from bridge.worker.endpoint import (
    BRIDGE_CLOCK_RATE,
    SipEndpoint,
    WorkerOptions,
    add_headers,
    codec_rate,
    stream_codec,
)
from bridge.worker.port import BridgePort
from bridge.worker.room_leg import RoomLeg, RoomLegEvents
from bridge.worker.sdes import parse_offer
from bridge.worker.sipmsg import SipParseError, parse_headers
from roomline.wire import FRAME_MS

log = logging.getLogger("bridge.worker.outbound")

#: ``w`` in ``dtmf``: pause this long (LiveKit).
DTMF_PAUSE_S = 0.5
#: Time budgeted per sent DTMF key (pjsua's 160 ms tone plus a gap) before the next chunk.
DTMF_KEY_S = 0.25
#: After a successful transfer the far end may hang up itself for this long (LiveKit: 1 s).
REFER_BYE_TIMEOUT_S = 1.0
#: ETSI ringing tone (ETSI TR 101 041 / LiveKit's "dialtone"): 425 Hz, 1 s on, 4 s off.
TONE_HZ = 425.0
TONE_ON_S, TONE_PERIOD_S = 1.0, 5.0
TONE_AMPLITUDE = 6000.0

_REJECTED = frozenset({403, 486, 488, 600, 603, 607, 608})


def tone_frame(n: int, rate: int = BRIDGE_CLOCK_RATE) -> bytes:
    """Frame ``n`` (20 ms, s16le at ``rate``: the bridge port's) of the ringing tone cadence."""
    samples_per_frame = rate * FRAME_MS // 1000
    start = n * samples_per_frame
    t0 = start / rate
    if t0 % TONE_PERIOD_S >= TONE_ON_S:
        return bytes(samples_per_frame * 2)
    w = 2 * math.pi * TONE_HZ / rate
    samples = (int(TONE_AMPLITUDE * math.sin(w * (start + i))) for i in range(samples_per_frame))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


class _ToneCache:
    """Precomputed tone frames (one 5 s period) per sample rate."""

    frames: dict[int, list[bytes]] = {}

    @classmethod
    def get(cls, n: int, rate: int = BRIDGE_CLOCK_RATE) -> bytes:
        frames = cls.frames.get(rate)
        if frames is None:
            period = int(TONE_PERIOD_S * 1000 / FRAME_MS)
            frames = cls.frames[rate] = [tone_frame(i, rate) for i in range(period)]
        return frames[n % len(frames)]


class TransferTone:
    """The ringing tone for a phone while its transfer runs: a :attr:`RoomLeg.tone` callable
    (bridge clock thread), one 20 ms frame at ``rate`` per call, from the cadence's start."""

    def __init__(self, rate: int = BRIDGE_CLOCK_RATE) -> None:
        self.rate = rate
        self.n = 0

    def __call__(self) -> bytes:
        n = self.n
        self.n = n + 1
        return _ToneCache.get(n, self.rate)


@dataclass
class _FakePort:
    """Stands in for a :class:`BridgePort` while there is no SIP media yet (dial tone only):
    :meth:`RoomLeg.pump` encodes its ``rx`` into the room and hands it a ``produce`` nobody
    calls (there is no phone to hear the room yet)."""

    rate: int = BRIDGE_CLOCK_RATE
    rx: deque[bytes] = field(default_factory=deque)
    tx: deque[bytes] = field(default_factory=deque)
    produce: Callable[[], bytes] | None = None


def disconnect_reason(status: int) -> int:
    """LiveKit's room DisconnectReason for a failed outbound call."""
    if status in _REJECTED:
        return models.DisconnectReason.USER_REJECTED
    if 500 <= status < 600:
        return models.DisconnectReason.SIP_TRUNK_FAILURE
    return models.DisconnectReason.USER_UNAVAILABLE


#: The trunk's ``media_encryption`` → pjsua's SRTP use for the call's offer. ``allow`` offers
#: ``RTP/AVP`` with ``a=crypto`` (pjmedia's optional mode: a plain answer is taken), ``require``
#: offers ``RTP/SAVP`` (pjmedia refuses an answer without crypto).
_SRTP_USE = {
    "disable": pj.PJMEDIA_SRTP_DISABLED,
    "allow": pj.PJMEDIA_SRTP_OPTIONAL,
    "require": pj.PJMEDIA_SRTP_MANDATORY,
}


def apply_media_encryption(mc: Any, policy: str) -> None:
    """Set an outbound account's SRTP (SDES only, over any transport as LiveKit does)."""
    mc.srtpUse = _SRTP_USE[policy]
    if policy == "disable":
        return
    mc.srtpSecureSignaling = 0  # pjsua's default 1 would demand TLS (sips) for SRTP
    mc.srtpOpt.keyings.clear()
    mc.srtpOpt.keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)


def send_refer(call: Any, msg: control.Transfer) -> str:
    """Send the REFER for ``msg`` in ``call``'s dialog; an error text if pjsua refused."""
    prm = pj.CallOpParam(True)
    add_headers(prm, msg.headers)
    try:
        call.xfer(msg.transfer_to, prm)
    except pj.Error as exc:
        return f"REFER failed: {exc.info()}"
    return ""


def refer_outcome(prm: Any) -> tuple[bool | None, int, str]:
    """(ok, status, reason) from ``onCallTransferStatus``; ok None while only 1xx arrived.

    pjsua reports the REFER's own failure (e.g. 405) the same way as a NOTIFY sipfrag status.
    """
    code = int(prm.statusCode)
    if code < 200 and not prm.finalNotify:
        prm.cont = True
        return None, code, str(prm.reason)
    prm.cont = False
    return 200 <= code < 300, code, str(prm.reason)


def transfer_result(
    msg: control.Transfer, ok: bool, status: int, reason: str
) -> control.TransferResult:
    log.info("call %s: transfer %s: %d %s", msg.call_id, "ok" if ok else "failed", status, reason)
    return control.TransferResult(
        id=msg.id, call_id=msg.call_id, ok=ok, status=status, reason=reason
    )


@dataclass
class InboundTransfer:
    """A REFER running for an inbound call (owned by the worker's CallRecord).

    With ``play_dialtone`` the caller hears the ringing tone (``leg.tone``) instead of the room
    until the outcome is known; :meth:`results` gives the room back.
    """

    msg: control.Transfer
    call: Any
    started: float
    leg: RoomLeg | None = None
    waiters: list[control.Transfer] = field(default_factory=list)

    def results(self, ok: bool, status: int, reason: str) -> list[control.TransferResult]:
        if self.leg is not None:
            self.leg.tone = None
        return [transfer_result(m, ok, status, reason) for m in (self.msg, *self.waiters)]


class OutboundLeg(RoomLeg):
    """The callee's room leg: remembers its participant sid, leaves with a reason."""

    def __init__(
        self, events: RoomLegEvents, identity: str, request_id: int, rate: int = BRIDGE_CLOCK_RATE
    ) -> None:
        super().__init__(events, identity=identity, request_id=request_id, rate=rate)
        self.participant_sid = ""

    def _on_signal(self, ch: Any, msg: rtc.SignalResponse) -> None:
        if msg.WhichOneof("message") == "join":
            self.participant_sid = msg.join.participant.sid
        super()._on_signal(ch, msg)

    def set_attributes(self, attributes: dict[str, str]) -> None:
        if self.channel is None or not attributes:
            return
        upd = rtc.UpdateParticipantMetadata(attributes=attributes, request_id=self.request_id)
        self.channel.send_signal(rtc.SignalRequest(update_metadata=upd))

    def leave_with(self, reason: int) -> None:
        if self.channel is None:
            return
        leave = rtc.LeaveRequest(
            can_reconnect=False,
            reason=cast(Any, reason),
            action=rtc.LeaveRequest.DISCONNECT,
        )
        self.channel.send_signal(rtc.SignalRequest(leave=leave))
        self.channel.close()


class OutboundAccount(pj.Account):  # type: ignore[misc]
    """A per-call account: From identity and digest credentials; never registers."""

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        # INVITEs arrive through the worker's main account; this one only places calls.
        pass


class OutboundPjCall(pj.Call):  # type: ignore[misc]
    """pjsua2 director of an outbound call: forwards callbacks to its :class:`OutboundCall`."""

    def __init__(self, acc: pj.Account, owner: OutboundCall) -> None:
        super().__init__(acc)
        self.owner = weakref.proxy(owner)

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        try:
            self.owner.on_state(prm)
        except ReferenceError:
            pass

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        try:
            self.owner.on_media()
        except ReferenceError:
            pass

    def onCallTransferStatus(self, prm: Any) -> None:  # noqa: N802
        try:
            self.owner.on_transfer_status(prm)
        except ReferenceError:
            pass

    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802
        try:
            self.owner.leg.send_dtmf(prm.digit)
        except ReferenceError:
            pass


class OutboundCall:
    """One outbound call: its account, pjsua call, room leg and timers."""

    def __init__(self, dialer: OutboundDialer, dial: control.Dial) -> None:
        self.dialer = dialer
        self.dial = dial
        self.created = time.monotonic()
        self.state = "dialing"  # dialing, ringing, automation, active, ended
        self.invited_at: float | None = None
        self.answered_at: float | None = None
        self.account: OutboundAccount | None = None
        self.pj_call: OutboundPjCall | None = None
        self.call_key = 0
        self.port: BridgePort | None = None
        self.media_index = -1
        self.codec = ""
        self.in_room = False
        self.end_reason = ""
        self.tone_n = 0
        self.tone_port = _FakePort(rate=dialer.opts.bridge_rate)
        self.leg = OutboundLeg(
            RoomLegEvents(
                joined=self._joined,
                audio=lambda: None,
                left=self._room_left,
                dtmf=self._room_dtmf,
            ),
            identity=dial.identity,
            request_id=dial.id,
            rate=dialer.opts.bridge_rate,
        )
        self.transfer: control.Transfer | None = None
        #: Repeated requests for the running transfer's target: answered with its outcome.
        self.transfer_waiters: list[control.Transfer] = []
        self.transfer_started = 0.0
        self.transfer_tone = False
        self.sip_call_id = ""
        self.failed_reported = False
        #: The 200 OK's text (for headers → attributes), once seen.
        self.answer_msg = ""

    # --- reporting ----------------------------------------------------------------------------
    def report(self, state: str, status: int = 0, reason: str = "") -> None:
        self.dialer.control.send(
            control.DialProgress(
                id=self.dial.id,
                call_id=self.dial.call_id,
                state=state,
                status=status,
                reason=reason,
                participant_sid=self.leg.participant_sid,
                sip_call_id=self.sip_call_id,
            )
        )

    def set_status(self, status: str) -> None:
        self.leg.set_call_status(status)

    # --- room side ----------------------------------------------------------------------------
    async def start(self) -> None:
        d = self.dial
        if not await self.leg.join(d.socket, d.token, d.room):
            return  # _room_left reported the failure

    def _joined(self) -> None:
        self.in_room = True
        if self.state == "ended":
            self.leg.leave()
            return
        self.report("joined")
        try:
            self._invite()
        except pj.Error as exc:
            log.warning("call %s: cannot place the call: %s", self.dial.call_id, exc.info())
            self._fail(503, "cannot place call", models.DisconnectReason.SIP_TRUNK_FAILURE)

    def _room_left(self, reason: str) -> None:
        """The room ended the callee's participant (removed, room closed, channel lost)."""
        was_in_room = self.in_room
        self.in_room = False
        if self.state == "ended":
            return
        if not was_in_room and self.pj_call is None:
            self.state = "ended"
            self.report("failed", 0, reason or "room unavailable")
            self.dialer.forget(self)
            return
        self.end_reason = reason or "removed from room"
        self._hangup()

    def _room_dtmf(self, digit: str) -> None:
        if self.state != "active" or self.pj_call is None:
            return
        self._send_dtmf(digit)

    # --- SIP side -----------------------------------------------------------------------------
    def _invite(self) -> None:
        d, opts = self.dial, self.dialer.opts
        host = d.from_host or opts.public_ip or opts.bind_address or "127.0.0.1"
        uri = f"sip:{d.from_user}@{host}"
        acfg = pj.AccountConfig()
        acfg.idUri = f'"{d.display_name}" <{uri}>' if d.display_name else f"<{uri}>"
        acfg.regConfig.registerOnAdd = False
        if d.outbound_proxy:
            acfg.sipConfig.proxies.append(d.outbound_proxy)
            # pjsip takes the hop's transport from the R-URI (a TCP/TLS trunk), which would reach
            # the front over TCP from an ephemeral port: the front knows its workers by their UDP
            # source and would take that INVITE for a carrier's and dispatch it back to a worker.
            # So every request of the call leaves on the worker's UDP transport; the front relays
            # over the trunk's transport.
            if self.dialer.endpoint.udp_transport_id >= 0:
                acfg.sipConfig.transportId = self.dialer.endpoint.udp_transport_id
        if d.auth_username:
            acfg.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", d.auth_username, 0, d.auth_password)
            )
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
        mt = acfg.mediaConfig.transportConfig
        mt.port = opts.rtp_start
        mt.portRange = max(0, opts.rtp_end - opts.rtp_start)
        if opts.public_ip:
            mt.publicAddress = opts.public_ip
        if opts.bind_address:
            mt.boundAddress = opts.bind_address
        apply_media_encryption(acfg.mediaConfig, d.media_encryption)
        acc = OutboundAccount()
        acc.create(acfg, False)
        self.account = acc
        call = OutboundPjCall(acc, self)
        self.dialer.endpoint.adopt(call)
        self.call_key = id(call)
        self.pj_call = cast(OutboundPjCall, weakref.proxy(call))
        prm = pj.CallOpParam(True)
        add_headers(prm, d.headers)
        self.invited_at = time.monotonic()
        call.makeCall(d.to_uri, prm)
        try:
            self.sip_call_id = str(call.getInfo().callIdString)
        except pj.Error:
            pass
        log.info("call %s: INVITE %s", d.call_id, d.to_uri)

    def on_state(self, prm: Any) -> None:
        call = self.pj_call
        if call is None:
            return
        ci = call.getInfo()
        if self.answer_msg == "":
            self._capture_answer(prm)
        if ci.state in (pj.PJSIP_INV_STATE_EARLY,) and self.state == "dialing":
            if ci.lastStatusCode in (180, 181, 182, 183):
                self.state = "ringing"
                self.set_status("ringing")
                self.report("ringing", ci.lastStatusCode, str(ci.lastReason))
        elif ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.answered_at is None:
            self._answered(ci, prm)
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._disconnected(int(ci.lastStatusCode), str(ci.lastReason))

    def _answered(self, ci: Any, prm: Any) -> None:
        if self.dial.media_encryption == "require" and self.answer_msg:
            if not parse_offer(self.answer_msg).srtp:
                # pjmedia would only drop the media after the call went active; LiveKit fails
                # the call: failed_precondition, MEDIA_FAILURE, "encryption-required".
                self._fail(0, "encryption-required", models.DisconnectReason.MEDIA_FAILURE)
                self._hangup()
                return
        self.answered_at = time.monotonic()
        attrs = {"sip.callIDFull": str(ci.callIdString)}
        attrs.update(self._answer_header_attrs())
        self.leg.set_attributes(attrs)
        self.report("answered", 200, "OK")
        if self.dial.dtmf:
            self.state = "automation"
            self.set_status("automation")
            asyncio.get_running_loop().create_task(self._play_dtmf(self.dial.dtmf))
        else:
            self._activate()

    def _activate(self) -> None:
        if self.state in ("ended",):
            return
        self.state = "active"
        self.set_status("active")
        self.report("active", 200, "OK")

    async def _play_dtmf(self, digits: str) -> None:
        """Initial DTMF after the answer: runs of keys as RFC 4733, ``w`` = 0.5 s pause."""
        chunk = ""
        for c in digits + "\0":
            if c in "wW\0":
                if chunk:
                    self._send_dtmf(chunk)
                    await asyncio.sleep(DTMF_KEY_S * len(chunk))
                    chunk = ""
                if c in "wW":
                    await asyncio.sleep(DTMF_PAUSE_S)
            else:
                chunk += c
            if self.state == "ended":
                return
        self._activate()

    def _send_dtmf(self, digits: str) -> None:
        if self.pj_call is None:
            return
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        try:
            self.pj_call.sendDtmf(prm)
        except pj.Error as exc:
            log.info("call %s: cannot send DTMF: %s", self.dial.call_id, exc.info())

    def _capture_answer(self, prm: Any) -> None:
        """Keep the text of the 2xx answer when pjsua's state event carries it (CONNECTING)."""
        try:
            e = prm.e
            if e.type == pj.PJSIP_EVENT_TSX_STATE:
                if e.body.tsxState.type != pj.PJSIP_EVENT_RX_MSG:
                    return
                text = str(e.body.tsxState.src.rdata.wholeMsg)
            elif e.type == pj.PJSIP_EVENT_RX_MSG:
                text = str(e.body.rxMsg.rdata.wholeMsg)
            else:
                return
        except (pj.Error, AttributeError):
            return
        if text.startswith("SIP/2.0 2"):
            self.answer_msg = text

    def _answer_header_attrs(self) -> dict[str, str]:
        """``sip.callTag``, ``headers_to_attributes`` and ``include_headers`` from the 200 OK."""
        d = self.dial
        if not self.answer_msg:
            return {}
        try:
            _start, headers = parse_headers(self.answer_msg)
        except SipParseError:
            return {}
        out: dict[str, str] = {}
        lower = {k.lower(): v for k, v in headers.items()}
        to = lower.get("to") or lower.get("t") or ""
        tag = next((p[4:] for p in to.split(";") if p.strip().lower().startswith("tag=")), "")
        if tag:
            out["sip.callTag"] = tag.strip()
        for header, attr in d.headers_to_attributes.items():
            value = lower.get(header.lower())
            if value is not None:
                out[attr] = value
        # include_headers: 1 = SIP_X_HEADERS, 2 = SIP_ALL_HEADERS (livekit.SIPHeaderOptions).
        for name, value in headers.items():
            if d.include_headers == 2 or (d.include_headers == 1 and name.lower().startswith("x-")):
                out[f"sip.h.{name.lower()}"] = value
        return out

    def _disconnected(self, status: int, reason: str) -> None:
        if self.transfer is not None:
            # Released LiveKit: the call ending after the REFER was accepted counts as success.
            self._transfer_done(self.transfer, True, 200, "call ended")
            self.transfer = None
            self.transfer_tone = False
        if self.state == "ended":
            self.dialer.release(self)
            return
        answered = self.answered_at is not None
        if answered:
            self.state = "ended"
            self.end_reason = self.end_reason or reason or "hangup"
            if self.in_room:
                self.set_status("hangup")
                self.in_room = False
                self.leg.leave()
            self.report("hangup", status, self.end_reason)
        else:
            if self.end_reason == "no-answer":
                self._fail(
                    487, "no-answer", models.DisconnectReason.USER_UNAVAILABLE, report_reason=True
                )
            elif self.end_reason:
                # Hung up by the room side before the answer (participant removed).
                self._fail(487, self.end_reason, models.DisconnectReason.CLIENT_INITIATED)
            else:
                self._fail(status, reason, disconnect_reason(status))
        self.dialer.release(self)

    def _fail(
        self, status: int, reason: str, leave_reason: int, report_reason: bool = False
    ) -> None:
        self.state = "ended"
        if self.in_room:
            self.in_room = False
            self.leg.leave_with(leave_reason)
        if not self.failed_reported:
            self.failed_reported = True
            self.report("failed", status, reason)
        log.info("call %s failed: %d %s", self.dial.call_id, status, reason)

    def _hangup(self) -> None:
        if self.pj_call is None:
            return
        try:
            self.pj_call.hangup(pj.CallOpParam())
        except pj.Error as exc:
            log.info("call %s: hangup: %s", self.dial.call_id, exc.info())

    def on_media(self) -> None:
        call = self.pj_call
        if call is None:
            return
        ci = call.getInfo()
        for mi in ci.media:
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if mi.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                am = call.getAudioMedia(mi.index)
                if self.port is None:
                    self.port = self.dialer.open_port(f"out{ci.id}")
                am.startTransmit(self.port)
                self.port.startTransmit(am)
                self.media_index = mi.index
                if not self.codec:
                    self.codec = stream_codec(call, mi.index)
                    self.leg.set_phone_rate(codec_rate(self.codec))
            break

    # --- transfer -----------------------------------------------------------------------------
    def start_transfer(self, msg: control.Transfer) -> None:
        if self.pj_call is None or self.state not in ("active", "automation"):
            self._transfer_done(msg, False, 481, "call not active")
            return
        if self.transfer is not None:
            if self.transfer.transfer_to == msg.transfer_to:
                self.transfer_waiters.append(msg)  # the same transfer again: same outcome
            else:
                self._transfer_done(msg, False, 0, "call already being transferred elsewhere")
            return
        error = send_refer(self.pj_call, msg)
        if error:
            self._transfer_done(msg, False, 500, error)
            return
        self.transfer = msg
        self.transfer_started = time.monotonic()
        self.transfer_tone = msg.play_dialtone
        log.info("call %s: REFER to %s", self.dial.call_id, msg.transfer_to)

    def on_transfer_status(self, prm: Any) -> None:
        msg = self.transfer
        if msg is None:
            return
        ok, code, reason = refer_outcome(prm)
        if ok is None:
            return
        self.transfer = None
        self.transfer_tone = False
        self._transfer_done(msg, ok, code, reason)
        if ok:
            self.end_reason = "transferred"
            asyncio.get_running_loop().call_later(REFER_BYE_TIMEOUT_S, self._hangup)

    def _transfer_done(self, msg: control.Transfer, ok: bool, status: int, reason: str) -> None:
        self.dialer.control.send(transfer_result(msg, ok, status, reason))
        if msg is self.transfer or self.transfer is None:
            waiters, self.transfer_waiters = self.transfer_waiters, []
            for w in waiters:
                self.dialer.control.send(transfer_result(w, ok, status, reason))

    # --- periodic -----------------------------------------------------------------------------
    def pump(self) -> None:
        if not self.in_room:
            return
        if self.port is not None and self.state != "ended":
            # Room -> phone is produced on demand on the clock thread (OutboundLeg.produce); the
            # transfer tone replaces the room's mix there while it plays.
            if self.transfer_tone:
                if self.leg.tone is None:
                    self.leg.tone = TransferTone(self.port.rate)
            else:
                self.leg.tone = None
            self.leg.pump(self.port)
            return
        if self.dial.play_dialtone and self.state in ("dialing", "ringing"):
            # No SIP media yet: the room hears the ringing tone (real time, one frame per 20 ms).
            tp = self.tone_port
            elapsed = time.monotonic() - self.created
            due = int(elapsed * 1000 / FRAME_MS) + 1
            while self.tone_n < due:
                tp.rx.append(_ToneCache.get(self.tone_n, tp.rate))
                self.tone_n += 1
            self.leg.pump(cast(BridgePort, tp))
            tp.produce = None

    def tick(self, now: float) -> None:
        if self.state == "ended":
            return
        d = self.dial
        if self.answered_at is None:
            if self.invited_at is not None and now - self.invited_at >= d.ringing_timeout:
                if self.end_reason != "no-answer":
                    self.end_reason = "no-answer"
                    log.info("call %s: no answer in %.0f s, CANCEL", d.call_id, d.ringing_timeout)
                    self._hangup()
            return
        if now - self.answered_at >= d.max_call_duration and self.end_reason != "max-call-duration":
            self.end_reason = "max-call-duration"
            self._hangup()
        msg = self.transfer
        if msg is not None and now - self.transfer_started >= msg.ringing_timeout:
            self.transfer = None
            self.transfer_tone = False
            self._transfer_done(msg, False, 408, "ringing-timeout")


class OutboundDialer:
    """All outbound calls of one worker (see the module docstring)."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        control_client: Any,
        opts: WorkerOptions,
        find_inbound: Callable[[str], tuple[Any, RoomLeg] | None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.control = control_client
        self.opts = opts
        self.calls: dict[str, OutboundCall] = {}
        #: SIP Call-ID → the answered inbound call's (pj.Call, room leg), or None; from the worker.
        self.find_inbound = find_inbound
        self.inbound_transfers: dict[str, InboundTransfer] = {}
        #: The worker's hooks for the ports it serves each clock tick: ``on_rx`` (the clock
        #: thread's wake-up, see ``Worker._clock_wake``) and ``ports_changed(+1/-1)``.
        self.on_rx: Callable[[], None] | None = None
        self.ports_changed: Callable[[int], None] | None = None

    def open_port(self, name: str) -> BridgePort:
        """A call's bridge port at the bridge's clock rate, registered with the worker's clock."""
        port = BridgePort(name, self.opts.bridge_rate, self.on_rx)
        if self.ports_changed is not None:
            self.ports_changed(1)
        return port

    def close_port(self, port: BridgePort) -> None:
        """End ``port`` (issue 13: destroy the pjmedia side while we still hold it)."""
        if port.closed:
            return
        port.close()
        if self.ports_changed is not None:
            self.ports_changed(-1)

    def handle(self, msg: control.Message) -> bool:
        """Carry out a Dial or Transfer; False for messages that are not ours."""
        if isinstance(msg, control.Dial):
            if msg.call_id in self.calls:
                return True
            call = OutboundCall(self, msg)
            self.calls[msg.call_id] = call
            asyncio.get_running_loop().create_task(call.start())
            return True
        if isinstance(msg, control.Transfer):
            existing = self.calls.get(msg.call_id)
            if existing is not None:
                existing.start_transfer(msg)
            else:
                self._transfer_inbound(msg)
            return True
        return False

    # --- transfers of inbound calls (cold; with play_dialtone the caller hears the ringing tone)
    def _transfer_inbound(self, msg: control.Transfer) -> None:
        found = self.find_inbound(msg.call_id) if self.find_inbound is not None else None
        if found is None:
            self.control.send(transfer_result(msg, False, 481, "no such active call"))
            return
        call, leg = found
        running = self.inbound_transfers.get(msg.call_id)
        if running is not None:
            if running.msg.transfer_to != msg.transfer_to:
                self.control.send(
                    transfer_result(msg, False, 0, "call already being transferred elsewhere")
                )
            else:
                running.waiters.append(msg)
            return
        error = send_refer(call, msg)
        if error:
            self.control.send(transfer_result(msg, False, 500, error))
            return
        log.info("call %s: REFER to %s", msg.call_id, msg.transfer_to)
        if msg.play_dialtone:
            leg.tone = TransferTone(leg.rate)
        self.inbound_transfers[msg.call_id] = InboundTransfer(
            msg, call, time.monotonic(), leg if msg.play_dialtone else None
        )

    def on_inbound_transfer_status(self, call_id: str, prm: Any) -> None:
        """``onCallTransferStatus`` of an inbound call (forwarded by the worker)."""
        t = self.inbound_transfers.get(call_id)
        if t is None:
            return
        ok, code, reason = refer_outcome(prm)
        if ok is None:
            return
        del self.inbound_transfers[call_id]
        for res in t.results(ok, code, reason):
            self.control.send(res)
        if ok:
            call = t.call

            def bye() -> None:
                try:
                    call.hangup(pj.CallOpParam())
                except (pj.Error, ReferenceError):
                    pass  # the far end hung up already

            asyncio.get_running_loop().call_later(REFER_BYE_TIMEOUT_S, bye)

    def inbound_call_ended(self, call_id: str) -> None:
        """An inbound call ended: a REFER still running counts as success (as LiveKit)."""
        t = self.inbound_transfers.pop(call_id, None)
        if t is not None:
            for res in t.results(True, 200, "call ended"):
                self.control.send(res)

    def forget(self, call: OutboundCall) -> None:
        self.calls.pop(call.dial.call_id, None)

    def release(self, call: OutboundCall) -> None:
        """The SIP call ended: drop it and hand its pj objects to the endpoint's graveyard."""
        self.forget(call)
        call.leg.tone = None
        if call.port is not None:
            # As the worker does for inbound calls (bridge/worker/port.py): destroy the pjmedia
            # side while we still hold the port.
            self.close_port(call.port)
            port = call.port
            log.info(
                "call %s ended: port rx=%d tx=%d underruns=%d produced=%d; room inputs %s",
                call.dial.call_id,
                port.rx_frames,
                port.tx_frames,
                port.underruns,
                port.produced,
                call.leg.input_stats(),
            )
        self.endpoint.bury([call.port])
        call.port = None
        acc, call.account = call.account, None
        if acc is not None:
            # pjsua has few account slots (PJSUA_MAX_ACC): delete the call's account as soon as
            # we are out of the DISCONNECTED callback, not after the graveyard delay.
            asyncio.get_running_loop().call_soon(self._drop_account, acc)
        if call.call_key:
            self.endpoint.bury_call(call.call_key)
            call.call_key = 0

    @staticmethod
    def _drop_account(acc: OutboundAccount) -> None:
        try:
            acc.shutdown()
        except pj.Error as exc:
            log.info("cannot delete outbound account: %s", exc.info())

    def pump(self) -> None:
        for call in list(self.calls.values()):
            call.pump()

    def tick(self, now: float) -> None:
        for call in list(self.calls.values()):
            call.tick(now)
        for call_id, t in list(self.inbound_transfers.items()):
            if now - t.started >= t.msg.ringing_timeout:
                del self.inbound_transfers[call_id]
                for res in t.results(False, 408, "ringing-timeout"):
                    self.control.send(res)

    def close(self) -> None:
        """Worker shutdown: forget every call (pjsua already hung them up)."""
        for call in self.calls.values():
            if call.port is not None:
                self.close_port(call.port)
            call.leg.close()
            call.port = None
            call.account = None
        self.calls.clear()

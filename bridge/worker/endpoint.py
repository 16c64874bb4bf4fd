"""The worker's pjsua2 endpoint: library setup and teardown, the call cap, pj object lifetimes.

pjsua2 runs with ``threadCnt=0, mainThreadOnly=True``: the worker polls
:meth:`SipEndpoint.handle_events` from its asyncio loop, so every SIP callback and every pjsua2
call happens on that one thread (no GIL deadlocks between pjsua's threads and Python, no thread
registration). Only the :class:`~bridge.worker.port.BridgePort` callbacks run on the
conference-bridge clock thread.

pj objects die on pjsua's schedule, not Python's: a port may still be called while the bridge
removes it, and destroying a finished ``pj.Call`` can hang up whichever call now uses its slot.
The endpoint therefore keeps finished calls and ports alive for :data:`GRAVEYARD_S` and releases a
call only when that is safe (:func:`slot_reused`).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pjsua2 as pj

from bridge import control
from roomline.wire import FRAME_MS

#: pjlib's own log lines go through stdlib logging under this name, so the worker's JSON-lines
#: setup (roomline.log.configure_worker_logging) renders them like every other event.
pjlog = logging.getLogger("bridge.worker.pjsip")
#: pjlib levels 1 (error) .. 6 (trace) → logging levels.
_PJ_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}


class PjLogWriter(pj.LogWriter):  # type: ignore[misc]
    """Routes pjlib log output into the worker's JSON log instead of raw lines on stdout.

    Called from whichever pj thread logs (with the GIL, via the SWIG director); it must outlive
    ``libDestroy``, so the endpoint keeps it until the process exits.
    """

    def write(self, entry: Any) -> None:
        msg = str(entry.msg).rstrip()
        if msg:
            pjlog.log(_PJ_LEVELS.get(int(entry.level), logging.DEBUG), "pjsip: %s", msg)


#: Grace before dropping Python refs of a finished call (the bridge removes ports asynchronously).
GRAVEYARD_S = 2.0
#: ``sys.getrefcount`` of a finished Call held only by ``SipEndpoint.dead_calls`` while it is swept
#: (the list's tuple, the loop variable and the getrefcount argument).
_SOLE_OWNER_REFS = 3
#: Phone-leg codecs by preference: G.722 keeps wideband audio, then G.711 µ-law and A-law.
CODEC_PRIORITIES = (("G722/16000", 250), ("PCMU/8000", 240), ("PCMA/8000", 230))
#: Conference-bridge clock (Hz) by default. 16 kHz keeps G.722 wideband; the BridgePort runs at
#: the bridge's rate, so neither pjmedia nor Python resamples between the bridge and the port.
BRIDGE_CLOCK_RATE = control.BRIDGE_RATE_WIDEBAND
#: The narrowband bridge clock (``sip.wideband: false``): G.711 streams are at the bridge's rate,
#: so pjmedia does not resample them 8 ↔ 16 kHz every tick (the largest native cost of a G.711
#: call, see docs/bridge-media.md), and G.722 is not offered.
NARROWBAND_CLOCK_RATE = control.BRIDGE_RATE_NARROWBAND
BRIDGE_CLOCK_RATES = (NARROWBAND_CLOCK_RATE, BRIDGE_CLOCK_RATE)
#: pjsua media quality: 8 = large-filter resampler in the conference bridge (see ``start``).
RESAMPLE_QUALITY = 8
#: Phone-leg jitter buffer (frames): start at 1 and let pjmedia's adaptive prefetch grow to 8
#: (160 ms) on a jittery trunk; the defaults held more on clean links (~10 ms p50). The
#: "pjmedia alone" PESQ reference (bench/pesq_live.py) runs a pjsua2 callee with these values.
JB_INIT = 1
JB_MIN_PRE = 1
JB_MAX_PRE = 8


@dataclass
class WorkerOptions:
    """Where the worker listens and how much it logs (filled from the command line)."""

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
    #: Conference-bridge clock: 16000 (G.722 offered, G.711 resampled) or 8000 (G.711 only).
    bridge_rate: int = BRIDGE_CLOCK_RATE

    @property
    def bind_address(self) -> str:
        """The address to bind to, or "" for all interfaces."""
        return "" if self.sip_host in ("", "0.0.0.0") else self.sip_host


class _Endpoint(pj.Endpoint):  # type: ignore[misc]
    """``pj.Endpoint`` that keeps the set of open TCP/TLS connections (pjsua's transport state
    callback, run from ``libHandleEvents``).

    A connection's socket is not watched by the worker's loop (bridge/worker/wake.py), so while
    one is open the worker keeps polling pjsua every 20 ms.
    """

    def __init__(self) -> None:
        super().__init__()
        self.connections: set[int] = set()

    def onTransportState(self, prm: pj.OnTransportStateParam) -> None:  # noqa: N802 - pjsua2
        hnd = int(prm.hnd)
        if prm.state == pj.PJSIP_TP_STATE_CONNECTED:
            self.connections.add(hnd)
        else:  # DISCONNECTED, SHUTDOWN, DESTROY
            self.connections.discard(hnd)


class SipEndpoint:
    """One ``pj.Endpoint`` with its account; owns every ``pj.Call`` and retired ``BridgePort``."""

    def __init__(self, opts: WorkerOptions) -> None:
        self.opts = opts
        self.ep: _Endpoint | None = None
        self.acc: pj.Account | None = None
        #: The effective call cap (see :func:`detect_max_calls`), known after :meth:`start`.
        self.max_calls = 0
        # Strong refs to every pj.Call (see slot_reused for why their destruction is managed).
        self.live_calls: dict[int, pj.Call] = {}
        self.dead_calls: list[tuple[float, pj.Call]] = []
        self.graveyard: list[tuple[float, list[object]]] = []
        #: pjsua id of the SIP UDP transport (outbound calls through the front are pinned to it).
        self.udp_transport_id = -1

    def start(self, make_account: Callable[[], pj.Account]) -> None:
        """Create, configure and start the library, its transports and the one account."""
        o = self.opts
        ep = _Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = o.max_calls
        cfg.uaConfig.userAgent = "roomline"
        cfg.logConfig.level = o.log_level
        cfg.logConfig.consoleLevel = o.log_level
        cfg.logConfig.msgLogging = o.log_level >= 4
        # No decoration: the JSON log adds time and thread; the message is all we keep.
        cfg.logConfig.decor = 0
        self.log_writer = PjLogWriter()
        cfg.logConfig.writer = self.log_writer
        if o.bridge_rate not in BRIDGE_CLOCK_RATES:
            raise ValueError(f"bridge clock rate must be one of {BRIDGE_CLOCK_RATES}")
        cfg.medConfig.clockRate = o.bridge_rate
        cfg.medConfig.sndClockRate = o.bridge_rate
        cfg.medConfig.audioFramePtime = FRAME_MS
        cfg.medConfig.ptime = FRAME_MS
        cfg.medConfig.ecTailLen = 0
        # Resampler of the conference bridge (G.711 8 kHz <-> 16 kHz bridge): quality >= 5 keeps
        # pjmedia's large filter. The small one (3-4) saved ~14 % of a busy worker's CPU
        # (FilterUD/FilterUp in perf) but cost 0.4 PESQ on speech phone -> room -> phone
        # (3.17 vs 3.56, bench/bench_media.py --pesq): quality wins.
        cfg.medConfig.quality = RESAMPLE_QUALITY
        cfg.medConfig.noVad = True
        cfg.medConfig.jbInit = JB_INIT
        cfg.medConfig.jbMinPre = JB_MIN_PRE
        cfg.medConfig.jbMaxPre = JB_MAX_PRE
        ep.libInit(cfg)
        self.max_calls = detect_max_calls()

        for kind, enabled in ((pj.PJSIP_TRANSPORT_UDP, True), (pj.PJSIP_TRANSPORT_TCP, o.tcp)):
            if not enabled:
                continue
            tcfg = pj.TransportConfig()
            tcfg.port = o.sip_port
            if o.bind_address:
                tcfg.boundAddress = o.bind_address
            if o.public_ip:
                tcfg.publicAddress = o.public_ip
            tid = ep.transportCreate(kind, tcfg)
            if kind == pj.PJSIP_TRANSPORT_UDP:
                self.udp_transport_id = int(tid)
        # REQUIRED: the null device's master port clocks the bridge (setNoDev → 0 frames).
        ep.audDevManager().setNullDev()
        for ci in ep.codecEnum2():
            ep.codecSetPriority(ci.codecId, 0)
        for codec_id, prio in CODEC_PRIORITIES:
            if int(codec_id.rsplit("/", 1)[1]) > o.bridge_rate:
                continue  # narrowband bridge: a wideband codec would only be resampled down
            ep.codecSetPriority(codec_id, prio)
        ep.libStart()
        self.ep = ep

        acfg = pj.AccountConfig()
        host = o.public_ip or o.bind_address or "127.0.0.1"
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
        # SRTP (SDES) optional for every call: pjmedia answers an offer with usable a=crypto with
        # SRTP and a plain offer with plain RTP; each trunk's media_encryption then refuses what it
        # does not allow (bridge/worker/sdes.py). SDES over UDP/TCP too (secure signalling 0),
        # as LiveKit does; no DTLS-SRTP.
        mc = acfg.mediaConfig
        mc.srtpUse = pj.PJMEDIA_SRTP_OPTIONAL
        mc.srtpSecureSignaling = 0
        mc.srtpOpt.keyings.clear()
        mc.srtpOpt.keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)
        acc = make_account()
        acc.create(acfg, True)
        self.acc = acc

    @property
    def connections(self) -> int:
        """Open TCP/TLS SIP connections (their sockets are not watched by the loop)."""
        return len(self.ep.connections) if self.ep is not None else 0

    def handle_events(self) -> None:
        """Run pjsua's pending timers and network events (SIP callbacks fire from here)."""
        if self.ep is not None:
            self.ep.libHandleEvents(0)

    def hangup_all(self) -> None:
        """First teardown step: end every call and let the BYEs and final responses go out."""
        if self.ep is None:
            return
        self.ep.hangupAllCalls()
        for _ in range(20):
            self.ep.libHandleEvents(10)

    def destroy(self) -> None:
        """Last teardown step: calls, ports and the account go before ``libDestroy``.

        pjsua2 asserts if a Call, AudioMediaPort or Account outlives the library, so every Python
        reference is dropped and collected first.
        """
        if self.ep is None:
            return
        self.graveyard.clear()
        self.live_calls.clear()
        self.dead_calls.clear()
        if self.acc is not None:
            self.acc.shutdown()
            self.acc = None
        gc.collect()
        self.ep.libDestroy()
        self.ep = None

    # --- pj object lifetimes -------------------------------------------------------------------
    def adopt(self, call: pj.Call) -> None:
        """Hold the only strong reference to a new call."""
        self.live_calls[id(call)] = call

    def bury_call(self, key: int) -> None:
        """A call ended: keep it until :meth:`sweep` finds it safe to destroy."""
        call = self.live_calls.pop(key, None)
        if call is not None:
            self.dead_calls.append((time.monotonic(), call))

    def bury(self, objs: list[object]) -> None:
        """Keep pj objects (ports) of a finished call alive while the bridge lets go of them."""
        self.graveyard.append((time.monotonic(), objs))

    def reject_now(self, call: pj.Call, status: int, reason: str) -> None:
        """Answer a call we cannot even describe (unparsable INVITE) and forget it."""
        prm = pj.CallOpParam()
        prm.statusCode = status
        prm.reason = reason
        try:
            call.hangup(prm)
        except pj.Error:
            pass
        self.bury_call(id(call))

    def sweep(self, now: float) -> None:
        """Release buried ports after the grace period, and finished calls once it is safe.

        A finished Call is destroyed only while its pjsua slot is free and we hold the last
        reference, so that ``Call::~Call()`` can only touch its own, finished call.
        """
        self.graveyard = [(t, objs) for t, objs in self.graveyard if now - t < GRAVEYARD_S]
        keep: list[tuple[float, pj.Call]] = []
        for ended, call in self.dead_calls:
            if (
                now - ended < GRAVEYARD_S
                or slot_reused(call)
                or sys.getrefcount(call) > _SOLE_OWNER_REFS
            ):
                keep.append((ended, call))
        self.dead_calls = keep


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


def slot_reused(call: pj.Call) -> bool:
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


def stream_codec(call: pj.Call, idx: int) -> str:
    """``"PCMU/8000"``-style name of the codec of media stream ``idx``, or "" if unknown."""
    try:
        si = call.getStreamInfo(idx)
        return f"{si.codecName}/{si.codecClockRate}"
    except pj.Error:
        return ""


def codec_rate(codec: str) -> int:
    """Clock rate of a :func:`stream_codec` name (``"PCMU/8000"`` → 8000); 0 if unknown."""
    _, _, rate = codec.rpartition("/")
    return int(rate) if rate.isdigit() else 0


def add_headers(prm: Any, headers: dict[str, str]) -> None:
    """Append ``headers`` to the SIP message a ``CallOpParam`` sends."""
    for name, value in headers.items():
        h = pj.SipHeader()
        h.hName = name
        h.hValue = value
        prm.txOption.headers.append(h)

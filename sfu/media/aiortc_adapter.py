"""The ONE module that touches aiortc/aioice private internals (pinned: aiortc 1.16.0, aioice 0.13).

What it does (media-recipes.md §1.2, §2):

* :func:`configure_ice` — restrict aioice host candidates to configured addresses (127.0.0.1 included,
  which aioice skips by default) and take UDP ports from a configured range.
* :class:`PublishedTrackTap` — receive a publisher's RTP *undecoded*: aiortc's jitter buffer and
  decoder are bypassed, receiver statistics are kept so RTCP RR still reaches the publisher, NACK and
  REMB towards the publisher keep working, and :meth:`PublishedTrackTap.request_keyframe` sends a
  throttled PLI.
* :class:`SubscriberSender` — a parked aiortc sender (idle track) whose packets come from the
  forwarder: rewritten to the subscriber's SSRC/PT/MID, sent with ``transport._send_rtp`` (SRTP),
  NACKs served by aiortc's own ``_retransmit`` from a raw-bytes history, SR counters kept current,
  and PLI/FIR from the subscriber relayed to the publisher.
* :class:`TrackFanout` — glue: one tap → many subscriber senders.

Private names used (all guarded by tests/test_media_loopback.py): ``RTCRtpReceiver._handle_rtp_packet``,
``_RTCRtpReceiver__remote_streams``/``__nack_generator``/``__remote_bitrate_estimator``,
``_send_rtcp*``, ``RTCDtlsTransport._handle_rtp_data``/``_send_rtp``/``_rtp_header_extensions_map``,
``RTCRtpSender._handle_rtcp_packet``/``__mid``/``__rtp_history``/``__rtp_header_extensions_map``/SR
counters/``_stream_id``, ``RTCRtpTransceiver._codecs``/``_headerExtensions``, aioice
``get_host_addresses``/``Connection.get_component_candidates``.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    pack_remb_fci,
)

from sfu.media.forwarder import (
    PLI_MIN_INTERVAL_S,
    DownTrack,
    KeyframeThrottle,
    SourceInfo,
    SourcePacket,
)
from sfu.media.rtp import (
    EXT_URI_ABS_SEND_TIME,
    EXT_URI_AUDIO_LEVEL,
    EXT_URI_MID,
    ExtensionWriter,
    RtpError,
    ntp_now,
    parse_rtp,
)

__all__ = [
    "configure_ice",
    "reset_ice",
    "IceSettings",
    "ice_settings",
    "PublishedTrackTap",
    "SubscriberSender",
    "TrackFanout",
    "OnRtp",
    "make_idle_track",
    "set_stream_id",
    "add_subscriber_track",
]

logger = logging.getLogger(__name__)

# The history store below indexes by the low 7 bits of the sequence number.
assert RTP_HISTORY_SIZE == 128, "aiortc changed RTP_HISTORY_SIZE; re-check _RawHistory"

#: Callback receiving each undecoded publisher packet; may be a coroutine function.
OnRtp = Callable[[SourcePacket, int], Awaitable[None] | None]

# ============================================================================ ICE interfaces / ports


@dataclass(slots=True)
class IceSettings:
    """The active ICE patch configuration (see :func:`configure_ice`)."""

    interfaces: list[str] = field(default_factory=list)
    port_range: tuple[int, int] | None = None
    next_port_index: int = 0
    exhausted: int = 0


_ice: IceSettings | None = None
_orig_get_host_addresses = aioice.ice.get_host_addresses
_orig_get_component_candidates = aioice.ice.Connection.get_component_candidates
# Set only while aioice binds its host sockets, so our loop wrapper never touches other sockets.
_in_ice_gather: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "roomline_in_ice_gather", default=False
)


def ice_settings() -> IceSettings | None:
    """The active settings, or None if :func:`configure_ice` is not in effect."""
    return _ice


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    assert _ice is not None
    if not _ice.interfaces:
        return _orig_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in _ice.interfaces if (use_ipv6 and ":" in a) or (use_ipv4 and ":" not in a)]


def _wrap_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap ``loop.create_datagram_endpoint`` once so port 0 during ICE gathering uses the range."""
    if getattr(loop, "_roomline_dgram_wrapped", False):
        return
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(
        protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None, **kwargs: Any
    ) -> Any:
        settings = _ice
        if (
            settings is None
            or settings.port_range is None
            or not _in_ice_gather.get()
            or local_addr is None
            or local_addr[1] != 0
        ):
            return await original(
                protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs
            )
        lo, hi = settings.port_range
        count = hi - lo + 1
        for i in range(count):
            index = (settings.next_port_index + i) % count
            try:
                result = await original(
                    protocol_factory,
                    local_addr=(local_addr[0], lo + index),
                    remote_addr=remote_addr,
                    **kwargs,
                )
            except OSError as exc:
                # uvloop reports a taken port as OSError with errno None ("could not bind").
                if exc.errno in (errno.EADDRINUSE, errno.EACCES, None):
                    continue
                raise
            settings.next_port_index = (index + 1) % count
            return result
        settings.exhausted += 1
        # aioice swallows OSError and silently gathers no candidate; make exhaustion visible.
        logger.error(
            "ICE UDP port range %d-%d exhausted on %s: the PeerConnection gets no candidate",
            lo,
            hi,
            local_addr[0],
        )
        raise OSError(errno.EADDRNOTAVAIL, f"UDP port range {lo}-{hi} exhausted")

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign]
    loop._roomline_dgram_wrapped = True  # type: ignore[attr-defined]


async def _get_component_candidates(
    self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
) -> Any:
    _wrap_loop(asyncio.get_running_loop())
    token = _in_ice_gather.set(True)
    try:
        return await _orig_get_component_candidates(self, component, addresses, timeout)
    finally:
        _in_ice_gather.reset(token)


def configure_ice(interfaces: list[str], port_range: tuple[int, int] | None = None) -> None:
    """Make aioice gather host candidates only on ``interfaces``, on ports from ``port_range``.

    ``interfaces`` are literal IP addresses (may include ``127.0.0.1``, which aioice normally
    skips); an empty list keeps aioice's own choice of addresses. ``port_range`` is inclusive;
    None means OS-chosen ports. Idempotent: calling again replaces the settings.
    """
    global _ice
    if port_range is not None:
        lo, hi = port_range
        if not (0 < lo <= hi <= 65535):
            raise ValueError(f"invalid UDP port range {port_range}")
    _ice = IceSettings(list(interfaces), port_range)
    aioice.ice.get_host_addresses = _host_addresses
    aioice.ice.Connection.get_component_candidates = _get_component_candidates  # type: ignore[method-assign]


def reset_ice() -> None:
    """Undo :func:`configure_ice` (tests). Wrapped loops fall back to pass-through."""
    global _ice
    _ice = None
    aioice.ice.get_host_addresses = _orig_get_host_addresses
    aioice.ice.Connection.get_component_candidates = _orig_get_component_candidates  # type: ignore[method-assign]


# ======================================================================================= codecs


def _primary_codec(codecs: list[RTCRtpCodecParameters]) -> RTCRtpCodecParameters | None:
    return next((c for c in codecs if not is_rtx(c)), None)


def _ext_ids(transceiver: RTCRtpTransceiver) -> dict[str, int]:
    return {e.uri: e.id for e in getattr(transceiver, "_headerExtensions", [])}


def _match_payload_type(source: SourceInfo, codecs: list[RTCRtpCodecParameters]) -> int | None:
    """The subscriber PT carrying the publisher's codec (same mime + clock, H.264 same mode)."""
    mime = source.mime.lower()
    candidates = [
        c
        for c in codecs
        if not is_rtx(c) and c.mimeType.lower() == mime and c.clockRate == source.clock_rate
    ]
    if not candidates:
        return None
    if mime == "video/h264":
        params = dict(source.parameters)
        for c in candidates:
            if (
                str(c.parameters.get("packetization-mode", "0"))
                == params.get("packetization-mode", "0")
                and str(c.parameters.get("profile-level-id", "")).lower()[:2]
                == (params.get("profile-level-id", "").lower()[:2])
            ):
                return c.payloadType
    return candidates[0].payloadType


# ========================================================================== publisher side


class _TransportHook:
    """Per DTLS transport: fast SSRC → tap routing on raw bytes, and the last raw packet.

    aiortc parses every packet into an ``RtpPacket`` (7–8 µs) before routing. Once a tap has seen its
    SSRC, packets for it skip that parse entirely; unknown SSRCs (first packet, RTX) take aiortc's
    path and the raw bytes are stashed so the tap still forwards the original bytes.
    """

    __slots__ = ("by_ssrc", "last_raw", "_orig")

    def __init__(self, transport: Any) -> None:
        self.by_ssrc: dict[int, PublishedTrackTap] = {}
        self.last_raw = b""
        self._orig = transport._handle_rtp_data
        transport._handle_rtp_data = self._handle_rtp_data
        transport._roomline_hook = self

    @staticmethod
    def of(transport: Any) -> _TransportHook:
        hook = getattr(transport, "_roomline_hook", None)
        return hook if hook is not None else _TransportHook(transport)

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        if len(data) >= 12:
            tap = self.by_ssrc.get(int.from_bytes(data[8:12], "big"))
            if tap is not None:
                await tap.feed(data, arrival_time_ms)
                return
        self.last_raw = data
        await self._orig(data, arrival_time_ms)


class PublishedTrackTap:
    """Delivers a publisher track's RTP, undecoded, to ``on_rtp(SourcePacket, arrival_ms)``.

    Create it in the publisher PC's ``track`` event (``PublishedTrackTap(event_transceiver)`` or
    :meth:`from_track`), i.e. after ``setRemoteDescription`` negotiated the codecs and before media
    flows. ``on_rtp`` may be a plain function or a coroutine function (awaited in the receive path).
    """

    def __init__(
        self,
        transceiver: RTCRtpTransceiver,
        on_rtp: OnRtp | None = None,
        *,
        keyframe_interval: float = PLI_MIN_INTERVAL_S,
    ) -> None:
        codecs: list[RTCRtpCodecParameters] = getattr(transceiver, "_codecs", [])
        codec = _primary_codec(codecs)
        if codec is None or codec.payloadType is None:
            raise RtpError("publisher transceiver has no negotiated codec")
        exts = _ext_ids(transceiver)
        self.transceiver = transceiver
        self.kind: str = transceiver.kind
        self.codec = codec
        self.source = SourceInfo(
            kind=self.kind,
            mime=codec.mimeType,
            clock_rate=codec.clockRate,
            payload_type=codec.payloadType,
            audio_level_id=exts.get(EXT_URI_AUDIO_LEVEL),
            parameters=tuple((k, str(v)) for k, v in codec.parameters.items()),
        )
        self.on_rtp = on_rtp
        self.media_ssrc: int | None = None
        self.packets = 0
        self.malformed = 0
        self.callback_errors = 0
        self._rtx_apt: dict[int, int] = {}
        for c in codecs:
            apt = c.parameters.get("apt")
            if is_rtx(c) and isinstance(apt, int) and c.payloadType is not None:
                self._rtx_apt[c.payloadType] = apt
        self._ast_id = exts.get(EXT_URI_ABS_SEND_TIME)
        self._throttle = KeyframeThrottle(keyframe_interval)
        self._tasks: set[asyncio.Future[Any]] = set()
        receiver: Any = transceiver.receiver
        self._receiver = receiver
        self._streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams
        self._nack = receiver._RTCRtpReceiver__nack_generator
        self._remb = receiver._RTCRtpReceiver__remote_bitrate_estimator
        self._hook = _TransportHook.of(receiver.transport)
        # Bypass jitter buffer + decoder: the decoder thread aiortc starts stays idle forever.
        receiver._handle_rtp_packet = self._on_aiortc_packet

    @classmethod
    def from_track(
        cls, pc: RTCPeerConnection, track: MediaStreamTrack, on_rtp: OnRtp | None = None
    ) -> PublishedTrackTap:
        """Find the transceiver whose receiver produced ``track`` (from the ``track`` event)."""
        for t in pc.getTransceivers():
            if t.receiver.track is track:
                return cls(t, on_rtp)
        raise RtpError("track does not belong to this PeerConnection")

    @property
    def mime(self) -> str:
        return self.codec.mimeType

    @property
    def clock_rate(self) -> int:
        return self.codec.clockRate

    @property
    def payload_type(self) -> int:
        return self.source.payload_type

    @property
    def keyframes_requested(self) -> int:
        return self._throttle.requested

    async def _on_aiortc_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        # Slow path: first packet of an SSRC, or RTX. aiortc already parsed it.
        transport = self._receiver.transport
        hook = getattr(transport, "_roomline_hook", None)
        if hook is not self._hook:  # transport replaced (BUNDLE): move the hook
            self._hook.by_ssrc.pop(self.media_ssrc or -1, None)
            self._hook = _TransportHook.of(transport)
            raw = packet.serialize(transport._rtp_header_extensions_map)
        else:
            raw = self._hook.last_raw
        apt = self._rtx_apt.get(packet.payload_type)
        if apt is not None:
            if self.media_ssrc is None or len(packet.payload) < 2:
                return
            unwrapped = _unwrap_rtx(raw, apt, self.media_ssrc)
            if unwrapped is None:
                self.malformed += 1
                return
            raw = unwrapped
        else:
            self.media_ssrc = packet.ssrc
            self._hook.by_ssrc[packet.ssrc] = self
        await self.feed(raw, arrival_time_ms)

    async def feed(self, data: bytes, arrival_time_ms: int) -> None:
        """Process one raw (decrypted) RTP packet of this track; malformed ones are counted, dropped."""
        try:
            pkt = SourcePacket(self.source, data)
        except RtpError:
            self.malformed += 1
            return
        view = pkt.view
        # Receiver statistics → aiortc's RTCP RR loop keeps reporting to the publisher.
        stats = self._streams.get(view.ssrc)
        if stats is None:
            stats = self._streams[view.ssrc] = StreamStatistics(self.codec.clockRate)
        stats.add(view)  # type: ignore[arg-type]  # duck-typed: sequence_number, timestamp
        receiver = self._receiver
        if self._nack is not None and self._nack.add(view):
            await receiver._send_rtcp_nack(view.ssrc, sorted(self._nack.missing))
        if self._remb is not None and self._ast_id:
            ast = view.extension(self._ast_id)
            if ast is not None and len(ast) == 3:
                remb = self._remb.add(
                    abs_send_time=int.from_bytes(ast, "big"),
                    arrival_time_ms=arrival_time_ms,
                    payload_size=len(data) - view.payload_offset,
                    ssrc=view.ssrc,
                )
                rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc
                if remb is not None and rtcp_ssrc is not None:
                    await receiver._send_rtcp(
                        RtcpPsfbPacket(
                            fmt=RTCP_PSFB_APP,
                            ssrc=rtcp_ssrc,
                            media_ssrc=0,
                            fci=pack_remb_fci(*remb),
                        )
                    )
        self.packets += 1
        cb = self.on_rtp
        if cb is not None:
            # An exception escaping here would end aiortc's DTLS receive loop, i.e. kill the
            # publisher's whole transport; contain it (try is free in 3.11 when nothing raises).
            try:
                res = cb(pkt, arrival_time_ms)
                if res is not None:
                    await res
            except Exception:
                self.callback_errors += 1
                if self.callback_errors == 1:
                    logger.exception("on_rtp callback failed (further failures only counted)")

    def request_keyframe(self) -> bool:
        """Send a PLI to the publisher unless one went out < ``keyframe_interval`` ago.

        Returns True if a PLI was sent. No-op for audio or before the publisher's SSRC is known.
        """
        if self.kind != "video" or self.media_ssrc is None:
            return False
        if not self._throttle.allow(time.monotonic()):
            return False
        task = asyncio.ensure_future(self._receiver._send_rtcp_pli(self.media_ssrc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def close(self) -> None:
        """Detach (the receiver falls back to aiortc's own handling)."""
        if self.media_ssrc is not None and self._hook.by_ssrc.get(self.media_ssrc) is self:
            del self._hook.by_ssrc[self.media_ssrc]
        self._receiver.__dict__.pop("_handle_rtp_packet", None)
        self.on_rtp = None


def _unwrap_rtx(raw: bytes, apt: int, ssrc: int) -> bytes | None:
    """RFC 4588: original seq is the first 2 payload bytes; restore SSRC/PT/seq, drop extensions."""
    try:
        view = parse_rtp(raw)
    except RtpError:
        return None
    if view.payload_end - view.payload_offset < 2:
        return None
    osn = raw[view.payload_offset : view.payload_offset + 2]
    header = bytes((0x80 | (view.padding and 0x20), (view.marker << 7) | apt)) + osn
    header += raw[4:8] + ssrc.to_bytes(4, "big")
    return header + raw[view.payload_offset + 2 :]


# ========================================================================= subscriber side


class _IdleTrack(MediaStreamTrack):
    """Parks an aiortc sender: ``recv()`` never completes, so aiortc never encodes or sends."""

    def __init__(self, kind: str, track_id: str) -> None:
        super().__init__()
        self.kind = kind
        self._id = track_id

    async def recv(self) -> Any:
        await asyncio.get_running_loop().create_future()


def make_idle_track(kind: str, track_id: str) -> MediaStreamTrack:
    """An idle track of ``kind`` whose id (the msid track id, e.g. ``TR_xxx``) is ``track_id``."""
    if kind not in ("audio", "video"):
        raise ValueError(f"invalid track kind {kind!r}")
    return _IdleTrack(kind, track_id)


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """Set the msid stream id aiortc writes into the SDP (``a=msid:<stream_id> <track_id>``).

    For LiveKit clients use ``PA_x|TR_y`` (livekit-protocol.md §5). Call before ``createOffer``.
    """
    sender._stream_id = stream_id


class _RawHistory:
    """Stands in for aiortc's ``__rtp_history`` dict: stores output bytes, parses only on NACK.

    aiortc's ``_retransmit`` calls ``history.get(seq % RTP_HISTORY_SIZE)`` and then serialises the
    packet with the sender's extension map (RTX-wrapping it if negotiated). Storing bytes keeps the
    per-packet cost at one list store instead of building an ``RtpPacket`` (7–9 µs).
    """

    __slots__ = ("slots", "_sender", "served")

    def __init__(self, sender: Any) -> None:
        self.slots: list[bytes | None] = [None] * RTP_HISTORY_SIZE
        self._sender = sender
        self.served = 0

    def get(self, index: int, default: Any = None) -> RtpPacket | None:
        raw = self.slots[index % RTP_HISTORY_SIZE]
        if raw is None:
            return default
        self.served += 1
        return RtpPacket.parse(raw, self._sender._RTCRtpSender__rtp_header_extensions_map)

    def __setitem__(self, index: int, packet: RtpPacket) -> None:
        # Only reached if aiortc's own _run_rtp sends (never with an idle track); keep it coherent.
        self.slots[index % RTP_HISTORY_SIZE] = packet.serialize(
            self._sender._RTCRtpSender__rtp_header_extensions_map
        )


class SubscriberSender:
    """Forwards one published track into one subscriber PC through a parked aiortc sender.

    Create it right after adding the transceiver (see :func:`add_subscriber_track`). Until DTLS is up
    and aiortc started the sender (its mid known), :meth:`send` drops packets and counts them in
    ``dropped_not_ready``. ``on_keyframe_request`` is called on PLI/FIR from the subscriber (wire it to
    the publisher tap's :meth:`PublishedTrackTap.request_keyframe`).
    """

    def __init__(
        self,
        transceiver: RTCRtpTransceiver,
        source: SourceInfo,
        on_keyframe_request: Callable[[], object] | None = None,
    ) -> None:
        self.transceiver = transceiver
        self.source = source
        self.on_keyframe_request = on_keyframe_request
        self.downtrack: DownTrack | None = None
        self.dropped_not_ready = 0
        self.send_errors = 0
        self.keyframe_requests_received = 0
        self.nacks_received = 0
        self.incompatible = False
        self._paused = False
        sender: Any = transceiver.sender
        self._sender = sender
        self._send_rtp: Callable[[bytes], Awaitable[None]] | None = None
        self._history = _RawHistory(sender)
        sender._RTCRtpSender__rtp_history = self._history
        self._orig_rtcp = sender._handle_rtcp_packet
        sender._handle_rtcp_packet = self._on_rtcp

    @property
    def sender(self) -> RTCRtpSender:
        return self.transceiver.sender

    @property
    def ready(self) -> bool:
        return self.downtrack is not None

    @property
    def ssrc(self) -> int:
        """The SSRC announced to the subscriber (``a=ssrc``) and used on the wire."""
        return int(self._sender._ssrc)

    @property
    def needs_keyframe(self) -> bool:
        dt = self.downtrack
        return dt is not None and dt.needs_keyframe

    @property
    def retransmissions_served(self) -> int:
        return self._history.served

    def pause(self) -> None:
        """Stop forwarding (UpdateTrackSettings ``disabled``)."""
        self._paused = True
        if self.downtrack is not None:
            self.downtrack.pause()

    def resume(self) -> None:
        """Resume; video waits for a keyframe, which the fanout requests from the publisher."""
        self._paused = False
        if self.downtrack is not None:
            self.downtrack.resume()

    def switch_source(self, source: SourceInfo) -> None:
        """Forward a different publisher track (same kind) from now on, output stays contiguous."""
        self.source = source
        if self.downtrack is not None:
            pt = _match_payload_type(source, getattr(self.transceiver, "_codecs", []))
            self.downtrack.set_payload_types({source.payload_type: pt} if pt is not None else {})
            self.downtrack.switch_source()

    def _try_ready(self) -> bool:
        sender = self._sender
        mid = sender._RTCRtpSender__mid
        if mid is None or self.incompatible:
            return False
        codecs = getattr(self.transceiver, "_codecs", [])
        pt = _match_payload_type(self.source, codecs)
        if pt is None:
            self.incompatible = True
            logger.warning(
                "subscriber mid %s did not negotiate %s; not forwarding", mid, self.source.mime
            )
            return False
        exts = _ext_ids(self.transceiver)
        writer = ExtensionWriter(
            mid,
            exts.get(EXT_URI_MID),
            exts.get(EXT_URI_AUDIO_LEVEL),
            exts.get(EXT_URI_ABS_SEND_TIME),
        )
        dt = DownTrack(
            self.source.kind,
            sender._ssrc,
            {self.source.payload_type: pt},
            writer,
            self.source.clock_rate,
        )
        if self._paused:
            dt.pause()
        self._send_rtp = sender.transport._send_rtp
        self.downtrack = dt
        return True

    async def send(self, pkt: SourcePacket, now_ntp: int | None = None) -> bool:
        """Forward one publisher packet; returns True if it went out.

        ``now_ntp`` (64-bit NTP) should be computed once per packet by the caller and shared by all
        subscribers; it defaults to the current time.
        """
        dt = self.downtrack
        if dt is None:
            if not self._try_ready():
                self.dropped_not_ready += 1
                return False
            dt = self.downtrack
            assert dt is not None
        if now_ntp is None:
            now_ntp = ntp_now()
        out = dt.forward(pkt, now_ntp)
        if out is None:
            return False
        # seq % 128 == low byte & 0x7F (RTP_HISTORY_SIZE is asserted to be 128 at import).
        self._history.slots[out[3] & 0x7F] = out
        # SR counters read by aiortc's RTCP loop (else the SR carries zeros).
        s = self._sender
        st = dt.stats
        s._RTCRtpSender__ntp_timestamp = st.last_ntp
        s._RTCRtpSender__rtp_timestamp = st.last_rtp_ts
        s._RTCRtpSender__packet_count = st.packets
        s._RTCRtpSender__octet_count = st.octets
        try:
            await self._send_rtp(out)  # type: ignore[misc]
        except ConnectionError:
            self.send_errors += 1
            return False
        return True

    async def _on_rtcp(self, packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.keyframe_requests_received += 1
            cb = self.on_keyframe_request
            if cb is not None:
                cb()
            return  # the parked sender has no encoder to force a keyframe on
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.nacks_received += len(packet.lost)
        await self._orig_rtcp(packet)

    def close(self) -> None:
        """Detach the RTCP hook (the transceiver itself is the signalling layer's to stop)."""
        self._sender.__dict__.pop("_handle_rtcp_packet", None)


def add_subscriber_track(
    pc: RTCPeerConnection,
    source: SourceInfo,
    track_id: str,
    stream_id: str,
    on_keyframe_request: Callable[[], object] | None = None,
) -> SubscriberSender:
    """Add a sendonly m-line for ``source`` to a subscriber PC and return its sender.

    Sets msid ``<stream_id> <track_id>`` (LiveKit: ``PA_x|TR_y TR_y``) and restricts the offered codecs
    to the publisher's codec (plus RTX for video) so no transcoding is ever needed. Call before
    ``createOffer``.
    """
    track = make_idle_track(source.kind, track_id)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    caps = RTCRtpSender.getCapabilities(source.kind).codecs
    mime = source.mime.lower()
    params = dict(source.parameters)
    chosen = [c for c in caps if c.mimeType.lower() == mime]
    if mime == "video/h264":
        exact = [
            c
            for c in chosen
            if str(c.parameters.get("profile-level-id", "")).lower()[:2]
            == params.get("profile-level-id", "").lower()[:2]
        ]
        chosen = exact or chosen
    if chosen:
        if source.kind == "video":
            chosen += [c for c in caps if c.mimeType.lower() == "video/rtx"]
        transceiver.setCodecPreferences(chosen)
    set_stream_id(transceiver.sender, stream_id)
    return SubscriberSender(transceiver, source, on_keyframe_request)


class TrackFanout:
    """One published track → its subscribers. Installs itself as the tap's ``on_rtp``.

    Subscribers are kept in a tuple replaced on change, so adding/removing during a send is safe.
    """

    def __init__(self, tap: PublishedTrackTap) -> None:
        self.tap = tap
        self.subscribers: tuple[SubscriberSender, ...] = ()
        self._video = tap.kind == "video"
        tap.on_rtp = self.on_rtp

    def add(self, sub: SubscriberSender) -> None:
        if sub.on_keyframe_request is None:
            sub.on_keyframe_request = self.tap.request_keyframe
        self.subscribers = (*self.subscribers, sub)

    def remove(self, sub: SubscriberSender) -> None:
        self.subscribers = tuple(s for s in self.subscribers if s is not sub)

    async def on_rtp(self, pkt: SourcePacket, arrival_ms: int) -> None:
        now = ntp_now()
        subs = self.subscribers
        for sub in subs:
            try:
                await sub.send(pkt, now)
            except Exception:
                # One broken subscriber must not stop the others (or the publisher's transport).
                sub.send_errors += 1
                if sub.send_errors == 1:
                    logger.exception("forwarding to subscriber failed (further failures counted)")
        if self._video:
            for sub in subs:
                if sub.needs_keyframe:
                    self.tap.request_keyframe()
                    break

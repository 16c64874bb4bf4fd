"""The receive side (aiortc's ``rtcrtpreceiver``): a publisher's RTP, undecoded.

:class:`PublishedTrackTap` takes a publisher track's packets before aiortc's jitter buffer and
decoder, which stay idle. What aiortc's receiver does for the publisher keeps working: receiver
statistics feed its RTCP RR loop, its NACK generator asks for lost packets, its REMB estimator sends
bandwidth estimates, and :meth:`PublishedTrackTap.request_keyframe` sends a throttled PLI.

Private names used: ``RTCRtpReceiver._handle_rtp_packet`` (replaced per instance),
``_RTCRtpReceiver__remote_streams``/``__nack_generator``/``__remote_bitrate_estimator``/
``__rtcp_ssrc``, ``RTCRtpReceiver._send_rtcp``/``_send_rtcp_nack``/``_send_rtcp_pli``, and
``RTCDtlsTransport._handle_rtp_data``/``_rtp_header_extensions_map`` (see :class:`_TransportHook`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, pack_remb_fci

from roomline.tasks import TaskSet
from sfu.media.aiortc.parameters import (
    extension_ids,
    negotiated_codecs,
    primary_codec,
    rtx_payload_types,
)
from sfu.media.forwarder import PLI_MIN_INTERVAL_S, KeyframeThrottle, SourceInfo, SourcePacket
from sfu.media.rtp import EXT_URI_ABS_SEND_TIME, EXT_URI_AUDIO_LEVEL, RtpError, parse_rtp

__all__ = ["OnRtp", "PublishedTrackTap"]

log = structlog.get_logger(__name__)

#: Callback receiving each undecoded publisher packet; may be a coroutine function.
OnRtp = Callable[[SourcePacket], Awaitable[None] | None]


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
    """Delivers a publisher track's RTP, undecoded, to ``on_rtp(SourcePacket)``.

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
        codecs = negotiated_codecs(transceiver)
        codec = primary_codec(codecs)
        if codec is None or codec.payloadType is None:
            raise RtpError("publisher transceiver has no negotiated codec")
        exts = extension_ids(transceiver)
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
        self._rtx_apt = rtx_payload_types(codecs)
        self._ast_id = exts.get(EXT_URI_ABS_SEND_TIME)
        self._throttle = KeyframeThrottle(keyframe_interval)
        self._tasks = TaskSet("aiortc receiver")
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
                res = cb(pkt)
                if res is not None:
                    await res
            except Exception:
                self.callback_errors += 1
                if self.callback_errors == 1:
                    log.exception(
                        "on_rtp callback failed (further failures only counted)",
                        kind=self.kind,
                        ssrc=view.ssrc,
                    )

    def request_keyframe(self) -> bool:
        """Send a PLI to the publisher unless one went out < ``keyframe_interval`` ago.

        Returns True if a PLI was sent. No-op for audio or before the publisher's SSRC is known.
        """
        if self.kind != "video" or self.media_ssrc is None:
            return False
        if not self._throttle.allow(time.monotonic()):
            return False
        self._tasks.spawn(self._receiver._send_rtcp_pli(self.media_ssrc), "RTCP PLI")
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

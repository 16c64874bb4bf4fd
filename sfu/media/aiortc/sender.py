"""The send side (aiortc's ``rtcrtpsender``): forwarded packets through a parked aiortc sender.

A subscriber m-line gets a real ``RTCRtpSender`` whose track never yields a frame (:class:`_IdleTrack`),
so aiortc never encodes. :class:`SubscriberSender` writes the forwarder's output with the DTLS
transport's SRTP send, and keeps what aiortc's sender would have kept: the SR counters its RTCP loop
reads, and a history its ``_retransmit`` serves subscriber NACKs from. PLI/FIR from the subscriber go
to the publisher instead (there is no encoder here to make a keyframe).

Private names used: ``RTCRtpSender._handle_rtcp_packet`` (replaced per instance),
``_RTCRtpSender__mid``/``__rtp_history``/``__rtp_header_extensions_map``/``__ntp_timestamp``/
``__rtp_timestamp``/``__packet_count``/``__octet_count``, ``RTCRtpSender._ssrc``/``_stream_id``, and
for :func:`srtp_sender` ``RTCDtlsTransport._state``/``_tx_srtp``/``_send_rtp``/``__tx_bytes``/
``__tx_packets``, ``RTCIceTransport._connection`` and aioice's ``Connection._nominated`` (pairs
whose ``protocol`` is a plain ``StunProtocol``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
)

from sfu.media.aiortc.parameters import (
    extension_ids,
    match_payload_type,
    negotiated_codecs,
    subscriber_codecs,
)
from sfu.media.forwarder import DownTrack, SourceInfo, SourcePacket
from sfu.media.rtp import (
    EXT_URI_ABS_SEND_TIME,
    EXT_URI_AUDIO_LEVEL,
    EXT_URI_MID,
    ExtensionWriter,
)

__all__ = ["SubscriberSender", "add_subscriber_track", "make_idle_track", "set_stream_id"]

log = structlog.get_logger(__name__)

# The history store below indexes by the low 7 bits of the sequence number.
assert RTP_HISTORY_SIZE == 128, "aiortc changed RTP_HISTORY_SIZE; re-check _RawHistory"


def srtp_sender(dtls: Any) -> Callable[[bytes], None]:
    """A synchronous twin of ``RTCDtlsTransport._send_rtp`` for RTP packets of ``dtls``.

    aiortc's send is a chain of five coroutines (DTLS → ICE transport → ICE connection →
    candidate pair's protocol → ``sendto``) of which none ever waits on a plain UDP pair; per
    forwarded packet and subscriber that chain cost more than the SRTP protection. The same
    steps here: refuse unless DTLS is connected, protect, ``sendto`` the nominated pair, count
    the bytes for aiortc's stats. A pair through a TURN relay (its protocol does wait, for a
    channel binding) still goes through aiortc's own coroutine.
    """
    pending: set[asyncio.Future[None]] = set()

    def send(data: bytes) -> None:
        if dtls._state is not DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        protocol = pair.protocol
        if type(protocol) is not StunProtocol:
            fut = asyncio.ensure_future(dtls._send_rtp(data))
            pending.add(fut)
            fut.add_done_callback(_finished(pending))
            return
        transport = protocol.transport
        if transport is None:
            raise ConnectionError("Cannot send data, socket closed")
        out = dtls._tx_srtp.protect(data)
        transport.sendto(out, pair.remote_addr)
        dtls._RTCDtlsTransport__tx_bytes += len(out)
        dtls._RTCDtlsTransport__tx_packets += 1

    return send


def _finished(pending: set[asyncio.Future[None]]) -> Callable[[asyncio.Future[None]], None]:
    def done(fut: asyncio.Future[None]) -> None:
        pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.debug("relayed RTP send failed", error=str(fut.exception()))

    return done


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

    LiveKit clients take the publisher's participant sid and the track sid from a stream id of the
    form ``PA_x|TR_y``; without it they cannot attribute the track. Call before ``createOffer``.
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
    the publisher tap's ``request_keyframe``, through the track's relay).
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
        self._send_rtp: Callable[[bytes], None] | None = None
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
        """Resume; video waits for a keyframe, which the relay requests from the publisher."""
        self._paused = False
        if self.downtrack is not None:
            self.downtrack.resume()

    def switch_source(self, source: SourceInfo) -> None:
        """Forward a different publisher track (same kind) from now on, output stays contiguous."""
        self.source = source
        if self.downtrack is not None:
            pt = match_payload_type(source, negotiated_codecs(self.transceiver))
            self.downtrack.set_payload_types({source.payload_type: pt} if pt is not None else {})
            self.downtrack.switch_source()

    def _try_ready(self) -> bool:
        sender = self._sender
        mid = sender._RTCRtpSender__mid
        if mid is None or self.incompatible:
            return False
        pt = match_payload_type(self.source, negotiated_codecs(self.transceiver))
        if pt is None:
            self.incompatible = True
            log.warning(
                "subscriber did not negotiate the publisher's codec; not forwarding",
                mid=mid,
                mime=self.source.mime,
            )
            return False
        exts = extension_ids(self.transceiver)
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
        self._send_rtp = srtp_sender(sender.transport)
        self.downtrack = dt
        return True

    def send(self, pkt: SourcePacket, now_ntp: int) -> bool:
        """Forward one publisher packet; returns True if it went out.

        ``now_ntp`` (64-bit NTP, see :func:`sfu.media.rtp.ntp_timestamp`) is read once per packet by
        the caller and shared by all subscribers.
        """
        dt = self.downtrack
        if dt is None:
            if not self._try_ready():
                self.dropped_not_ready += 1
                return False
            dt = self.downtrack
            assert dt is not None
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
        send_rtp = self._send_rtp
        assert send_rtp is not None  # set with the downtrack
        try:
            send_rtp(out)
        except ConnectionError:
            self.send_errors += 1
            return False
        return True

    def stats(self) -> dict[str, object]:
        """This subscription's state and counters, for diagnostics (``GET /debug/media``).

        ``mid``/``direction``/``transport`` say whether aiortc started the sender (a mid) on a
        connected transport in a sending direction; the counters say what became of the
        publisher's packets: forwarded, or dropped (before the sender was ready, paused, waiting
        for a keyframe, an unknown payload type) or failed to send.
        """
        dt = self.downtrack
        st = dt.stats if dt is not None else None
        return {
            "mid": self._sender._RTCRtpSender__mid,
            "direction": self.transceiver.currentDirection,
            "transport": self._sender.transport.state,
            "ssrc": self.ssrc,
            "ready": dt is not None,
            "paused": self._paused,
            "incompatible": self.incompatible,
            "forwarded": st.packets if st is not None else 0,
            "dropped_not_ready": self.dropped_not_ready,
            "send_errors": self.send_errors,
            "dropped_paused": st.dropped_paused if st is not None else 0,
            "dropped_waiting_keyframe": st.dropped_waiting_keyframe if st is not None else 0,
            "dropped_unknown_pt": st.dropped_unknown_pt if st is not None else 0,
            "nacks_received": self.nacks_received,
            "keyframe_requests_received": self.keyframe_requests_received,
        }

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
    codecs = subscriber_codecs(source)
    if codecs:
        transceiver.setCodecPreferences(codecs)
    set_stream_id(transceiver.sender, stream_id)
    return SubscriberSender(transceiver, source, on_keyframe_request)

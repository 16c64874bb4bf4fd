"""Fan-out of one published track to its subscribers, whatever transport each side uses.

A publisher's transport (a WebRTC receiver tap, or a local participant's RTP frames) pushes each packet
once; the relay hands the parsed packet to every subscriber's sink (a WebRTC ``SubscriberSender`` that
rewrites SSRC/seq/ts, or a local participant's socket). The room model decides who is subscribed; the
node turns ``SubscriptionChanged`` events into :meth:`TrackRelay.add_sink` / :meth:`remove_sink`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog

from sfu.media.forwarder import SourceInfo, SourcePacket
from sfu.media.rtp import RtpError, ntp_timestamp

log = structlog.get_logger(__name__)


class Sink(Protocol):
    """One subscriber's end of a track (``sfu.media.aiortc.SubscriberSender`` is one)."""

    def send(self, pkt: SourcePacket, now_ntp: int) -> bool:
        """Forward one packet; ``now_ntp`` (64-bit NTP) is read once per packet for all sinks.

        Synchronous: a sink hands the packet to its socket (a datagram, or a local stream's
        buffer) and returns; a per-packet coroutine chain cost more than the forwarding itself.
        """

    @property
    def needs_keyframe(self) -> bool:
        """True while the sink drops video waiting for a keyframe."""

    def stats(self) -> dict[str, object]:
        """Counters for diagnostics (``GET /debug/media``)."""

    def close(self) -> None:
        """The subscription ended."""


class TrackRelay:
    """One published track: its source description, its sinks, and keyframe requests upstream."""

    __slots__ = (
        "track_sid",
        "publisher_sid",
        "source",
        "sinks",
        "_fanout",
        "request_keyframe",
        "audio_level",
        "audio_level_at",
        "packets",
        "malformed",
        "sink_errors",
    )

    def __init__(
        self,
        track_sid: str,
        publisher_sid: str,
        source: SourceInfo,
        request_keyframe: Callable[[], object] | None = None,
    ) -> None:
        self.track_sid = track_sid
        self.publisher_sid = publisher_sid
        self.source = source
        self.sinks: dict[str, Sink] = {}
        #: Snapshot of the sinks, replaced on change so a send loop never sees a mutating dict.
        self._fanout: tuple[Sink, ...] = ()
        self.request_keyframe: Callable[[], object] = request_keyframe or (lambda: None)
        #: Last RFC 6464 level (0 = loudest, 127 = silence) and when it was seen, for speakers.
        self.audio_level = 127
        self.audio_level_at = 0.0
        self.packets = 0
        self.malformed = 0
        self.sink_errors = 0

    def push(self, data: bytes) -> None:
        """A raw packet from the publisher: parse once, hand to every sink."""
        try:
            packet = SourcePacket(self.source, data)
        except RtpError:
            self.malformed += 1  # counted, never fatal: one bad packet must not stop the track
            return
        self.on_rtp(packet)

    def on_rtp(self, packet: SourcePacket) -> None:
        """A parsed packet from the publisher (the WebRTC tap calls this directly)."""
        self.packets += 1
        if packet.audio_level is not None:
            self.audio_level = packet.audio_level & 0x7F
            self.audio_level_at = time.monotonic()
        sinks = self._fanout
        if not sinks:
            return
        now = ntp_timestamp(time.time())
        for sink in sinks:
            try:
                sink.send(packet, now)
            except Exception:  # one broken subscriber must not starve the others
                self.sink_errors += 1
                if self.sink_errors == 1:
                    log.exception("forwarding to a subscriber failed", track=self.track_sid)
        if self.source.kind == "video":
            for sink in sinks:
                if sink.needs_keyframe:
                    self.request_keyframe()
                    break

    def stats(self) -> dict[str, object]:
        """The track's counters and each subscriber's."""
        subscribers: dict[str, object] = {sid: sink.stats() for sid, sink in self.sinks.items()}
        return {
            "kind": self.source.kind,
            "mime": self.source.mime,
            "received": self.packets,
            "malformed": self.malformed,
            "sink_errors": self.sink_errors,
            "subscribers": subscribers,
        }

    def add_sink(self, subscriber_sid: str, sink: Sink) -> None:
        self.remove_sink(subscriber_sid)
        self.sinks[subscriber_sid] = sink
        self._fanout = tuple(self.sinks.values())
        if self.source.kind == "video":
            self.request_keyframe()  # a late joiner needs a keyframe to start decoding

    def remove_sink(self, subscriber_sid: str) -> None:
        sink = self.sinks.pop(subscriber_sid, None)
        if sink is not None:
            self._fanout = tuple(self.sinks.values())
            sink.close()

    def close(self) -> None:
        for sid in list(self.sinks):
            self.remove_sink(sid)

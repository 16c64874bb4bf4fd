"""Per-subscriber forwarding state (sans-I/O): LiveKit's ``DownTrack`` idea in small.

One :class:`SourcePacket` is prepared per packet arriving from a publisher (parse once, detect keyframe
once); then every subscriber's :class:`DownTrack` turns it into output bytes, or drops it.

Sequence numbers: ``out = in + offset (mod 2^16)``, offset chosen on the first forwarded packet and
re-based after a source switch or a resume so the output stays contiguous; gaps in the input stay gaps
in the output, so a subscriber NACK maps back to an input sequence number. Timestamps likewise
``out = in + offset (mod 2^32)``, re-based from the wall clock.

Video: a new (or resumed) subscriber drops everything until a keyframe starts and raises
``needs_keyframe``; the adapter turns that into a throttled PLI upstream (:class:`KeyframeThrottle`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from sfu.media.rtp import (
    ExtensionWriter,
    RtpError,
    RtpPacketView,
    abs_send_time,
    is_keyframe,
    parse_rtp,
    rewrite,
)

__all__ = [
    "SourceInfo",
    "SourcePacket",
    "DownTrack",
    "DownTrackStats",
    "KeyframeThrottle",
    "PLI_MIN_INTERVAL_S",
]

#: At most one keyframe request per publisher track per 500 ms: every late joiner asks, and a
#: keyframe costs the publisher 5–10× a delta frame, so unthrottled PLIs from N subscribers would
#: turn into a keyframe storm.
PLI_MIN_INTERVAL_S = 0.5

_U16 = 0x10000
_U32 = 0x100000000


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the forwarder must know about a published track (from the publisher's negotiation).

    ``audio_level_id`` is the publisher session's extension ID of ssrc-audio-level (None if not
    negotiated); it is needed to copy the level into each subscriber's own extension ID.
    """

    kind: str
    mime: str
    clock_rate: int
    payload_type: int
    audio_level_id: int | None = None
    #: Codec parameters (fmtp) of the publisher's codec, used to pick the subscriber's matching PT.
    parameters: tuple[tuple[str, str], ...] = ()


class SourcePacket:
    """One publisher packet, parsed once and shared by all DownTracks."""

    __slots__ = ("data", "view", "audio_level", "keyframe")

    def __init__(self, source: SourceInfo, data: bytes) -> None:
        """Parse ``data``; raises :class:`~sfu.media.rtp.RtpError` if malformed."""
        view = parse_rtp(data)
        self.data = data
        self.view: RtpPacketView = view
        level = None
        if source.audio_level_id and view.extensions:
            value = view.extension(source.audio_level_id)
            if value:
                level = value[0]
        self.audio_level: int | None = level
        kf = False
        if source.kind == "video" and view.payload_end > view.payload_offset:
            try:
                kf = is_keyframe(source.mime, data[view.payload_offset : view.payload_end])
            except RtpError:
                kf = False
        self.keyframe = kf


@dataclass(slots=True)
class DownTrackStats:
    """Counters of one DownTrack; ``last_rtp_ts``/``last_ntp`` pair up for the RTCP SR."""

    packets: int = 0
    octets: int = 0
    last_rtp_ts: int = 0
    last_ntp: int = 0
    dropped_paused: int = 0
    dropped_waiting_keyframe: int = 0
    dropped_unknown_pt: int = 0


class DownTrack:
    """Rewriting state of one published track towards one subscriber.

    ``payload_types`` maps the publisher's PT to the subscriber's negotiated PT; packets with other
    PTs are dropped. ``extensions`` builds the subscriber's extension block. ``forward`` returns the
    bytes to send, or None when the packet is dropped.
    """

    __slots__ = (
        "kind",
        "ssrc",
        "clock_rate",
        "_pt_map",
        "_ext",
        "_want_ast",
        "_paused",
        "_waiting_keyframe",
        "_need_rebase",
        "_seq_offset",
        "_ts_offset",
        "_last_out_seq",
        "stats",
    )

    def __init__(
        self,
        kind: str,
        ssrc: int,
        payload_types: Mapping[int, int],
        extensions: ExtensionWriter,
        clock_rate: int,
    ) -> None:
        self.kind = kind
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._pt_map = dict(payload_types)
        self._ext = extensions
        self._want_ast = extensions.wants_abs_send_time
        self._paused = False
        # A video subscriber cannot decode anything before a keyframe.
        self._waiting_keyframe = kind == "video"
        self._need_rebase = True
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_out_seq = -1
        self.stats = DownTrackStats()

    # ------------------------------------------------------------------ control

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def needs_keyframe(self) -> bool:
        """True while a video DownTrack drops packets waiting for a keyframe (ask for a PLI)."""
        return self._waiting_keyframe and not self._paused

    def pause(self) -> None:
        """Stop forwarding (UpdateTrackSettings ``disabled=true``)."""
        self._paused = True

    def resume(self) -> None:
        """Resume forwarding; video waits for a keyframe again (check ``needs_keyframe``)."""
        if not self._paused:
            return
        self._paused = False
        if self.kind == "video":
            self._waiting_keyframe = True
        self._need_rebase = True

    def switch_source(self) -> None:
        """The published source changed (new SSRC, new seq/ts space): re-base on the next packet."""
        self._need_rebase = True
        if self.kind == "video":
            self._waiting_keyframe = True

    def set_payload_types(self, payload_types: Mapping[int, int]) -> None:
        self._pt_map = dict(payload_types)

    def input_seq(self, out_seq: int) -> int:
        """Map an output sequence number (from a subscriber NACK) back to the input one.

        Valid for packets forwarded since the last re-base (the common case of a recent loss).
        """
        return (out_seq - self._seq_offset) % _U16

    # ---------------------------------------------------------------- hot path

    def _rebase(self, view: RtpPacketView, now_ntp: int) -> None:
        st = self.stats
        if self._last_out_seq < 0:
            # Random start in the lower half, like aiortc, so SRTP's rollover counter guess is safe.
            out_seq = random.randrange(0, 0x8000)
            out_ts = random.randrange(0, _U32)
        else:
            out_seq = (self._last_out_seq + 1) % _U16
            # Advance the output clock by the wall-clock gap so the receiver's jitter and playout
            # logic sees time passing (at least one tick so timestamps never repeat).
            elapsed = max(0, now_ntp - st.last_ntp)
            ticks = max(1, (elapsed * self.clock_rate) >> 32)
            out_ts = (st.last_rtp_ts + ticks) % _U32
        self._seq_offset = (out_seq - view.sequence_number) % _U16
        self._ts_offset = (out_ts - view.timestamp) % _U32
        self._need_rebase = False

    def forward(self, pkt: SourcePacket, now_ntp: int) -> bytes | None:
        """Rewrite ``pkt`` for this subscriber, or return None if it must be dropped.

        ``now_ntp`` is the 64-bit NTP send time (shared by all subscribers of the packet); it feeds
        abs-send-time and the SR counters.
        """
        if self._paused:
            self.stats.dropped_paused += 1
            return None
        if self._waiting_keyframe:
            if not pkt.keyframe:
                self.stats.dropped_waiting_keyframe += 1
                return None
            self._waiting_keyframe = False
        view = pkt.view
        out_pt = self._pt_map.get(view.payload_type)
        if out_pt is None:
            self.stats.dropped_unknown_pt += 1
            return None
        if self._need_rebase:
            self._rebase(view, now_ntp)
        seq = (view.sequence_number + self._seq_offset) & 0xFFFF
        ts = (view.timestamp + self._ts_offset) & 0xFFFFFFFF
        if self._want_ast:
            block = self._ext.build(pkt.audio_level, abs_send_time(now_ntp))
        else:
            block = self._ext.build(pkt.audio_level)
        out = rewrite(pkt.data, view, self.ssrc, out_pt, seq, ts, block)
        # Only advance "last" on in-order packets so a re-base continues after the newest one.
        if self._last_out_seq < 0 or 0 < (seq - self._last_out_seq) & 0xFFFF < 0x8000:
            self._last_out_seq = seq
            self.stats.last_rtp_ts = ts
            self.stats.last_ntp = now_ntp
        st = self.stats
        st.packets += 1
        st.octets += view.payload_end - view.payload_offset
        return out


class KeyframeThrottle:
    """Rate-limits keyframe requests for one publisher track (≤ 1 per ``interval`` seconds)."""

    __slots__ = ("interval", "_last", "requested", "suppressed")

    def __init__(self, interval: float = PLI_MIN_INTERVAL_S) -> None:
        self.interval = interval
        self._last: float | None = None
        self.requested = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        """Return True (and record it) if a request may be sent at monotonic time ``now``."""
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        self._last = now
        self.requested += 1
        return True

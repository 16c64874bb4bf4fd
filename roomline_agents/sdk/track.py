"""Tracks as an agent sees them (``livekit.rtc`` names): remote audio it receives, local audio it
publishes."""

from __future__ import annotations

import enum
import itertools

import numpy as np

from roomline_agents.sdk.audio import AudioSource, AudioStream
from sfu.local.codec import OPUS_PT, OpusDecoder
from sfu.local.jitter import JitterBuffer, Kind
from sfu.media.rtp import RtpError, parse_rtp

#: Reordering a remote track tolerates: a missing packet is concealed once the packet after the
#: next one has arrived (costs 20 ms, and only around a loss; in-order packets are not delayed).
REORDER_FRAMES = 2


class TrackKind(enum.IntEnum):
    KIND_UNKNOWN = 0
    KIND_AUDIO = 1
    KIND_VIDEO = 2


class TrackSource(enum.IntEnum):
    SOURCE_UNKNOWN = 0
    SOURCE_CAMERA = 1
    SOURCE_MICROPHONE = 2
    SOURCE_SCREENSHARE = 3
    SOURCE_SCREENSHARE_AUDIO = 4


class Track:
    def __init__(self, sid: str, name: str, kind: TrackKind) -> None:
        self.sid = sid
        self.name = name
        self.kind = kind
        self.muted = False


class RemoteAudioTrack(Track):
    """A subscribed remote audio track: its Opus RTP, decoded to 48 kHz frames for its streams.

    Packets go through the same :class:`~sfu.local.jitter.JitterBuffer` and
    :class:`~sfu.local.codec.OpusDecoder` as a bridge call's; frames are handed on as they arrive
    (there is no playout clock here), lost ones concealed.
    """

    def __init__(self, sid: str, name: str) -> None:
        super().__init__(sid, name, TrackKind.KIND_AUDIO)
        self._streams: list[AudioStream] = []
        self._jitter = JitterBuffer(target_frames=REORDER_FRAMES)
        self._decoder: OpusDecoder | None = None
        self.packets = 0
        self.bad_packets = 0

    def _add_stream(self, stream: AudioStream) -> None:
        self._streams.append(stream)

    def _remove_stream(self, stream: AudioStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def _on_rtp(self, data: bytes) -> None:
        try:
            pkt = parse_rtp(data)
        except RtpError:
            self.bad_packets += 1
            return
        if pkt.payload_type != OPUS_PT or pkt.payload_end <= pkt.payload_offset:
            return
        self.packets += 1
        self._jitter.push(pkt.sequence_number, pkt.payload(data))
        for out in self._jitter.pop_ready():
            if not self._streams:
                continue  # nobody listens: keep the sequence state, skip decoding
            if self._decoder is None:
                self._decoder = OpusDecoder()
            pcm = self._decoder.decode(out.payload if out.kind is Kind.PLAY else None)
            self._deliver(pcm)

    def _deliver(self, pcm: np.ndarray) -> None:
        for stream in list(self._streams):
            stream._push(pcm)

    def _end(self) -> None:
        for stream in list(self._streams):
            stream._end()
        self._streams.clear()


class LocalAudioTrack(Track):
    """A track fed by an :class:`AudioSource` (``LocalAudioTrack.create_audio_track``)."""

    _ids = itertools.count(1)

    def __init__(self, name: str, source: AudioSource) -> None:
        super().__init__(f"local-{next(self._ids)}", name, TrackKind.KIND_AUDIO)
        self.source = source

    @staticmethod
    def create_audio_track(name: str, source: AudioSource) -> LocalAudioTrack:
        return LocalAudioTrack(name, source)

    async def mute(self) -> None:
        self.muted = True

    async def unmute(self) -> None:
        self.muted = False

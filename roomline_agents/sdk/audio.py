"""Audio for agents, shaped like ``livekit.rtc``: frames, a source to publish, a stream to receive.

Everything inside the appliance is 48 kHz mono int16 in 20 ms frames (the Opus leg of the local
channel). :class:`AudioSource` accepts other rates and channel counts and resamples with PyAV;
:class:`AudioStream` can deliver other rates the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import av
import numpy as np

# The local channel's audio (48 kHz mono int16, 20 ms Opus frames), re-exported for agent code.
from sfu.local.codec import FRAME_BYTES as FRAME_BYTES
from sfu.local.codec import FRAME_SAMPLES as FRAME_SAMPLES
from sfu.local.codec import RATE as RATE

log = logging.getLogger("roomline_agents.sdk")

#: Frames an AudioStream holds for a consumer that does not keep up (10 s): older frames are
#: dropped so a slow agent costs bounded memory, never the SFU's.
DEFAULT_STREAM_CAPACITY = 500


class AudioFrame:
    """Interleaved int16 PCM with its rate and channel count (``livekit.rtc.AudioFrame``)."""

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        sample_rate: int,
        num_channels: int,
        samples_per_channel: int,
    ) -> None:
        raw = bytes(data)
        need = num_channels * samples_per_channel * 2
        if len(raw) < need:
            raise ValueError("data length must be >= num_channels * samples_per_channel * 2")
        self._data = raw[:need]
        self._sample_rate = sample_rate
        self._num_channels = num_channels
        self._samples_per_channel = samples_per_channel

    @staticmethod
    def create(sample_rate: int, num_channels: int, samples_per_channel: int) -> AudioFrame:
        """A frame of silence."""
        size = num_channels * samples_per_channel * 2
        return AudioFrame(bytes(size), sample_rate, num_channels, samples_per_channel)

    @staticmethod
    def from_ndarray(samples: np.ndarray, sample_rate: int = RATE) -> AudioFrame:
        """Mono int16 samples as a frame (a roomline convenience, not in ``livekit.rtc``)."""
        pcm = np.asarray(samples, dtype=np.int16)
        return AudioFrame(pcm.tobytes(), sample_rate, 1, len(pcm))

    @property
    def data(self) -> memoryview:
        """The samples as an int16 memoryview (``np.frombuffer(frame.data, np.int16)`` works)."""
        return memoryview(self._data).cast("h")

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def num_channels(self) -> int:
        return self._num_channels

    @property
    def samples_per_channel(self) -> int:
        return self._samples_per_channel

    @property
    def duration(self) -> float:
        return self._samples_per_channel / self._sample_rate

    def to_ndarray(self) -> np.ndarray:
        return np.frombuffer(self._data, dtype=np.int16)

    def __repr__(self) -> str:
        return (
            f"AudioFrame(sample_rate={self._sample_rate}, num_channels={self._num_channels}, "
            f"samples_per_channel={self._samples_per_channel})"
        )


@dataclass
class AudioFrameEvent:
    """One received frame (``livekit.rtc.AudioFrameEvent``)."""

    frame: AudioFrame


def resample(
    pcm: np.ndarray, rate: int, channels: int = 1, out_rate: int = RATE, out_channels: int = 1
) -> np.ndarray:
    """Convert interleaved int16 PCM to ``out_rate``/``out_channels`` (PyAV/libswresample)."""
    pcm = np.asarray(pcm, dtype=np.int16)
    if rate == out_rate and channels == out_channels:
        return pcm
    return Resampler(rate, channels, out_rate, out_channels).push(pcm, flush=True)


class Resampler:
    """Streaming resampler for one direction of one track (keeps the filter state across frames)."""

    def __init__(self, rate: int, channels: int, out_rate: int = RATE, out_channels: int = 1):
        if channels not in (1, 2) or out_channels not in (1, 2):
            raise ValueError("only mono and stereo audio are supported")
        self.rate, self.channels = rate, channels
        self._layout = "mono" if channels == 1 else "stereo"
        self._r = av.AudioResampler(
            format="s16", layout="mono" if out_channels == 1 else "stereo", rate=out_rate
        )

    def push(self, pcm: np.ndarray, flush: bool = False) -> np.ndarray:
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1),
            format="s16",
            layout=self._layout,
        )
        frame.sample_rate = self.rate
        out = list(self._r.resample(frame))
        if flush:
            out += list(self._r.resample(None))
        if not out:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.int16)


class AudioSource:
    """PCM to publish (``livekit.rtc.AudioSource``); bind it with ``LocalAudioTrack``.

    ``capture_frame`` queues audio and waits while more than ``queue_size_ms`` is queued, so a
    producer runs at most that far ahead of real time. The track's 20 ms clock drains the queue; when
    it is empty nothing is sent (the RTP timestamp keeps advancing, like Opus DTX).
    """

    def __init__(
        self,
        sample_rate: int = RATE,
        num_channels: int = 1,
        queue_size_ms: int = 1000,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if sample_rate <= 0 or num_channels not in (1, 2):
            raise ValueError("sample_rate must be positive and num_channels 1 or 2")
        self._sample_rate = sample_rate
        self._num_channels = num_channels
        self._max_bytes = max(FRAME_BYTES, RATE * 2 * queue_size_ms // 1000)
        self._buf = bytearray()
        self._space = asyncio.Event()
        self._space.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._resampler = (
            Resampler(sample_rate, num_channels)
            if (sample_rate, num_channels) != (RATE, 1)
            else None
        )
        self._closed = False

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def num_channels(self) -> int:
        return self._num_channels

    @property
    def queued_duration(self) -> float:
        """Seconds of audio waiting to be sent."""
        return len(self._buf) / (RATE * 2)

    async def capture_frame(self, frame: AudioFrame) -> None:
        """Queue ``frame``; waits while the queue is over ``queue_size_ms``."""
        if self._closed or frame.samples_per_channel == 0:
            return
        if (frame.sample_rate, frame.num_channels) != (self._sample_rate, self._num_channels):
            raise ValueError(
                f"frame is {frame.sample_rate} Hz x{frame.num_channels}, source is "
                f"{self._sample_rate} Hz x{self._num_channels}"
            )
        pcm = frame.to_ndarray()
        if self._resampler is not None:
            pcm = self._resampler.push(pcm)
        while len(self._buf) >= self._max_bytes and not self._closed:
            self._space.clear()
            await self._space.wait()
        self._buf += pcm.tobytes()
        self._empty.clear()

    def clear_queue(self) -> None:
        """Drop everything queued (barge-in)."""
        self._buf.clear()
        self._space.set()
        self._empty.set()

    async def wait_for_playout(self) -> None:
        """Wait until everything captured so far has been sent."""
        await self._empty.wait()

    async def aclose(self) -> None:
        self._closed = True
        self.clear_queue()

    def _pull(self) -> bytes | None:
        """One 20 ms frame for the track clock, or None when nothing is queued."""
        if not self._buf:
            return None
        chunk = bytes(self._buf[:FRAME_BYTES])
        del self._buf[:FRAME_BYTES]
        if len(chunk) < FRAME_BYTES:
            chunk += bytes(FRAME_BYTES - len(chunk))
        if len(self._buf) < self._max_bytes:
            self._space.set()
        if not self._buf:
            self._empty.set()
        return chunk


class StreamSource(Protocol):
    """A remote audio track as an :class:`AudioStream` sees it (``RemoteAudioTrack``): it pushes
    decoded PCM to the streams attached to it."""

    def _add_stream(self, stream: AudioStream) -> None: ...

    def _remove_stream(self, stream: AudioStream) -> None: ...


class AudioStream:
    """Async iterator of :class:`AudioFrameEvent` for one remote audio track.

    ``async for ev in AudioStream(track): ev.frame.data`` — 20 ms frames, int16, 48 kHz mono
    unless ``sample_rate``/``num_channels`` ask otherwise. Iteration ends when the track goes away
    (unpublished, participant left, room disconnected) or after :meth:`aclose`.
    """

    def __init__(
        self,
        track: StreamSource,
        loop: asyncio.AbstractEventLoop | None = None,
        capacity: int = 0,
        sample_rate: int = RATE,
        num_channels: int = 1,
        **kwargs: Any,
    ) -> None:
        self._track = track
        self._queue: deque[AudioFrame | None] = deque()
        self._capacity = capacity or DEFAULT_STREAM_CAPACITY
        self._ready = asyncio.Event()
        self._closed = False
        self._sample_rate = sample_rate
        self._num_channels = num_channels
        self._resampler = (
            Resampler(RATE, 1, sample_rate, num_channels)
            if (sample_rate, num_channels) != (RATE, 1)
            else None
        )
        self.dropped = 0
        track._add_stream(self)

    @classmethod
    def from_track(cls, *, track: StreamSource, **kwargs: Any) -> AudioStream:
        return cls(track, **kwargs)

    def _push(self, pcm: np.ndarray) -> None:
        if self._closed:
            return
        if self._resampler is not None:
            pcm = self._resampler.push(pcm)
        samples = len(pcm) // self._num_channels
        self._queue.append(
            AudioFrame(pcm.tobytes(), self._sample_rate, self._num_channels, samples)
        )
        if len(self._queue) > self._capacity:
            self._queue.popleft()
            self.dropped += 1
        self._ready.set()

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.append(None)
            self._ready.set()

    def __aiter__(self) -> AsyncIterator[AudioFrameEvent]:
        return self

    async def __anext__(self) -> AudioFrameEvent:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        if item is None:
            self._queue.append(None)  # stay ended for later calls
            raise StopAsyncIteration
        return AudioFrameEvent(item)

    def clear(self) -> int:
        """Drop the frames waiting to be read; returns how many (roomline addition)."""
        dropped = 0
        while self._queue and self._queue[0] is not None:
            self._queue.popleft()
            dropped += 1
        return dropped

    async def aclose(self) -> None:
        self._track._remove_stream(self)
        self._end()

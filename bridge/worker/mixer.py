"""N−1 mixer for one call (sans-I/O, numpy).

Each call subscribes to the room's audio tracks over its own local-channel connection; the SFU
never sends a participant its own track, so summing everything received *is* the N−1 mix. Each
input track has a :class:`~sfu.local.jitter.JitterBuffer` and a decoder; :meth:`Mixer.next_frame`
is called once per 20 ms (paced by the pjsua bridge clock) and always returns a full frame, silence
when nobody talks, so the phone leg never has gaps.

A frame pushed with :data:`TAG_ULAW` is another G.711 caller's µ-law sidecar (sfu/local/g711.py):
it is decoded by table instead of by Opus, sample-exact. Its concealment repeats the last such
frame at half and then a quarter of its amplitude (the Opus decoder, not fed for that stream, has
no state to conceal from).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from roomline.wire import FRAME_SAMPLES
from sfu.local.g711 import ulaw_decode
from sfu.local.jitter import JitterBuffer, Kind

#: An input that produced nothing for this many ticks (10 s) is dropped; it is re-created by its
#: next packet. Keeps state bounded when tracks are unpublished without notice.
IDLE_TICKS = 500
#: Cap on simultaneously mixed tracks per call (security limit: each costs a decoder).
MAX_INPUTS = 32
#: Jitter-buffer tags: what a queued payload is.
TAG_OPUS = 0
TAG_ULAW = 1


class Decoder(Protocol):
    def decode(self, payload: bytes | None) -> np.ndarray: ...


def mix(frames: Iterable[np.ndarray], samples: int = FRAME_SAMPLES) -> np.ndarray:
    """Sum int16 frames in int32 and clip to int16 (no normalisation, no AGC)."""
    acc = np.zeros(samples, dtype=np.int32)
    for f in frames:
        acc[: len(f)] += f[:samples]
    return np.clip(acc, -32768, 32767).astype(np.int16)


@dataclass
class _Input:
    jitter: JitterBuffer
    decoder: Decoder
    idle: int = 0
    #: The last µ-law frame played while the stream carries the sidecar (None: Opus), and how
    #: many frames have been concealed from it since.
    last_pcm: np.ndarray | None = None
    faded: int = 0

    def play(self, out_tag: int, payload: bytes) -> np.ndarray:
        if out_tag == TAG_ULAW:
            pcm = ulaw_decode(payload, len(payload))
            self.last_pcm, self.faded = pcm, 0
            return pcm
        self.last_pcm = None
        return self.decoder.decode(payload)

    def conceal(self) -> np.ndarray:
        last = self.last_pcm
        if last is None:
            return self.decoder.decode(None)
        self.faded += 1
        return (last >> self.faded).astype(np.int16)  # -6 dB per concealed frame


def _add_counters(acc: dict[str, int], inp: _Input) -> None:
    for k, v in vars(inp.jitter.stats).items():
        acc[k] = acc.get(k, 0) + v


@dataclass
class Mixer:
    """Per-call mixer of room tracks; ``decoder_factory`` makes one decoder per track."""

    decoder_factory: Callable[[], Decoder]
    target_frames: int = 1
    max_frames: int = 10
    #: Samples per 20 ms frame at the rate the decoders produce (16 kHz bridge: 320).
    samples: int = FRAME_SAMPLES
    inputs: dict[str, _Input] = field(default_factory=dict)
    frames_out: int = 0
    #: Jitter-buffer counters of inputs already dropped (unpublished, or idle for
    #: :data:`IDLE_TICKS`), summed per track sid: the end-of-call log line still reports them
    #: (an agent that spoke a prompt and went quiet is pruned long before the phone hangs up).
    ended: dict[str, dict[str, int]] = field(default_factory=dict)

    def push(
        self, sid: str, seq: int, payload: bytes, now: float | None = None, tag: int = TAG_OPUS
    ) -> None:
        """Queue one payload of track ``sid`` (a new track gets a decoder, up to the cap): Opus,
        or with ``tag`` :data:`TAG_ULAW` one frame of µ-law at the mixer's rate. ``now`` is its
        arrival time, for the jitter buffer's shrink decision."""
        if tag == TAG_ULAW and len(payload) != self.samples:
            return  # not one frame at the mixer's rate: nothing it could mix
        inp = self.inputs.get(sid)
        if inp is None:
            if len(self.inputs) >= MAX_INPUTS:
                return
            inp = _Input(JitterBuffer(self.target_frames, self.max_frames), self.decoder_factory())
            self.inputs[sid] = inp
        inp.jitter.push(seq, payload, now, tag)

    def remove(self, sid: str) -> None:
        """Forget track ``sid`` and its decoder (it was unpublished or its owner left)."""
        inp = self.inputs.pop(sid, None)
        if inp is not None:
            self._retire(sid, inp)

    def stats(self) -> dict[str, dict[str, int]]:
        """Jitter-buffer counters per track sid: dropped inputs plus live ones, summed."""
        out = {sid: dict(c) for sid, c in self.ended.items()}
        for sid, inp in self.inputs.items():
            _add_counters(out.setdefault(sid, {}), inp)
        return out

    def _retire(self, sid: str, inp: _Input) -> None:
        _add_counters(self.ended.setdefault(sid, {}), inp)

    def next_frame(self, now: float | None = None) -> bytes:
        """One 20 ms s16 frame: the sum of every input's current frame; ``now`` is the tick's
        time (same clock as :meth:`push`)."""
        frames: list[np.ndarray] = []
        for sid, inp in list(self.inputs.items()):
            out = inp.jitter.pop(now)
            if out.kind is Kind.PLAY:
                frames.append(inp.play(out.tag, out.payload))
                inp.idle = 0
            elif out.kind is Kind.CONCEAL:
                frames.append(inp.conceal())
                inp.idle = 0
            else:
                inp.idle += 1
                if inp.idle > IDLE_TICKS:
                    del self.inputs[sid]
                    self._retire(sid, inp)
        self.frames_out += 1
        if not frames:
            return bytes(2 * self.samples)
        if len(frames) == 1 and len(frames[0]) == self.samples:
            return frames[0].tobytes()
        return mix(frames, self.samples).tobytes()

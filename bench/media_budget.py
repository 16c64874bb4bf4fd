"""Per-stage CPU budget of one call's media in a bridge worker, per 20 ms tick (µs).

    PYTHONPATH=. .venv/bin/python bench/media_budget.py [--frames 2000] [--repeat 5]

Times each Python stage of the media path in isolation with ``time.process_time`` (CPU time of
this process, so other load on the host inflates it only through caches), median over
``--repeat`` runs. The pjmedia side (G.711, its jitter buffer, the 8 ↔ 16 kHz resampler, the
conference mix, RTP sockets) and the SWIG/GIL cost of the two clock-thread callbacks are not in
here: see the perf split in docs/bridge-media.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_sip import speech_like  # noqa: E402
from bridge.worker.mixer import Mixer  # noqa: E402
from sfu.local.codec import (  # noqa: E402
    Decimator,
    OpusDecoder,
    OpusEncoder,
    RtpPacketizer,
    audio_level,
)
from sfu.local.framing import FrameDecoder, decode_rtp, encode_rtp  # noqa: E402
from sfu.local.jitter import JitterBuffer  # noqa: E402
from sfu.media.rtp import parse_rtp  # noqa: E402

RATE = 16000
N = 320


def per_frame(fn: Callable[[int], object], frames: int) -> float:
    t0 = time.process_time()
    for i in range(frames):
        fn(i)
    return (time.process_time() - t0) / frames * 1e6


def _jitter_step(jb: JitterBuffer, payloads: list[bytes]) -> Callable[[int], object]:
    def step(i: int) -> object:
        jb.push(i, payloads[i])
        return jb.pop()

    return step


def _mixer_step(m: Mixer, payloads: list[bytes]) -> Callable[[int], object]:
    def step(i: int) -> object:
        m.push("TR_a", i, payloads[i])
        return m.next_frame()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    f = a.frames
    x = speech_like(f * 0.02 + 1, RATE, seed=4)
    pcm = [x[i * N : (i + 1) * N].tobytes() for i in range(f)]
    x8 = speech_like(f * 0.02 + 1, 8000, seed=4)
    pcm8 = [x8[i * 160 : (i + 1) * 160].tobytes() for i in range(f)]
    enc0 = OpusEncoder(rate=RATE)
    payloads = [enc0.encode(p)[0] for p in pcm]
    pk0 = RtpPacketizer()
    packets = [pk0.packet(p, audio_level=40) for p in payloads]
    framed = [encode_rtp("TR_AMabcdefghijk", p) for p in packets]

    stages: dict[str, Callable[[], Callable[[int], object]]] = {
        "rx: RFC 6464 level (numpy)": lambda: (
            lambda i: audio_level(np.frombuffer(pcm[i], np.int16))
        ),
        "rx: Opus encode 16 kHz (PyAV; G.722 calls)": lambda: (
            lambda e: lambda i: e.encode(pcm[i])
        )(OpusEncoder(rate=RATE)),
        "rx: decimate 16 -> 8 kHz (G.711 calls)": lambda: (
            lambda d: lambda i: d(np.frombuffer(pcm[i], np.int16))
        )(Decimator(2)),
        "rx: Opus encode 8 kHz (PyAV; G.711 calls)": lambda: (
            lambda e: lambda i: e.encode(pcm8[i])
        )(OpusEncoder(rate=8000)),
        "rx: RTP header + ext, channel framing": lambda: (
            lambda pk: (
                lambda i: encode_rtp("TR_AMabcdefghijk", pk.packet(payloads[i], audio_level=40))
            )
        )(RtpPacketizer()),
        "tx: channel deframe + parse_rtp": lambda: (
            lambda d: lambda i: [parse_rtp(decode_rtp(p)[1]) for _, p in d.feed(framed[i])]
        )(FrameDecoder()),
        "tx: jitter push + pop": lambda: _jitter_step(JitterBuffer(1, 10), payloads),
        "tx: Opus decode 48 kHz + decimate to 16 kHz": lambda: (
            lambda d: lambda i: d.decode(payloads[i])
        )(OpusDecoder(rate=RATE)),
        "tx: whole mixer tick (1 track)": lambda: _mixer_step(
            Mixer(lambda: OpusDecoder(RATE), 1, samples=N), payloads
        ),
    }
    total = 0.0
    print(f"per 20 ms frame, median of {a.repeat} x {f} frames (µs CPU):")
    for name, make in stages.items():
        us = statistics.median(per_frame(make(), f) for _ in range(a.repeat))
        # a G.711 call: decimation + 8 kHz encode (the 16 kHz encoder is the G.722 alternative)
        skip = ("tx: jitter", "tx: Opus decode", "rx: Opus encode 16")
        if not name.startswith(skip):
            total += us
        print(f"  {name:45s} {us:7.1f}")
    print(f"  {'sum, G.711 call (mixer tick = jitter + decode)':45s} {total:7.1f}")


if __name__ == "__main__":
    main()

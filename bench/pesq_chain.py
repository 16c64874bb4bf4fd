"""Where speech quality goes on phone → room → phone: PESQ NB after each stage, offline.

    PYTHONPATH=. .venv/bin/python bench/pesq_chain.py

Deterministic (no network, no pjsua, no timing): the espeak-ng sentences of
``tests/data/speech/harvard_8k.wav`` through the stages of two bridge legs, scored with PyPI
``pesq`` against the clean reference after each stage. The room part is the production code
(``RoomLeg`` pump → RTP → ``RoomLeg`` jitter buffer, Opus decode, mix; see
``roomline_harness/speech_chain.py``); the bridge's 8 ↔ 16 kHz resamplers are modelled by a long
zero-phase FIR. Opus variants are scored by the same chain with other encoder settings.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pesq import pesq  # noqa: E402

import sfu.local.codec as codec  # noqa: E402
from roomline_harness.speech_chain import (  # noqa: E402
    RATE,
    align,
    down2,
    read_speech,
    room_path,
    ulaw_roundtrip,
    up2,
)


def score(ref: np.ndarray, deg: np.ndarray) -> float:
    return float(pesq(RATE, ref, deg, "nb"))


def with_encoder(ref: np.ndarray, phone_rate: int, **opts: Any) -> tuple[float, float]:
    """(before phone B's G.711, after it) with OpusEncoder built with ``opts``."""
    base = codec.OpusEncoder.__init__

    def patched(
        self: codec.OpusEncoder,
        bitrate: int = 32000,
        rate: int = RATE,
        complexity: int | None = None,
    ) -> None:
        base(self, opts.get("bitrate", bitrate), rate, opts.get("complexity", complexity))
        app = opts.get("application")
        if app:  # reopen with the other application (PyAV options apply at open)
            import av

            ctx = av.CodecContext.create("libopus", "w")
            assert isinstance(ctx, av.AudioCodecContext)
            ctx.sample_rate, ctx.layout, ctx.format = rate, "mono", "s16"
            ctx.bit_rate = opts.get("bitrate", bitrate)
            ctx.time_base = Fraction(1, rate)
            ctx.options = {"application": app, "compression_level": str(self.complexity)}
            ctx.open()
            self._ctx = ctx

    codec.OpusEncoder.__init__ = patched  # type: ignore[method-assign]
    try:
        y8 = down2(room_path(up2(ulaw_roundtrip(ref)), phone_rate))
    finally:
        codec.OpusEncoder.__init__ = base  # type: ignore[method-assign]
    return score(ref, align(y8, ref)), score(ref, align(ulaw_roundtrip(y8), ref))


def main() -> None:
    ref = read_speech()
    g = ulaw_roundtrip(ref)
    rows: list[tuple[str, float]] = [
        ("phone A G.711 (= 'G.711 alone')", score(ref, g)),
        ("+ bridge 8→16 kHz", score(ref, down2(up2(g)))),
        (
            "+ bridge 16→8 kHz + phone B G.711, no room (tandem G.711)",
            score(ref, ulaw_roundtrip(down2(up2(g)))),
        ),
        (
            "half-sample delay between the two G.711 stages",
            score(ref, ulaw_roundtrip(down2(np.roll(up2(g), 1)))),
        ),
    ]
    for name, s in rows:
        print(f"{s:5.2f}  {name}")
    print("room path (RoomLeg A → RTP → RoomLeg B), before / after phone B's G.711:")
    variants: list[tuple[str, int, dict[str, Any]]] = [
        ("Opus at the port's 16 kHz, voip 32 kb/s (before the fix)", 0, {}),
        ("Opus at the phone's 8 kHz, voip 32 kb/s (production)", 8000, {}),
        ("Opus 16 kHz, voip 48 kb/s", 0, {"bitrate": 48000}),
        ("Opus 16 kHz, audio 32 kb/s", 0, {"application": "audio"}),
        ("Opus 8 kHz, voip 24 kb/s", 8000, {"bitrate": 24000}),
        ("Opus 8 kHz, voip 48 kb/s", 8000, {"bitrate": 48000}),
        ("Opus 8 kHz, voip 32 kb/s, complexity 5 (before the NB setting)", 8000, {"complexity": 5}),
    ]
    for label, rate, opts in variants:
        pre, post = with_encoder(ref, rate, **opts)
        print(f"{pre:5.2f} / {post:5.2f}  {label}")
    # sip.wideband: false: an 8 kHz bridge, so neither the bridge nor the leg resamples.
    y8 = room_path(ulaw_roundtrip(ref), 8000, bridge_rate=8000)
    pre, post = score(ref, align(y8, ref)), score(ref, align(ulaw_roundtrip(y8), ref))
    print(f"{pre:5.2f} / {post:5.2f}  narrowband bridge (8 kHz clock, sip.wideband: false)")


if __name__ == "__main__":
    main()

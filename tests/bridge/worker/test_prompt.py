"""bridge/worker/prompt.py: the PIN prompt."""

from __future__ import annotations

import numpy as np

from bridge.worker.prompt import pin_prompt
from roomline_harness.audio import dominant_frequency


def test_pin_prompt_is_two_440_hz_beeps() -> None:
    frames = pin_prompt()
    assert frames and all(len(f) == 1920 for f in frames)
    pcm = np.frombuffer(b"".join(frames), dtype=np.int16)
    assert abs(dominant_frequency(pcm, 48000) - 440.0) < 5
    loud = np.abs(pcm.reshape(-1, 480)).max(axis=1) > 1000  # 10 ms blocks
    bursts = int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])
    assert bursts == 2

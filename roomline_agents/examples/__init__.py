"""Example agents shipped with roomline: ``echo``, ``ivr`` and ``reminder`` (docs/agents.md)."""

from __future__ import annotations

import numpy as np

from roomline_agents.sdk.audio import FRAME_SAMPLES, RATE, AudioFrame, AudioSource


async def play(source: AudioSource, pcm: np.ndarray) -> None:
    """Queue 48 kHz mono ``pcm`` on ``source`` in 20 ms frames and wait until it has been sent."""
    for i in range(0, len(pcm), FRAME_SAMPLES):
        chunk = pcm[i : i + FRAME_SAMPLES]
        await source.capture_frame(AudioFrame(chunk.tobytes(), RATE, 1, len(chunk)))
    await source.wait_for_playout()

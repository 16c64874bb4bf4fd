"""roomline_agents/sdk/audio.py: AudioSource framing and backpressure, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from roomline_agents.sdk import (
    AudioFrame,
    AudioSource,
)
from roomline_agents.sdk.audio import FRAME_BYTES, resample
from roomline_harness.audio import dominant_frequency, tone


async def test_audio_source_frames_and_backpressure() -> None:
    src = AudioSource(16000, 1, queue_size_ms=100)
    x = tone(500, 0.05, 16000, 8000).astype(np.int16)
    await src.capture_frame(AudioFrame(x.tobytes(), 16000, 1, len(x)))
    frame = src._pull()
    assert frame is not None and len(frame) == FRAME_BYTES  # resampled to 48 kHz, 20 ms
    with pytest.raises(ValueError):
        await src.capture_frame(AudioFrame(x.tobytes(), 8000, 1, len(x)))
    src.clear_queue()
    assert src._pull() is None and src.queued_duration == 0.0
    with pytest.raises(ValueError):
        AudioFrame(b"\x00" * 3, 48000, 1, 2)


def test_resample_keeps_frequency() -> None:
    y = resample(tone(440, 0.5, 22050, 8000).astype(np.int16), 22050)
    assert abs(len(y) - 24000) < 200 and abs(dominant_frequency(y, 48000) - 440) < 3

"""roomline_agents/sdk/vad.py: the energy voice-activity detector."""

from __future__ import annotations

import numpy as np

from roomline_agents.sdk.vad import EnergyVAD, level_dbfs
from roomline_harness.audio import tone


def test_vad_start_and_end_after_pause() -> None:
    vad = EnergyVAD(silence_ms=600)
    loud = tone(300, 0.02, 48000, 8000).astype(np.int16)
    quiet = np.zeros(960, dtype=np.int16)
    events = [vad.push(loud) for _ in range(20)] + [vad.push(quiet) for _ in range(40)]
    assert events.count("start") == 1 and events.count("end") == 1
    assert events.index("end") == 20 + 30 - 1  # exactly 600 ms of silence
    assert level_dbfs(quiet) == -120.0 and level_dbfs(np.zeros(0, np.int16)) == -120.0


def test_vad_ignores_a_click() -> None:
    vad = EnergyVAD(min_speech_ms=60)
    loud = np.full(960, 10000, dtype=np.int16)
    assert vad.push(loud) is None and vad.push(np.zeros(960, np.int16)) is None
    assert not vad.speaking

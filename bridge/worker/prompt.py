"""Tone prompts played to the phone (sans-I/O): mono s16 20 ms frames (any rate) for the port's tx queue.

The bridge has no recorded announcements; a short tone pattern tells the caller the line is open
and waiting for input (two 440 Hz beeps = "enter your PIN, then #").
"""

from __future__ import annotations

import numpy as np

from roomline.wire import FRAME_SAMPLES
from roomline.wire import SAMPLE_RATE as RATE

#: Quiet enough not to clip a G.711 leg, loud enough to hear (about -12 dBFS).
PROMPT_AMPLITUDE = 8000.0
#: Raised-cosine ramp at each beep edge: a hard edge clicks audibly.
_RAMP_S = 0.005


def tone_pattern(
    freq: float,
    beep_s: float,
    gap_s: float,
    count: int,
    amplitude: float = PROMPT_AMPLITUDE,
    rate: int = RATE,
) -> list[bytes]:
    """``count`` beeps of ``freq`` Hz separated by ``gap_s`` of silence, as 20 ms frames."""
    frame_samples = FRAME_SAMPLES * rate // RATE
    beep_n = int(beep_s * rate)
    t = np.arange(beep_n) / rate
    beep = amplitude * np.sin(2 * np.pi * freq * t)
    ramp_n = min(int(_RAMP_S * rate), beep_n // 2)
    if ramp_n:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp_n) / ramp_n)
        beep[:ramp_n] *= ramp
        beep[-ramp_n:] *= ramp[::-1]
    gap = np.zeros(int(gap_s * rate))
    parts: list[np.ndarray] = []
    for i in range(count):
        if i:
            parts.append(gap)
        parts.append(beep)
    pcm = np.concatenate(parts) if parts else np.zeros(0)
    pad = (-len(pcm)) % frame_samples
    pcm = np.concatenate([pcm, np.zeros(pad)]).astype(np.int16)
    return [pcm[i : i + frame_samples].tobytes() for i in range(0, len(pcm), frame_samples)]


def pin_prompt(rate: int = RATE) -> list[bytes]:
    """The "enter your PIN" prompt: two 200 ms beeps at 440 Hz, 150 ms apart."""
    return tone_pattern(440.0, 0.2, 0.15, 2, rate=rate)

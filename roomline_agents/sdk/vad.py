"""Energy-based voice activity detection (sans-I/O), enough for turn-taking on phone audio.

Feed 20 ms frames of int16 PCM; :meth:`EnergyVAD.push` returns ``"start"`` when speech begins (the
level stayed above ``threshold_dbfs`` for ``min_speech_ms``) and ``"end"`` after ``silence_ms`` below
it. No model, no training: a phone line is quiet between words, and that is all an echo test or an
IVR menu needs. Real agents would put a neural VAD here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_MS = 20


def level_dbfs(pcm: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (-120 for digital silence)."""
    if len(pcm) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    return -120.0 if rms < 1e-3 else 20.0 * float(np.log10(rms / 32768.0))


@dataclass
class EnergyVAD:
    """Speech start/end from frame levels; see the module docstring."""

    #: -40 dBFS is well above a quiet line's noise floor and below soft speech through G.711.
    threshold_dbfs: float = -40.0
    min_speech_ms: int = 60
    silence_ms: int = 600
    speaking: bool = False
    _above_ms: int = 0
    _below_ms: int = 0

    def push(self, pcm: np.ndarray, frame_ms: int = FRAME_MS) -> str | None:
        loud = level_dbfs(pcm) >= self.threshold_dbfs
        if not self.speaking:
            self._above_ms = self._above_ms + frame_ms if loud else 0
            if self._above_ms >= self.min_speech_ms:
                self.speaking, self._below_ms = True, 0
                return "start"
            return None
        self._below_ms = 0 if loud else self._below_ms + frame_ms
        if self._below_ms >= self.silence_ms:
            self.speaking, self._above_ms = False, 0
            return "end"
        return None

    def reset(self) -> None:
        self.speaking, self._above_ms, self._below_ms = False, 0, 0

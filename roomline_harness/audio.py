"""Audio checks by content: dominant frequency and SNR of a test tone (shared by all tests).

API kept small on purpose: ``dominant_frequency(samples, rate)`` and ``snr_db(samples, rate, freq)``.
``samples`` is any 1-D array-like of PCM (int16 or float); a Hann window limits leakage.
Helpers ``tone`` and ``read_wav`` / ``write_wav`` are conveniences for tests.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

#: Half-width of the band counted as "signal" around the tone (Hz). Wide enough for the Hann
#: main lobe at any test length >= 0.2 s, narrow enough to keep codec noise out.
_BAND_HZ = 10.0


def _spectrum(samples: np.ndarray | list[float], rate: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if len(x) < 16:
        raise ValueError("need at least 16 samples")
    x = x - x.mean()
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    return freqs, power


def dominant_frequency(samples: np.ndarray | list[float], rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak, refined by parabolic interpolation."""
    freqs, power = _spectrum(samples, rate)
    power[0] = 0.0
    k = int(np.argmax(power))
    if 0 < k < len(power) - 1:
        a, b, c = np.log(power[k - 1 : k + 2] + 1e-30)
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom else 0.0
        return float(freqs[k] + shift * (freqs[1] - freqs[0]))
    return float(freqs[k])


def snr_db(samples: np.ndarray | list[float], rate: int, freq: float) -> float:
    """Power within ±10 Hz of ``freq`` over the power everywhere else (DC excluded), in dB."""
    freqs, power = _spectrum(samples, rate)
    power[0] = 0.0
    band = np.abs(freqs - freq) <= max(_BAND_HZ, 3 * (freqs[1] - freqs[0]))
    signal = float(power[band].sum())
    noise = float(power[~band].sum())
    if signal <= 0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / max(noise, 1e-30)))


def tone(freq: float, seconds: float, rate: int, amplitude: float = 8000.0) -> np.ndarray:
    """An int16 sine."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype=np.int16).tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples (first channel) and the rate."""
    with wave.open(str(path), "rb") as w:
        rate, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        data = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError("only 16-bit WAV supported")
    arr = np.frombuffer(data, dtype=np.int16)
    return (arr.reshape(-1, ch)[:, 0] if ch > 1 else arr), rate

"""Audio checks by content: dominant frequency and SNR of a test tone (shared by all tests).

API kept small on purpose: ``dominant_frequency(samples, rate)`` and ``snr_db(samples, rate, freq)``
for tones; ``frame_levels_db``, ``band_fraction`` and ``envelope_match`` for speech.
``samples`` is any 1-D array-like of PCM (int16 or float); a Hann window limits leakage.
Helpers ``tone``, ``read_wav`` / ``write_wav`` and ``last_seconds`` are conveniences for tests.
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


def last_seconds(pcm: np.ndarray, rate: int, seconds: float, before_end: float = 0.0) -> np.ndarray:
    """The ``seconds`` of ``pcm`` that end ``before_end`` seconds before its end.

    For a phone's recording after a hold: pjmedia's recorder writes only the frames its source
    gives it and a held stream gives none, so the file leaves the hold out and offsets from its
    start are not times since the answer; its end is the hang-up either way.
    """
    end = len(pcm) - int(before_end * rate)
    return pcm[end - int(seconds * rate) : end]


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples (first channel) and the rate."""
    with wave.open(str(path), "rb") as w:
        rate, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        data = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError("only 16-bit WAV supported")
    arr = np.frombuffer(data, dtype=np.int16)
    return (arr.reshape(-1, ch)[:, 0] if ch > 1 else arr), rate


def frame_levels_db(
    samples: np.ndarray | list[float], rate: int, frame_s: float = 0.02, floor_db: float = -90.0
) -> np.ndarray:
    """RMS level (dBFS, int16 full scale) of consecutive ``frame_s`` frames, clipped at ``floor_db``."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1) / 32768.0
    n = max(1, int(rate * frame_s))
    frames = x[: len(x) // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return np.maximum(20.0 * np.log10(np.maximum(rms, 1e-12)), floor_db)


def band_fraction(samples: np.ndarray | list[float], rate: int, lo: float, hi: float) -> float:
    """Share (0..1) of the signal's power (DC excluded) between ``lo`` and ``hi`` Hz."""
    freqs, power = _spectrum(samples, rate)
    power[0] = 0.0
    total = float(power.sum())
    if total <= 0:
        return 0.0
    return float(power[(freqs >= lo) & (freqs <= hi)].sum()) / total


def envelope_match(
    heard: np.ndarray | list[float],
    heard_rate: int,
    reference: np.ndarray | list[float],
    reference_rate: int,
    floor_db: float = -50.0,
) -> tuple[float, float]:
    """How well ``heard`` contains ``reference``, judged by level envelope (robust to codecs).

    Both become 20 ms dB envelopes clipped at ``floor_db``; the reference's envelope slides over the
    heard one and the best normalised cross-correlation (Pearson, -1..1) is returned with its offset
    in seconds. Speech rendered by the same voice gives > 0.8 through G.711; unrelated speech or a
    tone stays well below.
    """
    h = frame_levels_db(heard, heard_rate, floor_db=floor_db)
    r = frame_levels_db(reference, reference_rate, floor_db=floor_db)
    voiced = np.flatnonzero(r > floor_db)
    if len(voiced) == 0:
        raise ValueError("the reference is silent")
    r = r[voiced[0] : voiced[-1] + 1]  # the reference's own leading/trailing silence is no evidence
    if len(h) < len(r):
        return -1.0, 0.0
    r = (r - r.mean()) / (r.std() or 1.0)
    best, best_at = -1.0, 0
    for i in range(len(h) - len(r) + 1):
        w = h[i : i + len(r)]
        sd = w.std()
        if sd == 0:
            continue
        c = float(np.dot((w - w.mean()) / sd, r)) / len(r)
        if c > best:
            best, best_at = c, i
    return best, best_at * 0.02

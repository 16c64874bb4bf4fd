"""Prompts for example agents: Debian's ``espeak-ng`` when installed, tones otherwise.

``espeak-ng`` runs as a subprocess writing a WAV to stdout (no library binding, nothing to crash
the job), and the result is resampled to 48 kHz mono with PyAV. Without it, each prompt becomes a
short, recognisable tone pattern so the caller still hears that something answered.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import wave

import numpy as np

from roomline_agents.sdk.audio import RATE, resample

#: espeak-ng is fast (~50x real time), but a runaway subprocess must not hold a call: seconds.
TTS_TIMEOUT = 10.0


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def tones(freqs: list[float], seconds: float = 0.25, gap: float = 0.08) -> np.ndarray:
    """A sequence of soft sine beeps at 48 kHz (the fallback prompt)."""
    parts: list[np.ndarray] = []
    t = np.arange(int(seconds * RATE)) / RATE
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    for f in freqs:
        parts.append((6000 * ramp * np.sin(2 * np.pi * f * t)).astype(np.int16))
        parts.append(np.zeros(int(gap * RATE), dtype=np.int16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def parse_wav(data: bytes) -> tuple[np.ndarray, int, int]:
    """(int16 samples, rate, channels) of a 16-bit PCM WAV."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise ValueError("only 16-bit WAV is supported")
        frames = w.readframes(w.getnframes())
        return np.frombuffer(frames, dtype=np.int16), w.getframerate(), w.getnchannels()


async def speak(text: str, voice: str = "en-us", speed: int = 165) -> np.ndarray | None:
    """``text`` as 48 kHz mono int16 via espeak-ng, or None when it is missing or fails."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-v",
        voice,
        "-s",
        str(speed),
        "--stdout",
        text,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TTS_TIMEOUT)
    except TimeoutError:
        proc.kill()
        return None
    if proc.returncode != 0 or not out:
        return None
    try:
        pcm, rate, channels = parse_wav(out)
    except (ValueError, EOFError, wave.Error):
        return None
    return resample(pcm, rate, channels)


async def prompt(text: str, fallback: list[float]) -> np.ndarray:
    """Speech for ``text`` if possible, else the ``fallback`` tone pattern."""
    pcm = await speak(text)
    return pcm if pcm is not None and len(pcm) else tones(fallback)

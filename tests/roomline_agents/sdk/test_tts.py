"""roomline_agents/sdk/tts.py: prompt WAV parsing and the tone fallback."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from roomline_agents.sdk.tts import parse_wav, tones


def test_prompt_wav_parsing_and_fallback() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(np.zeros(100, np.int16).tobytes())
    pcm, rate, ch = parse_wav(buf.getvalue())
    assert (len(pcm), rate, ch) == (100, 22050, 1)
    with pytest.raises((wave.Error, EOFError)):
        parse_wav(b"RIFF\x00\x00")  # truncated
    with pytest.raises((wave.Error, EOFError)):
        parse_wav(b"not a wav at all" * 4)  # invalid
    beeps = tones([660.0, 880.0])
    assert len(beeps) > 0 and np.abs(beeps).max() > 1000

"""Regenerate ``harvard_8k.wav``: espeak-ng reads four Harvard sentences, resampled to 8 kHz.

    PYTHONPATH=. .venv/bin/python tests/data/speech/make_speech.py

espeak-ng 1.51 (voice en-us, 150 wpm) is deterministic; FFmpeg's swresample takes it from
22.05 kHz to 8 kHz mono s16. The WAV is shipped, so tests never need espeak-ng.
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import av
import numpy as np

TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish."
)
OUT = Path(__file__).with_name("harvard_8k.wav")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(src), TEXT], check=True)
        with wave.open(str(src)) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    rs = av.AudioResampler(format="s16", layout="mono", rate=8000)
    frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in rs.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
    y = np.concatenate(out).astype(np.int16)
    with wave.open(str(OUT), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(y.tobytes())


if __name__ == "__main__":
    main()

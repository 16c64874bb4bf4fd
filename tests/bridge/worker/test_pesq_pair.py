"""PESQ floors of the bridge's speech path, on a fixed recorded pair (no live stack needed).

``tests/data/speech/harvard_8k.wav`` is the reference (espeak-ng, see make_speech.py); the
``deg_*.wav`` files are what phone B recorded of it, played by phone A, phone → room → phone
through two bridge legs of a real appliance (``bench/bench_media.py --pesq --save-pesq``): one
clean, one with 3 % loss and 0–30 ms jitter on A's uplink. The floors are the scores measured when
the recordings were made minus 0.1, so a change to the scoring or to the stored recordings that
loses quality fails here; re-record after a media-path change and update the floors.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

pesq = pytest.importorskip("pesq").pesq

DATA = Path(__file__).resolve().parents[2] / "data" / "speech"
RATE = 8000
#: Floors (measured − 0.1) for the stored recordings; see the module docstring.
FLOORS = {"deg_clean.wav": 3.46, "deg_loss3_jit30.wav": 1.97}


def _read(name: str) -> np.ndarray:
    with wave.open(str(DATA / name)) as w:
        assert w.getframerate() == RATE
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)


def _ulaw_roundtrip(x: np.ndarray) -> np.ndarray:
    from roomline_harness.sip.pcap import linear_to_ulaw

    u = linear_to_ulaw(x.astype(np.int16)).astype(np.int32) ^ 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.float64)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_pesq_floor(name: str) -> None:
    ref = _read("harvard_8k.wav")
    deg = _read(name)
    assert len(deg) == len(ref)
    score = float(pesq(RATE, ref, deg, "nb"))
    g711 = float(pesq(RATE, ref, _ulaw_roundtrip(ref), "nb"))
    print(f"{name}: PESQ NB {score:.2f} (G.711 alone {g711:.2f}, floor {FLOORS[name]})")
    assert score >= FLOORS[name]
    assert g711 > 3.8  # the reference decoder is sane

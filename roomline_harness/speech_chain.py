"""Offline phone → room → phone speech chain through the bridge's production media code.

Runs the speech of ``tests/data/speech/harvard_8k.wav`` through what two bridge legs do to it,
without a network or pjsua: phone A's G.711 encode/decode, the conference bridge's 8 → 16 kHz
resampling, :class:`bridge.worker.room_leg.RoomLeg` A's pump (decimation, RFC 6464 level, Opus
encode, RTP), RoomLeg B's receive path (RTP parse, jitter buffer, Opus decode, ÷3 decimation,
mix) and the bridge's 16 → 8 kHz resampling and G.711 towards phone B. The two resamplers stand
in for pjmedia's (a long windowed-sinc FIR, zero phase); everything between them is the code the
worker runs. Deterministic: same input, same output.
"""

from __future__ import annotations

import collections
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bridge.worker.room_leg import RoomLeg, RoomLegEvents
from sfu.local.g711 import ulaw_decode, ulaw_encode

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech" / "harvard_8k.wav"
RATE = 8000
BRIDGE_RATE = 16000


def read_speech(path: Path = SPEECH) -> np.ndarray:
    """The 8 kHz reference speech as float64 samples."""
    with wave.open(str(path)) as w:
        if w.getframerate() != RATE:
            raise ValueError(f"{path}: expected {RATE} Hz, got {w.getframerate()}")
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)


def ulaw_roundtrip(x: np.ndarray) -> np.ndarray:
    """G.711 µ-law encode + decode (the phone's or the bridge's G.711 stage)."""
    pcm = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return ulaw_decode(ulaw_encode(pcm), len(pcm)).astype(np.float64)


def _lowpass(taps: int, cutoff: float) -> np.ndarray:
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0)
    return np.asarray(h / h.sum())


def _filter(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    d = (len(h) - 1) // 2
    return np.convolve(x, h)[d : d + len(x)]


def up2(x: np.ndarray, taps: int = 129) -> np.ndarray:
    """8 → 16 kHz (zero-stuff + lowpass at 3.7 kHz), standing in for pjmedia's resampler."""
    y = np.zeros(2 * len(x))
    y[::2] = x
    return _filter(y, 2 * _lowpass(taps, 0.23))


def down2(x: np.ndarray, taps: int = 129) -> np.ndarray:
    """16 → 8 kHz (lowpass at 3.7 kHz + keep every other sample)."""
    return _filter(x, _lowpass(taps, 0.23))[::2]


def align(deg: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``deg`` shifted by its cross-correlation lag against ``ref``'s first 2 s, cut to length."""
    c = np.correlate(deg[: len(ref) + 4000], ref[: 2 * RATE], mode="valid")
    off = int(np.argmax(np.abs(c)))
    out = deg[off : off + len(ref)]
    return np.pad(out, (0, len(ref) - len(out)))


@dataclass
class _Port:
    """What RoomLeg.pump uses of a BridgePort."""

    rate: int = BRIDGE_RATE
    rx: collections.deque[bytes] = field(default_factory=collections.deque)
    tx: collections.deque[bytes] = field(default_factory=collections.deque)
    produce: object = None


class _Channel:
    """Catches what a leg sends to the room."""

    def __init__(self) -> None:
        self.rtp: list[tuple[str, bytes]] = []

    def send_rtp(self, sid: str, packet: bytes) -> None:
        self.rtp.append((sid, packet))


def _events() -> RoomLegEvents:
    return RoomLegEvents(lambda: None, lambda: None, lambda r: None, lambda k: None)


def room_path(
    x16: np.ndarray, phone_rate: int, bridge_rate: int = BRIDGE_RATE, sidecar: bool = True
) -> np.ndarray:
    """Bridge audio of phone A → RoomLeg A → RoomLeg B → bridge audio for phone B.

    ``phone_rate`` is phone A's codec clock rate as the worker reports it to the leg
    (``RoomLeg.set_phone_rate``); 0 leaves it unset. ``bridge_rate`` is the conference clock
    (16 kHz; 8 kHz with ``sip.wideband: false``): input and output are at that rate.
    ``sidecar=False`` makes leg B decode the Opus payloads even where it would play A's µ-law
    sidecar (an 8 kHz bridge): the path as it was before the sidecar, for comparison.
    """
    # Simulated time: tick i is at 20·i ms and phone A's frame of that tick reaches leg B 10 ms
    # before B's tick (a clean local hop); the loop itself runs faster than real time.
    now = [0.0]
    a = RoomLeg(_events(), rate=bridge_rate)
    b = RoomLeg(_events(), rate=bridge_rate, clock=lambda: now[0])
    b.ulaw_in = b.ulaw_in and sidecar
    if phone_rate:
        a.set_phone_rate(phone_rate)
    ch = _Channel()
    a.channel = ch  # type: ignore[assignment]
    a.track_sid = "TR_phone_a"
    port = _Port(rate=bridge_rate)
    n = bridge_rate // 50
    pcm = np.clip(np.rint(x16), -32768, 32767).astype(np.int16)
    pcm = np.pad(pcm, (0, (-len(pcm)) % n + 4 * n))
    out: list[bytes] = []
    for i in range(0, len(pcm), n):
        port.rx.append(pcm[i : i + n].tobytes())
        a.pump(port)  # type: ignore[arg-type]
        now[0] = i / bridge_rate - 0.010
        for sid, pkt in ch.rtp:
            b._on_rtp(sid, pkt)
        ch.rtp.clear()
        now[0] = i / bridge_rate
        out.append(b.produce())
    return np.frombuffer(b"".join(out), np.int16).astype(np.float64)


def phone_room_phone(ref: np.ndarray, phone_rate: int = RATE) -> np.ndarray:
    """Phone B's 8 kHz audio of ``ref`` played by phone A, both G.711 (aligned to ``ref``)."""
    y16 = room_path(up2(ulaw_roundtrip(ref)), phone_rate)
    return align(ulaw_roundtrip(down2(y16)), ref)

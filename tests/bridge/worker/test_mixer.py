"""bridge/worker/mixer.py: N-1 mixing of the room's tracks for one call."""

from __future__ import annotations

import numpy as np

from bridge.worker.mixer import IDLE_TICKS, TAG_ULAW, Mixer, mix
from roomline_harness.audio import tone
from sfu.local.g711 import ULAW_FRAME_BYTES, ulaw_decode, ulaw_encode


class RawDecoder:
    """Test decoder: payload is raw int16 PCM."""

    def decode(self, payload: bytes | None) -> np.ndarray:
        if payload is None:
            return np.zeros(960, np.int16)
        return np.frombuffer(payload, np.int16)


def test_mix_sums_and_clips() -> None:
    a = np.full(960, 20000, np.int16)
    b = np.full(960, 20000, np.int16)
    assert mix([a, b]).max() == 32767
    assert mix([-a, -b]).min() == -32768
    assert not mix([]).any()


def test_mixer_sums_tracks_and_emits_silence_without_gaps() -> None:
    m = Mixer(RawDecoder)
    assert m.next_frame() == bytes(1920)
    t1 = tone(440, 0.2, 48000, 5000)
    t2 = tone(1000, 0.2, 48000, 5000)
    for i in range(10):
        m.push("TR_a", i, t1[i * 960 : (i + 1) * 960].tobytes())
        m.push("TR_b", 500 + i, t2[i * 960 : (i + 1) * 960].tobytes())
    out = np.frombuffer(b"".join(m.next_frame() for _ in range(10)), np.int16)
    assert len(out) == 9600
    spec = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(len(out), 1 / 48000)
    peaks = sorted(freqs[np.argsort(spec)[-2:]])
    assert abs(peaks[0] - 440) < 6 and abs(peaks[1] - 1000) < 6
    assert len(m.next_frame()) == 1920  # still a full frame after the inputs ran dry


def test_mixer_input_cap() -> None:
    m = Mixer(RawDecoder)
    for i in range(100):
        m.push(f"TR_{i}", 0, bytes(1920))
    assert len(m.inputs) == 32


def test_mixer_keeps_counters_of_dropped_inputs() -> None:
    """An input pruned for idleness (or removed) still shows in :meth:`Mixer.stats`, summed
    with a later input of the same track: the end-of-call line counts everything played."""
    m = Mixer(RawDecoder)
    for i in range(5):
        m.push("TR_agent", i, bytes(1920))
        m.next_frame()
    for _ in range(IDLE_TICKS + 20):  # the agent went quiet: its input is dropped
        m.next_frame()
    assert "TR_agent" not in m.inputs
    assert m.stats()["TR_agent"]["played"] == 5
    for i in range(3):  # it speaks again: a new input, counters added to the old ones
        m.push("TR_agent", 100 + i, bytes(1920))
        m.next_frame()
    assert m.stats()["TR_agent"]["played"] == 8
    m.remove("TR_agent")
    assert not m.inputs and m.stats()["TR_agent"]["played"] == 8


def test_ulaw_frames_play_sample_exact_and_conceal_by_fading() -> None:
    """A frame tagged µ-law is decoded by table (no Opus decoder involved), bit-exact; a late
    frame of such a stream repeats the last one at -6 dB, then -12 dB."""
    m = Mixer(RawDecoder, samples=ULAW_FRAME_BYTES)
    x = tone(440.0, 0.06, 8000, 8000.0).astype(np.int16)
    codes = [ulaw_encode(x[i * 160 : (i + 1) * 160]) for i in range(3)]
    m.push("TR_phone", 10, codes[0], tag=TAG_ULAW)
    m.push("TR_phone", 11, codes[1], tag=TAG_ULAW)
    first = np.frombuffer(m.next_frame(), np.int16)
    second = np.frombuffer(m.next_frame(), np.int16)
    assert np.array_equal(first, ulaw_decode(codes[0]))
    assert np.array_equal(second, ulaw_decode(codes[1]))
    half = np.frombuffer(m.next_frame(), np.int16)  # frame 12 is late: a stall
    assert np.array_equal(half, ulaw_decode(codes[1]) >> 1)
    quarter = np.frombuffer(m.next_frame(), np.int16)
    assert np.array_equal(quarter, ulaw_decode(codes[1]) >> 2)
    m.push("TR_phone", 12, codes[2], tag=TAG_ULAW)  # it comes, and still plays
    assert np.array_equal(np.frombuffer(m.next_frame(), np.int16), ulaw_decode(codes[2]))


def test_ulaw_frame_of_the_wrong_size_is_dropped() -> None:
    m = Mixer(RawDecoder, samples=ULAW_FRAME_BYTES)
    m.push("TR_phone", 1, bytes(80), tag=TAG_ULAW)
    assert not m.inputs
    m.push("TR_phone", 1, bytes(320))  # an Opus-tagged payload is the decoder's business
    assert m.inputs["TR_phone"].jitter.stats.received == 1

"""Sans-I/O parts of the bridge media path: adaptive jitter buffer, 16 kHz Opus, RFC 6464 level."""

from __future__ import annotations

import numpy as np

from bridge.worker.jitter import JitterBuffer
from bridge.worker.jitter import Kind as JKind
from sfu.local.codec import Decimator, OpusDecoder, OpusEncoder, RtpPacketizer, audio_level
from sfu.local.server import LOCAL_OPUS
from sfu.media.forwarder import SourcePacket
from tests.audio_utils import dominant_frequency, snr_db, tone


def test_jitter_settles_at_one_frame_on_a_clean_link() -> None:
    jb = JitterBuffer(1, 10, relax_ticks=50)
    for seq in range(1000):
        jb.push(seq, bytes([seq & 0xFF]))
        assert jb.pop().kind is JKind.PLAY
        assert len(jb) == 0  # nothing waits: one frame of buffering
    assert jb.level == 1 and jb.stats.stalls == 0 and jb.stats.concealed == 0


def test_jitter_grows_on_stalls_then_shrinks_back() -> None:
    jb = JitterBuffer(1, 10, relax_ticks=50)
    seq = grown = 0
    for tick in range(600):
        # ticks 100..300: every 10th packet comes one tick late (arrives with the next one)
        late = 100 <= tick < 300 and tick % 10 == 0
        if not late:
            jb.push(seq, b"x")
            if 100 <= tick - 1 < 300 and (tick - 1) % 10 == 0:
                jb.push(seq - 1, b"x")  # the late one
        seq += 1
        jb.pop()
        grown = max(grown, jb.level)
    assert grown >= 2  # it grew a frame of cushion on the first stall
    assert jb.stats.stalls < 5  # ... after which late packets stopped stalling it
    assert jb.level == 1 and jb.stats.shrunk >= 1  # clean again: back to one frame
    assert jb.stats.late == 0  # every late packet was still played


def test_jitter_pause_is_not_a_stall() -> None:
    jb = JitterBuffer(1, 10)
    for s in range(10):
        jb.push(s, b"x")
        jb.pop()
    for _ in range(10):  # the sender pauses: conceal, then re-buffer
        jb.pop()
    assert jb.stats.underruns == 1 and jb.level == 1


def test_opus_at_16k_keeps_a_6khz_tone_and_decimates_cleanly() -> None:
    enc, dec = OpusEncoder(rate=16000), OpusDecoder(rate=16000)
    x = tone(6000.0, 2.0, 16000)
    out = [
        dec.decode(p) for i in range(100) for p in enc.encode(x[i * 320 : (i + 1) * 320].tobytes())
    ]
    y = np.concatenate(out)[3200:]
    assert all(len(f) == 320 for f in out)
    assert abs(dominant_frequency(y, 16000) - 6000.0) < 5 and snr_db(y, 16000, 6000.0) > 25
    # the decimator's stopband: a 10 kHz tone at 48 kHz does not alias into 16 kHz (to 6 kHz)
    d = Decimator(3)
    z = np.concatenate([d(tone(10000.0, 0.02, 48000, 16000.0)[:960]) for _ in range(50)])
    assert np.abs(z[100:]).max() < 200


def test_rtp_carries_rfc6464_level_that_the_sfu_reads() -> None:
    assert audio_level(np.zeros(320, np.int16)) == 127
    loud = tone(1000.0, 0.02, 16000, 16384.0)  # -6 dBFS sine: RMS -9 dBov
    assert audio_level(loud) == 9
    pk = RtpPacketizer()
    pkt = SourcePacket(LOCAL_OPUS, pk.packet(b"opus", audio_level=audio_level(loud)))
    assert pkt.audio_level is not None and pkt.audio_level & 0x7F == 9 and pkt.audio_level & 0x80
    assert pkt.view.payload(pkt.data) == b"opus"
    plain = SourcePacket(LOCAL_OPUS, pk.packet(b"opus"))
    assert plain.audio_level is None

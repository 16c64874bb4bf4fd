"""sfu/local/codec.py: Opus and RTP for local-channel participants."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from roomline.wire import OPUS_PT, ULAW_EXT_ID
from roomline_harness.audio import dominant_frequency, snr_db, tone
from sfu.local.codec import (
    FRAME_BYTES,
    OPUS_COMPLEXITY,
    OPUS_COMPLEXITY_NB,
    Decimator,
    OpusDecoder,
    OpusEncoder,
    RtpPacketizer,
    audio_level,
)
from sfu.local.server import LOCAL_OPUS
from sfu.media.forwarder import DownTrack, SourcePacket
from sfu.media.rtp import ExtensionWriter, RtpError, parse_rtp


def test_rtp_packetizer_and_parse() -> None:
    pk = RtpPacketizer(ssrc=0x01020304)
    first, second = pk.packet(b"abc"), pk.packet(b"def")
    a, b = parse_rtp(first), parse_rtp(second)
    assert (a.payload_type, a.ssrc, a.marker) == (111, 0x01020304, True)
    assert (a.payload(first), b.payload(second)) == (b"abc", b"def")
    assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF and not b.marker
    assert b.timestamp == (a.timestamp + 960) & 0xFFFFFFFF


def test_rtp_parse_csrc_extension_padding() -> None:
    hdr = struct.pack("!BBHII", 0xB1, 111, 1, 2, 3) + b"\0\0\0\x09"  # P, X, 1 CSRC
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xff\0\0"
    data = hdr + ext + b"payload" + b"\0\0\x03"
    assert parse_rtp(data).payload(data) == b"payload"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x6f\0\x01",  # truncated
        struct.pack("!BBHII", 0x40, 0, 0, 0, 0),  # version 1
        struct.pack("!BBHII", 0x90, 0, 0, 0, 0) + b"\xbe",  # truncated extension
        struct.pack("!BBHII", 0xA0, 0, 0, 0, 0) + b"x\x09",  # padding too long
        struct.pack("!BBHII", 0x8F, 0, 0, 0, 0),  # 15 CSRCs missing
    ],
)
def test_rtp_parse_invalid(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_opus_roundtrip_snr() -> None:
    enc, dec = OpusEncoder(), OpusDecoder()
    x = tone(1000, 1.0, 48000)
    out = []
    for i in range(50):
        for p in enc.encode(x[i * 960 : (i + 1) * 960].tobytes()):
            out.append(dec.decode(p))
    y = np.concatenate(out)[4800:]
    assert abs(dominant_frequency(y, 48000) - 1000) < 2
    assert snr_db(y, 48000, 1000) > 30
    assert len(dec.decode(None)) == 960  # concealment
    garbage = dec.decode(b"\xff\xff\xff")  # no exception: a silent frame, counted
    assert len(garbage) == 960 and not garbage.any() and dec.errors == 1
    with pytest.raises(ValueError):
        enc.encode(bytes(FRAME_BYTES - 2))


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


def test_decimating_48k_to_8k_keeps_the_alias_band_out() -> None:
    """÷6 (the 8 kHz bridge): 5–7 kHz at 48 kHz would fold onto 1–3 kHz; the filter stops them."""
    for freq in (5000.0, 6000.0, 7000.0):
        d = Decimator(6)
        z = np.concatenate([d(tone(freq, 0.02, 48000, 16000.0)[:960]) for _ in range(50)])
        assert np.abs(z[200:]).max() < 50, freq
    d = Decimator(6)  # and the passband: 1 kHz comes through at its level
    y = np.concatenate([d(tone(1000.0, 0.02, 48000, 16000.0)[:960]) for _ in range(50)])
    assert abs(dominant_frequency(y[200:], 8000) - 1000.0) < 5 and np.abs(y[200:]).max() > 15000


def test_opus_encoder_complexity_by_rate_and_close() -> None:
    """Narrowband (G.711 callers) encodes at the cheap complexity, everything else at the
    default; a bad setting is refused; a closed encoder frees its codec and refuses frames."""
    assert OpusEncoder(rate=8000).complexity == OPUS_COMPLEXITY_NB
    assert OpusEncoder(rate=16000).complexity == OPUS_COMPLEXITY
    assert OpusEncoder(rate=8000, complexity=7).complexity == 7
    with pytest.raises(ValueError, match="complexity"):
        OpusEncoder(complexity=11)
    enc, dec = OpusEncoder(rate=8000), OpusDecoder(rate=8000)
    x = tone(1000, 1.0, 8000)
    out = [
        dec.decode(p) for i in range(50) for p in enc.encode(x[i * 160 : (i + 1) * 160].tobytes())
    ]
    y = np.concatenate(out)[800:]
    assert abs(dominant_frequency(y, 8000) - 1000) < 3 and snr_db(y, 8000, 1000) > 25
    enc.close()
    enc.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        enc.encode(bytes(320))


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_opus_encoder_direct_path_matches_pyav_encode(rate: int) -> None:
    """Frames go to the codec without PyAV's re-chunking resampler, and the payloads are
    byte-for-byte those of PyAV's public ``encode`` (a PyAV release that changes the private
    step it relies on fails here, not in a call)."""
    fast, ref = OpusEncoder(rate=rate), OpusEncoder(rate=rate)
    assert fast._ctx is not None and ref._ctx is not None
    assert fast._send != fast._ctx.encode  # the direct path is in use on this PyAV
    ref._send = ref._ctx.encode  # the public path, with a new frame for every call
    ref._frame = None
    reused = fast._frame
    assert reused is not None  # the direct path fills one frame for every call
    n = rate // 50
    x = tone(440.0, 1.0, rate, 8000.0)
    for i in range(50):
        pcm = x[i * n : (i + 1) * n].tobytes()
        assert fast.encode(pcm) == ref.encode(pcm)
    assert fast._frame is reused
    with pytest.raises(ValueError, match="bytes"):
        fast.encode(bytes(2 * n - 2))


def test_decimator_reuses_its_window_view_and_keeps_history() -> None:
    """The strided view is built once; frames of another size rebuild it and keep the filter's
    history, so the output equals decimating the whole signal at once."""
    x = (np.random.default_rng(3).standard_normal(960 * 6) * 3000).astype(np.int16)
    whole = Decimator(6)(x)
    d = Decimator(6)
    parts = [d(x[:960])]
    view = d._windows
    parts.append(d(x[960:1920]))
    assert d._windows is view
    parts.append(d(x[1920:]))  # 3840 samples at once: a new view, same history
    assert np.array_equal(np.concatenate(parts), whole)


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


def test_ulaw_sidecar_rides_in_a_two_byte_extension_block_the_sfu_reads() -> None:
    ulaw = bytes(range(160))
    pk = RtpPacketizer()
    data = pk.packet(b"opus", audio_level=30, ulaw=ulaw)
    v = parse_rtp(data)
    assert v.extension_profile == 0x1000  # RFC 8285 two-byte form: elements up to 255 bytes
    assert v.extension(ULAW_EXT_ID) == ulaw and v.payload(data) == b"opus"
    assert (len(data) - 12 - 4 - len(b"opus")) % 4 == 0
    pkt = SourcePacket(LOCAL_OPUS, data)  # the SFU's side still hears the level
    assert pkt.audio_level == 0x80 | 30
    # without a level the block holds the sidecar alone
    v2 = parse_rtp(pk.packet(b"x", ulaw=ulaw[:5]))
    assert v2.extensions == ((ULAW_EXT_ID, ulaw[:5]),)


def test_ulaw_sidecar_never_reaches_a_webrtc_subscriber() -> None:
    """The DownTrack towards a browser writes its own extensions: the sidecar stays local."""
    data = RtpPacketizer().packet(b"opus", audio_level=30, ulaw=bytes(160))
    dt = DownTrack("audio", 9, {OPUS_PT: OPUS_PT}, ExtensionWriter("1", 5, 9), 48000)
    out = dt.forward(SourcePacket(LOCAL_OPUS, data), 1 << 32)
    assert out is not None
    v = parse_rtp(out)
    assert v.extension(9) == bytes([0x80 | 30]) and v.payload(out) == b"opus"
    assert all(len(value) < 16 for _, value in v.extensions)
    assert len(out) < len(data) - 150


@pytest.mark.parametrize("size", [0, 256])
def test_ulaw_sidecar_invalid_size(size: int) -> None:
    with pytest.raises(ValueError, match="1-255 bytes"):
        RtpPacketizer().packet(b"opus", ulaw=bytes(size))

"""sfu.media.rtp: parsing, rewriting, RTCP feedback and keyframe detection.

Captured packets (tests/data/*.bin, u16 length-prefixed, recorded once from an aiortc loopback
session through the forwarder) are the positive cases; ``_invalid``/``_truncated`` cases and a
Hypothesis property cover the error contract: the parsers raise RtpError and nothing else.
"""

from __future__ import annotations

import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from roomline.errors import InvalidRequest
from roomline_harness.captures import load
from sfu.media.rtp import (
    EXT_URI_ABS_SEND_TIME,
    EXT_URI_AUDIO_LEVEL,
    EXT_URI_MID,
    ExtensionWriter,
    RtpError,
    abs_send_time,
    build_nack,
    build_pli,
    h264_is_keyframe,
    is_keyframe,
    is_rtcp,
    ntp_timestamp,
    parse_nack_fci,
    parse_rtcp_feedback,
    parse_rtp,
    rewrite,
    vp8_is_keyframe,
)


def aiortc_map(**ids: int) -> HeaderExtensionsMap:
    uris = {"mid": EXT_URI_MID, "audio_level": EXT_URI_AUDIO_LEVEL, "ast": EXT_URI_ABS_SEND_TIME}
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=v, uri=uris[k]) for k, v in ids.items()
            ]
        )
    )
    return m


# ------------------------------------------------------------------------------- parse


@pytest.mark.parametrize("name", ["opus_publisher.bin", "vp8_publisher.bin", "h264_publisher.bin"])
def test_parse_captured_matches_aiortc(name: str) -> None:
    ext_map = aiortc_map(mid=1, audio_level=2, ast=3)
    for data in load(name):
        view = parse_rtp(data)
        ref = RtpPacket.parse(data, ext_map)
        assert view.version == 2
        assert view.marker == bool(ref.marker)
        assert view.payload_type == ref.payload_type
        assert view.sequence_number == ref.sequence_number
        assert view.timestamp == ref.timestamp
        assert view.ssrc == ref.ssrc
        assert list(view.csrc) == ref.csrc
        assert view.payload(data) == ref.payload
        assert view.extension(1) == b"0"  # aiortc's first mid
        assert view.extension_profile == 0xBEDE


def test_parse_captured_opus_audio_level() -> None:
    view = parse_rtp(load("opus_publisher.bin")[0])
    level = view.extension(2)
    assert level is not None and len(level) == 1
    assert view.extension(9) is None


def test_parse_two_byte_extensions_csrc_and_padding() -> None:
    ext = bytes([1, 3]) + b"abc" + bytes([200, 0]) + b"\x00"  # id 200 has length 0 (legal)
    ext += b"\x00" * (-len(ext) % 4)
    data = (
        struct.pack("!BBHII", 0xB2, 0x80 | 111, 7, 99, 0xAABBCCDD)  # P, X, CC=2
        + struct.pack("!II", 1, 2)
        + struct.pack("!HH", 0x1000, len(ext) // 4)
        + ext
        + b"payload"
        + b"\x00\x00\x03"
    )
    view = parse_rtp(data)
    assert view.csrc == (1, 2)
    assert view.extensions == ((1, b"abc"), (200, b""))
    assert view.payload(data) == b"payload"
    assert view.padding == 3
    assert view.marker and view.payload_type == 111


def test_parse_one_byte_padding_and_stop_id() -> None:
    ext = b"\x00" + bytes([0x10]) + b"7" + bytes([0xF0]) + b"xx"
    ext += b"\x00" * (-len(ext) % 4)
    data = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", 0xBEDE, len(ext) // 4)
    data += ext + b"pl"
    assert parse_rtp(data).extensions == ((1, b"7"),)


def test_parse_unknown_profile_is_kept_opaque() -> None:
    data = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", 0xABCD, 1) + b"zzzz" + b"p"
    view = parse_rtp(data)
    assert view.extension_profile == 0xABCD and view.extensions == ()
    assert view.payload(data) == b"p"


GOOD = struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + b"payload"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x40" + GOOD[1:], id="version1"),
        pytest.param(b"\x80\xc8" + GOOD[2:], id="rtcp_sr"),
        pytest.param(b"\xa0" + GOOD[1:-1] + b"\x00", id="padding_zero"),
        pytest.param(b"\xa0" + GOOD[1:-1] + b"\xff", id="padding_too_long"),
        pytest.param(
            struct.pack("!BBHII", 0x90, 96, 1, 2, 3)
            + struct.pack("!HH", 0xBEDE, 1)
            + b"\x13ab\x00",
            id="one_byte_element_overruns_block",
        ),
        pytest.param(
            struct.pack("!BBHII", 0x90, 96, 1, 2, 3)
            + struct.pack("!HH", 0x1000, 1)
            + b"\x01\x05ab",
            id="two_byte_element_overruns_block",
        ),
    ],
)
def test_parse_invalid(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(GOOD[:11], id="header"),
        pytest.param(struct.pack("!BBHII", 0x83, 96, 1, 2, 3) + b"\x00" * 8, id="csrc"),
        pytest.param(struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + b"\xbe", id="ext_header"),
        pytest.param(
            struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", 0xBEDE, 2) + b"\x10",
            id="ext_block",
        ),
    ],
)
def test_parse_truncated(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_captured_packets_truncated_at_every_length() -> None:
    """Cut inside the header (fixed part, CSRCs, extension block): RtpError. Cut in the payload:
    the header still parses and the payload is exactly what is left (no padding in captures)."""
    rejected = 0
    for data in load("vp8_publisher.bin")[:3] + load("opus_publisher.bin")[:3]:
        full = parse_rtp(data)
        assert full.padding == 0 and full.extensions, "captures carry extensions, no padding"
        for n in range(len(data)):
            if n < full.payload_offset:
                with pytest.raises(RtpError):
                    parse_rtp(data[:n])
                rejected += 1
            else:
                cut = parse_rtp(data[:n])
                assert cut[:-2] == full[:-2]  # header fields and payload_offset; not payload_end
                assert cut.payload(data[:n]) == data[full.payload_offset : n]
    assert rejected >= 6 * 12


def test_rtp_error_is_invalid_request() -> None:
    assert issubclass(RtpError, InvalidRequest)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_rtp_error(data: bytes) -> None:
    try:
        parse_rtp(data)
    except RtpError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_other_parsers_never_raise_anything_but_rtp_error(data: bytes) -> None:
    for fn in (parse_rtcp_feedback, vp8_is_keyframe, h264_is_keyframe, parse_nack_fci):
        try:
            fn(data)
        except RtpError:
            pass


# ----------------------------------------------------------------------------- rewrite


@st.composite
def rtp_packets(draw: st.DrawFn) -> bytes:
    cc = draw(st.integers(0, 3))
    marker = draw(st.booleans())
    pt = draw(st.integers(0, 127).filter(lambda p: not 72 <= p <= 95 or not marker))
    if marker and 64 <= pt <= 95:
        pt = 96
    header = struct.pack(
        "!BBHII",
        0x80 | cc,
        (marker << 7) | pt,
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)),
    )
    header += b"".join(struct.pack("!I", draw(st.integers(0, 0xFFFFFFFF))) for _ in range(cc))
    payload = draw(st.binary(max_size=100))
    pad = draw(st.integers(0, 4))
    if pad:
        payload += b"\x00" * (pad - 1) + bytes([pad])
        header = bytes([header[0] | 0x20]) + header[1:]
    return header + payload


@settings(max_examples=300, deadline=None)
@given(
    rtp_packets(),
    st.integers(0, 0xFFFFFFFF),
    st.integers(96, 127),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.one_of(st.none(), st.integers(0, 255)),
    st.booleans(),
)
def test_parse_rewrite_roundtrip(
    data: bytes, ssrc: int, pt: int, seq: int, ts: int, level: int | None, ast: bool
) -> None:
    view = parse_rtp(data)
    writer = ExtensionWriter("7", 1, 2, 3 if ast else None)
    block = (
        writer.build(level, abs_send_time(ntp_timestamp(1_700_000_000.25)))
        if ast
        else writer.build(level)
    )
    out = rewrite(data, view, ssrc, pt, seq, ts, block)
    back = parse_rtp(out)
    assert (back.ssrc, back.payload_type, back.sequence_number, back.timestamp) == (
        ssrc,
        pt,
        seq,
        ts,
    )
    assert back.marker == view.marker and back.csrc == view.csrc
    assert back.payload(out) == view.payload(data)
    assert back.padding == view.padding
    assert back.extension(1) == b"7"
    assert back.extension(2) == (bytes([level]) if level is not None else None)
    assert (back.extension(3) is not None) == ast


def test_rewrite_captured_is_readable_by_aiortc() -> None:
    src = load("opus_publisher.bin")[0]
    view = parse_rtp(src)
    level = view.extension(2)
    assert level is not None
    writer = ExtensionWriter("3", 1, 2, None)
    out = rewrite(src, view, 1234, 111, 65535, 2**32 - 1, writer.build(level[0]))
    ref = RtpPacket.parse(out, aiortc_map(mid=1, audio_level=2))
    assert ref.ssrc == 1234 and ref.payload_type == 111
    assert ref.sequence_number == 65535 and ref.timestamp == 2**32 - 1
    assert ref.extensions.mid == "3"
    assert ref.extensions.audio_level == (bool(level[0] & 0x80), level[0] & 0x7F)
    assert ref.payload == view.payload(src)


def test_rewrite_drops_publisher_extensions_without_writer() -> None:
    src = load("vp8_publisher.bin")[0]
    out = rewrite(src, parse_rtp(src), 1, 97, 2, 3)
    back = parse_rtp(out)
    assert back.extension_profile == 0 and back.extensions == ()
    assert back.payload(out) == parse_rtp(src).payload(src)


def test_ntp_timestamp_is_32_32_fixed_point_since_1900() -> None:
    assert ntp_timestamp(0.0) == 2_208_988_800 << 32
    assert ntp_timestamp(0.5) == (2_208_988_800 << 32) + (1 << 31)


def test_extension_writer_abs_send_time_and_limits() -> None:
    ntp = ntp_timestamp(1_700_000_000.25)
    w = ExtensionWriter("0", 1, None, 3)
    assert w.wants_abs_send_time
    block = w.build(None, abs_send_time(ntp))
    assert len(block) % 4 == 0
    ref = aiortc_map(mid=1, ast=3).get(0xBEDE, block[4:])
    assert ref.mid == "0" and ref.abs_send_time == abs_send_time(ntp)
    assert ExtensionWriter(None, None).build(5) == b""
    with pytest.raises(ValueError):
        ExtensionWriter("0", 15)
    with pytest.raises(ValueError):
        ExtensionWriter("x" * 17, 1)


# -------------------------------------------------------------------------------- RTCP


def test_rtcp_captured_receiver_reports_and_remb() -> None:
    for data in load("rtcp_subscriber.bin"):
        assert is_rtcp(data)
        assert parse_rtcp_feedback(data) == []
        assert RtcpPacket.parse(data)  # the same bytes are valid for aiortc


def test_pli_fir_nack_parse_against_aiortc_serialisation() -> None:
    pli = bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=2))
    fir = bytes(
        RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=0, fci=struct.pack("!IBxxx", 9, 4))
    )
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=2)
    nack.lost = [3, 4, 5, 20, 100]
    compound = load("rtcp_subscriber.bin")[0] + pli + fir + bytes(nack)
    fb = parse_rtcp_feedback(compound)
    assert [f.kind for f in fb] == ["pli", "fir", "nack"]
    assert fb[0].media_ssrc == 2 and fb[1].media_ssrc == 9
    assert sorted(fb[2].lost) == sorted(nack.lost)


def test_build_pli_and_nack_roundtrip_through_aiortc() -> None:
    (p,) = RtcpPacket.parse(build_pli(5, 6))
    assert isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI and p.media_ssrc == 6
    lost = [65530, 65535, 1, 2, 40, 41, 56]
    (n,) = RtcpPacket.parse(build_nack(5, 6, lost))
    assert isinstance(n, RtcpRtpfbPacket) and sorted(n.lost) == sorted(lost)
    assert sorted(parse_rtcp_feedback(build_nack(5, 6, lost))[0].lost) == sorted(lost)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x81\xc9", id="short"),
        pytest.param(b"\x81\xc9\x00\x07" + b"\x00" * 8, id="length_beyond_end"),
        pytest.param(b"\x41\xc9\x00\x00", id="version1"),
        pytest.param(struct.pack("!BBHI", 0x81, 206, 1, 1), id="feedback_too_short"),
        pytest.param(struct.pack("!BBHII", 0x84, 206, 2, 1, 0), id="fir_without_fci"),
        pytest.param(struct.pack("!BBHIIH", 0x81, 205, 3, 1, 2, 5) + b"\x00\x00", id="nack_ok_len"),
    ],
)
def test_rtcp_invalid_and_truncated(data: bytes) -> None:
    if data.endswith(b"\x00\x05\x00\x00"):
        # valid: one NACK entry
        assert parse_rtcp_feedback(data)[0].lost == (5,)
        return
    with pytest.raises(RtpError):
        parse_rtcp_feedback(data)


def test_nack_fci_invalid() -> None:
    with pytest.raises(RtpError):
        parse_nack_fci(b"\x00\x01\x00")
    assert parse_nack_fci(struct.pack("!HH", 10, 0b101)) == (10, 11, 13)


# ---------------------------------------------------------------------------- keyframes


def test_vp8_keyframe_on_captured_stream() -> None:
    pkts = load("vp8_publisher.bin")
    flags = [vp8_is_keyframe(parse_rtp(p).payload(p)) for p in pkts]
    assert flags[0] is True  # the stream starts with the encoder's first (key) frame
    assert sum(flags) == 1
    fwd = load("vp8_forwarded.bin")
    assert not any(is_keyframe("video/VP8", parse_rtp(p).payload(p)) for p in fwd)


def test_h264_keyframe_on_captured_stream() -> None:
    pkts = load("h264_publisher.bin")
    first = parse_rtp(pkts[0]).payload(pkts[0])
    assert first[0] & 0x1F == 24  # STAP-A carrying SPS+PPS
    assert h264_is_keyframe(first)
    assert is_keyframe("video/H264", first)
    assert not is_keyframe("audio/opus", first)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x10, 0x00]), True),  # S=1 PID=0, P=0
        (bytes([0x10, 0x01]), False),  # inter frame
        (bytes([0x00, 0x00]), False),  # not start of partition
        (bytes([0x90, 0x80, 0x81, 0x02, 0x00]), True),  # X, I with 15-bit PictureID
        (bytes([0x90, 0xF0, 0x05, 0x01, 0x02, 0x00]), True),  # X, I(7-bit), L, T/K
    ],
)
def test_vp8_descriptor_variants(payload: bytes, expected: bool) -> None:
    assert vp8_is_keyframe(payload) is expected


@pytest.mark.parametrize(
    "payload",
    [b"", bytes([0x90]), bytes([0x90, 0x80]), bytes([0x90, 0x80, 0x81, 0x02]), bytes([0x10])],
)
def test_vp8_truncated(payload: bytes) -> None:
    with pytest.raises(RtpError):
        vp8_is_keyframe(payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x65, 0x88]), True),  # IDR slice
        (bytes([0x67, 0x42]), True),  # SPS
        (bytes([0x41, 0x9A]), False),  # non-IDR slice
        (bytes([0x7C, 0x85, 0x00]), True),  # FU-A start of IDR
        (bytes([0x7C, 0x05, 0x00]), False),  # FU-A continuation
        (bytes([0x78, 0x00, 0x02, 0x68, 0xCE, 0x00, 0x01, 0x65]), True),  # STAP-A PPS + IDR
        (bytes([0x78, 0x00, 0x01, 0x41]), False),
    ],
)
def test_h264_variants(payload: bytes, expected: bool) -> None:
    assert h264_is_keyframe(payload) is expected


@pytest.mark.parametrize(
    "payload",
    [b"", bytes([0x7C]), bytes([0x78, 0x00]), bytes([0x78, 0x00, 0x05, 0x67]), bytes([0x78, 0, 0])],
)
def test_h264_truncated_or_invalid(payload: bytes) -> None:
    with pytest.raises(RtpError):
        h264_is_keyframe(payload)

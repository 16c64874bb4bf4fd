"""sfu.media.forwarder: DownTrack sequence/timestamp mapping, pause/resume, keyframe gating."""

from __future__ import annotations

import struct

import pytest

from roomline_harness.captures import load
from sfu.media.forwarder import DownTrack, KeyframeThrottle, SourceInfo, SourcePacket
from sfu.media.rtp import ExtensionWriter, RtpError, parse_rtp

OPUS = SourceInfo("audio", "audio/opus", 48000, 96, audio_level_id=2)
VP8 = SourceInfo("video", "video/VP8", 90000, 97)
NTP_1S = 1 << 32


def packet(
    seq: int, ts: int, *, pt: int = 96, ssrc: int = 1, payload: bytes = b"\x11\x22"
) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def vp8(seq: int, ts: int, key: bool, ssrc: int = 7) -> bytes:
    # descriptor S=1 PID=0, then VP8 header byte with P bit (0 = key frame)
    return packet(seq, ts, pt=97, ssrc=ssrc, payload=bytes([0x10, 0x00 if key else 0x01, 0, 0]))


def audio_track(ssrc: int = 555) -> DownTrack:
    return DownTrack("audio", ssrc, {96: 111}, ExtensionWriter("4", 1, 2), 48000)


def test_first_packet_sets_offsets_and_rewrites_fields() -> None:
    dt = audio_track()
    out = dt.forward(SourcePacket(OPUS, packet(1000, 5000)), NTP_1S)
    assert out is not None
    v = parse_rtp(out)
    assert v.ssrc == 555 and v.payload_type == 111
    assert 0 <= v.sequence_number < 0x8000  # random start in the lower half
    assert v.extension(1) == b"4"
    out2 = dt.forward(SourcePacket(OPUS, packet(1003, 5000 + 3 * 960)), NTP_1S)
    assert out2 is not None
    v2 = parse_rtp(out2)
    assert (v2.sequence_number - v.sequence_number) & 0xFFFF == 3  # gaps stay gaps (NACK mapping)
    assert (v2.timestamp - v.timestamp) & 0xFFFFFFFF == 3 * 960
    assert dt.input_seq(v2.sequence_number) == 1003
    assert dt.stats.packets == 2 and dt.stats.octets == 4
    assert dt.stats.last_rtp_ts == v2.timestamp and dt.stats.last_ntp == NTP_1S


def test_sequence_and_timestamp_wrap() -> None:
    dt = audio_track()
    outs = []
    for i in range(5):
        o = dt.forward(SourcePacket(OPUS, packet(0xFFFE + i, 0xFFFFFC00 + 960 * i)), NTP_1S)
        assert o is not None
        outs.append(parse_rtp(o))
    for a, b in zip(outs, outs[1:], strict=False):
        assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1
        assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 960


def test_audio_level_copied_to_subscriber_id() -> None:
    src = load("opus_publisher.bin")[0]
    level = parse_rtp(src).extension(2)
    dt = DownTrack("audio", 9, {96: 111}, ExtensionWriter("1", 5, 9), 48000)
    out = dt.forward(SourcePacket(OPUS, src), NTP_1S)
    assert out is not None
    v = parse_rtp(out)
    assert v.extension(5) == b"1" and v.extension(9) == level and v.extension(2) is None


def test_unknown_payload_type_dropped() -> None:
    dt = audio_track()
    assert dt.forward(SourcePacket(OPUS, packet(1, 1, pt=0)), NTP_1S) is None
    assert dt.stats.dropped_unknown_pt == 1


def test_pause_forwards_nothing_and_resume_is_contiguous() -> None:
    dt = audio_track()
    last = None
    for i in range(3):
        o = dt.forward(SourcePacket(OPUS, packet(100 + i, 960 * i)), NTP_1S)
        assert o is not None
        last = parse_rtp(o)
    assert last is not None
    dt.pause()
    assert dt.paused
    for i in range(3, 50):
        assert dt.forward(SourcePacket(OPUS, packet(100 + i, 960 * i)), NTP_1S) is None
    assert dt.stats.dropped_paused == 47 and dt.stats.packets == 3
    dt.resume()
    o = dt.forward(SourcePacket(OPUS, packet(150, 960 * 50)), NTP_1S + NTP_1S)
    assert o is not None
    v = parse_rtp(o)
    assert v.sequence_number == (last.sequence_number + 1) & 0xFFFF  # no gap for the receiver
    assert (v.timestamp - last.timestamp) & 0xFFFFFFFF == 48000  # 1 s of wall clock


def test_source_switch_rebases_to_contiguous_output() -> None:
    dt = audio_track()
    a = parse_rtp(dt.forward(SourcePacket(OPUS, packet(10, 10_000, ssrc=1)), NTP_1S) or b"")
    dt.switch_source()
    b = parse_rtp(dt.forward(SourcePacket(OPUS, packet(40_000, 99, ssrc=2)), NTP_1S) or b"")
    assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
    assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 1  # same instant: one tick later
    assert b.ssrc == a.ssrc == 555


def test_video_waits_for_keyframe_then_forwards() -> None:
    dt = DownTrack("video", 8, {97: 98}, ExtensionWriter("1", 1, None, 3), 90000)
    assert dt.needs_keyframe
    assert dt.forward(SourcePacket(VP8, vp8(1, 0, key=False)), NTP_1S) is None
    assert dt.stats.dropped_waiting_keyframe == 1
    out = dt.forward(SourcePacket(VP8, vp8(2, 3000, key=True)), NTP_1S)
    assert out is not None and not dt.needs_keyframe
    v = parse_rtp(out)
    assert v.payload_type == 98 and v.extension(3) is not None  # abs-send-time regenerated
    assert dt.forward(SourcePacket(VP8, vp8(3, 6000, key=False)), NTP_1S) is not None
    # Pause/resume: resumed video waits for the next keyframe again.
    dt.pause()
    assert not dt.needs_keyframe  # paused tracks do not ask for keyframes
    dt.resume()
    assert dt.needs_keyframe
    assert dt.forward(SourcePacket(VP8, vp8(9, 9000, key=False)), NTP_1S) is None
    out = dt.forward(SourcePacket(VP8, vp8(10, 12000, key=True)), NTP_1S)
    assert out is not None
    assert parse_rtp(out).sequence_number == (v.sequence_number + 2) & 0xFFFF


def test_captured_vp8_stream_starts_at_keyframe() -> None:
    pkts = load("vp8_publisher.bin")
    dt = DownTrack("video", 8, {97: 97}, ExtensionWriter("0", 1), 90000)
    # Skip the keyframe: everything else is dropped.
    assert all(dt.forward(SourcePacket(VP8, p), NTP_1S) is None for p in pkts[1:])
    assert dt.forward(SourcePacket(VP8, pkts[0]), NTP_1S) is not None


def test_source_packet_invalid_and_truncated() -> None:
    with pytest.raises(RtpError):
        SourcePacket(OPUS, b"\x80\x60")
    with pytest.raises(RtpError):
        SourcePacket(OPUS, b"\x00" * 20)
    # A truncated VP8 descriptor is not a keyframe, and not an error for the stream.
    assert SourcePacket(VP8, packet(1, 1, pt=97, payload=b"\x90")).keyframe is False


def test_keyframe_throttle() -> None:
    th = KeyframeThrottle(0.5)
    assert th.allow(10.0)
    assert not th.allow(10.2)
    assert not th.allow(10.49)
    assert th.allow(10.5)
    assert th.requested == 2 and th.suppressed == 2

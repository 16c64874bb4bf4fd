"""Sans-I/O cores of the bridge: control protocol, DTMF, jitter buffer, mixer, RTP/Opus, call
state machine, SIP header parsing, channel framing. Each parser has _invalid/_truncated cases."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import bridge.control as control
from bridge.worker.call import (
    PIN_DIGIT_TIMEOUT_S,
    PIN_TOTAL_TIMEOUT_S,
    Answer,
    Bye,
    CallMachine,
    JoinRoom,
    LeaveRoom,
    Phase,
    PlayPrompt,
    Reject,
    SendPin,
    Status,
)
from bridge.worker.dtmf import DtmfError, code_to_digit, digit_to_code
from bridge.worker.mixer import Mixer, mix
from bridge.worker.prompt import pin_prompt
from bridge.worker.sipmsg import SipParseError, parse_headers, parse_name_addr, via_transport
from roomline.wire import MAX_PIN_DIGITS
from sfu.local.codec import FRAME_BYTES, OpusDecoder, OpusEncoder, RtpPacketizer
from sfu.local.framing import FrameDecoder, FrameError, Kind, decode_rtp, encode_frame, encode_rtp
from sfu.local.jitter import JitterBuffer
from sfu.local.jitter import Kind as JKind
from sfu.media.rtp import RtpError, parse_rtp
from tests.audio_utils import dominant_frequency, snr_db, tone
from tests.sip.dtmf import DtmfReceiver, TelephoneEvent, generate_digit, parse_dtmf_relay

# --- control -------------------------------------------------------------------------------


def test_control_roundtrip_all_messages() -> None:
    msgs: list[control.Message] = [
        control.Ready(sip_port=5060, max_calls=4, pid=7),
        control.InviteRequest(
            id=1,
            call_id="c",
            from_user="+1",
            from_host="h",
            to_user="2",
            src_ip="1.2.3.4",
            src_port=5060,
            headers={"X-A": "b"},
            authorization=None,
        ),  # fmt: skip
        control.InviteResult(id=1, status=200, token="t", socket="/s", ringing=True),
        control.InviteResult(id=2, status=407, headers={"Proxy-Authenticate": "Digest x"}),
        control.InviteResult(id=3, status=200, collect_pin=True),
        control.PinEntered(id=4, call_id="c", digits="1234"),
        control.PinEntered(id=5, call_id="c", digits=""),
        control.PinResult(id=4, call_id="c", status=200, token="t", room="r", socket="/s"),
        control.PinResult(id=5, call_id="c", status=403, reason="Wrong PIN"),
        control.CallState(call_id="c", state="active", active_calls=1),
        control.Shutdown(),
    ]
    for m in msgs:
        line = control.encode(m)
        assert line.endswith(b"\n")
        assert control.decode(line) == m


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1,2]",
        b'{"type":"nope"}',
        b'{"type":"ready","sip_port":1}',  # missing max_calls
        b'{"type":"ready","sip_port":1,"max_calls":4,"extra":1}',
        b'{"type":"ready","sip_port":"1","max_calls":4}',
        b'{"type":"ready","sip_port":true,"max_calls":4}',
        b'{"type":"invite_result","id":1,"status":299}',
        b'{"type":"invite_result","id":1,"status":200}',  # no token/socket
        b'{"type":"invite_result","id":1,"status":404,"headers":{"a":1}}',
        b'{"type":"call_state","call_id":"c","state":"weird"}',
        b'{"type":"invite_result","id":1,"status":404,"collect_pin":true}',
        b'{"type":"pin_entered","id":1,"call_id":"c","digits":"12#"}',
        b'{"type":"pin_entered","id":1,"call_id":"c","digits":"12345678901234567"}',
        b'{"type":"pin_entered","id":1,"call_id":"c"}',
        b'{"type":"pin_result","id":1,"call_id":"c","status":200}',  # no token/socket
        b'{"type":"pin_result","id":1,"call_id":"c","status":299}',
        b"\xff\xfe",
    ],
)
def test_control_decode_invalid(line: bytes) -> None:
    with pytest.raises(control.ControlError):
        control.decode(line)


def test_control_decode_truncated() -> None:
    line = control.encode(control.Ready(sip_port=1, max_calls=4))
    with pytest.raises(control.ControlError):
        control.decode(line[: len(line) // 2])


def test_control_float_accepts_int_and_null_authorization() -> None:
    m = control.decode(
        b'{"type":"invite_result","id":3,"status":200,"token":"t","socket":"s","ringing_timeout":5}'
    )
    assert isinstance(m, control.InviteResult) and m.ringing_timeout == 5.0
    with pytest.raises(control.ControlError):
        control.decode(b'{"type":"invite_result","id":3,"status":486,"media_timeout":0}')


def test_invite_result_answer_headers() -> None:
    res = control.InviteResult(
        id=1, status=200, token="t", socket="/s",
        headers={"X-Trunk": "local"},
        attributes_to_headers={"crm.id": "X-CRM-Id", "unset": "X-Unset", "bad": "X-Bad"},
        attributes={"crm.id": "42", "bad": "a\r\nX-Evil: 1"},
    )  # fmt: skip
    assert res.answer_headers() == {"X-Trunk": "local", "X-CRM-Id": "42"}
    for kw in (
        {"headers": {"X Space": "1"}},
        {"headers": {"X-A": "1\r\nX-Evil: 1"}},
        {"attributes_to_headers": {"a": "Bad:Name"}},
    ):
        with pytest.raises(control.ControlError):
            control.InviteResult(id=1, status=407, **kw)  # type: ignore[arg-type]


# --- DTMF ----------------------------------------------------------------------------------


def test_dtmf_codes() -> None:
    assert [digit_to_code(d) for d in "09*#AbCd"] == [0, 9, 10, 11, 12, 13, 14, 15]
    assert code_to_digit(11) == "#"
    for bad in ("x", "", "12"):
        with pytest.raises(DtmfError):
            digit_to_code(bad)
    with pytest.raises(DtmfError):
        code_to_digit(16)


def test_dtmf_generate_and_fold_by_timestamp() -> None:
    rx = DtmfReceiver()
    out = []
    for i, d in enumerate("1234*#"):
        ts = 1000 + i * 4000
        pkts = list(generate_digit(d))
        assert pkts[0][0] is True and not any(m for m, _, _ in pkts[1:])
        ends = [TelephoneEvent.parse(p) for _, _, p in pkts if TelephoneEvent.parse(p).end]
        assert len(ends) == 3 and ends[0].duration == 2000
        for _, _, payload in pkts + pkts[-1:]:  # plus a retransmitted end packet
            ev = rx.feed(ts, payload)
            if ev:
                out.append(ev.digit)
    assert "".join(out) == "1234*#"


def test_dtmf_same_digit_twice_is_two_events() -> None:
    rx = DtmfReceiver()
    p = TelephoneEvent(5, False, 10, 160).encode()
    assert rx.feed(100, p) and rx.feed(100, p) is None and rx.feed(900, p)


def test_dtmf_event_invalid_truncated() -> None:
    with pytest.raises(DtmfError):
        TelephoneEvent.parse(b"\x01\x02")
    with pytest.raises(DtmfError):
        TelephoneEvent(1, False, 64, 0).encode()
    assert DtmfReceiver().feed(1, TelephoneEvent(16, False, 0, 0).encode()) is None  # flash


def test_dtmf_relay() -> None:
    assert parse_dtmf_relay("Signal=5\r\nDuration=160\r\n") == ("5", 160)
    assert parse_dtmf_relay(b"signal= #\n") == ("#", 250)
    assert parse_dtmf_relay("Signal=11\r\n") == ("#", 250)
    assert parse_dtmf_relay("Signal=a\r\n") == ("A", 250)
    for bad in ("Duration=100", "Signal=x", "Signal=5\nDuration=abc", "garbage", b"\xff"):
        with pytest.raises(DtmfError):
            parse_dtmf_relay(bad)


# --- jitter --------------------------------------------------------------------------------


def _drain(jb: JitterBuffer, n: int) -> list[tuple[JKind, bytes]]:
    return [(p.kind, p.payload) for p in (jb.pop() for _ in range(n))]


def test_jitter_reorders_and_waits_for_target() -> None:
    jb = JitterBuffer(target_frames=3, max_frames=10)
    assert jb.pop().kind is JKind.SILENCE
    jb.push(102, bytes([102]))
    assert jb.pop().kind is JKind.SILENCE  # spans 1 frame < target 3
    jb.push(100, bytes([100]))  # reordered: now spans 100..102
    assert _drain(jb, 1) == [(JKind.PLAY, bytes([100]))]
    jb.push(101, bytes([101]))  # arrives just in time
    assert [p for _, p in _drain(jb, 2)] == [bytes([101]), bytes([102])]


def test_jitter_conceals_loss_then_rebuffers() -> None:
    jb = JitterBuffer(3, 10)
    for s in (1, 2, 4, 5):
        jb.push(s, bytes([s]))
    kinds = [k for k, _ in _drain(jb, 4)]
    assert kinds == [JKind.PLAY, JKind.PLAY, JKind.CONCEAL, JKind.PLAY]
    kinds = [k for k, _ in _drain(jb, 6)]  # 5, then concealment, then silence
    assert kinds[0] is JKind.PLAY and kinds[-1] is JKind.SILENCE
    assert jb.stats.underruns == 1
    # the sender resumes with any sequence number: buffering starts again
    for s in (7, 8, 9):
        jb.push(s, b"x")
    assert _drain(jb, 1)[0][0] is JKind.PLAY


def test_jitter_bounded_latency_late_duplicate_wrap() -> None:
    jb = JitterBuffer(3, 10)
    for s in range(65530, 65530 + 30):
        jb.push(s & 0xFFFF, b"x")
    assert len(jb) <= 10 and jb.stats.overflow_dropped > 0
    first = jb.pop()
    assert first.kind is JKind.PLAY
    jb.push(65530, b"late")
    jb.push((65530 + 29) & 0xFFFF, b"dup")
    assert jb.stats.late == 1 and jb.stats.duplicate == 1
    with pytest.raises(ValueError):
        JitterBuffer(5, 2)


# --- mixer ---------------------------------------------------------------------------------


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


# --- RTP / Opus ----------------------------------------------------------------------------


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


# --- call state machine --------------------------------------------------------------------


def ok(ringing: bool = False, **kw: float) -> control.InviteResult:
    return control.InviteResult(id=1, status=200, token="t", socket="/s", ringing=ringing, **kw)  # type: ignore[arg-type]


def test_call_immediate_answer_then_caller_bye() -> None:
    m = CallMachine("c", 0.0)
    assert m.on_decision(ok(), 0.0) == [JoinRoom()]
    assert m.on_room_joined(0.1) == [Answer(200), Status("active")]
    assert m.phase is Phase.ACTIVE
    acts = m.on_sip_disconnected(200, "Normal call clearing")
    assert acts == [Status("hangup", "Normal call clearing"), LeaveRoom("Normal call clearing")]
    assert m.on_sip_disconnected(200, "") == []


def test_call_wait_for_audio_and_ringing_timeout() -> None:
    m = CallMachine("c", 0.0)
    assert m.on_decision(ok(ringing=True, ringing_timeout=5), 0.0) == [Answer(180), JoinRoom()]
    assert m.on_room_joined(0.1) == [Status("ringing")]
    assert m.tick(4.0) == []
    assert m.tick(5.0) == [Reject(486, "ringing-timeout"), LeaveRoom("ringing-timeout")]
    m2 = CallMachine("c", 0.0)
    m2.on_decision(ok(ringing=True), 0.0)
    assert m2.on_room_audio(0.05) == []  # not joined yet
    m2.on_room_joined(0.1)
    assert m2.on_room_audio(1.0) == [Answer(200), Status("active")]


def test_call_rejections_and_room_leave() -> None:
    m = CallMachine("c", 0.0)
    res = control.InviteResult(id=1, status=407, headers={"Proxy-Authenticate": "x"})
    assert m.on_decision(res, 0.0) == [Reject(407, "rejected", {"Proxy-Authenticate": "x"})]
    m = CallMachine("c", 0.0)
    m.on_decision(ok(ringing=True), 0.0)
    m.on_room_joined(0.1)
    assert m.on_room_left("removed") == [Reject(486, "removed")]
    m = CallMachine("c", 0.0)
    m.on_decision(ok(), 0.0)
    m.on_room_joined(0.1)
    assert m.on_room_left("removed") == [Bye("removed"), Status("hangup", "removed")]


def test_call_media_timeout_hold_and_max_duration() -> None:
    m = CallMachine("c", 0.0)
    m.on_decision(ok(media_timeout=15, max_call_duration=100), 0.0)
    m.on_room_joined(0.0)
    assert m.tick(29.0) == []  # initial timeout is 30 s
    m.on_rx_packets(10, 29.0)
    m.on_hold(True, 30.0)
    assert m.tick(60.0) == []  # held: no media timeout
    m.on_hold(False, 60.0)
    assert m.tick(74.0) == []
    assert m.tick(75.0)[0] == Bye("media-timeout")
    m = CallMachine("c", 0.0)
    m.on_decision(ok(max_call_duration=100), 0.0)
    m.on_room_joined(0.0)
    for t in range(0, 100, 5):
        m.on_rx_packets(t + 1, float(t))
        assert m.tick(float(t)) == []
    assert m.tick(100.0)[0] == Bye("max-call-duration")


def pin_ok() -> control.PinResult:
    return control.PinResult(id=2, call_id="c", status=200, token="t2", room="r", socket="/s")


def test_call_pin_right_pin_joins_without_a_second_answer() -> None:
    m = CallMachine("c", 0.0)
    pin = control.InviteResult(id=1, status=200, collect_pin=True, media_timeout=15)
    assert m.on_decision(pin, 0.0) == [Answer(200), PlayPrompt()]
    assert m.phase is Phase.PIN
    assert [m.on_pin_digit(d, 1.0 + i) for i, d in enumerate("12x3a")] == [[]] * 5
    # A-D are DTMF keys but never part of a PIN (dispatch rules cannot hold them): ignored.
    assert m.on_pin_digit("#", 6.0) == [SendPin("123")]
    assert m.phase is Phase.PIN_CHECK
    assert m.on_pin_digit("4", 6.1) == []  # after "#": ignored
    assert m.tick(100.0) == []  # waiting for the supervisor: the worker bounds that wait
    assert m.on_pin_result(pin_ok(), 7.0) == [JoinRoom()]
    assert m.decision is not None and m.decision.token == "t2" and not m.decision.collect_pin
    assert m.on_room_joined(7.1) == [Status("active")]  # already answered: no second 200
    assert m.phase is Phase.ACTIVE
    assert m.tick(7.1 + 29.0) == []  # media timeout counts from the join, not the answer
    assert m.tick(7.1 + 30.0)[0] == Bye("media-timeout")


def test_call_pin_wrong_pin_timeouts_and_hangups() -> None:
    m = CallMachine("c", 0.0)
    m.on_decision(control.InviteResult(id=1, status=200, collect_pin=True), 0.0)
    m.on_pin_digit("9", 1.0)
    m.on_pin_digit("#", 1.5)
    wrong = control.PinResult(id=2, call_id="c", status=403, reason="Wrong PIN")
    assert m.on_pin_result(wrong, 2.0) == [Bye("Wrong PIN"), Status("hangup", "Wrong PIN")]
    assert m.phase is Phase.ENDED
    # Pause after the last digit ends the entry.
    m = CallMachine("c", 0.0)
    m.on_decision(control.InviteResult(id=1, status=200, collect_pin=True), 0.0)
    assert m.tick(5.0) == []
    m.on_pin_digit("1", 5.0)
    assert m.tick(5.0 + PIN_DIGIT_TIMEOUT_S - 0.1) == []
    assert m.tick(5.0 + PIN_DIGIT_TIMEOUT_S) == [SendPin("1")]
    # Nothing typed: the total limit hangs up.
    m = CallMachine("c", 0.0)
    m.on_decision(control.InviteResult(id=1, status=200, collect_pin=True), 0.0)
    assert m.tick(PIN_TOTAL_TIMEOUT_S)[0] == Bye("pin-timeout")
    # Too many digits: sent at once (truncated; the check rejects it).
    m = CallMachine("c", 0.0)
    m.on_decision(control.InviteResult(id=1, status=200, collect_pin=True), 0.0)
    acts = [a for d in "1" * 17 for a in m.on_pin_digit(d, 1.0)]
    assert acts == [SendPin("1" * MAX_PIN_DIGITS)]
    # Answered for the PIN, so every later end is a BYE, never a 486.
    m = CallMachine("c", 0.0)
    m.on_decision(control.InviteResult(id=1, status=200, collect_pin=True), 0.0)
    assert m.on_room_left("shutdown") == [Bye("shutdown"), Status("hangup", "shutdown")]
    m = CallMachine("c", 0.0)
    m.on_decision(control.InviteResult(id=1, status=200, collect_pin=True), 0.0)
    m.on_pin_digit("#", 1.0)
    m.on_pin_result(pin_ok(), 2.0)
    assert m.on_room_left("room unavailable")[0] == Bye("room unavailable")
    m = CallMachine("c", 0.0)
    m.on_decision(control.InviteResult(id=1, status=200, collect_pin=True), 0.0)
    assert m.on_sip_disconnected(200, "") == [Status("hangup", "caller hung up")]


def test_pin_prompt_is_two_440_hz_beeps() -> None:
    frames = pin_prompt()
    assert frames and all(len(f) == 1920 for f in frames)
    pcm = np.frombuffer(b"".join(frames), dtype=np.int16)
    assert abs(dominant_frequency(pcm, 48000) - 440.0) < 5
    loud = np.abs(pcm.reshape(-1, 480)).max(axis=1) > 1000  # 10 ms blocks
    bursts = int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])
    assert bursts == 2


# --- SIP headers ---------------------------------------------------------------------------

INVITE = (
    "INVITE sip:+15550100@10.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/TCP 1.2.3.4:5060;branch=z9hG4bK1\r\n"
    'f: "Alice" <sip:+15551234@carrier.example;user=phone>;tag=abc123\r\n'
    "To: <sip:+15550100@10.0.0.1>\r\n"
    "Call-ID: xyz@1.2.3.4\r\n"
    "X-Long: first\r\n  second\r\n"
    "Record-Route: <sip:a>\r\nRecord-Route: <sip:b>\r\n"
    "\r\n"
    "v=0\r\n"
)


def test_sip_headers() -> None:
    start, h = parse_headers(INVITE)
    assert start.startswith("INVITE")
    assert h["From"].startswith('"Alice"') and h["X-Long"] == "first second"
    assert h["Record-Route"] == "<sip:a>, <sip:b>"
    frm = parse_name_addr(h["From"])
    assert (frm.user, frm.host, frm.tag) == ("+15551234", "carrier.example", "abc123")
    assert parse_name_addr("tel:+1555").user == "+1555"
    assert parse_name_addr("sip:host.only").host == "host.only"
    assert via_transport(h["Via"]) == "tcp" and via_transport(None) == "udp"


@pytest.mark.parametrize("msg", ["", "INVITE x\r\nno colon here\r\n\r\n", "X\r\n: v\r\n\r\n"])
def test_sip_headers_invalid(msg: str) -> None:
    with pytest.raises(SipParseError):
        parse_headers(msg)


def test_sip_headers_truncated_and_limits() -> None:
    start, h = parse_headers(INVITE[:60])  # cut mid-header: still parses what is there
    assert start.startswith("INVITE") and "Via" in h
    with pytest.raises(SipParseError):
        parse_headers("INVITE x\r\n" + "X-A: b\r\n" * 200)
    with pytest.raises(SipParseError):
        parse_name_addr("<http://x>")


# --- channel framing -----------------------------------------------------------------------


def test_frames_split_anywhere() -> None:
    data = encode_frame(Kind.SIGNAL, b"abc") + encode_rtp("TR_x", b"\x80rtp") + encode_frame(3, b"")
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        got += dec.feed(data[i : i + 1])
    assert got[0] == (1, b"abc") and got[2] == (3, b"")
    assert decode_rtp(got[1][1]) == ("TR_x", b"\x80rtp")


def test_frames_invalid_truncated() -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\0\0\0\0\x01")  # zero length
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\xff\xff\xff\xff\x01")  # absurd length
    assert FrameDecoder().feed(encode_frame(1, b"abcdef")[:-1]) == []  # truncated: waits
    for bad in (b"", b"\x05ab", b"\x02\xff\xfe"):
        with pytest.raises(FrameError):
            decode_rtp(bad)
    with pytest.raises(FrameError):
        encode_rtp("x" * 300, b"")

"""bridge/worker/call.py: the sans-I/O call state machine (answer, ringing, PIN, timeouts)."""

from __future__ import annotations

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
from roomline.wire import MAX_PIN_DIGITS


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
    assert m.tick(5.0) == [
        Reject(486, "ringing-timeout", cause="ringing-timeout"),
        LeaveRoom("ringing-timeout"),
    ]
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
    assert m.on_room_left("removed") == [Reject(486, "removed", cause="room-left")]
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


def test_worker_side_rejections_carry_a_cause_supervisor_ones_do_not() -> None:
    """The supervisor counts its own rejections; the worker's carry a cause for the metrics."""
    m = CallMachine("c", 0.0)
    assert m.on_no_decision() == [Reject(503, "Service Unavailable", cause="no-decision")]
    assert m.on_no_decision() == []  # once
    m = CallMachine("c", 0.0)
    m.on_decision(ok(), 0.0)
    assert m.on_no_decision() == []  # already decided
    res = control.InviteResult(id=1, status=403, reason="Forbidden")
    (rej,) = CallMachine("c", 0.0).on_decision(res, 0.0)
    assert isinstance(rej, Reject) and rej.cause == ""
    for act in CallMachine("c", 0.0).on_room_left("room unavailable"):  # join failed
        assert not isinstance(act, Reject) or act.cause == "room-left"
    assert control.CallState(call_id="", state="rejected", cause="bad-request").cause
    with pytest.raises(control.ControlError):
        control.CallState(call_id="c", state="rejected", cause="made up")


def test_call_media_encryption_mismatch_gets_488_before_anything() -> None:
    from bridge.worker.sdes import MediaOffer

    plain, savp = MediaOffer(), MediaOffer(srtp=True, srtp_only=True)
    REQ = "encryption-required"  # noqa: N806
    m = CallMachine("c", 0.0, plain)
    acts = m.on_decision(ok(media_encryption="require"), 0.0)  # type: ignore[arg-type]
    assert acts == [Reject(488, "Not Acceptable Here (encryption-required)", cause=REQ)]
    assert m.phase is Phase.ENDED and m.end_status == 488
    m = CallMachine("c", 0.0, savp)
    acts = m.on_decision(ok(media_encryption="disable"), 0.0)  # type: ignore[arg-type]
    assert acts == [
        Reject(488, "Not Acceptable Here (encryption-disabled)", cause="encryption-disabled")
    ]
    # the PIN path is checked too (the PIN prompt is an answer)
    m = CallMachine("c", 0.0, plain)
    pin = control.InviteResult(id=1, status=200, collect_pin=True, media_encryption="require")
    assert m.on_decision(pin, 0.0)[0] == Reject(
        488, "Not Acceptable Here (encryption-required)", cause=REQ
    )
    # matching offers go ahead; a rejection keeps its own status
    assert CallMachine("c", 0.0, savp).on_decision(ok(media_encryption="require"), 0.0) == [  # type: ignore[arg-type]
        JoinRoom()
    ]
    assert CallMachine("c", 0.0).on_decision(ok(), 0.0) == [JoinRoom()]
    res = control.InviteResult(
        id=1, status=404, reason="No trunk found", media_encryption="require"
    )
    assert CallMachine("c", 0.0, plain).on_decision(res, 0.0) == [Reject(404, "No trunk found")]

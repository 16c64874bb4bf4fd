"""bridge/control.py: the JSON-lines worker control protocol (round trip, _invalid, _truncated)."""

from __future__ import annotations

import pytest

import bridge.control as control


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

"""roomline_agents/control.py: the job-process control protocol (round trip, _invalid, _truncated)."""

from __future__ import annotations

import pytest

from roomline_agents import control


def test_control_round_trip() -> None:
    msgs: list[control.Message] = [
        control.Ready(pid=7),
        control.Heartbeat(),
        control.StartJob(
            job_id="AJ_1",
            dispatch_id="AD_1",
            agent_name="echo",
            target="m:f",
            room="r",
            identity="agent-AJ_1",
            token="t",
            attributes={"a": "b"},
        ),
        control.StopJob(reason="x"),
        control.JobStatus(state="failed", error="boom"),
        control.RemoveParticipant(request_id=3, identity="sip_1"),
        control.Result(request_id=3, ok=False, error="no"),
    ]
    for msg in msgs:
        assert control.decode(control.encode(msg)) == msg


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "not JSON"),
        (b"[1]\n", "JSON object"),
        (b'{"type":"nope"}\n', "unknown control message type"),
        (b'{"type":"ready"}\n', "missing field pid"),
        (b'{"type":"ready","pid":"7"}\n', "bad type"),
        (b'{"type":"ready","pid":true}\n', "bad type"),
        (b'{"type":"ready","pid":1,"extra":1}\n', "unknown fields"),
        (b'{"type":"job_status","state":"weird"}\n', "unknown"),
        (
            b'{"type":"start_job","job_id":"","dispatch_id":"","agent_name":"a","target":"m:f",'
            b'"room":"r","identity":"i","token":"t"}\n',
            "job_id",
        ),
        (b"\xff\xfe\n", "UTF-8"),
        (b'{"type":"ready","pid":' + b"1" * (control.MAX_LINE_BYTES) + b"}", "too long"),
    ],
)
def test_control_invalid(line: bytes, error: str) -> None:
    with pytest.raises(control.ControlError, match=error):
        control.decode(line)


def test_control_truncated() -> None:
    line = control.encode(control.JobStatus(state="running"))
    for cut in range(1, len(line) - 2):
        with pytest.raises(control.ControlError):
            control.decode(line[:cut])

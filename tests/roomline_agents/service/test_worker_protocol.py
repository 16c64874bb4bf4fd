# mypy: disable-error-code="union-attr"
"""WorkerConnection (sans-I/O) fed real protobuf frames: valid, invalid and truncated."""

from __future__ import annotations

import pytest
from livekit.protocol import agent as agent_pb
from livekit.protocol import models

from roomline_agents.service.worker_protocol import (
    AGENT_PROTOCOL,
    AvailabilityAnswered,
    CloseCode,
    JobStatusUpdated,
    MigrateJob,
    PingReceived,
    ProtocolError,
    Registered,
    SimulateJob,
    StatusUpdated,
    WorkerConnection,
)

# What livekit-agents 1.8.9 sends first (shared doc §4).
PERMS = models.ParticipantPermission(
    can_subscribe=True,
    can_publish=True,
    can_publish_data=True,
    can_update_metadata=True,
    agent=True,
)


def wm(**kw: object) -> bytes:
    return agent_pb.WorkerMessage(**kw).SerializeToString()  # type: ignore[arg-type]


def register_frame(agent_name: str = "", **kw: object) -> bytes:
    req = agent_pb.RegisterWorkerRequest(
        type=agent_pb.JT_ROOM, agent_name=agent_name, version="1.8.9", allowed_permissions=PERMS
    )
    for k, v in kw.items():
        setattr(req, k, v)
    return wm(register=req)


def server_messages(conn: WorkerConnection) -> list[agent_pb.ServerMessage]:
    return [agent_pb.ServerMessage.FromString(f) for f in conn.data_to_send()]


def registered(agent_name: str = "") -> WorkerConnection:
    conn = WorkerConnection(now=100.0, worker_id="AW_test")
    conn.receive_data(register_frame(agent_name))
    conn.events_received()
    conn.data_to_send()
    return conn


def job(job_id: str = "AJ_1") -> agent_pb.Job:
    return agent_pb.Job(id=job_id, dispatch_id="AD_1", room=models.Room(name="r1", sid="RM_1"))


# ------------------------------------------------------------------------------- valid


def test_register_answers_first_with_worker_id_and_server_info() -> None:
    conn = WorkerConnection(now=5.0, register_timeout=10.0)
    assert conn.register_deadline == 15.0
    conn.receive_data(register_frame("support"))
    [ev] = conn.events_received()
    assert isinstance(ev, Registered)
    assert ev.agent_name == "support" and ev.job_type == agent_pb.JT_ROOM
    assert ev.version == "1.8.9" and ev.permissions.agent and ev.permissions.can_update_metadata
    assert ev.key == ("support", "", agent_pb.JT_ROOM, "")
    [msg] = server_messages(conn)
    assert msg.WhichOneof("message") == "register"
    assert msg.register.worker_id == conn.worker_id == ev.worker_id
    assert conn.worker_id.startswith("AW_") and len(conn.worker_id) == 15
    assert msg.register.server_info.agent_protocol == AGENT_PROTOCOL
    assert conn.registered and conn.register_deadline is None
    assert conn.check_deadline(1e9) is None


def test_register_without_permissions_gets_go_defaults() -> None:
    conn = WorkerConnection()
    conn.receive_data(wm(register=agent_pb.RegisterWorkerRequest(type=agent_pb.JT_PUBLISHER)))
    [ev] = conn.events_received()
    assert isinstance(ev, Registered) and ev.job_type == agent_pb.JT_PUBLISHER
    p = ev.permissions
    assert p.can_subscribe and p.can_publish and p.can_publish_data and p.can_update_metadata
    assert not p.hidden and not p.agent


def test_status_updates() -> None:
    conn = registered()
    conn.receive_data(wm(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WS_AVAILABLE)))
    conn.receive_data(wm(update_worker=agent_pb.UpdateWorkerStatus(load=0.47, job_count=1)))
    conn.receive_data(
        wm(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WS_FULL, load=float("nan")))
    )
    conn.receive_data(wm(update_worker=agent_pb.UpdateWorkerStatus(load=7.0)))
    a, b, c, d = conn.events_received()
    assert a == StatusUpdated(status=agent_pb.WS_AVAILABLE, load=0.0, job_count=0)
    assert b.status is None and b.load == pytest.approx(0.47) and b.job_count == 1
    assert c.status == agent_pb.WS_FULL and c.load == 1.0  # NaN reads as full
    assert d.load == 1.0


def test_offer_answer_assignment_termination_frames() -> None:
    conn = registered("support")
    conn.send_availability_request(job(), resuming=False)
    [req] = server_messages(conn)
    assert req.availability.job.id == "AJ_1" and req.availability.job.room.name == "r1"
    conn.receive_data(
        wm(
            availability=agent_pb.AvailabilityResponse(
                job_id="AJ_1",
                available=True,
                participant_identity="agent-AJ_1",
                participant_name="Support",
                participant_metadata='{"a":1}',
                participant_attributes={"lk.agent.name": "support"},
            )
        )
    )
    [ans] = conn.events_received()
    assert ans == AvailabilityAnswered(
        job_id="AJ_1",
        available=True,
        participant_identity="agent-AJ_1",
        participant_name="Support",
        participant_metadata='{"a":1}',
        participant_attributes={"lk.agent.name": "support"},
    )
    conn.send_assignment(job(), "tok", url="ws://x")
    conn.send_termination("AJ_1")
    assign, term = server_messages(conn)
    assert assign.assignment.token == "tok" and assign.assignment.url == "ws://x"
    assert assign.assignment.job.id == "AJ_1"
    assert term.termination.job_id == "AJ_1"


def test_refusal_and_terminate_flags() -> None:
    conn = registered()
    conn.send_availability_request(job("AJ_a"))
    conn.send_availability_request(job("AJ_b"))
    conn.receive_data(wm(availability=agent_pb.AvailabilityResponse(job_id="AJ_a")))
    conn.receive_data(wm(availability=agent_pb.AvailabilityResponse(job_id="AJ_b", terminate=True)))
    a, b = conn.events_received()
    assert not a.available and not a.terminate
    assert not b.available and b.terminate


def test_answer_for_a_job_not_offered_or_withdrawn_is_ignored() -> None:
    conn = registered()
    conn.send_availability_request(job("AJ_1"))
    conn.withdraw("AJ_1")
    conn.receive_data(wm(availability=agent_pb.AvailabilityResponse(job_id="AJ_1", available=True)))
    conn.receive_data(wm(availability=agent_pb.AvailabilityResponse(job_id="AJ_x", available=True)))
    errs = conn.events_received()
    assert all(isinstance(e, ProtocolError) and not e.fatal for e in errs) and len(errs) == 2
    assert "not offered" in errs[0].message
    assert not conn.closed


def test_unusable_acceptance_is_a_refusal_with_error() -> None:
    conn = registered()
    conn.send_availability_request(job())
    conn.receive_data(
        wm(
            availability=agent_pb.AvailabilityResponse(
                job_id="AJ_1", available=True, participant_identity="x" * 500
            )
        )
    )
    warn, ans = conn.events_received()
    assert isinstance(warn, ProtocolError) and not warn.fatal
    assert isinstance(ans, AvailabilityAnswered)
    assert not ans.available and "participant_identity longer than" in ans.error


def test_job_status_ping_migrate_simulate() -> None:
    conn = registered()
    conn.receive_data(
        wm(update_job=agent_pb.UpdateJobStatus(job_id="AJ_1", status=agent_pb.JS_RUNNING))
    )
    conn.receive_data(
        wm(update_job=agent_pb.UpdateJobStatus(job_id="AJ_1", status=agent_pb.JS_FAILED, error="x"))
    )
    conn.receive_data(wm(ping=agent_pb.WorkerPing(timestamp=1234)))
    conn.receive_data(wm(migrate_job=agent_pb.MigrateJobRequest(job_ids=["AJ_1", "AJ_2"])))
    conn.receive_data(
        wm(
            simulate_job=agent_pb.SimulateJobRequest(
                type=agent_pb.JT_ROOM, room=models.Room(name="s")
            )
        )
    )
    a, b, c, d, e = conn.events_received()
    assert a == JobStatusUpdated("AJ_1", agent_pb.JS_RUNNING)
    assert b == JobStatusUpdated("AJ_1", agent_pb.JS_FAILED, "x")
    assert c == PingReceived(1234)
    assert d == MigrateJob(("AJ_1", "AJ_2"))
    assert isinstance(e, SimulateJob) and e.room.name == "s" and e.participant is None
    [pong] = server_messages(conn)
    assert pong.pong.last_timestamp == 1234


def test_ping_before_register_is_answered() -> None:
    conn = WorkerConnection()
    conn.receive_data(wm(ping=agent_pb.WorkerPing(timestamp=7)))
    assert [type(e) for e in conn.events_received()] == [PingReceived]
    [pong] = server_messages(conn)
    assert pong.WhichOneof("message") == "pong"
    assert not conn.registered and not conn.closed


def test_other_messages_before_register_are_ignored() -> None:
    conn = WorkerConnection()
    conn.receive_data(wm(update_worker=agent_pb.UpdateWorkerStatus(load=0.1)))
    [err] = conn.events_received()
    assert isinstance(err, ProtocolError) and not err.fatal and "before register" in err.message
    assert conn.data_to_send() == [] and not conn.closed


def test_second_register_is_ignored() -> None:
    conn = registered("a")
    conn.receive_data(register_frame("b"))
    [err] = conn.events_received()
    assert isinstance(err, ProtocolError) and not err.fatal
    assert conn.registration is not None and conn.registration.agent_name == "a"
    assert conn.data_to_send() == []


def test_cannot_send_jobs_before_register() -> None:
    conn = WorkerConnection()
    with pytest.raises(RuntimeError, match="awaiting_register"):
        conn.send_availability_request(job())


# ------------------------------------------------------------------------------- deadline


def test_register_deadline_closes() -> None:
    conn = WorkerConnection(now=0.0, register_timeout=10.0)
    assert conn.check_deadline(9.99) is None
    err = conn.check_deadline(10.0)
    assert err is not None and err.fatal and err.close_code == CloseCode.POLICY_VIOLATION
    assert "did not register in time" in err.message
    assert conn.closed and conn.events_received() == [err]
    conn.receive_data(register_frame())  # too late: ignored
    assert conn.events_received() == [] and conn.data_to_send() == []


# ------------------------------------------------------------------------------- _invalid


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"\xff\xff\xff\xff", "malformed WorkerMessage"),
        (b"\x0a\x05\x08", "malformed WorkerMessage"),  # length 5, 1 byte present
        (b"", "no known message"),
        (b"\x50\x01", "no known message"),  # only an unknown field (10)
        (b"garbage that is not protobuf at all", "malformed WorkerMessage"),
    ],
)
def test_invalid_frames_are_fatal_and_named(frame: bytes, words: str) -> None:
    conn = WorkerConnection()
    conn.receive_data(frame)
    [err] = conn.events_received()
    assert isinstance(err, ProtocolError) and err.fatal and words in err.message
    assert err.close_code == CloseCode.PROTOCOL_ERROR
    assert conn.closed and conn.close_error is err and conn.data_to_send() == []


def test_invalid_after_register_closes_too() -> None:
    conn = registered()
    conn.receive_data(b"\x12\x80")  # availability, length varint cut
    [err] = conn.events_received()
    assert err.fatal and conn.closed


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"type": 7}, "unknown job type 7"),
        ({"agent_name": "a" * 200}, "agent_name longer than 128"),
        ({"agent_name": "bad\nname"}, "control characters"),
        ({"deployment": "has_underscore"}, "must not contain '_'"),
        ({"deployment": "has space"}, "whitespace"),
        ({"namespace": "x" * 65}, "namespace longer than 64"),
    ],
)
def test_invalid_register_fields(kw: dict[str, object], words: str) -> None:
    conn = WorkerConnection()
    conn.receive_data(register_frame(**kw))  # type: ignore[arg-type]
    [err] = conn.events_received()
    assert isinstance(err, ProtocolError) and err.fatal and words in err.message
    assert not conn.registered and conn.data_to_send() == []


def test_unknown_enum_values_are_ignored_not_fatal() -> None:
    conn = registered()
    conn.receive_data(wm(update_worker=agent_pb.UpdateWorkerStatus(status=9, load=0.2)))  # type: ignore[arg-type]
    conn.receive_data(wm(update_job=agent_pb.UpdateJobStatus(job_id="AJ_1", status=42)))  # type: ignore[arg-type]
    warn1, upd, warn2 = conn.events_received()
    assert not warn1.fatal and "unknown worker status 9" in warn1.message
    assert upd.status is None and upd.load == pytest.approx(0.2)
    assert not warn2.fatal and "unknown job status 42" in warn2.message
    assert not conn.closed


def test_text_frames() -> None:
    conn = WorkerConnection()
    conn.receive_text('{"register": {}}')
    [err] = conn.events_received()
    assert err.fatal and err.close_code == CloseCode.UNSUPPORTED_DATA
    conn = registered()
    conn.receive_text("hello")
    [err] = conn.events_received()
    assert not err.fatal and not conn.closed


def test_oversize_frame() -> None:
    conn = WorkerConnection(max_frame_size=100)
    conn.receive_data(register_frame(agent_name="a" * 120))
    [err] = conn.events_received()
    assert err.fatal and err.close_code == CloseCode.MESSAGE_TOO_BIG


# ------------------------------------------------------------------------------- _truncated


def test_every_truncation_of_real_frames_is_handled() -> None:
    """Every prefix of real frames: a clean error, a non-fatal warning, or a (shorter) valid
    message; never an exception out of receive_data."""
    frames = [
        register_frame("support", deployment="prod"),
        wm(
            availability=agent_pb.AvailabilityResponse(
                job_id="AJ_1",
                available=True,
                participant_identity="agent-AJ_1",
                participant_attributes={"lk.agent.name": "support"},
            )
        ),
        wm(
            update_worker=agent_pb.UpdateWorkerStatus(
                status=agent_pb.WS_FULL, load=0.5, job_count=3
            )
        ),
        wm(update_job=agent_pb.UpdateJobStatus(job_id="AJ_1", status=agent_pb.JS_SUCCESS)),
    ]
    fatal = 0
    for frame in frames:
        for cut in range(1, len(frame)):
            conn = registered("support")
            conn.send_availability_request(job())
            conn.data_to_send()
            conn.receive_data(frame[:cut])
            events = conn.events_received()
            assert len(events) <= 2
            if conn.closed:
                fatal += 1
                assert events[-1].fatal and "WorkerMessage" in events[-1].message
    assert fatal > 0


def test_truncated_register_before_register() -> None:
    frame = register_frame("support")
    conn = WorkerConnection()
    conn.receive_data(frame[: len(frame) - 3])
    [err] = conn.events_received()
    assert err.fatal and "malformed WorkerMessage" in err.message

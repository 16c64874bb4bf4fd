"""WorkerRegistry (sans-I/O): selection by load, retries on refusal/timeout, tokens, worker loss."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from livekit.protocol import agent as agent_pb
from livekit.protocol import models

from roomline.auth import verify_token
from roomline.errors import InvalidRequest, NotFound
from roomline_agents.service.worker_protocol import WorkerConnection
from roomline_agents.service.worker_registry import (
    AGENT_NAME_ATTRIBUTE,
    JobAssigned,
    JobEnded,
    JobOrphaned,
    JobPhase,
    JobRedispatching,
    WorkerRegistry,
)

KEYS = {"devkey": "secret"}
T0 = 1_800_000_000.0


def wm(**kw: object) -> bytes:
    return agent_pb.WorkerMessage(**kw).SerializeToString()  # type: ignore[arg-type]


class Harness:
    def __init__(self, **kw: object) -> None:
        self.reg = WorkerRegistry(KEYS, rng=random.Random(1), wall_clock=lambda: T0, **kw)  # type: ignore[arg-type]
        self.now = 0.0

    def connect(
        self,
        agent_name: str = "",
        load: float = 0.0,
        job_type: int = agent_pb.JT_ROOM,
        perms: models.ParticipantPermission | None = None,
    ) -> WorkerConnection:
        conn = WorkerConnection(now=self.now)
        req = agent_pb.RegisterWorkerRequest(type=job_type, agent_name=agent_name, version="1.8.9")  # type: ignore[arg-type]
        if perms is not None:
            req.allowed_permissions.CopyFrom(perms)
        conn.receive_data(wm(register=req))
        [ev] = conn.events_received()
        self.reg.add_worker(conn, ev, "devkey", self.now)  # type: ignore[arg-type]
        conn.data_to_send()
        if load:
            self.feed(conn, wm(update_worker=agent_pb.UpdateWorkerStatus(load=load)))
        return conn

    def feed(self, conn: WorkerConnection, frame: bytes) -> list[object]:
        conn.receive_data(frame)
        out: list[object] = []
        for ev in conn.events_received():
            out += self.reg.handle_event(conn.worker_id, ev, self.now)
        return out

    def answer(self, conn: WorkerConnection, job_id: str, **kw: object) -> list[object]:
        return self.feed(conn, wm(availability=agent_pb.AvailabilityResponse(job_id=job_id, **kw)))  # type: ignore[arg-type]

    @staticmethod
    def sent(conn: WorkerConnection) -> list[agent_pb.ServerMessage]:
        return [agent_pb.ServerMessage.FromString(f) for f in conn.data_to_send()]


def test_dispatch_offer_accept_assign_token() -> None:
    h = Harness()
    perms = models.ParticipantPermission(
        can_subscribe=True,
        can_publish=True,
        can_publish_data=True,
        can_update_metadata=True,
        hidden=False,
        agent=True,
    )
    w = h.connect("support", perms=perms)
    job, out = h.reg.dispatch("room1", "support", now=h.now, metadata="m", dispatch_id="AD_x")
    assert out == [] and job.phase is JobPhase.OFFERED and job.id.startswith("AJ_")
    [req] = h.sent(w)
    assert req.availability.job.id == job.id
    assert req.availability.job.dispatch_id == "AD_x"
    assert req.availability.job.room.name == "room1" and req.availability.job.metadata == "m"
    assert req.availability.job.agent_name == "support"
    assert req.availability.job.state.status == agent_pb.JS_RUNNING
    out = h.answer(  # type: ignore[assignment]
        w,
        job.id,
        available=True,
        participant_identity="agent-" + job.id,
        participant_name="Support",
        participant_metadata="md",
        participant_attributes={"lk.agent.name": "support", "x": "y"},
    )
    assert out == [JobAssigned(job)]
    [assign] = h.sent(w)
    assert assign.assignment.job.id == job.id and not assign.assignment.HasField("url")
    claims = verify_token(assign.assignment.token, KEYS, now=T0)
    assert claims.kind_name == "agent" and claims.identity == "agent-" + job.id
    assert claims.name == "Support" and claims.metadata == "md"
    assert claims.attributes == {
        "lk.agent.name": "support",
        "x": "y",
        AGENT_NAME_ATTRIBUTE: "support",
    }
    v = claims.video
    assert v.room_join and v.room == "room1" and v.agent and v.can_update_own_metadata
    assert v.can_publish and v.can_subscribe and v.can_publish_data and not v.hidden
    assert not v.room_admin and not claims.sip.admin
    assert claims.expires_at == pytest.approx(T0 + 3600)
    assert job.phase is JobPhase.ASSIGNED and job.worker_id == w.worker_id

    assert (
        h.feed(
            w, wm(update_job=agent_pb.UpdateJobStatus(job_id=job.id, status=agent_pb.JS_RUNNING))
        )
        == []
    )
    assert job.phase is JobPhase.RUNNING
    out = h.feed(
        w, wm(update_job=agent_pb.UpdateJobStatus(job_id=job.id, status=agent_pb.JS_SUCCESS))
    )
    assert out == [JobEnded(job, True)] and job.status == agent_pb.JS_SUCCESS and not job.active


def test_default_identity_and_restricted_permissions() -> None:
    h = Harness()
    w = h.connect("a", perms=models.ParticipantPermission(can_subscribe=True, hidden=True))
    job, _ = h.reg.dispatch("r", "a", now=0)
    h.sent(w)
    h.answer(w, job.id, available=True)
    claims = verify_token(h.sent(w)[0].assignment.token, KEYS, now=T0)
    assert claims.identity == f"agent-{job.id}"
    assert claims.video.hidden and claims.video.can_subscribe
    assert not claims.video.can_publish and not claims.video.can_publish_data
    assert not claims.video.can_update_own_metadata


def test_no_worker_for_name_or_type_fails_at_once() -> None:
    h = Harness()
    h.connect("other")
    h.connect("a", job_type=agent_pb.JT_PUBLISHER)
    job, out = h.reg.dispatch("r", "a", now=0)
    assert out == [JobEnded(job, False)]
    assert job.status == agent_pb.JS_FAILED and job.error == "no workers available"
    assert h.reg.has_workers("a", agent_pb.JT_PUBLISHER) and not h.reg.has_workers("a")


def test_full_workers_are_skipped() -> None:
    h = Harness()
    full = h.connect("a")
    h.feed(full, wm(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WS_FULL)))
    free = h.connect("a", load=0.9)
    job, _ = h.reg.dispatch("r", "a", now=0)
    assert job.worker_id == free.worker_id and h.sent(full) == []


def test_selection_prefers_lower_load() -> None:
    picks: Counter[str] = Counter()
    h = Harness()
    light = h.connect("a", load=0.1)
    heavy = h.connect("a", load=0.8)
    for _ in range(400):
        job, _ = h.reg.dispatch("r", "a", now=0)
        picks[job.worker_id] += 1
        h.reg.terminate(job.id, 0)
    # weights 0.9 : 0.2
    assert picks[light.worker_id] > 3 * picks[heavy.worker_id] > 0


def test_all_at_full_load_picks_least_loaded() -> None:
    h = Harness()
    h.connect("a", load=1.0)
    h.connect("a", load=1.0)
    lower = h.connect("a", load=0.99)
    for w in h.reg.workers.values():
        w.load = 1.0 if w.id != lower.worker_id else 1.0 - 1e-12
    job, _ = h.reg.dispatch("r", "a", now=0)
    assert job.worker_id == lower.worker_id


def test_refusal_tries_next_worker_then_fails() -> None:
    h = Harness()
    w1, w2 = h.connect("a"), h.connect("a")
    job, _ = h.reg.dispatch("r", "a", now=0)
    first = job.worker_id
    conns = {w1.worker_id: w1, w2.worker_id: w2}
    assert h.answer(conns[first], job.id, available=False) == []
    second = job.worker_id
    assert second != first and job.phase is JobPhase.OFFERED
    [req] = h.sent(conns[second])
    assert req.availability.job.id == job.id
    out = h.answer(conns[second], job.id, available=False)
    assert out == [JobEnded(job, False)]
    assert job.status == agent_pb.JS_FAILED and "tried 2, none accepted" in job.error


def test_terminate_flag_ends_job_without_retry() -> None:
    h = Harness()
    h.connect("a")
    h.connect("a")
    job, _ = h.reg.dispatch("r", "a", now=0)
    conn = h.reg.workers[job.worker_id].conn
    out = h.answer(conn, job.id, available=False, terminate=True)
    assert out == [JobEnded(job, False)]
    assert job.status == agent_pb.JS_SUCCESS and job.end_reason == "rejected by worker"


def test_answer_timeout_tries_next_worker_and_late_answer_is_ignored() -> None:
    h = Harness(assign_timeout=10.0)
    w1, w2 = h.connect("a"), h.connect("a")
    conns = {w1.worker_id: w1, w2.worker_id: w2}
    job, _ = h.reg.dispatch("r", "a", now=0)
    silent = conns[job.worker_id]
    assert h.reg.next_deadline() == 10.0
    assert h.reg.tick(9.9) == []
    h.now = 10.0
    out = h.reg.tick(10.0)
    assert job.worker_id != silent.worker_id and job.phase is JobPhase.OFFERED
    assert any("no answer" in getattr(o, "message", "") for o in out)
    h.sent(silent)
    late = h.answer(silent, job.id, available=True)
    assert h.sent(silent) == []  # no assignment to the late one
    assert not any(isinstance(o, JobAssigned) for o in late)
    other = conns[job.worker_id]
    assert isinstance(h.answer(other, job.id, available=True)[0], JobAssigned)


def test_terminate_assigned_and_offered() -> None:
    h = Harness()
    w = h.connect("a")
    job, _ = h.reg.dispatch("r", "a", now=0)
    h.answer(w, job.id, available=True)
    h.sent(w)
    out = h.reg.terminate(job.id, 0, "dispatch deleted")
    [term] = h.sent(w)
    assert term.termination.job_id == job.id
    assert out == [JobEnded(job, True)] and job.status == agent_pb.JS_SUCCESS
    assert h.reg.terminate(job.id, 0) == []  # idempotent

    job2, _ = h.reg.dispatch("r", "a", now=0)
    h.sent(w)
    out = h.reg.terminate(job2.id, 0)
    assert out == [JobEnded(job2, False)] and job2.status == agent_pb.JS_CANCELLED
    assert h.sent(w) == []
    job3, _ = h.reg.dispatch("r", "a", now=0)
    h.answer(w, job3.id, available=True)
    h.reg.terminate(job3.id, 0, "agent left room")
    assert job3.status == agent_pb.JS_FAILED and job3.error == "agent worker left the room"
    with pytest.raises(NotFound):
        h.reg.terminate("AJ_nope", 0)


def test_worker_loss_redispatches_to_same_name() -> None:
    h = Harness(redispatch_grace=5.0)
    w1 = h.connect("a")
    job, _ = h.reg.dispatch("r", "a", now=0)
    h.answer(w1, job.id, available=True)
    first_token = job.token
    w2 = h.connect("a")
    h.connect("other")
    out = h.reg.remove_worker(w1.worker_id, 1.0)
    assert out == [JobOrphaned(job, w1.worker_id)] and job.phase is JobPhase.ORPHANED
    assert h.reg.next_deadline() == 6.0
    assert h.reg.tick(5.0) == []
    out = h.reg.tick(6.0)
    [req] = h.sent(w2)
    assert req.availability.job.id == job.id and req.availability.resuming
    out = h.answer(w2, job.id, available=True)  # type: ignore[assignment]
    assert out == [JobAssigned(job, resumed=True)] and job.worker_id == w2.worker_id
    claims = verify_token(job.token, KEYS, now=T0)
    assert claims.identity == f"agent-{job.id}" and first_token  # same identity: replaces the old


def test_worker_loss_with_migration_keeps_job() -> None:
    h = Harness(redispatch_grace=5.0)
    w1 = h.connect("a")
    job, _ = h.reg.dispatch("r", "a", now=0)
    h.answer(w1, job.id, available=True)
    h.reg.remove_worker(w1.worker_id, 1.0)
    again = h.connect("a")  # the same worker process re-registered
    h.feed(again, wm(migrate_job=agent_pb.MigrateJobRequest(job_ids=[job.id, "AJ_unknown"])))
    assert job.phase is JobPhase.RUNNING and job.worker_id == again.worker_id
    assert h.reg.tick(100.0) == [] and h.sent(again) == []
    out = h.feed(
        again, wm(update_job=agent_pb.UpdateJobStatus(job_id=job.id, status=agent_pb.JS_SUCCESS))
    )
    assert out == [JobEnded(job, True)]


def test_worker_loss_without_other_worker_fails_job() -> None:
    h = Harness(redispatch_grace=0.0)
    w1 = h.connect("a")
    job, _ = h.reg.dispatch("r", "a", now=0)
    h.answer(w1, job.id, available=True)
    out = h.reg.remove_worker(w1.worker_id, 1.0)
    assert out[0] == JobOrphaned(job, w1.worker_id)
    # Before the offer: remove the lost worker's agent participant (the appliance does).
    assert out[1] == JobRedispatching(job, w1.worker_id, f"agent-{job.id}")
    assert out[2] == JobEnded(job, True) and job.status == agent_pb.JS_FAILED


def test_worker_loss_while_offered_moves_offer() -> None:
    h = Harness()
    w1, w2 = h.connect("a"), h.connect("a")
    conns = {w1.worker_id: w1, w2.worker_id: w2}
    job, _ = h.reg.dispatch("r", "a", now=0)
    lost = job.worker_id
    other = next(c for k, c in conns.items() if k != lost)
    assert h.reg.remove_worker(lost, 0) == []
    assert job.worker_id == other.worker_id and h.sent(other)


def test_status_from_wrong_worker_is_ignored() -> None:
    h = Harness()
    w1, w2 = h.connect("a"), h.connect("b")
    job, _ = h.reg.dispatch("r", "a", now=0)
    h.answer(w1, job.id, available=True)
    out = h.feed(
        w2, wm(update_job=agent_pb.UpdateJobStatus(job_id=job.id, status=agent_pb.JS_SUCCESS))
    )
    assert job.active and not any(isinstance(o, JobEnded) for o in out)


def test_dispatch_validation() -> None:
    h = Harness()
    with pytest.raises(InvalidRequest):
        h.reg.dispatch("", "a", now=0)
    with pytest.raises(InvalidRequest):
        h.reg.dispatch("r", "a", now=0, job_type=9)


def test_publisher_job_carries_participant() -> None:
    h = Harness()
    w = h.connect("", job_type=agent_pb.JT_PUBLISHER)
    p = models.ParticipantInfo(identity="caller", sid="PA_1")
    job, _ = h.reg.dispatch("r", "", now=0, job_type=agent_pb.JT_PUBLISHER, participant=p)
    [req] = h.sent(w)
    assert req.availability.job.participant.identity == "caller"
    assert req.availability.job.type == agent_pb.JT_PUBLISHER


def test_ended_jobs_are_bounded() -> None:
    h = Harness(max_ended_jobs=3)
    w = h.connect("a")
    jobs = [h.reg.dispatch("r", "a", now=0)[0] for _ in range(5)]
    h.sent(w)
    for job in jobs:
        h.reg.terminate(job.id, 0)
    assert list(h.reg.jobs) == [j.id for j in jobs[2:]]
    running, _ = h.reg.dispatch("r", "a", now=0)
    assert running.id in h.reg.jobs

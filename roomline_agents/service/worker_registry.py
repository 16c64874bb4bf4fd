"""Connected agent workers and the jobs offered to them, without any I/O.

Mirrors the LiveKit server's agent handler (docs/agents.md):

* workers are keyed by (agent_name, namespace, job_type, deployment);
* a job goes to a WS_AVAILABLE worker of its key, picked at random weighted by ``max(0, 1 - load)``
  (so lower load wins more often); if it refuses (``available=false``) or does not answer within
  ``assign_timeout``, the next worker is tried, never one already tried;
* on acceptance an AGENT token is minted as ``protocol/agent/token.go`` does and a ``JobAssignment``
  is sent; ``terminate=true`` ends the job with no retry.

Unlike OSS LiveKit, a worker that disconnects does not strand its jobs (livekit/agents#1472): its
assigned jobs are *orphaned* for ``redispatch_grace`` seconds, during which a re-registered worker
may adopt them with ``MigrateJobRequest``; after that they are offered (``resuming=true``) to another
worker of the same key.

Every method takes ``now`` (monotonic seconds, for deadlines) and returns a list of
:data:`Output` records for the edge; frames to send are queued on the workers'
:class:`~roomline_agents.service.worker_protocol.WorkerConnection` objects.
"""

from __future__ import annotations

import enum
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from livekit.protocol import agent as agent_pb
from livekit.protocol import models

from roomline.auth import mint_token
from roomline.errors import InvalidRequest, NotFound
from roomline_agents.service.worker_protocol import (
    AvailabilityAnswered,
    Event,
    JobStatusUpdated,
    MigrateJob,
    ProtocolError,
    Registered,
    StatusUpdated,
    WorkerConnection,
)

__all__ = [
    "AGENT_NAME_ATTRIBUTE",
    "ASSIGN_TIMEOUT",
    "JOB_TOKEN_TTL",
    "AgentJob",
    "JobAssigned",
    "JobEnded",
    "JobOrphaned",
    "JobPhase",
    "JobRedispatching",
    "Output",
    "WorkerRecord",
    "WorkerRegistry",
    "agent_token",
]

#: Seconds a worker has to answer an AvailabilityRequest (Go ``AssignJobTimeout``).
ASSIGN_TIMEOUT = 10.0
#: Agent job tokens are valid for one hour (``BuildAgentToken``).
JOB_TOKEN_TTL = 3600.0
#: Seconds a disconnected worker's jobs wait for a re-registered worker's MigrateJobRequest before
#: they are offered to another worker. The worker retries at once, then after 2, 4 ... s.
REDISPATCH_GRACE = 5.0
#: A job is re-dispatched after worker losses at most this many times.
MAX_REDISPATCH = 3
#: Ended jobs kept in :attr:`WorkerRegistry.jobs` (oldest forgotten first) so memory stays bounded.
MAX_ENDED_JOBS = 1000
#: The attribute the server adds to the agent's token (the worker adds ``lk.agent.name`` itself).
AGENT_NAME_ATTRIBUTE = "lk.agent_name"
JOB_PREFIX = "AJ_"
DISPATCH_PREFIX = "AD_"

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(12))


class JobPhase(enum.Enum):
    """Where a job is. ``status`` maps it to LiveKit's JobStatus."""

    OFFERED = "offered"  # AvailabilityRequest sent, waiting for the answer
    ASSIGNED = "assigned"  # JobAssignment sent, the worker has not reported JS_RUNNING yet
    RUNNING = "running"  # the worker reported JS_RUNNING
    ORPHANED = "orphaned"  # its worker disconnected; waiting for migration or re-dispatch
    ENDED = "ended"


@dataclass
class WorkerRecord:
    """A registered worker."""

    id: str
    conn: WorkerConnection
    agent_name: str
    namespace: str
    job_type: int
    deployment: str
    version: str
    permissions: models.ParticipantPermission
    api_key: str
    status: int = agent_pb.WS_AVAILABLE
    load: float = 0.0
    job_count: int = 0
    connected_at: float = 0.0
    jobs: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.agent_name, self.namespace, self.job_type, self.deployment)

    @property
    def available(self) -> bool:
        return self.status == agent_pb.WS_AVAILABLE


@dataclass
class AgentJob:
    """One job: the attempt to run agent ``agent_name`` for ``room_name`` (JT_ROOM), or for a
    participant of it (JT_PUBLISHER / JT_PARTICIPANT)."""

    id: str
    dispatch_id: str
    room_name: str
    job_type: int
    agent_name: str
    metadata: str = ""
    room_sid: str = ""
    namespace: str = ""
    deployment: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    participant: models.ParticipantInfo | None = None
    phase: JobPhase = JobPhase.OFFERED
    #: LiveKit JobStatus once ended (JS_SUCCESS, JS_FAILED, JS_CANCELLED); JS_PENDING/RUNNING before.
    status: int = agent_pb.JS_PENDING
    error: str = ""
    #: Why the job ended, in words ("worker reported success", "terminated: dispatch deleted" ...).
    end_reason: str = ""
    worker_id: str = ""
    participant_identity: str = ""
    participant_name: str = ""
    token: str = ""
    tried: set[str] = field(default_factory=set)
    redispatches: int = 0
    deadline: float | None = None  # answer deadline (OFFERED) or re-dispatch time (ORPHANED)
    started_at: float = 0.0  # wall clock seconds
    updated_at: float = 0.0
    ended_at: float = 0.0

    @property
    def active(self) -> bool:
        return self.phase is not JobPhase.ENDED

    @property
    def assigned(self) -> bool:
        return self.phase in (JobPhase.ASSIGNED, JobPhase.RUNNING)

    def proto(self) -> agent_pb.Job:
        """The ``livekit.Job`` sent to workers (and usable for AgentDispatch.state.jobs)."""
        job = agent_pb.Job(
            id=self.id,
            dispatch_id=self.dispatch_id,
            type=self.job_type,  # type: ignore[arg-type]
            room=models.Room(sid=self.room_sid, name=self.room_name),
            namespace=self.namespace,
            metadata=self.metadata,
            agent_name=self.agent_name,
            deployment=self.deployment,
            attributes=self.attributes,
            enable_recording=False,
            state=agent_pb.JobState(
                status=self.status,  # type: ignore[arg-type]
                error=self.error,
                started_at=int(self.started_at * 1e9),
                ended_at=int(self.ended_at * 1e9),
                updated_at=int(self.updated_at * 1e9),
                participant_identity=self.participant_identity,
                worker_id=self.worker_id,
            ),
        )
        if self.participant is not None:
            job.participant.CopyFrom(self.participant)
        return job


# ------------------------------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class JobAssigned:
    """The job's JobAssignment (with its token) was queued to ``job.worker_id``."""

    job: AgentJob
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class JobEnded:
    """The job is over: ``job.status`` is JS_SUCCESS, JS_FAILED or JS_CANCELLED.

    ``was_assigned`` tells whether an agent may have joined the room (so its participant
    ``job.participant_identity`` may need removing)."""

    job: AgentJob
    was_assigned: bool


@dataclass(frozen=True, slots=True)
class JobOrphaned:
    """The job's worker disconnected while the job was assigned; it will be re-dispatched after
    ``redispatch_grace`` unless a re-registered worker migrates it."""

    job: AgentJob
    lost_worker_id: str


@dataclass(frozen=True, slots=True)
class JobRedispatching:
    """An orphaned job is about to be offered to another worker: the lost worker's agent
    participant ``old_identity`` (if still in the room) should be removed first."""

    job: AgentJob
    lost_worker_id: str
    old_identity: str


@dataclass(frozen=True, slots=True)
class WorkerLog:
    """Something the edge should log about a worker (non-fatal protocol errors, ignored input)."""

    worker_id: str
    message: str


Output = JobAssigned | JobEnded | JobOrphaned | JobRedispatching | WorkerLog


def agent_token(
    api_key: str,
    secret: str,
    *,
    room: str,
    identity: str,
    name: str,
    metadata: str,
    attributes: Mapping[str, str],
    permissions: models.ParticipantPermission,
    ttl: float = JOB_TOKEN_TTL,
    now: float | None = None,
) -> str:
    """``protocol/agent/token.go BuildAgentToken``: kind agent, 1 h, join ``room``; the worker's
    registered permissions become the grants (``canPublishSources`` is not copied)."""
    return mint_token(
        api_key,
        secret,
        identity=identity,
        room=room,
        name=name,
        kind="agent",
        ttl=ttl,
        metadata=metadata,
        attributes=dict(attributes),
        now=now,
        agent=True,
        can_subscribe=permissions.can_subscribe,
        can_publish=permissions.can_publish,
        can_publish_data=permissions.can_publish_data,
        hidden=permissions.hidden,
        can_update_own_metadata=permissions.can_update_metadata,
        can_subscribe_metrics=permissions.can_subscribe_metrics,
    )


class WorkerRegistry:
    """Workers by key, jobs by id.

    ``keys`` maps API key -> secret; a job token is signed with the key its worker authenticated
    with. ``wall_clock`` stamps jobs (protobuf timestamps); ``now`` arguments drive deadlines.
    ``url``, if set, is sent in JobAssignment (else the worker uses its own LIVEKIT_URL).
    """

    def __init__(
        self,
        keys: Mapping[str, str],
        *,
        assign_timeout: float = ASSIGN_TIMEOUT,
        redispatch_grace: float = REDISPATCH_GRACE,
        max_redispatch: int = MAX_REDISPATCH,
        max_ended_jobs: int = MAX_ENDED_JOBS,
        token_ttl: float = JOB_TOKEN_TTL,
        url: str | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.assign_timeout = assign_timeout
        self.redispatch_grace = redispatch_grace
        self.max_redispatch = max_redispatch
        self.max_ended_jobs = max_ended_jobs
        self.token_ttl = token_ttl
        self.url = url
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.workers: dict[str, WorkerRecord] = {}
        self.jobs: dict[str, AgentJob] = {}
        self._ended: deque[str] = deque()

    # ------------------------------------------------------------------ workers

    def add_worker(
        self, conn: WorkerConnection, reg: Registered, api_key: str, now: float
    ) -> WorkerRecord:
        """Record a worker whose connection just emitted :class:`Registered`."""
        if api_key not in self.keys:
            raise NotFound(f"unknown API key {api_key!r}")
        worker = WorkerRecord(
            id=reg.worker_id,
            conn=conn,
            agent_name=reg.agent_name,
            namespace=reg.namespace,
            job_type=reg.job_type,
            deployment=reg.deployment,
            version=reg.version,
            permissions=reg.permissions,
            api_key=api_key,
            connected_at=now,
        )
        self.workers[worker.id] = worker
        return worker

    def workers_for(
        self,
        agent_name: str,
        job_type: int = agent_pb.JT_ROOM,
        namespace: str = "",
        deployment: str = "",
    ) -> list[WorkerRecord]:
        key = (agent_name, namespace, job_type, deployment)
        return [w for w in self.workers.values() if w.key == key]

    def has_workers(self, agent_name: str, job_type: int = agent_pb.JT_ROOM) -> bool:
        """Go's CheckEnabled: is any worker registered for this agent name and job type?"""
        return any(
            w.agent_name == agent_name and w.job_type == job_type for w in self.workers.values()
        )

    def handle_event(self, worker_id: str, event: Event, now: float) -> list[Output]:
        """Apply an event of a registered worker's connection."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return []
        if isinstance(event, StatusUpdated):
            if event.status is not None:
                worker.status = event.status
            worker.load = event.load
            worker.job_count = event.job_count
            return []
        if isinstance(event, AvailabilityAnswered):
            return self._on_answer(worker, event, now)
        if isinstance(event, JobStatusUpdated):
            return self._on_job_status(worker, event)
        if isinstance(event, MigrateJob):
            return self._on_migrate(worker, event)
        if isinstance(event, ProtocolError):
            return [WorkerLog(worker_id, event.message)]
        return []

    def remove_worker(self, worker_id: str, now: float) -> list[Output]:
        """The worker's connection is gone: retry its offers elsewhere, orphan its assigned jobs."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return []
        worker.conn.close()
        out: list[Output] = []
        for job_id in sorted(worker.jobs):
            job = self.jobs.get(job_id)
            if job is None or not job.active or job.worker_id != worker_id:
                continue
            if job.phase is JobPhase.OFFERED:
                out += self._offer(job, now)
            elif job.redispatches >= self.max_redispatch:
                out += self._end(
                    job, agent_pb.JS_FAILED, "agent worker disconnected", "worker lost"
                )
            else:
                job.phase = JobPhase.ORPHANED
                job.deadline = now + self.redispatch_grace
                out.append(JobOrphaned(job, worker_id))
                if self.redispatch_grace <= 0:
                    out += self._redispatch(job, now)
        return out

    # ------------------------------------------------------------------ jobs

    def dispatch(
        self,
        room_name: str,
        agent_name: str = "",
        *,
        now: float,
        job_type: int = agent_pb.JT_ROOM,
        metadata: str = "",
        dispatch_id: str = "",
        room_sid: str = "",
        namespace: str = "",
        deployment: str = "",
        attributes: Mapping[str, str] | None = None,
        participant: models.ParticipantInfo | None = None,
        job_id: str = "",
    ) -> tuple[AgentJob, list[Output]]:
        """Create a job and offer it to a worker. With no worker to take it, the job is ended at
        once (JS_FAILED, error ``no workers available``) and a :class:`JobEnded` is returned."""
        if not room_name:
            raise InvalidRequest("room name is required")
        if job_type not in agent_pb.JobType.values():
            raise InvalidRequest(f"unknown job type {job_type}")
        wall = self.wall_clock()
        job = AgentJob(
            id=job_id or _new_id(JOB_PREFIX),
            dispatch_id=dispatch_id or _new_id(DISPATCH_PREFIX),
            room_name=room_name,
            job_type=job_type,
            agent_name=agent_name,
            metadata=metadata,
            room_sid=room_sid,
            namespace=namespace,
            deployment=deployment,
            attributes=dict(attributes or {}),
            participant=participant,
            started_at=wall,
            updated_at=wall,
        )
        if job.id in self.jobs:
            raise InvalidRequest(f"job {job.id!r} exists")
        self.jobs[job.id] = job
        return job, self._offer(job, now)

    def terminate(self, job_id: str, now: float, reason: str = "") -> list[Output]:
        """Stop a job: send JobTermination if assigned (JS_SUCCESS), withdraw it if only offered or
        orphaned (JS_CANCELLED). ``reason="agent left room"`` ends it JS_FAILED as Go does."""
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no agent job {job_id!r}")
        if not job.active:
            return []
        worker = self.workers.get(job.worker_id)
        if job.assigned and worker is not None:
            worker.conn.send_termination(job.id)
            if reason == "agent left room":
                return self._end(job, agent_pb.JS_FAILED, "agent worker left the room", reason)
            return self._end(job, agent_pb.JS_SUCCESS, "", f"terminated: {reason or 'requested'}")
        if worker is not None:
            worker.conn.withdraw(job.id)
        return self._end(job, agent_pb.JS_CANCELLED, "", f"cancelled: {reason or 'requested'}")

    def next_deadline(self) -> float | None:
        deadlines = [j.deadline for j in self.jobs.values() if j.active and j.deadline is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> list[Output]:
        """Expire answer deadlines (try the next worker) and re-dispatch orphaned jobs."""
        out: list[Output] = []
        for job in list(self.jobs.values()):
            if not job.active or job.deadline is None or now < job.deadline:
                continue
            if job.phase is JobPhase.OFFERED:
                worker = self.workers.get(job.worker_id)
                if worker is not None:
                    worker.conn.withdraw(job.id)
                    worker.jobs.discard(job.id)
                    out.append(WorkerLog(worker.id, f"no answer for job {job.id} in time"))
                out += self._offer(job, now)
            elif job.phase is JobPhase.ORPHANED:
                out += self._redispatch(job, now)
        return out

    # ------------------------------------------------------------------ internals

    def _select(self, job: AgentJob) -> WorkerRecord | None:
        key = (job.agent_name, job.namespace, job.job_type, job.deployment)
        candidates = [
            w
            for w in self.workers.values()
            if w.key == key and w.available and w.id not in job.tried and not w.conn.closed
        ]
        if not candidates:
            return None
        weights = [max(0.0, 1.0 - w.load) for w in candidates]
        if sum(weights) <= 0:
            # Every candidate reports full load: take the least loaded rather than none.
            return min(candidates, key=lambda w: (w.load, w.connected_at))
        return self.rng.choices(candidates, weights=weights, k=1)[0]

    def _offer(self, job: AgentJob, now: float, *, resuming: bool = False) -> list[Output]:
        worker = self._select(job)
        if worker is None:
            tried = len(job.tried)
            error = (
                "no workers available"
                if not tried
                else f"no workers available (tried {tried}, none accepted)"
            )
            return self._end(job, agent_pb.JS_FAILED, error, error)
        job.tried.add(worker.id)
        job.worker_id = worker.id
        job.phase = JobPhase.OFFERED
        job.deadline = now + self.assign_timeout
        job.status = agent_pb.JS_RUNNING  # Go's AvailabilityRequest carries status JS_RUNNING
        job.updated_at = self.wall_clock()
        worker.jobs.add(job.id)
        job_pb = job.proto()
        worker.conn.send_availability_request(job_pb, resuming=resuming)
        job.status = agent_pb.JS_PENDING
        return []

    def _on_answer(
        self, worker: WorkerRecord, ans: AvailabilityAnswered, now: float
    ) -> list[Output]:
        job = self.jobs.get(ans.job_id)
        if job is None or job.phase is not JobPhase.OFFERED or job.worker_id != worker.id:
            return [WorkerLog(worker.id, f"ignored late answer for job {ans.job_id}")]
        out: list[Output] = []
        if ans.error:
            out.append(WorkerLog(worker.id, f"job {job.id}: {ans.error}"))
        if ans.terminate:
            worker.jobs.discard(job.id)
            return out + self._end(job, agent_pb.JS_SUCCESS, "", "rejected by worker")
        if not ans.available:
            worker.jobs.discard(job.id)
            return out + self._offer(job, now, resuming=job.redispatches > 0)
        secret = self.keys.get(worker.api_key)
        if secret is None:  # the key was removed while the worker was connected
            worker.jobs.discard(job.id)
            return out + self._offer(job, now)
        attributes = dict(ans.participant_attributes)
        attributes[AGENT_NAME_ATTRIBUTE] = worker.agent_name
        job.participant_identity = ans.participant_identity or f"agent-{job.id}"
        job.participant_name = ans.participant_name
        wall = self.wall_clock()
        job.token = agent_token(
            worker.api_key,
            secret,
            room=job.room_name,
            identity=job.participant_identity,
            name=ans.participant_name,
            metadata=ans.participant_metadata,
            attributes=attributes,
            permissions=worker.permissions,
            ttl=self.token_ttl,
            now=wall,
        )
        job.phase = JobPhase.ASSIGNED
        job.status = agent_pb.JS_RUNNING
        job.deadline = None
        job.updated_at = wall
        worker.conn.send_assignment(job.proto(), job.token, self.url)
        return out + [JobAssigned(job, resumed=job.redispatches > 0)]

    def _on_job_status(self, worker: WorkerRecord, upd: JobStatusUpdated) -> list[Output]:
        job = self.jobs.get(upd.job_id)
        if job is None or not job.active or job.worker_id != worker.id or not job.assigned:
            return [WorkerLog(worker.id, f"ignored status {upd.status} for job {upd.job_id!r}")]
        job.updated_at = self.wall_clock()
        if upd.status == agent_pb.JS_RUNNING:
            job.phase = JobPhase.RUNNING
            job.status = agent_pb.JS_RUNNING
            return []
        if upd.status == agent_pb.JS_SUCCESS:
            return self._end(job, agent_pb.JS_SUCCESS, "", "worker reported success")
        if upd.status in (agent_pb.JS_FAILED, agent_pb.JS_CANCELLED):
            error = upd.error or "agent job failed"
            return self._end(job, int(upd.status), error, "worker reported failure")
        return []

    def _on_migrate(self, worker: WorkerRecord, req: MigrateJob) -> list[Output]:
        out: list[Output] = []
        for job_id in req.job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.phase is not JobPhase.ORPHANED:
                out.append(WorkerLog(worker.id, f"ignored migration of job {job_id!r}"))
                continue
            if (job.agent_name, job.namespace, job.job_type, job.deployment) != worker.key:
                out.append(WorkerLog(worker.id, f"job {job_id!r} belongs to another agent"))
                continue
            job.worker_id = worker.id
            job.phase = JobPhase.RUNNING
            job.deadline = None
            job.updated_at = self.wall_clock()
            worker.jobs.add(job.id)
            out.append(WorkerLog(worker.id, f"job {job_id} migrated to this worker"))
        return out

    def _redispatch(self, job: AgentJob, now: float) -> list[Output]:
        job.redispatches += 1
        job.tried = {job.worker_id}  # the lost worker; every other may be tried again
        out: list[Output] = [JobRedispatching(job, job.worker_id, job.participant_identity)]
        return out + self._offer(job, now, resuming=True)

    def _end(self, job: AgentJob, status: int, error: str, reason: str) -> list[Output]:
        was_assigned = job.phase in (JobPhase.ASSIGNED, JobPhase.RUNNING, JobPhase.ORPHANED)
        worker = self.workers.get(job.worker_id)
        if worker is not None:
            worker.jobs.discard(job.id)
        job.phase = JobPhase.ENDED
        job.status = status
        job.error = error
        job.end_reason = reason
        job.deadline = None
        job.ended_at = job.updated_at = self.wall_clock()
        self._ended.append(job.id)
        while len(self._ended) > self.max_ended_jobs:
            self.jobs.pop(self._ended.popleft(), None)
        return [JobEnded(job, was_assigned)]

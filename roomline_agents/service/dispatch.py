"""Agent dispatches and their jobs (sans-I/O), as LiveKit's ``AgentDispatch`` describes them.

A dispatch says "agent X belongs in room R"; each attempt to run it is a job. Dispatches come from
``CreateDispatch`` (AgentDispatchService), from ``CreateRoom``'s ``agents`` and from SIP dispatch
rules' ``room_config.agents``. This module keeps the records, decides restarts and converts to the
protobufs; :mod:`roomline_agents.service.manager` does the I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb

from roomline import ids
from roomline.errors import NotFound

DISPATCH_PREFIX = "AD_"
JOB_PREFIX = "AJ_"
#: Jobs remembered per dispatch (the running one plus recent ended ones, for ListDispatch).
MAX_JOB_HISTORY = 8
#: A failed job is restarted (restart_policy JRP_ON_FAILURE) at most this many times per dispatch,
#: after 1, 2, 4 s: an agent that crashes on every start must not spin a process forever.
MAX_RESTARTS = 3

BUILTIN_AGENTS: dict[str, str] = {
    "echo": "roomline_agents.examples.echo:entrypoint",
    "ivr": "roomline_agents.examples.ivr:entrypoint",
    "reminder": "roomline_agents.examples.reminder:entrypoint",
}


class JobState(enum.IntEnum):
    """LiveKit ``JobStatus``."""

    PENDING = 0
    RUNNING = 1
    SUCCESS = 2
    FAILED = 3
    CANCELLED = 4


@dataclass
class Job:
    id: str
    dispatch_id: str
    agent_name: str
    room: str
    identity: str
    state: JobState = JobState.PENDING
    error: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    updated_at: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in (JobState.PENDING, JobState.RUNNING)


@dataclass
class Dispatch:
    id: str
    agent_name: str
    room: str
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    restart_policy: int = dispatch_pb.JRP_ON_FAILURE
    created_at: float = 0.0
    deleted_at: float = 0.0
    restarts: int = 0
    jobs: list[Job] = field(default_factory=list)

    @property
    def current(self) -> Job | None:
        return self.jobs[-1] if self.jobs and self.jobs[-1].active else None


class DispatchTable:
    """All dispatches of the appliance, by id; jobs by id."""

    def __init__(self) -> None:
        self.dispatches: dict[str, Dispatch] = {}
        self.jobs: dict[str, Job] = {}

    def create(
        self,
        room: str,
        agent_name: str,
        now: float,
        metadata: str = "",
        attributes: dict[str, str] | None = None,
        restart_policy: int = dispatch_pb.JRP_ON_FAILURE,
    ) -> Dispatch:
        d = Dispatch(
            id=ids.new_sid(DISPATCH_PREFIX),
            agent_name=agent_name,
            room=room,
            metadata=metadata,
            attributes=dict(attributes or {}),
            restart_policy=restart_policy,
            created_at=now,
        )
        self.dispatches[d.id] = d
        return d

    def new_job(self, d: Dispatch, now: float) -> Job:
        job_id = ids.new_sid(JOB_PREFIX)
        job = Job(
            id=job_id,
            dispatch_id=d.id,
            agent_name=d.agent_name,
            room=d.room,
            identity=f"agent-{job_id}",
            started_at=now,
            updated_at=now,
        )
        d.jobs.append(job)
        for old in d.jobs[:-MAX_JOB_HISTORY]:
            self.jobs.pop(old.id, None)
        del d.jobs[:-MAX_JOB_HISTORY]
        self.jobs[job.id] = job
        return job

    def find(self, room: str, dispatch_id: str = "") -> list[Dispatch]:
        return [
            d
            for d in self.dispatches.values()
            if d.room == room and (not dispatch_id or d.id == dispatch_id)
        ]

    def remove(self, dispatch_id: str, room: str, now: float) -> Dispatch:
        d = self.dispatches.get(dispatch_id)
        if d is None or d.room != room:
            raise NotFound(f"no agent dispatch {dispatch_id!r} in room {room!r}")
        del self.dispatches[dispatch_id]
        d.deleted_at = now
        return d

    def drop_room(self, room: str, now: float) -> list[Dispatch]:
        gone = self.find(room)
        for d in gone:
            del self.dispatches[d.id]
            d.deleted_at = now
        return gone

    def dispatch_of(self, job: Job) -> Dispatch | None:
        return self.dispatches.get(job.dispatch_id)

    def set_state(self, job: Job, state: JobState, now: float, error: str = "") -> None:
        job.state = state
        job.updated_at = now
        if error and not job.error:
            job.error = error
        if not job.active and not job.ended_at:
            job.ended_at = now

    def restart_delay(self, job: Job) -> float | None:
        """Seconds until a failed ``job`` is retried, or None when it must not be."""
        d = self.dispatch_of(job)
        if d is None or job.state != JobState.FAILED or d.current is not None:
            return None
        if d.restart_policy != dispatch_pb.JRP_ON_FAILURE or d.restarts >= MAX_RESTARTS:
            return None
        d.restarts += 1
        return float(2 ** (d.restarts - 1))

    def active_jobs(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.active]


def job_proto(job: Job, d: Dispatch) -> agent_pb.Job:
    return agent_pb.Job(
        id=job.id,
        dispatch_id=job.dispatch_id,
        type=agent_pb.JT_ROOM,
        agent_name=job.agent_name,
        metadata=d.metadata,
        state=agent_pb.JobState(
            status=int(job.state),  # type: ignore[arg-type]
            error=job.error,
            started_at=int(job.started_at * 1e9),
            ended_at=int(job.ended_at * 1e9),
            updated_at=int(job.updated_at * 1e9),
            participant_identity=job.identity,
            worker_id="roomline",
        ),
    )


def dispatch_proto(d: Dispatch) -> dispatch_pb.AgentDispatch:
    return dispatch_pb.AgentDispatch(
        id=d.id,
        agent_name=d.agent_name,
        room=d.room,
        metadata=d.metadata,
        attributes=d.attributes,
        restart_policy=d.restart_policy,  # type: ignore[arg-type]
        state=dispatch_pb.AgentDispatchState(
            jobs=[job_proto(j, d) for j in d.jobs],
            created_at=int(d.created_at * 1e9),
            deleted_at=int(d.deleted_at * 1e9),
        ),
    )

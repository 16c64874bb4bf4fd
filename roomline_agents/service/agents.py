"""One registry of agent names for the appliance: external LiveKit agent workers and built-ins.

Every way a room gets agents goes through :class:`Agents`:

* room creation (``node.room_listeners``): the room's ``agents`` (CreateRoom ``agents``, a join
  token's ``roomConfig.agents``, a SIP dispatch rule's ``room_config.agents``), or, with none, the
  *default dispatch* to workers registered without an agent name (LiveKit's automatic dispatch);
* ``livekit.AgentDispatchService`` CreateDispatch / ListDispatch / DeleteDispatch;
* :meth:`Agents.ensure` (the SIP bridge's ``AgentStarter``) for rooms that already exist.

**Precedence**: a name served by a connected external worker (``/agent``, any job type) goes to
that worker; otherwise a built-in of that name (:class:`~roomline_agents.service.manager.AgentManager`,
``agents.registry`` in the config) runs in the appliance. A name that is neither is refused by the
API (NotFound); from a room or SIP rule it is kept as a *pending* dispatch that the first worker
registering with that name picks up (LiveKit drops it: livekit/agents#518).

External jobs (:class:`~roomline_agents.service.agent_ws.AgentWorkerService`):

* JT_ROOM workers get one job per dispatch; JT_PARTICIPANT workers one job per participant who is
  not an agent or recorder, when it joins; JT_PUBLISHER workers one per such participant when the
  first of its tracks is published (as LiveKit: a participant that only listens gets none; a SIP
  caller's track is published as it joins). Per-participant jobs end when the participant leaves.
* When a worker disconnects, its running jobs go to another worker of the same name after a short
  grace, and the lost worker's agent participant is removed from the room first (LiveKit OSS
  leaves both the job and the participant stranded: livekit/agents#1472).
* When an agent participant leaves its room, its job is terminated (JS_FAILED "agent worker left
  the room", as LiveKit). When a job ends, its participant is removed if still there after
  ``LEAVE_GRACE`` seconds (DeleteDispatch: the worker is asked first, then the agent is removed).
* Agents are dependent participants (:attr:`sfu.participant.Participant.dependent`): a room with only
  agents closes after ``departure_timeout``, which ends their jobs.

ListDispatch shows both kinds; a job's ``state.worker_id`` says who served it: ``"roomline"`` for a
built-in, the worker id (``AW_…``) for an external worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import structlog
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb

from roomline import ids
from roomline.auth import Claims
from roomline.errors import InvalidRequest, NotFound, PermissionDenied, RoomlineError
from roomline.lifecycle import Service
from roomline.tasks import TaskSet
from roomline_agents.service.agent_ws import AgentWorkerService
from roomline_agents.service.dispatch import DISPATCH_PREFIX, dispatch_proto
from roomline_agents.service.manager import (
    MAX_AGENT_NAME,
    SERVICE,
    AgentManager,
)
from roomline_agents.service.worker_registry import AgentJob, WorkerRecord
from sfu.participant import DisconnectReason, Participant
from sfu.proto import participant_info
from sfu.room import check_attributes, check_metadata
from sfu.roomstate import RoomState
from sfu.service.metrics import Family
from sfu.service.twirp import Method

if TYPE_CHECKING:
    from aiohttp import web

    from sfu.server import SFUServer

log = structlog.get_logger(__name__)

#: ``state.worker_id`` of jobs run by a built-in agent.
BUILTIN_WORKER_ID = "roomline"
#: Seconds an ended (or terminated) job's agent participant may stay before it is removed, and
#: seconds a departed agent has to come back (same identity) before its job is terminated.
LEAVE_GRACE = 3.0
AGENT_LEFT_GRACE = 1.0
#: Jobs remembered per external dispatch (for ListDispatch).
MAX_JOB_HISTORY = 16
#: Job types that get one job per (non-agent) participant, started when it joins.
PER_PARTICIPANT = (agent_pb.JT_PUBLISHER, agent_pb.JT_PARTICIPANT)

Served = Literal["external", "builtin"]


@dataclass
class ExternalDispatch:
    """A dispatch served by external workers; its jobs live in the worker registry."""

    id: str
    agent_name: str
    room: str
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    deleted_at: float = 0.0
    job_ids: list[str] = field(default_factory=list)


class Agents(Service):
    """The agents of the appliance, whoever runs them."""

    def __init__(
        self,
        server: SFUServer,
        manager: AgentManager,
        workers: AgentWorkerService | None = None,
    ) -> None:
        self.node = server.node
        self.cfg = server.cfg
        self.manager = manager
        self.workers = workers or AgentWorkerService(self.cfg.keys)
        self.workers.on_job_ended = self._job_ended
        self.workers.on_worker_registered = self._worker_registered
        self.workers.on_job_redispatching = self._job_redispatching
        self.dispatches: dict[str, ExternalDispatch] = {}
        self._tasks = TaskSet("agent dispatch")
        #: Rooms being created by CreateDispatch (no default dispatch for them).
        self._creating: set[str] = set()
        # Room creation dispatches through here (external or built-in); the manager keeps its
        # own room-closed handling, called from on_room.
        if manager.on_room in self.node.room_listeners:
            self.node.room_listeners.remove(manager.on_room)
        self.node.room_listeners.append(self.on_room)
        self.node.participant_listeners.append(self.on_participant)
        self.node.publisher_listeners.append(self.on_publisher)

    def install(self, app: web.Application) -> None:
        app.router.add_routes(self.workers.routes())

    async def start(self) -> None:
        await self.workers.start()

    async def stop(self) -> None:
        self._tasks.cancel()
        await self.workers.stop()

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)

    # ------------------------------------------------------------------ names

    def external_names(self) -> set[str]:
        return {w.agent_name for w in self.workers.workers}

    def serves(self, name: str) -> Served | None:
        """Who runs agent ``name``: a connected external worker wins over a built-in."""
        if name in self.external_names():
            return "external"
        if name in self.manager.registry:
            return "builtin"
        return None

    def check_agent(self, name: str) -> Served:
        if not name:
            raise InvalidRequest("agent_name is required")
        if len(name) > MAX_AGENT_NAME:
            raise InvalidRequest(f"agent_name longer than {MAX_AGENT_NAME} characters")
        served = self.serves(name)
        if served is None:
            known = ", ".join(sorted(self.external_names() | set(self.manager.registry)))
            raise NotFound(f"no agent named {name!r} is registered (known: {known})")
        if served == "builtin":
            self.manager.check_agent(name)  # agents.workers may be 0
        return served

    # ------------------------------------------------------------------ dispatch

    def dispatch(
        self,
        room: str,
        agent_name: str,
        metadata: str = "",
        attributes: dict[str, str] | None = None,
        restart_policy: int = dispatch_pb.JRP_ON_FAILURE,
    ) -> dispatch_pb.AgentDispatch:
        """Dispatch ``agent_name`` to ``room`` (which must exist); raises for unknown names."""
        if self.check_agent(agent_name) == "builtin":
            d = self.manager.dispatch(room, agent_name, metadata, attributes, restart_policy)
            return dispatch_proto(d)
        return self._proto(self._external(room, agent_name, metadata, attributes))

    def _external(
        self,
        room: str,
        agent_name: str,
        metadata: str = "",
        attributes: dict[str, str] | None = None,
    ) -> ExternalDispatch:
        d = ExternalDispatch(
            id=ids.new_sid(DISPATCH_PREFIX),
            agent_name=agent_name,
            room=room,
            metadata=metadata,
            attributes=dict(attributes or {}),
            created_at=time.time(),
        )
        self.dispatches[d.id] = d
        log.info("agent dispatched to external workers", agent=agent_name, room=room, dispatch=d.id)
        self._launch_all(d)
        return d

    def _lenient(self, room: str, name: str, metadata: str = "") -> None:
        """Dispatch from a room's or SIP rule's config: never raises; an unknown name becomes a
        pending dispatch for the first worker of that name."""
        try:
            if self.serves(name) is None and name:
                d = ExternalDispatch(
                    id=ids.new_sid(DISPATCH_PREFIX),
                    agent_name=name,
                    room=room,
                    metadata=metadata,
                    created_at=time.time(),
                )
                self.dispatches[d.id] = d
                log.warning(
                    "no worker for agent yet; dispatch pending",
                    agent=name,
                    room=room,
                    dispatch=d.id,
                )
                return
            self.dispatch(room, name, metadata)
        except RoomlineError as exc:  # a bad rule must not stop the room or the call
            log.warning("room agent not dispatched", room=room, agent=name, error=exc.message)

    def ensure(self, room: str, agent_names: list[str]) -> None:
        """Start each named agent in ``room`` unless it is dispatched there already (SIP rules
        naming agents for a room that exists)."""
        present = {d.agent_name for d in self.manager.table.find(room) if not d.deleted_at}
        present |= {d.agent_name for d in self.dispatches.values() if d.room == room}
        for name in agent_names:
            if name not in present:
                self._lenient(room, name)
                present.add(name)

    def _launch(
        self, d: ExternalDispatch, job_type: int, participant: Participant | None = None
    ) -> AgentJob:
        room = self.node.rooms.rooms.get(d.room)
        job = self.workers.dispatch_nowait(
            d.room,
            d.agent_name,
            job_type,
            d.metadata,
            d.id,
            room_sid=room.sid if room is not None else "",
            attributes=d.attributes,
            participant=participant_info(participant) if participant is not None else None,
        )
        d.job_ids.append(job.id)
        del d.job_ids[:-MAX_JOB_HISTORY]
        return job

    def _launch_all(self, d: ExternalDispatch) -> None:
        """The jobs a dispatch calls for now: JT_ROOM, and JT_PUBLISHER / JT_PARTICIPANT per
        participant."""
        if self.workers.has_workers(d.agent_name, agent_pb.JT_ROOM):
            self._launch(d, agent_pb.JT_ROOM)
        for job_type in PER_PARTICIPANT:
            if self.workers.has_workers(d.agent_name, job_type):
                room = self.node.rooms.rooms.get(d.room)
                for p in list(room.participants.values()) if room is not None else []:
                    if job_type == agent_pb.JT_PARTICIPANT or p.has_published:
                        self._launch_for(d, p, job_type)

    def _launch_for(self, d: ExternalDispatch, participant: Participant, job_type: int) -> None:
        """One per-participant job (``job_type`` in :data:`PER_PARTICIPANT`) per participant and
        dispatch (a join that creates the room reaches here twice: from the room's creation and
        from the join itself)."""
        if participant.dependent:
            return
        for job in self._jobs(d):
            if (
                job.active
                and job.job_type == job_type
                and job.participant is not None
                and job.participant.sid == participant.sid
            ):
                return
        self._launch(d, job_type, participant)

    def _jobs(self, d: ExternalDispatch) -> list[AgentJob]:
        return [self.workers.jobs[j] for j in d.job_ids if j in self.workers.jobs]

    def _proto(self, d: ExternalDispatch) -> dispatch_pb.AgentDispatch:
        return dispatch_pb.AgentDispatch(
            id=d.id,
            agent_name=d.agent_name,
            room=d.room,
            metadata=d.metadata,
            attributes=d.attributes,
            restart_policy=dispatch_pb.JRP_NEVER,  # re-dispatch is on worker loss, not failure
            state=dispatch_pb.AgentDispatchState(
                jobs=[j.proto() for j in self._jobs(d)],
                created_at=int(d.created_at * 1e9),
                deleted_at=int(d.deleted_at * 1e9),
            ),
        )

    def list(self, room: str, dispatch_id: str = "") -> list[dispatch_pb.AgentDispatch]:
        found = [dispatch_proto(d) for d in self.manager.table.find(room, dispatch_id)]
        found += [
            self._proto(d)
            for d in self.dispatches.values()
            if d.room == room and (not dispatch_id or d.id == dispatch_id)
        ]
        return found

    def delete(self, room: str, dispatch_id: str) -> dispatch_pb.AgentDispatch:
        if dispatch_id in self.manager.table.dispatches:
            d = self.manager.table.remove(dispatch_id, room, time.time())
            self.manager.stop_dispatch(d, "dispatch deleted")
            return dispatch_proto(d)
        ext = self.dispatches.get(dispatch_id)
        if ext is None or ext.room != room:
            raise NotFound(f"no agent dispatch {dispatch_id!r} in room {room!r}")
        del self.dispatches[dispatch_id]
        ext.deleted_at = time.time()
        self._end_jobs(ext, "dispatch deleted")
        return self._proto(ext)

    def _end_jobs(self, d: ExternalDispatch, reason: str) -> None:
        for job in self._jobs(d):
            if job.active:
                self.workers.terminate(job.id, reason)

    # ------------------------------------------------------------------ rooms and participants

    def on_room(self, room: RoomState, created: bool) -> None:
        if created:
            if room.agents:
                for name in room.agents:
                    self._lenient(room.name, name, room.agent_metadata.get(name, ""))
            elif room.name not in self._creating and "" in self.external_names():
                self._external(room.name, "")  # automatic dispatch (unnamed workers)
            return
        self.manager.on_room(room, False)
        for d in [d for d in self.dispatches.values() if d.room == room.name]:
            del self.dispatches[d.id]
            d.deleted_at = time.time()
            self._end_jobs(d, "room closed")

    def on_participant(self, room: RoomState, participant: Participant, joined: bool) -> None:
        if participant.dependent:
            if not joined:
                self._agent_left(room, participant)
            return
        if joined:
            self._launch_per_participant(room, participant, agent_pb.JT_PARTICIPANT)
            return
        for job in list(self.workers.jobs.values()):
            if (
                job.active
                and job.room_name == room.name
                and job.participant is not None
                and job.participant.sid == participant.sid
            ):
                self.workers.terminate(job.id, "participant left")

    def on_publisher(self, room: RoomState, participant: Participant) -> None:
        """The participant's first track is published: its JT_PUBLISHER jobs start."""
        if not participant.dependent:
            self._launch_per_participant(room, participant, agent_pb.JT_PUBLISHER)

    def _launch_per_participant(
        self, room: RoomState, participant: Participant, job_type: int
    ) -> None:
        for d in [d for d in self.dispatches.values() if d.room == room.name]:
            if self.workers.has_workers(d.agent_name, job_type):
                self._launch_for(d, participant, job_type)

    def _agent_left(self, room: RoomState, participant: Participant) -> None:
        if participant.disconnect_reason == DisconnectReason.DUPLICATE_IDENTITY:
            return
        for job in self.workers.jobs.values():
            if (
                job.active
                and job.assigned
                and job.room_name == room.name
                and job.participant_identity == participant.identity
            ):
                self._spawn(self._terminate_if_gone(job, job.worker_id, participant.identity))

    async def _terminate_if_gone(self, job: AgentJob, worker_id: str, identity: str) -> None:
        # A worker that died takes its agents with it; the socket close may come a moment after
        # the agent's departure, and then the job must be re-dispatched, not terminated.
        await asyncio.sleep(AGENT_LEFT_GRACE)
        room = self.node.rooms.rooms.get(job.room_name)
        if not job.active or not job.assigned or job.worker_id != worker_id:
            return
        if room is not None and identity in room.by_identity:
            return
        log.info("agent left the room; ending its job", job=job.id, identity=identity)
        self.workers.terminate(job.id, "agent left room")

    # ------------------------------------------------------------------ worker hooks

    def _job_ended(self, job: AgentJob) -> None:
        if job.participant_identity:
            self._spawn(self._remove_later(job))

    async def _remove_later(self, job: AgentJob) -> None:
        await asyncio.sleep(LEAVE_GRACE)
        identity = job.participant_identity
        if any(
            j.active and j.participant_identity == identity and j.room_name == job.room_name
            for j in self.workers.jobs.values()
        ):
            return  # the identity belongs to a live job again
        self._remove(job.room_name, identity, "its job ended")

    def _remove(self, room_name: str, identity: str, why: str) -> None:
        room = self.node.rooms.rooms.get(room_name)
        if room is None or identity not in room.by_identity:
            return
        log.info("removing agent participant", room=room_name, identity=identity, why=why)
        self.node.dispatch(room.remove_by_identity(identity, self.node.clock()))

    def _job_redispatching(self, job: AgentJob, old_identity: str) -> None:
        if old_identity:
            self._remove(job.room_name, old_identity, "its worker disconnected")

    def _worker_registered(self, worker: WorkerRecord) -> None:
        """Give a new worker the dispatches of its name that have no live job (pending ones,
        or ones whose worker went away for good)."""
        for d in list(self.dispatches.values()):
            if d.agent_name != worker.agent_name or d.room not in self.node.rooms.rooms:
                continue
            if worker.job_type == agent_pb.JT_ROOM:
                jobs = [j for j in self._jobs(d) if j.job_type == agent_pb.JT_ROOM]
                if not any(j.active for j in jobs) and (
                    not jobs or jobs[-1].error.startswith("no workers available")
                ):
                    log.info("pending agent dispatch gets a worker", dispatch=d.id, room=d.room)
                    self._launch(d, agent_pb.JT_ROOM)

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> Iterable[Family]:
        workers: dict[str, int] = {}
        for w in self.workers.workers:
            workers[w.agent_name] = workers.get(w.agent_name, 0) + 1
        yield (
            "roomline_agent_workers",
            "External agent workers connected on /agent, by agent name.",
            "gauge",
            [({"agent": k}, v) for k, v in sorted(workers.items())],
        )
        running: dict[str, int] = {}
        for j in self.workers.jobs.values():
            if j.active:
                running[j.agent_name] = running.get(j.agent_name, 0) + 1
        yield (
            "roomline_agent_external_jobs",
            "Jobs offered to or running on external agent workers, by agent name.",
            "gauge",
            [({"agent": k}, v) for k, v in sorted(running.items())],
        )


# ---------------------------------------------------------------------------------- Twirp


def _require_admin(claims: Claims, room: str) -> None:
    if not room:
        raise InvalidRequest("room is required")
    if not (claims.video.room_admin and claims.video.room == room):
        raise PermissionDenied(f"missing grant: roomAdmin for room {room!r}")


class AgentDispatchService:
    """``livekit.AgentDispatchService`` over both kinds of agents."""

    def __init__(self, agents: Agents) -> None:
        self.agents = agents

    def methods(self) -> dict[str, Method]:
        return {
            "CreateDispatch": Method(dispatch_pb.CreateAgentDispatchRequest, self.create),
            "ListDispatch": Method(dispatch_pb.ListAgentDispatchRequest, self.list),
            "DeleteDispatch": Method(dispatch_pb.DeleteAgentDispatchRequest, self.delete),
        }

    async def create(self, req: dispatch_pb.CreateAgentDispatchRequest, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        a = self.agents
        a.check_agent(req.agent_name)
        # The same limits, counted in bytes, as the room applies to the agent's participant.
        check_metadata(a.node.rooms.limits, req.metadata)
        attrs = dict(req.attributes)
        check_attributes(a.node.rooms.limits, attrs)
        if req.restart_policy not in (dispatch_pb.JRP_ON_FAILURE, dispatch_pb.JRP_NEVER):
            raise InvalidRequest(f"unknown restart_policy {req.restart_policy}")
        if req.room not in a.node.rooms.rooms:
            # As LiveKit: dispatching to a new room creates it (without the default dispatch).
            a._creating.add(req.room)
            try:
                a.node.create_room(req.room)
            finally:
                a._creating.discard(req.room)
        return a.dispatch(req.room, req.agent_name, req.metadata, attrs, req.restart_policy)

    async def list(self, req: dispatch_pb.ListAgentDispatchRequest, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        return dispatch_pb.ListAgentDispatchResponse(
            agent_dispatches=self.agents.list(req.room, req.dispatch_id)
        )

    async def delete(self, req: dispatch_pb.DeleteAgentDispatchRequest, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        if not req.dispatch_id:
            raise InvalidRequest("dispatch_id is required")
        return self.agents.delete(req.room, req.dispatch_id)


def install(server: SFUServer, manager: AgentManager) -> Agents:
    """Serve ``/agent`` on the SFU's app and take over ``livekit.AgentDispatchService``."""
    agents = Agents(server, manager)
    agents.install(server.app)
    server.twirp.register(SERVICE, AgentDispatchService(agents).methods())
    server.metrics.collectors.append(agents.metrics)
    return agents

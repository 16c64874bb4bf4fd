"""In-appliance agents in the main process: dispatch, job supervision and the Twirp service.

* Rooms created with ``agents`` (CreateRoom, SIP dispatch rules) get those agents when they are
  created (``node.room_listeners``); ``livekit.AgentDispatchService`` creates, lists and deletes
  dispatches explicitly.
* Every job runs in its own process (:mod:`roomline_agents.service.supervisor`) and joins over the local
  participant channel as an AGENT participant, with a token minted here.
* A job that raises, crashes or hangs is removed from its room with reason AGENT_ERROR (the room
  and everyone else in it carry on), counted in ``roomline_agent_jobs_failed_total`` and logged.
* A room left with only this appliance's agents in it for ``departure_timeout`` seconds has its
  jobs stopped, so the room can close like any other.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from google.protobuf import json_format
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import sip as sip_pb

from roomline.auth import Claims, SIPGrant, VideoGrant, mint_token
from roomline.errors import (
    InvalidRequest,
    LimitExceeded,
    NotFound,
    RoomlineError,
    Unavailable,
)
from roomline.lifecycle import Service
from roomline.tasks import TaskSet
from roomline_agents import control
from roomline_agents.control import AGENT_STATE_ATTRIBUTE
from roomline_agents.service.dispatch import (
    BUILTIN_AGENTS,
    Dispatch,
    DispatchTable,
    Job,
    JobState,
)
from roomline_agents.service.supervisor import JobSpec, JobSupervisor
from sfu.local import socket_path
from sfu.participant import DisconnectReason, ParticipantKind
from sfu.roomstate import RoomState
from sfu.service.metrics import Family

if TYPE_CHECKING:
    from sfu.server import SFUServer


class SIPCalls(Protocol):
    """What an agent's call requests need of the SIP service (``bridge/service/sip_service.py``,
    handed over by the appliance; agents do not import the bridge)."""

    async def create_sip_participant(
        self, req: sip_pb.CreateSIPParticipantRequest, claims: Claims
    ) -> sip_pb.SIPParticipantInfo: ...

    async def transfer_sip_participant(
        self, req: sip_pb.TransferSIPParticipantRequest, claims: Claims
    ) -> sip_pb.TransferSIPParticipantResponse: ...


log = structlog.get_logger(__name__)

SERVICE = "livekit.AgentDispatchService"
#: Concurrent jobs (= processes, ~60 MB each) the appliance runs at most; CreateDispatch beyond it
#: is refused with resource_exhausted instead of exhausting the host's memory.
MAX_JOBS = 64
#: Longest agent name accepted (names are registry keys, never free text).
MAX_AGENT_NAME = 128


class AgentManager(Service):
    """Dispatch table + job supervisor + the room hooks that connect them to the node."""

    def __init__(self, server: SFUServer) -> None:
        self.node = server.node
        self.cfg = server.cfg
        self.registry: dict[str, str] = {**BUILTIN_AGENTS, **self.cfg.agents.registry}
        self.table = DispatchTable()
        self.enabled = self.cfg.agents.workers > 0
        self.supervisor = JobSupervisor(
            self.cfg.agents.workers,
            socket_path(self.cfg.server.data_dir),
            self.on_status,
            self.remove_for_job,
            log_config=self.cfg.logging,
        )
        self.failures: Counter[tuple[str, str]] = Counter()
        self.started: Counter[str] = Counter()
        self._agent_only_since: dict[str, float] = {}
        self._tasks = TaskSet("built-in agents")
        self._ticker: asyncio.Task[None] | None = None
        self.node.room_listeners.append(self.on_room)
        key = next(iter(self.cfg.keys))
        self._key, self._secret = key, self.cfg.keys[key]
        #: The ``livekit.SIP`` service (bridge/service/sip_service.py), set by the appliance:
        #: agents place calls and transfer through it (:meth:`sip_for_job`).
        self.sip_service: SIPCalls | None = None
        self.supervisor.on_sip = self.sip_for_job

    async def start(self) -> None:
        if self.enabled:
            await self.supervisor.start()
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._tasks.cancel()
        await self.supervisor.stop()

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)

    # ------------------------------------------------------------------ dispatch

    def check_agent(self, name: str) -> None:
        if not name:
            raise InvalidRequest("agent_name is required")
        if len(name) > MAX_AGENT_NAME:
            raise InvalidRequest(f"agent_name longer than {MAX_AGENT_NAME} characters")
        if name not in self.registry:
            known = ", ".join(sorted(self.registry))
            raise NotFound(f"no agent named {name!r} is registered (known: {known})")
        if not self.enabled:
            raise Unavailable("in-appliance agents are disabled (agents.workers is 0)")

    def dispatch(
        self,
        room: str,
        agent_name: str,
        metadata: str = "",
        attributes: dict[str, str] | None = None,
        restart_policy: int = dispatch_pb.JRP_ON_FAILURE,
    ) -> Dispatch:
        """Record a dispatch and start its job (the room must exist)."""
        self.check_agent(agent_name)
        if len(self.table.active_jobs()) >= MAX_JOBS:
            raise LimitExceeded(f"at most {MAX_JOBS} agent jobs may run at once")
        d = self.table.create(
            room, agent_name, time.time(), metadata, attributes, restart_policy=restart_policy
        )
        self._start_job(d)
        return d

    def ensure(self, room: str, agent_names: list[str]) -> None:
        """Start each named agent in ``room`` unless one of that name is already dispatched there.

        For rooms that already exist when a SIP dispatch rule names agents (rooms created by the
        rule get theirs through :meth:`on_room`).
        """
        if not self.enabled:
            return
        present = {d.agent_name for d in self.table.find(room) if not d.deleted_at}
        for name in agent_names:
            if name not in present:
                try:
                    self.dispatch(room, name)
                except RoomlineError as exc:  # a bad rule must not stop the call
                    log.warning("agent dispatch failed", room=room, agent=name, error=exc.message)

    def _start_job(self, d: Dispatch) -> Job:
        job = self.table.new_job(d, time.time())
        attributes = {**d.attributes, AGENT_STATE_ATTRIBUTE: "initializing"}
        token = mint_token(
            self._key,
            self._secret,
            identity=job.identity,
            room=d.room,
            name=d.agent_name,
            kind="agent",
            attributes=attributes,
            can_update_own_metadata=True,
            agent=True,
        )
        start = control.StartJob(
            job_id=job.id,
            dispatch_id=d.id,
            agent_name=d.agent_name,
            target=self.registry[d.agent_name],
            room=d.room,
            identity=job.identity,
            token=token,
            name=d.agent_name,
            metadata=d.metadata,
            attributes=attributes,
        )
        self.started[d.agent_name] += 1
        log.info("agent job starting", agent=d.agent_name, room=d.room, job=job.id, dispatch=d.id)
        self._spawn(self._launch(job, JobSpec(start)))
        return job

    async def _launch(self, job: Job, spec: JobSpec) -> None:
        try:
            if not await self.supervisor.launch(spec):
                # Stopped (dispatch deleted, room closed) while it waited for a process.
                log.info("agent job stopped before it started", job=job.id)
        except Exception as exc:
            log.error("agent job could not start", job=job.id, error=str(exc))
            self._job_failed(job, f"could not start: {exc}")

    def stop_dispatch(self, d: Dispatch, reason: str) -> None:
        job = d.current
        if job is not None:
            self.table.set_state(job, JobState.CANCELLED, time.time())
            self.supervisor.stop_job(job.id, reason)

    # ------------------------------------------------------------------ job reports

    def on_status(self, job_id: str, state: str, error: str) -> None:
        job = self.table.jobs.get(job_id)
        if job is None:
            return
        now = time.time()
        if state == "running":
            if job.state == JobState.PENDING:
                self.table.set_state(job, JobState.RUNNING, now)
        elif state == "success":
            if job.active:
                self.table.set_state(job, JobState.SUCCESS, now)
        elif state == "failed":
            self._job_failed(job, error)
        elif state == "exited":
            if error and job.state != JobState.FAILED:
                self._job_failed(job, error)
            elif job.active:
                self.table.set_state(job, JobState.SUCCESS, now)
            # Whatever happened, the job's participant must not outlive its process.
            reason = (
                DisconnectReason.AGENT_ERROR
                if job.state == JobState.FAILED
                else DisconnectReason.PARTICIPANT_REMOVED
            )
            self._remove_agent(job, reason)

    def _job_failed(self, job: Job, error: str) -> None:
        if job.state == JobState.FAILED:
            return
        self.table.set_state(job, JobState.FAILED, time.time(), error or "agent failed")
        kind = "hung" if "hung" in error else "crashed" if "exited" in error else "error"
        self.failures[(job.agent_name, kind)] += 1
        log.warning(
            "agent job failed",
            agent=job.agent_name,
            room=job.room,
            job=job.id,
            error=error,
            disconnect_reason="AGENT_ERROR",
        )
        self._remove_agent(job, DisconnectReason.AGENT_ERROR)
        delay = self.table.restart_delay(job)
        if delay is not None:
            self._spawn(self._restart(job, delay))

    async def _restart(self, job: Job, delay: float) -> None:
        await asyncio.sleep(delay)
        d = self.table.dispatch_of(job)
        if d is None or d.current is not None or d.room not in self.node.rooms.rooms:
            return
        log.info("restarting agent job", agent=d.agent_name, room=d.room, attempt=d.restarts)
        self._start_job(d)

    def _remove_agent(self, job: Job, reason: DisconnectReason) -> None:
        room = self.node.rooms.rooms.get(job.room)
        if room is None:
            return
        participant = room.by_identity.get(job.identity)
        if participant is None:
            return
        self.node.dispatch(room.leave(participant.sid, reason, self.node.clock(), tell_self=True))

    async def remove_for_job(self, job_id: str, identity: str, destination: str = "") -> str:
        """An agent asked to remove ``identity`` from its room (an IVR hanging up), or to move it
        to ``destination`` (an IVR transferring a caller)."""
        job = self.table.jobs.get(job_id)
        if job is None or not job.active:
            return "job is not running"
        room = self.node.rooms.rooms.get(job.room)
        if room is None:
            return f"room {job.room!r} is closed"
        if identity not in room.by_identity:
            return f"no participant {identity!r} in room {job.room!r}"
        if destination:
            log.info(
                "agent moves participant",
                job=job.id,
                room=job.room,
                identity=identity,
                destination=destination,
            )
            try:
                self.node.move_participant(room, identity, destination)
            except RoomlineError as exc:
                return exc.message
            return ""
        log.info("agent removes participant", job=job.id, room=job.room, identity=identity)
        self.node.dispatch(room.remove_by_identity(identity, self.node.clock()))
        return ""

    async def sip_for_job(self, job_id: str, msg: control.SipCall) -> control.Result:
        """An agent places an outbound call or transfers a SIP participant, in its own room.

        The request goes to the SIP service (``sip_service``, set by the appliance) with the
        grants LiveKit asks for: ``sip.call`` and roomAdmin of the job's room.
        """

        def fail(code: str, error: str, meta: dict[str, str] | None = None) -> control.Result:
            return control.Result(
                request_id=msg.request_id, ok=False, error=error, code=code, meta=meta or {}
            )

        job = self.table.jobs.get(job_id)
        if job is None or not job.active:
            return fail("failed_precondition", "job is not running")
        service = self.sip_service
        if service is None:
            return fail("unavailable", "SIP is not enabled on this appliance")
        req_type: Any = (
            sip_pb.CreateSIPParticipantRequest
            if msg.method == "CreateSIPParticipant"
            else sip_pb.TransferSIPParticipantRequest
        )
        try:
            req = json_format.Parse(msg.request, req_type())
        except json_format.ParseError as exc:
            return fail("malformed", f"bad {msg.method} request: {exc}")
        if not req.room_name:
            req.room_name = job.room
        if req.room_name != job.room:
            return fail("permission_denied", f"an agent may only use its own room {job.room!r}")
        claims = Claims(
            identity=job.identity,
            video=VideoGrant(room_admin=True, room=job.room),
            sip=SIPGrant(call=True),
        )
        log.info("agent sip request", job=job.id, room=job.room, method=msg.method)
        resp: sip_pb.SIPParticipantInfo | sip_pb.TransferSIPParticipantResponse
        try:
            if msg.method == "CreateSIPParticipant":
                resp = await service.create_sip_participant(req, claims)
            else:
                resp = await service.transfer_sip_participant(req, claims)
        except RoomlineError as exc:
            return fail(exc.twirp_code, exc.message, dict(getattr(exc, "meta", {}) or {}))
        return control.Result(
            request_id=msg.request_id, ok=True, response=json_format.MessageToJson(resp)
        )

    # ------------------------------------------------------------------ rooms

    def on_room(self, room: RoomState, created: bool) -> None:
        if created:
            for name in room.agents:
                try:
                    self.dispatch(room.name, name)
                except Exception as exc:  # a bad rule must not stop the room or the call
                    log.warning(
                        "room agent not dispatched", room=room.name, agent=name, error=str(exc)
                    )
            return
        self._agent_only_since.pop(room.name, None)
        for d in self.table.drop_room(room.name, time.time()):
            self.stop_dispatch(d, "room closed")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self._stop_idle_rooms(time.time())
            except Exception:
                log.exception("agent room check failed")

    def _stop_idle_rooms(self, now: float) -> None:
        """Stop the jobs of rooms where only agents are left, after ``departure_timeout``."""
        rooms_with_jobs = {j.room for j in self.table.active_jobs()}
        for name in list(self._agent_only_since):
            if name not in rooms_with_jobs:
                del self._agent_only_since[name]
        for name in rooms_with_jobs:
            room = self.node.rooms.rooms.get(name)
            if room is None:
                continue
            humans = [p for p in room.participants.values() if p.kind != ParticipantKind.AGENT]
            if humans or not room.ever_joined:
                self._agent_only_since.pop(name, None)
                continue
            since = self._agent_only_since.setdefault(name, now)
            if now - since >= room.departure_timeout:
                del self._agent_only_since[name]
                log.info("only agents left; stopping them", room=name)
                for d in self.table.find(name):
                    self.stop_dispatch(d, "only agents left in the room")

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> Iterable[Family]:
        running: Counter[str] = Counter(j.agent_name for j in self.table.active_jobs())
        yield (
            "roomline_agent_jobs",
            "Agent jobs pending or running, by agent.",
            "gauge",
            [({"agent": k}, v) for k, v in sorted(running.items())],
        )
        yield (
            "roomline_agent_jobs_started_total",
            "Agent jobs started, by agent.",
            "counter",
            [({"agent": k}, v) for k, v in sorted(self.started.items())],
        )
        yield (
            "roomline_agent_jobs_failed_total",
            "Agent jobs removed with AGENT_ERROR, by agent and kind (error, crashed, hung).",
            "counter",
            [({"agent": a, "kind": k}, v) for (a, k), v in sorted(self.failures.items())],
        )
        m = self.supervisor.metrics()
        yield (
            "roomline_agent_idle_processes",
            "Warm agent job processes waiting for a job.",
            "gauge",
            [({}, m["idle"])],
        )
        yield (
            "roomline_agent_jobs_waited_total",
            "Agent jobs that found no warm job process and waited for one to start "
            "(if it grows, raise agents.workers).",
            "counter",
            [({}, m["waited"])],
        )


def install(server: SFUServer) -> AgentManager:
    """Create the built-in agents' part and register its metrics with the SFU server; the Twirp
    ``AgentDispatchService`` over built-ins and external workers is :mod:`.agents`'s."""
    manager = AgentManager(server)
    server.metrics.collectors.append(manager.metrics)
    return manager

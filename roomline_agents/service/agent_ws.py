"""The ``/agent`` WebSocket edge: unmodified ``livekit-agents`` workers register here and get jobs.

``AgentWorkerService`` owns a :class:`~roomline_agents.service.worker_registry.WorkerRegistry`
and one :class:`~roomline_agents.service.worker_protocol.WorkerConnection` per socket; all
protocol decisions live in those sans-I/O objects, this module only moves frames and keeps time.

* ``GET /agent`` with ``Authorization: Bearer <jwt>`` (or ``?access_token=``): the token must be
  valid for one of ``keys`` and carry the ``video.agent`` grant (401 otherwise); a request that is
  not a WebSocket upgrade gets 404, as LiveKit's ``agentservice.go``.
* The worker must register within ``register_timeout`` or is closed (1008). WebSocket pings are
  answered (and sent every ``heartbeat`` s); protobuf WorkerPing gets WorkerPong. A bad frame closes
  that connection only (1002/1003/1009), never the service.
* :meth:`AgentWorkerService.dispatch` / :meth:`terminate` are the API the appliance uses;
  ``on_job_started`` / ``on_job_ended`` / ``on_job_orphaned`` / ``on_worker_registered`` are its
  hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from livekit.protocol import agent as agent_pb
from livekit.protocol import models

from roomline.auth import verify_token
from roomline.errors import TokenError, Unavailable
from roomline.tasks import TaskSet
from roomline_agents.service.worker_protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    REGISTER_TIMEOUT,
    CloseCode,
    ProtocolError,
    Registered,
    WorkerConnection,
    server_info,
)
from roomline_agents.service.worker_registry import (
    ASSIGN_TIMEOUT,
    REDISPATCH_GRACE,
    AgentJob,
    JobAssigned,
    JobEnded,
    JobOrphaned,
    JobRedispatching,
    Output,
    WorkerLog,
    WorkerRecord,
    WorkerRegistry,
)

__all__ = ["AGENT_PATH", "AgentWorkerService", "JobHook"]

log = structlog.get_logger(__name__)

AGENT_PATH = "/agent"
#: WebSocket ping interval (Go sends one every 10 s; the worker's own heartbeat is 30 s).
HEARTBEAT = 10.0
#: Connected workers at most; more get 503 before the upgrade.
MAX_WORKERS = 256

JobHook = Callable[[AgentJob], Any]
WorkerHook = Callable[[WorkerRecord], Any]
RedispatchHook = Callable[[AgentJob, str], Any]


@dataclass(eq=False)
class _Link:
    """One live worker socket."""

    conn: WorkerConnection
    ws: web.WebSocketResponse
    api_key: str
    peer: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None


class AgentWorkerService:
    """Agent workers over ``/agent`` and the jobs dispatched to them.

    ``keys``: API key -> secret (the same mapping the rest of the appliance verifies tokens with).
    ``url``: sent in JobAssignment when set; by default workers join at their own LIVEKIT_URL.
    Hooks are called with the :class:`AgentJob` and may be plain functions or coroutines (which
    are run as tasks); an exception in a hook is logged and does not affect the job.
    """

    def __init__(
        self,
        keys: Mapping[str, str],
        *,
        on_job_started: JobHook | None = None,
        on_job_ended: JobHook | None = None,
        on_job_orphaned: JobHook | None = None,
        on_worker_registered: WorkerHook | None = None,
        on_job_redispatching: RedispatchHook | None = None,
        register_timeout: float = REGISTER_TIMEOUT,
        assign_timeout: float = ASSIGN_TIMEOUT,
        redispatch_grace: float = REDISPATCH_GRACE,
        heartbeat: float = HEARTBEAT,
        max_workers: int = MAX_WORKERS,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        info: models.ServerInfo | None = None,
        url: str | None = None,
    ) -> None:
        self.keys = keys
        self.on_job_started = on_job_started
        self.on_job_ended = on_job_ended
        self.on_job_orphaned = on_job_orphaned
        #: Called when a worker registers, e.g. to give it jobs for rooms that already exist
        #: (LiveKit does not: livekit/agents#518).
        self.on_worker_registered = on_worker_registered
        #: Called synchronously, before the orphaned job is offered to another worker, with the
        #: job and the lost worker's participant identity (to remove it from the room first).
        self.on_job_redispatching = on_job_redispatching
        self.register_timeout = register_timeout
        self.heartbeat = heartbeat
        self.max_workers = max_workers
        self.max_frame_size = max_frame_size
        self.info = info if info is not None else server_info(version="roomline")
        self.registry = WorkerRegistry(
            keys, assign_timeout=assign_timeout, redispatch_grace=redispatch_grace, url=url
        )
        self._links: dict[str, _Link] = {}  # by worker id (registered or not)
        self._waiters: dict[str, asyncio.Future[AgentJob]] = {}
        self._timer_wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._tasks = TaskSet("agent worker hooks")
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    def routes(self) -> list[web.RouteDef]:
        return [web.get(AGENT_PATH, self.handle)]

    def install(self, app: web.Application) -> None:
        """Add the route and tie :meth:`start`/:meth:`stop` to the app's lifecycle."""
        app.router.add_routes(self.routes())

        async def _ctx(_app: web.Application) -> Any:
            await self.start()
            yield
            await self.stop()

        app.cleanup_ctx.append(_ctx)

    async def start(self) -> None:
        if self._timer is None:
            self._closing = False
            self._timer = asyncio.get_running_loop().create_task(self._run_timer())

    async def stop(self) -> None:
        """Close every worker socket (1001 going away) and fail pending dispatches."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        for link in list(self._links.values()):
            link.conn.close()
            with contextlib.suppress(Exception):
                await link.ws.close(code=CloseCode.GOING_AWAY, message=b"server shutting down")
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(Unavailable("agent service stopped"))
        self._waiters.clear()
        self._tasks.cancel()

    # ------------------------------------------------------------------ API

    @property
    def workers(self) -> list[WorkerRecord]:
        return list(self.registry.workers.values())

    @property
    def jobs(self) -> dict[str, AgentJob]:
        return self.registry.jobs

    def has_workers(self, agent_name: str, job_type: int = agent_pb.JT_ROOM) -> bool:
        return self.registry.has_workers(agent_name, job_type)

    def dispatch_nowait(
        self,
        room_name: str,
        agent_name: str = "",
        job_type: int = agent_pb.JT_ROOM,
        metadata: str = "",
        dispatch_id: str = "",
        **extra: Any,
    ) -> AgentJob:
        """Create the job and offer it; return at once. Follow it through the hooks."""
        job, outputs = self.registry.dispatch(
            room_name,
            agent_name,
            now=self._now(),
            job_type=job_type,
            metadata=metadata,
            dispatch_id=dispatch_id,
            **extra,
        )
        self._apply(outputs)
        return job

    async def dispatch(
        self,
        room_name: str,
        agent_name: str = "",
        job_type: int = agent_pb.JT_ROOM,
        metadata: str = "",
        dispatch_id: str = "",
        *,
        timeout: float | None = None,
        **extra: Any,
    ) -> AgentJob:
        """Create a job and wait until a worker has it (JobAssignment sent), or a worker rejected
        it with ``terminate`` (the job is returned ended, JS_SUCCESS, ``end_reason`` says so).

        Raises :class:`roomline.errors.Unavailable` when no worker takes it (none registered for
        ``agent_name``, all full, all refused or silent) or on ``timeout``.
        ``extra``: room_sid, namespace, deployment, attributes, participant (see
        :meth:`WorkerRegistry.dispatch`).
        """
        job, outputs = self.registry.dispatch(
            room_name,
            agent_name,
            now=self._now(),
            job_type=job_type,
            metadata=metadata,
            dispatch_id=dispatch_id,
            **extra,
        )
        fut: asyncio.Future[AgentJob] = asyncio.get_running_loop().create_future()
        self._waiters[job.id] = fut
        self._apply(outputs)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self.terminate(job.id, "dispatch timed out")
            raise Unavailable(f"no agent worker took job {job.id} in {timeout} s") from None
        finally:
            self._waiters.pop(job.id, None)

    def terminate(self, job_id: str, reason: str = "") -> AgentJob:
        """Stop a job (JobTermination if a worker has it). Raises NotFound for an unknown id."""
        outputs = self.registry.terminate(job_id, self._now(), reason)
        self._apply(outputs)
        return self.registry.jobs[job_id]

    # ------------------------------------------------------------------ HTTP edge

    async def handle(self, request: web.Request) -> web.StreamResponse:
        token = _bearer(request)
        claims = None
        if token:
            try:
                claims = verify_token(token, self.keys)
            except TokenError as exc:
                return _error(401, f"invalid token: {exc.message}")
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat, autoping=True, max_msg_size=self.max_frame_size + 1024
        )
        if not ws.can_prepare(request).ok:
            return _error(404, "not a WebSocket request")
        if claims is None:
            return _error(401, "missing token")
        if not claims.video.agent:
            return _error(401, "token lacks the agent grant")
        if self._closing:
            return _error(503, "shutting down")
        if len(self._links) >= self.max_workers:
            return _error(503, f"at most {self.max_workers} agent workers may connect")
        await ws.prepare(request)

        loop = asyncio.get_running_loop()
        conn = WorkerConnection(
            now=loop.time(),
            register_timeout=self.register_timeout,
            info=self.info,
            max_frame_size=self.max_frame_size,
        )
        peer = request.remote or "?"
        link = _Link(conn, ws, claims.api_key, peer)
        link.writer = loop.create_task(self._write(link))
        self._links[conn.worker_id] = link
        assert conn.register_deadline is not None
        timer = loop.call_at(conn.register_deadline, self._register_deadline, link)
        log.info("agent worker connected", worker=conn.worker_id, peer=peer)
        try:
            await self._read(link)
        finally:
            timer.cancel()
            self._links.pop(conn.worker_id, None)
            conn.close()
            was_registered = conn.worker_id in self.registry.workers
            self._apply(self.registry.remove_worker(conn.worker_id, loop.time()))
            link.wake.set()
            if link.writer is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(link.writer, 2.0)
            if not ws.closed:
                code = conn.close_error.close_code if conn.close_error else CloseCode.NORMAL
                with contextlib.suppress(Exception):
                    await ws.close(code=code)
            log.info(
                "agent worker disconnected",
                worker=conn.worker_id,
                registered=was_registered,
                error=conn.close_error.message if conn.close_error else None,
            )
        return ws

    async def _read(self, link: _Link) -> None:
        conn, ws = link.conn, link.ws
        while not conn.closed:
            # No receive timeout: aiohttp restarts it after every ping, so a peer that only pings
            # would never time out. The register deadline is a timer (see handle()).
            msg = await ws.receive()
            if msg.type == WSMsgType.BINARY:
                conn.receive_data(msg.data)
            elif msg.type == WSMsgType.TEXT:
                conn.receive_text(msg.data)
            elif msg.type == WSMsgType.ERROR:
                # aiohttp reports oversize frames and protocol violations here.
                exc = ws.exception()
                log.warning("agent worker socket error", worker=conn.worker_id, error=str(exc))
                return
            else:  # CLOSE, CLOSING, CLOSED
                return
            self._handle_events(link)

    def _register_deadline(self, link: _Link) -> None:
        """Timer: close a connection that has not registered in time (the writer closes it)."""
        deadline = link.conn.register_deadline
        if deadline is not None:
            link.conn.check_deadline(max(asyncio.get_running_loop().time(), deadline))
            self._handle_events(link)

    def _handle_events(self, link: _Link) -> None:
        conn = link.conn
        now = asyncio.get_running_loop().time()
        outputs: list[Output] = []
        for event in conn.events_received():
            if isinstance(event, Registered):
                worker = self.registry.add_worker(conn, event, link.api_key, now)
                log.info(
                    "agent worker registered",
                    worker=worker.id,
                    agent=worker.agent_name,
                    job_type=agent_pb.JobType.Name(worker.job_type),  # type: ignore[arg-type]
                    version=worker.version,
                    peer=link.peer,
                )
                self._hook(self.on_worker_registered, worker)
            elif isinstance(event, ProtocolError) and event.fatal:
                log.warning(
                    "agent worker protocol error; closing",
                    worker=conn.worker_id,
                    error=event.message,
                )
            elif conn.worker_id in self.registry.workers:
                outputs += self.registry.handle_event(conn.worker_id, event, now)
            elif isinstance(event, ProtocolError):
                log.debug("agent worker", worker=conn.worker_id, note=event.message)
        self._apply(outputs)
        link.wake.set()

    async def _write(self, link: _Link) -> None:
        """The only task that writes to ``link.ws``: frames go out in the order queued."""
        conn, ws = link.conn, link.ws
        while True:
            await link.wake.wait()
            link.wake.clear()
            for frame in conn.data_to_send():
                if ws.closed:
                    break
                try:
                    await ws.send_bytes(frame)
                except (ConnectionError, RuntimeError) as exc:
                    log.info("agent worker write failed", worker=conn.worker_id, error=str(exc))
                    conn.close()
                    break
            if conn.closed:
                if conn.close_error is not None and not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.close(
                            code=conn.close_error.close_code,
                            message=conn.close_error.message[:120].encode(),
                        )
                return

    # ------------------------------------------------------------------ outputs and time

    def _now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def _apply(self, outputs: list[Output]) -> None:
        """Flush frames, resolve dispatch waiters, call hooks, re-arm the timer."""
        for link in self._links.values():
            link.wake.set()
        for out in outputs:
            if isinstance(out, JobAssigned):
                job = out.job
                log.info(
                    "agent job assigned",
                    job=job.id,
                    room=job.room_name,
                    agent=job.agent_name,
                    worker=job.worker_id,
                    identity=job.participant_identity,
                    resumed=out.resumed,
                )
                self._resolve(job)
                self._hook(self.on_job_started, job)
            elif isinstance(out, JobEnded):
                job = out.job
                log.info(
                    "agent job ended",
                    job=job.id,
                    room=job.room_name,
                    agent=job.agent_name,
                    status=agent_pb.JobStatus.Name(job.status),  # type: ignore[arg-type]
                    error=job.error or None,
                    reason=job.end_reason,
                )
                fut = self._waiters.get(job.id)
                if fut is not None and not fut.done():
                    if job.status == agent_pb.JS_FAILED:
                        fut.set_exception(Unavailable(f"{job.error} for agent {job.agent_name!r}"))
                    else:
                        fut.set_result(job)
                if out.was_assigned:
                    self._hook(self.on_job_ended, job)
            elif isinstance(out, JobOrphaned):
                log.warning("agent job lost its worker", job=out.job.id, worker=out.lost_worker_id)
                self._hook(self.on_job_orphaned, out.job)
            elif isinstance(out, JobRedispatching):
                log.info(
                    "agent job re-dispatched",
                    job=out.job.id,
                    room=out.job.room_name,
                    lost_worker=out.lost_worker_id,
                    old_identity=out.old_identity,
                )
                if self.on_job_redispatching is not None:
                    try:
                        self.on_job_redispatching(out.job, out.old_identity)
                    except Exception:
                        log.exception("agent hook failed", subject=out.job.id)
            elif isinstance(out, WorkerLog):
                log.debug("agent worker", worker=out.worker_id, note=out.message)
        self._timer_wake.set()

    def _resolve(self, job: AgentJob) -> None:
        fut = self._waiters.get(job.id)
        if fut is not None and not fut.done():
            fut.set_result(job)

    def _hook(self, hook: Callable[[Any], Any] | None, arg: AgentJob | WorkerRecord) -> None:
        if hook is None:
            return
        try:
            result = hook(arg)
            if asyncio.iscoroutine(result):
                self._tasks.spawn(result, "agent hook")
        except Exception:
            log.exception("agent hook failed", subject=arg.id)

    async def _run_timer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._timer_wake.clear()
            deadline = self.registry.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), timeout)
            try:
                self._apply(self.registry.tick(loop.time()))
            except Exception:  # pragma: no cover - a bug must not stop every deadline
                log.exception("agent registry tick failed")
                await asyncio.sleep(1.0)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query.get("access_token", "")


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")

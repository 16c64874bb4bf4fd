"""Starts, watches and ends agent job processes (one process per job, a warm pool of idle ones).

``agents.workers`` idle processes are kept ready (Python, PyAV and the agent API already imported),
so a dispatched job starts without paying the interpreter start-up. A job takes an idle process and
a new idle one is started behind it at once.

When no process is idle (jobs coming faster than processes start), the job queues for one and a
start is added for it, so there is always one start in flight per waiting job plus the pool's own
refill. Processes are handed out in the order they become ready, first to the longest-waiting job:
a job never waits for "its" cold start while another process is already ready, and one slow or
failing start cannot hold up any job (each waiting job fails only after :data:`ACQUIRE_TIMEOUT`). Each process has a JSON-lines control socketpair
(:mod:`roomline_agents.control`) and a second socketpair on which the supervisor hands over the job's
local-channel connection (SCM_RIGHTS) when the entrypoint calls ``ctx.connect()``.

The supervisor keeps its own duplicate of that connection until the job is over. If the process
crashes, the SFU therefore does not see the participant's socket close first (which would read as
an ordinary SIGNAL_CLOSE); the supervisor reports the failure, the owner removes the participant
with AGENT_ERROR, and only then is the duplicate closed. A job whose event loop stops sending
heartbeats for :data:`HANG_TIMEOUT` seconds is killed and reported the same way.

Spawning, stopping and exit logging are :class:`roomline.process.ProcessSupervisor`'s (which also
forwards the jobs' stderr log lines into the appliance's log).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from roomline.config import LoggingConfig
from roomline.process import Backoff, ProcessSupervisor, describe_exit
from roomline.tasks import TaskSet
from roomline_agents import control

log = structlog.get_logger(__name__)

#: A job whose event loop has not sent a heartbeat for this long is considered hung and killed.
#: Heartbeats come every second; 5 s tolerates a GC pause or a slow model load step.
HANG_TIMEOUT = 5.0
#: Seconds a stopped job may take to leave before it is killed.
STOP_GRACE = 5.0
#: Idle processes that fail to start are retried with this backoff (seconds), doubling to 30 s.
SPAWN_BACKOFF = 0.5
SPAWN_BACKOFF_MAX = 30.0
#: Seconds a new process may take to import and report Ready before it is killed as failed.
READY_TIMEOUT = 30.0
#: Seconds a job waits for a ready process (the pool's or one started for it) before it fails.
ACQUIRE_TIMEOUT = 30.0

#: (job id, state, error): "running", "success", "failed" as the job reports them, then always
#: "exited" when its process is gone (error set if it ended without reporting, crashed or hung).
OnStatus = Callable[[str, str, str], None]
#: (job id, participant identity) → error text or "" on success
OnRemove = Callable[[str, str, str], Awaitable[str]]
#: (job id, request) → the answer; see :meth:`roomline_agents.service.manager.AgentManager.sip_for_job`.
OnSip = Callable[[str, control.SipCall], Awaitable[control.Result]]


@dataclass
class JobSpec:
    """What the supervisor needs to run one job."""

    start: control.StartJob

    @property
    def job_id(self) -> str:
        return self.start.job_id


@dataclass
class JobProc:
    """One job process (idle or running a job)."""

    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    fd_sock: socket.socket
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_beat: float = field(default_factory=time.monotonic)
    job: JobSpec | None = None
    channel: socket.socket | None = None
    final: str = ""  # "success" | "failed" once the job reported its end
    stop_deadline: float | None = None
    killed_reason: str = ""
    acquired: float = 0.0  # monotonic time the job was handed this process

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, msg: control.Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(control.encode(msg))


class JobSupervisor:
    """Runs agent jobs in their own processes; see the module docstring."""

    def __init__(
        self,
        idle_processes: int,
        channel_path: str,
        on_status: OnStatus,
        on_remove: OnRemove,
        python: str = sys.executable,
        hang_timeout: float = HANG_TIMEOUT,
        log_config: LoggingConfig | None = None,
    ) -> None:
        self.idle_target = idle_processes
        self.channel_path = channel_path
        self._on_status = on_status
        self._on_remove = on_remove
        #: Answers agents' :class:`~roomline_agents.control.SipCall` (set by the appliance).
        self.on_sip: OnSip | None = None
        # The working directory is importable too: registries name agent modules relative to it.
        self._procs = ProcessSupervisor(
            "agent-job",
            python=python,
            backoff=Backoff(SPAWN_BACKOFF, SPAWN_BACKOFF_MAX),
            stop_grace=STOP_GRACE,
            extra_paths=(os.getcwd(),),
        )
        self.hang_timeout = hang_timeout
        #: Job processes log like the main process (level and renderer) to the stderr they inherit.
        self.log_config = log_config or LoggingConfig()
        self.idle: list[JobProc] = []
        self.busy: dict[str, JobProc] = {}
        #: Starts in flight (counted before their process exists) and those processes once it does.
        self.starting = 0
        self.starting_procs: list[JobProc] = []
        #: Jobs waiting for a process, oldest first (job id → the future the process is handed to).
        self._waiters: dict[str, asyncio.Future[JobProc]] = {}
        self.spawn_failures = 0
        self._retry_at = 0.0
        self.killed_hung = 0
        #: Processes started in all; jobs that found no idle process and waited for one.
        self.spawned = 0
        self.waited = 0
        self._stopping = False
        self._tasks = TaskSet("agent job supervisor")
        self._watchdog: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        self._refill()

    async def stop(self) -> None:
        self._stopping = self._procs.stopping = True
        for fut in self._waiters.values():
            fut.cancel()
        self._waiters.clear()
        for jp in list(self.busy.values()):
            jp.send(control.StopJob(reason="appliance stopping"))
        idle = [*self.idle, *self.starting_procs]  # a starting one reads this once it is up
        for jp in idle:
            jp.send(control.Shutdown())
        procs = [jp.proc for jp in [*idle, *self.busy.values()]]
        # Asked above; SIGTERM after STOP_GRACE, SIGKILL after another second.
        await asyncio.gather(*(self._procs.stop(p, 1.0, polite_wait=STOP_GRACE) for p in procs))
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._tasks.close()
        await self._procs.close()

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    @property
    def waiting(self) -> int:
        """Jobs waiting for a process."""
        return len(self._waiters)

    def _refill(self) -> None:
        """Start processes until idle + starting covers the pool target plus every waiting job.

        Not while a failed start's backoff runs (that start's task calls this again after it)."""
        if self._stopping or time.monotonic() < self._retry_at:
            return
        while len(self.idle) + self.starting < self.idle_target + len(self._waiters):
            self.starting += 1
            self._spawn_task(self._start_one())

    async def _start_one(self) -> None:
        jp: JobProc | None = None
        error = ""
        try:
            jp = await self._spawn()
            self.starting_procs.append(jp)
            error = await self._until_ready(jp)
        except OSError as exc:
            error = str(exc) or type(exc).__name__
        finally:
            self.starting -= 1
            if jp is not None and jp in self.starting_procs:
                self.starting_procs.remove(jp)
        if error or jp is None:
            if jp is not None and jp.proc.returncode is None:
                jp.proc.kill()
            self.spawn_failures += 1
            delay = self._procs.backoff.after_failures(self.spawn_failures)
            self._retry_at = time.monotonic() + delay
            log.error("cannot start an agent job process", error=error, retry_in=delay)
            await asyncio.sleep(delay)
            self._refill()
            return
        self.spawn_failures = 0
        self._offer(jp)

    async def _until_ready(self, jp: JobProc) -> str:
        """Wait for ``jp``'s Ready; "" or why it will never come (exited, or too slow)."""
        ready = asyncio.ensure_future(jp.ready.wait())
        exited = asyncio.ensure_future(jp.proc.wait())
        try:
            await asyncio.wait(
                {ready, exited}, timeout=READY_TIMEOUT, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
            exited.cancel()
        if jp.proc.returncode is not None:
            return f"exited before it was ready ({describe_exit(jp.proc.returncode)})"
        if not jp.ready.is_set():
            return f"not ready after {READY_TIMEOUT:.0f} s"
        return ""

    def _offer(self, jp: JobProc) -> None:
        """A ready process: to the longest-waiting job, else into the idle pool."""
        if self._stopping:
            jp.send(control.Shutdown())
            return
        while self._waiters:
            job_id = next(iter(self._waiters))
            fut = self._waiters.pop(job_id)
            if not fut.done():
                fut.set_result(jp)
                return
        self.idle.append(jp)

    def _take_idle(self) -> JobProc | None:
        while self.idle:
            jp = self.idle.pop(0)
            if jp.proc.returncode is None:
                return jp
        return None

    async def _spawn(self) -> JobProc:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd_parent, fd_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await self._procs.spawn(
                "roomline_agents.sdk.worker",
                [
                    "--control-fd",
                    str(child.fileno()),
                    "--fd-socket",
                    str(fd_child.fileno()),
                    "--log-level",
                    self.log_config.level,
                    "--log-format",
                    self.log_config.format,
                ],
                pass_fds=(child.fileno(), fd_child.fileno()),
            )
        finally:
            child.close()
            fd_child.close()
        fd_parent.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        jp = JobProc(proc=proc, writer=writer, fd_sock=fd_parent)
        self.spawned += 1
        self._spawn_task(self._run(jp, reader))
        return jp

    # ------------------------------------------------------------------ jobs

    async def launch(self, spec: JobSpec) -> bool:
        """Hand ``spec`` to an idle process, or else to the first process that becomes ready.

        Returns False if the job was stopped (:meth:`stop_job`) before it got a process; raises
        TimeoutError if none was ready within :data:`ACQUIRE_TIMEOUT`.
        """
        if self._stopping:
            raise RuntimeError("agent supervisor is stopping")
        if spec.job_id in self.busy or spec.job_id in self._waiters:
            raise RuntimeError(f"agent job {spec.job_id} is already launched")
        t0 = time.monotonic()
        jp = self._take_idle()
        warm = jp is not None
        if not warm:
            self.waited += 1
        while jp is None:
            got = await self._wait_for_process(spec.job_id)
            if got is None:
                return False
            # It may have died in the moment since it was handed over: wait for another.
            if got.proc.returncode is None:
                jp = got
        jp.job = spec
        jp.last_beat = jp.acquired = time.monotonic()
        self.busy[spec.job_id] = jp
        jp.send(spec.start)
        self._refill()
        log.info(
            "agent job process acquired",
            job=spec.job_id,
            pid=jp.pid,
            warm=warm,
            waited_ms=round((time.monotonic() - t0) * 1000),
            idle=len(self.idle),
            starting=self.starting,
        )
        return True

    async def _wait_for_process(self, job_id: str) -> JobProc | None:
        """Queue ``job_id`` for the next ready process; None if the job was stopped meanwhile."""
        fut: asyncio.Future[JobProc] = asyncio.get_running_loop().create_future()
        self._waiters[job_id] = fut
        self._refill()
        try:
            await asyncio.wait({fut}, timeout=ACQUIRE_TIMEOUT)
        except asyncio.CancelledError:
            self._waiters.pop(job_id, None)
            if fut.done() and not fut.cancelled():
                self._offer(fut.result())  # handed over as we were cancelled: not lost
            fut.cancel()
            raise
        self._waiters.pop(job_id, None)
        if fut.cancelled():
            return None
        if not fut.done():
            fut.cancel()
            raise TimeoutError(f"no agent job process was ready within {ACQUIRE_TIMEOUT:.0f} s")
        return fut.result()

    def stop_job(self, job_id: str, reason: str) -> bool:
        """Ask a job to leave; it is killed if it has not exited after :data:`STOP_GRACE`.

        A job still waiting for a process is dropped from the queue (its launch returns False)."""
        waiter = self._waiters.pop(job_id, None)
        if waiter is not None:
            waiter.cancel()
            return True
        jp = self.busy.get(job_id)
        if jp is None:
            return False
        if jp.stop_deadline is None:
            jp.stop_deadline = time.monotonic() + STOP_GRACE
            jp.send(control.StopJob(reason=reason))
        return True

    async def _run(self, jp: JobProc, reader: asyncio.StreamReader) -> None:
        read = asyncio.get_running_loop().create_task(self._read(jp, reader))
        try:
            code = await self._procs.wait(jp.proc, **({"job": jp.job.job_id} if jp.job else {}))
        finally:
            read.cancel()
            await asyncio.gather(read, return_exceptions=True)
            jp.writer.close()
        if jp in self.idle:
            self.idle.remove(jp)
            self._refill()
        spec = jp.job
        if spec is not None:
            self.busy.pop(spec.job_id, None)
            error = ""
            if not jp.final and jp.stop_deadline is None:
                error = jp.killed_reason or f"agent process exited ({describe_exit(code)})"
                log.warning("agent job ended abnormally", job=spec.job_id, error=error)
            # "exited" always comes last: the owner settles the job and the participant here.
            self._on_status(spec.job_id, "exited", error)
            self._refill()
        # Only now may the SFU see the job's channel close (see the module docstring).
        if jp.channel is not None:
            jp.channel.close()
        jp.fd_sock.close()

    async def _read(self, jp: JobProc, reader: asyncio.StreamReader) -> None:
        try:
            async for msg in control.messages(reader):
                await self._on_message(jp, msg)
        except (ConnectionError, ValueError):
            return

    async def _on_message(self, jp: JobProc, msg: control.Message) -> None:
        jp.last_beat = time.monotonic()
        if isinstance(msg, control.Ready):
            jp.ready.set()
        elif isinstance(msg, control.ConnectRequest):
            await self._connect(jp)
        elif isinstance(msg, control.JobStatus) and jp.job is not None:
            if msg.state in ("success", "failed"):
                jp.final = msg.state
            self._on_status(jp.job.job_id, msg.state, msg.error)
        elif isinstance(msg, control.RemoveParticipant) and jp.job is not None:
            self._spawn_task(self._remove(jp, msg))
        elif isinstance(msg, control.SipCall) and jp.job is not None:
            self._spawn_task(self._sip(jp, msg))

    async def _sip(self, jp: JobProc, msg: control.SipCall) -> None:
        assert jp.job is not None
        if self.on_sip is None:
            jp.send(
                control.Result(
                    request_id=msg.request_id, ok=False, error="SIP is not available",
                    code="unavailable",
                )
            )  # fmt: skip
            return
        try:
            res = await self.on_sip(jp.job.job_id, msg)
        except Exception as exc:  # the agent gets an error, the supervisor lives on
            log.exception("sip request for agent job failed")
            res = control.Result(
                request_id=msg.request_id, ok=False, error=str(exc) or "error", code="internal"
            )
        jp.send(res)

    async def _connect(self, jp: JobProc) -> None:
        if jp.channel is not None:
            jp.send(control.ConnectFailed(error="already connected"))
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.channel_path)
            socket.send_fds(jp.fd_sock, [b"c"], [sock.fileno()])
        except OSError as exc:
            sock.close()
            jp.send(control.ConnectFailed(error=f"cannot reach the local channel: {exc}"))
            return
        jp.channel = sock
        log.info(
            "agent job connected",
            job=jp.job.job_id if jp.job else "",
            pid=jp.pid,
            since_acquired_ms=round((time.monotonic() - jp.acquired) * 1000),
        )

    async def _remove(self, jp: JobProc, msg: control.RemoveParticipant) -> None:
        assert jp.job is not None
        try:
            error = await self._on_remove(jp.job.job_id, msg.identity, msg.destination)
        except Exception as exc:  # the agent gets an error, the supervisor lives on
            log.exception("remove_participant for agent job failed", job=jp.job.job_id)
            error = str(exc) or type(exc).__name__
        jp.send(control.Result(request_id=msg.request_id, ok=not error, error=error))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for jp in list(self.busy.values()):
                if jp.proc.returncode is not None or jp.killed_reason:
                    continue
                if now - jp.last_beat > self.hang_timeout:
                    jp.killed_reason = (
                        f"agent job hung (no heartbeat for {self.hang_timeout:.0f} s)"
                    )
                    self.killed_hung += 1
                    log.warning("killing agent job process", pid=jp.pid, reason=jp.killed_reason)
                    jp.proc.kill()
                elif jp.stop_deadline is not None and now > jp.stop_deadline:
                    jp.killed_reason = "agent job did not stop in time"
                    jp.proc.kill()

    def metrics(self) -> dict[str, int]:
        return {
            "idle": len(self.idle),
            "busy": len(self.busy),
            "starting": self.starting,
            "waiting": len(self._waiters),
            "spawned": self.spawned,
            "waited": self.waited,
            "killed_hung": self.killed_hung,
        }

"""An agent job process: ``python -m roomline_agents.sdk.worker --control-fd N --fd-socket M``.

Started idle by the supervisor (imports done, so a job starts in milliseconds), it runs exactly one
job and exits. One process per job keeps a crashing or CPU-hogging agent away from other rooms'
agents, from SIP calls and from the SFU: the worst it can do is lose its own job.

* control (``--control-fd``): JSON lines (:mod:`roomline_agents.control`). A heartbeat every
  second from this event loop lets the supervisor detect a job that blocks the loop.
* logging: stdlib loggers, rendered by :func:`roomline.log.configure_logging` as the main process
  renders its own (``--log-level``/``--log-format``, passed on from ``logging.*``), to the stderr
  both share; every line carries the job process's ``pid``, and its job's ``job``/``room``/``agent``.
* ``--fd-socket``: receives the local-channel connection (SCM_RIGHTS) the supervisor opens when the
  entrypoint calls ``ctx.connect()``. The supervisor keeps a duplicate of it so that if this process
  dies, the SFU does not see the socket close before the supervisor has reported the failure with
  reason AGENT_ERROR.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import logging
import os
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from roomline.config import LoggingConfig
from roomline.log import configure_logging
from roomline_agents import control
from roomline_agents.sdk.job import JobContext, JobInfo

log = logging.getLogger("roomline_agents.sdk.worker")

HEARTBEAT_INTERVAL = 1.0
#: Seconds shutdown callbacks may take before the job leaves anyway.
SHUTDOWN_GRACE = 5.0
#: Seconds a failed job waits for the supervisor to remove it (AGENT_ERROR) before exiting.
FAILED_WAIT = 3.0


def load_entrypoint(target: str) -> Callable[[JobContext], Awaitable[Any]]:
    """Resolve ``"package.module:function"`` (attribute paths allowed after the colon)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


def _error_text(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"[:1000]


class JobProcess:
    """The job side of the control protocol."""

    def __init__(self, control_sock: socket.socket, fd_sock: socket.socket) -> None:
        self._control_sock = control_sock
        self._fd_sock = fd_sock
        self._writer: asyncio.StreamWriter | None = None
        self._ctx: JobContext | None = None
        self._job_task: asyncio.Task[None] | None = None
        self._connect_waiter: asyncio.Future[socket.socket] | None = None
        self._requests: dict[int, asyncio.Future[control.Result]] = {}
        self._request_ids = itertools.count(1)
        self._done = asyncio.Event()

    def send(self, msg: control.Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(control.encode(msg))

    async def run(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._control_sock)
        self.send(control.Ready(pid=os.getpid()))
        loop = asyncio.get_running_loop()
        beat = loop.create_task(self._heartbeat())
        read = loop.create_task(self._read(reader))
        await self._done.wait()
        beat.cancel()
        read.cancel()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer.drain(), 1.0)
            except (TimeoutError, ConnectionError):
                pass

    async def _heartbeat(self) -> None:
        while True:
            self.send(control.Heartbeat())
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            async for msg in control.messages(reader):
                self._on_message(msg)
        except (ConnectionError, ValueError):
            pass
        # The supervisor is gone: nobody can report for us any more.
        if self._ctx is not None:
            self._ctx.shutdown("supervisor gone")
            if self._job_task is not None:
                await asyncio.wait({self._job_task}, timeout=SHUTDOWN_GRACE)
        self._done.set()

    def _on_message(self, msg: control.Message) -> None:
        if isinstance(msg, control.StartJob):
            if self._job_task is None:
                self._job_task = asyncio.get_running_loop().create_task(self._run_job(msg))
        elif isinstance(msg, control.StopJob):
            if self._ctx is not None:
                self._ctx.shutdown(msg.reason or "stopped")
            elif self._job_task is None:
                self._done.set()
        elif isinstance(msg, control.ConnectFailed):
            if self._connect_waiter is not None and not self._connect_waiter.done():
                self._connect_waiter.set_exception(ConnectionError(msg.error))
        elif isinstance(msg, control.Result):
            fut = self._requests.pop(msg.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, control.Shutdown):
            if self._ctx is not None:
                self._ctx.shutdown("appliance stopping")
            else:
                self._done.set()

    async def _open_channel(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[socket.socket] = loop.create_future()
        self._connect_waiter = waiter
        self.send(control.ConnectRequest())
        receive: asyncio.Future[Any] = loop.run_in_executor(
            None, socket.recv_fds, self._fd_sock, 16, 1
        )
        futures: set[asyncio.Future[Any]] = {waiter, receive}
        done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            waiter.result()  # raises ConnectionError
        _msg, fds, _flags, _addr = receive.result()
        if not fds:
            raise ConnectionError("supervisor sent no channel socket")
        return socket.socket(fileno=fds[0])

    async def _remove_participant(self, identity: str, destination: str = "") -> None:
        request_id = next(self._request_ids)
        fut: asyncio.Future[control.Result] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = fut
        self.send(
            control.RemoveParticipant(
                request_id=request_id, identity=identity, destination=destination
            )
        )
        result = await asyncio.wait_for(fut, 10.0)
        if not result.ok:
            raise RuntimeError(result.error)

    async def _sip_call(self, method: str, request_json: str, timeout: float) -> control.Result:
        """Send a :class:`~roomline_agents.control.SipCall` and wait for its result."""
        request_id = next(self._request_ids)
        fut: asyncio.Future[control.Result] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = fut
        self.send(control.SipCall(request_id=request_id, method=method, request=request_json))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._requests.pop(request_id, None)

    async def _run_job(self, start: control.StartJob) -> None:
        # Every line this job logs (its tasks inherit this context) says whose it is.
        structlog.contextvars.bind_contextvars(
            job=start.job_id, room=start.room, agent=start.agent_name
        )
        info = JobInfo(
            id=start.job_id,
            dispatch_id=start.dispatch_id,
            agent_name=start.agent_name,
            room_name=start.room,
            identity=start.identity,
            metadata=start.metadata,
            attributes=dict(start.attributes),
        )
        ctx = JobContext(
            info, start.token, self._open_channel, self._remove_participant, self._sip_call
        )
        self._ctx = ctx
        try:
            entrypoint = load_entrypoint(start.target)
            self.send(control.JobStatus(state="running"))
            await self._run_entrypoint(ctx, entrypoint)
        except Exception as exc:
            log.exception("agent job failed")
            self.send(control.JobStatus(state="failed", error=_error_text(exc)))
            # Stay in the room: the supervisor removes us with AGENT_ERROR, so the room sees why.
            if ctx.room.isconnected():
                await asyncio.wait({asyncio.ensure_future(ctx.wait_for_shutdown())}, timeout=3.0)
            self._done.set()
            return
        await self._run_shutdown(ctx)
        self.send(control.JobStatus(state="success"))
        self._done.set()

    async def _run_entrypoint(
        self, ctx: JobContext, entrypoint: Callable[[JobContext], Awaitable[Any]]
    ) -> None:
        """Run until the entrypoint returns without a room, or the job is shut down.

        A shutdown (stop request, room disconnected) cancels an entrypoint still running, as
        LiveKit Agents do; returning while connected keeps the job alive until then.
        """
        loop = asyncio.get_running_loop()
        task: asyncio.Future[Any] = asyncio.ensure_future(entrypoint(ctx))
        stop = loop.create_task(ctx.wait_for_shutdown())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # raises the entrypoint's exception
                if ctx.room.isconnected():
                    await stop
                return
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        finally:
            stop.cancel()

    async def _run_shutdown(self, ctx: JobContext) -> None:
        for cb in ctx._callbacks:
            try:
                await asyncio.wait_for(cb(), SHUTDOWN_GRACE)
            except Exception:
                log.exception("shutdown callback failed")
        await ctx.room.disconnect()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="roomline_agents.sdk.worker")
    ap.add_argument("--control-fd", type=int, required=True)
    ap.add_argument("--fd-socket", type=int, required=True)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-format", default="auto", choices=("auto", "json", "console"))
    args = ap.parse_args(argv)
    configure_logging(LoggingConfig(level=args.log_level, format=args.log_format))
    structlog.contextvars.bind_contextvars(pid=os.getpid())
    # Heavy imports happen here, while the process is idle, not when a call is waiting.
    import roomline_agents.sdk.room  # noqa: F401
    import sfu.local.codec  # noqa: F401

    control_sock = socket.socket(fileno=args.control_fd)
    fd_sock = socket.socket(fileno=args.fd_socket)
    try:
        import uvloop

        uvloop.run(JobProcess(control_sock, fd_sock).run())
    except ImportError:
        asyncio.run(JobProcess(control_sock, fd_sock).run())
    sys.stdout.flush()
    sys.stderr.flush()
    # Agent code may leave threads (TTS, model runtimes) behind; they must not keep the job alive.
    os._exit(0)


if __name__ == "__main__":
    main()

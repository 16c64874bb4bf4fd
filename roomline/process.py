"""Worker processes of the appliance: spawn, restart with backoff, stop with a grace, log the exit.

The SIP bridge (``python -m bridge.worker``) and the agents (``python -m roomline_agents.sdk.worker``)
both run their work in child processes that talk to the main process over socketpairs inherited with
``pass_fds``. :class:`ProcessSupervisor` is the part they share:

* :meth:`ProcessSupervisor.spawn` starts ``python -m <module>`` with the repository importable, the
  main process's log level (``ROOMLINE_LOGGING_LEVEL``), and stdout and stderr piped: every line the
  child writes is re-emitted through the main process's structlog setup, tagged with the child's
  name and pid, so ``roomline serve`` produces one parseable stream. Children configure
  :func:`roomline.log.configure_worker_logging`, which writes JSON lines to stderr; anything else
  (pjsua's console log on stdout, a traceback before logging is set up) is forwarded as a plain
  ``event`` string with ``stream`` naming where it came from.
* :meth:`ProcessSupervisor.keep_running` restarts a child that exits, with exponential backoff
  (:class:`Backoff`) that resets once a run lasted ``stable_after`` seconds.
* :meth:`ProcessSupervisor.stop` sends SIGTERM and, after a grace, SIGKILL.
* :meth:`ProcessSupervisor.wait` waits for the exit and logs it with the exit code or signal name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roomline.log import get_logger

__all__ = ["Backoff", "ProcessSupervisor", "child_env", "describe_exit"]

#: The directory holding the ``roomline``, ``sfu``, ``bridge`` ... packages.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Longest stderr line forwarded whole; longer ones (a runaway C library) are cut.
MAX_LINE = 1 << 20
#: Environment variable carrying the log level to children (the config key ``logging.level``).
LOG_LEVEL_ENV = "ROOMLINE_LOGGING_LEVEL"

log = get_logger("roomline.process")


@dataclass
class Backoff:
    """Delays between restarts: ``initial`` doubling up to ``maximum``; back to ``initial`` after a
    run of at least ``stable_after`` seconds (a worker that ran that long did not crash-loop)."""

    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 30.0

    def __post_init__(self) -> None:
        self._next = self.initial

    def after_run(self, ran_for: float) -> float:
        """The delay before the next start, given how long the last run lasted."""
        if ran_for >= self.stable_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def after_failures(self, failures: int) -> float:
        """The delay after ``failures`` consecutive failed starts (1 → ``initial``)."""
        return float(min(self.initial * 2 ** min(max(failures - 1, 0), 16), self.maximum))


def describe_exit(returncode: int | None) -> str:
    """``"exit code 1"``, ``"signal SIGKILL"`` (asyncio reports a signal as ``-signum``)."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def child_env(extra_paths: Sequence[str] = ()) -> dict[str, str]:
    """This environment, with the repository (and ``extra_paths``) first on ``PYTHONPATH`` and the
    main process's log level in ``ROOMLINE_LOGGING_LEVEL``."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *extra_paths]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[LOG_LEVEL_ENV] = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    return env


class ProcessSupervisor:
    """Runs one kind of Python child process (``name`` appears on every log line about it)."""

    def __init__(
        self,
        name: str,
        *,
        python: str = sys.executable,
        backoff: Backoff | None = None,
        stop_grace: float = 5.0,
        extra_paths: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.python = python
        self.backoff = backoff if backoff is not None else Backoff()
        self.stop_grace = stop_grace
        self.extra_paths = tuple(extra_paths)
        self.stopping = False
        self._forwarders: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ spawn / wait / stop

    async def spawn(
        self, module: str, args: Sequence[str] = (), *, pass_fds: Collection[int] = ()
    ) -> asyncio.subprocess.Process:
        """Start ``python -m module *args``; the fds in ``pass_fds`` stay open in the child."""
        proc = await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            module,
            *args,
            pass_fds=tuple(pass_fds),
            env=child_env(self.extra_paths),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
        )
        log.debug("process started", process=self.name, pid=proc.pid)
        for stream_name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            if stream is not None:
                task = asyncio.get_running_loop().create_task(
                    self._forward(proc.pid, stream_name, stream)
                )
                self._forwarders.add(task)
                task.add_done_callback(self._forwarders.discard)
        return proc

    async def wait(self, proc: asyncio.subprocess.Process, **fields: Any) -> int:
        """Wait for ``proc`` to exit; log the exit code or signal. Returns the return code."""
        code = await proc.wait()
        level = "info" if code == 0 or self.stopping else "warning"
        getattr(log, level)(
            "process exited", process=self.name, pid=proc.pid, status=describe_exit(code), **fields
        )
        return code

    async def stop(
        self, proc: asyncio.subprocess.Process, grace: float | None = None, polite_wait: float = 0.0
    ) -> int:
        """SIGTERM, then SIGKILL if ``proc`` is still running ``grace`` seconds later.

        ``polite_wait``: the caller already asked the child to leave over its control channel;
        give it that long to exit on its own before the SIGTERM.
        """
        grace = self.stop_grace if grace is None else grace
        if proc.returncode is None and polite_wait > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), polite_wait)
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                proc.terminate()
            try:
                return await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                log.warning(
                    "process ignored SIGTERM; killing", process=self.name, pid=proc.pid, grace=grace
                )
                with suppress(ProcessLookupError):
                    proc.kill()
        return await proc.wait()

    # ------------------------------------------------------------------ restart loop

    async def keep_running(
        self,
        run_once: Callable[[], Awaitable[object]],
        *,
        on_restart: Callable[[float], None] | None = None,
        **fields: Any,
    ) -> None:
        """Call ``run_once`` (spawn a child and wait for it) again and again until :attr:`stopping`,
        sleeping :class:`Backoff` delays in between; ``on_restart(delay)`` before each sleep."""
        while not self.stopping:
            started = time.monotonic()
            try:
                await run_once()
            except OSError as exc:
                log.error("cannot start process", process=self.name, error=str(exc), **fields)
            if self.stopping:
                return
            delay = self.backoff.after_run(time.monotonic() - started)
            if on_restart is not None:
                on_restart(delay)
            log.warning("restarting process", process=self.name, delay_s=delay, **fields)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Stop restarting; wait for the stderr forwarders of exited children to drain."""
        self.stopping = True
        if self._forwarders:
            await asyncio.wait(set(self._forwarders), timeout=1.0)

    # ------------------------------------------------------------------ child output → main log

    async def _forward(self, pid: int, stream_name: str, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # longer than MAX_LINE: forward what fits, drop the rest
                raw = await stream.read(MAX_LINE)
            except (ConnectionError, asyncio.CancelledError):
                return
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:
                forward_line(self.name, pid, line, stream_name)


def forward_line(process: str, pid: int, line: str, stream: str = "stderr") -> None:
    """Re-emit one output line of a child: its JSON fields if it wrote a JSON object, else the
    text as ``event`` (with ``stream``: stdout or stderr). ``timestamp`` and ``level`` are
    re-stamped by the main process's setup."""
    fields: dict[str, Any]
    try:
        parsed = json.loads(line) if line.startswith("{") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        fields = parsed
        event = str(fields.pop("event", ""))
        level = str(fields.pop("level", "info")).lower()
    else:
        fields, event, level = {"stream": stream}, line, "info"
    fields.pop("timestamp", None)
    logger_name = str(fields.pop("logger", process))
    fields.setdefault("process", process)
    fields.setdefault("pid", pid)
    if level not in ("debug", "info", "warning", "error", "critical"):
        level = "info"
    getattr(get_logger(logger_name), level)(event, **fields)

"""roomline/process.py: spawn with pass_fds, stderr forwarding, backoff restarts, SIGTERM/SIGKILL."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from roomline.config import LoggingConfig
from roomline.log import configure_logging
from roomline.process import Backoff, ProcessSupervisor, describe_exit, forward_line

CHILD = "roomline_harness.child_process"


@pytest.fixture
def main_log() -> Iterator[io.StringIO]:
    """The main process's log as JSON lines in a buffer."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(LoggingConfig(level="debug", format="json"), stream=stream)
    yield stream
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-signal.SIGTERM) == "signal SIGTERM"
    assert describe_exit(None) == "still running"


def test_backoff_doubles_caps_and_resets_after_a_stable_run() -> None:
    b = Backoff(initial=0.5, maximum=3.0, stable_after=10.0)
    assert [b.after_run(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.after_run(10.0) == 0.5  # ran long enough: not a crash loop
    assert b.after_run(0.1) == 1.0
    assert [b.after_failures(n) for n in (1, 2, 3, 9)] == [0.5, 1.0, 2.0, 3.0]


async def test_spawn_passes_fds_and_forwards_stderr_into_the_main_log(
    main_log: io.StringIO,
) -> None:
    sup = ProcessSupervisor("test-child")
    r, w = os.pipe()
    try:
        proc = await sup.spawn(CHILD, ["--log", "--write-fd", str(w)], pass_fds=(w,))
    finally:
        os.close(w)
    assert await sup.wait(proc) == 0
    assert os.read(r, 16) == b"hello"
    os.close(r)
    await sup.close()
    got = {e["event"]: e for e in events(main_log)}
    child = got["child event"]
    assert child["answer"] == 42 and child["logger"] == "child.structlog"
    assert child["process"] == "test-child" and child["pid"] == proc.pid
    stdlib = got["stdlib says hi"]
    assert stdlib["level"] == "warning" and stdlib["logger"] == "child.stdlib"
    assert stdlib["process"] == "test-child"
    plain = got["plain text from a C library"]
    assert plain["process"] == "test-child" and plain["pid"] == proc.pid
    assert plain["stream"] == "stderr" and got["pjsua console line"]["stream"] == "stdout"
    exited = got["process exited"]
    assert exited["status"] == "exit code 0" and exited["pid"] == proc.pid


async def test_stop_sends_sigterm_then_sigkill_after_the_grace(main_log: io.StringIO) -> None:
    sup = ProcessSupervisor("test-child")
    polite = await sup.spawn(CHILD, ["--sleep", "30"])
    r, w = os.pipe()
    try:  # the child writes to the pipe once SIGTERM is ignored
        stubborn = await sup.spawn(
            CHILD, ["--ignore-term", "--write-fd", str(w), "--sleep", "30"], pass_fds=(w,)
        )
    finally:
        os.close(w)
    assert await asyncio.get_running_loop().run_in_executor(None, os.read, r, 5) == b"hello"
    os.close(r)
    assert await sup.stop(polite, grace=5.0) == -signal.SIGTERM
    assert await sup.stop(stubborn, grace=0.5) == -signal.SIGKILL
    await sup.close()
    assert any(e["event"] == "process ignored SIGTERM; killing" for e in events(main_log))


async def test_keep_running_restarts_with_backoff_until_stopping(main_log: io.StringIO) -> None:
    sup = ProcessSupervisor("test-child", backoff=Backoff(initial=0.05, maximum=0.1))
    delays: list[float] = []
    codes: list[int] = []

    async def run_once() -> None:
        proc = await sup.spawn(CHILD, ["--exit", "3"])
        codes.append(await sup.wait(proc, slot=1))
        if len(codes) == 3:
            sup.stopping = True

    await asyncio.wait_for(sup.keep_running(run_once, on_restart=delays.append, slot=1), 30)
    await sup.close()
    assert codes == [3, 3, 3] and delays == [0.05, 0.1]
    exits = [e for e in events(main_log) if e["event"] == "process exited"]
    assert [e["status"] for e in exits] == ["exit code 3"] * 3
    assert exits[0]["level"] == "warning" and exits[0]["slot"] == 1
    assert [e["delay_s"] for e in events(main_log) if e["event"] == "restarting process"] == [
        0.05,
        0.1,
    ]


def test_forward_line_keeps_json_fields_and_wraps_text(main_log: io.StringIO) -> None:
    forward_line("w", 7, json.dumps({"event": "e", "level": "error", "x": 1, "logger": "a.b"}))
    forward_line("w", 7, "{not json")
    forward_line("w", 7, json.dumps({"event": "odd", "level": "loud"}))
    first, second, third = events(main_log)
    assert (first["event"], first["level"], first["x"], first["logger"]) == ("e", "error", 1, "a.b")
    assert (first["process"], first["pid"]) == ("w", 7)
    assert (second["event"], second["level"], second["logger"]) == ("{not json", "info", "w")
    assert second["stream"] == "stderr" and "stream" not in first
    assert third["level"] == "info"

"""The SIP front against third-party tools: SIPp workers and callers, sipvicious scanners.

Workers are ``sipp`` UAS instances on loopback (scenarios in ``sipp/``: one answers 200, one
plays a full worker answering 486); callers are ``sipp -sn uac`` and the Python UAC. The scanner
test runs Debian's sipvicious ``svmap``/``svwar`` against the front and expects nothing back.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.service.front import FrontOptions, FrontWorker, KamailioFront
from roomline_harness.front_sip import (
    free_ports,
    open_uac,
    request,
    start_worker,
    status_of,
)

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "sipp"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed"),
    pytest.mark.timeout(120),
]


@dataclass
class SippWorker:
    port: int
    proc: asyncio.subprocess.Process
    message_file: Path

    def invites(self) -> int:
        try:
            text = self.message_file.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return len(re.findall(r"^INVITE sip:", text, re.M))

    def options(self) -> int:
        try:
            text = self.message_file.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return len(re.findall(r"^OPTIONS sip:", text, re.M))


async def _spawn(*args: str, cwd: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 3.0)
        except (ProcessLookupError, TimeoutError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()


async def start_sipp_worker(port: int, scenario: str, run_dir: str) -> SippWorker:
    msg = Path(run_dir) / f"worker-{port}.msg"
    proc = await _spawn(
        "sipp",
        "-sf",
        str(SCENARIOS / scenario),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-nostdin",
        "-timeout",
        "90",
        "-trace_msg",
        "-message_file",
        str(msg),
        cwd=run_dir,
    )
    return SippWorker(port, proc, msg)


@pytest.fixture
async def sipp_front() -> AsyncIterator[tuple[KamailioFront, int, list[SippWorker], str]]:
    if shutil.which("sipp") is None:
        pytest.skip("sipp not installed")
    run_dir = tempfile.mkdtemp(prefix="front-", dir="/tmp")
    ports = free_ports(4)
    a, b, busy, front_port = ports
    workers = [
        await start_sipp_worker(a, "worker_ok.xml", run_dir),
        await start_sipp_worker(b, "worker_ok.xml", run_dir),
        await start_sipp_worker(busy, "worker_busy.xml", run_dir),
    ]
    opts = FrontOptions(
        workers=(
            FrontWorker(a, maxload=2),
            FrontWorker(b, maxload=2),
            FrontWorker(busy, maxload=4),
        ),
        bind_address="127.0.0.1",
        port=front_port,
        ping_interval=1,
        fr_timer_ms=1000,
    )
    front = KamailioFront(opts, run_dir, on_line=lambda _line: None, stop_timeout=3.0)
    try:
        await front.start()
        await front.wait_ready()
        yield front, front_port, workers, run_dir
    finally:
        await front.stop()
        for w in workers:
            await _kill(w.proc)
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_sipp_calls_spread_busy_worker_skipped_and_full_gets_486(sipp_front) -> None:
    front, front_port, (a, b, busy), run_dir = sipp_front
    await asyncio.sleep(2.5)  # the probes have seen every worker answer OPTIONS
    assert a.options() and busy.options(), "workers were not probed with OPTIONS"
    (uac_port,) = free_ports(1)
    # Four calls held for 5 s each: they must land two on each good worker, skipping the busy one.
    uac = await _spawn(
        "sipp",
        "-sn",
        "uac",
        f"127.0.0.1:{front_port}",
        "-i",
        "127.0.0.1",
        "-p",
        str(uac_port),
        "-m",
        "4",
        "-l",
        "4",
        "-r",
        "20",
        "-d",
        "5000",
        "-nostdin",
        "-timeout",
        "40",
        "-trace_err",
        "-error_file",
        str(Path(run_dir) / "uac.err"),
        cwd=run_dir,
    )
    try:
        deadline = time.monotonic() + 10
        while a.invites() + b.invites() < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        assert (a.invites(), b.invites()) == (2, 2)
        assert busy.invites() >= 1, "the least-loaded worker (busy) was never tried"
        # Every good worker is at maxload now: the next caller gets 486 at once, from the front.
        caller = await open_uac()
        dest = ("127.0.0.1", front_port)
        t0 = time.monotonic()
        before = busy.invites()
        caller.send(request("INVITE", dest, caller.addr), dest)
        final = await caller.final(3.0)
        elapsed = time.monotonic() - t0
        caller.close()
        assert final is not None and status_of(final) == 486
        assert elapsed < 0.5, f"486 took {elapsed:.2f}s"
        assert (a.invites(), b.invites()) == (2, 2)
        # The busy worker is still tried (it has no load), but nothing gets through.
        assert busy.invites() - before <= 1
        rc = await asyncio.wait_for(uac.wait(), 30)
        err = Path(run_dir) / "uac.err"
        assert rc == 0, err.read_text() if err.exists() else f"sipp uac exit {rc}"
    finally:
        await _kill(uac)


async def _run_tool(*args: str, home: str, timeout: float = 30.0) -> str:
    env = dict(os.environ, HOME=home)
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _kill(proc)
        raise
    return out.decode("utf-8", "replace")


async def test_sipvicious_finds_nothing() -> None:
    if shutil.which("svmap") is None or shutil.which("svwar") is None:
        pytest.skip("sipvicious not installed")
    run_dir = tempfile.mkdtemp(prefix="front-", dir="/tmp")
    worker_port, front_port, local_a, local_b, local_c = free_ports(5)
    worker = await start_worker(worker_port)
    opts = FrontOptions(
        workers=(FrontWorker(worker_port),),
        bind_address="127.0.0.1",
        port=front_port,
        ping_interval=1,
    )
    front = KamailioFront(opts, run_dir, on_line=lambda _line: None, stop_timeout=3.0)
    try:
        await front.start()
        await front.wait_ready()
        # Positive control: svmap does find a SIP device that answers (the worker itself).
        out = await _run_tool(
            "svmap",
            "127.0.0.1",
            "-p",
            str(worker_port),
            "-P",
            str(local_a),
            "-b",
            "127.0.0.1",
            home=run_dir,
        )
        assert f"127.0.0.1:{worker_port}" in out, out
        worker.received.clear()
        # The front: no answer to svmap's OPTIONS, nor to an INVITE scan.
        for method in ("OPTIONS", "INVITE"):
            out = await _run_tool(
                "svmap",
                "127.0.0.1",
                "-p",
                str(front_port),
                "-P",
                str(local_b),
                "-b",
                "127.0.0.1",
                "-m",
                method,
                home=run_dir,
            )
            assert f"127.0.0.1:{front_port}" not in out and "found nothing" in out, out
        # svwar extension enumeration (REGISTER, then INVITE with --force) finds nothing.
        for extra in ((), ("-m", "INVITE", "--force")):
            out = await _run_tool(
                "svwar",
                "-e100-120",
                "-p",
                str(front_port),
                "-P",
                str(local_c),
                "-b",
                "127.0.0.1",
                *extra,
                "127.0.0.1",
                home=run_dir,
            )
            assert "timed out" in out and "found nothing" in out, out
            assert not re.search(r"\|\s*1\d\d\s*\|", out), out
            assert "reqauth" not in out.lower() and "noauth" not in out.lower(), out
        leaked = [m for m in worker.received if "front@roomline.invalid" not in m]  # not probes
        assert leaked == [], "a scanner request reached the worker"
    finally:
        await front.stop()
        worker.close()
        shutil.rmtree(run_dir, ignore_errors=True)

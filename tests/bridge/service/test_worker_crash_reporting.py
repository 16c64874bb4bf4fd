"""Issue 13: a dying bridge worker leaves evidence in the log stream.

* the worker enables faulthandler for every thread (stderr, which the supervisor passes through);
* the supervisor logs the exit status or signal name and the calls the dead worker carried.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog

from bridge import control
from bridge.service.supervisor import WorkerHandle, WorkerSpec, WorkerSupervisor
from roomline.process import describe_exit

ROOT = Path(__file__).resolve().parents[3]


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-11) == "signal SIGSEGV"
    assert describe_exit(-6) == "signal SIGABRT"
    assert describe_exit(-200) == "signal 200"


def test_worker_main_dumps_all_threads_on_sigsegv() -> None:
    """The worker's main() with the event loop replaced by a segfault on a second thread."""
    code = textwrap.dedent(
        """
        import ctypes, threading, time
        import bridge.worker.__main__ as w

        def crash(coro):
            coro.close()
            def clock():
                ctypes.string_at(0)  # SIGSEGV on a non-main thread, like the pjmedia clock
            threading.Thread(target=clock, name="clock").start()
            time.sleep(30)

        w.run_loop = crash
        w.main(["--sip-port", "27990"])
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == -11
    assert "Fatal Python error: Segmentation fault" in res.stderr
    assert "in clock" in res.stderr  # the crashing thread's stack
    assert "in crash" in res.stderr  # ... and the main thread's


@pytest.mark.timeout(60)
async def test_supervisor_logs_signal_and_lost_calls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = tmp_path / "fake_worker.py"
    fake.write_text(
        textwrap.dedent(
            """
            import os, signal, socket, sys, time
            import bridge.control as control
            fd = int(sys.argv[sys.argv.index("--control-fd") + 1])
            s = socket.socket(fileno=fd)
            s.sendall(control.encode(control.Ready(sip_port=1, max_calls=4, pid=os.getpid())))
            for cid, state in (("call-a", "active"), ("call-b", "ringing")):
                s.sendall(control.encode(control.CallState(call_id=cid, state=state)))
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGSEGV)
            """
        )
    )
    # The supervisor runs ``<python> -m bridge.worker ...``: a wrapper runs the fake instead.
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {fake} "$@"\n')
    wrapper.chmod(0o755)

    def decide(req: object) -> object:
        raise AssertionError("no INVITE expected")

    lost: list[tuple[WorkerHandle, dict[str, str]]] = []
    sup = WorkerSupervisor(
        [WorkerSpec(27991, 27992, 27993)],
        decide,  # type: ignore[arg-type]
        python=str(wrapper),
        backoff_initial=30.0,
        on_worker_lost=lambda w, calls: lost.append((w, calls)),
    )
    with structlog.testing.capture_logs() as logs:
        await sup.start()
        try:
            for _ in range(200):
                if lost:
                    break
                await asyncio.sleep(0.05)
        finally:
            await sup.stop()
    assert lost, logs
    worker, calls = lost[0]
    assert calls == {"call-a": "active", "call-b": "ringing"}
    assert worker.crashes == 1
    died = [e for e in logs if e["event"] == "bridge worker died"]
    assert len(died) == 1, logs
    assert died[0]["status"] == "signal SIGSEGV" and died[0]["calls_lost"] == 2
    assert "call-a (active)" in died[0]["calls"] and "call-b (ringing)" in died[0]["calls"]


@pytest.mark.timeout(60)
async def test_a_call_cancelled_while_it_is_decided_holds_no_slot(tmp_path: Path) -> None:
    """Under load the caller (or the front's timer) may cancel while the decision is awaited: the
    worker reports ``hangup`` first, the decision comes later and must not count the call again."""
    fake = tmp_path / "fake_worker.py"
    fake.write_text(
        textwrap.dedent(
            """
            import os, socket, sys, time
            import bridge.control as control
            fd = int(sys.argv[sys.argv.index("--control-fd") + 1])
            s = socket.socket(fileno=fd)
            s.sendall(control.encode(control.Ready(sip_port=1, max_calls=4, pid=os.getpid())))
            def invite(n, cid):
                return control.InviteRequest(
                    id=n, call_id=cid, from_user="+1555", from_host="h", to_user="+1666",
                    src_ip="127.0.0.1", src_port=5060,
                )
            s.sendall(control.encode(invite(1, "cancelled")))
            s.sendall(control.encode(control.CallState(call_id="cancelled", state="hangup")))
            s.sendall(control.encode(invite(2, "kept")))
            s.sendall(control.encode(invite(3, "refused")))
            time.sleep(30)
            """
        )
    )
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {fake} "$@"\n')
    wrapper.chmod(0o755)
    decided: list[str] = []
    release = asyncio.Event()

    async def decide(req: control.InviteRequest) -> control.InviteResult:
        await release.wait()  # a slow decision: all three INVITEs are pending at once
        decided.append(req.call_id)
        status = 403 if req.call_id == "refused" else 200
        return control.InviteResult(id=req.id, status=status, socket="s", token="t")

    sup = WorkerSupervisor(
        [WorkerSpec(27981, 27982, 27983)], decide, python=str(wrapper), backoff_initial=30.0
    )
    await sup.start()
    try:
        [w] = sup.workers
        for _ in range(200):
            if len(w.calls) == 2:  # "kept" and "refused" deciding; "cancelled" already gone
                break
            await asyncio.sleep(0.05)
        assert w.calls == {"kept": "deciding", "refused": "deciding"}
        assert w.active_calls == 2  # a call being decided holds its slot
        release.set()
        for _ in range(200):
            if len(decided) == 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        assert sorted(decided) == ["cancelled", "kept", "refused"]
        assert w.calls == {"kept": "ringing"}
        assert w.active_calls == 1
    finally:
        await sup.stop()

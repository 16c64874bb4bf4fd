"""Issue 13: a BridgePort must never be deallocated while pjmedia can still call into it.

The bridge calls every port still in the conference (``put_frame`` with NONE frames each tick,
even unconnected), and SWIG's ``delete_AudioMediaPort`` releases the GIL while the C++ destructor
waits for the port's group lock. Dropping the last Python reference while the clock thread was
blocked on the GIL inside that port's callback let the callback run a method on the dying object
and deallocate it a second time (double free in pymalloc; the SIGSEGV seen in the soak).

The scenario runs in a child process (a crash must fail the test, not kill pytest) under
``PYTHONMALLOC=debug``. A long switch interval plus a busy loop makes the race deterministic: the
clock thread is parked on the GIL inside the port's callback whenever the main thread ends a port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

CHILD = textwrap.dedent(
    """
    import gc, sys, time
    import pjsua2 as pj
    import bridge.control as control
    from bridge.worker.call import CallMachine
    from bridge.worker.endpoint import WorkerOptions
    from bridge.worker.port import BridgePort
    from bridge.worker.worker import CallRecord, Worker

    class Leg:  # the room leg is not under test: the port's end is
        def leave(self):
            pass

        def input_stats(self):
            return {}

    def hold_gil(seconds):
        # Busy Python loop: with a 10 s switch interval the main thread never hands the GIL
        # over, so the clock thread ends up waiting for it inside a port callback.
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            pass

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    cfg.medConfig.clockRate = 16000
    cfg.medConfig.sndClockRate = 16000
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    ep.libStart()
    baseline = ep.mediaActivePorts()

    worker = Worker(WorkerOptions())
    for i in range(int(sys.argv[1])):
        inv = control.InviteRequest(
            id=i, call_id=f"c{i}", from_user="a", from_host="h", to_user="b",
            src_ip="127.0.0.1", src_port=5060,
        )
        rec = CallRecord(None, CallMachine(inv.call_id, time.monotonic()), inv)
        rec.leg = Leg()
        rec.port = BridgePort(f"t{i}")
        rec.port.tx.append(bytes(1920))
        worker.calls[i] = rec
        sys.setswitchinterval(10.0)
        hold_gil(0.06)
        worker._release(i)              # the DISCONNECTED path
        hold_gil(0.06)
        worker.endpoint.graveyard.clear()  # graveyard expiry ...
        del rec                         # ... and the record's last reference
        sys.setswitchinterval(0.005)
        time.sleep(0.03)
    port = BridgePort("idem")
    assert port.thisown
    port.close()
    assert not port.active and port.closed and not port.thisown
    port.close()
    del port
    gc.collect()
    junk = [[str(i)] * 3 for i in range(200000)]  # walk pymalloc free lists
    del junk
    time.sleep(0.1)
    print("active ports", baseline, ep.mediaActivePorts(), flush=True)
    print("CHILD OK", flush=True)
    ep.libDestroy()
    """
)


def run_child(tmp_path: Path, ports: int) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "port_lifetime_child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONMALLOC="debug", PYTHONFAULTHANDLER="1")
    return subprocess.run(
        [sys.executable, str(script), str(ports)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(150)
def test_ending_ports_while_the_clock_thread_waits_for_the_gil(tmp_path: Path) -> None:
    res = run_child(tmp_path, 8)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"child died with {res.returncode}:\n{out[-4000:]}"
    assert "CHILD OK" in res.stdout
    assert "Fatal Python error" not in out
    # Every closed port left the conference bridge (no slot leak).
    line = next(x for x in res.stdout.splitlines() if x.startswith("active ports"))
    _, _, before, after = line.split()
    assert before == after

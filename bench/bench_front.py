"""The Kamailio SIP front's cost: INVITE → 200 OK beside the direct path, and its CPU per call.

Starts ``roomline serve`` from this checkout with the front (``sip.workers: 4``, every port picked
free) and measures:

* **INVITE → 200 OK**, sequential calls with the small UAC of ``bench_sip.py`` (UDP, PCMU,
  immediate answer, ACK, BYE, 0.2 s apart): first through the front's port, then straight to one
  worker's loopback port. Median and p99 of both and the difference; and Kamailio's CPU per call
  over the calls through the front (its idle rate, from 10 s before, taken off).
* **CPU the front adds per call**: SIPp places ``--cpu-calls`` concurrent PCMU calls through the
  front (each from its own number into its own room, 1 kHz tone from a pcap, BYE after
  ``--cpu-seconds`` + a margin). The CPU time of every process in Kamailio's process group
  (``/proc/<pid>/task/*/schedstat``, ns) and of the bridge workers and the main process
  (utime + stime from ``/proc/<pid>/stat``) is read
  (a) over the same length of time with no call (idle baseline), (b) over a steady window of
  ``--cpu-seconds`` while all calls are up, (c) over the whole SIPp run, set-up and BYEs
  included. Printed: the front's CPU per call-second (µs) and as % of one core per call, its CPU
  per call for set-up + teardown, beside the workers' and the main process's % of a core per call
  from the same window. RTP goes phone ⇄ worker directly, so in the steady window the front
  only sees its OPTIONS probes: the figure that matters is the per-call signalling cost.

    .venv/bin/python bench/bench_front.py --calls 40 --cpu-calls 8 --cpu-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench.bench_sip import SipUA, describe, pctl  # noqa: E402
from roomline_harness.front_appliance import _scenario  # noqa: E402
from roomline_harness.net import free_block, free_port, free_udp_range  # noqa: E402
from roomline_harness.server import Server, start_server, stop_server  # noqa: E402
from roomline_harness.sip.fullstack import metrics  # noqa: E402
from roomline_harness.sip.pcap import write_tone_pcap  # noqa: E402
from roomline_harness.sip.sipp import SIPP, run_sipp  # noqa: E402

WORKERS = 4
NUMBER = "+15550601"
#: Callee numbers of the CPU run: one room each (``call_<number>``).
CPU_NUMBERS = [f"+155506{i:03d}" for i in range(100, 164)]
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Front:
    server: Server
    sip_port: int
    worker_base: int


def start(tmp: Path) -> Front:
    sip_port, worker_base = free_port(), free_block(WORKERS)
    rtp, rtc = free_udp_range(20 * WORKERS), free_udp_range(40)
    sip = {
        "enabled": True,
        "bind_address": "127.0.0.1",
        "port": sip_port,
        "workers": WORKERS,
        "worker_base_port": worker_base,
        "rtp_port_start": rtp[0],
        "rtp_port_end": rtp[1],
        "trunks": [
            {
                "name": "local",
                "allowed_addresses": ["127.0.0.1"],
                "numbers": [NUMBER, *CPU_NUMBERS],
            }
        ],
        "dispatch_rules": [
            {"name": "calls", "rule": {"dispatch_rule_callee": {"room_prefix": "call"}}}
        ],
    }
    server = start_server(
        tmp,
        sip=sip,
        rtc={"port_range_start": rtc[0], "port_range_end": rtc[1]},
        logging={"level": "warning", "format": "json"},
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if _ready(server):
            return Front(server, sip_port, worker_base)
        time.sleep(0.25)
    stop_server(server)
    raise RuntimeError("not ready: " + server.log_text()[-3000:])


def _ready(server: Server) -> bool:
    """Every worker ready and marked up in the front."""
    try:
        with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=2) as r:
            if f"{WORKERS}/{WORKERS} ready" not in r.read().decode():
                return False
    except OSError:
        return False
    up = sum(v for (n, _), v in metrics(server).items() if n == "roomline_sip_worker_dispatch_up")
    return up == WORKERS


# --- INVITE → 200 --------------------------------------------------------------------------------
async def run_invites(port: int, n: int, label: str) -> list[float]:
    times = []
    for i in range(n):
        ua = SipUA(f"+1555310{i:04d}")
        await ua.open()
        try:
            times.append(await ua.call(port, NUMBER))
            await asyncio.sleep(0.05)
            await ua.hangup(port)
        finally:
            ua.close()
        await asyncio.sleep(0.2)
    describe(f"INVITE -> 200 OK {label}", times)
    return times


# --- CPU -----------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu(pids: list[int]) -> float:
    """utime + stime of ``pids`` in seconds (a process that has gone counts 0)."""
    total = 0
    for pid in pids:
        f = _stat(pid)
        if f is not None:
            total += int(f[11]) + int(f[12])
    return total / TICKS


def _cpu_ns(pids: list[int]) -> float:
    """On-CPU time of every thread of ``pids`` in seconds, from ``/proc/<pid>/task/*/schedstat``
    (nanoseconds; ``stat``'s 10 ms ticks are too coarse for Kamailio's few milliseconds).
    Only for processes whose threads live as long as they do: an exited thread's time is gone."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def _kamailio_pid(server: Server) -> int:
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=2) as r:
        body = r.read().decode()
    return int(body.split("kamailio pid ")[1].split()[0])


def _group(pgid: int) -> list[int]:
    """Every process in process group ``pgid`` (Kamailio's main process and its children)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f is not None and int(f[2]) == pgid:
                out.append(int(entry))
    return out


def _workers(server_pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat(int(entry))
        if f is None or int(f[1]) != server_pid:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"bridge.worker" in argv:
            out.append(int(entry))
    return out


@dataclass
class Sample:
    """CPU seconds of each process set over ``wall`` seconds."""

    wall: float
    front: float
    workers: float
    main: float


class Meter:
    """Reads the CPU time of the front, the workers and the main process together."""

    def __init__(self, front: Front) -> None:
        self.main_pid = front.server.process.pid
        self.front_pids = _group(_kamailio_pid(front.server))
        self.worker_pids = _workers(self.main_pid)
        if len(self.worker_pids) != WORKERS or len(self.front_pids) < 2:
            raise RuntimeError(f"found workers {self.worker_pids}, kamailio {self.front_pids}")

    def read(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            _cpu_ns(self.front_pids),
            _cpu(self.worker_pids),
            _cpu([self.main_pid]),
        )

    def between(self, a: tuple[float, float, float, float]) -> Sample:
        b = self.read()
        return Sample(b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3])


def _active(server: Server) -> float:
    return sum(v for (n, _), v in metrics(server).items() if n == "roomline_sip_active_calls")


async def bench_cpu(front: Front, calls: int, seconds: float, wd: Path) -> dict[str, float]:
    server = front.server
    meter = Meter(front)
    print(
        f"\nCPU: kamailio processes {meter.front_pids}, workers {meter.worker_pids}, "
        f"main {meter.main_pid}"
    )
    a = meter.read()
    await asyncio.sleep(seconds)
    idle = meter.between(a)

    margin = 8.0  # ramp-up (10 calls/s) and the room joins before the steady window
    pcap = wd / "t1k.pcap"
    write_tone_pcap(pcap, 1000.0, seconds + margin + 2)
    sc = _scenario(wd / "cpu.xml", pcap=pcap, play_ms=int((seconds + margin) * 1000))
    inject = wd / "cpu.csv"
    inject.write_text(
        "SEQUENTIAL\n" + "".join(f"+1555320{i:04d};{CPU_NUMBERS[i]};\n" for i in range(calls))
    )
    assert SIPP is not None
    cmd = [SIPP, "-sf", str(sc), f"127.0.0.1:{front.sip_port}", "-i", "127.0.0.1"]
    cmd += ["-p", str(free_port()), "-mi", "127.0.0.1", "-mp", str(free_udp_range(4 * calls)[0])]
    cmd += ["-m", str(calls), "-l", str(calls), "-r", "10", "-inf", str(inject)]
    cmd += ["-nostdin", "-timeout", f"{int(seconds + margin + 60)}s", "-timeout_error"]
    whole = meter.read()
    sipp = asyncio.create_task(run_sipp(cmd, wd, seconds + margin + 60))
    t0 = time.monotonic()
    while _active(server) < calls:
        if time.monotonic() - t0 > margin - 1 or sipp.done():
            raise RuntimeError(f"only {_active(server)} of {calls} calls up")
        await asyncio.sleep(0.2)
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))  # joins settle
    a = meter.read()
    await asyncio.sleep(seconds)
    load = meter.between(a)
    still = _active(server)
    rc, out = await sipp
    run = meter.between(whole)
    if rc != 0 or still < calls:
        raise RuntimeError(
            f"SIPp rc {rc}, {still} calls up at the end of the window:\n{out[-2000:]}"
        )

    def per_call_core(busy: float, base: float, wall: float) -> float:
        """% of one core per call over ``wall`` seconds, the idle rate taken off."""
        return 100 * (busy - base * wall / idle.wall) / wall / calls

    front_steady = per_call_core(load.front, idle.front, load.wall)
    # The whole run: each call's INVITE/200/ACK and BYE/200 crossed the front once.
    front_extra = run.front - idle.front * run.wall / idle.wall
    call_seconds = calls * (seconds + margin)
    r = {
        "idle_front_pct": 100 * idle.front / idle.wall,
        "idle_workers_pct": 100 * idle.workers / idle.wall,
        "front_pct_per_call_steady": front_steady,
        "front_us_per_call_second_steady": front_steady / 100 * 1e6,
        "front_ms_per_call_whole_run": 1000 * front_extra / calls,
        "front_us_per_call_second_whole_run": 1e6 * front_extra / call_seconds,
        "workers_pct_per_call": per_call_core(load.workers, idle.workers, load.wall),
        "main_pct_per_call": per_call_core(load.main, idle.main, load.wall),
    }
    print(f"idle ({idle.wall:.0f} s): kamailio {r['idle_front_pct']:.3f} % of a core, "
          f"workers {r['idle_workers_pct']:.2f} %")  # fmt: skip
    print(f"{calls} calls, steady window {load.wall:.1f} s (all {calls} up at its end):")
    print(f"  front (kamailio)  {front_steady:.4f} % of a core per call "
          f"= {r['front_us_per_call_second_steady']:.1f} µs CPU per call-second")  # fmt: skip
    print(f"  bridge workers    {r['workers_pct_per_call']:.2f} % of a core per call")
    print(f"  main process      {r['main_pct_per_call']:.2f} % of a core per call")
    print(f"whole SIPp run ({run.wall:.1f} s, set-up and BYEs included): front "
          f"{r['front_ms_per_call_whole_run']:.2f} ms CPU per call = "
          f"{r['front_us_per_call_second_whole_run']:.1f} µs per call-second "
          f"({calls} x {seconds + margin:.0f} s calls)")  # fmt: skip
    return r


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=40, help="sequential calls for INVITE -> 200")
    ap.add_argument("--cpu-calls", type=int, default=8, help="concurrent calls of the CPU run")
    ap.add_argument("--cpu-seconds", type=float, default=30.0, help="steady window (and idle)")
    ap.add_argument("--skip-latency", action="store_true")
    a = ap.parse_args()
    if not 1 <= a.cpu_calls <= min(len(CPU_NUMBERS), 4 * WORKERS):
        ap.error(f"--cpu-calls: 1..{4 * WORKERS} (4 workers of 4 calls)")
    with tempfile.TemporaryDirectory(prefix="rlbf", dir="/tmp") as d:
        front = start(Path(d))
        try:
            if not a.skip_latency:
                await run_invites(front.sip_port, 3, "(warm-up)")
                meter = Meter(front)
                idle_a = meter.read()
                await asyncio.sleep(10)
                idle = meter.between(idle_a)
                b = meter.read()
                fr = await run_invites(
                    front.sip_port, a.calls, f"through the front :{front.sip_port}"
                )
                seq = meter.between(b)
                per_call = (seq.front - idle.front * seq.wall / idle.wall) / a.calls
                print(
                    f"front CPU per sequential call (INVITE/100/200/ACK, BYE/200): "
                    f"{1e6 * per_call:.0f} µs ({1e3 * seq.front:.1f} ms over {seq.wall:.1f} s, "
                    f"idle rate {1e3 * idle.front / idle.wall:.2f} ms/s)"
                )
                direct = await run_invites(
                    front.worker_base, a.calls, f"direct to worker :{front.worker_base}"
                )
                for q, name in ((0.5, "median"), (0.99, "p99")):
                    print(f"front adds {pctl(fr, q) - pctl(direct, q):+.1f} ms at the {name}")
            if a.cpu_calls:
                await bench_cpu(front, a.cpu_calls, a.cpu_seconds, Path(d))
        finally:
            stop_server(front.server)


if __name__ == "__main__":
    asyncio.run(main())

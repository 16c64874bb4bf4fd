"""Bridge worker cost: CPU per call and INVITE→200 time, with SIPp calls and a stand-in room.

    .venv/bin/python -m bench.bridge_calls [--calls 4] [--seconds 10]

Each call plays a 1 kHz PCMU tone (phone → room, Opus-encoded by the worker) while the stand-in
room sends a 440 Hz Opus tone to every call (decoded, mixed, fed to pjsua). Prints the worker's
CPU (% of one core) idle and under load, per call, and SIPp's INVITE→200 response times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import tempfile
from pathlib import Path

from bridge.service.supervisor import WorkerSpec, WorkerSupervisor
from roomline_harness.bridge import Policy
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.sip.pcap import RtpStream
from roomline_harness.sip.sipp import run_sipp, sipp_cmd, uac_scenario
from roomline_harness.standin_room import StandinRoom

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def measure(pid: int, seconds: float) -> float:
    c0, t0 = cpu_seconds(pid), asyncio.get_running_loop().time()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - c0) / (asyncio.get_running_loop().time() - t0)


async def main(calls: int, seconds: float) -> None:
    d = Path(tempfile.mkdtemp(prefix="rlb", dir="/tmp"))
    room = StandinRoom(str(d / "local.sock"))
    room.tone_freq = 440.0
    await room.start()
    port = free_port()
    start, end = free_udp_range(40)
    sup = WorkerSupervisor(
        [WorkerSpec(port, start, end, "127.0.0.1")], Policy(socket=room.path).decide
    )
    await sup.start()
    await sup.wait_ready()
    pid = sup.workers[0].pid
    idle = await measure(pid, 3)
    s = RtpStream()
    s.tone(1000, seconds + 4, pt=0)
    s.write(d / "tone.pcap")
    sc = uac_scenario(d / "uac.xml", pcap=d / "tone.pcap", play_ms=int((seconds + 4) * 1000))
    cmd = sipp_cmd(
        sc, f"127.0.0.1:{port}", local_port=free_port(), media_port=free_port(),
        calls=calls, concurrent=calls, rate=20,
    )  # fmt: skip
    cmd += ["-trace_rtt", "-rtt_freq", "1"]
    task = asyncio.create_task(run_sipp(cmd, d, timeout=seconds + 30))
    await asyncio.sleep(2)
    busy = await measure(pid, seconds)
    rc, out = await task
    rtts = []
    for f in d.glob("*_rtt.csv"):
        for line in f.read_text().splitlines()[1:]:
            parts = line.split(";")  # Date_ms;response_time_ms;rtd_no
            if len(parts) >= 2 and re.match(r"^[\d.]+$", parts[1]):
                rtts.append(float(parts[1]))
    await sup.stop()
    await room.stop()
    shutil.rmtree(d, ignore_errors=True)
    print(f"sipp rc={rc}; calls={calls}; worker CPU idle {idle:.1f}%  with calls {busy:.1f}%")
    print(f"per call: {(busy - idle) / calls:.1f}% of one core")
    if rtts:
        print(
            f"INVITE->200 (SIPp rtd, ms): median {statistics.median(rtts):.1f} "
            f"max {max(rtts):.1f} (n={len(rtts)})"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    asyncio.run(main(a.calls, a.seconds))

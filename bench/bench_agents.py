"""In-appliance agent cost: concurrent ``echo`` calls per core, and the echo's response latency.

    .venv/bin/python -m bench.bench_agents [--calls 1 4 8] [--rounds 2]

A real ``roomline serve`` (SIP on, one bridge worker per 4 calls, a direct dispatch rule whose room
config starts ``echo`` in a fresh room per caller) receives N concurrent pjsua2 test-phone calls.
Each phone plays 1 kHz for 2 s, then silence, and records what it hears. Printed:

* CPU of the agent job processes (per call, % of one core) while the echo plays back, plus the
  bridge workers and the main process, from /proc (utime+stime) — "calls per core" is 100 / the
  agent's per-call figure (the bridge's own cost is in bench/bridge_calls.py);
* response latency: end of the caller's tone to the first echoed audio at the phone (median, p99),
  which includes the echo's 600 ms end-of-turn silence (printed separately without it).

No assertions; the peers share the machine's cores with the appliance.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from roomline_harness.audio import read_wav
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import start_server, stop_server
from roomline_harness.sip.peers import run_phone

TICKS = os.sysconf("SC_CLK_TCK")
TONE_SECONDS = 2.0
VAD_SILENCE = 0.6


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def processes(root: int) -> dict[int, str]:
    """Descendants of ``root`` (and itself) with a role: main, bridge, agent."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        role = (
            "agent"
            if "roomline_agents.sdk.worker" in cmd
            else "bridge"
            if "bridge.worker" in cmd
            else "main"
        )
        out[pid] = role
        todo += children.get(pid, [])
    return out


def onset(path: Path) -> float | None:
    """Seconds into the phone's recording where audible audio starts (20 ms windows)."""
    x, rate = read_wav(path)
    x = np.asarray(x, dtype=np.float64)
    win = rate // 50
    for i in range(int(TONE_SECONDS * rate) // win, len(x) // win):
        if np.sqrt(np.mean(x[i * win : (i + 1) * win] ** 2)) > 300:
            return i * win / rate
    return None


async def run(calls: int, rounds: int, base: Path) -> None:
    for attempt in range(5):  # free ports are picked at random; a clash only costs a retry
        workers = []
        for _ in range((calls + 3) // 4):
            rs, re_ = free_udp_range(40)
            workers.append({"sip_port": free_port(), "rtp_port_start": rs, "rtp_port_end": re_})
        (base / f"srv{calls}_{attempt}").mkdir()
        try:
            srv = start_server(
                base / f"srv{calls}_{attempt}",
                sip={
                    "enabled": True,
                    "bind_address": "127.0.0.1",
                    "workers": workers,
                    "trunks": [{"name": "t", "allowed_addresses": ["127.0.0.1"]}],
                    "dispatch_rules": [
                        {
                            "name": "echo",
                            "rule": {"dispatch_rule_individual": {"room_prefix": "echo-"}},
                            "room_config": {"agents": [{"agent_name": "echo"}]},
                        }
                    ],
                },
                agents={"workers": min(calls, 8)},
                logging={"level": "info", "format": "json"},
            )
            break
        except RuntimeError:
            if attempt == 4:
                raise
    latencies: list[float] = []
    cpu: dict[str, list[float]] = {"agent": [], "bridge": [], "main": []}
    try:
        await asyncio.sleep(3)  # warm pool and bridge workers ready
        for r in range(rounds):
            tasks = []
            for i in range(calls):
                prs, _ = free_udp_range(20)
                w = workers[i % len(workers)]
                rec = base / f"c{calls}_r{r}_{i}.wav"
                args = [
                    *("--dest", f"sip:+1555{i:07d}@127.0.0.1:{w['sip_port']}"),
                    *("--port", str(free_port()), "--rtp-start", str(prs)),
                    *("--caller", f"+1666{r:03d}{i:04d}", "--workdir", str(base)),
                    *("--tone", "1000", "--tone-seconds", str(TONE_SECONDS)),
                    *("--record", str(rec), "--duration", "7"),
                ]
                tasks.append((rec, asyncio.create_task(run_phone(args, timeout=60))))
            # The echo plays back from ~2.6 s to ~4.6 s after the answer: measure 2.8 .. 4.4 s.
            await asyncio.sleep(1.5 + 2.8)
            procs = processes(srv.process.pid)
            c0 = {pid: cpu_seconds(pid) for pid in procs}
            t0 = asyncio.get_running_loop().time()
            await asyncio.sleep(1.6)
            dt = asyncio.get_running_loop().time() - t0
            for role in cpu:
                used = sum(cpu_seconds(p) - c0[p] for p, rl in procs.items() if rl == role)
                cpu[role].append(100 * used / dt)
            for rec, task in tasks:
                await task
                t = onset(rec)
                if t is not None:
                    latencies.append(t - TONE_SECONDS)
            await asyncio.sleep(1)
    finally:
        stop_server(srv)
    lat = sorted(latencies)
    agent = statistics.median(cpu["agent"])
    print(
        f"calls={calls:2d}  agent CPU {agent:5.1f}% ({agent / calls:4.1f}%/call, "
        f"~{100 * calls / max(agent, 1e-9):.0f} calls/core)  bridge {statistics.median(cpu['bridge']):5.1f}%  "
        f"main {statistics.median(cpu['main']):5.1f}%"
    )
    if lat:
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        med = statistics.median(lat)
        print(
            f"          response latency (tone end -> first echo at phone), n={len(lat)}: "
            f"median {1000 * med:.0f} ms, p99 {1000 * p99:.0f} ms; without the "
            f"{1000 * VAD_SILENCE:.0f} ms end-of-turn wait: median {1000 * (med - VAD_SILENCE):.0f} ms"
        )
    print(f"          echoed calls: {len(lat)}/{calls * rounds}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench_agents_"))
    try:
        for n in a.calls:
            await run(n, a.rounds, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

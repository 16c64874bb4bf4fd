"""INVITE → 200 OK through the Kamailio SIP front vs straight to a bridge worker.

Starts ``roomline serve`` from this checkout with the front (``sip.workers: 4``; ports 34000-34999)
and places sequential calls with the small UAC of ``bench_sip.py`` (UDP, PCMU, immediate answer):
first to the front's port, then directly to one worker's loopback port. Each call is answered,
ACKed and hung up before the next. Prints median and p99 of both and the difference.

    .venv/bin/python bench/bench_front.py --calls 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench.bench_sip import SipUA, describe, pctl  # noqa: E402
from roomline_harness.server import Server, stop_server, write_config  # noqa: E402

HTTP, SIP, WORKER_BASE = 34081, 34061, 34090
RTP = (34520, 34599)
RTC = (34900, 34999)
NUMBER = "+15550601"


def start(tmp: Path) -> Server:
    sip = {
        "enabled": True,
        "port": SIP,
        "workers": 4,
        "worker_base_port": WORKER_BASE,
        "rtp_port_start": RTP[0],
        "rtp_port_end": RTP[1],
        "trunks": [{"name": "local", "allowed_addresses": ["127.0.0.1"], "numbers": [NUMBER]}],
        "dispatch_rules": [
            {"name": "calls", "rule": {"dispatch_rule_callee": {"room_prefix": "call"}}}
        ],
    }
    cfg = tmp / "roomline.yaml"
    write_config(
        cfg,
        HTTP,
        tmp / "data",
        rtc={"port_range_start": RTC[0], "port_range_end": RTC[1]},
        sip=sip,
        logging={"level": "warning", "format": "json"},
    )
    log = tmp / "roomline.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(cfg)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=env,
        )
    server = Server(HTTP, tmp / "data", cfg, proc, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(server.log_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=2) as r:
                if "4/4 ready" in r.read().decode():
                    time.sleep(1.0)  # the front marks the workers up
                    return server
        except OSError:
            pass
        time.sleep(0.25)
    stop_server(server)
    raise RuntimeError("not ready: " + server.log_text()[-3000:])


async def run(port: int, n: int, label: str) -> list[float]:
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


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlbf", dir="/tmp") as d:
        server = start(Path(d))
        try:
            await run(SIP, 3, "(warm-up)")
            front = await run(SIP, a.calls, f"through the front :{SIP}")
            direct = await run(WORKER_BASE, a.calls, f"direct to worker :{WORKER_BASE}")
        finally:
            stop_server(server)
    for q, name in ((0.5, "median"), (0.99, "p99")):
        print(f"front adds {pctl(front, q) - pctl(direct, q):+.1f} ms at the {name}")


if __name__ == "__main__":
    asyncio.run(main())

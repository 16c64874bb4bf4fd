"""``python -m bridge.worker``: the command line of one bridge worker process.

Normally started by :class:`bridge.service.supervisor.WorkerSupervisor`; see
:mod:`bridge.worker.worker` for what the process does.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import sys
from collections.abc import Coroutine
from typing import Any

from bridge.worker.endpoint import BRIDGE_CLOCK_RATE, BRIDGE_CLOCK_RATES, WorkerOptions
from bridge.worker.sched import batch_worker
from bridge.worker.worker import Worker
from roomline.log import configure_worker_logging


def parse_args(argv: list[str] | None = None) -> WorkerOptions:
    """The worker's command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bridge.worker", description=__doc__)
    ap.add_argument("--sip-port", type=int, default=5060)
    ap.add_argument("--sip-host", default="0.0.0.0", help="address to bind SIP and RTP to")
    ap.add_argument(
        "--public-ip", default="", help="address for SDP c= and Contact (sip.public_ip)"
    )
    ap.add_argument("--rtp-start", type=int, default=10000)
    ap.add_argument("--rtp-end", type=int, default=20000)
    ap.add_argument("--control-fd", type=int, default=-1, help="socketpair fd for JSON lines")
    ap.add_argument("--max-calls", type=int, default=32, help="requested; clamped by the build")
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--log-level", type=int, default=1, help="pjsua log level 0-6")
    ap.add_argument("--rtp-host", default=None, help="address RTP binds to (default: --sip-host)")
    ap.add_argument("--rtp-public-ip", default=None, help="SDP c= address (default: --public-ip)")
    ap.add_argument(
        "--bridge-rate",
        type=int,
        choices=BRIDGE_CLOCK_RATES,
        default=BRIDGE_CLOCK_RATE,
        help="conference-bridge clock in Hz (8000: G.711 only, no resampling; sip.wideband)",
    )
    ap.add_argument(
        "--front-source",
        action="append",
        default=[],
        help="ip:port of the SIP front; X-Roomline-Source is trusted only from there",
    )
    a = ap.parse_args(argv)
    if not 0 < a.rtp_start <= a.rtp_end < 65536:
        ap.error("need 0 < rtp-start <= rtp-end < 65536")
    return WorkerOptions(
        sip_port=a.sip_port,
        sip_host=a.sip_host,
        public_ip=a.public_ip,
        rtp_start=a.rtp_start,
        rtp_end=a.rtp_end,
        control_fd=a.control_fd,
        max_calls=a.max_calls,
        tcp=not a.no_tcp,
        log_level=a.log_level,
        rtp_host=a.rtp_host,
        rtp_public_ip=a.rtp_public_ip,
        front_sources=tuple(a.front_source),
        bridge_rate=a.bridge_rate,
    )


def run_loop(main_coro: Coroutine[Any, Any, None]) -> None:
    """Run the worker's event loop until ``main_coro`` returns.

    uvloop, like the main process and agent jobs: the worker's loop wakes for every conference
    tick and every room packet, and uvloop's C transports took about 8 % off a busy worker's CPU
    (bench/bench_media.py, 16 calls, two interleaved rounds).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main_coro)


def main(argv: list[str] | None = None) -> None:
    """Run one worker until the supervisor says stop (or goes away), then exit at once."""
    # A fatal signal (SIGSEGV, SIGBUS, SIGABRT) dumps every thread's Python stack to stderr, which
    # the supervisor forwards into the appliance's log stream: the crashing thread and the others.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    configure_worker_logging("bridge.worker")
    opts = parse_args(argv)
    # Before pjsua starts its threads, which inherit the class (bridge/worker/sched.py).
    batch_worker()
    run_loop(Worker(opts).run())
    # A pj object that still escaped (e.g. held by a traceback) would assert in its destructor
    # during interpreter finalisation, after libDestroy; pjsua is already down, so skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

"""Bridge soak (issue 13): the whole appliance, default config, SIPp keeping N calls up for a while.

    .venv/bin/python -m bench.soak_bridge [--duration 600] [--concurrent 4] [--call-seconds 9]
        [--workers N]
        [--ports 38000-38999] [--workdir DIR] [--keep]

``roomline serve`` with ``roomline/defaults/roomline.yaml`` (LAN trunk, the ``ivr`` agent for every
caller; ports, data directory, loopback and JSON logs changed) and SIPp placing PCMU calls that
play a 1 kHz tone (1 call/s up to ``--concurrent`` at once, each ``--call-seconds`` long) for
``--duration`` seconds; then SIPp stops placing calls and the running ones finish. Prints calls
ok/failed, worker exits (crash/restart counters of /metrics, ``bridge worker died`` and
faulthandler lines in the log, the worker pid before and after) and RSS/fds/threads of every
process of the appliance's tree at the start (idle), every ``--sample`` seconds under load and at
the end (idle again). Exit status 1 when a call failed or a worker exited.

The work directory (config, roomline.log, SIPp's output, statistics CSV and error log) is removed
after a clean run unless ``--keep``. The run itself is :func:`roomline_harness.soak.run_soak`, shared
with ``tests/bridge/test_soak.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from roomline_harness.net import parse_range
from roomline_harness.soak import keep_or_remove, run_soak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Bridge soak: the appliance under steady SIP calls.")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of calls (600)")
    ap.add_argument("--concurrent", type=int, default=4, help="calls up at once (4)")
    ap.add_argument("--call-seconds", type=float, default=9.0, help="length of each call (9)")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="bridge workers behind the front (default: enough for --concurrent at 4 calls each)",
    )
    ap.add_argument(
        "--ports",
        type=parse_range,
        default=None,
        help="LOW-HIGH: every port the run binds (HTTP, SIP, RTP, SIPp) in this range"
        " (default: $ROOMLINE_TEST_PORTS, else free ports anywhere)",
    )
    ap.add_argument("--sample", type=float, default=60.0, help="seconds between load samples")
    ap.add_argument("--workdir", type=Path, help="default: a new /tmp/rlsoak* directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory after a clean run")
    a = ap.parse_args(argv)
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="rlsoak", dir="/tmp"))
    print(f"work directory: {workdir}", flush=True)
    res = run_soak(
        workdir,
        a.duration,
        a.concurrent,
        a.call_seconds,
        port_range=a.ports,
        progress=lambda s: print(s, flush=True),
        sample_every=a.sample,
        workers=a.workers or -(-a.concurrent // 4),
    )
    print(res.report())
    if res.calls_failed:
        print(f"SIPp errors (tail):\n{res.sipp_errors}")
    keep_or_remove(res, a.keep)
    return 1 if res.problems() else 0


if __name__ == "__main__":
    sys.exit(main())

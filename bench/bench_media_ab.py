"""Interleaved A/B capacity runs of ``bench/bench_media.py``: medians of two appliance trees.

    PYTHONPATH=. .venv/bin/python bench/bench_media_ab.py --a /tmp/treeA --b . --rounds 3 \\
        -- --front --workers 8 --calls 16 --seconds 30 --no-latency

This VM's speed drifts by ±15 % within an hour and by 2× between sessions (docs/bridge-media.md),
so one run of each version says little. This runs ``bench_media.py`` on tree A, then on tree B,
``--rounds`` times (A, B, A, B, ...; each run a fresh appliance), and prints every run's all-in
calls per core, codec-only ceiling, stalls and worker-loop counters, then the median of each
version and the ratio B / A of the medians. Arguments after ``--`` go to every run. A tree is a
checkout of the repository (``git worktree add``, or ``git archive REV | tar -x``) whose
``sfu/web/vendor`` is present; the bench itself always runs from this tree.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: A single run may not take longer than this (seconds): the appliance's start and stop included.
RUN_TIMEOUT_S = 600

_ALL_IN = re.compile(r"all-in incl\. idle ([\d.]+) % -> ([\d.]+) calls/core")
_CEILING = re.compile(r"codec-only ceiling \(same run\): (\d+) us")
_STALLS = re.compile(r"stalls of live streams per call max \d+ total (\d+)")
_LOOPS = re.compile(r"worker loops: (\d+) services woken by the clock, (\d+) by the timer")


@dataclass
class Run:
    """The figures of one ``bench_media.py`` run."""

    calls_per_core: float
    ceiling_us: int
    stalls: int | None
    timer_services: int | None


def parse(output: str) -> Run:
    """The figures of one run's printout; ValueError naming what is missing."""
    m = _ALL_IN.search(output)
    c = _CEILING.search(output)
    if m is None or c is None:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise ValueError(f"bench_media.py printed no capacity figures; its last lines:\n{tail}")
    s = _STALLS.search(output)
    loops = _LOOPS.search(output)
    return Run(
        calls_per_core=float(m.group(2)),
        ceiling_us=int(c.group(1)),
        stalls=int(s.group(1)) if s else None,
        timer_services=int(loops.group(2)) if loops else None,
    )


def run_once(tree: Path, extra: list[str]) -> Run:
    cmd = [sys.executable, str(HERE / "bench_media.py"), "--server-tree", str(tree), *extra]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},  # the bench's own tree
        check=False,
    )
    return parse(proc.stdout + proc.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--a", required=True, type=Path, help="appliance tree A (the reference)")
    ap.add_argument("--b", required=True, type=Path, help="appliance tree B (the change)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("extra", nargs="*", help="arguments for bench_media.py (after --)")
    a = ap.parse_args()
    for tree in (a.a, a.b):
        if not (tree / "bridge" / "worker").is_dir():
            ap.error(f"{tree} is not a roomline tree (no bridge/worker)")
    runs: dict[str, list[Run]] = {"A": [], "B": []}
    for i in range(1, a.rounds + 1):
        for name, tree in (("A", a.a), ("B", a.b)):
            r = run_once(tree.resolve(), a.extra)
            runs[name].append(r)
            print(
                f"{name} round {i}: {r.calls_per_core:5.1f} calls/core all-in, ceiling "
                f"{r.ceiling_us} us, stalls {r.stalls}, timer services {r.timer_services}",
                flush=True,
            )
    med = {k: statistics.median(r.calls_per_core for r in v) for k, v in runs.items()}
    for k, v in runs.items():
        print(
            f"{k}: median {med[k]:.1f} calls/core all-in over {len(v)} runs "
            f"({min(r.calls_per_core for r in v):.1f}–{max(r.calls_per_core for r in v):.1f}); "
            f"ceiling median {statistics.median(r.ceiling_us for r in v):.0f} us"
        )
    print(f"B / A (medians): {med['B'] / med['A']:.3f}")


if __name__ == "__main__":
    main()

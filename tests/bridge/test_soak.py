"""Bridge soak (issue 13): two minutes of steady SIP load on the whole appliance, no worker may die.

``roomline serve`` with the default configuration (LAN trunk; every caller gets a room and the
``ivr`` agent, which talks to the phone while the phone sends a PCMU tone: the load under which
workers used to die of a double free of BridgePort objects, docs/bridge.md "Port lifetime"). SIPp
keeps 4 calls of 9 s up for 120 s (about 48 calls on an idle host). The run fails on any failed
SIPp call and on any sign of a worker exit: ``roomline_sip_worker_crashes_total`` or
``_restarts_total`` above 0, a ``bridge worker died`` or faulthandler line in the log, another
worker pid at the end. RSS, fds and threads of every process of the tree (main, bridge worker,
agent jobs) at the start, under load and at the end are printed (``pytest -s``), not judged: on a
shared 2-vCPU host they move with load, and two minutes are too short to tell a slow leak.

Thresholds do not depend on timing: a loaded host completes fewer calls (at least a quarter of the
idle-host figure is required), each call only has to succeed. Longer runs: ``bench/soak_bridge.py``.
Ports: ``ROOMLINE_TEST_PORTS=LOW-HIGH`` keeps every port the run binds in that range
(:mod:`roomline_harness.soak`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from roomline_harness.sip.sipp import SIPP
from roomline_harness.soak import run_soak

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    # 120 s of calls + start (≤ 60 s when loaded) + the last calls and the drain (≤ 100 s)
    pytest.mark.timeout(360),
]

DURATION_S = 120.0
CONCURRENT = 4
CALL_S = 9.0


def test_workers_survive_steady_calls_with_agents(short_dir: Path, tmp_path: Path) -> None:
    res = run_soak(short_dir, DURATION_S, CONCURRENT, CALL_S)
    print(res.report())
    if res.problems():  # short_dir is removed after the test: keep the logs where pytest does
        shutil.copytree(short_dir, tmp_path / "soak", ignore=shutil.ignore_patterns("data"))
        print(f"logs kept in {tmp_path / 'soak'}")
    if res.calls_failed:
        print(f"SIPp errors:\n{res.sipp_errors}\nSIPp output:\n{res.sipp_tail}")
    assert not res.problems(min_calls=max(CONCURRENT, res.expected_calls // 4)), res.report()
    # The load was the intended one: an `ivr` job per caller, talking to the phone.
    assert res.agent_jobs_started >= res.calls_ok, res.report()
    assert res.room_audio_calls >= res.calls_ok // 2, res.report()

"""A phone call answered by an external livekit-agents worker: a SIP dispatch rule's
``room_config.agents`` names it, the pjsua2 test phone dials, the worker's agent joins the call's
room, sees the caller as a SIP participant and the caller hears the agent's tone (FFT)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from roomline_harness.agent_appliance import (
    TONE_WORKER,
    start_appliance,
    workers_registered,
)
from roomline_harness.agent_workers import agents_python, start_worker, stop_worker
from roomline_harness.audio import dominant_frequency, read_wav, snr_db
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import Server, stop_server
from roomline_harness.sip.peers import disconnected, run_phone

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

CALLER = "+15551234567"
AGENT_NAME = "sip-tone-agent"
SIP_KIND = 3


@pytest.fixture(scope="module")
def py() -> str:
    found = agents_python()
    if found is None:
        pytest.skip("livekit-agents is not installed (set ROOMLINE_AGENTS_PYTHON)")
    return found


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, py: str) -> Iterator[Server]:
    rs, re_ = free_udp_range(40)
    sip_port = free_port()
    sip = {
        "enabled": True,
        "bind_address": "127.0.0.1",
        "workers": [{"sip_port": sip_port, "rtp_port_start": rs, "rtp_port_end": re_}],
        "trunks": [{"name": "t", "allowed_addresses": ["127.0.0.1"], "numbers": ["+15550100"]}],
        "dispatch_rules": [
            {
                "name": "to-external-agent",
                "rule": {"dispatch_rule_individual": {"room_prefix": "call-"}},
                "room_config": {"agents": [{"agent_name": AGENT_NAME}]},
            }
        ],
    }
    srv = start_appliance(tmp_path_factory.mktemp("agents-sip"), sip=sip)
    srv.extra["sip_port"] = sip_port
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
async def worker(py: str, appliance: Server, tmp_path: Path) -> AsyncIterator[Path]:
    out = tmp_path / "notes.txt"
    workdir = tmp_path / "worker"
    workdir.mkdir()
    proc, log_path = start_worker(
        py,
        TONE_WORKER,
        workdir,
        appliance.ws_url,
        # One warm job process: the agent must be talking before the phone stops recording.
        {"E2E_OUT": str(out), "E2E_AGENT_NAME": AGENT_NAME, "E2E_FREQ": "700", "E2E_IDLE": "1"},
    )
    try:
        for _ in range(900):
            if workers_registered(appliance, AGENT_NAME) or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert workers_registered(appliance, AGENT_NAME), log_path.read_text()[-3000:]
        yield out
    finally:
        await stop_worker(proc)


async def test_sip_rule_dispatches_external_agent(
    appliance: Server, worker: Path, tmp_path: Path
) -> None:
    prs, _ = free_udp_range(20)
    args = [
        *("--dest", f"sip:+15550100@127.0.0.1:{appliance.extra['sip_port']}"),
        *("--port", str(free_port()), "--rtp-start", str(prs), "--caller", CALLER),
        *("--workdir", str(tmp_path), "--record", str(tmp_path / "heard.wav")),
        *("--duration", "14"),
    ]
    events = await run_phone(args, timeout=90)
    end = disconnected(events)
    assert end is not None and end["local_hangup"], events  # the phone hung up after 14 s
    notes = worker.read_text().split("\n") if worker.exists() else []
    joined = [n.split() for n in notes if n.startswith("w joined")]
    assert joined, (notes, appliance.log_text()[-3000:])
    job_id, room = joined[0][2], joined[0][3]
    assert room.startswith("call-")
    # The agent sees the caller with kind SIP.
    saw = [n.split() for n in notes if n.startswith(f"w saw {job_id}")]
    assert [f"sip_{CALLER}", str(SIP_KIND)] in [s[3:5] for s in saw], notes

    x, rate = read_wav(tmp_path / "heard.wav")
    x = np.asarray(x, dtype=np.float64)
    tail = x[-3 * rate :]  # the agent has been talking for a while by then
    assert abs(dominant_frequency(tail, rate) - 700) < 15, notes
    assert snr_db(tail, rate, 700) > 15

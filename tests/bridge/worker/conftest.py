"""Fixtures for bridge worker tests: a stand-in room and a supervised worker on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import bridge.control as control
from bridge.service.supervisor import WorkerSpec, WorkerSupervisor
from roomline_harness.bridge import Bridge, Policy
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.standin_room import StandinRoom


@pytest.fixture
async def room(short_dir: Path) -> AsyncIterator[StandinRoom]:
    r = StandinRoom(str(short_dir / "local.sock"))
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def bridge(room: StandinRoom) -> AsyncIterator[Bridge]:
    port = free_port(udp=True, tcp=True)  # SIP listens on both
    start, end = free_udp_range(40)
    policy = Policy(socket=room.path)
    states: list[control.CallState] = []
    sup = WorkerSupervisor(
        [WorkerSpec(sip_port=port, rtp_start=start, rtp_end=end, sip_host="127.0.0.1")],
        policy.decide,
        on_call_state=lambda w, m: states.append(m),
        backoff_initial=0.2,
    )
    await sup.start()
    await sup.wait_ready(30)
    yield Bridge(sup, policy, port, states)
    await sup.stop()

"""Fixtures for bridge tests: a stand-in room, a supervised worker, free ports, SIP peers."""

from __future__ import annotations

import random
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import bridge.control as control
from bridge.service.supervisor import WorkerSpec, WorkerSupervisor
from tests.bridge.standin_room import StandinRoom


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both)."""
    for _ in range(100):
        port = random.randint(20000, 29999)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def rtp_range(size: int = 40) -> tuple[int, int]:
    """A random RTP range above the SIP test ports (collisions only cost a retry in pjsua)."""
    base = random.randrange(30000, 60000, 2)
    return base, base + size


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def room(short_dir: Path) -> AsyncIterator[StandinRoom]:
    r = StandinRoom(str(short_dir / "local.sock"))
    await r.start()
    yield r
    await r.stop()


@dataclass
class Policy:
    """What the fake app decides for INVITEs; tests mutate it."""

    socket: str
    status: int = 200
    ringing: bool = False
    ringing_timeout: float = 180.0
    media_timeout: float = 15.0
    headers: dict[str, str] = field(default_factory=dict)
    seen: list[control.InviteRequest] = field(default_factory=list)

    def decide(self, req: control.InviteRequest) -> control.InviteResult:
        self.seen.append(req)
        if self.status != 200:
            return control.InviteResult(id=req.id, status=self.status, headers=self.headers)
        return control.InviteResult(
            id=req.id,
            status=200,
            token=f"sip_{req.from_user}",
            room="test-room",
            identity=f"sip_{req.from_user}",
            socket=self.socket,
            ringing=self.ringing,
            ringing_timeout=self.ringing_timeout,
            media_timeout=self.media_timeout,
            attributes={"sip.phoneNumber": req.from_user},
        )


@dataclass
class Bridge:
    sup: WorkerSupervisor
    policy: Policy
    sip_port: int
    states: list[control.CallState]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"


@pytest.fixture
async def bridge(room: StandinRoom) -> AsyncIterator[Bridge]:
    port = free_port()
    start, end = rtp_range()
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

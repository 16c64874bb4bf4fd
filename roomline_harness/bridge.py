"""A bridge worker under the real supervisor, with a scripted answer to every INVITE."""

from __future__ import annotations

from dataclasses import dataclass, field

import bridge.control as control
from bridge.service.supervisor import WorkerSupervisor


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
    """A supervised worker (``sup``), its policy, SIP port and every CallState it reported."""

    sup: WorkerSupervisor
    policy: Policy
    sip_port: int
    states: list[control.CallState]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

"""The composition root: which parts make a roomline appliance, in which order they start.

Like livekit's ``wire.go`` it lives outside the packages it wires: ``sfu`` knows neither the bridge
nor the agents; the bridge and the agents know the SFU only through :class:`sfu.server.SFUServer`
and the local participant channel; the hand-offs between parts are typed arguments made here.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import suppress

import structlog

import sfu.local
import sfu.rtc
import sfu.service.web
from bridge.service import sip_bridge
from roomline.config import Config
from roomline.lifecycle import Service
from roomline_agents.service import agents as agent_names
from roomline_agents.service import manager as agents
from sfu.local.server import LocalChannelServer
from sfu.server import SFUServer

log = structlog.get_logger(__name__)


class Appliance:
    """Everything ``roomline serve`` runs in the main process."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sfu = SFUServer(cfg)
        # Aliases used by tests and the benchmarks.
        self.node = self.sfu.node
        self.app = self.sfu.app
        self.rtc = sfu.rtc.install(self.sfu)
        self.web = sfu.service.web.install(self.sfu)
        self.local_channel: LocalChannelServer = sfu.local.install(self.sfu)
        #: Built-in agents (job processes over the local channel).
        self.agents: agents.AgentManager = agents.install(self.sfu)
        #: ``/agent`` (external livekit-agents workers) and the one registry of agent names that
        #: routes every dispatch to an external worker or a built-in.
        self.agent_names: agent_names.Agents = agent_names.install(self.sfu, self.agents)
        self.sip: sip_bridge.SIPPart = sip_bridge.install(
            self.sfu, self.local_channel.path, agent_starter=self.agent_names
        )
        # Agents place outbound calls and transfer SIP participants through the SIP service.
        self.agents.sip_service = self.sip.service
        #: Started in this order, stopped in reverse.
        self.parts: list[Service] = [
            self.rtc,
            self.local_channel,
            self.web,
            self.sip,
            self.agents,
            self.agent_names,
        ]

    async def start(self) -> None:
        await self.sfu.start()
        for part in self.parts:
            await part.start()
        await self.sfu.listen()

    async def stop(self) -> None:
        await self.sfu.stop()
        for part in reversed(self.parts):
            with suppress(Exception):
                await part.stop()
        await self.sfu.close()


def write_port_file(path: str, port: int) -> None:
    """Write ``port`` to ``path`` atomically (a reader never sees a partial file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


async def serve(cfg: Config, port_file: str | None = None) -> None:
    """Run the appliance until SIGINT or SIGTERM.

    ``port_file``: once listening, write the bound HTTP port there (with ``server.port: 0`` the
    kernel picks it; also logged in the ``roomline listening`` event); removed when stopping.
    """
    appliance = Appliance(cfg)
    await appliance.start()
    if port_file:
        write_port_file(port_file, appliance.sfu.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("roomline stopping")
        if port_file:
            with suppress(FileNotFoundError):
                os.unlink(port_file)
        await appliance.stop()

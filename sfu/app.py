"""Assembles the appliance: model, node, HTTP edge, signalling, local channel, SIP workers, agents."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import suppress
from typing import Any

import structlog
from aiohttp import web

from sfu.config import Config
from sfu.node import Node
from sfu.room import Limits
from sfu.roommanager import RoomDefaults, RoomManager
from sfu.service.metrics import Metrics
from sfu.service.roomservice import RoomService
from sfu.service.twirp import TwirpRouter

log = structlog.get_logger(__name__)


def limits_from_config(cfg: Config) -> Limits:
    lim = cfg.limits
    return Limits(
        max_participants_per_room=lim.max_participants_per_room,
        max_tracks_per_participant=lim.max_tracks_per_participant,
        max_metadata_size=lim.max_metadata_size,
        max_attributes_size=lim.max_attributes_size,
        max_identity_length=lim.max_identity_length,
        max_name_length=lim.max_name_length,
        max_room_name_length=lim.max_room_name_length,
    )


class Appliance:
    """Everything ``roomline serve`` runs in the main process."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        defaults = RoomDefaults(
            auto_create=cfg.room.auto_create,
            empty_timeout=cfg.room.empty_timeout,
            departure_timeout=cfg.room.departure_timeout,
            max_participants=cfg.room.max_participants,
        )
        self.node = Node(RoomManager(limits=limits_from_config(cfg), defaults=defaults))
        from sfu.signal import encode_broadcast

        self.node.encode_broadcast = encode_broadcast
        self.metrics = Metrics(self.node)
        self.twirp = TwirpRouter(
            cfg.keys, cfg.limits.max_api_body_size, on_request=self.metrics.count_api_request
        )
        self.twirp.register(
            "livekit.RoomService",
            RoomService(self.node, cfg.limits.max_data_packet_size).methods(),
        )
        self.app = web.Application(client_max_size=cfg.limits.max_api_body_size)
        self.app.router.add_routes(self.twirp.routes())
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", self.metrics.handle)
        self._extensions: list[Extension] = []
        #: Set by the local-channel extension (sfu.local.server.LocalChannelServer).
        self.local_channel: Any = None
        #: Set by the SIP extension (bridge.store.SIPStore).
        self.sip_store: Any = None
        #: Set by the SIP extension when sip.enabled (bridge.appliance.SIPBridge).
        self.sip_bridge: Any = None
        #: Set by the agents extension (sfu.agents.service.AgentManager).
        self.agents: Any = None
        self._install_extensions()
        self.runner: web.AppRunner | None = None

    def _install_extensions(self) -> None:
        """Optional parts that live in their own modules and hook into the app."""
        from sfu import extensions

        for factory in extensions.FACTORIES:
            ext = factory(self)
            if ext is not None:
                self._extensions.append(ext)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        os.makedirs(self.cfg.server.data_dir, exist_ok=True)
        self.node.start()
        for ext in self._extensions:
            await ext.start()
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.server.host, self.cfg.server.port)
        await site.start()
        log.info(
            "roomline listening",
            host=self.cfg.server.host,
            port=self.cfg.server.port,
            dev_mode=self.cfg.dev_mode,
        )

    async def stop(self) -> None:
        await self.node.stop()
        for ext in reversed(self._extensions):
            with suppress(Exception):
                await ext.stop()
        if self.runner:
            await self.runner.cleanup()


class Extension:
    """A part of the appliance with its own lifecycle (signalling, SIP workers, agents ...)."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


async def serve(cfg: Config) -> None:
    """Run the appliance until SIGINT or SIGTERM."""
    appliance = Appliance(cfg)
    await appliance.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("roomline stopping")
        await appliance.stop()

"""The SFU's core in the main process: the node with its rooms, the HTTP app, Twirp and metrics.

Other parts (signalling, the local channel, the SIP bridge's control plane, agents) are added to it
by the composition root (:mod:`appliance.app`); the SFU itself knows none of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import structlog
from aiohttp import web

from roomline.config import Config
from sfu.node import Node
from sfu.room import Limits
from sfu.roommanager import RoomManager
from sfu.service.debug import MediaDebug
from sfu.service.metrics import Metrics
from sfu.service.roomservice import RoomService
from sfu.service.twirp import TwirpRouter
from sfu.signal import encode_broadcast

log = structlog.get_logger(__name__)

#: A health check: returns (component name, healthy, detail) for /healthz.
HealthCheck = Callable[[], tuple[str, bool, str]]


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


class SFUServer:
    """Rooms, the HTTP listener and the services every other part registers with."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.node = Node(
            RoomManager(limits=limits_from_config(cfg), defaults=cfg.room),
            encode_broadcast=encode_broadcast,
        )
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
        self.app.router.add_routes(MediaDebug(self.node, cfg.keys).routes())
        #: Components that report into /healthz (the SIP front, bridge workers ...).
        self.health_checks: list[HealthCheck] = []
        self.runner: web.AppRunner | None = None
        #: The bound HTTP port once :meth:`listen` returned (differs from the config for port 0).
        self.port = cfg.server.port

    async def healthz(self, request: web.Request) -> web.Response:
        lines = ["ok"]
        healthy = True
        for check in self.health_checks:
            name, ok, detail = check()
            healthy = healthy and ok
            lines.append(f"{name}: {'ok' if ok else 'down'} {detail}".rstrip())
        if not healthy:
            lines[0] = "degraded"
        return web.Response(text="\n".join(lines), status=200 if healthy else 503)

    async def start(self) -> None:
        os.makedirs(self.cfg.server.data_dir, exist_ok=True)
        self.node.start()

    async def listen(self) -> None:
        """Open the HTTP port; called last, once every part has registered its routes."""
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.server.host, self.cfg.server.port)
        await site.start()
        # With server.port 0 the kernel picked the port: report the one actually bound.
        self.port = int(self.runner.addresses[0][1])
        log.info(
            "roomline listening",
            host=self.cfg.server.host,
            port=self.port,
            dev_mode=self.cfg.dev_mode,
        )

    async def stop(self) -> None:
        await self.node.stop()

    async def close(self) -> None:
        if self.runner:
            await self.runner.cleanup()

"""Local participant channel: how SIP callers and in-appliance agents join rooms without WebRTC."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.app import Appliance, Extension


def socket_path(data_dir: str) -> str:
    """Where the local channel listens for a given ``server.data_dir``."""
    return os.path.join(os.path.abspath(data_dir), "local.sock")


def install(appliance: Appliance) -> Extension | None:
    from sfu.app import Extension
    from sfu.local.server import LocalChannelServer

    server = LocalChannelServer(
        appliance.node, appliance.cfg, socket_path(appliance.cfg.server.data_dir)
    )
    appliance.local_channel = server

    class _Local(Extension):
        async def start(self) -> None:
            await server.start()

        async def stop(self) -> None:
            await server.stop()

    return _Local()

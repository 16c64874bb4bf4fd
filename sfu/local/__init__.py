"""Local participant channel: how SIP callers and in-appliance agents join rooms without WebRTC.

``server`` runs in the main process; ``client`` in the processes that join through it (bridge
workers, agent jobs); ``protocol`` is the sans-I/O state machine both sides use (and documents the
JOIN), ``stream`` the little asyncio plumbing they add to it, ``framing`` the byte format. What the
receivers of its audio share: ``codec`` (Opus and the RTP header) and ``jitter`` (the playout
buffer).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.local.server import LocalChannelServer
    from sfu.server import SFUServer


def socket_path(data_dir: str) -> str:
    """Where the local channel listens for a given ``server.data_dir``."""
    return os.path.join(os.path.abspath(data_dir), "local.sock")


def install(server: SFUServer) -> LocalChannelServer:
    from sfu.local.server import LocalChannelServer

    return LocalChannelServer(server.node, server.cfg, socket_path(server.cfg.server.data_dir))

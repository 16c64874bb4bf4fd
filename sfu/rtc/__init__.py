"""WebRTC edge: ``/rtc`` signalling and aiortc PeerConnections for LiveKit clients."""

from __future__ import annotations

from roomline.lifecycle import Service
from sfu.server import SFUServer


def install(server: SFUServer) -> Service:
    """Add the signalling routes to the server's HTTP app."""
    from sfu.rtc.service import RTCService

    service = RTCService(server.node, server.cfg)
    server.app.router.add_routes(service.routes())
    return Service()

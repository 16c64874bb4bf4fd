"""WebRTC edge: ``/rtc`` signalling and aiortc PeerConnections for LiveKit clients."""

from __future__ import annotations

from roomline.lifecycle import Service
from sfu.server import SFUServer


def install(server: SFUServer) -> Service:
    """Patch aioice for the configured ICE addresses and ports, add the signalling routes."""
    from sfu.media.aiortc.ice import configure_ice
    from sfu.rtc.service import RTCService

    rtc_cfg = server.cfg.rtc
    # Process-wide (aioice reads module globals): done here, once, not as a constructor side effect.
    configure_ice(list(rtc_cfg.interfaces), (rtc_cfg.port_range_start, rtc_cfg.port_range_end))
    service = RTCService(server.node, server.cfg)
    server.app.router.add_routes(service.routes())
    return Service()

"""WebRTC edge: ``/rtc`` signalling and aiortc PeerConnections for LiveKit clients."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.app import Appliance, Extension


def install(appliance: Appliance) -> Extension | None:
    """Add the signalling routes to the appliance's HTTP app."""
    from sfu.app import Extension
    from sfu.rtc.service import RTCService

    service = RTCService(appliance.node, appliance.cfg)
    appliance.app.router.add_routes(service.routes())
    return Extension()

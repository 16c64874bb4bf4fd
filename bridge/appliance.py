"""How the SIP bridge plugs into the appliance: the SIP Twirp service and the bridge workers.

The store of trunks and dispatch rules and the INVITE decisions live in the main process (they are
control plane); workers only carry signalling and media and ask the supervisor what to do with each
INVITE (docs/bridge.md).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bridge.sip_service import METHODS, SERVICE, SIPService
from bridge.store import SIPStore
from sfu.service.twirp import Method

if TYPE_CHECKING:
    from sfu.app import Appliance, Extension


def install(appliance: Appliance) -> Extension | None:
    from sfu.app import Extension

    cfg = appliance.cfg
    os.makedirs(cfg.server.data_dir, exist_ok=True)
    store = SIPStore.open(
        cfg.server.data_dir,
        config_trunks=cfg.sip.trunks,
        config_rules=cfg.sip.dispatch_rules,
    )
    service = SIPService(store)
    appliance.twirp.register(
        SERVICE,
        {
            name: Method(req, getattr(service, handler))
            for name, (req, _resp, handler) in METHODS.items()
        },
    )
    appliance.sip_store = store

    class _SIP(Extension):
        async def stop(self) -> None:
            store.close()

    return _SIP()

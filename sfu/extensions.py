"""The optional parts of the appliance, in start order.

Each factory takes the :class:`~sfu.app.Appliance` and returns an :class:`~sfu.app.Extension` (or None
when disabled by config). Keeping the list here lets parts be added without editing ``app.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.app import Appliance, Extension

Factory = Callable[["Appliance"], "Extension | None"]


def _rtc(appliance: Appliance) -> Extension | None:
    from sfu import rtc

    return rtc.install(appliance)


def _local(appliance: Appliance) -> Extension | None:
    from sfu import local

    return local.install(appliance)


def _web(appliance: Appliance) -> Extension | None:
    from sfu.service import web

    return web.install(appliance)


def _sip(appliance: Appliance) -> Extension | None:
    from bridge import appliance as sip

    return sip.install(appliance)


def _agents(appliance: Appliance) -> Extension | None:
    from sfu import agents

    return agents.install(appliance)


FACTORIES: list[Factory] = [_rtc, _local, _web, _sip, _agents]

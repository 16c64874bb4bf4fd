"""The lifecycle every part of the appliance has (HTTP edge, local channel, SIP bridge, agents)."""

from __future__ import annotations


class Service:
    """A part with a start and a stop; the composition root starts parts in order, stops them in
    reverse. The defaults do nothing, for parts that only register routes."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

"""Process-global aioice patch: host candidates on configured addresses, ports from a range.

aioice gathers host candidates on every address of the machine except loopback and binds OS-chosen
UDP ports. An appliance wants the opposite: the addresses from ``rtc.interfaces`` (``127.0.0.1``
included, for same-host clients and tests) and ports from ``rtc.port_range_*`` so a firewall or
container can publish exactly that range.

aioice reads both from module-level functions, so the patch is process-wide. Nothing happens on
import: :func:`configure_ice` installs it (the WebRTC extension calls it once when it is installed),
:func:`reset_ice` removes it. Private names used: ``aioice.ice.get_host_addresses`` and
``aioice.ice.Connection.get_component_candidates``; the event loop's ``create_datagram_endpoint`` is
wrapped, but only acts while aioice gathers (a context variable marks that window).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import structlog

__all__ = ["IceSettings", "configure_ice", "ice_settings", "reset_ice"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class IceSettings:
    """The active ICE patch configuration (see :func:`configure_ice`)."""

    interfaces: list[str] = field(default_factory=list)
    port_range: tuple[int, int] | None = None
    next_port_index: int = 0
    exhausted: int = 0


_ice: IceSettings | None = None
_orig_get_host_addresses = aioice.ice.get_host_addresses
_orig_get_component_candidates = aioice.ice.Connection.get_component_candidates
# Set only while aioice binds its host sockets, so our loop wrapper never touches other sockets.
_in_ice_gather: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "roomline_in_ice_gather", default=False
)


def ice_settings() -> IceSettings | None:
    """The active settings, or None if :func:`configure_ice` is not in effect."""
    return _ice


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    assert _ice is not None
    if not _ice.interfaces:
        return _orig_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in _ice.interfaces if (use_ipv6 and ":" in a) or (use_ipv4 and ":" not in a)]


def _wrap_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap ``loop.create_datagram_endpoint`` once so port 0 during ICE gathering uses the range."""
    if getattr(loop, "_roomline_dgram_wrapped", False):
        return
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(
        protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None, **kwargs: Any
    ) -> Any:
        settings = _ice
        if (
            settings is None
            or settings.port_range is None
            or not _in_ice_gather.get()
            or local_addr is None
            or local_addr[1] != 0
        ):
            return await original(
                protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs
            )
        lo, hi = settings.port_range
        count = hi - lo + 1
        for i in range(count):
            index = (settings.next_port_index + i) % count
            try:
                result = await original(
                    protocol_factory,
                    local_addr=(local_addr[0], lo + index),
                    remote_addr=remote_addr,
                    **kwargs,
                )
            except OSError as exc:
                # uvloop reports a taken port as OSError with errno None ("could not bind").
                if exc.errno in (errno.EADDRINUSE, errno.EACCES, None):
                    continue
                raise
            settings.next_port_index = (index + 1) % count
            return result
        settings.exhausted += 1
        # aioice swallows OSError and silently gathers no candidate; make exhaustion visible.
        log.error(
            "ICE UDP port range exhausted: the PeerConnection gets no candidate",
            port_range=f"{lo}-{hi}",
            address=local_addr[0],
        )
        raise OSError(errno.EADDRNOTAVAIL, f"UDP port range {lo}-{hi} exhausted")

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign]
    loop._roomline_dgram_wrapped = True  # type: ignore[attr-defined]


async def _get_component_candidates(
    self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
) -> Any:
    _wrap_loop(asyncio.get_running_loop())
    token = _in_ice_gather.set(True)
    try:
        return await _orig_get_component_candidates(self, component, addresses, timeout)
    finally:
        _in_ice_gather.reset(token)


def configure_ice(interfaces: list[str], port_range: tuple[int, int] | None = None) -> None:
    """Make aioice gather host candidates only on ``interfaces``, on ports from ``port_range``.

    ``interfaces`` are literal IP addresses (may include ``127.0.0.1``, which aioice normally
    skips); an empty list keeps aioice's own choice of addresses. ``port_range`` is inclusive;
    None means OS-chosen ports. Idempotent: calling again replaces the settings.
    """
    global _ice
    if port_range is not None:
        lo, hi = port_range
        if not (0 < lo <= hi <= 65535):
            raise ValueError(f"invalid UDP port range {port_range}")
    _ice = IceSettings(list(interfaces), port_range)
    aioice.ice.get_host_addresses = _host_addresses
    aioice.ice.Connection.get_component_candidates = _get_component_candidates  # type: ignore[method-assign]


def reset_ice() -> None:
    """Undo :func:`configure_ice` (tests). Wrapped loops fall back to pass-through."""
    global _ice
    _ice = None
    aioice.ice.get_host_addresses = _orig_get_host_addresses
    aioice.ice.Connection.get_component_candidates = _orig_get_component_candidates  # type: ignore[method-assign]

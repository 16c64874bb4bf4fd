"""Worker planning: how many bridge workers run, on which ports, with which RTP slice and clock.

Front mode (``sip.workers`` is a count or ``auto``): every worker listens for SIP on
``127.0.0.1:<worker_base_port + i>`` only (the Kamailio front is the one public address), binds
RTP on ``sip.bind_address`` in its own slice of ``sip.rtp_port_start..rtp_port_end``, and puts an
address phones can reach into SDP ``c=``: ``sip.public_ip``, else the specific ``bind_address``,
else whatever pjsua finds as the host's address. It honours ``X-Roomline-Source`` only from the
front's socket (bridge/worker/source.py). The first ``sip.wideband_workers`` workers (``auto``:
half, rounded up) run the 16 kHz bridge clock, the others 8 kHz (G.711 only); the front routes
calls between the two pools by the codecs offered (bridge/service/kamailio_cfg.py).

Direct mode (``sip.workers`` is the older list of mappings): each worker listens on its own port
on ``sip.bind_address``, as before the front existed, and all run the clock ``sip.wideband`` says.

Pure functions, no I/O: :func:`plan_workers` turns a ``SIPConfig`` into ``WorkerSpec`` values for
:class:`bridge.service.supervisor.WorkerSupervisor`.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from bridge import control
from bridge.service.supervisor import WorkerSpec
from roomline.config import SIPConfig

__all__ = [
    "LOOPBACK",
    "RtpSlice",
    "front_bind_address",
    "front_internal_port",
    "front_sources",
    "plan_workers",
    "rtp_slices",
]

#: Where workers listen for SIP in front mode.
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class RtpSlice:
    start: int
    end: int


def rtp_slices(start: int, end: int, count: int) -> list[RtpSlice]:
    """Split ``start..end`` (inclusive) into ``count`` disjoint, even-aligned, equal slices.

    Each slice starts on an even port (RTP even, RTCP odd); leftover ports at the top are unused.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    first = start + (start % 2)
    size = (end - first + 1) // count
    size -= size % 2
    if size < 2:
        raise ValueError(f"RTP range {start}-{end} is too small for {count} workers")
    return [RtpSlice(first + i * size, first + (i + 1) * size - 1) for i in range(count)]


def _is_local(addr: str) -> bool:
    """Whether ``addr`` is one of this host's addresses (it can be bound)."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((addr, 0))
        return True
    except OSError:
        return False


def _route_source(addr: str) -> str:
    """The local address the kernel would send from towards ``addr`` ("" if none)."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))  # UDP connect: no packet is sent
            return str(s.getsockname()[0])
    except OSError:
        return ""


def front_bind_address(sip: SIPConfig) -> str:
    """The address the front binds: ``sip.bind_address``, except behind 1:1 NAT.

    When ``sip.public_ip`` is not an address of this host (a cloud VM, a Docker container with
    published ports) and ``bind_address`` is the wildcard, the front binds the local address that
    routes towards the public one, so that it can advertise ``public_ip`` in Via/Record-Route.
    """
    bind = sip.bind_address
    if sip.public_ip and ipaddress.ip_address(bind).is_unspecified:
        if not _is_local(sip.public_ip):
            return _route_source(sip.public_ip) or bind
    return bind


def front_internal_port(sip: SIPConfig) -> int:
    """The front's loopback port facing the workers when it advertises ``sip.public_ip`` (1:1
    NAT: it binds the private address the public one maps to), else 0.

    It is the port just above the workers' ports.
    """
    bind = front_bind_address(sip)
    if not sip.public_ip or ipaddress.ip_address(bind).is_unspecified or sip.public_ip == bind:
        return 0
    if _is_local(sip.public_ip):
        return 0  # the public address is on this host: nothing to advertise
    return sip.worker_base_port + sip.worker_count()


def front_sources(sip: SIPConfig) -> tuple[str, ...]:
    """``ip:port`` values the front's requests reach the workers from (X-Roomline-Source trust).

    With a wildcard ``bind_address`` Kamailio binds every interface and sends to loopback workers
    from its ``127.0.0.1:<port>`` socket; with a specific address it sends from that one; when it
    advertises a NAT address, from its own loopback socket (:func:`front_internal_port`).
    """
    bind = front_bind_address(sip)
    out = [f"{LOOPBACK}:{sip.port}"]
    internal = front_internal_port(sip)
    if internal:
        out.append(f"{LOOPBACK}:{internal}")
    if not ipaddress.ip_address(bind).is_unspecified and bind != LOOPBACK:
        host = f"[{bind}]" if ":" in bind else bind
        out.append(f"{host}:{sip.port}")
    return tuple(out)


def _media_address(sip: SIPConfig) -> str:
    if sip.public_ip:
        return sip.public_ip
    if not ipaddress.ip_address(sip.bind_address).is_unspecified:
        return sip.bind_address
    return ""  # pjsua's own guess: the host's primary address


def plan_workers(sip: SIPConfig) -> list[WorkerSpec]:
    """One :class:`WorkerSpec` per worker process for ``sip`` (see the module docstring).

    The first ``sip.wideband_worker_count()`` workers run the 16 kHz bridge clock, the others
    8 kHz (:attr:`WorkerSpec.bridge_rate`); direct mode runs every worker at one rate.
    """
    wide = sip.wideband_worker_count()

    def rate(i: int) -> int:
        return control.BRIDGE_RATE_WIDEBAND if i < wide else control.BRIDGE_RATE_NARROWBAND

    if isinstance(sip.workers, list):  # direct mode
        return [
            WorkerSpec(
                sip_port=w.sip_port,
                rtp_start=w.rtp_port_start,
                rtp_end=w.rtp_port_end,
                sip_host=sip.bind_address,
                public_ip=sip.public_ip,
                bridge_rate=rate(i),
            )
            for i, w in enumerate(sip.workers)
        ]
    n = sip.worker_count()
    slices = rtp_slices(sip.rtp_port_start, sip.rtp_port_end, n)
    media_ip = _media_address(sip)
    trust: list[str] = []
    for src in front_sources(sip):
        trust += ["--front-source", src]
    specs = []
    for i, sl in enumerate(slices):
        extra = ["--rtp-host", sip.bind_address, *trust]
        if media_ip:
            extra += ["--rtp-public-ip", media_ip]
        specs.append(
            WorkerSpec(
                sip_port=sip.worker_base_port + i,
                rtp_start=sl.start,
                rtp_end=sl.end,
                sip_host=LOOPBACK,
                public_ip="",  # never in Via/Contact: those must stay reachable by the front
                extra_args=tuple(extra),
                bridge_rate=rate(i),
            )
        )
    return specs

"""Who really sent an INVITE: the ``X-Roomline-Source`` header, trusted only from the front.

Behind the Kamailio front (docs/sip-front.md) every request reaches a worker from the front's own
socket; the front removes any copy a caller wrote and adds ``X-Roomline-Source: <ip>:<port>;
proto=<udp|tcp|tls>`` (IPv6 in brackets) with the caller's true address. The worker believes the
header only when the packet came from one of the front's ``ip:port`` sources it was told about
(``--front-source``); otherwise the packet's own source counts. Either way the header is removed
from the headers passed on, so it never reaches trunk matching, ``sip.h.*`` attributes or logs as
if the caller had sent it.

Sans-I/O and pjsua-free, so it is unit-tested directly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SOURCE_HEADER", "Source", "parse_source_header", "split_hostport", "true_source"]

SOURCE_HEADER = "X-Roomline-Source"
_PROTOS = ("udp", "tcp", "tls", "ws", "wss", "sctp")
_VALUE_RE = re.compile(
    r"^\s*(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d{1,5})"
    r"(?:\s*;\s*proto=(?P<proto>[A-Za-z]{2,5}))?\s*$"
)


@dataclass(frozen=True, slots=True)
class Source:
    """The caller's address as the worker should use it."""

    ip: str
    port: int
    #: Transport the caller used ("" = unknown: take the Via's).
    transport: str = ""
    #: True when it came from the front's header (False: the packet's own source).
    via_front: bool = False


def split_hostport(addr: str) -> tuple[str, int]:
    """``"1.2.3.4:5060"`` / ``"[::1]:5060"`` → (ip, port); port 0 when missing or bad."""
    host, _, port = addr.rpartition(":")
    if not host:  # no port at all
        return addr.strip("[]"), 0
    return host.strip("[]"), int(port) if port.isdigit() else 0


def parse_source_header(value: str) -> Source | None:
    """The front's header value, or None if it is not exactly one well-formed address."""
    m = _VALUE_RE.match(value or "")
    if m is None:
        return None
    ip = m.group("v6") or m.group("v4") or ""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if (m.group("v6") is not None) != (parsed.version == 6):
        return None
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        return None
    proto = (m.group("proto") or "").lower()
    if proto and proto not in _PROTOS:
        return None
    return Source(str(parsed), port, proto, via_front=True)


def _norm(addr: str) -> str:
    ip, port = split_hostport(addr)
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        pass
    return f"{ip}:{port}"


def true_source(
    packet_src: str, headers: dict[str, str], front_sources: Iterable[str]
) -> tuple[Source, dict[str, str]]:
    """The caller's real source, and ``headers`` without any ``X-Roomline-Source``.

    ``packet_src`` is pjsua's ``rdata.srcAddress`` (``ip:port``); ``front_sources`` the front's
    ``ip:port`` sockets. The header counts only on a packet from one of them; a front packet
    without a usable header falls back to the packet source.
    """
    found = [v for k, v in headers.items() if k.lower() == SOURCE_HEADER.lower()]
    clean = {k: v for k, v in headers.items() if k.lower() != SOURCE_HEADER.lower()}
    ip, port = split_hostport(packet_src)
    packet = Source(ip, port)
    trusted = {_norm(s) for s in front_sources}
    if not trusted or _norm(packet_src) not in trusted or len(found) != 1:
        return packet, clean
    src = parse_source_header(found[0])
    return (src if src is not None else packet), clean

"""Outbound trunks (``SIPOutboundTrunkInfo``): LiveKit's validation and the listing redaction.

Kept apart from :mod:`bridge.service.outbound` so the store can validate config trunks without an
import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping

from livekit.protocol import sip as sip_pb

from bridge.service.trunks import validate_number
from roomline.errors import InvalidRequest

__all__ = [
    "REDACTED",
    "check_headers",
    "redacted",
    "split_address",
    "validate_outbound_trunk",
]

#: Redacted password in List/Get answers.
REDACTED = "********"


def _check_address(addr: str, field_name: str) -> None:
    if not addr:
        raise InvalidRequest(f"{field_name}: no outbound address specified")
    if "transport=" in addr:
        raise InvalidRequest(
            f"{field_name}: trunk transport should be set as a field, not a URI parameter"
        )
    if any(c in addr for c in '@; \t\r\n<>"') or addr.lower().startswith(("sip:", "sips:")):
        raise InvalidRequest(f"{field_name}: trunk address should be a hostname or IP, not SIP URI")
    host, port = split_address(addr)
    if not host:
        raise InvalidRequest(f"{field_name}: {addr!r} has no host")
    if port is not None and not 0 < port < 65536:
        raise InvalidRequest(f"{field_name}: {addr!r} has an invalid port")


def split_address(addr: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) → (host, port or None); bad ports give -1."""
    host, port = addr, None
    if addr.startswith("["):
        end = addr.find("]")
        host = addr[: end + 1] if end > 0 else addr
        rest = addr[end + 1 :] if end > 0 else ""
        if rest.startswith(":"):
            port = int(rest[1:]) if rest[1:].isdigit() else -1
    elif addr.count(":") == 1:
        host, _, p = addr.partition(":")
        port = int(p) if p.isdigit() else -1
    return host, port


_HEADER_NAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


def check_headers(headers: Mapping[str, str], field_name: str, values: bool = True) -> None:
    """Header names must be SIP tokens and values single-line (they go into SIP messages)."""
    for name, value in headers.items():
        if not name or any(c not in _HEADER_NAME_CHARS for c in name):
            raise InvalidRequest(f"{field_name}: {name!r} is not a valid SIP header name")
        if values and any(c in value for c in "\r\n\0"):
            raise InvalidRequest(f"{field_name}: value of {name} spans lines")


def validate_outbound_trunk(info: sip_pb.SIPOutboundTrunkInfo) -> None:
    """LiveKit's ``SIPOutboundTrunkInfo.Validate`` plus roomline's header/number checks."""
    if not info.numbers:
        raise InvalidRequest("trunk.numbers: no trunk numbers specified")
    _check_address(info.address, "trunk.address")
    for i, num in enumerate(info.numbers):
        validate_number(num, f"trunk.numbers[{i}]")
    if info.from_host:
        _check_address(info.from_host, "trunk.from_host")
    if bool(info.auth_username) != bool(info.auth_password):
        raise InvalidRequest("trunk.auth_password: auth_username and auth_password go together")
    check_headers(info.headers, "trunk.headers")
    check_headers(
        {h: "" for h in info.attributes_to_headers.values()}, "trunk.attributes_to_headers"
    )
    check_headers(dict.fromkeys(info.headers_to_attributes, ""), "trunk.headers_to_attributes")


def redacted(info: sip_pb.SIPOutboundTrunkInfo) -> sip_pb.SIPOutboundTrunkInfo:
    """A copy safe to list: the digest password is masked (the username stays)."""
    out = sip_pb.SIPOutboundTrunkInfo()
    out.CopyFrom(info)
    if out.auth_password:
        out.auth_password = REDACTED
    return out

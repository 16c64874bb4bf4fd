"""Tiny sans-I/O helpers to read an INVITE's headers as pjsua2 hands it over (``rdata.wholeMsg``).

pjsua2 exposes the raw message text but no parsed header list; the worker forwards every header
to the supervisor (trunk matching, digest auth, ``sip.h.*`` attributes), so it parses them here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from roomline.errors import InvalidRequest

#: RFC 3261 §7.3.3 compact header forms → full names.
_COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
}
#: Header count and size caps (a normal INVITE has ~15 headers of < 200 bytes).
MAX_HEADERS = 100
MAX_HEADER_BYTES = 8192


class SipParseError(InvalidRequest):
    """The SIP message text could not be parsed."""


@dataclass(frozen=True)
class NameAddr:
    user: str
    host: str
    tag: str


def parse_headers(msg: str) -> tuple[str, dict[str, str]]:
    """Start line and headers (repeated headers joined with ", "; names as first seen)."""
    head = re.split(r"\r?\n\r?\n", msg, maxsplit=1)[0]
    lines = re.split(r"\r?\n", head)
    if not lines or not lines[0].strip():
        raise SipParseError("empty SIP message")
    start = lines[0].strip()
    # unfold continuation lines (RFC 3261 §7.3.1)
    unfolded: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()
        elif line:
            unfolded.append(line)
    if len(unfolded) > MAX_HEADERS:
        raise SipParseError("too many SIP headers")
    headers: dict[str, str] = {}
    canon: dict[str, str] = {}
    for line in unfolded:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise SipParseError("malformed SIP header line")
        name = name.strip()
        name = _COMPACT.get(name.lower(), name)
        value = value.strip()[:MAX_HEADER_BYTES]
        key = canon.setdefault(name.lower(), name)
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return start, headers


def get_header(headers: dict[str, str], name: str) -> str | None:
    low = name.lower()
    for k, v in headers.items():
        if k.lower() == low:
            return v
    return None


def parse_name_addr(value: str) -> NameAddr:
    """User, host and tag of a From/To value: ``"Bob" <sip:+1555@host:5060;x=y>;tag=abc``."""
    m = re.search(r"<([^>]*)>(.*)$", value)
    uri, params = (m.group(1), m.group(2)) if m else (value.split(";", 1)[0], value)
    um = re.match(r"\s*(?:sips?|tel):(?:([^@;]*)@)?([^;:?>]*)", uri, re.IGNORECASE)
    if not um:
        raise SipParseError("not a SIP URI")
    user, host = um.group(1) or "", um.group(2) or ""
    if uri.lower().startswith("tel:"):
        user, host = host, ""
    tm = re.search(r";\s*tag=([^;\s]+)", params, re.IGNORECASE)
    return NameAddr(user, host, tm.group(1) if tm else "")


def via_transport(via: str | None) -> str:
    """``udp`` / ``tcp`` / ``tls`` from the top Via (``SIP/2.0/UDP host``)."""
    if via:
        m = re.match(r"\s*SIP\s*/\s*2\.0\s*/\s*(\w+)", via, re.IGNORECASE)
        if m:
            return m.group(1).lower()
    return "udp"

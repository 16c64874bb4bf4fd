"""Inbound SIP trunks: validation, conflict checks and matching an INVITE to a trunk (sans-I/O).

Behaviour follows LiveKit SIP (``livekit/protocol`` ``sip/sip.go``; see ``docs/sip-trunks.md``):

* a trunk is considered only if the caller (From user) is in ``allowed_numbers`` (empty = anyone)
  and the source IP is in ``allowed_addresses`` (IP, CIDR, or a hostname equal to the From host;
  empty = any address);
* among those, a trunk listing the called number (To user) in ``numbers`` beats a trunk with empty
  ``numbers`` (the *default* trunk); two specific matches or two default matches are a
  configuration conflict;
* numbers compare after normalisation (``+`` prefix, spaces/dashes/parentheses removed) when
  they look like phone numbers, and verbatim otherwise (SIP user names such as ``alice``).

One deliberate difference (fail closed): an unparseable source IP matches no allowlist, where
LiveKit lets it through.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from livekit.protocol import models as models_pb
from livekit.protocol import sip as sip_pb

from roomline.errors import InvalidRequest, RoomlineError

__all__ = [
    "InboundCall",
    "TrunkConflict",
    "TrunkMatch",
    "TrunkMatchResult",
    "apply_list_update",
    "match_address",
    "match_numbers",
    "match_trunk",
    "normalize_number",
    "validate_list_update",
    "validate_number",
    "validate_trunk",
    "validate_trunk_conflicts",
]

#: Longest phone number / SIP user part accepted anywhere, in UTF-8 bytes. E.164 is at most 15 digits; SIP user
#: names are short in practice. The cap keeps hostile INVITEs from producing huge identities.
MAX_NUMBER_LEN = 128
#: Longest entry of ``allowed_addresses`` in bytes (a DNS name is at most 253).
MAX_ADDRESS_LEN = 253
#: Most entries in one list field of a trunk or rule; bounds matching cost per INVITE.
MAX_LIST_ITEMS = 1000

_PHONE_RE = re.compile(r"^\+?[\d\- ()]+$")
_PHONE_STRIP = str.maketrans("", "", " -()")
# Characters that cannot appear in a SIP user part we accept: separators of the SIP URI syntax,
# whitespace and control characters. Everything else (letters, digits, '+', '*', '#', '.', '_'...)
# is fine, because SIP user names are not only phone numbers.
_BAD_NUMBER_RE = re.compile(r"[\x00-\x1f\x7f@;<>\"\\,?&=:\[\]{}|^`]")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


@dataclass(frozen=True, slots=True)
class InboundCall:
    """What the bridge worker knows about a new INVITE (mirrors ``bridge.control.InviteRequest``).

    ``authorization`` is the ``Proxy-Authorization`` header value (LiveKit checks only that one;
    a worker may fall back to ``Authorization``). ``headers`` maps header name -> value as
    received (one value per name). ``lk_call_id`` is the ``SCL_`` id the worker uses as its To-tag;
    empty lets the decider generate one.
    """

    call_id: str
    from_user: str
    from_host: str
    to_user: str
    to_host: str
    src_ip: str
    src_port: int
    user_agent: str = ""
    headers: dict[str, str] | None = None
    authorization: str | None = None
    from_tag: str = ""
    transport: str = "udp"
    lk_call_id: str = ""


class TrunkConflict(RoomlineError):
    """Two trunks match the same call equally well (a configuration error, not the caller's)."""

    twirp_code = "failed_precondition"


class TrunkMatch(Enum):
    """How :func:`match_trunk` found its trunk."""

    EMPTY = "empty"  # no trunks are defined at all
    NONE = "none"  # trunks exist, none admitted this call
    DEFAULT = "default"  # a trunk with empty ``numbers`` matched
    SPECIFIC = "specific"  # a trunk listing the called number matched


@dataclass(frozen=True, slots=True)
class TrunkMatchResult:
    """The outcome of :func:`match_trunk`; ``trunk`` is None for EMPTY and NONE."""

    trunk: sip_pb.SIPInboundTrunkInfo | None
    kind: TrunkMatch


def normalize_number(num: str) -> str:
    """LiveKit's number normalisation: phone-like strings lose formatting and gain a ``+``.

    Strings that do not look like phone numbers (``alice``, ``*97``) are returned unchanged, so
    SIP user names keep working.
    """
    if not num or not _PHONE_RE.match(num):
        return num
    num = num.translate(_PHONE_STRIP)
    return num if num.startswith("+") else "+" + num


def match_numbers(num: str, allowed: Sequence[str]) -> bool:
    """True if ``allowed`` is empty or contains ``num`` (verbatim or normalised)."""
    if not allowed:
        return True
    norm = normalize_number(num)
    return any(num == a or norm == normalize_number(a) for a in allowed)


def _usable_mask(mask: str) -> bool:
    # LiveKit silently ignores entries that cannot be an address, a prefix or a hostname.
    return bool(mask) and not any(c in mask for c in "()+*;, \t\n\r") and "://" not in mask


def _strip_brackets(text: str) -> str:
    # "[::1]" and "[::]/64" are accepted spellings of IPv6 entries.
    if text.startswith("["):
        end = text.find("]")
        if end > 0:
            return text[1:end] + text[end + 1 :]
    return text


def _match_mask(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, mask: str) -> bool:
    mask = _strip_brackets(mask)
    try:
        if "/" in mask:
            return ip in ipaddress.ip_network(mask, strict=False)
        return ip == ipaddress.ip_address(mask)
    except ValueError:
        return False


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(_strip_brackets(text))
    except ValueError:
        return None
    # An IPv4-mapped IPv6 source (dual-stack socket) must match IPv4 allowlist entries.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def match_address(src_ip: str, from_host: str, masks: Sequence[str]) -> bool:
    """True if ``masks`` (after dropping unusable entries) is empty or admits the source.

    An entry admits the call if it equals the source IP, is a CIDR containing it, or equals the
    From host (LiveKit's hostname form). An unparseable ``src_ip`` is admitted only by an empty
    list (fail closed).
    """
    usable = [m for m in masks if _usable_mask(m)]
    if not usable:
        return True
    ip = _parse_ip(src_ip)
    for mask in usable:
        if from_host and mask == from_host:
            return True
        if ip is not None and _match_mask(ip, mask):
            return True
    return False


def match_trunk(
    trunks: Iterable[sip_pb.SIPInboundTrunkInfo],
    *,
    calling: str,
    called: str,
    src_ip: str,
    from_host: str,
) -> TrunkMatchResult:
    """Select the inbound trunk for a call, as LiveKit's ``MatchTrunkDetailed`` does.

    Raises :class:`TrunkConflict` if two trunks list the called number, or no trunk lists it
    and two default trunks admit the call.
    """
    seen_any = False
    specific: sip_pb.SIPInboundTrunkInfo | None = None
    defaults: list[sip_pb.SIPInboundTrunkInfo] = []
    called_norm = normalize_number(called)
    for tr in trunks:
        seen_any = True
        if not match_numbers(calling, tr.allowed_numbers):
            continue
        if not match_address(src_ip, from_host, tr.allowed_addresses):
            continue
        if not tr.numbers:
            defaults.append(tr)
            continue
        if any(n == called or normalize_number(n) == called_norm for n in tr.numbers):
            if specific is not None:
                raise TrunkConflict(
                    f"multiple SIP trunks matched for {called!r}: "
                    f"{specific.sip_trunk_id} and {tr.sip_trunk_id}"
                )
            specific = tr
    if specific is not None:
        return TrunkMatchResult(specific, TrunkMatch.SPECIFIC)
    if len(defaults) > 1:
        ids = ", ".join(t.sip_trunk_id for t in defaults)
        raise TrunkConflict(f"multiple default SIP trunks matched for {called!r}: {ids}")
    if defaults:
        return TrunkMatchResult(defaults[0], TrunkMatch.DEFAULT)
    return TrunkMatchResult(None, TrunkMatch.NONE if seen_any else TrunkMatch.EMPTY)


# --- validation -------------------------------------------------------------------------------


def validate_number(value: str, field: str) -> None:
    """Raise :class:`InvalidRequest` naming ``field`` if ``value`` cannot be a SIP user/number."""
    if not value:
        raise InvalidRequest(f"{field}: empty number")
    if len(value.encode()) > MAX_NUMBER_LEN:
        raise InvalidRequest(f"{field}: number longer than {MAX_NUMBER_LEN} bytes")
    if value.strip() != value or _BAD_NUMBER_RE.search(value):
        raise InvalidRequest(f"{field}: {value!r} is not a phone number or SIP user")


def validate_address(value: str, field: str) -> None:
    """An ``allowed_addresses`` entry must be an IP, a CIDR (IPv4/IPv6) or a hostname."""
    if not value or len(value.encode()) > MAX_ADDRESS_LEN:
        raise InvalidRequest(f"{field}: {value!r} is not an IP address, CIDR or hostname")
    text = _strip_brackets(value)
    try:
        if "/" in text:
            ipaddress.ip_network(text, strict=False)
        else:
            ipaddress.ip_address(text)
        return
    except ValueError:
        pass
    if "/" in text or ":" in text or text.replace(".", "").isdigit():
        # Looks like an address or prefix but did not parse: 10.0.0.0/33, 300.1.1.1, 1.2.3.
        raise InvalidRequest(f"{field}: {value!r} is not a valid IP address or CIDR")
    if not _HOSTNAME_RE.match(text):
        raise InvalidRequest(f"{field}: {value!r} is not an IP address, CIDR or hostname")


def _check_list(values: Sequence[str], field: str) -> None:
    if len(values) > MAX_LIST_ITEMS:
        raise InvalidRequest(f"{field}: more than {MAX_LIST_ITEMS} entries")


def _check_header_names(names: Iterable[str], field: str) -> None:
    for name in names:
        # RFC 3261 token characters; a header name can never contain ':' or whitespace.
        if not name or not re.fullmatch(r"[A-Za-z0-9\-.!%*_+`'~]+", name):
            raise InvalidRequest(f"{field}: {name!r} is not a valid SIP header name")


def validate_trunk(info: sip_pb.SIPInboundTrunkInfo) -> None:
    """Field checks LiveKit does plus stricter syntax checks; raises :class:`InvalidRequest`.

    For security one of auth credentials, ``allowed_addresses`` or ``numbers`` must be set
    (LiveKit's rule), so an API typo cannot create a trunk that accepts every call.
    """
    has_auth = bool(info.auth_username or info.auth_password)
    if not has_auth and not info.allowed_addresses and not info.numbers:
        raise InvalidRequest(
            "trunk: for security, one of auth_username+auth_password, allowed_addresses "
            "or numbers must be set"
        )
    if bool(info.auth_username) != bool(info.auth_password):
        raise InvalidRequest("trunk.auth_password: auth_username and auth_password go together")
    for name in ("numbers", "allowed_numbers", "allowed_addresses"):
        _check_list(getattr(info, name), f"trunk.{name}")
    for i, num in enumerate(info.numbers):
        validate_number(num, f"trunk.numbers[{i}]")
    for i, num in enumerate(info.allowed_numbers):
        validate_number(num, f"trunk.allowed_numbers[{i}]")
    for i, addr in enumerate(info.allowed_addresses):
        validate_address(addr, f"trunk.allowed_addresses[{i}]")
    if any(c in info.auth_realm for c in '"\r\n\\'):
        raise InvalidRequest("trunk.auth_realm: must not contain quotes, backslashes or newlines")
    if any(c in info.auth_username for c in '"\r\n\\'):
        raise InvalidRequest("trunk.auth_username: must not contain quotes or newlines")
    _check_header_names(info.headers.keys(), "trunk.headers")
    _check_header_names(info.headers_to_attributes.keys(), "trunk.headers_to_attributes")
    _check_header_names(info.attributes_to_headers.values(), "trunk.attributes_to_headers")
    for name, value in info.headers.items():
        if "\r" in value or "\n" in value:
            raise InvalidRequest(f"trunk.headers[{name}]: value must not contain newlines")
    if info.include_headers not in sip_pb.SIPHeaderOptions.values():
        raise InvalidRequest("trunk.include_headers: unknown SIPHeaderOptions value")


def validate_trunk_conflicts(trunks: Iterable[sip_pb.SIPInboundTrunkInfo]) -> None:
    """Reject sets where two trunks claim the same called number for the same callers.

    Mirrors LiveKit's ``ValidateTrunks``: trunks are bucketed by normalised called number
    (empty ``numbers`` = the default bucket); inside a bucket, two trunks without
    ``allowed_numbers`` conflict, and so do two trunks allowing the same caller number.
    """
    buckets: dict[str, dict[str, sip_pb.SIPInboundTrunkInfo]] = {}
    for tr in trunks:
        keys = {normalize_number(n) for n in tr.numbers} or {""}
        for key in sorted(keys):
            bucket = buckets.setdefault(key, {})
            callers = {normalize_number(n) for n in tr.allowed_numbers} or {""}
            for caller in sorted(callers):
                other = bucket.get(caller)
                if other is not None and other.sip_trunk_id != tr.sip_trunk_id:
                    what = f"number {key!r}" if key else "no numbers (default trunk)"
                    who = f"allowed number {caller!r}" if caller else "no allowed_numbers"
                    raise InvalidRequest(
                        f"trunk.numbers: conflicting inbound SIP trunks "
                        f"{_print_id(tr.sip_trunk_id)} and {_print_id(other.sip_trunk_id)}: "
                        f"both use {what} with {who}"
                    )
                bucket[caller] = tr


def _print_id(trunk_id: str) -> str:
    return trunk_id or "<new>"


# --- ListUpdate (partial updates) --------------------------------------------------------------


def validate_list_update(update: models_pb.ListUpdate, field: str) -> None:
    """LiveKit's ``ListUpdate.Validate``: exactly one of clear / set / add+remove, no empties."""
    change = bool(update.set or update.add or update.remove)
    if not update.clear and not change:
        raise InvalidRequest(f"{field}: unsupported list update operation")
    if update.clear and change:
        raise InvalidRequest(f"{field}: cannot clear and change the list at the same time")
    if update.set and (update.add or update.remove):
        raise InvalidRequest(f"{field}: cannot set and change the list at the same time")
    if any(not v for v in (*update.set, *update.add, *update.remove)):
        raise InvalidRequest(f"{field}: empty element in the list")


def apply_list_update(current: Sequence[str], update: models_pb.ListUpdate) -> list[str]:
    """Return ``current`` changed by ``update`` (clear, set, or remove-then-add)."""
    if update.clear:
        return []
    if update.set:
        return list(update.set)
    out = list(current)
    for v in update.remove:
        if v in out:
            out.remove(v)
    for v in update.add:
        if v not in out:
            out.append(v)
    return out

"""Dispatch rules: validation, selection and evaluation (room name, participant) — sans-I/O.

Selection follows LiveKit's ``MatchDispatchRuleIter``:

* rules whose ``inbound_numbers`` (callers) or ``numbers`` (callees) are non-empty and do not
  contain the number *verbatim* are skipped;
* PIN filter: in "no PIN" mode PIN rules are skipped; once a PIN was entered only rules with
  exactly that PIN remain (no fall-back to open rules);
* rules bound to the matched trunk (``trunk_ids``) beat wildcard rules (no ``trunk_ids``);
* within a group the lowest :func:`rule_priority` wins, ties broken by room name/prefix.

Evaluation follows LiveKit's ``EvaluateDispatchRule``: identity ``sip_<caller>``,
name ``Phone <caller>``, the rule's metadata and attributes, then the ``sip.*`` attributes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from livekit.protocol import sip as sip_pb

from roomline.errors import InvalidRequest
from roomline.ids import random_id
from roomline.wire import MAX_PIN_DIGITS, PIN_DIGITS

from .trunks import InboundCall, normalize_number, validate_number

__all__ = [
    "ATTR_CALL_ID",
    "ATTR_CALL_ID_FULL",
    "ATTR_CALL_STATUS",
    "ATTR_CALL_TAG",
    "ATTR_HEADER_PREFIX",
    "ATTR_HOSTNAME",
    "ATTR_PHONE_NUMBER",
    "ATTR_RULE_ID",
    "ATTR_TRUNK_ID",
    "ATTR_TRUNK_PHONE_NUMBER",
    "DispatchResult",
    "RuleEvaluation",
    "evaluate_rule",
    "header_attributes",
    "match_rule",
    "rule_pin_and_room",
    "rule_priority",
    "validate_rule",
    "validate_rule_conflicts",
]

ATTR_CALL_ID = "sip.callID"
ATTR_CALL_ID_FULL = "sip.callIDFull"
ATTR_CALL_TAG = "sip.callTag"
ATTR_TRUNK_ID = "sip.trunkID"
ATTR_RULE_ID = "sip.ruleID"
ATTR_PHONE_NUMBER = "sip.phoneNumber"
ATTR_TRUNK_PHONE_NUMBER = "sip.trunkPhoneNumber"
ATTR_HOSTNAME = "sip.hostname"
ATTR_CALL_STATUS = "sip.callStatus"
ATTR_HEADER_PREFIX = "sip.h."

#: Provider headers LiveKit always maps to attributes (livekit/sip ``participant.go``).
PROVIDER_HEADER_ATTRS: Mapping[str, str] = {
    "x-twilio-accountsid": "sip.twilio.accountSid",
    "x-twilio-callsid": "sip.twilio.callSid",
    "x-call_leg_id": "sip.telnyx.callLegID",
    "x-call_session_id": "sip.telnyx.callSessionID",
    "x-amzn-connectcontactid": "sip.amazon.contactId",
    "x-amzn-connectinitialcontactid": "sip.amazon.initialContactId",
    "x-amzn-sourceaccount": "sip.amazon.sourceAccount",
    "x-amzn-sourcearn": "sip.amazon.sourceArn",
    "x-amzn-targetarn": "sip.amazon.targetArn",
    "x-lk-test-id": "lktest.id",
}

#: Room names and prefixes longer than this many UTF-8 bytes are refused (LiveKit room names
#: are short ids).
MAX_ROOM_NAME_LEN = 256
#: A rule's PIN: 1 to MAX_PIN_DIGITS keys of PIN_DIGITS (LiveKit collects keys until '#' and
#: treats more than 16 as a wrong PIN).
_PIN_RE = re.compile(rf"^[{re.escape(PIN_DIGITS)}]{{1,{MAX_PIN_DIGITS}}}$")
_PRIORITY_LAST = 2**31 - 1


class DispatchResult(Enum):
    """What evaluating a rule asks the bridge to do."""

    ACCEPT = "accept"
    REQUEST_PIN = "request_pin"


@dataclass(slots=True)
class RuleEvaluation:
    """The result of :func:`evaluate_rule`. For REQUEST_PIN only ``rule_id``/``trunk_id`` are set."""

    result: DispatchResult
    rule_id: str
    trunk_id: str
    room_name: str = ""
    participant_identity: str = ""
    participant_name: str = ""
    participant_metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


def _rule_kind(info: sip_pb.SIPDispatchRuleInfo) -> str | None:
    return info.rule.WhichOneof("rule") if info.HasField("rule") else None


def rule_pin_and_room(info: sip_pb.SIPDispatchRuleInfo) -> tuple[str, str]:
    """``(room name or prefix, pin)`` of a rule; :class:`InvalidRequest` for a missing/unknown type."""
    kind = _rule_kind(info)
    if kind == "dispatch_rule_direct":
        d = info.rule.dispatch_rule_direct
        return d.room_name, d.pin
    if kind == "dispatch_rule_individual":
        i = info.rule.dispatch_rule_individual
        return i.room_prefix, i.pin
    if kind == "dispatch_rule_callee":
        c = info.rule.dispatch_rule_callee
        return c.room_prefix, c.pin
    if kind is None:
        raise InvalidRequest(
            "dispatch_rule.rule: missing or unsupported rule type "
            "(expected dispatch_rule_direct, dispatch_rule_individual or dispatch_rule_callee)"
        )
    raise InvalidRequest(f"dispatch_rule.rule: unsupported rule type {kind}")


def rule_priority(info: sip_pb.SIPDispatchRuleInfo) -> int:
    """LiveKit's ``DispatchRulePriority``: lower wins.

    PIN rules 0/1/2 (direct/individual/callee), open rules 100/101/102; +1000 if
    ``inbound_numbers`` is empty and another +1000 if ``numbers`` is empty.
    """
    kind = _rule_kind(info)
    base = {"dispatch_rule_direct": 0, "dispatch_rule_individual": 1, "dispatch_rule_callee": 2}
    if kind not in base:
        return _PRIORITY_LAST
    _, pin = rule_pin_and_room(info)
    priority = base[kind] + (0 if pin else 100)
    if not info.inbound_numbers:
        priority += 1000
    if not info.numbers:
        priority += 1000
    return priority


def _sort_key(info: sip_pb.SIPDispatchRuleInfo) -> tuple[int, str, str]:
    try:
        room, _ = rule_pin_and_room(info)
    except InvalidRequest:
        room = ""
    # Room name breaks ties as in LiveKit; the rule id makes the order total and stable.
    return (rule_priority(info), room, info.sip_dispatch_rule_id)


def validate_rule(info: sip_pb.SIPDispatchRuleInfo) -> None:
    """Field checks for one rule; raises :class:`InvalidRequest` naming the field."""
    room, pin = rule_pin_and_room(info)
    kind = _rule_kind(info)
    where = f"dispatch_rule.rule.{kind}"
    if kind == "dispatch_rule_direct" and not room:
        raise InvalidRequest(f"{where}.room_name: must not be empty")
    if len(room.encode()) > MAX_ROOM_NAME_LEN:
        raise InvalidRequest(f"{where}: room name longer than {MAX_ROOM_NAME_LEN} bytes")
    if any(ord(c) < 0x20 or c == "\x7f" for c in room):
        raise InvalidRequest(f"{where}: room name must not contain control characters")
    if pin and not _PIN_RE.match(pin):
        raise InvalidRequest(f"{where}.pin: must be 1 to {MAX_PIN_DIGITS} of {PIN_DIGITS}")
    for i, num in enumerate(info.inbound_numbers):
        validate_number(num, f"dispatch_rule.inbound_numbers[{i}]")
    for i, num in enumerate(info.numbers):
        validate_number(num, f"dispatch_rule.numbers[{i}]")
    for i, tid in enumerate(info.trunk_ids):
        if not tid:
            raise InvalidRequest(f"dispatch_rule.trunk_ids[{i}]: empty trunk id")
    for key in info.attributes:
        if not key:
            raise InvalidRequest("dispatch_rule.attributes: empty attribute name")
    for i, agent in enumerate(info.room_config.agents):
        if not agent.agent_name:
            raise InvalidRequest(f"dispatch_rule.room_config.agents[{i}].agent_name: empty")


def validate_rule_conflicts(rules: Iterable[sip_pb.SIPDispatchRuleInfo]) -> None:
    """LiveKit's ``DispatchRuleValidator``: no two rules share (pin, trunk, caller, callee).

    An empty ``trunk_ids`` / ``inbound_numbers`` / ``numbers`` is its own key (""), so a wildcard
    rule only collides with other wildcard rules.
    """
    seen: dict[tuple[str, str, str, str], sip_pb.SIPDispatchRuleInfo] = {}
    for r in rules:
        _, pin = rule_pin_and_room(r)
        for trunk in list(r.trunk_ids) or [""]:
            for caller in list(r.inbound_numbers) or [""]:
                for callee in list(r.numbers) or [""]:
                    key = (pin, trunk, normalize_number(caller), normalize_number(callee))
                    other = seen.get(key)
                    if other is not None and other.sip_dispatch_rule_id != r.sip_dispatch_rule_id:
                        raise InvalidRequest(
                            "dispatch_rule: a dispatch rule for the same trunk, inbound number, "
                            "number and PIN combination already exists: "
                            f"{other.sip_dispatch_rule_id or '<new>'} {other.name!r}"
                        )
                    seen[key] = r


def match_rule(
    trunk: sip_pb.SIPInboundTrunkInfo | None,
    rules: Iterable[sip_pb.SIPDispatchRuleInfo],
    *,
    calling: str,
    called: str,
    pin: str | None = None,
    no_pin: bool = False,
) -> sip_pb.SIPDispatchRuleInfo | None:
    """The best rule for a call, or None if no rule applies.

    ``pin`` is the PIN the caller entered (None before PIN entry); ``no_pin`` means the caller
    pressed only ``#``. Rules of an unknown type are skipped (they cannot be evaluated).
    """
    specific: list[sip_pb.SIPDispatchRuleInfo] = []
    wildcard: list[sip_pb.SIPDispatchRuleInfo] = []
    for info in rules:
        if info.inbound_numbers and calling not in info.inbound_numbers:
            continue
        if info.numbers and called not in info.numbers:
            continue
        try:
            _, rule_pin = rule_pin_and_room(info)
        except InvalidRequest:
            continue
        if no_pin:
            if rule_pin:
                continue
        elif pin:
            if rule_pin != pin:
                # Wrong PIN, or an open rule: once a PIN was sent there is no fall-back.
                continue
        if not info.trunk_ids:
            wildcard.append(info)
        elif trunk is not None and trunk.sip_trunk_id in info.trunk_ids:
            specific.append(info)
    for group in (specific, wildcard):
        if group:
            return min(group, key=_sort_key)
    return None


def header_attributes(
    headers: Mapping[str, str],
    headers_to_attributes: Mapping[str, str],
    include_headers: int,
) -> dict[str, str]:
    """Attributes derived from INVITE headers, as LiveKit's ``HeadersToAttrs``.

    ``include_headers`` (``SIPHeaderOptions``) copies all headers or only ``X-*`` ones to
    ``sip.h.<lower-case name>``; known provider headers get their fixed names; the trunk's
    ``headers_to_attributes`` map (header name, case-insensitive -> attribute) is applied last.
    """
    attrs: dict[str, str] = {}
    lower = {name.lower(): value for name, value in headers.items() if name}
    if include_headers != sip_pb.SIP_NO_HEADERS:
        for name, value in lower.items():
            if include_headers == sip_pb.SIP_X_HEADERS and not name.startswith("x-"):
                continue
            attrs[ATTR_HEADER_PREFIX + name] = value
    for name, attr in PROVIDER_HEADER_ATTRS.items():
        if name in lower:
            attrs[attr] = lower[name]
    for name, attr in headers_to_attributes.items():
        mapped = lower.get(name.lower())
        if mapped is not None and attr:
            attrs[attr] = mapped
    return attrs


def _hidden_caller(number: str) -> tuple[str, str]:
    """(identity, short number) for ``hide_phone_number``: hash for identity, last 4 digits."""
    digest = hashlib.sha256(number.encode()).digest()[:8].hex()
    n = 4 if len(number) > 4 else 1
    return "sip_" + digest, number[-n:]


def evaluate_rule(
    trunk: sip_pb.SIPInboundTrunkInfo | None,
    rule: sip_pb.SIPDispatchRuleInfo,
    call: InboundCall,
    *,
    lk_call_id: str,
    pin: str | None = None,
    call_status: str = "ringing",
    random_suffix: Callable[[], str] = random_id,
) -> RuleEvaluation:
    """Build room name, participant identity/name/metadata and attributes for ``call``.

    A PIN-protected rule with no ``pin`` yields REQUEST_PIN. A PIN entered for an open rule is
    ignored (LiveKit assumes a stray key press). A wrong PIN raises :class:`InvalidRequest`
    (cannot happen after :func:`match_rule`, which filters by PIN).
    """
    trunk_id = trunk.sip_trunk_id if trunk is not None else ""
    room, rule_pin = rule_pin_and_room(rule)
    if rule_pin:
        if not pin:
            return RuleEvaluation(DispatchResult.REQUEST_PIN, rule.sip_dispatch_rule_id, trunk_id)
        if pin != rule_pin:
            raise InvalidRequest("incorrect PIN for SIP room")

    caller, callee = call.from_user, call.to_user
    identity, name, room_caller = "sip_" + caller, "Phone " + caller, caller
    if rule.hide_phone_number:
        identity, room_caller = _hidden_caller(caller)
        name = "Phone " + room_caller

    kind = _rule_kind(rule)
    if kind == "dispatch_rule_individual":
        ind = rule.rule.dispatch_rule_individual
        room = f"{ind.room_prefix}_{room_caller}" if ind.room_prefix else room_caller
        if not ind.no_randomness:
            room += "_" + random_suffix()
    elif kind == "dispatch_rule_callee":
        cal = rule.rule.dispatch_rule_callee
        room = f"{cal.room_prefix}_{callee}" if cal.room_prefix else callee
        if cal.randomize:
            room += "_" + random_suffix()

    attrs = dict(rule.attributes)
    headers = call.headers or {}
    if trunk is not None:
        attrs.update(header_attributes(headers, trunk.headers_to_attributes, trunk.include_headers))
    else:
        attrs.update(header_attributes(headers, {}, sip_pb.SIP_NO_HEADERS))
    if call.from_tag:
        attrs[ATTR_CALL_TAG] = call.from_tag
    if call.call_id:
        attrs[ATTR_CALL_ID_FULL] = call.call_id
    # The core sip.* attributes go last so no header mapping can spoof them.
    attrs[ATTR_CALL_ID] = lk_call_id
    attrs[ATTR_TRUNK_ID] = trunk_id
    if not rule.hide_phone_number:
        attrs[ATTR_PHONE_NUMBER] = caller
        attrs[ATTR_HOSTNAME] = call.from_host
        attrs[ATTR_TRUNK_PHONE_NUMBER] = callee
    attrs[ATTR_RULE_ID] = rule.sip_dispatch_rule_id
    attrs[ATTR_CALL_STATUS] = call_status
    return RuleEvaluation(
        DispatchResult.ACCEPT,
        rule.sip_dispatch_rule_id,
        trunk_id,
        room_name=room,
        participant_identity=identity,
        participant_name=name,
        participant_metadata=rule.metadata,
        attributes=attrs,
    )

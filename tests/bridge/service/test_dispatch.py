"""bridge/service/dispatch.py: dispatch-rule selection, validation and evaluation (room, identity, attributes)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from livekit.protocol import sip as sip_pb

from bridge.service.dispatch import (
    DispatchResult,
    evaluate_rule,
    header_attributes,
    match_rule,
    rule_priority,
    validate_rule,
    validate_rule_conflicts,
)
from bridge.service.trunks import (
    InboundCall,
)
from roomline.errors import InvalidRequest
from roomline_harness.sip_rules import (
    CALLED,
    CALLER,
    call,
    callee,
    direct,
    individual,
    trunk,
)


def test_priorities() -> None:
    assert rule_priority(direct("a", "r", pin="1")) == 2000
    assert rule_priority(individual("a", "r", pin="1")) == 2001
    assert rule_priority(callee("a", "r", pin="1")) == 2002
    assert rule_priority(direct("a", "r")) == 2100
    assert rule_priority(individual("a", "r")) == 2101
    assert rule_priority(callee("a", "r")) == 2102
    assert rule_priority(direct("a", "r", inbound_numbers=[CALLER])) == 1100
    assert rule_priority(direct("a", "r", inbound_numbers=[CALLER], numbers=[CALLED])) == 100
    assert rule_priority(sip_pb.SIPDispatchRuleInfo()) == 2**31 - 1


def pick(rules: list[sip_pb.SIPDispatchRuleInfo], tr=None, **kw: Any) -> str | None:
    r = match_rule(tr, rules, calling=kw.pop("calling", CALLER), called=CALLED, **kw)
    return r.sip_dispatch_rule_id if r is not None else None


def test_trunk_bound_rule_beats_wildcard_even_with_better_priority() -> None:
    tr = trunk("ST_t", numbers=[CALLED])
    bound = callee("SDR_bound", "c", trunk_ids=["ST_t"])
    wildcard = direct("SDR_wild", "room", inbound_numbers=[CALLER], numbers=[CALLED])
    assert pick([wildcard, bound], tr) == "SDR_bound"
    # Bound to another trunk: only the wildcard applies.
    assert pick([wildcard, callee("SDR_other", "c", trunk_ids=["ST_x"])], tr) == "SDR_wild"
    # No trunk at all: bound rules never apply.
    assert pick([bound], None) is None


def test_priority_order_within_group() -> None:
    rules = [callee("SDR_c", "c"), individual("SDR_i", "i"), direct("SDR_d", "d")]
    assert pick(rules) == "SDR_d"
    rules.append(callee("SDR_c_num", "cn", inbound_numbers=[CALLER]))
    assert pick(rules) == "SDR_c_num"  # specific caller beats rule type


def test_tie_broken_by_room_name() -> None:
    assert pick([direct("SDR_z", "zeta", numbers=[CALLED]), direct("SDR_a", "alpha", numbers=[CALLED], inbound_numbers=[])]) == "SDR_a"  # fmt: skip


def test_inbound_numbers_and_numbers_filter_exact() -> None:
    only = direct("SDR_only", "r", inbound_numbers=["+15550000000"])
    assert pick([only]) is None
    # Exact string match, not normalised (LiveKit).
    assert pick([direct("SDR_n", "r", inbound_numbers=["15551230001"])]) is None
    assert pick([direct("SDR_n", "r", inbound_numbers=[CALLER])]) == "SDR_n"
    assert pick([direct("SDR_c", "r", numbers=["+15550000000"])]) is None


def test_pin_filtering() -> None:
    open_rule = direct("SDR_open", "open")
    pin_rule = direct("SDR_pin", "secret", pin="1234")
    assert pick([open_rule, pin_rule]) == "SDR_pin"  # PIN rules have better priority
    assert pick([open_rule, pin_rule], no_pin=True) == "SDR_open"
    assert pick([open_rule, pin_rule], pin="1234") == "SDR_pin"
    assert pick([open_rule, pin_rule], pin="9999") is None  # no fall-back to open rules
    assert pick([direct("SDR_p1", "a", pin="11"), direct("SDR_p2", "b", pin="22")], pin="22") == "SDR_p2"  # fmt: skip


def test_unknown_rule_type_skipped_and_rejected() -> None:
    empty = sip_pb.SIPDispatchRuleInfo(sip_dispatch_rule_id="SDR_bad")
    assert pick([empty]) is None
    assert pick([empty, direct("SDR_ok", "r")]) == "SDR_ok"
    with pytest.raises(InvalidRequest, match="rule type"):
        validate_rule(empty)


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (direct("", ""), "room_name"),
        (direct("", "r", pin="12a"), "pin"),
        (direct("", "r", pin="1" * 17), "pin"),
        (direct("", "r\x00x"), "control"),
        (direct("", "r", inbound_numbers=["a@b"]), "inbound_numbers"),
        (direct("", "r", trunk_ids=[""]), "trunk_ids"),
    ],
)
def test_validate_rule_bad(rule: sip_pb.SIPDispatchRuleInfo, field: str) -> None:
    with pytest.raises(InvalidRequest, match=field):
        validate_rule(rule)


def test_rule_conflicts() -> None:
    validate_rule_conflicts([direct("SDR_1", "a", trunk_ids=["ST_1"]), direct("SDR_2", "b")])
    with pytest.raises(InvalidRequest, match="already exists"):
        validate_rule_conflicts([direct("SDR_1", "a"), individual("SDR_2", "b")])
    with pytest.raises(InvalidRequest):
        validate_rule_conflicts(
            [
                direct("SDR_1", "a", inbound_numbers=["+1555"]),
                direct("SDR_2", "b", inbound_numbers=["1555"]),
            ]  # fmt: skip
        )
    validate_rule_conflicts([direct("SDR_1", "a", pin="1"), direct("SDR_2", "b", pin="2")])


# --- evaluation --------------------------------------------------------------------------------


def evaluate(rule: sip_pb.SIPDispatchRuleInfo, tr=None, c: InboundCall | None = None, **kw: Any):
    return evaluate_rule(tr, rule, c or call(), lk_call_id="SCL_test", random_suffix=lambda: "RND", **kw)  # fmt: skip


def test_direct_rule_room_and_participant() -> None:
    ev = evaluate(direct("SDR_d", "lobby", metadata='{"m":1}', attributes={"team": "a"}))
    assert ev.result is DispatchResult.ACCEPT
    assert ev.room_name == "lobby"
    assert ev.participant_identity == f"sip_{CALLER}"
    assert ev.participant_name == f"Phone {CALLER}"
    assert ev.participant_metadata == '{"m":1}'
    assert ev.attributes["team"] == "a"


def test_individual_room_names() -> None:
    assert evaluate(individual("r", "call")).room_name == f"call_{CALLER}_RND"
    assert evaluate(individual("r", "call", no_randomness=True)).room_name == f"call_{CALLER}"
    assert evaluate(individual("r", "", no_randomness=True)).room_name == CALLER


def test_individual_real_random_suffix_differs() -> None:
    r = individual("r", "call")
    a = evaluate_rule(None, r, call(), lk_call_id="x").room_name
    b = evaluate_rule(None, r, call(), lk_call_id="x").room_name
    assert a != b and re.fullmatch(rf"call_\{CALLER}_[0-9A-Za-z]{{12}}", a)


def test_callee_room_names() -> None:
    assert evaluate(callee("r", "sales")).room_name == f"sales_{CALLED}"
    assert evaluate(callee("r", "")).room_name == CALLED
    assert evaluate(callee("r", "sales", randomize=True)).room_name == f"sales_{CALLED}_RND"


def test_pin_rule_requests_pin_then_accepts() -> None:
    rule = direct("SDR_p", "vault", pin="4321")
    assert evaluate(rule).result is DispatchResult.REQUEST_PIN
    ev = evaluate(rule, pin="4321")
    assert ev.result is DispatchResult.ACCEPT and ev.room_name == "vault"
    with pytest.raises(InvalidRequest):
        evaluate(rule, pin="0000")
    # A PIN typed for an open rule is ignored.
    assert evaluate(direct("SDR_o", "open"), pin="5").room_name == "open"


def test_all_sip_attributes() -> None:
    tr = trunk("ST_t", numbers=[CALLED])
    ev = evaluate(direct("SDR_d", "lobby", attributes={"sip.trunkID": "spoof"}), tr)
    a = ev.attributes
    assert a["sip.callID"] == "SCL_test"
    assert a["sip.callIDFull"] == "a84b4c76e66710@pc33.example.com"
    assert a["sip.callTag"] == "1928301774"
    assert a["sip.trunkID"] == "ST_t"  # the rule cannot override core attributes
    assert a["sip.ruleID"] == "SDR_d"
    assert a["sip.phoneNumber"] == CALLER
    assert a["sip.trunkPhoneNumber"] == CALLED
    assert a["sip.hostname"] == "carrier.example.net"
    assert a["sip.callStatus"] == "ringing"


def test_hide_phone_number() -> None:
    ev = evaluate(individual("SDR_h", "p", no_randomness=True, hide_phone_number=True))
    digest = hashlib.sha256(CALLER.encode()).digest()[:8].hex()
    assert ev.participant_identity == "sip_" + digest
    assert ev.participant_name == "Phone 0001"
    assert ev.room_name == "p_0001"
    for key in ("sip.phoneNumber", "sip.trunkPhoneNumber", "sip.hostname"):
        assert key not in ev.attributes


HEADERS = {
    "Via": "SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bK776asdhds",
    "X-Customer-Id": "cust-42",
    "X-Twilio-CallSid": "CA123",
    "P-Asserted-Identity": "<sip:+15551230001@carrier>",
}


def test_include_headers_modes() -> None:
    none = header_attributes(HEADERS, {}, sip_pb.SIP_NO_HEADERS)
    assert none == {"sip.twilio.callSid": "CA123"}  # provider headers are always mapped
    x = header_attributes(HEADERS, {}, sip_pb.SIP_X_HEADERS)
    assert x["sip.h.x-customer-id"] == "cust-42" and "sip.h.via" not in x
    everything = header_attributes(HEADERS, {}, sip_pb.SIP_ALL_HEADERS)
    assert everything["sip.h.via"].startswith("SIP/2.0/UDP")
    assert everything["sip.h.p-asserted-identity"] == "<sip:+15551230001@carrier>"


def test_headers_to_attributes_case_insensitive() -> None:
    attrs = header_attributes(HEADERS, {"x-customer-id": "customer", "X-Missing": "m"}, 0)
    assert attrs["customer"] == "cust-42" and "m" not in attrs


def test_trunk_header_options_reach_evaluation() -> None:
    tr = trunk(
        "ST_t",
        numbers=[CALLED],
        include_headers=sip_pb.SIP_X_HEADERS,
        headers_to_attributes={"P-Asserted-Identity": "pai"},
    )
    ev = evaluate(direct("SDR_d", "lobby"), tr, call(headers=HEADERS))
    assert ev.attributes["sip.h.x-customer-id"] == "cust-42"
    assert ev.attributes["pai"] == "<sip:+15551230001@carrier>"

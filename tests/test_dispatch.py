"""Trunk matching, dispatch-rule selection/evaluation and the InviteDecider (all sans-I/O)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api
from livekit.protocol import agent_dispatch as agent_pb
from livekit.protocol import room as room_pb
from livekit.protocol import sip as sip_pb

from bridge.service.decide import DecideOptions, InviteDecider
from bridge.service.dispatch import (
    DispatchResult,
    evaluate_rule,
    header_attributes,
    match_rule,
    rule_priority,
    validate_rule,
    validate_rule_conflicts,
)
from bridge.service.store import SIPStore
from bridge.service.trunks import (
    InboundCall,
    TrunkConflict,
    TrunkMatch,
    match_address,
    match_numbers,
    match_trunk,
    normalize_number,
    validate_trunk,
    validate_trunk_conflicts,
)
from roomline.errors import InvalidRequest

CALLER = "+15551230001"
CALLED = "+15559870000"
CARRIER_IP = "203.0.113.7"
NOW = 1_750_000_000.0
KEYS = {"APIkey1": "secret-one-that-is-long-enough-xx", "APIkey2": "second-secret-long-enough-xxxx"}


def trunk(tid: str, **kw: Any) -> sip_pb.SIPInboundTrunkInfo:
    return sip_pb.SIPInboundTrunkInfo(sip_trunk_id=tid, **kw)


def direct(rid: str, room: str, pin: str = "", **kw: Any) -> sip_pb.SIPDispatchRuleInfo:
    rule = sip_pb.SIPDispatchRule(
        dispatch_rule_direct=sip_pb.SIPDispatchRuleDirect(room_name=room, pin=pin)
    )
    return sip_pb.SIPDispatchRuleInfo(sip_dispatch_rule_id=rid, rule=rule, **kw)


def individual(rid: str, prefix: str, pin: str = "", no_randomness: bool = False, **kw: Any):
    rule = sip_pb.SIPDispatchRule(
        dispatch_rule_individual=sip_pb.SIPDispatchRuleIndividual(
            room_prefix=prefix, pin=pin, no_randomness=no_randomness
        )
    )
    return sip_pb.SIPDispatchRuleInfo(sip_dispatch_rule_id=rid, rule=rule, **kw)


def callee(rid: str, prefix: str, pin: str = "", randomize: bool = False, **kw: Any):
    rule = sip_pb.SIPDispatchRule(
        dispatch_rule_callee=sip_pb.SIPDispatchRuleCallee(
            room_prefix=prefix, pin=pin, randomize=randomize
        )
    )
    return sip_pb.SIPDispatchRuleInfo(sip_dispatch_rule_id=rid, rule=rule, **kw)


def call(**kw: Any) -> InboundCall:
    base: dict[str, Any] = dict(
        call_id="a84b4c76e66710@pc33.example.com",
        from_user=CALLER,
        from_host="carrier.example.net",
        to_user=CALLED,
        to_host="roomline.example.com",
        src_ip=CARRIER_IP,
        src_port=5060,
        user_agent="Carrier-SBC/1.0",
        headers={},
        authorization=None,
        from_tag="1928301774",
    )
    base.update(kw)
    return InboundCall(**base)


def match(trunks: list[sip_pb.SIPInboundTrunkInfo], c: InboundCall | None = None):
    c = c or call()
    return match_trunk(
        trunks, calling=c.from_user, called=c.to_user, src_ip=c.src_ip, from_host=c.from_host
    )


# --- numbers and addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("+15551230001", "+15551230001"),
        ("15551230001", "+15551230001"),
        ("+1 (555) 123-0001", "+15551230001"),
        ("alice", "alice"),
        ("*97", "*97"),
        ("", ""),
    ],
)
def test_normalize_number(raw: str, norm: str) -> None:
    assert normalize_number(raw) == norm


def test_match_numbers() -> None:
    assert match_numbers(CALLER, [])
    assert match_numbers("15551230001", [CALLER])
    assert match_numbers(CALLER, ["+1 555 123 0001"])
    assert not match_numbers("+15551230002", [CALLER])
    assert match_numbers("alice", ["alice"])


@pytest.mark.parametrize(
    ("src", "masks", "ok"),
    [
        (CARRIER_IP, [], True),
        (CARRIER_IP, [CARRIER_IP], True),
        (CARRIER_IP, ["203.0.113.0/24"], True),
        (CARRIER_IP, ["203.0.113.8/29"], False),
        (CARRIER_IP, ["198.51.100.0/24", "203.0.113.7"], True),
        (CARRIER_IP, ["198.51.100.1"], False),
        ("2001:db8::5", ["2001:db8::/32"], True),
        ("2001:db8::5", ["[2001:db8::5]"], True),
        ("::ffff:203.0.113.7", ["203.0.113.0/24"], True),  # dual-stack socket
        (CARRIER_IP, ["carrier.example.net"], True),  # hostname == From host
        (CARRIER_IP, ["other.example.net"], False),
        (CARRIER_IP, ["10.0.0.0/33"], False),  # invalid mask never matches
        (CARRIER_IP, ["bad entry,with comma"], True),  # unusable entries ignored (LiveKit)
        ("not-an-ip", ["203.0.113.0/24"], False),  # fail closed
    ],
)
def test_match_address(src: str, masks: list[str], ok: bool) -> None:
    assert match_address(src, "carrier.example.net", masks) is ok


# --- trunk selection --------------------------------------------------------------------------


def test_specific_trunk_beats_default() -> None:
    default = trunk("ST_default", allowed_addresses=[CARRIER_IP])
    specific = trunk("ST_specific", numbers=[CALLED])
    res = match([default, specific])
    assert res.kind is TrunkMatch.SPECIFIC and res.trunk is not None
    assert res.trunk.sip_trunk_id == "ST_specific"


def test_called_number_normalized() -> None:
    res = match([trunk("ST_a", numbers=["1 (555) 987-0000"])])
    assert res.trunk is not None and res.trunk.sip_trunk_id == "ST_a"


def test_default_trunk_when_number_not_listed() -> None:
    res = match([trunk("ST_other", numbers=["+15550000000"]), trunk("ST_def", numbers=[])])
    assert res.kind is TrunkMatch.DEFAULT and res.trunk is not None
    assert res.trunk.sip_trunk_id == "ST_def"


def test_no_trunk_and_empty() -> None:
    assert match([]).kind is TrunkMatch.EMPTY
    res = match([trunk("ST_x", numbers=["+15550000000"])])
    assert res.kind is TrunkMatch.NONE and res.trunk is None


def test_ip_allowlist_filters_trunk() -> None:
    t = trunk("ST_ip", numbers=[CALLED], allowed_addresses=["198.51.100.0/24"])
    assert match([t]).trunk is None
    assert match([t], call(src_ip="198.51.100.20")).trunk is not None


def test_allowed_numbers_filters_trunk() -> None:
    t = trunk("ST_an", numbers=[CALLED], allowed_numbers=["+15551230009"])
    assert match([t]).trunk is None
    assert match([t], call(from_user="+15551230009")).trunk is not None


def test_two_specific_trunks_conflict() -> None:
    with pytest.raises(TrunkConflict):
        match([trunk("ST_1", numbers=[CALLED]), trunk("ST_2", numbers=[CALLED])])


def test_two_default_trunks_conflict() -> None:
    with pytest.raises(TrunkConflict):
        match([trunk("ST_1", allowed_addresses=[CARRIER_IP]), trunk("ST_2")])


def test_allowlist_disambiguates_same_number() -> None:
    a = trunk("ST_a", numbers=[CALLED], allowed_addresses=["203.0.113.0/24"])
    b = trunk("ST_b", numbers=[CALLED], allowed_addresses=["198.51.100.0/24"])
    res = match([a, b])
    assert res.trunk is not None and res.trunk.sip_trunk_id == "ST_a"


# --- trunk validation -------------------------------------------------------------------------


def test_validate_trunk_requires_some_security() -> None:
    with pytest.raises(InvalidRequest, match="for security"):
        validate_trunk(trunk(""))
    validate_trunk(trunk("", numbers=[CALLED]))
    validate_trunk(trunk("", allowed_addresses=["10.0.0.0/8"]))
    validate_trunk(trunk("", auth_username="u", auth_password="p"))


@pytest.mark.parametrize(
    "addr", ["10.0.0.0/33", "300.1.1.1", "1.2.3", "2001:db8::/129", "a b", "sip:x@y", "10.0.0.1/x"]
)
def test_validate_trunk_bad_address(addr: str) -> None:
    with pytest.raises(InvalidRequest, match=r"allowed_addresses\[0\]"):
        validate_trunk(trunk("", allowed_addresses=[addr]))


@pytest.mark.parametrize("addr", ["10.0.0.0/8", "10.1.2.3/8", "2001:db8::/32", "sbc.carrier.net"])
def test_validate_trunk_good_address(addr: str) -> None:
    validate_trunk(trunk("", allowed_addresses=[addr]))


@pytest.mark.parametrize("num", ["", " +1555", "+1555\n", "a@b", "x;y", "<1>", "9" * 200])
def test_validate_trunk_garbage_numbers(num: str) -> None:
    with pytest.raises(InvalidRequest, match=r"trunk.numbers\[0\]"):
        validate_trunk(trunk("", numbers=[num]))


def test_validate_trunk_half_credentials() -> None:
    with pytest.raises(InvalidRequest, match="auth_password"):
        validate_trunk(trunk("", numbers=[CALLED], auth_username="u"))


def test_trunk_conflicts_like_livekit() -> None:
    validate_trunk_conflicts([trunk("ST_1", numbers=["+1555"]), trunk("ST_2", numbers=["+1666"])])
    with pytest.raises(InvalidRequest, match="conflicting"):
        validate_trunk_conflicts(
            [trunk("ST_1", numbers=["+1555"]), trunk("ST_2", numbers=["1555"])]
        )
    # Same number, disjoint allowed callers: fine.
    validate_trunk_conflicts(
        [
            trunk("ST_1", numbers=["+1555"], allowed_numbers=["+1000"]),
            trunk("ST_2", numbers=["+1555"], allowed_numbers=["+2000"]),
        ]
    )
    with pytest.raises(InvalidRequest):
        validate_trunk_conflicts(
            [
                trunk("ST_1", numbers=["+1555"], allowed_numbers=["+1000"]),
                trunk("ST_2", numbers=["+1555"], allowed_numbers=["1000"]),
            ]
        )
    with pytest.raises(InvalidRequest):  # two default trunks
        validate_trunk_conflicts(
            [trunk("ST_1", auth_username="a", auth_password="b"), trunk("ST_2")]
        )


# --- rules -------------------------------------------------------------------------------------


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


# --- the decider -------------------------------------------------------------------------------


def lk_minter(api_key: str, secret: str, **kw: Any) -> str:
    """The roomline.auth.mint_token contract, implemented with the livekit-api SDK for the tests."""
    tok = (
        api.AccessToken(api_key, secret)
        .with_identity(kw["identity"])
        .with_name(kw["name"])
        .with_kind(kw["kind"])
        .with_metadata(kw["metadata"])
        .with_attributes(kw["attributes"])
        .with_ttl(timedelta(seconds=kw["ttl"]))
        .with_grants(api.VideoGrants(room_join=True, room=kw["room"]))
    )
    return tok.to_jwt()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SIPStore]:
    s = SIPStore(tmp_path / "sip.db")
    yield s
    s.close()


def decider(store: SIPStore, **opts: Any) -> InviteDecider:
    return InviteDecider(store, KEYS, DecideOptions(**opts), minter=lk_minter)


def ua_auth(challenge: str, user: str, password: str, uri: str = f"sip:{CALLED}@pbx") -> str:
    p = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5(f"{user}:{p['realm']}:{password}"), md5(f"INVITE:{uri}")
    resp = md5(f"{ha1}:{p['nonce']}:00000001:0a4f113b:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
        f'response="{resp}", algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001'
    )


def test_decide_accepts_and_mints_sip_token(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED], allowed_addresses=["203.0.113.0/24"]))
    ra = room_pb.RoomConfiguration(
        agents=[agent_pb.RoomAgentDispatch(agent_name="receptionist")], metadata="rm"
    )
    store.put_dispatch_rule(
        individual("SDR_i", "call", trunk_ids=["ST_t"], room_config=ra, metadata="pm")
    )
    d = decider(store).decide(call(lk_call_id="SCL_fixed"), NOW)
    assert d.status == 200 and d.accepted and not d.drop
    assert d.trunk_id == "ST_t" and d.rule_id == "SDR_i"
    assert d.room_name.startswith(f"call_{CALLER}_")
    assert d.agents == ["receptionist"] and d.room_metadata == "rm"
    assert d.participant_identity == f"sip_{CALLER}"
    assert d.attributes["sip.callID"] == "SCL_fixed"
    assert d.attributes["sip.callStatus"] == "ringing"
    claims = api.TokenVerifier("APIkey1", KEYS["APIkey1"]).verify(d.token)
    assert claims.identity == f"sip_{CALLER}"
    assert claims.kind == "sip"
    assert claims.name == f"Phone {CALLER}"
    assert claims.metadata == "pm"
    assert (claims.attributes or {})["sip.trunkID"] == "ST_t"
    assert claims.video is not None and claims.video.room == d.room_name


def test_decide_default_minter_uses_sfu_auth_when_present(store: SIPStore) -> None:
    pytest.importorskip("roomline.auth")
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    # The token is dated with the ``now`` passed in: use the real clock so it verifies.
    d = InviteDecider(store, KEYS).decide(call(), time.time())
    assert d.status == 200
    claims = api.TokenVerifier("APIkey1", KEYS["APIkey1"]).verify(d.token)
    assert claims.identity == f"sip_{CALLER}" and claims.kind == "sip"


def test_decide_no_trunk_404(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=["+15550000000"]))
    store.put_dispatch_rule(direct("SDR_w", "lobby"))  # wildcard must not bypass trunks
    d = decider(store).decide(call(), NOW)
    assert (d.status, d.reason, d.drop) == (404, "No trunk found", False)


def test_decide_ip_not_allowed_404(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED], allowed_addresses=["198.51.100.0/24"]))
    store.put_dispatch_rule(direct("SDR_w", "lobby"))
    assert decider(store).decide(call(), NOW).status == 404
    assert decider(store).decide(call(src_ip="198.51.100.9"), NOW).status == 200


def test_decide_trunkless_only_when_allowed(store: SIPStore) -> None:
    store.put_dispatch_rule(direct("SDR_w", "lobby"))
    assert decider(store).decide(call(), NOW).status == 404
    d = decider(store, allow_trunkless=True).decide(call(), NOW)
    assert d.status == 200 and d.trunk_id == "" and d.room_name == "lobby"


def test_decide_no_rule_404(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    d = decider(store).decide(call(), NOW)
    assert (d.status, d.reason) == (404, "Does not match Trunks or Dispatch Rules")


def test_decide_digest_flow(store: SIPStore) -> None:
    store.put_inbound_trunk(
        trunk("ST_a", numbers=[CALLED], auth_username="carrier", auth_password="s3cret!")
    )
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    dec = decider(store)
    first = dec.decide(call(), NOW)
    assert first.status == 407 and not first.drop
    challenge = first.extra_headers["Proxy-Authenticate"]
    assert 'realm="LiveKit"' in challenge
    wrong = dec.decide(call(authorization=ua_auth(challenge, "carrier", "nope")), NOW + 0.1)
    assert wrong.status == 401
    wrong_user = dec.decide(call(authorization=ua_auth(challenge, "eve", "s3cret!")), NOW + 0.1)
    assert wrong_user.status == 401
    ok = dec.decide(call(authorization=ua_auth(challenge, "carrier", "s3cret!")), NOW + 0.2)
    assert ok.status == 200 and ok.room_name == "lobby"


def test_decide_digest_realm_from_trunk(store: SIPStore) -> None:
    store.put_inbound_trunk(
        trunk("ST_a", numbers=[CALLED], auth_username="u", auth_password="p", auth_realm="pbx.lan")
    )
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    first = decider(store).decide(call(), NOW)
    assert 'realm="pbx.lan"' in first.extra_headers["Proxy-Authenticate"]


@pytest.mark.parametrize(
    "header",
    ["Digest garbage", "Basic dTpw", 'Digest username="u"', "\x00\xff", "Digest " + "a=" * 3000],
)
def test_decide_malformed_authorization_401_and_keeps_serving(store: SIPStore, header: str) -> None:
    store.put_inbound_trunk(trunk("ST_a", numbers=[CALLED], auth_username="u", auth_password="p"))
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    dec = decider(store)
    assert dec.decide(call(authorization=header), NOW).status == 401
    ch = dec.decide(call(call_id="other"), NOW).extra_headers["Proxy-Authenticate"]
    assert dec.decide(call(call_id="other", authorization=ua_auth(ch, "u", "p")), NOW).accepted


def test_decide_scanner_dropped(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    for ua in ("friendly-scanner", "sipvicious 0.3.4", "SIPcli/v1.8"):
        d = decider(store).decide(call(user_agent=ua), NOW)
        assert d.drop and not d.accepted


def test_hide_inbound_port_drops_rejections_but_not_challenges(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_a", numbers=[CALLED], auth_username="u", auth_password="p"))
    dec = decider(store, hide_inbound_port=True)
    assert dec.decide(call(to_user="+10000000000"), NOW).drop  # no trunk
    first = dec.decide(call(), NOW)
    assert first.status == 407 and not first.drop  # auth must still be possible
    bad = dec.decide(call(authorization="Digest junk"), NOW)
    assert bad.status == 401 and bad.drop
    good = dec.decide(
        call(authorization=ua_auth(first.extra_headers["Proxy-Authenticate"], "u", "p")), NOW
    )
    assert good.status == 404 and good.drop  # no dispatch rule


def test_decide_pin_flow(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    store.put_dispatch_rule(direct("SDR_pin", "vault", pin="2468"))
    store.put_dispatch_rule(direct("SDR_pin2", "other-vault", pin="1357"))
    dec = decider(store)
    d = dec.decide(call(), NOW)
    assert d.status == 200 and d.pin_required and d.room_name == "" and d.token == ""
    ok = dec.check_pin(call(), "1357", NOW)
    assert ok.accepted and ok.room_name == "other-vault" and ok.rule_id == "SDR_pin2"
    assert ok.attributes["sip.callStatus"] == "active"
    for bad in ("0000", "", "12ab", "1" * 40):
        assert dec.check_pin(call(), bad, NOW).status == 403


def test_decide_pin_or_open_room(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    store.put_dispatch_rule(direct("SDR_pin", "vault", pin="2468"))
    store.put_dispatch_rule(direct("SDR_open", "lobby", trunk_ids=["ST_t"]))
    # Trunk-bound open rule beats the wildcard PIN rule.
    assert decider(store).decide(call(), NOW).room_name == "lobby"


def test_decide_concurrency_limit_486(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    dec = decider(store, max_calls_per_trunk=2)
    assert dec.decide(call(call_id="c1"), NOW).accepted
    assert dec.decide(call(call_id="c2"), NOW).accepted
    assert dec.decide(call(call_id="c1"), NOW).accepted  # retransmission: same slot
    busy = dec.decide(call(call_id="c3"), NOW)
    assert (busy.status, busy.reason) == (486, "Busy Here")
    dec.call_ended("c1")
    assert dec.decide(call(call_id="c3"), NOW).accepted
    assert dec.active_calls == 2


def test_decide_dates_the_token_with_now(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    seen: list[Any] = []

    def minter(api_key: str, secret: str, **kw: Any) -> str:
        seen.append(kw["now"])
        return "jwt"

    dec = InviteDecider(store, KEYS, minter=minter)
    assert dec.decide(call(), NOW).token == "jwt"
    assert seen == [NOW]


def test_invite_request_carries_every_call_field() -> None:
    from bridge.control import InviteRequest
    from bridge.service.sip_bridge import CALL_FIELDS, inbound_call

    names = {f.name for f in dataclasses.fields(InviteRequest)}
    assert set(CALL_FIELDS) <= names
    req = InviteRequest(
        id=1, call_id="c", from_user="+1", from_host="h", to_user="+2", src_ip="10.0.0.1",
        src_port=5060, from_tag="t", to_host="bridge", user_agent="ua", transport="tcp",
        headers={"X-A": "1"}, authorization="Digest x",
    )  # fmt: skip
    got = inbound_call(req)
    assert all(getattr(got, name) == getattr(req, name) for name in CALL_FIELDS)
    assert got.lk_call_id == ""


def test_decide_per_trunk_override_and_global_limit(store: SIPStore) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    dec = decider(store, max_calls_per_trunk=5, trunk_max_calls={"ST_t": 1})
    assert dec.decide(call(call_id="c1"), NOW).accepted
    assert dec.decide(call(call_id="c2"), NOW).status == 486
    dec2 = decider(store, max_active_calls=1)
    assert dec2.decide(call(call_id="c1"), NOW).accepted
    assert dec2.decide(call(call_id="c2"), NOW).status == 486


@pytest.mark.parametrize(
    "kw",
    [
        {"call_id": ""},
        {"call_id": "x" * 300},
        {"call_id": "has space"},
        {"to_user": ""},
        {"to_user": "+1555\r\nX-Evil: 1"},
        {"from_user": "a<b>"},
        {"from_user": "9" * 500},
        {"src_ip": "999.1.1.1"},
        {"src_ip": ""},
    ],
)
def test_decide_garbage_call_400(store: SIPStore, kw: dict[str, Any]) -> None:
    store.put_inbound_trunk(trunk("ST_t", numbers=[CALLED]))
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    dec = decider(store)
    assert dec.decide(call(**kw), NOW).status == 400
    assert dec.decide(call(), NOW).accepted  # and keeps serving


def test_decide_trunk_conflict_503(store: SIPStore) -> None:
    # Same number, overlapping allowlists: allowed by validation, ambiguous at call time.
    store.put_inbound_trunk(trunk("ST_a", numbers=[CALLED], allowed_addresses=["203.0.113.0/24"]))
    store.put_inbound_trunk(trunk("ST_b", numbers=[CALLED], allowed_addresses=[CARRIER_IP]))
    assert decider(store).decide(call(), NOW).status == 503


def test_decision_carries_trunk_timers_and_headers(store: SIPStore) -> None:
    store.put_inbound_trunk(
        trunk(
            "ST_t",
            numbers=[CALLED],
            headers={"X-Roomline": "1"},
            attributes_to_headers={"crm.id": "X-CRM-Id"},
            ringing_timeout=Duration(seconds=20),
            max_call_duration=Duration(seconds=90000),
        )
    )
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    d = decider(store).decide(call(), NOW)
    assert d.headers == {"X-Roomline": "1"}
    assert d.attributes_to_headers == {"crm.id": "X-CRM-Id"}
    assert d.ringing_timeout == 20 and d.max_call_duration == 24 * 3600

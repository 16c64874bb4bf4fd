"""Builders for SIP trunks, dispatch rules and inbound calls (livekit protocol messages)."""

from __future__ import annotations

from typing import Any

from livekit.protocol import sip as sip_pb

from bridge.service.trunks import InboundCall, TrunkMatchResult, match_trunk

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


def individual(
    rid: str, prefix: str, pin: str = "", no_randomness: bool = False, **kw: Any
) -> sip_pb.SIPDispatchRuleInfo:
    rule = sip_pb.SIPDispatchRule(
        dispatch_rule_individual=sip_pb.SIPDispatchRuleIndividual(
            room_prefix=prefix, pin=pin, no_randomness=no_randomness
        )
    )
    return sip_pb.SIPDispatchRuleInfo(sip_dispatch_rule_id=rid, rule=rule, **kw)


def callee(
    rid: str, prefix: str, pin: str = "", randomize: bool = False, **kw: Any
) -> sip_pb.SIPDispatchRuleInfo:
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


def match(
    trunks: list[sip_pb.SIPInboundTrunkInfo], c: InboundCall | None = None
) -> TrunkMatchResult:
    c = c or call()
    return match_trunk(
        trunks, calling=c.from_user, called=c.to_user, src_ip=c.src_ip, from_host=c.from_host
    )

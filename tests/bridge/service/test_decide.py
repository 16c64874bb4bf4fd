"""bridge/service/decide.py: the InviteDecider end to end over a real SIPStore (digest, PIN, limits)."""

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

from bridge.service.decide import DecideOptions, InviteDecider
from bridge.service.store import SIPStore
from roomline_harness.sip_rules import (
    CALLED,
    CALLER,
    CARRIER_IP,
    KEYS,
    NOW,
    call,
    direct,
    individual,
    trunk,
)


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


def test_decide_carries_trunk_media_encryption(store: SIPStore) -> None:
    from livekit.protocol import sip as sip_pb

    from bridge.service.decide import media_encryption

    store.put_inbound_trunk(
        trunk("ST_t", numbers=[CALLED], media_encryption=sip_pb.SIP_MEDIA_ENCRYPT_REQUIRE)
    )
    store.put_dispatch_rule(direct("SDR_d", "lobby"))
    assert decider(store).decide(call(), NOW).media_encryption == "require"
    # PIN rule: the answer for the prompt is subject to it too
    store.put_dispatch_rule(direct("SDR_d", "lobby", pin="1234"))
    d = decider(store).decide(call(), NOW)
    assert d.pin_required and d.media_encryption == "require"

    assert media_encryption(None) == "disable"
    assert media_encryption(trunk("a")) == "disable"
    assert media_encryption(trunk("a", media_encryption=1)) == "allow"
    # the newer media.encryption wins over the deprecated field when set
    newer = trunk(
        "a",
        media_encryption=sip_pb.SIP_MEDIA_ENCRYPT_ALLOW,
        media=sip_pb.SIPMediaConfig(encryption=sip_pb.SIP_MEDIA_ENCRYPT_REQUIRE),
    )
    assert media_encryption(newer) == "require"
    assert media_encryption(trunk("a", media_encryption=7)) == "require"  # unknown: fail closed

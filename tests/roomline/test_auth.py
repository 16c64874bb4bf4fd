"""LiveKit access tokens: interop with livekit-api, and every refusal has a clear reason."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import warnings
from typing import Any

import jwt
import pytest
from livekit import api
from livekit.protocol import models, room

from roomline.auth import (
    DEFAULT_TTL,
    Claims,
    SIPGrant,
    TokenError,
    VideoGrant,
    kind_from_name,
    mint_token,
    parse_duration,
    verify_token,
)
from roomline.errors import RoomlineError

KEYS = {"devkey": "secret", "prodkey": "a-much-longer-production-secret-0123456789"}
SECRET = KEYS["prodkey"]
Kind = models.ParticipantInfo.Kind

# livekit-api signs the short dev secret in some tests; pyjwt's key-length advice is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any], payload: dict[str, Any], key: bytes = b"", digest: Any = None
) -> str:
    """Build a JWT by hand, so headers pyjwt would refuse to produce can be tested."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = b""
    if digest is not None:
        sig = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(sig)}"


def payload(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": "prodkey", "sub": "alice", "nbf": now, "exp": now + 600}
    base.update(extra)
    return base


def refused(token: str, keys: dict[str, str] = KEYS, **kw: Any) -> str:
    with pytest.raises(TokenError) as info:
        verify_token(token, keys, **kw)
    message = str(info.value)
    for secret in keys.values():
        assert secret not in message
    return message


def test_token_error_is_roomline_error() -> None:
    assert issubclass(TokenError, RoomlineError)
    assert TokenError.twirp_code == "unauthenticated"


def test_livekit_api_token_all_grants_map() -> None:
    grants = api.VideoGrants(
        room_create=True,
        room_list=True,
        room_record=True,
        room_admin=True,
        room_join=True,
        room="my-room",
        destination_room="other-room",
        can_publish=True,
        can_subscribe=False,
        can_publish_data=False,
        can_publish_sources=["camera", "microphone", "screen_share", "screen_share_audio"],
        can_update_own_metadata=True,
        ingress_admin=True,
        hidden=True,
        recorder=True,
        agent=True,
        can_manage_agent_session=True,
        can_subscribe_metrics=True,
    )
    token = (
        api.AccessToken("prodkey", SECRET)
        .with_identity("alice")
        .with_name("Alice")
        .with_metadata('{"role":"host"}')
        .with_attributes({"team": "blue", "lang": "fr"})
        .with_kind("agent")
        .with_grants(grants)
        .with_sip_grants(api.SIPGrants(admin=True, call=True))
        .with_room_preset("preset-1")
        .with_sha256("abc123")
        .with_room_config(room.RoomConfiguration(name="my-room", empty_timeout=42))
        .with_ttl(datetime.timedelta(minutes=5))
        .to_jwt()
    )
    claims = verify_token(token, KEYS)
    assert claims.identity == "alice" and claims.name == "Alice"
    assert claims.metadata == '{"role":"host"}'
    assert claims.attributes == {"team": "blue", "lang": "fr"}
    assert claims.kind == Kind.AGENT and claims.kind_name == "agent"
    assert claims.api_key == "prodkey"
    assert claims.room_preset == "preset-1" and claims.sha256 == "abc123"
    assert claims.room_config == {"name": "my-room", "emptyTimeout": 42}
    assert claims.sip == SIPGrant(admin=True, call=True)
    assert time.time() + 240 < claims.expires_at <= time.time() + 301
    assert claims.video == VideoGrant(
        room_create=True,
        room_list=True,
        room_record=True,
        room_admin=True,
        room_join=True,
        room="my-room",
        can_publish=True,
        can_subscribe=False,
        can_publish_data=False,
        can_publish_sources=["camera", "microphone", "screen_share", "screen_share_audio"],
        can_update_own_metadata=True,
        ingress_admin=True,
        hidden=True,
        recorder=True,
        agent=True,
        can_subscribe_metrics=True,
        can_manage_agent_session=True,
        destination_room="other-room",
    )
    perm = claims.permission()
    assert perm == models.ParticipantPermission(
        can_subscribe=False,
        can_publish=True,
        can_publish_data=False,
        can_publish_sources=[
            models.TrackSource.CAMERA,
            models.TrackSource.MICROPHONE,
            models.TrackSource.SCREEN_SHARE,
            models.TrackSource.SCREEN_SHARE_AUDIO,
        ],
        hidden=True,
        recorder=True,
        can_update_metadata=True,
        agent=True,
        can_subscribe_metrics=True,
        can_manage_agent_session=True,
    )


def test_livekit_api_minimal_token_defaults() -> None:
    token = (
        api.AccessToken("devkey", "secret")
        .with_identity("bob")
        .with_grants(api.VideoGrants(room_join=True, room="r"))
        .to_jwt()
    )
    claims = verify_token(token, KEYS)
    assert claims.kind == Kind.STANDARD and claims.name == "" and claims.attributes == {}
    v = claims.video
    assert v.room_join and v.room == "r" and not v.room_admin
    assert v.can_publish and v.can_subscribe and v.can_publish_data
    assert not v.can_update_own_metadata and not v.hidden
    assert claims.sip == SIPGrant()
    assert claims.room_config is None
    assert DEFAULT_TTL == 6 * 3600


def test_absent_grants_follow_livekit_defaults() -> None:
    # No canPublish/canSubscribe: both true. canPublish false, no canPublishData: data follows.
    t1 = jwt.encode(payload(video={"roomJoin": True, "room": "r"}), SECRET, algorithm="HS256")
    v1 = verify_token(t1, KEYS).video
    assert v1.can_publish and v1.can_subscribe and v1.can_publish_data
    t2 = jwt.encode(payload(video={"canPublish": False}), SECRET, algorithm="HS256")
    v2 = verify_token(t2, KEYS).video
    assert not v2.can_publish and not v2.can_publish_data and v2.can_subscribe
    t3 = jwt.encode(payload(video={"canPublish": False, "canPublishData": True}), SECRET)
    assert verify_token(t3, KEYS).video.can_publish_data
    # No video claim at all: no room rights, but LiveKit's in-room defaults.
    t4 = jwt.encode(payload(), SECRET, algorithm="HS256")
    v4 = verify_token(t4, KEYS).video
    assert not v4.room_join and v4.can_publish


def test_sub_falls_back_to_jti_and_kind_mapping() -> None:
    p = payload(jti="from-jti", kind="sip")
    del p["sub"]
    claims = verify_token(jwt.encode(p, SECRET, algorithm="HS256"), KEYS)
    assert claims.identity == "from-jti" and claims.kind == Kind.SIP
    # Unknown kind maps to STANDARD like LiveKit.
    claims = verify_token(jwt.encode(payload(kind="wizard"), SECRET), KEYS)
    assert claims.kind == Kind.STANDARD


def test_alg_none_refused() -> None:
    for alg in ("none", "None", "NONE"):
        token = forge({"alg": alg, "typ": "JWT"}, payload())
        assert refused(token) == "alg none not allowed"


@pytest.mark.parametrize("alg", ["HS512", "HS384", "RS256", "ES256", "PS256", "hs256"])
def test_other_algorithms_refused_before_verification(alg: str) -> None:
    # Signed correctly with the right secret for the HS variants: still refused.
    digest = {"HS512": hashlib.sha512, "HS384": hashlib.sha384}.get(alg, hashlib.sha256)
    token = forge({"alg": alg, "typ": "JWT"}, payload(), SECRET.encode(), digest)
    assert refused(token) == f"alg {alg!r} not allowed (only HS256)"


def test_missing_alg_refused() -> None:
    token = forge({"typ": "JWT"}, payload(), SECRET.encode(), hashlib.sha256)
    assert refused(token) == "missing alg"
    assert refused("e30.e30.") == "missing alg"  # {} . {} . no signature


def test_forged_hs256_matches_pyjwt() -> None:
    # Sanity check of the forging helper: a hand-built HS256 token with the right key verifies.
    token = forge({"alg": "HS256", "typ": "JWT"}, payload(), SECRET.encode(), hashlib.sha256)
    assert verify_token(token, KEYS).identity == "alice"


def test_wrong_secret_refused() -> None:
    token = api.AccessToken("prodkey", "not-the-right-secret-at-all").with_identity("x").to_jwt()
    assert refused(token) == "signature invalid"


def test_tampered_payload_refused() -> None:
    token = mint_token("prodkey", SECRET, identity="alice", room="r")
    head, _, sig = token.split(".")
    evil = b64(json.dumps(payload(video={"roomAdmin": True, "room": "r"})).encode())
    assert refused(f"{head}.{evil}.{sig}") == "signature invalid"


def test_unknown_key_refused() -> None:
    token = api.AccessToken("otherkey", SECRET).with_identity("x").to_jwt()
    assert refused(token) == "unknown API key"


def test_missing_iss_refused() -> None:
    p = payload()
    del p["iss"]
    assert refused(jwt.encode(p, SECRET, algorithm="HS256")) == "missing iss (API key)"


def test_expired_with_leeway() -> None:
    token = mint_token("prodkey", SECRET, identity="a", ttl="10m", now=1_000_000.0)
    exp = 1_000_000 + 600
    assert verify_token(token, KEYS, now=exp + 59).identity == "a"
    assert refused(token, now=exp + 61) == "token expired"


def test_not_yet_valid_with_leeway() -> None:
    token = mint_token("prodkey", SECRET, identity="a", now=2_000_000.0)
    assert verify_token(token, KEYS, now=2_000_000 - 59).identity == "a"
    assert refused(token, now=2_000_000 - 61) == "token not yet valid"


def test_exp_required() -> None:
    p = payload()
    del p["exp"]
    assert refused(jwt.encode(p, SECRET, algorithm="HS256")) == "missing exp"
    assert refused(jwt.encode(payload(exp="soon"), SECRET, algorithm="HS256")) == "invalid exp"


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9.!!!.abc", "eyJ9.eyJ9.x", "\x00"],
)
def test_garbage_refused(token: str) -> None:
    assert refused(token) == "malformed token"


def test_empty_and_huge_refused() -> None:
    assert refused("") == "missing token"
    assert refused("a" * (300 * 1024)).startswith("token too long")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"video": "all"}, "invalid claim video: expected an object"),
        (
            {"video": {"canPublish": "yes"}},
            "invalid claim video.canPublish: expected true or false",
        ),
        ({"video": {"room": 5}}, "invalid claim video.room: expected a string"),
        ({"video": {"canPublishSources": "camera"}}, "invalid claim video.canPublishSources"),
        ({"sip": {"admin": 1}}, "invalid claim sip.admin: expected true or false"),
        ({"attributes": {"a": 1}}, "invalid claim attributes: expected a map of strings"),
        ({"name": 7}, "invalid claim name: expected a string"),
        ({"roomConfig": []}, "invalid claim roomConfig: expected an object"),
    ],
)
def test_badly_typed_claims_refused(claims: dict[str, Any], reason: str) -> None:
    token = jwt.encode(payload(**claims), SECRET, algorithm="HS256")
    assert refused(token).startswith(reason)


def test_mint_roundtrip_and_livekit_verifier_accepts() -> None:
    token = mint_token(
        "prodkey",
        SECRET,
        identity="agent-1",
        room="demo",
        name="Agent",
        kind="agent",
        ttl="30m",
        metadata="m",
        attributes={"k": "v"},
        can_publish_sources=["microphone"],
        hidden=True,
    )
    claims = verify_token(token, KEYS)
    assert claims.identity == "agent-1" and claims.name == "Agent" and claims.kind == Kind.AGENT
    assert claims.video.room == "demo" and claims.video.room_join and claims.video.hidden
    assert claims.video.can_publish_sources == ["microphone"]
    assert not claims.video.room_admin and claims.sip == SIPGrant()
    assert 1700 < claims.expires_at - time.time() <= 1800
    assert claims.permission().can_publish_sources == [models.TrackSource.MICROPHONE]

    lk = api.TokenVerifier("prodkey", SECRET).verify(token)
    assert lk.identity == "agent-1" and lk.kind == "agent" and lk.attributes == {"k": "v"}
    assert lk.video is not None and lk.video.room == "demo" and lk.video.room_join


def test_mint_admin_and_overrides() -> None:
    token = mint_token("devkey", "secret", identity="ops", admin=True, can_publish=False)
    claims = verify_token(token, KEYS)
    v = claims.video
    assert v.room_admin and v.room_create and v.room_list and v.room_record
    assert not v.room_join and not v.can_publish and not v.can_publish_data
    assert claims.sip == SIPGrant(admin=True, call=True)
    with pytest.raises(TypeError, match="unknown grant"):
        mint_token("devkey", "secret", identity="x", can_fly=True)
    with pytest.raises(ValueError, match="unknown participant kind"):
        mint_token("devkey", "secret", identity="x", kind="wizard")


def test_mint_with_dev_key_emits_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify_token(mint_token("devkey", "secret", identity="x", room="r"), KEYS)


def test_kind_from_name() -> None:
    assert kind_from_name("SIP") == Kind.SIP and kind_from_name(Kind.AGENT) == Kind.AGENT
    with pytest.raises(ValueError):
        kind_from_name(99)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6h", 21600),
        ("30m", 1800),
        ("90s", 90),
        ("1d", 86400),
        ("1h30m", 5400),
        ("45", 45),
        (12.5, 12.5),
        (datetime.timedelta(minutes=2), 120),
        (" 2H ", 7200),
    ],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6x", "h", "-5m", "0s", "1h 30m", "abc", "0", True])
def test_parse_duration_invalid(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_claims_defaults() -> None:
    c = Claims()
    assert c.kind == Kind.STANDARD and c.video.can_publish and not c.video.room_join

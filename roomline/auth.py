"""LiveKit access tokens: verify and mint HS256 JWTs (claims and grants as LiveKit defines them).

A token is a JWT signed with HS256 by an API secret; ``iss`` names the API key, ``sub`` the
participant identity, and camelCase custom claims carry the grants (``video``, ``sip``), ``name``,
``metadata``, ``attributes`` and ``kind``. Verification is deliberately narrow: the algorithm is
checked *before* any key is looked up, because accepting the header's choice of algorithm is the
classic JWT forgery (``alg: none``, or an RSA public key used as an HMAC secret).
"""

from __future__ import annotations

import calendar
import dataclasses
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jwt
from livekit.protocol import models

from roomline.errors import TokenError

__all__ = [
    "DEFAULT_TTL",
    "LEEWAY",
    "Claims",
    "SIPGrant",
    "TokenError",
    "VideoGrant",
    "kind_from_name",
    "kind_name",
    "mint_token",
    "parse_duration",
    "verify_token",
]

#: LiveKit SDKs default to 6 hours (livekit-api access_token.py DEFAULT_TTL).
DEFAULT_TTL = 6 * 3600.0
#: Clock skew tolerated on exp/nbf; LiveKit's verifier uses one minute.
LEEWAY = 60.0
#: The only accepted algorithm (LiveKit signs with HS256 exclusively).
ALGORITHM = "HS256"
#: Upper bound on a token's length before it is parsed. Metadata and attributes may each be 64 KiB
#: (limits.max_metadata_size / max_attributes_size); base64 adds a third, so 256 KiB is ample while
#: keeping an attacker from making us base64-decode and JSON-parse megabytes per request.
MAX_TOKEN_LENGTH = 256 * 1024

_KIND_BY_NAME: dict[str, int] = {
    name.lower(): value for name, value in models.ParticipantInfo.Kind.items()
}
_SOURCE_BY_NAME: dict[str, Any] = {
    name.lower(): value for name, value in models.TrackSource.items() if value != 0
}


def kind_from_name(kind: str | int) -> int:
    """``"agent"`` -> ``ParticipantInfo.Kind.AGENT`` (ints pass through). Unknown names -> ValueError."""
    if isinstance(kind, int):
        if kind not in _KIND_BY_NAME.values():
            raise ValueError(f"unknown participant kind {kind}")
        return kind
    try:
        return _KIND_BY_NAME[kind.lower()]
    except KeyError:
        raise ValueError(
            f"unknown participant kind {kind!r} (expected one of {', '.join(_KIND_BY_NAME)})"
        ) from None


def kind_name(kind: int) -> str:
    """``ParticipantInfo.Kind`` value -> lower-case claim name (``4`` -> ``"agent"``)."""
    for name, value in _KIND_BY_NAME.items():
        if value == kind:
            return name
    raise ValueError(f"unknown participant kind {kind}")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@dataclass(slots=True)
class VideoGrant:
    """The ``video`` claim, with LiveKit's defaults already applied.

    ``can_publish``/``can_subscribe`` default to True when absent from a token, ``can_publish_data``
    to the value of ``can_publish``. ``can_publish_sources`` holds lower-case TrackSource names
    (``camera``, ``microphone``, ``screen_share``, ``screen_share_audio``); empty = any source.
    """

    room_create: bool = False
    room_list: bool = False
    room_record: bool = False
    room_admin: bool = False
    room_join: bool = False
    room: str = ""
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_publish_sources: list[str] = field(default_factory=list)
    can_update_own_metadata: bool = False
    ingress_admin: bool = False
    hidden: bool = False
    recorder: bool = False
    agent: bool = False
    can_subscribe_metrics: bool = False
    can_manage_agent_session: bool = False
    destination_room: str = ""

    @classmethod
    def from_claim(cls, claim: Mapping[str, Any]) -> VideoGrant:
        """Parse the camelCase ``video`` claim; unknown fields are ignored (forward compatible)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _camel(f.name)
            if key not in claim or claim[key] is None:
                continue
            value = claim[key]
            if f.name == "can_publish_sources":
                if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                    raise TokenError(f"invalid claim video.{key}: expected a list of strings")
                values[f.name] = [s.lower() for s in value]
            elif f.type in ("str", str):
                if not isinstance(value, str):
                    raise TokenError(f"invalid claim video.{key}: expected a string")
                values[f.name] = value
            else:
                if not isinstance(value, bool):
                    raise TokenError(f"invalid claim video.{key}: expected true or false")
                values[f.name] = value
        if "can_publish_data" not in values:
            values["can_publish_data"] = values.get("can_publish", True)
        return cls(**values)

    def to_claim(self) -> dict[str, Any]:
        """camelCase claim; false/empty flags are omitted except the three default-true ones."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("can_publish", "can_subscribe", "can_publish_data") or value:
                out[_camel(f.name)] = list(value) if isinstance(value, list) else value
        return out

    def permission(self) -> models.ParticipantPermission:
        """``VideoGrant.ToPermission()``: the in-room permission the grant confers."""
        return models.ParticipantPermission(
            can_subscribe=self.can_subscribe,
            can_publish=self.can_publish,
            can_publish_data=self.can_publish_data,
            # Unknown source names are ignored, as LiveKit's GetCanPublishSources does.
            can_publish_sources=[
                _SOURCE_BY_NAME[s] for s in self.can_publish_sources if s in _SOURCE_BY_NAME
            ],
            hidden=self.hidden,
            recorder=self.recorder,
            can_update_metadata=self.can_update_own_metadata,
            agent=self.agent,
            can_subscribe_metrics=self.can_subscribe_metrics,
            can_manage_agent_session=self.can_manage_agent_session,
        )


@dataclass(slots=True)
class SIPGrant:
    """The ``sip`` claim: ``admin`` manages trunks and dispatch rules, ``call`` dials out."""

    admin: bool = False
    call: bool = False


@dataclass(slots=True)
class Claims:
    """A verified token. ``kind`` is a ``livekit.ParticipantInfo.Kind`` value."""

    identity: str = ""
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    kind: int = models.ParticipantInfo.Kind.STANDARD
    video: VideoGrant = field(default_factory=VideoGrant)
    sip: SIPGrant = field(default_factory=SIPGrant)
    room_config: dict[str, Any] | None = None
    room_preset: str = ""
    sha256: str = ""
    expires_at: float = 0.0
    api_key: str = ""

    def permission(self) -> models.ParticipantPermission:
        """The ``ParticipantPermission`` protobuf for this participant."""
        return self.video.permission()

    @property
    def kind_name(self) -> str:
        """Lower-case kind (``standard``, ``sip``, ``agent`` ...)."""
        return kind_name(self.kind)


# --------------------------------------------------------------------------------------------------
# Verification


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("malformed token") from None


def verify_token(token: str, keys: Mapping[str, str], *, now: float | None = None) -> Claims:
    """Verify a LiveKit access token against ``keys`` (API key -> secret) and return its claims.

    Raises :class:`TokenError` with a short reason (never containing the secret or the token).
    """
    if not isinstance(token, str) or not token:
        raise TokenError("missing token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(f"token too long ({len(token)} bytes, maximum {MAX_TOKEN_LENGTH})")
    token = token.strip()

    # 1. Algorithm first, from the header alone: nothing else is trusted before this passes.
    header = _unverified_header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenError("missing alg")
    if alg.lower() == "none":
        raise TokenError("alg none not allowed")
    if alg != ALGORITHM:
        raise TokenError(f"alg {alg[:20]!r} not allowed (only {ALGORITHM})")

    # 2. The issuer selects the secret; it is read before verification only to pick the key.
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError("malformed token") from None
    api_key = unverified.get("iss")
    if not isinstance(api_key, str) or not api_key:
        raise TokenError("missing iss (API key)")
    secret = keys.get(api_key)
    if secret is None:
        raise TokenError("unknown API key")

    # 3. Signature. exp/nbf are checked below against `now` so tests can pin the clock.
    try:
        with warnings.catch_warnings():
            # The dev key "secret" is shorter than RFC 7518 recommends; the config enforces its
            # own minimum, so pyjwt's warning would only be noise.
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            payload = jwt.decode(
                token,
                key=secret,
                algorithms=[ALGORITHM],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
    except jwt.InvalidSignatureError:
        raise TokenError("signature invalid") from None
    except jwt.InvalidAlgorithmError:  # pragma: no cover - header was checked above
        raise TokenError("alg not allowed") from None
    except jwt.PyJWTError:
        raise TokenError("malformed token") from None

    now = time.time() if now is None else now
    exp = payload.get("exp")
    if exp is None:
        raise TokenError("missing exp")
    if not _is_number(exp):
        raise TokenError("invalid exp")
    if now > exp + LEEWAY:
        raise TokenError("token expired")
    nbf = payload.get("nbf")
    if nbf is not None:
        if not _is_number(nbf):
            raise TokenError("invalid nbf")
        if now < nbf - LEEWAY:
            raise TokenError("token not yet valid")

    return _claims_from_payload(payload, api_key, float(exp))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str_claim(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TokenError(f"invalid claim {key}: expected a string")
    return value


def _claims_from_payload(payload: Mapping[str, Any], api_key: str, exp: float) -> Claims:
    identity = _str_claim(payload, "sub") or _str_claim(payload, "jti")

    attributes = payload.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise TokenError("invalid claim attributes: expected a map of strings")

    kind_claim = _str_claim(payload, "kind")
    # LiveKit maps an unknown or empty kind to STANDARD (the least privileged kind).
    kind = _KIND_BY_NAME.get(kind_claim.lower(), models.ParticipantInfo.Kind.STANDARD)

    video_claim = payload.get("video")
    if video_claim is not None and not isinstance(video_claim, dict):
        raise TokenError("invalid claim video: expected an object")
    sip_claim = payload.get("sip")
    if sip_claim is not None and not isinstance(sip_claim, dict):
        raise TokenError("invalid claim sip: expected an object")
    sip = SIPGrant()
    for name in ("admin", "call"):
        value = (sip_claim or {}).get(name)
        if value is not None:
            if not isinstance(value, bool):
                raise TokenError(f"invalid claim sip.{name}: expected true or false")
            setattr(sip, name, value)

    room_config = payload.get("roomConfig")
    if room_config is not None and not isinstance(room_config, dict):
        raise TokenError("invalid claim roomConfig: expected an object")

    return Claims(
        identity=identity,
        name=_str_claim(payload, "name"),
        metadata=_str_claim(payload, "metadata"),
        attributes=dict(attributes),
        kind=kind,
        video=VideoGrant.from_claim(video_claim or {}),
        sip=sip,
        room_config=room_config,
        room_preset=_str_claim(payload, "roomPreset"),
        sha256=_str_claim(payload, "sha256"),
        expires_at=exp,
        api_key=api_key,
    )


# --------------------------------------------------------------------------------------------------
# Minting

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float | int | timedelta) -> float:
    """``"6h"``, ``"30m"``, ``"90s"``, ``"1d"``, ``"1h30m"`` or plain seconds -> seconds (> 0).

    Raises ValueError on anything else.
    """
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        s = text.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s)
        elif s and _DURATION_RE.sub("", s) == "":
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_RE.findall(s))
        else:
            raise ValueError(f"invalid duration {text!r} (expected e.g. 6h, 30m, 90s, 1d)")
    else:
        raise ValueError(f"invalid duration {text!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return seconds


_VIDEO_FIELDS = frozenset(f.name for f in dataclasses.fields(VideoGrant))


def mint_token(
    api_key: str,
    secret: str,
    *,
    identity: str,
    room: str | None = None,
    name: str = "",
    kind: str | int = "standard",
    ttl: str | float | timedelta = DEFAULT_TTL,
    admin: bool = False,
    metadata: str = "",
    attributes: Mapping[str, str] | None = None,
    sip: SIPGrant | None = None,
    room_config: Mapping[str, Any] | None = None,
    now: float | None = None,
    **grants: Any,
) -> str:
    """Sign a LiveKit access token.

    With ``room`` the token may join that room (``roomJoin``). ``admin=True`` adds room admin/create/
    list/record and SIP admin/call. Any :class:`VideoGrant` field may be overridden by keyword
    (``can_publish=False``, ``hidden=True`` ...).
    """
    unknown = set(grants) - _VIDEO_FIELDS
    if unknown:
        raise TypeError(f"unknown grant(s): {', '.join(sorted(unknown))}")
    video = VideoGrant()
    if room is not None:
        video.room = room
        video.room_join = True
    if admin:
        video.room_admin = video.room_create = video.room_list = video.room_record = True
    for key, value in grants.items():
        setattr(video, key, value)
    if "can_publish" in grants and "can_publish_data" not in grants:
        video.can_publish_data = video.can_publish
    sip_grant = sip if sip is not None else SIPGrant(admin=admin, call=admin)

    issued = time.time() if now is None else now
    payload: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": calendar.timegm(time.gmtime(issued)),
        "exp": int(issued + parse_duration(ttl)),
        "kind": kind_name(kind_from_name(kind)),
        "video": video.to_claim(),
    }
    if name:
        payload["name"] = name
    if metadata:
        payload["metadata"] = metadata
    if attributes:
        payload["attributes"] = dict(attributes)
    if sip_grant.admin or sip_grant.call:
        payload["sip"] = {"admin": sip_grant.admin, "call": sip_grant.call}
    if room_config:
        payload["roomConfig"] = dict(room_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(payload, secret, algorithm=ALGORITHM)

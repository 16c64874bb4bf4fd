"""SIP digest authentication for inbound INVITEs (RFC 2617 / RFC 7616 / RFC 3261 §22) — sans-I/O.

Flow (as LiveKit SIP): an INVITE for a trunk with
``auth_username``/``auth_password`` and no ``Proxy-Authorization`` gets **407** with a
``Proxy-Authenticate`` challenge; bad, unparseable or mismatching credentials get **401**.

Design:

* Nonces are stateless: ``<issue time µs, hex>.<HMAC-SHA256(secret, time:Call-ID), base64url>``.
  A nonce is valid only for the Call-ID it was issued for and for :data:`NONCE_TTL` seconds; an
  expired one gets a fresh 407 with ``stale=TRUE`` (RFC 7616 §3.3). Because nothing must be
  remembered to verify, a flood of unauthenticated INVITEs cannot evict a real caller's
  challenge (LiveKit keeps challenge state in a 500-entry table and loses it under load).
* The pending-challenge table (bounded, oldest evicted) only tracks which calls were challenged
  and never came back, so the supervisor can finalise them after :data:`AUTH_CHALLENGE_TIMEOUT`.
* MD5 (the only algorithm SIP UAs implement in practice), MD5-sess, SHA-256 and SHA-256-sess;
  ``qop=auth`` or no qop (RFC 2069 compatibility). ``auth-int`` is refused.
* Responses are compared in constant time. Passwords are never logged; :func:`password_fingerprint`
  gives a truncated SHA-256 for correlating log lines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from roomline.errors import InvalidRequest

__all__ = [
    "AUTH_CHALLENGE_TIMEOUT",
    "DEFAULT_REALM",
    "AuthOutcome",
    "AuthResult",
    "DigestAuthenticator",
    "DigestCredentials",
    "DigestError",
    "compute_response",
    "parse_digest",
    "password_fingerprint",
]

#: Realm used when a trunk has no ``auth_realm`` (LiveKit's default).
DEFAULT_REALM = "LiveKit"
#: How long a nonce stays valid. A UA answers a 407 within milliseconds; a minute covers slow
#: links and carrier retransmissions while keeping captured nonces short-lived.
NONCE_TTL = 60.0
#: A challenged call with no authenticated retry after this long is finalised as failed (LiveKit).
AUTH_CHALLENGE_TIMEOUT = 30.0
#: Pending challenges remembered at most (LiveKit's ``digestLimit``); the oldest is evicted.
MAX_PENDING = 500
#: Longest Proxy-Authorization value parsed, in UTF-8 bytes; real ones are ~300.
MAX_HEADER_LEN = 4096

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_PARAM_RE = re.compile(
    r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))\s*(?:,|$)'
)


class DigestError(InvalidRequest):
    """An Authorization / Proxy-Authorization header could not be parsed."""


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """The parameters of a ``Digest`` credentials header (names lower-cased)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None


class AuthOutcome(Enum):
    """Result of :meth:`DigestAuthenticator.verify`."""

    OK = "ok"
    CHALLENGE = "challenge"  # no credentials: answer 407
    STALE = "stale"  # valid credentials on an expired nonce: answer 407 stale=TRUE
    BAD_CREDENTIALS = "bad_credentials"  # unparseable / foreign nonce / unsupported: 401
    WRONG_USER = "wrong_user"  # 401
    WRONG_RESPONSE = "wrong_response"  # wrong password: 401


@dataclass(frozen=True, slots=True)
class AuthResult:
    """``status``/``reason`` to answer with (200 = authenticated) and the 407 challenge header."""

    outcome: AuthOutcome
    status: int
    reason: str
    challenge: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


def password_fingerprint(password: str) -> str:
    """First 8 hex digits of SHA-256(password): enough to tell two passwords apart in logs."""
    return hashlib.sha256(password.encode()).hexdigest()[:8]


def parse_digest(header: str) -> DigestCredentials:
    """Parse ``Digest k=v, k="v", ...``; raises :class:`DigestError` naming what is wrong."""
    if len(header.encode()) > MAX_HEADER_LEN:
        raise DigestError("authorization header too long")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authorization scheme {scheme[:20]!r}")
    params: dict[str, str] = {}
    pos, rest = 0, rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if m is None:
            raise DigestError(f"malformed digest parameters at offset {pos}")
        key = m.group(1).lower()
        value = m.group(2) if m.group(2) is not None else m.group(3)
        if m.group(2) is not None:
            value = re.sub(r"\\(.)", r"\1", value)
        if key in params:
            raise DigestError(f"duplicate digest parameter {key!r}")
        params[key] = value
        pos = m.end()
    for required in ("username", "realm", "nonce", "uri", "response"):
        if required not in params:
            raise DigestError(f"digest parameter {required!r} missing")
    qop = params.get("qop")
    if qop is not None and (not params.get("nc") or not params.get("cnonce")):
        raise DigestError("digest qop given without nc and cnonce")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        nc=params.get("nc"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
    )


def compute_response(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest of RFC 2617 §3.2.2.1 / RFC 7616 §3.4.1 (lower-case hex).

    Raises :class:`DigestError` for an unsupported algorithm or qop.
    """
    algo = algorithm.upper()
    sess = algo.endswith("-SESS")
    base = algo[: -len("-SESS")] if sess else algo
    hfunc = _HASHES.get(base)
    if hfunc is None:
        raise DigestError(f"unsupported digest algorithm {algorithm[:20]!r}")

    def h(text: str) -> str:
        return hfunc(text.encode()).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}")
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce or ''}")
    ha2 = h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    if qop.lower() != "auth":
        raise DigestError(f"unsupported digest qop {qop[:20]!r}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DigestAuthenticator:
    """Issues digest challenges and verifies credentials for INVITEs, keyed by SIP Call-ID.

    ``now`` arguments are wall-clock seconds (``time.time()``): the nonce carries its issue time.
    ``qop`` is offered in challenges (``None`` reproduces LiveKit's qop-less challenge exactly).
    """

    def __init__(
        self,
        secret: bytes | None = None,
        *,
        max_pending: int = MAX_PENDING,
        nonce_ttl: float = NONCE_TTL,
        qop: str | None = "auth",
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._max_pending = max_pending
        self._nonce_ttl = nonce_ttl
        self._qop = qop
        # Call-ID -> time the first challenge was issued; insertion order = age.
        self._pending: OrderedDict[str, float] = OrderedDict()

    @property
    def pending(self) -> int:
        """Number of challenged calls that have not authenticated yet."""
        return len(self._pending)

    def _mac(self, issued_us: int, call_id: str) -> str:
        msg = f"{issued_us}:{call_id}".encode()
        return _b64(hmac.new(self._secret, msg, hashlib.sha256).digest()[:18])

    def make_nonce(self, call_id: str, now: float) -> str:
        """A nonce bound to ``call_id`` and the issue time ``now``."""
        issued_us = int(now * 1_000_000)
        return f"{issued_us:x}.{self._mac(issued_us, call_id)}"

    def _check_nonce(self, nonce: str, call_id: str, now: float) -> AuthOutcome | None:
        """None if fresh and ours; STALE if ours but expired; BAD_CREDENTIALS otherwise."""
        stamp, _, mac = nonce.partition(".")
        try:
            issued_us = int(stamp, 16)
        except ValueError:
            return AuthOutcome.BAD_CREDENTIALS
        if not mac or not hmac.compare_digest(mac, self._mac(issued_us, call_id)):
            return AuthOutcome.BAD_CREDENTIALS
        age = now - issued_us / 1_000_000
        if age > self._nonce_ttl or age < -self._nonce_ttl:
            return AuthOutcome.STALE
        return None

    def challenge(self, call_id: str, realm: str, now: float, *, stale: bool = False) -> str:
        """A ``Proxy-Authenticate`` value for ``call_id``; records the call as pending."""
        if call_id not in self._pending:
            while len(self._pending) >= self._max_pending:
                self._pending.popitem(last=False)
            self._pending[call_id] = now
        parts = [f'Digest realm="{realm}"', f'nonce="{self.make_nonce(call_id, now)}"']
        parts.append("algorithm=MD5")
        if self._qop:
            parts.append(f'qop="{self._qop}"')
        if stale:
            parts.append("stale=TRUE")
        return ", ".join(parts)

    def expired(self, now: float, timeout: float = AUTH_CHALLENGE_TIMEOUT) -> list[str]:
        """Remove and return Call-IDs challenged more than ``timeout`` ago without success."""
        out: list[str] = []
        while self._pending:
            call_id, issued = next(iter(self._pending.items()))
            if now - issued < timeout:
                break
            self._pending.popitem(last=False)
            out.append(call_id)
        return out

    def forget(self, call_id: str) -> None:
        """Drop pending state for ``call_id`` (call cancelled or finished)."""
        self._pending.pop(call_id, None)

    def verify(
        self,
        authorization: str | None,
        *,
        call_id: str,
        username: str,
        password: str,
        realm: str = DEFAULT_REALM,
        method: str = "INVITE",
        now: float,
    ) -> AuthResult:
        """Check ``authorization`` (a Proxy-Authorization value, or None) for ``call_id``.

        The digest-uri is taken from the credentials, as LiveKit does: proxies may rewrite the
        Request-URI, and the response still binds method, nonce and password.
        """
        realm = realm or DEFAULT_REALM
        if not authorization:
            return AuthResult(
                AuthOutcome.CHALLENGE, 407, "Proxy Authentication Required",
                self.challenge(call_id, realm, now),
            )  # fmt: skip
        try:
            cred = parse_digest(authorization)
        except DigestError:
            return AuthResult(AuthOutcome.BAD_CREDENTIALS, 401, "Bad credentials")
        if not hmac.compare_digest(cred.username.encode(), username.encode()):
            return AuthResult(AuthOutcome.WRONG_USER, 401, "Unauthorized")
        if cred.realm != realm:
            return AuthResult(AuthOutcome.BAD_CREDENTIALS, 401, "Bad credentials")
        nonce_state = self._check_nonce(cred.nonce, call_id, now)
        if nonce_state is AuthOutcome.BAD_CREDENTIALS:
            return AuthResult(AuthOutcome.BAD_CREDENTIALS, 401, "Bad credentials")
        try:
            expected = compute_response(
                username=username,
                realm=realm,
                password=password,
                method=method,
                uri=cred.uri,
                nonce=cred.nonce,
                algorithm=cred.algorithm,
                qop=cred.qop,
                nc=cred.nc,
                cnonce=cred.cnonce,
            )
        except DigestError:
            return AuthResult(AuthOutcome.BAD_CREDENTIALS, 401, "Bad credentials")
        if not hmac.compare_digest(expected.encode(), cred.response.lower().encode()):
            return AuthResult(AuthOutcome.WRONG_RESPONSE, 401, "Unauthorized")
        if nonce_state is AuthOutcome.STALE:
            # Right password, old nonce: RFC 7616 says re-challenge with stale=TRUE so the UA
            # retries silently instead of prompting for a password.
            return AuthResult(
                AuthOutcome.STALE, 407, "Proxy Authentication Required",
                self.challenge(call_id, realm, now, stale=True),
            )  # fmt: skip
        self._pending.pop(call_id, None)
        return AuthResult(AuthOutcome.OK, 200, "OK")

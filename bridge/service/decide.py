"""Where does an INVITE go? Trunk match + digest auth + call limits + dispatch rule → Decision.

:class:`InviteDecider` is the sans-I/O heart of the inbound call path. The supervisor calls
:meth:`InviteDecider.decide` for each INVITE a bridge worker reports, sends the resulting
:class:`Decision` back to the worker, and later calls :meth:`InviteDecider.call_ended`. Steps, in the
order LiveKit's SIP service checks them:

1. malformed call description (no Call-ID, no To user, bad IP, control characters) → 400;
2. scanner User-Agent (``sip.blocked_user_agents``) → silent drop;
3. trunk match; none → 404 "No trunk found"; two equally good trunks → 503 (config conflict);
4. digest auth if the trunk has credentials → 407 challenge / 401;
5. per-trunk and global concurrent call limits → 486 Busy Here;
6. dispatch rule; none → 404 "Does not match Trunks or Dispatch Rules";
7. PIN rule → accept with ``pin_required`` (the worker answers, collects DTMF and calls
   :meth:`InviteDecider.check_pin`); otherwise the room, participant and a local-channel token.

With ``hide_inbound_port`` every rejection except the 407 challenge becomes a silent drop.

Deliberate differences from LiveKit OSS, both fail-closed: a call that matches no trunk is
rejected even if wildcard dispatch rules exist (LiveKit lets wildcard rules take it, bypassing
the trunks' allowlists; ``allow_trunkless=True`` restores that when *no* trunk is defined), and
"no dispatch rule" answers 404 rather than a silent drop (unless ``hide_inbound_port``).
Trunks have no concurrent-call field in the LiveKit proto, so the limit is config-side:
``max_calls_per_trunk`` (default for every trunk), ``trunk_max_calls`` (per trunk id) and
``max_active_calls`` (whole appliance); 0 = unlimited.

The decider is a pure function of its inputs and ``now``: the store is only read (through the
:class:`TrunkSource` protocol), and ``now`` also dates the caller's token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from livekit.protocol import sip as sip_pb

from roomline.errors import InvalidRequest
from roomline.wire import MAX_PIN_DIGITS, PIN_DIGITS

from .digest import DEFAULT_REALM, DigestAuthenticator, password_fingerprint
from .dispatch import DispatchResult, RuleEvaluation, evaluate_rule, match_rule
from .trunks import (
    InboundCall,
    TrunkConflict,
    TrunkMatch,
    TrunkMatchResult,
    match_trunk,
    validate_number,
)

__all__ = ["DecideOptions", "Decision", "InviteDecider", "TokenMinter", "TrunkSource"]

log = structlog.get_logger(__name__)

#: Validity of the caller's local-channel token. LiveKit signs SIP participant tokens for 24 h
#: (the maximum call duration), so a long call never outlives its token.
SIP_TOKEN_TTL = 24 * 3600.0
#: LiveKit caps max_call_duration at 24 h; a trunk asking for more gets this.
MAX_CALL_DURATION = 24 * 3600.0
#: Longest Call-ID accepted, in UTF-8 bytes (RFC 3261 puts no bound; real ones are < 100).
MAX_CALL_ID_LEN = 256
#: Remembered active calls: the supervisor must call call_ended; this bounds a leak if it forgets.
MAX_TRACKED_CALLS = 100_000

#: ``mint(api_key, secret, *, identity, room, name, kind, ttl, attributes, metadata, now, ...)``
#: ``-> jwt``, the signature of :func:`roomline.auth.mint_token`.
TokenMinter = Callable[..., str]


class TrunkSource(Protocol):
    """Where the decider reads trunks and dispatch rules (``SIPStore`` keeps both in memory)."""

    def inbound_trunks(self) -> Sequence[sip_pb.SIPInboundTrunkInfo]: ...

    def dispatch_rules(self) -> Sequence[sip_pb.SIPDispatchRuleInfo]: ...


@dataclass(slots=True)
class DecideOptions:
    """Policy knobs, filled from ``cfg.sip`` by the supervisor."""

    blocked_user_agents: Sequence[str] = ("friendly-scanner", "sipvicious", "sipcli")
    hide_inbound_port: bool = False
    max_calls_per_trunk: int = 0
    trunk_max_calls: Mapping[str, int] = field(default_factory=dict)
    max_active_calls: int = 0
    allow_trunkless: bool = False


@dataclass(slots=True)
class Decision:
    """What to do with one INVITE (or with a PIN entry, see :meth:`InviteDecider.check_pin`).

    ``status`` 200 = accept: join ``room_name`` with ``token`` (or, if ``pin_required`` is set,
    answer and collect a PIN first; ``pin_required`` is then the id of the rule that asked for
    it). Any other status rejects with ``reason`` and ``extra_headers`` (``Proxy-Authenticate``
    on 407). ``drop`` = send nothing further (scanner, or ``hide_inbound_port``); ``status`` is
    still filled in for logs and metrics. ``headers`` (fixed) and ``attributes_to_headers``
    (attribute name → header name) are the matched trunk's additions to the 200 OK.
    """

    status: int
    reason: str
    drop: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)
    trunk_id: str = ""
    rule_id: str = ""
    room_name: str = ""
    room_metadata: str = ""
    participant_identity: str = ""
    participant_metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    pin_required: str | None = None
    agents: list[str] = field(default_factory=list)
    token: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    attributes_to_headers: dict[str, str] = field(default_factory=dict)
    ringing_timeout: float | None = None
    max_call_duration: float | None = None
    #: The trunk's SRTP policy, ``bridge.control.MEDIA_ENCRYPTIONS`` (see :func:`media_encryption`).
    media_encryption: str = "disable"

    @property
    def accepted(self) -> bool:
        return self.status == 200 and not self.drop


#: LiveKit ``SIPMediaEncryption`` → the control protocol's ``media_encryption``.
_ENCRYPTION_NAMES: dict[int, str] = {
    sip_pb.SIP_MEDIA_ENCRYPT_DISABLE: "disable",
    sip_pb.SIP_MEDIA_ENCRYPT_ALLOW: "allow",
    sip_pb.SIP_MEDIA_ENCRYPT_REQUIRE: "require",
}


def media_encryption(
    trunk: sip_pb.SIPInboundTrunkInfo | sip_pb.SIPOutboundTrunkInfo | None,
    request: sip_pb.CreateSIPParticipantRequest | None = None,
) -> str:
    """The SRTP policy: ``media.encryption`` if set, else the older ``media_encryption``.

    For an outbound call a non-zero value on the ``request`` overrides the trunk's. An unknown
    enum value (a newer proto) fails closed to ``require``.
    """
    value: int = 0
    for msg in (trunk, request):
        if msg is None:
            continue
        v = msg.media.encryption if msg.HasField("media") and msg.media.encryption else 0
        v = v or msg.media_encryption
        if v:
            value = v
    return _ENCRYPTION_NAMES.get(value, "require")


def _reject(status: int, reason: str, **kw: Any) -> Decision:
    return Decision(status=status, reason=reason, **kw)


def _default_minter(api_key: str, secret: str, **kw: Any) -> str:
    from roomline.auth import mint_token  # imported late: roomline.auth is another module's concern

    return mint_token(api_key, secret, **kw)


class InviteDecider:
    """Combines store, matching, digest auth and call counting into :class:`Decision` s.

    ``keys`` is the API key -> secret map; the first key signs callers' tokens. ``now`` arguments
    are wall-clock seconds (``time.time()``). ``new_call_id`` makes ``SCL_`` ids when the worker
    did not pick one.
    """

    def __init__(
        self,
        store: TrunkSource,
        keys: Mapping[str, str],
        options: DecideOptions | None = None,
        *,
        digest: DigestAuthenticator | None = None,
        minter: TokenMinter | None = None,
        new_call_id: Callable[[], str] | None = None,
    ) -> None:
        self.store = store
        self.keys = dict(keys)
        self.options = options or DecideOptions()
        self.digest = digest or DigestAuthenticator()
        self._mint = minter or _default_minter
        if new_call_id is None:
            from roomline.ids import new_sid

            new_call_id = lambda: new_sid("SCL_")  # noqa: E731
        self._new_call_id = new_call_id
        # SIP Call-ID -> trunk id, for calls accepted and not yet ended.
        self._active: dict[str, str] = {}
        self._blocked = [ua.lower() for ua in self.options.blocked_user_agents if ua]

    # --- call accounting ------------------------------------------------------------------

    @property
    def active_calls(self) -> int:
        return len(self._active)

    def active_calls_for(self, trunk_id: str) -> int:
        return sum(1 for t in self._active.values() if t == trunk_id)

    def call_ended(self, call_id: str) -> None:
        """Release the slot of an accepted call (BYE, CANCEL, failure); unknown ids are ignored."""
        self._active.pop(call_id, None)
        self.digest.forget(call_id)

    def _limit_for(self, trunk_id: str) -> int:
        return self.options.trunk_max_calls.get(trunk_id, self.options.max_calls_per_trunk)

    # --- the decision -----------------------------------------------------------------------

    def decide(self, call: InboundCall, now: float) -> Decision:
        """Decide what to do with a new INVITE described by ``call``."""
        d = self._decide(call, now)
        if not d.accepted and d.status != 407 and self.options.hide_inbound_port:
            d.drop = True
        if d.accepted:
            self._reserve(call.call_id, d.trunk_id)
        return d

    def _reserve(self, call_id: str, trunk_id: str) -> None:
        if call_id not in self._active and len(self._active) >= MAX_TRACKED_CALLS:
            # The supervisor lost track of call_ended; forget the oldest rather than grow forever.
            self._active.pop(next(iter(self._active)))
        self._active[call_id] = trunk_id

    def _validate(self, call: InboundCall) -> str | None:
        if not call.call_id or len(call.call_id.encode()) > MAX_CALL_ID_LEN:
            return "missing or oversized Call-ID"
        if any(ord(c) < 0x21 for c in call.call_id):
            return "invalid Call-ID"
        try:
            validate_number(call.to_user, "to_user")
            if call.from_user:
                validate_number(call.from_user, "from_user")
        except InvalidRequest as exc:
            return exc.message
        try:
            ipaddress.ip_address(call.src_ip.strip("[]"))
        except ValueError:
            return "invalid source address"
        return None

    def _decide(self, call: InboundCall, now: float) -> Decision:
        problem = self._validate(call)
        if problem is not None:
            log.info("sip bad invite", call_id=call.call_id[:64], problem=problem)
            return _reject(400, "Bad Request")
        ua = call.user_agent.lower()
        if ua and any(b in ua for b in self._blocked):
            log.info("sip dropping scanner", user_agent=call.user_agent[:64], src_ip=call.src_ip)
            return _reject(403, "Scanner", drop=True)

        match = self._match(call)
        if match is None:
            return _reject(503, "Service Unavailable")
        trunk = match.trunk
        if trunk is None and not (match.kind is TrunkMatch.EMPTY and self.options.allow_trunkless):
            log.info(
                "sip no trunk",
                from_user=call.from_user,
                to_user=call.to_user,
                src_ip=call.src_ip,
            )
            return _reject(404, "No trunk found")
        trunk_id = trunk.sip_trunk_id if trunk is not None else ""

        if trunk is not None and trunk.auth_username and trunk.auth_password:
            auth = self.digest.verify(
                call.authorization,
                call_id=call.call_id,
                username=trunk.auth_username,
                password=trunk.auth_password,
                realm=trunk.auth_realm or DEFAULT_REALM,
                now=now,
            )
            if not auth.ok:
                if auth.status != 407:
                    log.info(
                        "sip auth failed",
                        outcome=auth.outcome.value,
                        trunk=trunk_id,
                        user=trunk.auth_username,
                        password_fingerprint=password_fingerprint(trunk.auth_password),
                    )
                headers = {"Proxy-Authenticate": auth.challenge} if auth.challenge else {}
                return _reject(auth.status, auth.reason, extra_headers=headers, trunk_id=trunk_id)

        limit = self._limit_for(trunk_id) if trunk_id else 0
        if call.call_id not in self._active:
            if limit and self.active_calls_for(trunk_id) >= limit:
                return _reject(486, "Busy Here", trunk_id=trunk_id)
            if self.options.max_active_calls and self.active_calls >= self.options.max_active_calls:
                return _reject(486, "Busy Here", trunk_id=trunk_id)

        rule = match_rule(
            trunk, self.store.dispatch_rules(), calling=call.from_user, called=call.to_user
        )
        if rule is None:
            log.info("sip no dispatch rule", from_user=call.from_user, to_user=call.to_user)
            return _reject(404, "Does not match Trunks or Dispatch Rules", trunk_id=trunk_id)
        lk_call_id = call.lk_call_id or self._new_call_id()
        ev = evaluate_rule(trunk, rule, call, lk_call_id=lk_call_id)
        if ev.result is DispatchResult.REQUEST_PIN:
            return Decision(
                status=200,
                reason="OK",
                trunk_id=trunk_id,
                rule_id=ev.rule_id,
                pin_required=ev.rule_id,
                **self._trunk_extras(trunk),
            )
        return self._accept(trunk, rule, ev, now)

    def check_pin(self, call: InboundCall, digits: str, now: float) -> Decision:
        """Re-evaluate after PIN entry (``digits`` without the final ``#``; empty = only ``#``).

        Returns an accepting Decision (the caller is already answered, so ``sip.callStatus`` is
        ``active``) or 403 "Wrong PIN": the worker plays the wrong-PIN prompt and hangs up, and
        should then call :meth:`call_ended`.
        """
        lk_call_id = call.lk_call_id or self._new_call_id()
        match = self._match(call)
        if match is None:
            return _reject(503, "Service Unavailable")
        trunk = match.trunk
        if len(digits) > MAX_PIN_DIGITS or any(c not in PIN_DIGITS for c in digits):
            rule = None
        else:
            rule = match_rule(
                trunk,
                self.store.dispatch_rules(),
                calling=call.from_user,
                called=call.to_user,
                pin=digits or None,
                no_pin=not digits,
            )
        trunk_id = trunk.sip_trunk_id if trunk is not None else ""
        if rule is None:
            return _reject(403, "Wrong PIN", trunk_id=trunk_id)
        ev = evaluate_rule(
            trunk, rule, call, lk_call_id=lk_call_id, pin=digits or None, call_status="active"
        )
        if ev.result is not DispatchResult.ACCEPT:
            return _reject(403, "Wrong PIN", trunk_id=trunk_id)
        return self._accept(trunk, rule, ev, now)

    # --- helpers ----------------------------------------------------------------------------

    def _match(self, call: InboundCall) -> TrunkMatchResult | None:
        """The call's trunk match; None (logged) if two trunks match equally well."""
        try:
            return match_trunk(
                self.store.inbound_trunks(),
                calling=call.from_user,
                called=call.to_user,
                src_ip=call.src_ip,
                from_host=call.from_host,
            )
        except TrunkConflict as exc:
            log.error("sip trunk conflict", error=exc.message, call_id=call.call_id[:64])
            return None

    @staticmethod
    def _trunk_extras(trunk: sip_pb.SIPInboundTrunkInfo | None) -> dict[str, Any]:
        if trunk is None:
            return {}
        extras: dict[str, Any] = {
            "headers": dict(trunk.headers),
            "attributes_to_headers": dict(trunk.attributes_to_headers),
            "media_encryption": media_encryption(trunk),
        }
        if trunk.HasField("ringing_timeout") and trunk.ringing_timeout.ToTimedelta():
            extras["ringing_timeout"] = trunk.ringing_timeout.ToTimedelta().total_seconds()
        if trunk.HasField("max_call_duration"):
            secs = trunk.max_call_duration.ToTimedelta().total_seconds()
            if secs > 0:
                extras["max_call_duration"] = min(secs, MAX_CALL_DURATION)
        return extras

    def _accept(
        self,
        trunk: sip_pb.SIPInboundTrunkInfo | None,
        rule: sip_pb.SIPDispatchRuleInfo,
        ev: RuleEvaluation,
        now: float,
    ) -> Decision:
        agents = [a.agent_name for a in rule.room_config.agents]
        token = self._mint_token(ev, now)
        return Decision(
            status=200,
            reason="OK",
            trunk_id=ev.trunk_id,
            rule_id=ev.rule_id,
            room_name=ev.room_name,
            room_metadata=rule.room_config.metadata if rule.HasField("room_config") else "",
            participant_identity=ev.participant_identity,
            participant_metadata=ev.participant_metadata,
            attributes=ev.attributes,
            agents=agents,
            token=token,
            **self._trunk_extras(trunk),
        )

    def _mint_token(self, ev: RuleEvaluation, now: float) -> str:
        if not self.keys:
            raise InvalidRequest("no API key configured to sign SIP participant tokens")
        api_key, secret = next(iter(self.keys.items()))
        return self._mint(
            api_key,
            secret,
            identity=ev.participant_identity,
            room=ev.room_name,
            name=ev.participant_name,
            kind="sip",
            ttl=SIP_TOKEN_TTL,
            attributes=dict(ev.attributes),
            metadata=ev.participant_metadata,
            now=now,
            # LiveKit's SIP participant grants: join, publish, subscribe, data, own metadata.
            can_update_own_metadata=True,
        )

"""Outbound SIP calls (``CreateSIPParticipant``) and cold transfers (``TransferSIPParticipant``).

Main-process side (control plane). The RPC is validated here exactly as LiveKit does it (see
docs/sip-trunks.md, "Outbound calls"): nothing is dialled unless the request is valid. Then a
bridge worker with a free pjsua call slot is picked by the supervisor and gets a
:class:`bridge.control.Dial`; the worker joins the callee to the room at once
(``sip.callStatus=dialing``), sends the INVITE and reports :class:`bridge.control.DialProgress`
(joined, ringing, answered/active, failed, hangup). ``wait_until_answered`` makes the RPC wait for
the answer; a final non-2xx becomes a Twirp error with ``sip_status_code``/``sip_status`` meta
(:func:`sip_status_error`, LiveKit's ``sipCodeToGRPCCode`` table), which ``livekit-api`` turns
into ``SipCallError``.

Routing: behind the Kamailio front (bridge/service/sip_front.py) :attr:`OutboundCalls.outbound_proxy`
is the front's URI as the loopback workers reach it (``sip_bridge.front_proxy_uri``); each call's
pjsua account routes the dialog through it, and the front (``route[FROM_WORKER]``) consumes its
own Route, record-routes and relays to the trunk. In the older direct mode the worker sends the
INVITE straight to the trunk address from its own SIP port.

TLS trunks (``;transport=tls`` in the R-URI): the worker still sends to the front over UDP, and
the front opens the TLS connection to the carrier (its ``[client:default]`` TLS settings verify
the carrier's certificate). Without the front's TLS listener, or in direct mode, such a call is
refused with ``failed_precondition`` (:attr:`OutboundCalls.tls_unavailable`).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from livekit.protocol import sip as sip_pb

import bridge.control as control
from bridge.service.decide import media_encryption
from bridge.service.outbound_trunks import (
    _check_address,
    check_headers,
)
from bridge.service.trunks import validate_number
from roomline.errors import InvalidRequest, NotFound, PermissionDenied, RoomlineError, Unavailable

if TYPE_CHECKING:
    from bridge.service.store import SIPStore
    from bridge.service.supervisor import WorkerHandle, WorkerSupervisor

log = structlog.get_logger(__name__)

#: LiveKit's defaults (pkg/sip/participant.go): ring for 3 min, calls last at most 24 h.
DEFAULT_RINGING_TIMEOUT = 180.0
MAX_CALL_DURATION = 24 * 3600.0
#: Default transfer timeout (livekit pkg/service/sip.go).
DEFAULT_TRANSFER_TIMEOUT = 30.0
#: How long the worker may take to join the callee to the room before the RPC gives up.
JOIN_TIMEOUT_S = 15.0
#: Extra time over ``ringing_timeout`` for the answer, initial DTMF and the worker's reports.
ANSWER_SLACK_S = 30.0

#: Attribute names LiveKit sets on SIP participants (protocol livekit/attrs.go).
ATTR_CALL_ID = "sip.callID"
ATTR_CALL_ID_FULL = "sip.callIDFull"
ATTR_CALL_STATUS = "sip.callStatus"
ATTR_TRUNK_ID = "sip.trunkID"
ATTR_PHONE_NUMBER = "sip.phoneNumber"
ATTR_TRUNK_PHONE_NUMBER = "sip.trunkPhoneNumber"
ATTR_HOSTNAME = "sip.hostname"

_TRANSPORTS = {
    sip_pb.SIPTransport.SIP_TRANSPORT_AUTO: "",
    sip_pb.SIPTransport.SIP_TRANSPORT_UDP: "udp",
    sip_pb.SIPTransport.SIP_TRANSPORT_TCP: "tcp",
    sip_pb.SIPTransport.SIP_TRANSPORT_TLS: "tls",
}

# --- errors ---------------------------------------------------------------------------------------

#: SIP final status → Twirp code, as LiveKit protocol ``sipCodeToGRPCCode`` (livekit/sip.go).
SIP_TO_TWIRP: dict[int, str] = {
    300: "invalid_argument", 301: "not_found", 302: "not_found", 305: "invalid_argument",
    380: "invalid_argument",
    400: "invalid_argument", 401: "permission_denied", 402: "permission_denied",
    403: "permission_denied", 404: "not_found", 405: "invalid_argument", 406: "invalid_argument",
    407: "unauthenticated", 408: "deadline_exceeded", 409: "failed_precondition",
    410: "not_found", 411: "invalid_argument", 412: "failed_precondition",
    413: "invalid_argument", 414: "invalid_argument", 415: "invalid_argument",
    416: "out_of_range", 417: "invalid_argument", 420: "invalid_argument",
    421: "invalid_argument", 422: "invalid_argument", 423: "invalid_argument",
    424: "invalid_argument", 425: "invalid_argument", 428: "unauthenticated",
    429: "invalid_argument", 430: "invalid_argument", 433: "permission_denied",
    436: "unauthenticated", 437: "unauthenticated", 438: "unauthenticated",
    439: "invalid_argument", 440: "resource_exhausted", 469: "invalid_argument",
    470: "permission_denied", 480: "resource_exhausted", 481: "not_found",
    482: "failed_precondition", 483: "failed_precondition", 484: "invalid_argument",
    485: "invalid_argument", 486: "resource_exhausted", 487: "aborted",
    488: "invalid_argument", 489: "invalid_argument", 491: "aborted", 493: "invalid_argument",
    494: "unauthenticated",
    500: "failed_precondition", 501: "failed_precondition", 502: "failed_precondition",
    503: "failed_precondition", 504: "deadline_exceeded", 505: "invalid_argument",
    513: "invalid_argument",
    600: "resource_exhausted", 603: "permission_denied", 604: "not_found",
    606: "invalid_argument", 607: "permission_denied", 608: "permission_denied",
}  # fmt: skip

#: Final statuses after which LiveKit says the callee rejected the call (else: unavailable).
_REJECTED = frozenset({403, 486, 488, 600, 603, 607, 608})


class SIPCallFailed(RoomlineError):
    """A dial or transfer that failed with a SIP status (Twirp meta for ``SipCallError``)."""

    def __init__(self, code: str, message: str, meta: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.twirp_code = code
        self.meta = dict(meta or {})


class FailedPrecondition(RoomlineError):
    twirp_code = "failed_precondition"


def twirp_code_for(status: int) -> str:
    """The Twirp code of a final SIP status (LiveKit's table; unlisted 5xx → failed_precondition)."""
    code = SIP_TO_TWIRP.get(status)
    if code is not None:
        return code
    if 500 <= status < 600:
        return "failed_precondition"
    return "invalid_argument"


def sip_status_error(status: int, reason: str, what: str = "call") -> SIPCallFailed:
    """The RPC error for a final non-2xx SIP ``status`` (meta ``sip_status_code``/``sip_status``)."""
    reason = reason or "error"
    return SIPCallFailed(
        twirp_code_for(status),
        f"sip status {status}: {reason}" if what == "call" else f"{what}: {status} {reason}",
        {"sip_status_code": str(status), "sip_status": reason},
    )


def disconnect_reason_for(status: int) -> str:
    """LiveKit's room disconnect reason for a failed outbound call (pkg/sip/errors.go)."""
    if status in _REJECTED:
        return "USER_REJECTED"
    if 500 <= status < 600:
        return "SIP_TRUNK_FAILURE"
    return "USER_UNAVAILABLE"


# --- CreateSIPParticipant ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Trunk:
    """What a call needs from a stored or inline outbound trunk."""

    trunk_id: str
    address: str
    transport: str
    numbers: tuple[str, ...]
    auth_username: str = ""
    auth_password: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    headers_to_attributes: dict[str, str] = field(default_factory=dict)
    attributes_to_headers: dict[str, str] = field(default_factory=dict)
    include_headers: int = 0
    from_host: str = ""
    #: SRTP policy (``bridge.control.MEDIA_ENCRYPTIONS``); the request may override it.
    media_encryption: str = "disable"

    @classmethod
    def stored(cls, info: sip_pb.SIPOutboundTrunkInfo) -> Trunk:
        return cls(
            trunk_id=info.sip_trunk_id,
            address=info.address,
            transport=_TRANSPORTS.get(info.transport, ""),
            numbers=tuple(info.numbers),
            auth_username=info.auth_username,
            auth_password=info.auth_password,
            headers=dict(info.headers),
            headers_to_attributes=dict(info.headers_to_attributes),
            attributes_to_headers=dict(info.attributes_to_headers),
            include_headers=info.include_headers,
            from_host=info.from_host,
            media_encryption=media_encryption(info),
        )

    @classmethod
    def inline(cls, cfg: sip_pb.SIPOutboundConfig) -> Trunk:
        _check_address(cfg.hostname, "trunk.hostname")
        if cfg.from_host:
            _check_address(cfg.from_host, "trunk.from_host")
        check_headers(dict.fromkeys(cfg.headers_to_attributes, ""), "trunk.headers_to_attributes")
        check_headers(
            {h: "" for h in cfg.attributes_to_headers.values()}, "trunk.attributes_to_headers"
        )
        return cls(
            trunk_id="",
            address=cfg.hostname,
            transport=_TRANSPORTS.get(cfg.transport, ""),
            numbers=(),
            auth_username=cfg.auth_username,
            auth_password=cfg.auth_password,
            headers_to_attributes=dict(cfg.headers_to_attributes),
            attributes_to_headers=dict(cfg.attributes_to_headers),
            from_host=cfg.from_host,
        )


def _duration(d: Any) -> float:
    return float(d.seconds) + d.nanos / 1e9


def new_call_id() -> str:
    """A LiveKit-style ``SCL_`` id for the call (the ``sip.callID`` attribute)."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "SCL_" + "".join(secrets.choice(alphabet) for _ in range(12))


_DTMF_CHARS = frozenset("0123456789*#ABCDabcdwW")


@dataclass
class Plan:
    """A validated CreateSIPParticipant request: everything needed to dial."""

    call_id: str
    room: str
    identity: str
    name: str
    metadata: str
    attributes: dict[str, str]
    trunk: Trunk
    call_to: str
    from_number: str
    to_uri: str
    from_host: str
    display_name: str | None
    headers: dict[str, str]
    dtmf: str
    play_dialtone: bool
    ringing_timeout: float
    max_call_duration: float
    wait_until_answered: bool
    hide_phone_number: bool
    include_headers: int
    media_encryption: str = "disable"


def plan_call(req: sip_pb.CreateSIPParticipantRequest, store: SIPStore | None) -> Plan:
    """Validate ``req`` as LiveKit does (errors name the field) and work out the call."""
    if req.sip_trunk_id:
        if store is None:
            raise NotFound(f"SIP outbound trunk {req.sip_trunk_id!r} does not exist")
        trunk = Trunk.stored(store.get_outbound_trunk(req.sip_trunk_id))
    elif req.HasField("trunk"):
        trunk = Trunk.inline(req.trunk)
    else:
        raise InvalidRequest("sip_trunk_id: missing (or an inline trunk)")
    if not req.sip_call_to:
        raise InvalidRequest("sip_call_to: missing called number")
    if "@" in req.sip_call_to:
        raise InvalidRequest("sip_call_to: should be a phone number or SIP user, not a URI")
    validate_number(req.sip_call_to, "sip_call_to")
    if not req.room_name:
        raise InvalidRequest("room_name: missing room name")
    if req.dtmf and any(c not in _DTMF_CHARS for c in req.dtmf):
        raise InvalidRequest("dtmf: only 0-9, *, #, A-D and w are allowed")
    check_headers(req.headers, "headers")
    for name in req.headers:
        if name.lower() in ("to", "via", "from", "call-id", "cseq", "contact"):
            raise InvalidRequest(f"headers: {name} cannot be set")
    from_number = req.sip_number
    if not from_number:
        if not trunk.numbers:
            raise FailedPrecondition("no numbers on outbound trunk")
        from_number = random.choice(trunk.numbers)
    validate_number(from_number, "sip_number")
    host = trunk.address.lower()
    if host.endswith(".twilio.com") and not from_number.startswith("+"):
        from_number = "+" + from_number
    identity = req.participant_identity or f"sip_{req.sip_call_to}"
    call_id = new_call_id()
    attrs = dict(req.participant_attributes)
    attrs.update(
        {ATTR_CALL_ID: call_id, ATTR_CALL_STATUS: "dialing"}
        | ({ATTR_TRUNK_ID: trunk.trunk_id} if trunk.trunk_id else {})
    )
    if not req.hide_phone_number:
        attrs[ATTR_PHONE_NUMBER] = req.sip_call_to
        attrs[ATTR_TRUNK_PHONE_NUMBER] = from_number
        attrs[ATTR_HOSTNAME] = trunk.address
    ringing = _duration(req.ringing_timeout) if req.HasField("ringing_timeout") else 0.0
    max_dur = _duration(req.max_call_duration) if req.HasField("max_call_duration") else 0.0
    params = f";transport={trunk.transport}" if trunk.transport else ""
    display_name: str | None = from_number
    if req.HasField("display_name"):
        display_name = req.display_name
    headers = dict(trunk.headers)
    headers.update(req.headers)
    for attr, header in trunk.attributes_to_headers.items():
        value = attrs.get(attr, "")
        if value and not any(c in value for c in "\r\n\0"):
            headers[header] = value
    # DISABLE (0) on the request means "unset" (LiveKit): the trunk's policy applies then.
    encryption = media_encryption(None, req)
    if encryption == "disable":
        encryption = trunk.media_encryption
    return Plan(
        call_id=call_id,
        room=req.room_name,
        identity=identity,
        name=req.participant_name,
        metadata=req.participant_metadata,
        attributes=attrs,
        trunk=trunk,
        call_to=req.sip_call_to,
        from_number=from_number,
        to_uri=f"sip:{req.sip_call_to}@{trunk.address}{params}",
        from_host=trunk.from_host,
        display_name=display_name,
        headers=headers,
        dtmf=req.dtmf,
        play_dialtone=req.play_dialtone or req.play_ringtone,
        ringing_timeout=ringing if ringing > 0 else DEFAULT_RINGING_TIMEOUT,
        max_call_duration=min(max_dur, MAX_CALL_DURATION) if max_dur > 0 else MAX_CALL_DURATION,
        wait_until_answered=req.wait_until_answered,
        hide_phone_number=req.hide_phone_number,
        include_headers=req.include_headers or trunk.include_headers,
        media_encryption=encryption,
    )


# --- running calls ----------------------------------------------------------------------------------


class RoomNode(Protocol):
    """What the outbound part needs from the SFU node."""

    rooms: Any

    def create_room(self, name: str, **options: object) -> Any: ...


Minter = Callable[..., str]


@dataclass
class OutboundCall:
    """A call placed through a worker, as the main process tracks it."""

    plan: Plan
    worker: WorkerHandle
    request_id: int
    joined: asyncio.Future[control.DialProgress]
    done: asyncio.Future[control.DialProgress]
    participant_sid: str = ""
    state: str = "dialing"
    started: float = field(default_factory=time.monotonic)
    transfers: dict[int, asyncio.Future[control.TransferResult]] = field(default_factory=dict)
    transfer_target: str = ""


class OutboundCalls:
    """Places outbound calls on the supervisor's workers and routes their reports back."""

    def __init__(
        self,
        store: SIPStore,
        supervisor: WorkerSupervisor,
        node: RoomNode,
        keys: Mapping[str, str],
        socket: str,
        mint: Minter | None = None,
        outbound_proxy: str = "",
        tls_unavailable: str = "",
    ) -> None:
        self.store = store
        self.supervisor = supervisor
        self.node = node
        self.keys = keys
        self.socket = socket
        self._mint = mint
        #: SIP proxy outbound INVITEs go through (the Kamailio front, once it carries
        #: signalling); empty: the worker sends straight to the trunk.
        self.outbound_proxy = outbound_proxy
        #: Why a TLS trunk cannot be dialled here ("" = it can): the front opens the TLS
        #: connection to the carrier, so it needs its TLS listener; the workers have no TLS
        #: transport. Such a call is refused, never placed over UDP instead.
        self.tls_unavailable = tls_unavailable
        self.calls: dict[str, OutboundCall] = {}
        #: Transfers of inbound calls (by request id): their calls are not in ``calls``.
        self.inbound_transfers: dict[int, asyncio.Future[control.TransferResult]] = {}
        self._next_id = 1
        supervisor.on_outbound = self.on_report

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _token(self, plan: Plan) -> str:
        from roomline.auth import mint_token

        if not self.keys:
            raise Unavailable("no API key configured to sign SIP participant tokens")
        api_key, secret = next(iter(self.keys.items()))
        mint = self._mint or mint_token
        return mint(
            api_key,
            secret,
            identity=plan.identity,
            room=plan.room,
            name=plan.name,
            kind="sip",
            ttl=MAX_CALL_DURATION,
            attributes=dict(plan.attributes),
            metadata=plan.metadata,
            can_update_own_metadata=True,
        )

    async def create(self, req: sip_pb.CreateSIPParticipantRequest) -> sip_pb.SIPParticipantInfo:
        """Validate, dial, and answer the RPC (after the answer with ``wait_until_answered``)."""
        plan = plan_call(req, self.store)
        if plan.trunk.transport == "tls" and self.tls_unavailable:
            raise FailedPrecondition(self.tls_unavailable)
        worker = self.supervisor.pick_worker()
        if worker is None:
            raise Unavailable("no bridge worker has a free call slot")
        if plan.room not in self.node.rooms.rooms:
            self.node.create_room(plan.room)
        loop = asyncio.get_running_loop()
        call = OutboundCall(
            plan, worker, self._new_id(), loop.create_future(), loop.create_future()
        )
        self.calls[plan.call_id] = call
        dial = control.Dial(
            id=call.request_id,
            call_id=plan.call_id,
            to_uri=plan.to_uri,
            from_user=plan.from_number,
            from_host=plan.from_host,
            display_name=plan.display_name,
            headers=plan.headers,
            auth_username=plan.trunk.auth_username,
            auth_password=plan.trunk.auth_password,
            token=self._token(plan),
            room=plan.room,
            identity=plan.identity,
            socket=self.socket,
            dtmf=plan.dtmf,
            play_dialtone=plan.play_dialtone,
            ringing_timeout=plan.ringing_timeout,
            max_call_duration=plan.max_call_duration,
            include_headers=plan.include_headers,
            headers_to_attributes=plan.trunk.headers_to_attributes,
            outbound_proxy=self.outbound_proxy,
            media_encryption=plan.media_encryption,
        )
        worker.calls[plan.call_id] = "ringing"
        log.info(
            "sip outbound call",
            call_id=plan.call_id,
            room=plan.room,
            identity=plan.identity,
            trunk=plan.trunk.trunk_id,
            worker_pid=worker.pid,
        )
        worker.send(dial)
        try:
            joined = await asyncio.wait_for(asyncio.shield(call.joined), JOIN_TIMEOUT_S)
        except TimeoutError:
            self._forget(call)
            raise Unavailable("bridge worker did not join the callee to the room") from None
        if joined.state == "failed":
            raise self._failure(joined)
        info = sip_pb.SIPParticipantInfo(
            participant_id=joined.participant_sid,
            participant_identity=plan.identity,
            room_name=plan.room,
            sip_call_id=plan.call_id,
        )
        if not plan.wait_until_answered:
            return info
        try:
            final = await asyncio.wait_for(
                asyncio.shield(call.done), plan.ringing_timeout + ANSWER_SLACK_S
            )
        except TimeoutError:
            raise SIPCallFailed("deadline_exceeded", "no answer from the bridge worker") from None
        if final.state in ("active", "hangup") and final.status < 300:
            return info
        raise self._failure(final)

    @staticmethod
    def _failure(p: control.DialProgress) -> RoomlineError:
        if p.reason == "no-answer":
            return SIPCallFailed("canceled", "sip request timed out")
        if p.reason == "encryption-required":
            return SIPCallFailed("failed_precondition", "encryption-required")
        if p.status >= 300:
            return sip_status_error(p.status, p.reason)
        return SIPCallFailed("unavailable", f"sip call failed: {p.reason or 'error'}")

    def _forget(self, call: OutboundCall) -> None:
        self.calls.pop(call.plan.call_id, None)
        call.worker.calls.pop(call.plan.call_id, None)

    def on_report(self, worker: WorkerHandle, msg: control.Message) -> None:
        """A worker's :class:`DialProgress` or :class:`TransferResult`."""
        if isinstance(msg, control.TransferResult):
            call = self.calls.get(msg.call_id)
            fut = call.transfers.get(msg.id) if call else self.inbound_transfers.get(msg.id)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if not isinstance(msg, control.DialProgress):
            return
        call = self.calls.get(msg.call_id)
        if call is None:
            return
        call.state = msg.state
        log.info(
            "sip outbound call state",
            call_id=msg.call_id,
            state=msg.state,
            status=msg.status,
            reason=msg.reason,
        )
        if msg.participant_sid:
            call.participant_sid = msg.participant_sid
        if msg.state == "joined" or (msg.state == "failed" and not call.joined.done()):
            if not call.joined.done():
                call.joined.set_result(msg)
        if msg.state in ("active", "failed", "hangup") and not call.done.done():
            call.done.set_result(msg)
        if msg.state in ("ringing", "active"):
            worker.calls[msg.call_id] = "active" if msg.state == "active" else "ringing"
        if msg.state in ("failed", "hangup"):
            self._forget(call)
            for fut in call.transfers.values():
                if not fut.done():
                    # Released LiveKit: the call ending while the REFER runs counts as success.
                    fut.set_result(
                        control.TransferResult(id=0, call_id=msg.call_id, ok=True, status=200)
                    )

    # --- transfer --------------------------------------------------------------------------------

    async def transfer(self, req: sip_pb.TransferSIPParticipantRequest) -> None:
        """Send a REFER for the participant's call and wait for the outcome."""
        if not req.room_name:
            raise InvalidRequest("room_name: missing room name")
        if not req.participant_identity:
            raise InvalidRequest("participant_identity: missing participant identity")
        target = req.transfer_to
        low = target.lower()
        if not low.startswith(("sip:", "sips:", "tel:")):
            raise InvalidRequest("transfer_to: must start with sip:, sips: or tel:")
        if any(c in target for c in "\r\n\0<> "):
            raise InvalidRequest("transfer_to: not a valid URI")
        check_headers(req.headers, "headers")
        room = self.node.rooms.rooms.get(req.room_name)
        if room is None:
            raise NotFound(f"room {req.room_name!r} does not exist")
        participant = room.by_identity.get(req.participant_identity)
        if participant is None:
            raise NotFound(f"participant {req.participant_identity!r} is not in the room")
        call_id = participant.attributes.get(ATTR_CALL_ID, "")
        call = self.calls.get(call_id)
        worker: WorkerHandle | None = call.worker if call is not None else None
        if call is None:
            # An inbound caller: its worker knows the call by the SIP Call-ID.
            call_id = participant.attributes.get(ATTR_CALL_ID_FULL, "")
            worker = next((w for w in self.supervisor.workers if call_id in w.calls), None)
        if worker is None or not call_id:
            raise FailedPrecondition(
                f"participant {req.participant_identity!r} is not a SIP call this server can "
                "transfer"
            )
        if call is not None and call.transfer_target and call.transfer_target != target:
            raise InvalidRequest("call already being transferred elsewhere")
        if low.startswith(("sip:", "sips:")):
            target = f"<{target}>"
        timeout = (
            _duration(req.ringing_timeout)
            if req.HasField("ringing_timeout")
            else DEFAULT_TRANSFER_TIMEOUT
        ) or DEFAULT_TRANSFER_TIMEOUT
        msg = control.Transfer(
            id=self._new_id(),
            call_id=call_id,
            transfer_to=target,
            headers=dict(req.headers),
            play_dialtone=req.play_dialtone,
            ringing_timeout=timeout,
        )
        fut: asyncio.Future[control.TransferResult] = asyncio.get_running_loop().create_future()
        if call is not None:
            call.transfers[msg.id] = fut
            call.transfer_target = req.transfer_to
        else:
            self.inbound_transfers[msg.id] = fut
        log.info("sip transfer", call_id=call_id, to=req.transfer_to, worker_pid=worker.pid)
        worker.send(msg)
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), timeout + 5.0)
        except TimeoutError:
            raise SIPCallFailed(
                "deadline_exceeded",
                "transfer timed out",
                {"sip_transfer_reason": "STR_RINGING_TIMEOUT"},
            ) from None
        finally:
            self.inbound_transfers.pop(msg.id, None)
            if call is not None:
                call.transfers.pop(msg.id, None)
                call.transfer_target = ""
        if res.ok:
            return
        if res.reason == "ringing-timeout":
            raise SIPCallFailed(
                "deadline_exceeded",
                "transfer timed out",
                {"sip_transfer_reason": "STR_RINGING_TIMEOUT"},
            )
        if res.status >= 300:
            err = sip_status_error(res.status, res.reason, "transfer failed")
            err.meta["sip_transfer_reason"] = "STR_REJECTED"
            raise err
        raise SIPCallFailed("unavailable", f"transfer failed: {res.reason or 'error'}")


def require_call_grant(claims: Any) -> None:
    sip = getattr(claims, "sip", None)
    if not getattr(sip, "call", False):
        raise PermissionDenied("sip.call grant required")

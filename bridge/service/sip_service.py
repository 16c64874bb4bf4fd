"""The Twirp ``livekit.SIP`` service: trunks and dispatch rules over the LiveKit server API.

:class:`SIPService` has one async method per RPC, taking the request protobuf and the verified
token ``claims`` and returning the response protobuf. :data:`METHODS` maps Twirp method names to
``(request type, response type, method name)`` so the generic Twirp edge (``sfu/service/twirp.py``)
can decode, dispatch and encode without knowing SIP.

Grants (as LiveKit): trunk and dispatch-rule calls need ``sip.admin``; ``CreateSIPParticipant``
needs ``sip.call``; ``TransferSIPParticipant`` needs ``sip.call`` and room admin. Outbound calls and
transfers are carried out by :mod:`bridge.service.outbound`. Errors are :mod:`roomline.errors` exceptions
whose ``twirp_code`` the edge puts on the wire; validation messages name the offending field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from livekit.protocol import sip as sip_pb

from roomline.errors import InvalidRequest, PermissionDenied, Unavailable, Unimplemented
from sfu.service.twirp import Method

from .dispatch import validate_rule, validate_rule_conflicts
from .outbound import OutboundCalls, plan_call
from .outbound_trunks import redacted, validate_outbound_trunk
from .store import SIPStore, new_rule_id, new_trunk_id
from .trunks import (
    apply_list_update,
    normalize_number,
    validate_list_update,
    validate_trunk,
    validate_trunk_conflicts,
)

__all__ = ["METHODS", "SERVICE", "SIPService", "Unimplemented"]

SERVICE = "livekit.SIP"
#: Default and maximum page size for List* calls.
MAX_PAGE = 1000

M = TypeVar("M", bound=Message)


class _SIPGrant(Protocol):
    admin: bool
    call: bool


class Claims(Protocol):
    """What the service reads from verified token claims (``roomline.auth.Claims`` satisfies it)."""

    @property
    def sip(self) -> _SIPGrant | None: ...


def _has_grant(claims: Claims, name: str) -> bool:
    sip = getattr(claims, "sip", None)
    return bool(getattr(sip, name, False))


def _require_admin(claims: Claims) -> None:
    if not _has_grant(claims, "admin"):
        raise PermissionDenied("sip.admin grant required")


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _copy(msg: M) -> M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _fresh(msg: M, label: str, id_field: str) -> M:
    """A copy of a Create* request's object, which must not carry an id of its own."""
    if getattr(msg, id_field):
        raise InvalidRequest(f"{label}.{id_field}: must be empty (the server assigns it)")
    return _copy(msg)


def _assign(info: M, id_field: str, new_id: str) -> M:
    """Give a validated new object its id and its created/updated stamps."""
    setattr(info, id_field, new_id)
    info.created_at.CopyFrom(_now())  # type: ignore[attr-defined]
    info.updated_at.CopyFrom(info.created_at)  # type: ignore[attr-defined]
    return info


def _required(value: str, field: str, what: str) -> str:
    if not value:
        raise InvalidRequest(f"{field}: {what} is required")
    return value


def _page(items: Sequence[M], page: Any, key: Callable[[M], str]) -> list[M]:
    ordered = sorted(items, key=key)
    if page is not None and page.after_id:
        ordered = [m for m in ordered if key(m) > page.after_id]
    limit = page.limit if page is not None and page.limit > 0 else MAX_PAGE
    return ordered[: min(limit, MAX_PAGE)]


def _listed(
    req: Any,
    items: Iterable[M],
    id_field: str,
    ids: Iterable[str],
    list_field: str,
    wanted: Callable[[str], bool] | None,
) -> list[M]:
    """A List* RPC's answer, ordered by id and paged by ``req.page``.

    An item is listed if ``ids`` is empty or holds its id, and if ``wanted`` is None, or the
    item's ``list_field`` is empty (as LiveKit: a default trunk or a wildcard rule matches any
    filter), or ``wanted`` accepts one of its values.
    """
    id_set = set(ids)

    def keep(m: M) -> bool:
        if id_set and getattr(m, id_field) not in id_set:
            return False
        values = getattr(m, list_field)
        return wanted is None or not values or any(wanted(v) for v in values)

    page = req.page if req.HasField("page") else None
    return _page([m for m in items if keep(m)], page, lambda m: str(getattr(m, id_field)))


@dataclass(frozen=True)
class _Updatable:
    """How an Update* RPC's ``update`` action applies to one object type.

    ``lists`` are ``ListUpdate`` fields (set/add/remove), ``scalars`` and ``messages`` optional
    fields copied when present, ``maps`` string maps diffed as LiveKit does (an empty value
    deletes the key).
    """

    id_field: str
    lists: tuple[str, ...] = ()
    scalars: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    maps: tuple[str, ...] = ()


_INBOUND_TRUNK = _Updatable(
    "sip_trunk_id",
    lists=("numbers", "allowed_addresses", "allowed_numbers"),
    scalars=(
        "auth_username",
        "auth_password",
        "auth_realm",
        "name",
        "metadata",
        "media_encryption",
    ),
    messages=("media",),
)
_OUTBOUND_TRUNK = _Updatable(
    "sip_trunk_id",
    lists=("numbers",),
    scalars=(
        "address", "transport", "destination_country", "auth_username",
        "auth_password", "name", "metadata", "media_encryption", "from_host",
    ),
    messages=("media",),
)  # fmt: skip
_DISPATCH_RULE = _Updatable(
    "sip_dispatch_rule_id",
    lists=("trunk_ids",),
    scalars=("name", "metadata", "media_encryption"),
    messages=("rule", "media"),
    maps=("attributes",),
)


def _apply_update(current: M, req: Any, spec: _Updatable) -> M:
    """The new version of ``current`` for an Update* request (``replace`` or ``update`` action).

    The id and ``created_at`` are kept, ``updated_at`` is stamped; validation is the caller's.
    """
    action = req.WhichOneof("action")
    if action == "replace":
        if getattr(req.replace, spec.id_field) not in ("", getattr(req, spec.id_field)):
            raise InvalidRequest(f"replace.{spec.id_field}: must be empty or match {spec.id_field}")
        info = _copy(req.replace)
    elif action == "update":
        info = _copy(current)
        up = req.update
        for name in spec.lists:
            if up.HasField(name):
                validate_list_update(getattr(up, name), f"update.{name}")
                new = apply_list_update(getattr(info, name), getattr(up, name))
                info.ClearField(name)
                getattr(info, name).extend(new)
        for name in spec.scalars:
            if up.HasField(name):
                setattr(info, name, getattr(up, name))
        for name in spec.messages:
            if up.HasField(name):
                getattr(info, name).CopyFrom(getattr(up, name))
        for name in spec.maps:
            target = getattr(info, name)
            for key, value in getattr(up, name).items():
                if value:
                    target[key] = value
                else:
                    target.pop(key, None)
    else:
        raise InvalidRequest("action: missing or unsupported update action")
    setattr(info, spec.id_field, getattr(current, spec.id_field))
    info.created_at.CopyFrom(current.created_at)  # type: ignore[attr-defined]
    info.updated_at.CopyFrom(_now())  # type: ignore[attr-defined]
    return info


class SIPService:
    """Implementation of ``livekit.SIP`` on a :class:`~bridge.service.store.SIPStore`."""

    def __init__(self, store: SIPStore) -> None:
        self.store = store
        #: Outbound calls and transfers; set by ``sip_bridge.install`` when the bridge runs.
        self.outbound: OutboundCalls | None = None

    def methods(self) -> dict[str, Method]:
        """The RPCs for the appliance's Twirp edge (``sfu.service.twirp.TwirpRouter``)."""
        return {
            name: Method(req_type, getattr(self, handler_name))
            for name, (req_type, _resp, handler_name) in METHODS.items()
        }

    # --- inbound trunks -------------------------------------------------------------------

    def _check_inbound_conflicts(self, info: sip_pb.SIPInboundTrunkInfo) -> None:
        others = [t for t in self.store.inbound_trunks() if t.sip_trunk_id != info.sip_trunk_id]
        validate_trunk_conflicts([*others, info])

    async def create_sip_inbound_trunk(
        self, req: sip_pb.CreateSIPInboundTrunkRequest, claims: Claims
    ) -> sip_pb.SIPInboundTrunkInfo:
        _require_admin(claims)
        if not req.HasField("trunk"):
            raise InvalidRequest("trunk: missing")
        info = _fresh(req.trunk, "trunk", "sip_trunk_id")
        validate_trunk(info)
        self._check_inbound_conflicts(info)
        self.store.put_inbound_trunk(_assign(info, "sip_trunk_id", new_trunk_id()))
        return info

    def _writable(self, object_id: str, id_field: str, get: Callable[[str], M]) -> M:
        """The stored object an Update* request names; config-file objects are read-only."""
        current = get(_required(object_id, id_field, "ID"))
        if self.store.is_read_only(object_id):
            raise InvalidRequest(f"{id_field}: {object_id} comes from the config file")
        return current

    async def update_sip_inbound_trunk(
        self, req: sip_pb.UpdateSIPInboundTrunkRequest, claims: Claims
    ) -> sip_pb.SIPInboundTrunkInfo:
        _require_admin(claims)
        current = self._writable(req.sip_trunk_id, "sip_trunk_id", self.store.get_inbound_trunk)
        info = _apply_update(current, req, _INBOUND_TRUNK)
        validate_trunk(info)
        self._check_inbound_conflicts(info)
        self.store.put_inbound_trunk(info)
        return info

    async def get_sip_inbound_trunk(
        self, req: sip_pb.GetSIPInboundTrunkRequest, claims: Claims
    ) -> sip_pb.GetSIPInboundTrunkResponse:
        _require_admin(claims)
        trunk_id = _required(req.sip_trunk_id, "sip_trunk_id", "trunk ID")
        return sip_pb.GetSIPInboundTrunkResponse(trunk=self.store.get_inbound_trunk(trunk_id))

    async def list_sip_inbound_trunk(
        self, req: sip_pb.ListSIPInboundTrunkRequest, claims: Claims
    ) -> sip_pb.ListSIPInboundTrunkResponse:
        _require_admin(claims)
        wanted = {normalize_number(n) for n in req.numbers} | set(req.numbers)

        def number_wanted(n: str) -> bool:
            return n in wanted or normalize_number(n) in wanted

        items = _listed(
            req,
            self.store.inbound_trunks(),
            "sip_trunk_id",
            req.trunk_ids,
            "numbers",
            number_wanted if wanted else None,
        )
        return sip_pb.ListSIPInboundTrunkResponse(items=items)

    # --- outbound trunks (stored; calls not implemented) ----------------------------------

    async def create_sip_outbound_trunk(
        self, req: sip_pb.CreateSIPOutboundTrunkRequest, claims: Claims
    ) -> sip_pb.SIPOutboundTrunkInfo:
        _require_admin(claims)
        if not req.HasField("trunk"):
            raise InvalidRequest("trunk: missing")
        info = _fresh(req.trunk, "trunk", "sip_trunk_id")
        validate_outbound_trunk(info)
        self.store.put_outbound_trunk(_assign(info, "sip_trunk_id", new_trunk_id()))
        return info

    async def update_sip_outbound_trunk(
        self, req: sip_pb.UpdateSIPOutboundTrunkRequest, claims: Claims
    ) -> sip_pb.SIPOutboundTrunkInfo:
        _require_admin(claims)
        current = self._writable(req.sip_trunk_id, "sip_trunk_id", self.store.get_outbound_trunk)
        info = _apply_update(current, req, _OUTBOUND_TRUNK)
        validate_outbound_trunk(info)
        self.store.put_outbound_trunk(info)
        return info

    async def get_sip_outbound_trunk(
        self, req: sip_pb.GetSIPOutboundTrunkRequest, claims: Claims
    ) -> sip_pb.GetSIPOutboundTrunkResponse:
        _require_admin(claims)
        trunk_id = _required(req.sip_trunk_id, "sip_trunk_id", "trunk ID")
        trunk = self.store.get_outbound_trunk(trunk_id)
        return sip_pb.GetSIPOutboundTrunkResponse(trunk=redacted(trunk))

    async def list_sip_outbound_trunk(
        self, req: sip_pb.ListSIPOutboundTrunkRequest, claims: Claims
    ) -> sip_pb.ListSIPOutboundTrunkResponse:
        _require_admin(claims)
        wanted = set(req.numbers)
        items = _listed(
            req,
            self.store.outbound_trunks(),
            "sip_trunk_id",
            req.trunk_ids,
            "numbers",
            wanted.__contains__ if wanted else None,
        )
        return sip_pb.ListSIPOutboundTrunkResponse(items=[redacted(t) for t in items])

    async def delete_sip_trunk(
        self, req: sip_pb.DeleteSIPTrunkRequest, claims: Claims
    ) -> sip_pb.SIPTrunkInfo:
        _require_admin(claims)
        kind = self.store.delete_trunk(_required(req.sip_trunk_id, "sip_trunk_id", "trunk ID"))
        trunk_kind = (
            sip_pb.SIPTrunkInfo.TRUNK_INBOUND
            if kind == "inbound"
            else sip_pb.SIPTrunkInfo.TRUNK_OUTBOUND
        )
        return sip_pb.SIPTrunkInfo(sip_trunk_id=req.sip_trunk_id, kind=trunk_kind)

    # --- dispatch rules -------------------------------------------------------------------

    def _check_rule(self, info: sip_pb.SIPDispatchRuleInfo) -> None:
        validate_rule(info)
        for i, tid in enumerate(info.trunk_ids):
            if not self.store.trunk_exists(tid):
                raise InvalidRequest(f"dispatch_rule.trunk_ids[{i}]: unknown trunk {tid!r}")
        others = [
            r
            for r in self.store.dispatch_rules()
            if r.sip_dispatch_rule_id != info.sip_dispatch_rule_id
        ]
        validate_rule_conflicts([*others, info])

    async def create_sip_dispatch_rule(
        self, req: sip_pb.CreateSIPDispatchRuleRequest, claims: Claims
    ) -> sip_pb.SIPDispatchRuleInfo:
        _require_admin(claims)
        if req.HasField("dispatch_rule"):
            info = _fresh(req.dispatch_rule, "dispatch_rule", "sip_dispatch_rule_id")
        else:
            # Legacy request form: the rule's fields at the top level of the request.
            info = sip_pb.SIPDispatchRuleInfo(
                trunk_ids=req.trunk_ids,
                hide_phone_number=req.hide_phone_number,
                inbound_numbers=req.inbound_numbers,
                name=req.name,
                metadata=req.metadata,
                attributes=req.attributes,
                room_preset=req.room_preset,
            )
            if req.HasField("rule"):
                info.rule.CopyFrom(req.rule)
            if req.HasField("room_config"):
                info.room_config.CopyFrom(req.room_config)
        self._check_rule(info)
        self.store.put_dispatch_rule(_assign(info, "sip_dispatch_rule_id", new_rule_id()))
        return info

    async def update_sip_dispatch_rule(
        self, req: sip_pb.UpdateSIPDispatchRuleRequest, claims: Claims
    ) -> sip_pb.SIPDispatchRuleInfo:
        _require_admin(claims)
        current = self._writable(
            req.sip_dispatch_rule_id, "sip_dispatch_rule_id", self.store.get_dispatch_rule
        )
        info = _apply_update(current, req, _DISPATCH_RULE)
        self._check_rule(info)
        self.store.put_dispatch_rule(info)
        return info

    async def list_sip_dispatch_rule(
        self, req: sip_pb.ListSIPDispatchRuleRequest, claims: Claims
    ) -> sip_pb.ListSIPDispatchRuleResponse:
        _require_admin(claims)
        trunks = set(req.trunk_ids)
        items = _listed(
            req,
            self.store.dispatch_rules(),
            "sip_dispatch_rule_id",
            req.dispatch_rule_ids,
            "trunk_ids",
            trunks.__contains__ if trunks else None,
        )
        return sip_pb.ListSIPDispatchRuleResponse(items=items)

    async def delete_sip_dispatch_rule(
        self, req: sip_pb.DeleteSIPDispatchRuleRequest, claims: Claims
    ) -> sip_pb.SIPDispatchRuleInfo:
        _require_admin(claims)
        rule_id = _required(req.sip_dispatch_rule_id, "sip_dispatch_rule_id", "rule ID")
        return self.store.delete_dispatch_rule(rule_id)

    # --- calls: outbound and transfer (bridge/service/outbound.py) --------------------------

    async def create_sip_participant(
        self, req: sip_pb.CreateSIPParticipantRequest, claims: Claims
    ) -> sip_pb.SIPParticipantInfo:
        if not _has_grant(claims, "call"):
            raise PermissionDenied("sip.call grant required")
        if self.outbound is None:
            plan_call(req, self.store)  # validation errors first, as LiveKit
            raise Unavailable("SIP bridge is not running (sip.enabled is false)")
        return await self.outbound.create(req)

    async def transfer_sip_participant(
        self, req: sip_pb.TransferSIPParticipantRequest, claims: Claims
    ) -> sip_pb.TransferSIPParticipantResponse:
        if not _has_grant(claims, "call"):
            raise PermissionDenied("sip.call grant required")
        video = getattr(claims, "video", None)
        if not (
            getattr(video, "room_admin", False) and getattr(video, "room", "") == req.room_name
        ):
            raise PermissionDenied(f"roomAdmin for room {req.room_name!r} required")
        if self.outbound is None:
            raise Unavailable("SIP bridge is not running (sip.enabled is false)")
        await self.outbound.transfer(req)
        return sip_pb.TransferSIPParticipantResponse(
            status=sip_pb.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL,
            reason=sip_pb.SIPTransferReason.STR_COMPLETED,
        )


#: Twirp method name -> (request type, response type, :class:`SIPService` method name).
METHODS: dict[str, tuple[type[Message], type[Message], str]] = {
    "CreateSIPInboundTrunk": (
        sip_pb.CreateSIPInboundTrunkRequest, sip_pb.SIPInboundTrunkInfo,
        "create_sip_inbound_trunk",
    ),
    "UpdateSIPInboundTrunk": (
        sip_pb.UpdateSIPInboundTrunkRequest, sip_pb.SIPInboundTrunkInfo,
        "update_sip_inbound_trunk",
    ),
    "GetSIPInboundTrunk": (
        sip_pb.GetSIPInboundTrunkRequest, sip_pb.GetSIPInboundTrunkResponse,
        "get_sip_inbound_trunk",
    ),
    "ListSIPInboundTrunk": (
        sip_pb.ListSIPInboundTrunkRequest, sip_pb.ListSIPInboundTrunkResponse,
        "list_sip_inbound_trunk",
    ),
    "CreateSIPOutboundTrunk": (
        sip_pb.CreateSIPOutboundTrunkRequest, sip_pb.SIPOutboundTrunkInfo,
        "create_sip_outbound_trunk",
    ),
    "UpdateSIPOutboundTrunk": (
        sip_pb.UpdateSIPOutboundTrunkRequest, sip_pb.SIPOutboundTrunkInfo,
        "update_sip_outbound_trunk",
    ),
    "GetSIPOutboundTrunk": (
        sip_pb.GetSIPOutboundTrunkRequest, sip_pb.GetSIPOutboundTrunkResponse,
        "get_sip_outbound_trunk",
    ),
    "ListSIPOutboundTrunk": (
        sip_pb.ListSIPOutboundTrunkRequest, sip_pb.ListSIPOutboundTrunkResponse,
        "list_sip_outbound_trunk",
    ),
    "DeleteSIPTrunk": (sip_pb.DeleteSIPTrunkRequest, sip_pb.SIPTrunkInfo, "delete_sip_trunk"),
    "CreateSIPDispatchRule": (
        sip_pb.CreateSIPDispatchRuleRequest, sip_pb.SIPDispatchRuleInfo,
        "create_sip_dispatch_rule",
    ),
    "UpdateSIPDispatchRule": (
        sip_pb.UpdateSIPDispatchRuleRequest, sip_pb.SIPDispatchRuleInfo,
        "update_sip_dispatch_rule",
    ),
    "ListSIPDispatchRule": (
        sip_pb.ListSIPDispatchRuleRequest, sip_pb.ListSIPDispatchRuleResponse,
        "list_sip_dispatch_rule",
    ),
    "DeleteSIPDispatchRule": (
        sip_pb.DeleteSIPDispatchRuleRequest, sip_pb.SIPDispatchRuleInfo,
        "delete_sip_dispatch_rule",
    ),
    "CreateSIPParticipant": (
        sip_pb.CreateSIPParticipantRequest, sip_pb.SIPParticipantInfo,
        "create_sip_participant",
    ),
    "TransferSIPParticipant": (
        sip_pb.TransferSIPParticipantRequest, sip_pb.TransferSIPParticipantResponse,
        "transfer_sip_participant",
    ),
}  # fmt: skip

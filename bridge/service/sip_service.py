"""The Twirp ``livekit.SIP`` service: trunks and dispatch rules over the LiveKit server API.

:class:`SIPService` has one async method per RPC, taking the request protobuf and the verified
token ``claims`` and returning the response protobuf. :data:`METHODS` maps Twirp method names to
``(request type, response type, method name)`` so the generic Twirp edge (``sfu/service/twirp.py``)
can decode, dispatch and encode without knowing SIP. :meth:`SIPService.handle` does the whole
bytes-in/bytes-out step for edges that prefer it.

Grants (as LiveKit): trunk and dispatch-rule calls need ``sip.admin``; ``CreateSIPParticipant``
needs ``sip.call``; ``TransferSIPParticipant`` needs ``sip.call``. Outbound calls and transfers are
not implemented yet and answer Twirp ``unimplemented``. Errors are :mod:`roomline.errors` exceptions
whose ``twirp_code`` the edge puts on the wire; validation messages name the offending field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from livekit.protocol import sip as sip_pb

from roomline.errors import InvalidRequest, PermissionDenied, Unimplemented
from sfu.service.twirp import Method

from .dispatch import validate_rule, validate_rule_conflicts
from .store import SIPStore, new_rule_id, new_trunk_id
from .trunks import (
    apply_list_update,
    normalize_number,
    validate_list_update,
    validate_number,
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


def _has_grant(claims: Any, name: str) -> bool:
    sip = getattr(claims, "sip", None)
    return bool(getattr(sip, name, False))


def _require_admin(claims: Any) -> None:
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


def _page(items: Sequence[M], page: Any, key: Callable[[M], str]) -> list[M]:
    ordered = sorted(items, key=key)
    if page is not None and page.after_id:
        ordered = [m for m in ordered if key(m) > page.after_id]
    limit = page.limit if page is not None and page.limit > 0 else MAX_PAGE
    return ordered[: min(limit, MAX_PAGE)]


def _validate_outbound(info: sip_pb.SIPOutboundTrunkInfo) -> None:
    """LiveKit's outbound trunk checks: an address (host[:port], not a URI) and numbers."""
    addr = info.address
    if not addr:
        raise InvalidRequest("trunk.address: must not be empty")
    if "transport=" in addr:
        raise InvalidRequest("trunk.address: should not contain transport parameter")
    if any(c in addr for c in "@; \t\r\n") or addr.startswith(("sip:", "sips:")):
        raise InvalidRequest("trunk.address: should be a hostname or IP, not SIP URI")
    if not info.numbers:
        raise InvalidRequest("trunk.numbers: no trunk numbers specified")
    for i, num in enumerate(info.numbers):
        validate_number(num, f"trunk.numbers[{i}]")
    if bool(info.auth_username) != bool(info.auth_password):
        raise InvalidRequest("trunk.auth_password: auth_username and auth_password go together")


class SIPService:
    """Implementation of ``livekit.SIP`` on a :class:`~bridge.service.store.SIPStore`."""

    def __init__(self, store: SIPStore) -> None:
        self.store = store

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
        self, req: sip_pb.CreateSIPInboundTrunkRequest, claims: Any
    ) -> sip_pb.SIPInboundTrunkInfo:
        _require_admin(claims)
        if not req.HasField("trunk"):
            raise InvalidRequest("trunk: missing")
        info = _copy(req.trunk)
        if info.sip_trunk_id:
            raise InvalidRequest("trunk.sip_trunk_id: must be empty (the server assigns it)")
        validate_trunk(info)
        self._check_inbound_conflicts(info)
        info.sip_trunk_id = new_trunk_id()
        info.created_at.CopyFrom(_now())
        info.updated_at.CopyFrom(info.created_at)
        self.store.put_inbound_trunk(info)
        return info

    def _writable_trunk(self, trunk_id: str) -> sip_pb.SIPInboundTrunkInfo:
        if not trunk_id:
            raise InvalidRequest("sip_trunk_id: must be set")
        current = self.store.get_inbound_trunk(trunk_id)
        if self.store.is_read_only(trunk_id):
            raise InvalidRequest(f"sip_trunk_id: trunk {trunk_id} comes from the config file")
        return current

    async def update_sip_inbound_trunk(
        self, req: sip_pb.UpdateSIPInboundTrunkRequest, claims: Any
    ) -> sip_pb.SIPInboundTrunkInfo:
        _require_admin(claims)
        current = self._writable_trunk(req.sip_trunk_id)
        action = req.WhichOneof("action")
        if action == "replace":
            if req.replace.sip_trunk_id not in ("", req.sip_trunk_id):
                raise InvalidRequest("replace.sip_trunk_id: must be empty or match sip_trunk_id")
            info = _copy(req.replace)
        elif action == "update":
            info = _copy(current)
            up = req.update
            for name in ("numbers", "allowed_addresses", "allowed_numbers"):
                if up.HasField(name):
                    validate_list_update(getattr(up, name), f"update.{name}")
                    new = apply_list_update(getattr(info, name), getattr(up, name))
                    info.ClearField(name)
                    getattr(info, name).extend(new)
            for name in ("auth_username", "auth_password", "auth_realm", "name", "metadata"):
                if up.HasField(name):
                    setattr(info, name, getattr(up, name))
            if up.HasField("media_encryption"):
                info.media_encryption = up.media_encryption
            if up.HasField("media"):
                info.media.CopyFrom(up.media)
        else:
            raise InvalidRequest("action: missing or unsupported update action")
        info.sip_trunk_id = current.sip_trunk_id
        info.created_at.CopyFrom(current.created_at)
        info.updated_at.CopyFrom(_now())
        validate_trunk(info)
        self._check_inbound_conflicts(info)
        self.store.put_inbound_trunk(info)
        return info

    async def get_sip_inbound_trunk(
        self, req: sip_pb.GetSIPInboundTrunkRequest, claims: Any
    ) -> sip_pb.GetSIPInboundTrunkResponse:
        _require_admin(claims)
        if not req.sip_trunk_id:
            raise InvalidRequest("sip_trunk_id: trunk ID is required")
        return sip_pb.GetSIPInboundTrunkResponse(
            trunk=self.store.get_inbound_trunk(req.sip_trunk_id)
        )

    async def list_sip_inbound_trunk(
        self, req: sip_pb.ListSIPInboundTrunkRequest, claims: Any
    ) -> sip_pb.ListSIPInboundTrunkResponse:
        _require_admin(claims)
        ids = set(req.trunk_ids)
        wanted = {normalize_number(n) for n in req.numbers} | set(req.numbers)

        def keep(t: sip_pb.SIPInboundTrunkInfo) -> bool:
            if ids and t.sip_trunk_id not in ids:
                return False
            # As LiveKit: a trunk without numbers (default trunk) matches any number filter.
            if wanted and t.numbers:
                return any(n in wanted or normalize_number(n) in wanted for n in t.numbers)
            return True

        items = [t for t in self.store.inbound_trunks() if keep(t)]
        page = req.page if req.HasField("page") else None
        return sip_pb.ListSIPInboundTrunkResponse(
            items=_page(items, page, lambda t: t.sip_trunk_id)
        )

    # --- outbound trunks (stored; calls not implemented) ----------------------------------

    async def create_sip_outbound_trunk(
        self, req: sip_pb.CreateSIPOutboundTrunkRequest, claims: Any
    ) -> sip_pb.SIPOutboundTrunkInfo:
        _require_admin(claims)
        if not req.HasField("trunk"):
            raise InvalidRequest("trunk: missing")
        info = _copy(req.trunk)
        if info.sip_trunk_id:
            raise InvalidRequest("trunk.sip_trunk_id: must be empty (the server assigns it)")
        _validate_outbound(info)
        info.sip_trunk_id = new_trunk_id()
        info.created_at.CopyFrom(_now())
        info.updated_at.CopyFrom(info.created_at)
        self.store.put_outbound_trunk(info)
        return info

    async def update_sip_outbound_trunk(
        self, req: sip_pb.UpdateSIPOutboundTrunkRequest, claims: Any
    ) -> sip_pb.SIPOutboundTrunkInfo:
        _require_admin(claims)
        if not req.sip_trunk_id:
            raise InvalidRequest("sip_trunk_id: must be set")
        current = self.store.get_outbound_trunk(req.sip_trunk_id)
        action = req.WhichOneof("action")
        if action == "replace":
            if req.replace.sip_trunk_id not in ("", req.sip_trunk_id):
                raise InvalidRequest("replace.sip_trunk_id: must be empty or match sip_trunk_id")
            info = _copy(req.replace)
        elif action == "update":
            info = _copy(current)
            up = req.update
            if up.HasField("numbers"):
                validate_list_update(up.numbers, "update.numbers")
                new = apply_list_update(info.numbers, up.numbers)
                info.ClearField("numbers")
                info.numbers.extend(new)
            for name in (
                "address", "transport", "destination_country", "auth_username",
                "auth_password", "name", "metadata", "media_encryption", "from_host",
            ):  # fmt: skip
                if up.HasField(name):
                    setattr(info, name, getattr(up, name))
            if up.HasField("media"):
                info.media.CopyFrom(up.media)
        else:
            raise InvalidRequest("action: missing or unsupported update action")
        info.sip_trunk_id = current.sip_trunk_id
        info.created_at.CopyFrom(current.created_at)
        info.updated_at.CopyFrom(_now())
        _validate_outbound(info)
        self.store.put_outbound_trunk(info)
        return info

    async def get_sip_outbound_trunk(
        self, req: sip_pb.GetSIPOutboundTrunkRequest, claims: Any
    ) -> sip_pb.GetSIPOutboundTrunkResponse:
        _require_admin(claims)
        if not req.sip_trunk_id:
            raise InvalidRequest("sip_trunk_id: trunk ID is required")
        trunk = self.store.get_outbound_trunk(req.sip_trunk_id)
        return sip_pb.GetSIPOutboundTrunkResponse(trunk=trunk)

    async def list_sip_outbound_trunk(
        self, req: sip_pb.ListSIPOutboundTrunkRequest, claims: Any
    ) -> sip_pb.ListSIPOutboundTrunkResponse:
        _require_admin(claims)
        ids, wanted = set(req.trunk_ids), set(req.numbers)
        items = [
            t
            for t in self.store.outbound_trunks()
            if (not ids or t.sip_trunk_id in ids)
            and (not wanted or not t.numbers or any(n in wanted for n in t.numbers))
        ]
        page = req.page if req.HasField("page") else None
        return sip_pb.ListSIPOutboundTrunkResponse(
            items=_page(items, page, lambda t: t.sip_trunk_id)
        )

    async def delete_sip_trunk(
        self, req: sip_pb.DeleteSIPTrunkRequest, claims: Any
    ) -> sip_pb.SIPTrunkInfo:
        _require_admin(claims)
        if not req.sip_trunk_id:
            raise InvalidRequest("sip_trunk_id: trunk ID is required")
        kind = self.store.delete_trunk(req.sip_trunk_id)
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
        self, req: sip_pb.CreateSIPDispatchRuleRequest, claims: Any
    ) -> sip_pb.SIPDispatchRuleInfo:
        _require_admin(claims)
        if req.HasField("dispatch_rule"):
            info = _copy(req.dispatch_rule)
            if info.sip_dispatch_rule_id:
                raise InvalidRequest("dispatch_rule.sip_dispatch_rule_id: must be empty")
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
        info.sip_dispatch_rule_id = new_rule_id()
        info.created_at.CopyFrom(_now())
        info.updated_at.CopyFrom(info.created_at)
        self.store.put_dispatch_rule(info)
        return info

    async def update_sip_dispatch_rule(
        self, req: sip_pb.UpdateSIPDispatchRuleRequest, claims: Any
    ) -> sip_pb.SIPDispatchRuleInfo:
        _require_admin(claims)
        if not req.sip_dispatch_rule_id:
            raise InvalidRequest("sip_dispatch_rule_id: must be set")
        current = self.store.get_dispatch_rule(req.sip_dispatch_rule_id)
        if self.store.is_read_only(current.sip_dispatch_rule_id):
            raise InvalidRequest(
                f"sip_dispatch_rule_id: rule {current.sip_dispatch_rule_id} comes from the "
                "config file"
            )
        action = req.WhichOneof("action")
        if action == "replace":
            if req.replace.sip_dispatch_rule_id not in ("", req.sip_dispatch_rule_id):
                raise InvalidRequest(
                    "replace.sip_dispatch_rule_id: must be empty or match sip_dispatch_rule_id"
                )
            info = _copy(req.replace)
        elif action == "update":
            info = _copy(current)
            up = req.update
            if up.HasField("trunk_ids"):
                validate_list_update(up.trunk_ids, "update.trunk_ids")
                new = apply_list_update(info.trunk_ids, up.trunk_ids)
                info.ClearField("trunk_ids")
                info.trunk_ids.extend(new)
            if up.HasField("rule"):
                info.rule.CopyFrom(up.rule)
            for name in ("name", "metadata", "media_encryption"):
                if up.HasField(name):
                    setattr(info, name, getattr(up, name))
            for key, value in up.attributes.items():
                # LiveKit's map diff: an empty value deletes the attribute.
                if value:
                    info.attributes[key] = value
                else:
                    info.attributes.pop(key, None)
            if up.HasField("media"):
                info.media.CopyFrom(up.media)
        else:
            raise InvalidRequest("action: missing or unsupported update action")
        info.sip_dispatch_rule_id = current.sip_dispatch_rule_id
        info.created_at.CopyFrom(current.created_at)
        info.updated_at.CopyFrom(_now())
        self._check_rule(info)
        self.store.put_dispatch_rule(info)
        return info

    async def list_sip_dispatch_rule(
        self, req: sip_pb.ListSIPDispatchRuleRequest, claims: Any
    ) -> sip_pb.ListSIPDispatchRuleResponse:
        _require_admin(claims)
        ids, trunks = set(req.dispatch_rule_ids), set(req.trunk_ids)
        items = [
            r
            for r in self.store.dispatch_rules()
            if (not ids or r.sip_dispatch_rule_id in ids)
            # As LiveKit: wildcard rules (no trunk_ids) match any trunk filter.
            and (not trunks or not r.trunk_ids or any(t in trunks for t in r.trunk_ids))
        ]
        page = req.page if req.HasField("page") else None
        return sip_pb.ListSIPDispatchRuleResponse(
            items=_page(items, page, lambda r: r.sip_dispatch_rule_id)
        )

    async def delete_sip_dispatch_rule(
        self, req: sip_pb.DeleteSIPDispatchRuleRequest, claims: Any
    ) -> sip_pb.SIPDispatchRuleInfo:
        _require_admin(claims)
        if not req.sip_dispatch_rule_id:
            raise InvalidRequest("sip_dispatch_rule_id: rule ID is required")
        return self.store.delete_dispatch_rule(req.sip_dispatch_rule_id)

    # --- calls (not implemented) ----------------------------------------------------------

    async def create_sip_participant(
        self, req: sip_pb.CreateSIPParticipantRequest, claims: Any
    ) -> sip_pb.SIPParticipantInfo:
        if not _has_grant(claims, "call"):
            raise PermissionDenied("sip.call grant required")
        raise Unimplemented(
            "outbound SIP calls (CreateSIPParticipant) are not implemented in roomline yet; "
            "only inbound calls through trunks and dispatch rules are supported"
        )

    async def transfer_sip_participant(
        self, req: sip_pb.TransferSIPParticipantRequest, claims: Any
    ) -> sip_pb.TransferSIPParticipantResponse:
        if not _has_grant(claims, "call"):
            raise PermissionDenied("sip.call grant required")
        raise Unimplemented(
            "SIP call transfer (TransferSIPParticipant, SIP REFER) is not implemented in "
            "roomline yet"
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

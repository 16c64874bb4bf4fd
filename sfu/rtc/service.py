"""The ``/rtc`` endpoints: token checks before the upgrade, then an :class:`RTCSession`.

Only classic (v0) signalling is served. The LiveKit SDKs try ``/rtc/v1`` (single PeerConnection)
first and fall back to ``/rtc`` when it answers 404, so ``/rtc/v1`` and ``/rtc/v1/validate`` answer
404 (with CORS headers, or a browser SDK cannot read the status).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiohttp import web
from livekit.protocol import rtc

from roomline.auth import Claims, verify_token
from roomline.config import Config
from roomline.errors import InvalidRequest, RoomFull, RoomlineError, RoomNotFound, TokenError
from sfu.admission import participant_init
from sfu.node import Node
from sfu.participant import DisconnectReason
from sfu.roommanager import room_options_from_config
from sfu.rtc.session import RTCSession
from sfu.signal import leave_response

log = structlog.get_logger(__name__)

CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "*"}


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() in ("1", "true", "yes")


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, headers=CORS)


async def _leave(
    ws: web.WebSocketResponse, reason: DisconnectReason, action: rtc.LeaveRequest.Action
) -> web.WebSocketResponse:
    """Send a ``leave`` on a freshly upgraded socket that gets no session, and close it."""
    await ws.send_bytes(leave_response(reason, action).SerializeToString())
    await ws.close()
    return ws


@dataclass(frozen=True, slots=True)
class JoinParams:
    claims: Claims
    room: str
    auto_subscribe: bool
    reconnect: bool
    client_protocol: int


class RTCService:
    """aiohttp handlers for signalling."""

    def __init__(self, node: Node, cfg: Config) -> None:
        self.node = node
        self.cfg = cfg

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/rtc", self.rtc),
            web.get("/rtc/validate", self.validate),
            web.get("/rtc/v1", self.v1),
            web.get("/rtc/v1/validate", self.v1),
        ]

    async def v1(self, request: web.Request) -> web.Response:
        return _text(404, "single peer connection signalling (v1) is not served here; use /rtc")

    def _params(self, request: web.Request) -> JoinParams:
        header = request.headers.get("Authorization", "")
        token = ""
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        token = token or request.query.get("access_token", "")
        if not token:
            raise TokenError("missing access token")
        claims = verify_token(token, self.cfg.keys)
        if not claims.video.room_join:
            raise TokenError("token does not grant roomJoin")
        if not claims.identity:
            raise InvalidRequest("token has no identity")
        if not claims.video.room:
            raise InvalidRequest("token names no room")
        try:
            protocol = int(request.query.get("client_protocol", "0") or 0)
        except ValueError:
            raise InvalidRequest("client_protocol must be an integer") from None
        return JoinParams(
            claims=claims,
            room=claims.video.room,
            auto_subscribe=_truthy(request.query.get("auto_subscribe"), True),
            reconnect=_truthy(request.query.get("reconnect"), False),
            client_protocol=protocol,
        )

    def _check_room(self, params: JoinParams) -> None:
        room = self.node.rooms.rooms.get(params.room)
        if room is None:
            if not self.node.rooms.defaults.auto_create:
                raise RoomNotFound(params.room)
            return
        init = participant_init(params.claims, params.auto_subscribe, params.client_protocol)
        room.check_join(init)

    @staticmethod
    def _error(exc: RoomlineError) -> web.Response:
        if isinstance(exc, TokenError):
            return _text(401, exc.message)
        if isinstance(exc, RoomNotFound):
            return _text(404, "requested room does not exist")
        if isinstance(exc, RoomFull):
            return _text(403, exc.message)
        return _text(400, exc.message)

    async def validate(self, request: web.Request) -> web.Response:
        try:
            params = self._params(request)
            self._check_room(params)
        except RoomlineError as exc:
            return self._error(exc)
        return _text(200, "success")

    async def rtc(self, request: web.Request) -> web.StreamResponse:
        try:
            params = self._params(request)
            if not params.reconnect:
                self._check_room(params)
        except RoomlineError as exc:
            log.info("join refused", status=self._error(exc).status, reason=exc.message)
            return self._error(exc)
        ws = web.WebSocketResponse(
            max_msg_size=self.cfg.limits.max_signal_message_size, heartbeat=None, autoping=True
        )
        if not ws.can_prepare(request).ok:
            return _text(404, "not a WebSocket upgrade")
        await ws.prepare(request)
        if params.reconnect:
            # A resume would need an ICE restart, which aiortc cannot do: tell the client to
            # reconnect from scratch instead.
            return await _leave(
                ws, DisconnectReason.STATE_MISMATCH, rtc.LeaveRequest.Action.RECONNECT
            )
        init = participant_init(params.claims, params.auto_subscribe, params.client_protocol)
        try:
            room, participant, events = self.node.join(
                params.room, init, room_options_from_config(params.claims.room_config)
            )
        except RoomlineError as exc:
            # Lost a race with another join (room filled meanwhile): tell the client and close.
            log.info("join failed after upgrade", reason=exc.message)
            return await _leave(
                ws, DisconnectReason.JOIN_FAILURE, rtc.LeaveRequest.Action.DISCONNECT
            )
        session = RTCSession(self.node, self.cfg, room, participant, ws)
        session.log.info("participant joined", kind=participant.kind.name)
        # JoinResponse first, then the events of the join (which may add subscriptions).
        session.send_signal(rtc.SignalResponse(join=session.join_response()))
        self.node.attach(session)
        self.node.dispatch(events)
        await session.run()
        return ws

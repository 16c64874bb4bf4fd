"""``GET /debug/media?room=<name>``: per-track and per-subscription forwarding counters, as JSON.

/metrics only has totals; when one subscriber hears nothing from one track, the question is where
that track's packets stop: at the publisher (``received`` stays 0), before the subscriber's sender
was started (``dropped_not_ready`` grows, no ``mid``), on the way out (``send_errors``), or after
the SFU (``forwarded`` grows: look at the client). Needs a token with ``roomAdmin`` for the room,
like the RoomService calls acting in it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from roomline.auth import verify_token
from roomline.errors import TokenError
from sfu.node import Node

__all__ = ["MediaDebug"]


class MediaDebug:
    """The ``/debug/media`` handler."""

    def __init__(self, node: Node, keys: dict[str, str]) -> None:
        self.node = node
        self.keys = keys

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/debug/media", self.handle)]

    def snapshot(self, room_name: str) -> dict[str, Any] | None:
        """The room's tracks with their relays' counters; None if there is no such room."""
        room = self.node.rooms.rooms.get(room_name)
        if room is None:
            return None
        identities = {sid: p.identity for sid, p in room.participants.items()}
        tracks: list[dict[str, Any]] = []
        for participant in room.participants.values():
            for track in participant.tracks.values():
                entry: dict[str, Any] = {
                    "track": track.sid,
                    "publisher": participant.identity,
                    "bound": track.bound,
                    "muted": track.muted,
                }
                relay = self.node.relays.get(track.sid)
                if relay is not None:
                    stats = relay.stats()
                    subscribers = stats.pop("subscribers")
                    assert isinstance(subscribers, dict)
                    entry.update(stats)
                    entry["subscribers"] = {
                        identities.get(sid, sid): sub for sid, sub in subscribers.items()
                    }
                tracks.append(entry)
        return {"room": room.name, "tracks": tracks}

    async def handle(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "Authorization: Bearer <token> with roomAdmin is required")
        try:
            claims = verify_token(token.strip(), self.keys)
        except TokenError as exc:
            return _error(401, exc.message)
        room_name = request.query.get("room", "")
        if not room_name:
            return _error(400, "query parameter 'room' is required")
        if not (claims.video.room_admin and claims.video.room == room_name):
            return _error(403, f"missing grant: roomAdmin for room {room_name!r}")
        snapshot = self.snapshot(room_name)
        if snapshot is None:
            return _error(404, f"room {room_name!r} not found")
        return web.json_response(snapshot)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)

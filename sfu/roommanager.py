"""All rooms of this node: creation on demand, explicit creation and deletion, timeouts. Sans-I/O.

LiveKit keeps rooms in a local or a distributed (Redis) store; roomline is one node, so this local
manager is the only implementation (no interface is kept for a second one that does not exist).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from roomline.config import RoomDefaults
from roomline.errors import InvalidRequest, RoomNotFound
from sfu.events import Disconnect, Event, RoomClosed, SubscriptionChanged
from sfu.participant import DisconnectReason, Participant, ParticipantInit
from sfu.room import Limits, Room


@dataclass(slots=True)
class RoomManager:
    """The rooms of this node; ``defaults`` is the config's ``room`` section."""

    limits: Limits = field(default_factory=Limits)
    defaults: RoomDefaults = field(default_factory=RoomDefaults)
    rooms: dict[str, Room] = field(default_factory=dict)

    def get(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            raise RoomNotFound(name)
        return room

    def list_rooms(self, names: list[str] | None = None) -> list[Room]:
        if names:
            return [self.rooms[n] for n in names if n in self.rooms]
        return list(self.rooms.values())

    def create_room(
        self,
        name: str,
        now: float,
        *,
        empty_timeout: int = 0,
        departure_timeout: int = 0,
        max_participants: int = 0,
        metadata: str = "",
        agents: list[str] | None = None,
        agent_metadata: Mapping[str, str] | None = None,
    ) -> tuple[Room, bool]:
        """CreateRoom: returns ``(room, created)``; an existing room is returned unchanged."""
        existing = self.rooms.get(name)
        if existing is not None:
            return existing, False
        if empty_timeout < 0 or departure_timeout < 0 or max_participants < 0:
            raise InvalidRequest("timeouts and max_participants must not be negative")
        room = Room.create(
            name,
            now,
            self.limits,
            metadata=metadata,
            max_participants=max_participants or self.defaults.max_participants,
            empty_timeout=empty_timeout or self.defaults.empty_timeout,
            departure_timeout=departure_timeout or self.defaults.departure_timeout,
            agents=list(agents or []),
            agent_metadata=dict(agent_metadata or {}),
        )
        self.rooms[name] = room
        return room, True

    def join(
        self,
        room_name: str,
        init: ParticipantInit,
        now: float,
        room_options: Mapping[str, Any] | None = None,
    ) -> tuple[Room, Participant, list[Event], bool]:
        """Join ``room_name``, creating it on demand: ``(room, participant, events, created)``.

        ``room_options`` (:meth:`create_room` keywords, from the token's ``roomConfig``) apply only
        when this join creates the room, as in LiveKit."""
        created = False
        room = self.rooms.get(room_name)
        if room is None:
            if not self.defaults.auto_create:
                raise RoomNotFound(room_name)
            room, created = self.create_room(room_name, now, **dict(room_options or {}))
        try:
            participant, events = room.join(init, now)
        except Exception:
            if created:
                del self.rooms[room_name]
            raise
        return room, participant, events, created

    def delete_room(self, name: str, now: float) -> list[Event]:
        """DeleteRoom: everyone gets ``leave(ROOM_DELETED)``, then the room is gone."""
        room = self.get(name)
        return self._close(room, DisconnectReason.ROOM_DELETED, now)

    def _close(self, room: Room, reason: DisconnectReason, now: float) -> list[Event]:
        events: list[Event] = []
        for participant in list(room.participants.values()):
            for event in room.leave(participant.sid, reason, now, tell_self=True):
                # Others are leaving too; only the per-participant leave matters.
                if isinstance(event, Disconnect | SubscriptionChanged):
                    events.append(event)
        room.closed = True
        self.rooms.pop(room.name, None)
        events.append(RoomClosed(room, reason))
        return events

    def tick(self, now: float) -> list[Event]:
        """Close rooms whose empty or departure timeout has passed."""
        events: list[Event] = []
        for room in list(self.rooms.values()):
            # Agents and recorders alone do not keep a room open (LiveKit ``CloseIfEmpty``);
            # closing it disconnects them.
            if room.has_independent:
                continue
            if room.ever_joined and room.last_left_at is not None:
                if now - room.last_left_at >= room.departure_timeout:
                    events += self._close(room, DisconnectReason.ROOM_CLOSED, now)
            elif not room.ever_joined and now - room.created_at >= room.empty_timeout:
                events += self._close(room, DisconnectReason.ROOM_CLOSED, now)
        return events


def room_options_from_config(room_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """:meth:`RoomManager.create_room` keywords from a token's ``roomConfig`` claim (LiveKit's
    ``RoomConfiguration`` as JSON: camelCase, or snake_case from some SDKs). Unknown or malformed
    fields are ignored: the claim was signed by the API key holder, but is not worth a failed join.
    """
    if not room_config:
        return {}
    options: dict[str, Any] = {}
    for key, attr in (
        ("emptyTimeout", "empty_timeout"),
        ("departureTimeout", "departure_timeout"),
        ("maxParticipants", "max_participants"),
    ):
        value = room_config.get(key, room_config.get(attr))
        if isinstance(value, int | str) and str(value).isdigit():
            options[attr] = int(value)
    agents = room_config.get("agents")
    if isinstance(agents, list):
        names: list[str] = []
        metadata: dict[str, str] = {}
        for entry in agents:
            if isinstance(entry, dict):
                name = entry.get("agentName", entry.get("agent_name"))
                if isinstance(name, str) and name:
                    names.append(name)
                    meta = entry.get("metadata")
                    if isinstance(meta, str) and meta:
                        metadata[name] = meta
        if names:
            options["agents"] = names
        if metadata:
            options["agent_metadata"] = metadata
    return options

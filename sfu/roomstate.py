"""A room's state and limits, read by everyone; only :class:`sfu.room.Room` changes them."""

from __future__ import annotations

from dataclasses import dataclass, field

from roomline.errors import ParticipantNotFound
from sfu.participant import Participant


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource caps enforced by the model (``limits.*`` in the config)."""

    max_participants_per_room: int = 1000
    max_tracks_per_participant: int = 16
    #: LiveKit's default cap on metadata; bigger blobs belong in data packets.
    max_metadata_size: int = 64 * 1024
    max_attributes_size: int = 64 * 1024
    max_identity_length: int = 256
    max_name_length: int = 256
    max_room_name_length: int = 256


@dataclass(eq=False, slots=True)
class RoomState:
    """A room's state: a name, metadata, limits, timeouts and the participants in it.

    What events carry and readers see; :class:`sfu.room.Room` adds the rules that change it.
    """

    name: str
    sid: str
    created_at: float
    limits: Limits = field(default_factory=Limits)
    metadata: str = ""
    #: 0 = no room-specific cap (the global ``limits.max_participants_per_room`` still applies).
    max_participants: int = 0
    #: Seconds the room waits for a first participant before closing.
    empty_timeout: int = 300
    #: Seconds the room stays open after the last participant left.
    departure_timeout: int = 20
    participants: dict[str, Participant] = field(default_factory=dict)
    by_identity: dict[str, Participant] = field(default_factory=dict)
    #: Set when the last participant who is not an agent or recorder left; None while one is in
    #: the room (agents alone do not keep a room open).
    last_left_at: float | None = None
    #: Whether a participant other than an agent or recorder has ever joined.
    ever_joined: bool = False
    closed: bool = False
    #: Names of agents to dispatch when the room is created (CreateRoom ``agents``).
    agents: list[str] = field(default_factory=list)
    #: Dispatch metadata per agent name in ``agents`` (CreateRoom / roomConfig ``RoomAgentDispatch``).
    agent_metadata: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ views

    @property
    def num_participants(self) -> int:
        return sum(1 for p in self.participants.values() if not p.hidden)

    @property
    def has_independent(self) -> bool:
        """Is anyone but agents and recorders in the room (what keeps a room open)?"""
        return any(not p.dependent for p in self.participants.values())

    @property
    def num_publishers(self) -> int:
        return sum(1 for p in self.participants.values() if p.tracks and not p.hidden)

    def get(self, sid: str) -> Participant:
        try:
            return self.participants[sid]
        except KeyError:
            raise ParticipantNotFound(sid) from None

    def get_by_identity(self, identity: str) -> Participant:
        try:
            return self.by_identity[identity]
        except KeyError:
            raise ParticipantNotFound(identity) from None

    def visible_to(self, viewer_sid: str) -> list[Participant]:
        """Participants ``viewer_sid`` may know about: everyone else except hidden ones."""
        return [p for sid, p in self.participants.items() if sid != viewer_sid and not p.hidden]

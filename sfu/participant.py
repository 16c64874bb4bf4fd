"""Participants: anything connected to a room (browser, phone caller, agent)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sfu.track import TrackPublication, TrackSource


class ParticipantKind(enum.IntEnum):
    """Values of LiveKit's ``ParticipantInfo.Kind``. The kind is identity, not permission (seed)."""

    STANDARD = 0
    INGRESS = 1
    EGRESS = 2
    SIP = 3
    AGENT = 4
    CONNECTOR = 7
    BRIDGE = 8

    @classmethod
    def from_name(cls, name: str) -> ParticipantKind:
        """Parse the lower-case names tokens use (``"agent"``, ``"sip"`` ...)."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown participant kind {name!r}") from None


class ParticipantState(enum.IntEnum):
    """JOINING → JOINED → ACTIVE → DISCONNECTED, as in LiveKit's ``ParticipantInfo.State``."""

    JOINING = 0
    JOINED = 1
    ACTIVE = 2
    DISCONNECTED = 3


class DisconnectReason(enum.IntEnum):
    """Values of LiveKit's ``DisconnectReason``."""

    UNKNOWN_REASON = 0
    CLIENT_INITIATED = 1
    DUPLICATE_IDENTITY = 2
    SERVER_SHUTDOWN = 3
    PARTICIPANT_REMOVED = 4
    ROOM_DELETED = 5
    STATE_MISMATCH = 6
    JOIN_FAILURE = 7
    MIGRATION = 8
    SIGNAL_CLOSE = 9
    ROOM_CLOSED = 10
    USER_UNAVAILABLE = 11
    USER_REJECTED = 12
    SIP_TRUNK_FAILURE = 13
    CONNECTION_TIMEOUT = 14
    MEDIA_FAILURE = 15
    AGENT_ERROR = 16


@dataclass(slots=True)
class Permission:
    """What a participant may do; built from the token's video grant (LiveKit defaults)."""

    can_subscribe: bool = True
    can_publish: bool = True
    can_publish_data: bool = True
    #: Empty means every source is allowed.
    can_publish_sources: list[TrackSource] = field(default_factory=list)
    hidden: bool = False
    recorder: bool = False
    can_update_metadata: bool = False
    agent: bool = False
    can_subscribe_metrics: bool = False
    can_manage_agent_session: bool = False

    def allows_source(self, source: TrackSource) -> bool:
        return not self.can_publish_sources or source in self.can_publish_sources


@dataclass(slots=True)
class ParticipantInit:
    """Everything the room needs to admit a participant (from the token and the join request)."""

    identity: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    kind: ParticipantKind = ParticipantKind.STANDARD
    permission: Permission = field(default_factory=Permission)
    auto_subscribe: bool = True
    client_protocol: int = 0
    capabilities: list[int] = field(default_factory=list)


@dataclass(slots=True)
class SubscriptionPermission:
    """A publisher's allow-list (LiveKit ``SubscriptionPermission``).

    ``allowed`` maps a subscriber identity or sid to ``None`` (all tracks) or a set of track sids.
    """

    all_participants: bool = True
    allowed: dict[str, set[str] | None] = field(default_factory=dict)

    def allows(self, subscriber_sid: str, subscriber_identity: str, track_sid: str) -> bool:
        if self.all_participants:
            return True
        for key in (subscriber_sid, subscriber_identity):
            if key in self.allowed:
                tracks = self.allowed[key]
                return tracks is None or track_sid in tracks
        return False


@dataclass(eq=False, slots=True)
class Participant:
    """A participant in a room. Mutated only by :class:`sfu.room.Room`."""

    sid: str
    identity: str
    name: str
    metadata: str
    attributes: dict[str, str]
    kind: ParticipantKind
    permission: Permission
    joined_at: float
    auto_subscribe: bool = True
    client_protocol: int = 0
    capabilities: list[int] = field(default_factory=list)
    state: ParticipantState = ParticipantState.JOINING
    disconnect_reason: DisconnectReason = DisconnectReason.UNKNOWN_REASON
    #: Monotonic; clients drop updates with a lower version than the last one seen.
    version: int = 0
    tracks: dict[str, TrackPublication] = field(default_factory=dict)
    #: Track sids this participant currently receives.
    subscribed: set[str] = field(default_factory=set)
    #: Explicit subscribe (True) / unsubscribe (False) requests; override auto-subscribe.
    subscription_requests: dict[str, bool] = field(default_factory=dict)
    subscription_permission: SubscriptionPermission = field(default_factory=SubscriptionPermission)
    #: Set by the node when the first of its tracks got media (``Node.publisher_listeners``).
    has_published: bool = False

    @property
    def hidden(self) -> bool:
        return self.permission.hidden

    @property
    def is_publisher(self) -> bool:
        return bool(self.tracks)

    @property
    def dependent(self) -> bool:
        """Agents and recorders (LiveKit ``IsDependent``): they take no seat (max_participants),
        do not keep a room open and never trigger agent jobs."""
        return (
            self.kind in (ParticipantKind.AGENT, ParticipantKind.EGRESS)
            or self.permission.agent
            or self.permission.recorder
        )

    def track_by_cid(self, cid: str) -> TrackPublication | None:
        for track in self.tracks.values():
            if track.cid == cid:
                return track
        return None

    def bump(self) -> None:
        self.version += 1

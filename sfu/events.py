"""Events the room model returns: each says exactly which participant must be told what.

The signalling layer only serializes them (``ParticipantUpdated`` becomes a ``ParticipantUpdate``
signal message, ``Disconnect`` a ``leave`` ...); the media plane acts on ``SubscriptionChanged``.
Recipients are participant sids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.participant import DisconnectReason, Participant
    from sfu.roomstate import RoomState
    from sfu.speakers import Speaker


@dataclass(frozen=True, slots=True)
class ParticipantUpdated:
    """Tell ``recipients`` the current state of ``participant`` (joined, changed, left)."""

    room: RoomState
    participant: Participant
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoomUpdated:
    """Tell ``recipients`` the room's new metadata/counters."""

    room: RoomState
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The server ends ``participant``'s session (signal ``leave`` with this reason)."""

    room: RoomState
    participant: Participant
    reason: DisconnectReason


@dataclass(frozen=True, slots=True)
class SubscriptionChanged:
    """Start or stop forwarding ``track_sid`` of ``publisher_sid`` to ``subscriber_sid``."""

    room: RoomState
    subscriber_sid: str
    publisher_sid: str
    track_sid: str
    subscribed: bool


@dataclass(frozen=True, slots=True)
class SubscriptionPermissionUpdate:
    """Tell ``recipient`` whether it may receive ``track_sid`` of ``publisher_sid``."""

    room: RoomState
    recipient: str
    publisher_sid: str
    track_sid: str
    allowed: bool


@dataclass(frozen=True, slots=True)
class MuteRequested:
    """Server-initiated mute: ask the publisher (``recipient``) to (un)mute ``track_sid``."""

    room: RoomState
    recipient: str
    track_sid: str
    muted: bool


@dataclass(frozen=True, slots=True)
class TrackUnpublished:
    """Server-initiated unpublish, told to the publisher (``recipient``)."""

    room: RoomState
    recipient: str
    track_sid: str


@dataclass(frozen=True, slots=True)
class TrackSubscribed:
    """Tell the publisher (``recipient``) that a subscriber now receives ``track_sid``.

    livekit-agents' audio output waits for this (``LocalTrackPublication.wait_for_subscription``)
    before it plays anything, so an ``AgentSession`` stays silent without it.
    """

    room: RoomState
    recipient: str
    track_sid: str


@dataclass(frozen=True, slots=True)
class RoomClosed:
    """The room is gone (deleted, or a timeout passed); everyone in it has had a ``Disconnect``."""

    room: RoomState
    reason: DisconnectReason


@dataclass(frozen=True, slots=True)
class SpeakersChanged:
    """Tell ``recipients`` who started or stopped speaking."""

    room: RoomState
    speakers: tuple[Speaker, ...]
    recipients: tuple[str, ...]


Event = (
    ParticipantUpdated
    | RoomUpdated
    | Disconnect
    | SubscriptionChanged
    | SubscriptionPermissionUpdate
    | MuteRequested
    | TrackUnpublished
    | TrackSubscribed
    | RoomClosed
    | SpeakersChanged
)

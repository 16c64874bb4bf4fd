"""The room: participants, their tracks and who receives what. Sans-I/O.

Every mutating method returns the list of :mod:`sfu.events` it caused. Nothing here does I/O or
reads the clock: callers pass ``now`` (seconds since the epoch) where time matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from roomline import ids
from roomline.errors import (
    InvalidRequest,
    LimitExceeded,
    PermissionDenied,
    RoomFull,
    TrackNotFound,
)
from sfu.events import (
    Disconnect,
    Event,
    MuteRequested,
    ParticipantUpdated,
    RoomUpdated,
    SubscriptionChanged,
    SubscriptionPermissionUpdate,
    TrackSubscribed,
    TrackUnpublished,
)
from sfu.participant import (
    DisconnectReason,
    Participant,
    ParticipantInit,
    ParticipantKind,
    ParticipantState,
    Permission,
    SubscriptionPermission,
)
from sfu.roomstate import Limits, RoomState
from sfu.track import SOURCE_SID_LETTER, TrackPublication, TrackSource, TrackType


def check_metadata(limits: Limits, metadata: str) -> None:
    """Metadata (a participant's, or what an agent dispatch gives its agent) is capped in bytes."""
    if len(metadata.encode()) > limits.max_metadata_size:
        raise LimitExceeded(f"metadata larger than {limits.max_metadata_size} bytes")


def check_attributes(limits: Limits, attributes: Mapping[str, str]) -> None:
    """Attributes are capped by the UTF-8 bytes of all keys and values together."""
    size = sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())
    if size > limits.max_attributes_size:
        raise LimitExceeded(f"attributes larger than {limits.max_attributes_size} bytes")


def _init_dependent(init: ParticipantInit) -> bool:
    """:attr:`Participant.dependent` for a participant not admitted yet."""
    return (
        init.kind in (ParticipantKind.AGENT, ParticipantKind.EGRESS)
        or init.permission.agent
        or init.permission.recorder
    )


@dataclass(slots=True)
class TrackRequest:
    """What a client asks to publish (LiveKit ``AddTrackRequest``, reduced to the model's needs)."""

    cid: str
    type: TrackType
    source: TrackSource = TrackSource.UNKNOWN
    name: str = ""
    muted: bool = False
    width: int = 0
    height: int = 0
    simulcast: bool = False
    mime_type: str = ""
    stream: str = ""
    disable_dtx: bool = False
    stereo: bool = False


@dataclass(eq=False, slots=True)
class Room(RoomState):
    """A room with its rules: every mutation checks the limits and returns the events it caused."""

    @classmethod
    def create(cls, name: str, now: float, limits: Limits | None = None, **options: object) -> Room:
        limits = limits or Limits()
        if not name:
            raise InvalidRequest("room name is required")
        if len(name) > limits.max_room_name_length:
            raise LimitExceeded(f"room name longer than {limits.max_room_name_length} characters")
        room = cls(name=name, sid=ids.new_sid(ids.ROOM_PREFIX), created_at=now, limits=limits)
        for key, value in options.items():
            setattr(room, key, value)
        if len(room.metadata.encode()) > limits.max_metadata_size:
            raise LimitExceeded(f"room metadata larger than {limits.max_metadata_size} bytes")
        return room

    def _others(self, sid: str) -> tuple[str, ...]:
        return tuple(other for other in self.participants if other != sid)

    def _everyone(self) -> tuple[str, ...]:
        return tuple(self.participants)

    def _announce(self, participant: Participant, include_self: bool = False) -> ParticipantUpdated:
        """The update about ``participant``: hidden participants are only told to themselves."""
        if participant.hidden:
            recipients: tuple[str, ...] = (participant.sid,) if include_self else ()
        elif include_self:
            recipients = self._everyone()
        else:
            recipients = self._others(participant.sid)
        return ParticipantUpdated(self, participant, recipients)

    def find_track(self, track_sid: str) -> tuple[Participant, TrackPublication]:
        for participant in self.participants.values():
            track = participant.tracks.get(track_sid)
            if track is not None:
                return participant, track
        raise TrackNotFound(track_sid)

    # ------------------------------------------------------------------ membership

    def check_init(self, init: ParticipantInit) -> None:
        """Validate identity, name, metadata and attributes against the limits."""
        if not init.identity:
            raise InvalidRequest("participant identity is required")
        if len(init.identity) > self.limits.max_identity_length:
            raise LimitExceeded(
                f"identity longer than {self.limits.max_identity_length} characters"
            )
        if len(init.name) > self.limits.max_name_length:
            raise LimitExceeded(f"name longer than {self.limits.max_name_length} characters")
        self._check_metadata(init.metadata)
        self._check_attributes(init.attributes)

    def check_join(self, init: ParticipantInit) -> None:
        """Everything :meth:`join` checks, without joining (``/rtc/validate``, pre-upgrade)."""
        if self.closed:
            raise InvalidRequest("room is closed")
        self.check_init(init)
        if init.permission.hidden or _init_dependent(init):
            return  # agents, recorders and hidden participants do not take a seat
        previous = self.by_identity.get(init.identity)
        count = sum(1 for p in self.participants.values() if not p.hidden and not p.dependent)
        if previous is not None and not previous.hidden and not previous.dependent:
            count -= 1
        cap = self.limits.max_participants_per_room
        if self.max_participants:
            cap = min(cap, self.max_participants)
        if cap and count >= cap:
            raise RoomFull(f"room {self.name} is full ({cap} participants)")

    def join(self, init: ParticipantInit, now: float) -> tuple[Participant, list[Event]]:
        """Admit a participant. A second join with the same identity replaces the first."""
        self.check_join(init)
        events: list[Event] = []
        previous = self.by_identity.get(init.identity)
        if previous is not None:
            events += self._remove(previous, DisconnectReason.DUPLICATE_IDENTITY, tell_self=True)
        participant = Participant(
            sid=ids.new_sid(ids.PARTICIPANT_PREFIX),
            identity=init.identity,
            name=init.name,
            metadata=init.metadata,
            attributes={k: v for k, v in init.attributes.items() if v != ""},
            kind=init.kind,
            permission=init.permission,
            joined_at=now,
            auto_subscribe=init.auto_subscribe,
            client_protocol=init.client_protocol,
            capabilities=list(init.capabilities),
        )
        self.participants[participant.sid] = participant
        self.by_identity[participant.identity] = participant
        if not participant.dependent:
            self.ever_joined = True
            self.last_left_at = None
        elif not self.has_independent and self.ever_joined and self.last_left_at is None:
            self.last_left_at = now  # an agent replaced the last human (duplicate identity)
        events.append(self._announce(participant))
        events += self._reconcile_subscriber(participant)
        events.append(RoomUpdated(self, self._others(participant.sid)))
        return participant, events

    def leave(
        self, sid: str, reason: DisconnectReason, now: float, tell_self: bool = False
    ) -> list[Event]:
        """Remove a participant; ``tell_self`` sends it a ``leave`` (server-initiated)."""
        participant = self.participants.get(sid)
        if participant is None:
            return []
        events = self._remove(participant, reason, tell_self)
        if not self.has_independent and self.last_left_at is None:
            self.last_left_at = now
        return events

    def remove_by_identity(self, identity: str, now: float) -> list[Event]:
        """RoomService.RemoveParticipant."""
        participant = self.get_by_identity(identity)
        return self.leave(
            participant.sid, DisconnectReason.PARTICIPANT_REMOVED, now, tell_self=True
        )

    def _remove(
        self, participant: Participant, reason: DisconnectReason, tell_self: bool
    ) -> list[Event]:
        events: list[Event] = []
        if tell_self:
            events.append(Disconnect(self, participant, reason))
        # Stop everything it received and everything others received from it.
        for track_sid in sorted(participant.subscribed):
            publisher, _ = self.find_track(track_sid)
            events.append(
                SubscriptionChanged(self, participant.sid, publisher.sid, track_sid, False)
            )
        participant.subscribed.clear()
        for track_sid in participant.tracks:
            events += self._drop_track_subscribers(participant, track_sid)
        del self.participants[participant.sid]
        if self.by_identity.get(participant.identity) is participant:
            del self.by_identity[participant.identity]
        participant.state = ParticipantState.DISCONNECTED
        participant.disconnect_reason = reason
        participant.bump()
        # Its attributes go with it (seed): the DISCONNECTED update is the last word on them.
        events.append(self._announce(participant))
        events.append(RoomUpdated(self, self._everyone()))
        return events

    def set_state(self, sid: str, state: ParticipantState) -> list[Event]:
        """JOINED after the first negotiation, ACTIVE once media connectivity is up."""
        participant = self.get(sid)
        if state <= participant.state or state == ParticipantState.DISCONNECTED:
            return []
        participant.state = state
        participant.bump()
        return [self._announce(participant, include_self=True)]

    # ------------------------------------------------------------------ metadata & attributes

    def _check_metadata(self, metadata: str) -> None:
        check_metadata(self.limits, metadata)

    def _check_attributes(self, attributes: Mapping[str, str]) -> None:
        check_attributes(self.limits, attributes)

    def set_metadata(self, metadata: str) -> list[Event]:
        """Room metadata: every participant is told."""
        self._check_metadata(metadata)
        self.metadata = metadata
        return [RoomUpdated(self, self._everyone())]

    def update_participant(
        self,
        sid: str,
        *,
        name: str | None = None,
        metadata: str | None = None,
        attributes: dict[str, str] | None = None,
        permission: Permission | None = None,
    ) -> list[Event]:
        """Change name/metadata, merge attributes (empty value deletes a key), set permissions."""
        participant = self.get(sid)
        if name is not None and len(name) > self.limits.max_name_length:
            raise LimitExceeded(f"name longer than {self.limits.max_name_length} characters")
        if metadata is not None:
            self._check_metadata(metadata)
        merged = dict(participant.attributes)
        if attributes:
            for key, value in attributes.items():
                if value == "":
                    merged.pop(key, None)
                else:
                    merged[key] = value
            self._check_attributes(merged)
        changed = False
        if name is not None and name != participant.name:
            participant.name, changed = name, True
        if metadata is not None and metadata != participant.metadata:
            participant.metadata, changed = metadata, True
        if merged != participant.attributes:
            participant.attributes, changed = merged, True
        events: list[Event] = []
        if permission is not None and permission != participant.permission:
            was_hidden = participant.hidden
            participant.permission, changed = permission, True
            events += self._apply_permission_change(participant, was_hidden)
        if not changed:
            # Still answer the requester so client promises (setMetadata ...) resolve.
            return [ParticipantUpdated(self, participant, (participant.sid,))]
        participant.bump()
        events.insert(0, self._announce(participant, include_self=True))
        return events

    def _apply_permission_change(self, participant: Participant, was_hidden: bool) -> list[Event]:
        events: list[Event] = []
        if not participant.permission.can_publish:
            for track_sid in list(participant.tracks):
                events.append(TrackUnpublished(self, participant.sid, track_sid))
                events += self._drop_track_subscribers(participant, track_sid)
                del participant.tracks[track_sid]
        if was_hidden and not participant.hidden:
            for other in self.participants.values():
                if other is not participant:
                    events += self._reconcile_subscriber(other)
        events += self._reconcile_subscriber(participant)
        return events

    # ------------------------------------------------------------------ tracks

    def publish_track(
        self, sid: str, request: TrackRequest
    ) -> tuple[TrackPublication, list[Event]]:
        """Register a track (AddTrack). Media binds later; subscribers are added when it does."""
        participant = self.get(sid)
        if not participant.permission.can_publish:
            raise PermissionDenied("participant is not allowed to publish")
        if request.type not in (TrackType.AUDIO, TrackType.VIDEO):
            raise InvalidRequest("only audio and video tracks can be published")
        if not participant.permission.allows_source(request.source):
            raise PermissionDenied(f"not allowed to publish source {request.source.name}")
        if not request.cid:
            raise InvalidRequest("track cid is required")
        if participant.track_by_cid(request.cid) is not None:
            raise InvalidRequest(f"track {request.cid} is already published")
        if len(participant.tracks) >= self.limits.max_tracks_per_participant:
            raise LimitExceeded(
                f"a participant may publish at most {self.limits.max_tracks_per_participant} tracks"
            )
        is_video = request.type == TrackType.VIDEO
        track = TrackPublication(
            sid=ids.new_track_sid(is_video, SOURCE_SID_LETTER[request.source]),
            cid=request.cid,
            type=request.type,
            source=request.source,
            name=request.name,
            muted=request.muted,
            mime_type=request.mime_type,
            width=request.width,
            height=request.height,
            simulcast=request.simulcast,
            stream=request.stream or ("screen" if "SCREEN" in request.source.name else "camera"),
            disable_dtx=request.disable_dtx,
            stereo=request.stereo,
        )
        participant.tracks[track.sid] = track
        return track, []

    def bind_track(
        self, sid: str, track_sid: str, mime_type: str = "", mid: str = ""
    ) -> list[Event]:
        """Media for the track arrived: announce it to others, then subscribe them.

        The update naming the track goes out before any subscription so that clients know the track
        before the subscriber offer carrying it (LiveKit client requirement).
        """
        participant = self.get(sid)
        track = participant.tracks.get(track_sid)
        if track is None:
            raise TrackNotFound(track_sid)
        if mime_type:
            track.mime_type = mime_type
        if mid:
            track.mid = mid
        if track.bound:
            return []
        track.bound = True
        participant.bump()
        events: list[Event] = [self._announce(participant, include_self=True)]
        if not participant.hidden:
            for other in self.participants.values():
                if other is not participant:
                    events += self._reconcile_subscriber(other)
        return events

    def unpublish_track(
        self, sid: str, track_sid: str, server_initiated: bool = False
    ) -> list[Event]:
        participant = self.get(sid)
        if track_sid not in participant.tracks:
            raise TrackNotFound(track_sid)
        events: list[Event] = []
        if server_initiated:
            events.append(TrackUnpublished(self, sid, track_sid))
        events += self._drop_track_subscribers(participant, track_sid)
        del participant.tracks[track_sid]
        participant.bump()
        events.append(self._announce(participant, include_self=True))
        return events

    def set_track_muted(
        self, sid: str, track_sid: str, muted: bool, server_initiated: bool = False
    ) -> list[Event]:
        """Mute from the publisher, or (``server_initiated``) from MutePublishedTrack."""
        participant = self.get(sid)
        track = participant.tracks.get(track_sid)
        if track is None:
            raise TrackNotFound(track_sid)
        events: list[Event] = []
        if server_initiated:
            events.append(MuteRequested(self, sid, track_sid, muted))
        if track.muted != muted:
            track.muted = muted
            participant.bump()
            events.append(self._announce(participant, include_self=True))
        return events

    def _drop_track_subscribers(self, publisher: Participant, track_sid: str) -> list[Event]:
        events: list[Event] = []
        for other in self.participants.values():
            if track_sid in other.subscribed:
                other.subscribed.discard(track_sid)
                events.append(SubscriptionChanged(self, other.sid, publisher.sid, track_sid, False))
            other.subscription_requests.pop(track_sid, None)
        return events

    # ------------------------------------------------------------------ subscriptions

    def may_subscribe(
        self, subscriber: Participant, publisher: Participant, track_sid: str
    ) -> bool:
        return (
            subscriber is not publisher
            and subscriber.permission.can_subscribe
            and not publisher.hidden
            and publisher.subscription_permission.allows(
                subscriber.sid, subscriber.identity, track_sid
            )
        )

    def _wants(self, subscriber: Participant, track_sid: str) -> bool:
        explicit = subscriber.subscription_requests.get(track_sid)
        return subscriber.auto_subscribe if explicit is None else explicit

    def _reconcile_subscriber(self, subscriber: Participant) -> list[Event]:
        """Bring ``subscriber.subscribed`` in line with wishes and permissions."""
        events: list[Event] = []
        for publisher in self.participants.values():
            if publisher is subscriber:
                continue
            for track in publisher.tracks.values():
                if not track.bound:
                    continue
                should = self._wants(subscriber, track.sid) and self.may_subscribe(
                    subscriber, publisher, track.sid
                )
                has = track.sid in subscriber.subscribed
                if should and not has:
                    subscriber.subscribed.add(track.sid)
                    events.append(
                        SubscriptionChanged(self, subscriber.sid, publisher.sid, track.sid, True)
                    )
                    events.append(TrackSubscribed(self, publisher.sid, track.sid))
                elif has and not should:
                    subscriber.subscribed.discard(track.sid)
                    events.append(
                        SubscriptionChanged(self, subscriber.sid, publisher.sid, track.sid, False)
                    )
        return events

    def update_subscriptions(self, sid: str, track_sids: list[str], subscribe: bool) -> list[Event]:
        """UpdateSubscription (manual mode or explicit opt-out in auto mode)."""
        subscriber = self.get(sid)
        events: list[Event] = []
        for track_sid in track_sids:
            publisher, _ = self.find_track(track_sid)
            if publisher is subscriber:
                continue  # a participant never receives its own tracks
            subscriber.subscription_requests[track_sid] = subscribe
            if subscribe and not self.may_subscribe(subscriber, publisher, track_sid):
                events.append(
                    SubscriptionPermissionUpdate(self, sid, publisher.sid, track_sid, False)
                )
        events += self._reconcile_subscriber(subscriber)
        return events

    def set_subscription_permission(
        self, sid: str, all_participants: bool, allowed: dict[str, set[str] | None]
    ) -> list[Event]:
        """A publisher's allow-list; subscribers who lose or gain access are told."""
        publisher = self.get(sid)
        before = {
            (other.sid, track_sid): self.may_subscribe(other, publisher, track_sid)
            for other in self.participants.values()
            for track_sid in publisher.tracks
        }
        publisher.subscription_permission = SubscriptionPermission(all_participants, allowed)
        events: list[Event] = []
        for (other_sid, track_sid), was_allowed in before.items():
            other = self.participants[other_sid]
            now_allowed = self.may_subscribe(other, publisher, track_sid)
            if now_allowed != was_allowed and other is not publisher:
                events.append(
                    SubscriptionPermissionUpdate(self, other_sid, sid, track_sid, now_allowed)
                )
        for other in self.participants.values():
            if other is not publisher:
                events += self._reconcile_subscriber(other)
        return events

    # ------------------------------------------------------------------ data

    def data_recipients(
        self, sender_sid: str | None, destination_identities: list[str]
    ) -> list[str]:
        """Sids a data packet goes to: the named identities, or everyone but the sender."""
        if destination_identities:
            wanted = set(destination_identities)
            return [
                p.sid
                for p in self.participants.values()
                if p.identity in wanted and p.sid != sender_sid
            ]
        return [sid for sid in self.participants if sid != sender_sid]

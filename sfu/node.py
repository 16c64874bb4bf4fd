"""The node: the rooms of this appliance plus the live sessions attached to their participants.

The room model (sans-I/O) returns events; the node delivers each to the session of every recipient.
A session is anything that implements :class:`Session` — a WebSocket/WebRTC client (``sfu.rtc``) or a
local participant (``sfu.local``: SIP callers and in-appliance agents). The node is the only place that
applies model events to the outside world, so RoomService calls and signalling share one path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog

from roomline.errors import InvalidRequest, Unimplemented
from sfu.events import (
    Event,
    ParticipantUpdated,
    RoomClosed,
    SpeakersChanged,
    SubscriptionChanged,
)
from sfu.participant import DisconnectReason, Participant, ParticipantInit, ParticipantState
from sfu.relay import TrackRelay
from sfu.room import Room
from sfu.roommanager import RoomManager
from sfu.roomstate import RoomState
from sfu.speakers import SpeakerDetector

log = structlog.get_logger(__name__)

#: How often room timeouts are checked. Timeouts are whole seconds, so 1 s resolution is enough.
TICK_INTERVAL = 1.0
#: How often speaking state is sampled: fast enough for a UI indicator, cheap (O(tracks)).
SPEAKER_INTERVAL = 0.3


class Session(Protocol):
    """A connected participant, as the node sees it."""

    participant: Participant

    def on_event(self, event: Event, wire: bytes | None = None) -> None:
        """Deliver one model event addressed to this participant (never blocks).

        ``wire`` is the event already serialized as a ``SignalResponse`` when it is the same for
        every recipient (participant/room updates, speakers), so a 1,000-participant room
        serializes an update once, not 1,000 times.
        """

    def send_data(self, packet: bytes, reliable: bool) -> None:
        """Deliver a serialized ``DataPacket`` (never blocks)."""

    def close(self, reason: DisconnectReason) -> None:
        """Tear the session down (after a ``Disconnect`` event, or at shutdown)."""


RoomListener = Callable[[RoomState, bool], None]
ParticipantListener = Callable[[RoomState, Participant, bool], None]
PublisherListener = Callable[[RoomState, Participant], None]


class Node:
    """Rooms + sessions + event delivery."""

    def __init__(
        self,
        rooms: RoomManager,
        clock: Callable[[], float] = time.time,
        encode_broadcast: Callable[[Event], bytes | None] | None = None,
    ) -> None:
        self.rooms = rooms
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        #: Published tracks with media, by track sid (see :mod:`sfu.relay`).
        self.relays: dict[str, TrackRelay] = {}
        #: Called with (room, created) whenever a room is created (True) or closed (False).
        self.room_listeners: list[RoomListener] = []
        #: Called with (room, participant, joined) when a participant joins (True) or leaves
        #: (False; not for the participants of a room that closes: see ``room_listeners``).
        self.participant_listeners: list[ParticipantListener] = []
        #: Called with (room, participant) once per participant, when the first of its tracks is
        #: published (bound: media arrived, or a local channel track announced), as LiveKit
        #: starts JT_PUBLISHER agent jobs.
        self.publisher_listeners: list[PublisherListener] = []
        #: Serializes recipient-independent events once (set by the signalling layer).
        #: Serializes an event once for many recipients (``sfu.signal.encode_broadcast``); passed in
        #: because ``signal`` imports this module.
        self.encode_broadcast: Callable[[Event], bytes | None] = encode_broadcast or (
            lambda e: None
        )
        self._tick_task: asyncio.Task[None] | None = None
        self._speaker_task: asyncio.Task[None] | None = None
        self._speakers: dict[str, SpeakerDetector] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tick_task = loop.create_task(self._tick_loop())
        self._speaker_task = loop.create_task(self._speaker_loop())

    async def stop(self) -> None:
        for task in (self._tick_task, self._speaker_task):
            if task:
                task.cancel()
        for session in list(self.sessions.values()):
            session.close(DisconnectReason.SERVER_SHUTDOWN)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            try:
                self.dispatch(self.rooms.tick(self.clock()))
            except Exception:  # a bug here must not stop room expiry for good
                log.exception("room tick failed")

    async def _speaker_loop(self) -> None:
        while True:
            await asyncio.sleep(SPEAKER_INTERVAL)
            try:
                self.dispatch(self.sample_speakers(time.monotonic()))
            except Exception:
                log.exception("speaker detection failed")

    def sample_speakers(self, now: float) -> list[Event]:
        """Compare the publishers' latest audio levels with the last sample, per room."""
        levels: dict[str, tuple[int, float]] = {}
        for relay in self.relays.values():
            if relay.source.kind != "audio" or not relay.audio_level_at:
                continue
            best = levels.get(relay.publisher_sid)
            if best is None or relay.audio_level < best[0]:
                levels[relay.publisher_sid] = (relay.audio_level, relay.audio_level_at)
        events: list[Event] = []
        for name, room in self.rooms.rooms.items():
            detector = self._speakers.setdefault(name, SpeakerDetector())
            in_room = {sid: v for sid, v in levels.items() if sid in room.participants}
            changes = detector.update(in_room, now)
            if changes:
                events.append(SpeakersChanged(room, tuple(changes), tuple(room.participants)))
        for name in list(self._speakers):
            if name not in self.rooms.rooms:
                del self._speakers[name]
        return events

    # ------------------------------------------------------------------ rooms

    def create_room(self, name: str, **options: object) -> Room:
        room, created = self.rooms.create_room(name, self.clock(), **options)  # type: ignore[arg-type]
        if created:
            self._room_changed(room, True)
        return room

    def delete_room(self, name: str) -> None:
        self.dispatch(self.rooms.delete_room(name, self.clock()))

    def _room_changed(self, room: RoomState, created: bool) -> None:
        log.info("room created" if created else "room closed", room=room.name, room_sid=room.sid)
        for listener in list(self.room_listeners):
            try:
                listener(room, created)
            except Exception:
                log.exception("room listener failed", room=room.name)

    # ------------------------------------------------------------------ participants

    def join(
        self,
        room_name: str,
        init: ParticipantInit,
        room_options: Mapping[str, Any] | None = None,
    ) -> tuple[Room, Participant, list[Event]]:
        """Admit a participant; the caller attaches its session, then calls :meth:`dispatch`.

        ``room_options`` are used if the join creates the room (a token's ``roomConfig``)."""
        room, participant, events, created = self.rooms.join(
            room_name, init, self.clock(), room_options
        )
        if created:
            self._room_changed(room, True)
        self._participant_changed(room, participant, True)
        return room, participant, events

    def _participant_changed(self, room: RoomState, participant: Participant, joined: bool) -> None:
        for listener in list(self.participant_listeners):
            try:
                listener(room, participant, joined)
            except Exception:
                log.exception("participant listener failed", room=room.name)

    def _check_first_track(self, room: RoomState, participant: Participant) -> None:
        """A track getting media is announced with a ParticipantUpdated (``Room.bind_track``)."""
        if participant.state == ParticipantState.DISCONNECTED or not any(
            t.bound for t in participant.tracks.values()
        ):
            return
        participant.has_published = True
        for listener in list(self.publisher_listeners):
            try:
                listener(room, participant)
            except Exception:
                log.exception("publisher listener failed", room=room.name)

    def attach(self, session: Session) -> None:
        self.sessions[session.participant.sid] = session

    def detach(self, session: Session, reason: DisconnectReason) -> None:
        """The session ended on its own (client left, socket closed): remove the participant."""
        sid = session.participant.sid
        if self.sessions.get(sid) is session:
            del self.sessions[sid]
        room = self.room_of(session.participant)
        if room is not None and sid in room.participants:
            self.dispatch(room.leave(sid, reason, self.clock()))

    def move_participant(self, room: Room, identity: str, destination: str) -> None:
        """RoomService.MoveParticipant. Only sessions that can re-join in place support it."""
        participant = room.get_by_identity(identity)
        if destination == room.name:
            raise InvalidRequest("destination_room is the participant's current room")
        session = self.sessions.get(participant.sid)
        move_to = getattr(session, "move_to", None)
        if move_to is None:
            # A WebRTC client would have to renegotiate both PeerConnections with a new identity
            # sid; LiveKit clients do that only against LiveKit Cloud's migration path.
            raise Unimplemented(
                "MoveParticipant is supported for SIP and agent participants (local channel) only"
            )
        move_to(destination)

    def room_of(self, participant: Participant) -> Room | None:
        for room in self.rooms.rooms.values():
            if room.participants.get(participant.sid) is participant:
                return room
        return None

    # ------------------------------------------------------------------ delivery

    def dispatch(self, events: Iterable[Event]) -> None:
        """Deliver model events to the sessions they name."""
        for event in events:
            if isinstance(event, RoomClosed):
                self._room_changed(event.room, False)
                continue
            if (
                isinstance(event, ParticipantUpdated)
                and event.participant.state == ParticipantState.DISCONNECTED
                and self.participant_listeners
            ):
                # The room model announces a departure exactly once (``Room._remove``).
                self._participant_changed(event.room, event.participant, False)
            elif isinstance(event, ParticipantUpdated) and not event.participant.has_published:
                self._check_first_track(event.room, event.participant)
            targets = recipients(event)
            wire = self.encode_broadcast(event) if len(targets) > 1 else None
            for sid in targets:
                session = self.sessions.get(sid)
                if session is None:
                    continue
                try:
                    session.on_event(event, wire)
                except Exception:  # one broken session must not stop delivery to the others
                    log.exception("session failed to handle event", participant=sid)

    def send_data(
        self,
        room: Room,
        sender_sid: str | None,
        packet: bytes,
        reliable: bool,
        destination_identities: list[str],
    ) -> int:
        """Relay a serialized DataPacket; returns the number of recipients."""
        count = 0
        for sid in room.data_recipients(sender_sid, destination_identities):
            session = self.sessions.get(sid)
            if session is not None:
                session.send_data(packet, reliable)
                count += 1
        return count


def recipients(event: Event) -> tuple[str, ...]:
    """The participant sids an event must reach."""
    if isinstance(event, SubscriptionChanged):
        # The subscriber's session adds/removes the downtrack; the publisher's learns nothing.
        return (event.subscriber_sid,)
    found = getattr(event, "recipients", None)
    if found is not None:
        return tuple(found)
    recipient = getattr(event, "recipient", None)
    if recipient is not None:
        return (recipient,)
    participant = getattr(event, "participant", None)
    if participant is not None:
        return (participant.sid,)
    return ()

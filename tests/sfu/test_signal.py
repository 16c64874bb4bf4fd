"""SignalSession in-process (no sockets): one builder turns model events into SignalResponses."""

from __future__ import annotations

from livekit.protocol import models, rtc

from roomline.config import Config
from sfu.events import (
    Disconnect,
    Event,
    MuteRequested,
    ParticipantUpdated,
    RoomUpdated,
    SpeakersChanged,
    SubscriptionChanged,
    SubscriptionPermissionUpdate,
    TrackSubscribed,
    TrackUnpublished,
)
from sfu.node import Node
from sfu.participant import DisconnectReason, Participant, ParticipantInit, Permission
from sfu.room import Room
from sfu.roommanager import RoomManager
from sfu.signal import SignalSession, encode_broadcast, event_response
from sfu.speakers import Speaker


class FakeSession(SignalSession):
    """Records what a transport would write."""

    def __init__(self, node: Node, room: Room, participant: Participant) -> None:
        super().__init__(node, Config(), room, participant)
        self.wires: list[bytes] = []
        self.subscriptions: list[SubscriptionChanged] = []
        self.closed_with: DisconnectReason | None = None

    def send_wire(self, wire: bytes) -> None:
        self.wires.append(wire)

    def subscribe(self, event: SubscriptionChanged) -> None:
        self.subscriptions.append(event)

    def unsubscribe(self, event: SubscriptionChanged) -> None:
        self.subscriptions.append(event)

    def send_data(self, packet: bytes, reliable: bool) -> None:
        raise AssertionError("no data expected")

    def close(self, reason: DisconnectReason) -> None:
        self.closed = True
        self.closed_with = reason

    def responses(self) -> list[rtc.SignalResponse]:
        out = []
        for wire in self.wires:
            response = rtc.SignalResponse()
            response.ParseFromString(wire)
            out.append(response)
        return out


def joined(*permission: Permission) -> tuple[Node, Room, list[FakeSession]]:
    node = Node(RoomManager())
    sessions = []
    for i, perm in enumerate(permission):
        room, participant, events = node.join(
            "r", ParticipantInit(identity=f"p{i}", name=f"P{i}", permission=perm)
        )
        session = FakeSession(node, room, participant)
        node.attach(session)
        node.dispatch(events)
        sessions.append(session)
    for session in sessions:
        session.wires.clear()  # the join announcements
    return node, room, sessions


def relayed_events(room: Room, a: Participant, b: Participant) -> list[Event]:
    return [
        ParticipantUpdated(room, b, (a.sid,)),
        RoomUpdated(room, (a.sid,)),
        SpeakersChanged(room, (Speaker(b.sid, 0.5, True),), (a.sid,)),
        MuteRequested(room, a.sid, "TR_x", True),
        TrackUnpublished(room, a.sid, "TR_x"),
        SubscriptionPermissionUpdate(room, a.sid, b.sid, "TR_y", False),
        Disconnect(room, a, DisconnectReason.PARTICIPANT_REMOVED),
    ]


def test_session_and_broadcast_send_the_same_bytes_for_every_relayed_event() -> None:
    _, room, (sa, sb) = joined(Permission(), Permission())
    for event in relayed_events(room, sa.participant, sb.participant):
        sa.wires.clear()
        sa.closed = False
        sa.on_event(event)
        assert sa.wires == [encode_broadcast(event)], type(event).__name__


def test_prebuilt_wire_is_sent_as_is_and_disconnect_closes() -> None:
    _, room, (sa, sb) = joined(Permission(), Permission())
    event = Disconnect(room, sa.participant, DisconnectReason.PARTICIPANT_REMOVED)
    sa.on_event(event, wire=b"prebuilt")
    assert sa.wires == [b"prebuilt"]
    assert sa.closed_with is DisconnectReason.PARTICIPANT_REMOVED
    sa.on_event(RoomUpdated(room, (sa.participant.sid,)))
    assert sa.wires == [b"prebuilt"]  # nothing after close


def test_room_update_describes_the_event_room() -> None:
    _, room, (sa,) = joined(Permission())
    sa.on_event(RoomUpdated(room, (sa.participant.sid,)))
    (response,) = sa.responses()
    assert response.room_update.room.name == "r"


def test_subscription_changes_reach_the_transport_not_the_client() -> None:
    _, room, (sa, sb) = joined(Permission(), Permission())
    event = SubscriptionChanged(room, sa.participant.sid, sb.participant.sid, "TR_z", True)
    assert event_response(event) is None and encode_broadcast(event) is None
    sa.on_event(event)
    assert sa.subscriptions == [event] and sa.wires == []


def test_track_subscribed_reaches_the_publisher() -> None:
    _, room, (sa,) = joined(Permission())
    sa.on_event(TrackSubscribed(room, sa.participant.sid, "TR_x"))
    (response,) = sa.responses()
    assert response.track_subscribed.track_sid == "TR_x"


def test_refused_add_track_answers_with_request_response() -> None:
    _, _, (sa,) = joined(Permission(can_publish=False))
    req = rtc.AddTrackRequest(cid="mic", name="mic", type=models.TrackType.AUDIO)
    sa.on_add_track(req)
    (response,) = sa.responses()
    rr = response.request_response
    assert rr.reason == rtc.RequestResponse.Reason.NOT_ALLOWED
    assert rr.add_track.cid == "mic" and "not allowed to publish" in rr.message

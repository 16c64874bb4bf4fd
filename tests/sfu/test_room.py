"""Unit tests of the sans-I/O room model (no sockets)."""

from __future__ import annotations

import pytest

from roomline.config import RoomDefaults
from roomline.errors import (
    InvalidRequest,
    LimitExceeded,
    ParticipantNotFound,
    PermissionDenied,
    RoomFull,
    RoomNotFound,
)
from sfu.events import (
    Disconnect,
    MuteRequested,
    ParticipantUpdated,
    RoomClosed,
    RoomUpdated,
    SubscriptionChanged,
    SubscriptionPermissionUpdate,
    TrackSubscribed,
    TrackUnpublished,
)
from sfu.participant import (
    DisconnectReason,
    ParticipantInit,
    ParticipantKind,
    ParticipantState,
    Permission,
)
from sfu.room import Limits, TrackRequest
from sfu.roommanager import RoomManager
from sfu.track import TrackSource, TrackType

T0 = 1_700_000_000.0


def init(identity: str, **kw: object) -> ParticipantInit:
    return ParticipantInit(identity=identity, name=identity.title(), **kw)  # type: ignore[arg-type]


def mic(cid: str = "mic") -> TrackRequest:
    return TrackRequest(cid=cid, type=TrackType.AUDIO, source=TrackSource.MICROPHONE, name="mic")


def subs(events: list, subscribed: bool = True) -> set[tuple[str, str]]:
    return {
        (e.subscriber_sid, e.track_sid)
        for e in events
        if isinstance(e, SubscriptionChanged) and e.subscribed is subscribed
    }


def publish(room, sid: str, cid: str = "mic"):
    track, events = room.publish_track(sid, mic(cid))
    assert events == []  # nothing is announced before media binds
    return track, room.bind_track(sid, track.sid, mime_type="audio/opus")


@pytest.fixture
def manager() -> RoomManager:
    return RoomManager()


def test_room_created_on_first_join_with_sids(manager: RoomManager) -> None:
    room, alice, events, created = manager.join("r1", init("alice"), T0)
    assert created and room.sid.startswith("RM_") and alice.sid.startswith("PA_")
    assert room.created_at == T0 and alice.joined_at == T0
    assert alice.state == ParticipantState.JOINING
    assert manager.get("r1") is room
    _, bob, events, created = manager.join("r1", init("bob"), T0 + 1)
    assert not created
    update = next(e for e in events if isinstance(e, ParticipantUpdated))
    assert update.participant is bob and update.recipients == (alice.sid,)
    assert [p.identity for p in room.visible_to(bob.sid)] == ["alice"]


def test_auto_create_disabled_gives_not_found() -> None:
    manager = RoomManager(defaults=RoomDefaults(auto_create=False))
    with pytest.raises(RoomNotFound):
        manager.join("nope", init("a"), T0)
    manager.create_room("yes", T0)
    manager.join("yes", init("a"), T0)


def test_create_room_returns_existing(manager: RoomManager) -> None:
    room, created = manager.create_room("r", T0, metadata="m", max_participants=3)
    again, created_again = manager.create_room("r", T0 + 5, metadata="other")
    assert created and not created_again and again is room and room.metadata == "m"
    with pytest.raises(InvalidRequest):
        manager.create_room("bad", T0, empty_timeout=-1)


def test_empty_timeout_closes_room_nobody_joined(manager: RoomManager) -> None:
    room, _ = manager.create_room("r", T0, empty_timeout=10)
    assert manager.tick(T0 + 9) == []
    events = manager.tick(T0 + 10)
    assert [type(e) for e in events] == [RoomClosed]
    assert room.closed and "r" not in manager.rooms


def test_departure_timeout_after_last_leaves(manager: RoomManager) -> None:
    room, _ = manager.create_room("r", T0, empty_timeout=5, departure_timeout=20)
    _, alice, _, _ = manager.join("r", init("alice"), T0 + 1)
    assert manager.tick(T0 + 100) == []  # someone is in it
    room.leave(alice.sid, DisconnectReason.CLIENT_INITIATED, T0 + 100)
    assert manager.tick(T0 + 119) == []
    assert isinstance(manager.tick(T0 + 120)[0], RoomClosed)


def test_rejoin_before_departure_timeout_keeps_room(manager: RoomManager) -> None:
    room, alice, _, _ = manager.join("r", init("alice"), T0)
    room.leave(alice.sid, DisconnectReason.CLIENT_INITIATED, T0 + 1)
    manager.join("r", init("alice"), T0 + 5)
    assert manager.tick(T0 + 1000) == [] and manager.get("r") is room


def test_room_metadata_broadcast_to_everyone(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    (event,) = room.set_metadata('{"topic":"x"}')
    assert isinstance(event, RoomUpdated) and set(event.recipients) == {a.sid, b.sid}
    room.leave(a.sid, DisconnectReason.CLIENT_INITIATED, T0)
    assert room.metadata == '{"topic":"x"}'  # room metadata stays when participants leave


def test_max_participants(manager: RoomManager) -> None:
    manager.create_room("r", T0, max_participants=2)
    manager.join("r", init("a"), T0)
    manager.join("r", init("b"), T0)
    with pytest.raises(RoomFull):
        manager.join("r", init("c"), T0)
    # A duplicate identity replaces, it does not count twice.
    manager.join("r", init("b"), T0)
    # Hidden participants (recorders) do not count.
    manager.join("r", init("rec", permission=Permission(hidden=True)), T0)


def test_global_participant_limit() -> None:
    manager = RoomManager(limits=Limits(max_participants_per_room=1))
    manager.join("r", init("a"), T0)
    with pytest.raises(RoomFull):
        manager.join("r", init("b"), T0)


def test_duplicate_identity_replaces_first(manager: RoomManager) -> None:
    room, first, _, _ = manager.join("r", init("alice"), T0)
    _, watcher, _, _ = manager.join("r", init("w"), T0)
    _, second, events, _ = manager.join("r", init("alice"), T0 + 1)
    assert second.sid != first.sid
    disconnect = next(e for e in events if isinstance(e, Disconnect))
    assert disconnect.participant is first
    assert disconnect.reason == DisconnectReason.DUPLICATE_IDENTITY
    assert first.state == ParticipantState.DISCONNECTED
    assert room.get_by_identity("alice") is second
    told = [e for e in events if isinstance(e, ParticipantUpdated) and e.participant is first]
    assert told and watcher.sid in told[0].recipients


def test_attributes_merge_delete_and_broadcast(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a", attributes={"x": "1", "y": "2"}), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    v0 = a.version
    events = room.update_participant(a.sid, attributes={"y": "", "z": "3"})
    assert a.attributes == {"x": "1", "z": "3"}
    (update,) = events
    assert isinstance(update, ParticipantUpdated)
    assert set(update.recipients) == {a.sid, b.sid}  # the sender is told too
    assert a.version > v0
    room.update_participant(a.sid, name="Alice A", metadata="meta")
    assert (a.name, a.metadata) == ("Alice A", "meta")


def test_unchanged_update_answers_only_the_requester(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a", attributes={"x": "1"}), T0)
    manager.join("r", init("b"), T0)
    (update,) = room.update_participant(a.sid, attributes={"x": "1"})
    assert isinstance(update, ParticipantUpdated)
    assert update.recipients == (a.sid,)


def test_leaving_participant_attributes_go_with_it(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a", attributes={"k": "v"}), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    events = room.leave(a.sid, DisconnectReason.CLIENT_INITIATED, T0)
    update = next(e for e in events if isinstance(e, ParticipantUpdated))
    assert update.participant.state == ParticipantState.DISCONNECTED
    assert update.recipients == (b.sid,)
    with pytest.raises(ParticipantNotFound):
        room.get_by_identity("a")
    assert [p.identity for p in room.visible_to(b.sid)] == []


def test_limits_on_identity_name_metadata_attributes() -> None:
    manager = RoomManager(
        limits=Limits(
            max_identity_length=5, max_name_length=5, max_metadata_size=4, max_attributes_size=6
        )
    )
    with pytest.raises(LimitExceeded):
        manager.join("r", ParticipantInit(identity="toolong"), T0)
    with pytest.raises(LimitExceeded):
        manager.join("r", ParticipantInit(identity="a", name="toolong"), T0)
    with pytest.raises(LimitExceeded):
        manager.join("r", ParticipantInit(identity="a", metadata="12345"), T0)
    assert "r" not in manager.rooms  # a refused first join does not leave an empty room behind
    room, a, _, _ = manager.join("r", ParticipantInit(identity="a"), T0)
    with pytest.raises(LimitExceeded):
        room.update_participant(a.sid, attributes={"key": "value"})
    assert a.attributes == {}
    with pytest.raises(LimitExceeded):
        room.set_metadata("12345")
    with pytest.raises(InvalidRequest):
        manager.join("r", ParticipantInit(identity=""), T0)


def test_kinds_and_state_progression(manager: RoomManager) -> None:
    room, agent, _, _ = manager.join("r", init("bot", kind=ParticipantKind.AGENT), T0)
    assert agent.kind == ParticipantKind.AGENT
    assert room.set_state(agent.sid, ParticipantState.JOINED)
    assert room.set_state(agent.sid, ParticipantState.ACTIVE)
    assert room.set_state(agent.sid, ParticipantState.JOINED) == []  # never backwards
    assert ParticipantKind.from_name("sip") == ParticipantKind.SIP
    with pytest.raises(ValueError):
        ParticipantKind.from_name("robot")


def test_auto_subscribe_and_never_own_tracks(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    track, events = publish(room, a.sid)
    # The update naming the track comes before the subscription.
    kinds = [type(e) for e in events]
    assert kinds.index(ParticipantUpdated) < kinds.index(SubscriptionChanged)
    assert subs(events) == {(b.sid, track.sid)}
    assert track.sid not in a.subscribed
    # A late joiner is subscribed to existing tracks at join.
    _, c, events, _ = manager.join("r", init("c"), T0)
    assert subs(events) == {(c.sid, track.sid)}
    # A participant's explicit request for its own track is ignored.
    assert room.update_subscriptions(a.sid, [track.sid], True) == []


def test_publisher_is_told_of_each_new_subscription(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b", auto_subscribe=False), T0)
    track, events = publish(room, a.sid)
    assert not [e for e in events if isinstance(e, TrackSubscribed)]  # nobody subscribed yet
    events = room.update_subscriptions(b.sid, [track.sid], True)
    told = [e for e in events if isinstance(e, TrackSubscribed)]
    assert [(e.recipient, e.track_sid) for e in told] == [(a.sid, track.sid)]
    _, c, events, _ = manager.join("r", init("c"), T0)
    told = [e for e in events if isinstance(e, TrackSubscribed)]
    assert [(e.recipient, e.track_sid) for e in told] == [(a.sid, track.sid)]
    # Unsubscribing tells the publisher nothing.
    events = room.update_subscriptions(b.sid, [track.sid], False)
    assert not [e for e in events if isinstance(e, TrackSubscribed)]


def test_manual_subscription_mode(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b", auto_subscribe=False), T0)
    track, events = publish(room, a.sid)
    assert subs(events) == set()
    events = room.update_subscriptions(b.sid, [track.sid], True)
    assert subs(events) == {(b.sid, track.sid)}
    events = room.update_subscriptions(b.sid, [track.sid], False)
    assert subs(events, subscribed=False) == {(b.sid, track.sid)}
    with pytest.raises(Exception, match="does not exist"):
        room.update_subscriptions(b.sid, ["TR_nope"], True)


def test_auto_subscriber_can_opt_out(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    track, _ = publish(room, a.sid)
    events = room.update_subscriptions(b.sid, [track.sid], False)
    assert subs(events, subscribed=False) == {(b.sid, track.sid)}


def test_subscription_permissions(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    _, c, _, _ = manager.join("r", init("c"), T0)
    track, _ = publish(room, a.sid)
    events = room.set_subscription_permission(a.sid, False, {"b": None})
    assert subs(events, subscribed=False) == {(c.sid, track.sid)}
    denied = [e for e in events if isinstance(e, SubscriptionPermissionUpdate)]
    assert [(e.recipient, e.allowed) for e in denied] == [(c.sid, False)]
    # c asking explicitly is refused and told so.
    events = room.update_subscriptions(c.sid, [track.sid], True)
    assert subs(events) == set()
    assert any(isinstance(e, SubscriptionPermissionUpdate) and not e.allowed for e in events)
    # Per-track allow by sid.
    events = room.set_subscription_permission(a.sid, False, {c.sid: {track.sid}})
    assert subs(events) == {(c.sid, track.sid)} and subs(events, False) == {(b.sid, track.sid)}
    events = room.set_subscription_permission(a.sid, True, {})
    assert subs(events) == {(b.sid, track.sid)}


def test_can_subscribe_false_receives_nothing(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    manager.join("r", init("b", permission=Permission(can_subscribe=False)), T0)
    _, events = publish(room, a.sid)
    assert subs(events) == set()


def test_publish_permissions_and_sources(manager: RoomManager) -> None:
    room, viewer, _, _ = manager.join("r", init("v", permission=Permission(can_publish=False)), T0)
    with pytest.raises(PermissionDenied):
        room.publish_track(viewer.sid, mic())
    only_mic = Permission(can_publish_sources=[TrackSource.MICROPHONE])
    _, p, _, _ = manager.join("r", init("p", permission=only_mic), T0)
    room.publish_track(p.sid, mic())
    cam = TrackRequest(cid="cam", type=TrackType.VIDEO, source=TrackSource.CAMERA)
    with pytest.raises(PermissionDenied, match="CAMERA"):
        room.publish_track(p.sid, cam)
    with pytest.raises(InvalidRequest):
        room.publish_track(p.sid, mic())  # same cid twice
    with pytest.raises(InvalidRequest):
        room.publish_track(p.sid, TrackRequest(cid="d", type=TrackType.DATA))


def test_track_limit_and_sids() -> None:
    manager = RoomManager(limits=Limits(max_tracks_per_participant=1))
    room, a, _, _ = manager.join("r", init("a"), T0)
    track, _ = room.publish_track(a.sid, mic("1"))
    assert track.sid.startswith("TR_AM")
    with pytest.raises(LimitExceeded):
        room.publish_track(a.sid, mic("2"))


def test_mute_from_client_and_server(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    track, _ = publish(room, a.sid)
    (update,) = room.set_track_muted(a.sid, track.sid, True)
    assert isinstance(update, ParticipantUpdated) and track.muted
    assert set(update.recipients) == {a.sid, b.sid}
    events = room.set_track_muted(a.sid, track.sid, False, server_initiated=True)
    assert isinstance(events[0], MuteRequested) and events[0].recipient == a.sid
    assert not track.muted


def test_unpublish_stops_subscribers(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    track, _ = publish(room, a.sid)
    events = room.unpublish_track(a.sid, track.sid, server_initiated=True)
    assert subs(events, subscribed=False) == {(b.sid, track.sid)}
    assert isinstance(events[0], TrackUnpublished)
    assert not b.subscribed and not a.tracks


def test_leave_stops_subscriptions_both_ways(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    ta, _ = publish(room, a.sid, "a")
    tb, _ = publish(room, b.sid, "b")
    events = room.leave(a.sid, DisconnectReason.CLIENT_INITIATED, T0)
    assert subs(events, subscribed=False) == {(a.sid, tb.sid), (b.sid, ta.sid)}
    assert not any(isinstance(e, Disconnect) for e in events)  # client-initiated: no leave back


def test_hidden_participants(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, rec, events, _ = manager.join("r", init("rec", permission=Permission(hidden=True)), T0)
    assert not [e for e in events if isinstance(e, ParticipantUpdated) and e.recipients]
    assert room.visible_to(a.sid) == [] and room.num_participants == 1
    # A hidden participant still receives others' tracks...
    track, events = publish(room, a.sid)
    assert subs(events) == {(rec.sid, track.sid)}
    # ...but its own tracks are not visible, nor subscribable.
    own, events = publish(room, rec.sid, "hidden-mic")
    assert subs(events) == set()
    update = next(e for e in events if isinstance(e, ParticipantUpdated))
    assert update.recipients == (rec.sid,)
    events = room.leave(rec.sid, DisconnectReason.CLIENT_INITIATED, T0)
    assert not [e for e in events if isinstance(e, ParticipantUpdated) and e.recipients]


def test_revoking_publish_permission_unpublishes(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    track, _ = publish(room, a.sid)
    events = room.update_participant(a.sid, permission=Permission(can_publish=False))
    assert any(isinstance(e, TrackUnpublished) for e in events)
    assert subs(events, subscribed=False) == {(b.sid, track.sid)}


def test_remove_and_delete_room(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    events = room.remove_by_identity("a", T0)
    leave = next(e for e in events if isinstance(e, Disconnect))
    assert leave.reason == DisconnectReason.PARTICIPANT_REMOVED
    with pytest.raises(ParticipantNotFound):
        room.remove_by_identity("a", T0)
    events = manager.delete_room("r", T0)
    assert [type(e) for e in events] == [Disconnect, RoomClosed]
    assert isinstance(events[0], Disconnect)
    assert events[0].reason == DisconnectReason.ROOM_DELETED
    with pytest.raises(RoomNotFound):
        manager.delete_room("r", T0)


def test_data_recipients(manager: RoomManager) -> None:
    room, a, _, _ = manager.join("r", init("a"), T0)
    _, b, _, _ = manager.join("r", init("b"), T0)
    _, c, _, _ = manager.join("r", init("c"), T0)
    assert set(room.data_recipients(a.sid, [])) == {b.sid, c.sid}
    assert room.data_recipients(a.sid, ["c"]) == [c.sid]
    assert room.data_recipients(a.sid, ["a"]) == []
    assert set(room.data_recipients(None, [])) == {a.sid, b.sid, c.sid}

"""Agents (and recorders) are dependent participants in the room model, the node tells listeners
about joins and departures, and a token's roomConfig becomes room options (all sans-I/O)."""

from __future__ import annotations

import pytest

from roomline.config import RoomDefaults
from roomline.errors import RoomFull
from sfu.events import RoomClosed
from sfu.node import Node
from sfu.participant import (
    DisconnectReason,
    Participant,
    ParticipantInit,
    ParticipantKind,
    Permission,
)
from sfu.room import TrackRequest
from sfu.roommanager import RoomManager, room_options_from_config
from sfu.roomstate import RoomState
from sfu.track import TrackType

T0 = 1_700_000_000.0


def human(identity: str) -> ParticipantInit:
    return ParticipantInit(identity=identity)


def agent(identity: str) -> ParticipantInit:
    return ParticipantInit(
        identity=identity, kind=ParticipantKind.AGENT, permission=Permission(agent=True)
    )


def manager(**defaults: object) -> RoomManager:
    return RoomManager(defaults=RoomDefaults(**defaults))  # type: ignore[arg-type]


def test_agents_take_no_seat() -> None:
    rooms = manager()
    room, _ = rooms.create_room("r", T0, max_participants=1)
    rooms.join("r", agent("bot-1"), T0)
    rooms.join("r", agent("bot-2"), T0)
    rooms.join("r", human("alice"), T0)
    with pytest.raises(RoomFull):
        rooms.join("r", human("bob"), T0)
    recorder = ParticipantInit(identity="rec", permission=Permission(recorder=True, hidden=False))
    rooms.join("r", recorder, T0)
    assert len(room.participants) == 4


def test_room_with_only_agents_closes_after_departure_timeout() -> None:
    rooms = manager(departure_timeout=5, empty_timeout=60)
    room, _ = rooms.create_room("r", T0)
    _, a, _, _ = rooms.join("r", agent("bot"), T0)
    _, h, _, _ = rooms.join("r", human("alice"), T0 + 1)
    assert room.ever_joined and room.last_left_at is None
    room.leave(h.sid, DisconnectReason.CLIENT_INITIATED, T0 + 2)
    assert room.last_left_at == T0 + 2 and room.participants  # the agent is still there
    assert rooms.tick(T0 + 6) == []
    events = rooms.tick(T0 + 7)
    assert isinstance(events[-1], RoomClosed) and "r" not in rooms.rooms
    # The agent is told to leave (ROOM_CLOSED).
    assert any(getattr(e, "participant", None) is a for e in events)


def test_agent_alone_in_a_new_room_uses_empty_timeout() -> None:
    rooms = manager(departure_timeout=5, empty_timeout=60)
    room, _ = rooms.create_room("r", T0)
    _, a, _, _ = rooms.join("r", agent("bot"), T0 + 1)
    assert not room.ever_joined
    room.leave(a.sid, DisconnectReason.CLIENT_INITIATED, T0 + 2)
    rooms.join("r", agent("bot"), T0 + 3)
    assert rooms.tick(T0 + 30) == []  # an agent alone does not start the departure timeout
    assert isinstance(rooms.tick(T0 + 60)[-1], RoomClosed)


def test_agent_joining_does_not_reset_departure() -> None:
    rooms = manager(departure_timeout=5)
    room, _ = rooms.create_room("r", T0)
    _, h, _, _ = rooms.join("r", human("alice"), T0)
    room.leave(h.sid, DisconnectReason.CLIENT_INITIATED, T0 + 1)
    rooms.join("r", agent("bot"), T0 + 3)
    assert room.last_left_at == T0 + 1
    assert isinstance(rooms.tick(T0 + 6)[-1], RoomClosed)


def test_node_participant_listeners() -> None:
    node = Node(RoomManager(), clock=lambda: T0)
    seen: list[tuple[str, str, bool]] = []

    def listener(room: RoomState, p: Participant, joined: bool) -> None:
        seen.append((room.name, p.identity, joined))

    node.participant_listeners.append(listener)
    room, alice, events = node.join("r", human("alice"))
    node.dispatch(events)
    _, bot, events = node.join("r", agent("bot"))
    node.dispatch(events)
    node.dispatch(room.remove_by_identity("bot", T0))
    node.dispatch(room.leave(alice.sid, DisconnectReason.CLIENT_INITIATED, T0))
    assert seen == [
        ("r", "alice", True),
        ("r", "bot", True),
        ("r", "bot", False),
        ("r", "alice", False),
    ]
    assert bot.disconnect_reason == DisconnectReason.PARTICIPANT_REMOVED


def test_node_publisher_listeners_once_per_participant_at_first_bound_track() -> None:
    """JT_PUBLISHER jobs start at a participant's first published track (as LiveKit)."""
    node = Node(RoomManager(), clock=lambda: T0)
    seen: list[str] = []
    node.publisher_listeners.append(lambda room, p: seen.append(p.identity))
    room, alice, events = node.join("r", human("alice"))
    node.dispatch(events)
    _, bob, events = node.join("r", human("bob"))  # only listens
    node.dispatch(events)
    mic, events = room.publish_track(alice.sid, TrackRequest(cid="mic", type=TrackType.AUDIO))
    node.dispatch(events)
    node.dispatch(room.update_participant(alice.sid, metadata="m"))  # an update, no media yet
    assert seen == [] and not alice.has_published
    node.dispatch(room.bind_track(alice.sid, mic.sid))
    assert seen == ["alice"] and alice.has_published and not bob.has_published
    cam, events = room.publish_track(alice.sid, TrackRequest(cid="cam", type=TrackType.VIDEO))
    node.dispatch(events)
    node.dispatch(room.bind_track(alice.sid, cam.sid))
    node.dispatch(room.unpublish_track(alice.sid, mic.sid))
    mic2, events = room.publish_track(alice.sid, TrackRequest(cid="mic2", type=TrackType.AUDIO))
    node.dispatch(room.bind_track(alice.sid, mic2.sid))
    node.dispatch(room.leave(bob.sid, DisconnectReason.CLIENT_INITIATED, T0))
    assert seen == ["alice"]  # once, whatever it publishes later


def test_room_options_from_token_room_config() -> None:
    cfg = {
        "emptyTimeout": 30,
        "departure_timeout": "7",
        "maxParticipants": 3,
        "agents": [{"agentName": "a", "metadata": "m"}, {"agent_name": "b"}, {"x": 1}, "junk"],
        "unknown": True,
    }
    assert room_options_from_config(cfg) == {
        "empty_timeout": 30,
        "departure_timeout": 7,
        "max_participants": 3,
        "agents": ["a", "b"],
        "agent_metadata": {"a": "m"},
    }
    assert room_options_from_config(None) == {}
    assert room_options_from_config({"emptyTimeout": -1, "agents": "a"}) == {}
    # Only when the join creates the room.
    rooms = RoomManager()
    room, _, _, created = rooms.join("r", human("a"), T0, room_options_from_config(cfg))
    assert created and room.agents == ["a", "b"] and room.max_participants == 3
    room2, _, _, created = rooms.join("r", human("b"), T0, {"agents": ["z"]})
    assert not created and room2.agents == ["a", "b"]

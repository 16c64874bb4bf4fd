"""Twirp ``livekit.RoomService``: manage rooms and act on connected participants.

Grants as LiveKit enforces them: CreateRoom/DeleteRoom need ``roomCreate``, ListRooms ``roomList``,
everything acting inside a room ``roomAdmin`` for that room.
"""

from __future__ import annotations

from typing import Any

from livekit.protocol import models
from livekit.protocol import room as room_pb

from roomline.auth import Claims
from roomline.errors import InvalidRequest, LimitExceeded, PermissionDenied
from sfu.node import Node
from sfu.proto import participant_info, permission_from_info, room_info, track_info
from sfu.service.twirp import Method

#: LiveKit requires a 16-byte nonce when one is given (used to de-duplicate SendData).
NONCE_SIZE = 16


def _require(condition: bool, grant: str) -> None:
    if not condition:
        raise PermissionDenied(f"missing grant: {grant}")


def _require_admin(claims: Claims, room: str) -> None:
    if not room:
        raise InvalidRequest("room is required")
    _require(claims.video.room_admin and claims.video.room == room, f"roomAdmin for room {room!r}")


class RoomService:
    """The RoomService methods, each taking a request message and the caller's claims."""

    def __init__(self, node: Node, max_data_packet_size: int) -> None:
        self.node = node
        self.max_data_packet_size = max_data_packet_size

    def methods(self) -> dict[str, Method]:
        return {
            "CreateRoom": Method(room_pb.CreateRoomRequest, self.create_room),
            "ListRooms": Method(room_pb.ListRoomsRequest, self.list_rooms),
            "DeleteRoom": Method(room_pb.DeleteRoomRequest, self.delete_room),
            "ListParticipants": Method(room_pb.ListParticipantsRequest, self.list_participants),
            "GetParticipant": Method(room_pb.RoomParticipantIdentity, self.get_participant),
            "RemoveParticipant": Method(room_pb.RoomParticipantIdentity, self.remove_participant),
            "MutePublishedTrack": Method(room_pb.MuteRoomTrackRequest, self.mute_published_track),
            "UpdateParticipant": Method(room_pb.UpdateParticipantRequest, self.update_participant),
            "UpdateSubscriptions": Method(
                room_pb.UpdateSubscriptionsRequest, self.update_subscriptions
            ),
            "SendData": Method(room_pb.SendDataRequest, self.send_data),
            "MoveParticipant": Method(room_pb.MoveParticipantRequest, self.move_participant),
            "UpdateRoomMetadata": Method(room_pb.UpdateRoomMetadataRequest, self.update_metadata),
        }

    async def create_room(self, req: room_pb.CreateRoomRequest, claims: Claims) -> Any:
        _require(claims.video.room_create, "roomCreate")
        agents = [d.agent_name for d in req.agents if d.agent_name]
        room = self.node.create_room(
            req.name,
            empty_timeout=req.empty_timeout,
            departure_timeout=req.departure_timeout,
            max_participants=req.max_participants,
            metadata=req.metadata,
            agents=agents,
            agent_metadata={d.agent_name: d.metadata for d in req.agents if d.metadata},
        )
        return room_info(room)

    async def list_rooms(self, req: room_pb.ListRoomsRequest, claims: Claims) -> Any:
        _require(claims.video.room_list, "roomList")
        rooms = self.node.rooms.list_rooms(list(req.names))
        return room_pb.ListRoomsResponse(rooms=[room_info(r) for r in rooms])

    async def delete_room(self, req: room_pb.DeleteRoomRequest, claims: Claims) -> Any:
        _require(claims.video.room_create, "roomCreate")
        self.node.delete_room(req.room)
        return room_pb.DeleteRoomResponse()

    async def list_participants(self, req: room_pb.ListParticipantsRequest, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        room = self.node.rooms.get(req.room)
        return room_pb.ListParticipantsResponse(
            participants=[participant_info(p) for p in room.participants.values()]
        )

    async def get_participant(self, req: room_pb.RoomParticipantIdentity, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        room = self.node.rooms.get(req.room)
        return participant_info(room.get_by_identity(req.identity))

    async def remove_participant(self, req: room_pb.RoomParticipantIdentity, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        room = self.node.rooms.get(req.room)
        self.node.dispatch(room.remove_by_identity(req.identity, self.node.clock()))
        return room_pb.RemoveParticipantResponse()

    async def mute_published_track(self, req: room_pb.MuteRoomTrackRequest, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        room = self.node.rooms.get(req.room)
        participant = room.get_by_identity(req.identity)
        events = room.set_track_muted(
            participant.sid, req.track_sid, req.muted, server_initiated=True
        )
        self.node.dispatch(events)
        return room_pb.MuteRoomTrackResponse(track=track_info(participant.tracks[req.track_sid]))

    async def update_participant(
        self, req: room_pb.UpdateParticipantRequest, claims: Claims
    ) -> Any:
        _require_admin(claims, req.room)
        room = self.node.rooms.get(req.room)
        participant = room.get_by_identity(req.identity)
        events = room.update_participant(
            participant.sid,
            name=req.name or None,
            metadata=req.metadata or None,
            attributes=dict(req.attributes) or None,
            permission=permission_from_info(req.permission) if req.HasField("permission") else None,
        )
        self.node.dispatch(events)
        return participant_info(participant)

    async def update_subscriptions(
        self, req: room_pb.UpdateSubscriptionsRequest, claims: Claims
    ) -> Any:
        _require_admin(claims, req.room)
        room = self.node.rooms.get(req.room)
        participant = room.get_by_identity(req.identity)
        track_sids = list(req.track_sids)
        for pt in req.participant_tracks:
            track_sids += list(pt.track_sids)
        self.node.dispatch(room.update_subscriptions(participant.sid, track_sids, req.subscribe))
        return room_pb.UpdateSubscriptionsResponse()

    async def send_data(self, req: room_pb.SendDataRequest, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        room = self.node.rooms.get(req.room)
        if len(req.data) > self.max_data_packet_size:
            raise LimitExceeded(f"data larger than {self.max_data_packet_size} bytes")
        if req.nonce and len(req.nonce) != NONCE_SIZE:
            raise InvalidRequest(f"nonce must be {NONCE_SIZE} bytes")
        destinations = list(req.destination_identities)
        reliable = req.kind == models.DataPacket.Kind.RELIABLE
        user = models.UserPacket(
            payload=req.data, destination_identities=destinations, nonce=req.nonce
        )
        if req.HasField("topic"):
            user.topic = req.topic
        packet = models.DataPacket(
            kind=req.kind, user=user, destination_identities=destinations
        ).SerializeToString()
        self.node.send_data(room, None, packet, reliable, destinations)
        return room_pb.SendDataResponse()

    async def update_metadata(self, req: room_pb.UpdateRoomMetadataRequest, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        room = self.node.rooms.get(req.room)
        self.node.dispatch(room.set_metadata(req.metadata))
        return room_info(room)

    async def move_participant(self, req: room_pb.MoveParticipantRequest, claims: Claims) -> Any:
        _require_admin(claims, req.room)
        if not req.destination_room:
            raise InvalidRequest("destination_room is required")
        destination = claims.video.destination_room
        _require(
            destination == req.destination_room or (claims.video.room_create and not destination),
            f"destinationRoom {req.destination_room!r}",
        )
        room = self.node.rooms.get(req.room)
        self.node.move_participant(room, req.identity, req.destination_room)
        return room_pb.MoveParticipantResponse()

"""Conversions between the room model and LiveKit's protobuf messages (``livekit.protocol``).

The model stays free of protobuf; the edges (signalling, Twirp, local channel) call these functions.
"""

from __future__ import annotations

from livekit.protocol import models

from sfu.participant import Participant, Permission
from sfu.roomstate import RoomState
from sfu.track import TrackPublication, TrackSource

#: What we tell clients we are. JS requires a non-empty version; the Rust SDK parses it as semver
#: and needs >= 1.8.0 for RPC.
SERVER_VERSION = "1.9.0"
#: LiveKit signalling protocol version spoken on /rtc.
PROTOCOL_VERSION = 17


def room_info(room: RoomState) -> models.Room:
    return models.Room(
        sid=room.sid,
        name=room.name,
        empty_timeout=room.empty_timeout,
        departure_timeout=room.departure_timeout,
        max_participants=room.max_participants,
        creation_time=int(room.created_at),
        creation_time_ms=int(room.created_at * 1000),
        metadata=room.metadata,
        num_participants=room.num_participants,
        num_publishers=room.num_publishers,
    )


def track_info(track: TrackPublication) -> models.TrackInfo:
    return models.TrackInfo(
        sid=track.sid,
        type=int(track.type),  # type: ignore[arg-type]
        name=track.name,
        muted=track.muted,
        width=track.width,
        height=track.height,
        simulcast=track.simulcast,
        disable_dtx=track.disable_dtx,
        source=int(track.source),  # type: ignore[arg-type]
        mime_type=track.mime_type,
        mid=track.mid,
        stereo=track.stereo,
        stream=track.stream,
        layers=[
            models.VideoLayer(
                quality=layer.quality,  # type: ignore[arg-type]
                width=layer.width,
                height=layer.height,
                bitrate=layer.bitrate,
            )
            for layer in track.layers
        ],
    )


def permission_info(permission: Permission) -> models.ParticipantPermission:
    return models.ParticipantPermission(
        can_subscribe=permission.can_subscribe,
        can_publish=permission.can_publish,
        can_publish_data=permission.can_publish_data,
        can_publish_sources=[int(s) for s in permission.can_publish_sources],  # type: ignore[misc]
        hidden=permission.hidden,
        recorder=permission.recorder,
        can_update_metadata=permission.can_update_metadata,
        agent=permission.agent,
        can_subscribe_metrics=permission.can_subscribe_metrics,
        can_manage_agent_session=permission.can_manage_agent_session,
    )


def permission_from_info(info: models.ParticipantPermission) -> Permission:
    return Permission(
        can_subscribe=info.can_subscribe,
        can_publish=info.can_publish,
        can_publish_data=info.can_publish_data,
        can_publish_sources=[TrackSource(s) for s in info.can_publish_sources],
        hidden=info.hidden,
        recorder=info.recorder,
        can_update_metadata=info.can_update_metadata,
        agent=info.agent,
        can_subscribe_metrics=info.can_subscribe_metrics,
        can_manage_agent_session=info.can_manage_agent_session,
    )


def participant_info(
    participant: Participant, *, bound_only: bool = True
) -> models.ParticipantInfo:
    """``bound_only``: announce only tracks whose media arrived (what others can subscribe to)."""
    tracks = [track_info(t) for t in participant.tracks.values() if t.bound or not bound_only]
    return models.ParticipantInfo(
        sid=participant.sid,
        identity=participant.identity,
        state=int(participant.state),  # type: ignore[arg-type]
        tracks=tracks,
        metadata=participant.metadata,
        joined_at=int(participant.joined_at),
        joined_at_ms=int(participant.joined_at * 1000),
        name=participant.name,
        version=participant.version,
        permission=permission_info(participant.permission),
        is_publisher=bool(tracks),
        kind=int(participant.kind),  # type: ignore[arg-type]
        attributes=participant.attributes,
        disconnect_reason=int(participant.disconnect_reason),  # type: ignore[arg-type]
        client_protocol=participant.client_protocol,
    )

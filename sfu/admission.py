"""What a verified access token admits: the :class:`~sfu.participant.ParticipantInit` of a join.

Shared by every way into a room (``/rtc`` and the local participant channel), so a token means the
same participant whichever transport presents it.
"""

from __future__ import annotations

from roomline.auth import Claims
from sfu.participant import ParticipantInit, ParticipantKind
from sfu.proto import permission_from_info

#: ``ParticipantInfo.client_protocol`` values (LiveKit's client feature levels, which other clients
#: read to choose how to send RPC and data streams to this participant).
CLIENT_PROTOCOL_DEFAULT = 0  # RPC v1 packets only, no data streams v2
CLIENT_PROTOCOL_DATA_STREAM_RPC = 1  # RPC requests and responses carried as data streams
CLIENT_PROTOCOL_DATA_STREAM_V2 = 2  # also understands single-packet data streams


def participant_init(claims: Claims, auto_subscribe: bool, client_protocol: int) -> ParticipantInit:
    """The participant ``claims`` describe; unknown kinds join as STANDARD."""
    permission = permission_from_info(claims.video.permission())
    kind = (
        ParticipantKind(claims.kind)
        if claims.kind in ParticipantKind._value2member_map_
        else ParticipantKind.STANDARD
    )
    return ParticipantInit(
        identity=claims.identity,
        name=claims.name,
        metadata=claims.metadata,
        attributes=dict(claims.attributes),
        kind=kind,
        permission=permission,
        auto_subscribe=auto_subscribe,
        client_protocol=client_protocol,
    )

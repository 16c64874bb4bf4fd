"""LiveKit signalling shared by every kind of session (WebRTC over ``/rtc``, local participants).

:class:`SignalSession` turns ``SignalRequest`` messages into room-model calls and model events into
``SignalResponse`` messages. Subclasses supply the transport: how a response is written, how media for
a subscription is attached, how data packets travel.
"""

from __future__ import annotations

import abc
import time
from typing import Any

import structlog
from livekit.protocol import models, rtc

from roomline.config import Config
from roomline.errors import LimitExceeded, PermissionDenied, RoomlineError
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
from sfu.participant import DisconnectReason, Participant
from sfu.proto import PROTOCOL_VERSION, SERVER_VERSION, participant_info, room_info, track_info
from sfu.room import Room, TrackRequest
from sfu.track import TrackSource, TrackType

log = structlog.get_logger(__name__)

#: Seconds; both SDKs need values > 0 (the Rust SDK panics on a zero interval).
PING_INTERVAL = 5
PING_TIMEOUT = 15

_REASONS = rtc.RequestResponse.Reason
#: Disconnect reasons a SIP participant may give when it leaves (see ``Session.on_leave``).
_SIP_LEAVE_REASONS = frozenset(
    {
        DisconnectReason.USER_UNAVAILABLE,
        DisconnectReason.USER_REJECTED,
        DisconnectReason.SIP_TRUNK_FAILURE,
        DisconnectReason.MEDIA_FAILURE,
    }
)


def now_ms() -> int:
    return int(time.time() * 1000)


def track_request(req: rtc.AddTrackRequest) -> TrackRequest:
    return TrackRequest(
        cid=req.cid,
        type=TrackType(req.type) if req.type in (0, 1, 2) else TrackType.DATA,
        source=TrackSource(req.source)
        if req.source in TrackSource._value2member_map_
        else TrackSource.UNKNOWN,
        name=req.name,
        muted=req.muted,
        width=req.width,
        height=req.height,
        simulcast=bool(req.simulcast_codecs) or len(req.layers) > 1,
        stream=req.stream,
        disable_dtx=req.disable_dtx,
        stereo=req.stereo,
    )


def reason_for(exc: RoomlineError) -> rtc.RequestResponse.Reason:
    if isinstance(exc, PermissionDenied):
        return _REASONS.NOT_ALLOWED
    if isinstance(exc, LimitExceeded):
        return _REASONS.LIMIT_EXCEEDED
    if exc.twirp_code == "not_found":
        return _REASONS.NOT_FOUND
    return _REASONS.INVALID_REQUEST


def request_response(
    reason: rtc.RequestResponse.Reason, message: str = "", request_id: int = 0, **which: Any
) -> rtc.SignalResponse:
    """A ``request_response``: the outcome of one client request (``which`` names the request)."""
    return rtc.SignalResponse(
        request_response=rtc.RequestResponse(
            request_id=request_id, reason=reason, message=message, **which
        )
    )


def leave_response(reason: DisconnectReason, action: rtc.LeaveRequest.Action) -> rtc.SignalResponse:
    """A server-sent ``leave``: the session ends for ``reason``; ``action`` tells the client what
    to do next (``LeaveRequest.Action.DISCONNECT`` or ``RECONNECT``)."""
    return rtc.SignalResponse(
        leave=rtc.LeaveRequest(
            reason=int(reason),  # type: ignore[arg-type]  # same enum values as the protocol's
            action=action,
        )
    )


def event_response(event: Event) -> rtc.SignalResponse | None:
    """The ``SignalResponse`` telling a recipient about ``event``, the same for every recipient.

    None for events a session acts on instead of relaying (``SubscriptionChanged``, ``RoomClosed``).
    The one builder for both paths: a session serializing for itself and :func:`encode_broadcast`.
    """
    if isinstance(event, ParticipantUpdated):
        return rtc.SignalResponse(
            update=rtc.ParticipantUpdate(participants=[participant_info(event.participant)])
        )
    if isinstance(event, RoomUpdated):
        return rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room_info(event.room)))
    if isinstance(event, SpeakersChanged):
        return rtc.SignalResponse(
            speakers_changed=rtc.SpeakersChanged(
                speakers=[
                    models.SpeakerInfo(sid=s.participant_sid, level=s.level, active=s.active)
                    for s in event.speakers
                ]
            )
        )
    if isinstance(event, Disconnect):
        return leave_response(event.reason, rtc.LeaveRequest.Action.DISCONNECT)
    if isinstance(event, MuteRequested):
        return rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=event.track_sid, muted=event.muted))
    if isinstance(event, TrackUnpublished):
        return rtc.SignalResponse(
            track_unpublished=rtc.TrackUnpublishedResponse(track_sid=event.track_sid)
        )
    if isinstance(event, TrackSubscribed):
        return rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(track_sid=event.track_sid))
    if isinstance(event, SubscriptionPermissionUpdate):
        return rtc.SignalResponse(
            subscription_permission_update=rtc.SubscriptionPermissionUpdate(
                participant_sid=event.publisher_sid,
                track_sid=event.track_sid,
                allowed=event.allowed,
            )
        )
    return None


def encode_broadcast(event: Event) -> bytes | None:
    """The serialized :func:`event_response` of ``event``, built once for all its recipients."""
    response = event_response(event)
    return None if response is None else response.SerializeToString()


class SignalSession(abc.ABC):
    """One participant's signalling, independent of transport."""

    def __init__(self, node: Node, cfg: Config, room: Room, participant: Participant) -> None:
        self.node = node
        self.cfg = cfg
        self.room = room
        self.participant = participant
        self.closed = False
        self.log = log.bind(room=room.name, participant=participant.identity, sid=participant.sid)

    # ------------------------------------------------------------------ transport hooks

    @abc.abstractmethod
    def send_wire(self, wire: bytes) -> None:
        """Write one serialized ``SignalResponse`` to the client (must not block)."""

    def send_signal(self, response: rtc.SignalResponse) -> None:
        self.send_wire(response.SerializeToString())

    @abc.abstractmethod
    def subscribe(self, event: SubscriptionChanged) -> None:
        """Start forwarding a track to this participant."""

    @abc.abstractmethod
    def unsubscribe(self, event: SubscriptionChanged) -> None:
        """Stop forwarding a track to this participant."""

    @abc.abstractmethod
    def send_data(self, packet: bytes, reliable: bool) -> None:
        """Deliver a serialized DataPacket."""

    @abc.abstractmethod
    def close(self, reason: DisconnectReason) -> None:
        """Tear down the transport."""

    def set_track_settings(self, track_sids: list[str], disabled: bool) -> None:
        """UpdateTrackSettings: pause/resume forwarding (transport-specific; default: ignore)."""
        return None

    # ------------------------------------------------------------------ join

    def join_response(self) -> rtc.JoinResponse:
        others = [participant_info(p) for p in self.room.visible_to(self.participant.sid)]
        ice = [
            rtc.ICEServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in self.cfg.rtc.ice_servers
        ]
        return rtc.JoinResponse(
            room=room_info(self.room),
            participant=participant_info(self.participant, bound_only=False),
            other_participants=others,
            server_version=SERVER_VERSION,
            server_info=models.ServerInfo(
                edition=models.ServerInfo.Edition.Standard,
                version=SERVER_VERSION,
                protocol=PROTOCOL_VERSION,
                node_id="roomline",
            ),
            ice_servers=ice,
            subscriber_primary=self.participant.permission.can_subscribe,
            client_configuration=models.ClientConfiguration(
                # aiortc cannot restart ICE, so clients must do full reconnects.
                resume_connection=models.ClientConfigSetting.DISABLED,
            ),
            ping_timeout=PING_TIMEOUT,
            ping_interval=PING_INTERVAL,
            enabled_publish_codecs=[
                models.Codec(mime="audio/opus"),
                models.Codec(mime="video/VP8"),
                models.Codec(mime="video/H264"),
            ],
        )

    # ------------------------------------------------------------------ requests

    def handle_request(self, req: rtc.SignalRequest) -> None:
        """Dispatch one client request; model errors become request_response, never exceptions."""
        kind = req.WhichOneof("message")
        if kind not in ("ping", "ping_req"):
            self.log.debug("signal request", kind=kind)
        handler = getattr(self, f"on_{kind}", None) if kind else None
        if handler is None:
            self.log.debug("ignored signal request", kind=kind)
            return
        try:
            handler(getattr(req, kind))
        except RoomlineError as exc:
            self.log.info("signal request refused", kind=kind, error=exc.message)
            self._request_error(exc)
        except Exception as exc:  # a bug in one handler must not end the session
            self.log.exception("signal request failed", kind=kind)
            self.send_signal(request_response(_REASONS.UNCLASSIFIED_ERROR, f"{kind}: {exc}"))

    def on_ping(self, timestamp: int) -> None:
        self.send_signal(rtc.SignalResponse(pong=now_ms()))

    def on_ping_req(self, ping: rtc.Ping) -> None:
        self.send_signal(
            rtc.SignalResponse(
                pong_resp=rtc.Pong(last_ping_timestamp=ping.timestamp, timestamp=now_ms())
            )
        )

    def on_leave(self, leave: rtc.LeaveRequest) -> None:
        self.log.info("client left", reason=leave.reason)
        reason = DisconnectReason.CLIENT_INITIATED
        # A SIP participant may say why its call ended (outbound call rejected / unanswered),
        # as LiveKit's SIP service does; other clients always leave CLIENT_INITIATED.
        if (
            self.participant.kind == models.ParticipantInfo.Kind.SIP
            and leave.reason in _SIP_LEAVE_REASONS
        ):
            reason = DisconnectReason(leave.reason)
        self.node.detach(self, reason)
        self.close(reason)

    def on_add_track(self, req: rtc.AddTrackRequest) -> None:
        try:
            track, events = self.room.publish_track(self.participant.sid, track_request(req))
        except RoomlineError as exc:
            self.log.info("add_track refused", cid=req.cid, error=exc.message)
            self._request_error(exc, add_track=req)
            return
        self.send_signal(
            rtc.SignalResponse(
                track_published=rtc.TrackPublishedResponse(cid=req.cid, track=track_info(track))
            )
        )
        self.node.dispatch(events)
        self.track_added(track.sid)

    def track_added(self, track_sid: str) -> None:
        """A track was registered by AddTrack; transports bind media to it."""
        return None

    def on_mute(self, req: rtc.MuteTrackRequest) -> None:
        try:
            self.node.dispatch(self.room.set_track_muted(self.participant.sid, req.sid, req.muted))
        except RoomlineError as exc:
            self._request_error(exc, mute=req)

    def on_update_metadata(self, req: rtc.UpdateParticipantMetadata) -> None:
        if not self.participant.permission.can_update_metadata:
            self.send_signal(
                request_response(
                    _REASONS.NOT_ALLOWED,
                    "token does not grant canUpdateOwnMetadata",
                    req.request_id,
                    update_metadata=req,
                )
            )
            return
        try:
            events = self.room.update_participant(
                self.participant.sid,
                name=req.name or None,
                metadata=req.metadata or None,
                attributes=dict(req.attributes) or None,
            )
        except RoomlineError as exc:
            self._request_error(exc, request_id=req.request_id, update_metadata=req)
            return
        self.send_signal(
            request_response(_REASONS.OK, request_id=req.request_id, update_metadata=req)
        )
        self.node.dispatch(events)

    def on_subscription(self, req: rtc.UpdateSubscription) -> None:
        track_sids = list(req.track_sids)
        for pt in req.participant_tracks:
            track_sids += list(pt.track_sids)
        try:
            self.node.dispatch(
                self.room.update_subscriptions(self.participant.sid, track_sids, req.subscribe)
            )
        except RoomlineError as exc:
            self.log.info("subscription refused", error=exc.message)
            for track_sid in track_sids:
                self.send_signal(
                    rtc.SignalResponse(
                        subscription_response=rtc.SubscriptionResponse(
                            track_sid=track_sid, err=models.SubscriptionError.SE_TRACK_NOTFOUND
                        )
                    )
                )

    def on_subscription_permission(self, req: rtc.SubscriptionPermission) -> None:
        allowed: dict[str, set[str] | None] = {}
        for perm in req.track_permissions:
            key = perm.participant_identity or perm.participant_sid
            allowed[key] = None if perm.all_tracks else set(perm.track_sids)
        self.node.dispatch(
            self.room.set_subscription_permission(
                self.participant.sid, req.all_participants, allowed
            )
        )

    def on_track_setting(self, req: rtc.UpdateTrackSettings) -> None:
        self.set_track_settings(list(req.track_sids), req.disabled)

    def on_publish_data_track_request(self, req: object) -> None:
        self.send_signal(
            request_response(_REASONS.UNSUPPORTED_TYPE, "data tracks are not supported")
        )

    def _request_error(self, exc: RoomlineError, request_id: int = 0, **which: Any) -> None:
        self.send_signal(request_response(reason_for(exc), exc.message, request_id, **which))

    # ------------------------------------------------------------------ data

    def handle_data(self, raw: bytes, reliable: bool) -> None:
        """A DataPacket from this participant: check, stamp the sender, relay."""
        limit = self.cfg.limits.max_data_packet_size
        if len(raw) > limit:
            self.log.info("data packet dropped: too large", size=len(raw), limit=limit)
            return
        if not self.participant.permission.can_publish_data:
            self.log.info("data packet dropped: no canPublishData")
            return
        packet = models.DataPacket()
        try:
            packet.ParseFromString(raw)
        except Exception:
            self.log.info("data packet dropped: malformed protobuf", size=len(raw))
            return
        packet.participant_identity = self.participant.identity
        packet.participant_sid = self.participant.sid
        destinations = list(packet.destination_identities)
        if packet.HasField("user"):
            packet.user.participant_identity = self.participant.identity
            packet.user.participant_sid = self.participant.sid
            if not destinations:
                destinations = list(packet.user.destination_identities)
        self.node.send_data(
            self.room, self.participant.sid, packet.SerializeToString(), reliable, destinations
        )

    # ------------------------------------------------------------------ events

    def on_event(self, event: Event, wire: bytes | None = None) -> None:
        """Act on a model event: subscriptions change media, everything else goes to the client.

        ``wire`` is the event's :func:`event_response`, already serialized once for all recipients.
        """
        if self.closed:
            return
        if isinstance(event, SubscriptionChanged):
            if event.subscribed:
                self.subscribe(event)
            else:
                self.unsubscribe(event)
            return
        if wire is None:
            response = event_response(event)
            if response is None:
                return
            wire = response.SerializeToString()
        self.send_wire(wire)
        if isinstance(event, Disconnect):
            self.close(event.reason)

"""Server end of the local participant channel: a Unix socket, one participant per connection.

SIP bridge workers and agent workers join here instead of over WebRTC. After a JOIN frame carrying
a LiveKit token, the connection speaks the same ``SignalRequest``/``SignalResponse`` messages as
``/rtc``; media travels as plain RTP (Opus) frames tagged with the track sid, so the SFU treats a
local participant like any other publisher and subscriber, without ICE, DTLS or SRTP. The protocol
itself (JOIN fields, handshake, frame handling) is the sans-I/O :mod:`sfu.local.protocol`; this
module is its asyncio layer and the :class:`~sfu.signal.SignalSession` of a local participant.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import socket
from typing import cast

import structlog
from livekit.protocol import rtc

from roomline.auth import verify_token
from roomline.config import Config
from roomline.errors import InvalidRequest, RoomlineError
from roomline.lifecycle import Service
from roomline.wire import AUDIO_LEVEL_EXT_ID
from sfu.admission import CLIENT_PROTOCOL_DEFAULT, participant_init
from sfu.events import SubscriptionChanged
from sfu.local import stream
from sfu.local.codec import OPUS_PT, RATE
from sfu.local.protocol import (
    ConnectionClosed,
    DataReceived,
    Event,
    FrameRejected,
    JoinReceived,
    JoinRequest,
    RtpReceived,
    ServerProtocol,
    SignalRequestReceived,
    State,
)
from sfu.media.forwarder import SourceInfo, SourcePacket
from sfu.node import Node
from sfu.participant import (
    DisconnectReason,
    Participant,
    ParticipantInit,
    ParticipantKind,
    ParticipantState,
)
from sfu.proto import participant_info, room_info
from sfu.relay import TrackRelay
from sfu.room import Room, TrackRequest
from sfu.signal import SignalSession

log = structlog.get_logger(__name__)

#: Opus as local publishers send it: LiveKit clients' payload type, 48 kHz RTP clock, and the
#: RFC 6464 level in a one-byte header extension (SIP callers send it: speaker detection).
LOCAL_OPUS = SourceInfo(
    kind="audio",
    mime="audio/opus",
    clock_rate=RATE,
    payload_type=OPUS_PT,
    audio_level_id=AUDIO_LEVEL_EXT_ID,
)
#: A JOIN frame must arrive this fast after connecting (seconds).
JOIN_TIMEOUT = 5.0
#: Bytes queued towards a slow local client before its media is dropped (signal is never dropped).
MAX_WRITE_BACKLOG = 2 * 1024 * 1024
#: What local participants advertise to other clients: neither the bridge nor the agent SDK
#: implements RPC or data streams.
LOCAL_CLIENT_PROTOCOL = CLIENT_PROTOCOL_DEFAULT


class LocalSink:
    """Forwards one track to a local participant as RTP frames (no rewriting on this hop)."""

    __slots__ = ("session", "prefix", "dropped")

    def __init__(self, session: LocalSession, track_sid: str) -> None:
        self.session = session
        self.prefix = track_sid
        self.dropped = 0

    def send(self, pkt: SourcePacket, now_ntp: int | None = None) -> bool:
        if not self.session.write_media(self.prefix, pkt.data):
            self.dropped += 1
            return False
        return True

    @property
    def needs_keyframe(self) -> bool:
        return False

    def stats(self) -> dict[str, object]:
        """Counters for diagnostics (``GET /debug/media``)."""
        return {"local": True, "dropped": self.dropped}

    def close(self) -> None:
        return None


class LocalSession(SignalSession):
    """A participant joined over the local channel."""

    def __init__(
        self,
        node: Node,
        cfg: Config,
        room: Room,
        participant: Participant,
        protocol: ServerProtocol,
        transport: asyncio.WriteTransport,
        subscribe_kinds: frozenset[str],
    ) -> None:
        super().__init__(node, cfg, room, participant)
        self.protocol = protocol
        self.transport = transport
        self.subscribe_kinds = subscribe_kinds
        self._published: set[str] = set()
        self._sinks: set[str] = set()
        #: Track sids the client still uses after a move → the sids of the moved tracks.
        self._aliases: dict[str, str] = {}

    def flush(self) -> None:
        """Write what the protocol has queued."""
        stream.flush(self.protocol, self.transport)

    def write_media(self, track_sid: str, packet: bytes) -> bool:
        if self.closed or self.transport.is_closing():
            return False
        if self.transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
            return False  # a stalled client loses media, never the SFU's memory
        if not self.protocol.send_rtp(track_sid, packet):
            return False
        self.flush()
        return True

    def send_wire(self, wire: bytes) -> None:
        if not self.closed and self.protocol.send_signal(wire):
            self.flush()

    def send_data(self, packet: bytes, reliable: bool) -> None:
        if not self.closed and self.protocol.send_data(packet):
            self.flush()

    def track_added(self, track_sid: str) -> None:
        """Local media needs no negotiation: the track is bound as soon as it is announced."""
        relay = TrackRelay(track_sid, self.participant.sid, LOCAL_OPUS)
        self.node.relays[track_sid] = relay
        self._published.add(track_sid)
        self.node.dispatch(self.room.bind_track(self.participant.sid, track_sid, LOCAL_OPUS.mime))

    def subscribe(self, event: SubscriptionChanged) -> None:
        relay = self.node.relays.get(event.track_sid)
        if relay is None or relay.source.kind not in self.subscribe_kinds:
            return
        relay.add_sink(self.participant.sid, LocalSink(self, event.track_sid))
        self._sinks.add(event.track_sid)

    def unsubscribe(self, event: SubscriptionChanged) -> None:
        self._sinks.discard(event.track_sid)
        relay = self.node.relays.get(event.track_sid)
        if relay is not None:
            relay.remove_sink(self.participant.sid)

    def move_to(self, destination: str) -> None:
        """MoveParticipant: leave this room and join ``destination`` as the same participant.

        The participant keeps its identity, kind, name, metadata, attributes and permissions, gets
        a new sid, and its tracks are re-published in the new room. RTP the client keeps sending
        under the old track sids is routed to the new tracks, so a phone call continues without
        the bridge renegotiating anything; the client is told with ``room_moved``.
        """
        old = self.participant
        # Everything a join gives a participant, as it is now (Participant has every such field).
        init = ParticipantInit(
            **{f.name: copy.copy(getattr(old, f.name)) for f in dataclasses.fields(ParticipantInit)}
        )
        destination_room = self.node.rooms.rooms.get(destination)
        if destination_room is not None:
            destination_room.check_join(init)
        tracks = [(sid, t) for sid, t in old.tracks.items() if sid in self._published]
        # Leave first (others see MIGRATION); our own stopped subscriptions still reach us.
        self.node.dispatch(self.room.leave(old.sid, DisconnectReason.MIGRATION, self.node.clock()))
        self.node.sessions.pop(old.sid, None)
        for sid in list(self._published):
            relay = self.node.relays.pop(sid, None)
            if relay is not None:
                relay.close()
        self._published.clear()
        room, participant, events = self.node.join(destination, init)
        self.room, self.participant = room, participant
        self.log = self.log.bind(room=room.name, sid=participant.sid)
        self.node.attach(self)
        aliases: dict[str, str] = {}
        for old_sid, track in tracks:
            new_track, more = room.publish_track(
                participant.sid,
                TrackRequest(cid=track.cid, type=track.type, source=track.source, name=track.name),
            )
            events += more
            aliases[old_sid] = new_track.sid
            for alias, target in list(self._aliases.items()):
                if target == old_sid:
                    aliases[alias] = new_track.sid
        self._aliases = aliases
        self.send_signal(
            rtc.SignalResponse(
                room_moved=rtc.RoomMovedResponse(
                    room=room_info(room),
                    participant=participant_info(participant, bound_only=False),
                    other_participants=[
                        participant_info(p) for p in room.visible_to(participant.sid)
                    ],
                )
            )
        )
        self.node.dispatch(events)
        for new_sid in aliases.values():
            self.track_added(new_sid)
        self.node.dispatch(room.set_state(participant.sid, ParticipantState.ACTIVE))
        self.log.info("participant moved", destination=destination)

    def on_rtp(self, track_sid: str, packet: bytes) -> None:
        track_sid = self._aliases.get(track_sid, track_sid)
        if track_sid not in self._published:
            raise InvalidRequest(
                f"RTP for track {track_sid!r}, which this participant did not publish"
            )
        relay = self.node.relays.get(track_sid)
        if relay is not None:
            relay.push(packet)

    def close(self, reason: DisconnectReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.log.info("local session closed", reason=reason.name)
        for track_sid in self._published:
            relay = self.node.relays.pop(track_sid, None)
            if relay is not None:
                relay.close()
        for track_sid in self._sinks:
            relay = self.node.relays.get(track_sid)
            if relay is not None:
                relay.remove_sink(self.participant.sid)
        self._published.clear()
        self._sinks.clear()
        self.protocol.close()
        if not self.transport.is_closing():
            self.transport.close()  # after the buffered frames (a LEAVE, say) are written


#: Why a local participant left when its connection dropped without a leave.
UNCLEAN_CLOSE_REASONS = {
    ParticipantKind.SIP: DisconnectReason.SIP_TRUNK_FAILURE,
    ParticipantKind.AGENT: DisconnectReason.AGENT_ERROR,
}


class LocalChannelServer(Service):
    """Accepts local participants on a Unix socket."""

    def __init__(self, node: Node, cfg: Config, path: str) -> None:
        self.node = node
        self.cfg = cfg
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self.sessions: set[LocalSession] = set()

    async def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a previous run
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path=self.path)
        os.chmod(
            self.path, 0o600
        )  # only this user's processes may join rooms without a network hop
        log.info("local channel listening", path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close(DisconnectReason.SERVER_SHUTDOWN)
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def connect_pair(self) -> socket.socket:
        """A connected socket whose other end is served here, as if it had come in on the path.

        Runs the whole channel in one process without a listening socket (tests, embedding).
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: _Connection(self), sock=mine)
        return theirs

    def _admit(
        self, protocol: ServerProtocol, transport: asyncio.WriteTransport, join: JoinRequest
    ) -> LocalSession | None:
        try:
            claims = verify_token(join.token, self.cfg.keys)
            if not claims.video.room_join or not claims.video.room:
                raise InvalidRequest("token does not grant roomJoin for a room")
            room_name = join.room or claims.video.room
            if room_name != claims.video.room:
                raise InvalidRequest("JOIN room differs from the token's room")
            init = participant_init(claims, join.auto_subscribe, LOCAL_CLIENT_PROTOCOL)
            room, participant, events = self.node.join(room_name, init)
        except RoomlineError as exc:
            protocol.fail(exc.message)
            return None
        protocol.accept()
        session = LocalSession(
            self.node, self.cfg, room, participant, protocol, transport, join.subscribe_kinds
        )
        self.sessions.add(session)
        session.log.info("local participant joined", kind=participant.kind.name)
        session.send_signal(rtc.SignalResponse(join=session.join_response()))
        self.node.attach(session)
        self.node.dispatch(events)
        # No ICE here: the participant is connected as soon as it joined.
        self.node.dispatch(room.set_state(participant.sid, ParticipantState.ACTIVE))
        return session

    def _on_event(self, session: LocalSession, event: Event) -> None:
        try:
            if isinstance(event, RtpReceived):
                session.on_rtp(event.track_sid, event.packet)
            elif isinstance(event, SignalRequestReceived):
                session.handle_request(event.request)
            elif isinstance(event, DataReceived):
                session.handle_data(event.payload, reliable=True)
            elif isinstance(event, FrameRejected):
                raise InvalidRequest(event.message)
            elif isinstance(event, ConnectionClosed) and not event.clean:
                session.log.info("local channel closed", reason=event.reason)
        except RoomlineError as exc:
            session.log.info("local frame refused", frame=type(event).__name__, error=exc.message)
            session.send_signal(
                rtc.SignalResponse(
                    request_response=rtc.RequestResponse(
                        reason=rtc.RequestResponse.Reason.INVALID_REQUEST, message=exc.message
                    )
                )
            )


class _Connection(asyncio.Protocol):
    """One connection to the channel: what the loop reads goes to the sans-I/O
    :class:`ServerProtocol` and its events are handled in the same call.

    Until the JOIN (at most :data:`JOIN_TIMEOUT` seconds) frames are only parsed; then the
    participant is admitted or refused (the refusal is written, then the connection closed).
    A bridge worker sends one RTP frame per call every 20 ms: forwarding is synchronous
    (:meth:`sfu.relay.TrackRelay.push`), so no read loop, future or task step is paid per frame.
    """

    def __init__(self, server: LocalChannelServer) -> None:
        self.server = server
        self.protocol = ServerProtocol()
        self.transport: asyncio.Transport | None = None
        self.session: LocalSession | None = None
        self._join_timer: asyncio.TimerHandle | None = None
        self._ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        loop = asyncio.get_running_loop()
        self._join_timer = loop.call_later(JOIN_TIMEOUT, self._join_timeout)

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._handle_events()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is None and self.protocol.state is State.CONNECTING:
            self.protocol.close()
        self._end()

    def _join_timeout(self) -> None:
        self._join_timer = None
        if self.session is None and not self._ended:
            self.protocol.fail(f"no JOIN frame within {JOIN_TIMEOUT:g} s")
            self._refuse()

    def _handle_events(self) -> None:
        for event in self.protocol.events_received():
            session = self.session
            if session is None:
                if isinstance(event, JoinReceived) and not self._ended:
                    self._joined(event.join)
                continue  # nothing else counts before the JOIN
            if self._ended:
                return
            self.server._on_event(session, event)
        session = self.session
        if session is not None and (self.protocol.state is not State.OPEN or session.closed):
            self._end()

    def _joined(self, join: JoinRequest) -> None:
        if self._join_timer is not None:
            self._join_timer.cancel()
            self._join_timer = None
        assert self.transport is not None
        self.session = self.server._admit(self.protocol, self.transport, join)
        if self.session is None:
            self._refuse()

    def _refuse(self) -> None:
        log.info("local join refused", reason=self.protocol.close_reason)
        self._ended = True
        if self.transport is not None:
            stream.flush(self.protocol, self.transport)  # the ERROR frame, then close
            self.transport.close()

    def _end(self) -> None:
        """The connection is over: a participant that did not leave is disconnected."""
        if self._join_timer is not None:
            self._join_timer.cancel()
            self._join_timer = None
        if self._ended:
            return
        self._ended = True
        session = self.session
        if session is not None:
            self.server.sessions.discard(session)
            if not session.closed:
                # The connection ending without a LeaveRequest means the process behind it
                # went away: for a SIP caller that is the bridge worker (the call is lost), for
                # an agent its job.
                kind = session.participant.kind
                reason = UNCLEAN_CLOSE_REASONS.get(kind, DisconnectReason.SIGNAL_CLOSE)
                self.server.node.detach(session, reason)
                session.close(reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

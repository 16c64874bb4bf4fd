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

import structlog
from livekit.protocol import rtc

from roomline.auth import verify_token
from roomline.config import Config
from roomline.errors import InvalidRequest, RoomlineError
from roomline.lifecycle import Service
from roomline.tasks import TaskSet
from roomline.wire import AUDIO_LEVEL_EXT_ID
from sfu.admission import CLIENT_PROTOCOL_DEFAULT, participant_init
from sfu.events import SubscriptionChanged
from sfu.local import stream
from sfu.local.codec import OPUS_PT, RATE
from sfu.local.framing import MAX_FRAME
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

    async def send(self, pkt: SourcePacket, now_ntp: int | None = None) -> bool:
        if not self.session.write_media(self.prefix, pkt.data):
            self.dropped += 1
            return False
        return True

    @property
    def needs_keyframe(self) -> bool:
        return False

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
        writer: asyncio.StreamWriter,
        subscribe_kinds: frozenset[str],
    ) -> None:
        super().__init__(node, cfg, room, participant)
        self.protocol = protocol
        self.writer = writer
        self.subscribe_kinds = subscribe_kinds
        self._published: set[str] = set()
        self._sinks: set[str] = set()
        #: Track sids the client still uses after a move → the sids of the moved tracks.
        self._aliases: dict[str, str] = {}

    def flush(self) -> None:
        """Write what the protocol has queued."""
        stream.flush(self.protocol, self.writer)

    def write_media(self, track_sid: str, packet: bytes) -> bool:
        if self.closed or self.writer.is_closing():
            return False
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
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

    async def on_rtp(self, track_sid: str, packet: bytes) -> None:
        track_sid = self._aliases.get(track_sid, track_sid)
        if track_sid not in self._published:
            raise InvalidRequest(
                f"RTP for track {track_sid!r}, which this participant did not publish"
            )
        relay = self.node.relays.get(track_sid)
        if relay is not None:
            await relay.push(packet)

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
        if not self.writer.is_closing():
            self.writer.close()


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
        self._pair_tasks = TaskSet("local channel")
        self.sessions: set[LocalSession] = set()

    async def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a previous run
        self._server = await asyncio.start_unix_server(
            self._serve, path=self.path, limit=MAX_FRAME + 8
        )
        os.chmod(
            self.path, 0o600
        )  # only this user's processes may join rooms without a network hop
        log.info("local channel listening", path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close(DisconnectReason.SERVER_SHUTDOWN)
        self._pair_tasks.cancel()
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def connect_pair(self) -> socket.socket:
        """A connected socket whose other end is served here, as if it had come in on the path.

        Runs the whole channel in one process without a listening socket (tests, embedding).
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader, writer = await asyncio.open_unix_connection(sock=mine, limit=MAX_FRAME + 8)
        self._pair_tasks.spawn(self._serve(reader, writer), "in-process connection")
        return theirs

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = ServerProtocol()
        try:
            session = await asyncio.wait_for(
                self._handshake(reader, writer, protocol), JOIN_TIMEOUT
            )
        except TimeoutError:
            session = None
            protocol.fail(f"no JOIN frame within {JOIN_TIMEOUT:g} s")
        except (ConnectionError, OSError):
            session = None
            protocol.close()
        if session is None:
            log.info("local join refused", reason=protocol.close_reason)
            await stream.close(protocol, writer)
            return
        # The connection ending without a LeaveRequest means the process behind it went away:
        # for a SIP caller that is the bridge worker (the call is lost), for an agent its job.
        reason = UNCLEAN_CLOSE_REASONS.get(session.participant.kind, DisconnectReason.SIGNAL_CLOSE)
        try:
            while protocol.state is State.OPEN and not session.closed:
                for event in await stream.receive(reader, protocol):
                    await self._on_event(session, event)
        except (ConnectionError, OSError):
            pass
        finally:
            self.sessions.discard(session)
            if not session.closed:
                self.node.detach(session, reason)
                session.close(reason)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ServerProtocol
    ) -> LocalSession | None:
        """Read until the JOIN; admit the participant or refuse (``protocol`` is then CLOSED)."""
        while protocol.state is State.CONNECTING:
            for event in await stream.receive(reader, protocol):
                if isinstance(event, JoinReceived):
                    return self._admit(protocol, writer, event.join)
        return None

    def _admit(
        self, protocol: ServerProtocol, writer: asyncio.StreamWriter, join: JoinRequest
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
            self.node, self.cfg, room, participant, protocol, writer, join.subscribe_kinds
        )
        self.sessions.add(session)
        session.log.info("local participant joined", kind=participant.kind.name)
        session.send_signal(rtc.SignalResponse(join=session.join_response()))
        self.node.attach(session)
        self.node.dispatch(events)
        # No ICE here: the participant is connected as soon as it joined.
        self.node.dispatch(room.set_state(participant.sid, ParticipantState.ACTIVE))
        return session

    async def _on_event(self, session: LocalSession, event: Event) -> None:
        try:
            if isinstance(event, RtpReceived):
                await session.on_rtp(event.track_sid, event.packet)
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

"""Server end of the local participant channel: a Unix socket where each connection is a participant.

SIP bridge workers and agent workers join here instead of over WebRTC. After a JOIN frame carrying a
LiveKit token, the connection speaks the same ``SignalRequest``/``SignalResponse`` messages as ``/rtc``;
media travels as plain RTP (Opus) frames tagged with the track sid, so the SFU treats a local
participant like any other publisher and subscriber, without ICE, DTLS or SRTP.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import structlog
from livekit.protocol import rtc

from roomline.auth import verify_token
from roomline.config import Config
from roomline.errors import InvalidRequest, RoomlineError
from roomline.lifecycle import Service
from roomline.wire import AUDIO_LEVEL_EXT_ID
from sfu.events import SubscriptionChanged
from sfu.local.framing import (
    MAX_FRAME,
    FrameDecoder,
    FrameError,
    Kind,
    decode_rtp,
    encode_frame,
    encode_rtp,
)
from sfu.media.forwarder import SourceInfo, SourcePacket
from sfu.node import Node
from sfu.participant import DisconnectReason, Participant, ParticipantInit, ParticipantState
from sfu.proto import participant_info, room_info
from sfu.relay import TrackRelay
from sfu.room import Room, TrackRequest
from sfu.signal import SignalSession

log = structlog.get_logger(__name__)

#: Opus as local publishers send it: the static-ish PT LiveKit clients use, 48 kHz RTP clock.
LOCAL_OPUS = SourceInfo(
    kind="audio",
    mime="audio/opus",
    clock_rate=48000,
    payload_type=111,
    audio_level_id=AUDIO_LEVEL_EXT_ID,
)
#: A JOIN frame must arrive this fast after connecting (seconds).
JOIN_TIMEOUT = 5.0
#: Bytes queued towards a slow local client before its media is dropped (signal is never dropped).
MAX_WRITE_BACKLOG = 2 * 1024 * 1024


class LocalSink:
    """Forwards one track to a local participant as RTP frames (no rewriting on this hop)."""

    __slots__ = ("session", "prefix", "dropped")

    def __init__(self, session: LocalSession, track_sid: str) -> None:
        self.session = session
        self.prefix = track_sid
        self.dropped = 0

    async def send(self, pkt: SourcePacket, now_ntp: int | None = None) -> bool:
        if not self.session.write_media(encode_rtp(self.prefix, pkt.data)):
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
        writer: asyncio.StreamWriter,
        subscribe_kinds: frozenset[str],
    ) -> None:
        super().__init__(node, cfg, room, participant)
        self.writer = writer
        self.subscribe_kinds = subscribe_kinds
        self._published: set[str] = set()
        self._sinks: set[str] = set()
        #: Track sids the client still uses after a move → the sids of the moved tracks.
        self._aliases: dict[str, str] = {}

    def _write(self, frame: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame)

    def write_media(self, frame: bytes) -> bool:
        if self.closed or self.writer.is_closing():
            return False
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
            return False  # a stalled client loses media, never the SFU's memory
        self.writer.write(frame)
        return True

    def send_wire(self, wire: bytes) -> None:
        if not self.closed:
            self._write(encode_frame(Kind.SIGNAL, wire))

    def send_data(self, packet: bytes, reliable: bool) -> None:
        if not self.closed:
            self._write(encode_frame(Kind.DATA, packet))

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
        init = ParticipantInit(
            identity=old.identity,
            name=old.name,
            metadata=old.metadata,
            attributes=dict(old.attributes),
            kind=old.kind,
            permission=old.permission,
            auto_subscribe=old.auto_subscribe,
            client_protocol=old.client_protocol,
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

    async def on_rtp_frame(self, payload: bytes) -> None:
        track_sid, packet = decode_rtp(payload)
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
        if not self.writer.is_closing():
            self.writer.close()


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
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def _refuse(self, writer: asyncio.StreamWriter, message: str) -> None:
        log.info("local join refused", reason=message)
        writer.write(encode_frame(Kind.ERROR, message.encode()))
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _read_join(
        self, reader: asyncio.StreamReader, decoder: FrameDecoder
    ) -> dict[str, Any]:
        while True:
            data = await reader.read(65536)
            if not data:
                raise InvalidRequest("connection closed before JOIN")
            frames = decoder.feed(data)
            if frames:
                kind, payload = frames[0]
                if kind != Kind.JOIN:
                    raise InvalidRequest(f"first frame must be JOIN, got kind {kind}")
                if len(frames) > 1:
                    raise InvalidRequest("frames sent before the join was answered")
                try:
                    join = json.loads(payload)
                except ValueError:
                    raise InvalidRequest("JOIN payload is not JSON") from None
                if not isinstance(join, dict) or not isinstance(join.get("token"), str):
                    raise InvalidRequest("JOIN needs a JSON object with a string 'token'")
                return join

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        try:
            join = await asyncio.wait_for(self._read_join(reader, decoder), JOIN_TIMEOUT)
            claims = verify_token(join["token"], self.cfg.keys)
            if not claims.video.room_join or not claims.video.room:
                raise InvalidRequest("token does not grant roomJoin for a room")
            room_name = join.get("room") or claims.video.room
            if room_name != claims.video.room:
                raise InvalidRequest("JOIN room differs from the token's room")
            from sfu.rtc.service import participant_init

            init = participant_init(claims, bool(join.get("auto_subscribe", True)), 2)
            room, participant, events = self.node.join(room_name, init)
        except TimeoutError:
            await self._refuse(writer, "no JOIN frame within 5 s")
            return
        except (RoomlineError, FrameError) as exc:
            await self._refuse(writer, exc.message)
            return
        kinds = join.get("subscribe_kinds") or ["audio", "video"]
        session = LocalSession(
            self.node, self.cfg, room, participant, writer, frozenset(map(str, kinds))
        )
        self.sessions.add(session)
        session.log.info("local participant joined", kind=participant.kind.name)
        session.send_signal(rtc.SignalResponse(join=session.join_response()))
        self.node.attach(session)
        self.node.dispatch(events)
        # No ICE here: the participant is connected as soon as it joined.
        self.node.dispatch(room.set_state(participant.sid, ParticipantState.ACTIVE))
        reason = DisconnectReason.SIGNAL_CLOSE
        try:
            while not session.closed:
                data = await reader.read(65536)
                if not data:
                    break
                for kind, payload in decoder.feed(data):
                    await self._on_frame(session, kind, payload)
        except FrameError as exc:
            session.log.info("local channel framing error", error=exc.message)
        except (ConnectionError, OSError):
            pass
        finally:
            self.sessions.discard(session)
            if not session.closed:
                self.node.detach(session, reason)
                session.close(reason)

    async def _on_frame(self, session: LocalSession, kind: int, payload: bytes) -> None:
        try:
            if kind == Kind.RTP:
                await session.on_rtp_frame(payload)
            elif kind == Kind.SIGNAL:
                req = rtc.SignalRequest()
                try:
                    req.ParseFromString(payload)
                except Exception:
                    raise InvalidRequest("malformed SignalRequest") from None
                session.handle_request(req)
            elif kind == Kind.DATA:
                session.handle_data(payload, reliable=True)
            else:
                raise InvalidRequest(f"unknown frame kind {kind}")
        except RoomlineError as exc:
            session.log.info("local frame refused", kind=kind, error=exc.message)
            session.send_signal(
                rtc.SignalResponse(
                    request_response=rtc.RequestResponse(
                        reason=rtc.RequestResponse.Reason.INVALID_REQUEST, message=exc.message
                    )
                )
            )

"""An agent's view of its room, shaped like ``livekit.rtc.Room`` (the subset agents need).

The room talks to the SFU over the local participant channel (:mod:`sfu.local.client`): a JOIN
asking for audio only, then ``SignalRequest``/``SignalResponse`` protobufs exactly as on ``/rtc``,
RTP frames tagged with a track sid and DATA frames carrying ``DataPacket``. Received RTP carries
the *remote* track sid; the ``join``/``update`` messages say which participant published it, which
is how every frame an agent receives is attributed to a speaker. Participants, tracks and
publications live in :mod:`~roomline_agents.sdk.participant`, :mod:`~roomline_agents.sdk.track`
and :mod:`~roomline_agents.sdk.track_publication`, as in ``livekit.rtc``.

Events (``room.on(name)``), with the arguments ``livekit.rtc`` passes:

* ``participant_connected(participant)``, ``participant_disconnected(participant)``
* ``track_published(publication, participant)``, ``track_unpublished(publication, participant)``
* ``track_subscribed(track, publication, participant)``, ``track_unsubscribed(...)`` (same)
* ``track_muted(participant, publication)``, ``track_unmuted(participant, publication)``
* ``participant_attributes_changed(changed_attributes, participant)`` (local participant too)
* ``participant_metadata_changed(participant, old, new)``, ``participant_name_changed(...)``
* ``data_received(DataPacket)``, ``sip_dtmf_received(SipDTMF)``
* ``active_speakers_changed(speakers)``, ``room_metadata_changed(old, new)``
* ``connected()``, ``disconnected(reason)``
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import socket
from dataclasses import dataclass
from typing import Any

from livekit.protocol import models, rtc

from roomline.errors import RoomlineError
from roomline_agents.sdk.event_emitter import EventEmitter
from roomline_agents.sdk.participant import (
    LocalParticipant,
    Participant,
    PublishError,
    RemoteParticipant,
)
from roomline_agents.sdk.track import RemoteAudioTrack, TrackKind, TrackSource
from roomline_agents.sdk.track_publication import RemoteTrackPublication
from sfu.local.client import ChannelClient

log = logging.getLogger("roomline_agents.sdk")

#: Seconds to wait for the SFU to answer a join, an add_track or an update_metadata.
REQUEST_TIMEOUT = 10.0


class ConnectError(RoomlineError):
    """Joining the room failed (``livekit.rtc.ConnectError``)."""


class ConnectionState(enum.IntEnum):
    CONN_DISCONNECTED = 0
    CONN_CONNECTED = 1


class DataPacketKind(enum.IntEnum):
    KIND_LOSSY = 0
    KIND_RELIABLE = 1


@dataclass
class RoomOptions:
    """``auto_subscribe``: receive every remote audio track without asking."""

    auto_subscribe: bool = True


@dataclass
class DataPacket:
    data: bytes
    kind: int
    participant: RemoteParticipant | None
    topic: str | None = None


@dataclass
class SipDTMF:
    code: int
    digit: str
    participant: RemoteParticipant | None = None


class Room(EventEmitter):
    """One room as seen by an agent (``livekit.rtc.Room``)."""

    def __init__(self) -> None:
        super().__init__()
        self._channel: ChannelClient | None = None
        self._local: LocalParticipant | None = None
        self._remote: dict[str, RemoteParticipant] = {}  # by identity
        self._by_sid: dict[str, RemoteParticipant] = {}
        self._tracks: dict[str, tuple[RemoteAudioTrack, RemoteTrackPublication]] = {}
        self._room_info = models.Room()
        self._auto_subscribe = True
        self._joined: asyncio.Future[rtc.JoinResponse] | None = None
        self._pending_tracks: dict[str, asyncio.Future[models.TrackInfo]] = {}
        self._pending_requests: dict[int, asyncio.Future[None]] = {}
        self._request_ids = itertools.count(1)
        self._state = ConnectionState.CONN_DISCONNECTED
        self.disconnect_reason = 0
        self.unknown_rtp = 0

    # ---- views
    @property
    def name(self) -> str:
        return self._room_info.name

    @property
    def sid(self) -> str:
        return self._room_info.sid

    @property
    def metadata(self) -> str:
        return self._room_info.metadata

    @property
    def local_participant(self) -> LocalParticipant:
        if self._local is None:
            raise ConnectError("not connected")
        return self._local

    @property
    def remote_participants(self) -> dict[str, RemoteParticipant]:
        return dict(self._remote)

    @property
    def connection_state(self) -> ConnectionState:
        return self._state

    def isconnected(self) -> bool:
        return self._state == ConnectionState.CONN_CONNECTED

    # ---- connect / disconnect
    async def _connect(self, sock: socket.socket, token: str, options: RoomOptions) -> None:
        """Join over an already connected local-channel socket (see ``JobContext.connect``)."""
        loop = asyncio.get_running_loop()
        self._auto_subscribe = options.auto_subscribe
        self._joined = loop.create_future()
        self._channel = ChannelClient(
            on_signal=self._on_signal,
            on_rtp=self._on_rtp,
            on_data=self._on_data,
            on_closed=self._on_closed,
        )
        # Audio only: the SFU does not forward video an agent could not decode anyway.
        await self._channel.connect_socket(
            sock, token, auto_subscribe=options.auto_subscribe, subscribe_kinds=["audio"]
        )
        try:
            await asyncio.wait_for(self._joined, REQUEST_TIMEOUT)
        except TimeoutError:
            self._channel.close()
            raise ConnectError("the SFU did not answer the join") from None
        self.emit("connected")

    def _on_join(self, resp: rtc.JoinResponse) -> None:
        # Applied as it arrives, not when _connect resumes: updates read in the same chunk as the
        # join (our own ACTIVE state, for one) must already know who the local participant is.
        self._room_info.CopyFrom(resp.room)
        self._local = LocalParticipant(self, resp.participant)
        self._state = ConnectionState.CONN_CONNECTED
        for info in resp.other_participants:
            self._apply_participant(info, announce=False)

    async def disconnect(self) -> None:
        """Leave the room (the SFU removes us with CLIENT_INITIATED)."""
        if self._channel is None or self._state == ConnectionState.CONN_DISCONNECTED:
            return
        self._send(
            rtc.SignalRequest(
                leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)
            )
        )
        await asyncio.sleep(0)  # let the transport write the leave before closing
        self._channel.close()
        self._finish(1)

    def _on_closed(self, reason: str) -> None:
        if self._joined is not None and not self._joined.done():
            self._joined.set_exception(ConnectError(reason))
            return
        self._finish(self.disconnect_reason)

    def _finish(self, reason: int) -> None:
        if self._state == ConnectionState.CONN_DISCONNECTED:
            return
        self._state = ConnectionState.CONN_DISCONNECTED
        self.disconnect_reason = reason
        for track, _pub in self._tracks.values():
            track._end()
        self._tracks.clear()
        if self._local is not None:
            for pub in self._local.track_publications.values():
                if pub._pump is not None:
                    pub._pump.cancel()
        pending: list[asyncio.Future[Any]] = [
            *self._pending_tracks.values(),
            *self._pending_requests.values(),
        ]
        for fut in pending:
            if not fut.done():
                fut.set_exception(ConnectError("disconnected"))
        self.emit("disconnected", reason)

    # ---- outgoing
    def _send(self, req: rtc.SignalRequest) -> None:
        if self._channel is None:
            raise ConnectError("not connected")
        self._channel.send_signal(req)

    def _send_data(self, pkt: models.DataPacket) -> None:
        if self._channel is None or not self.isconnected():
            raise ConnectError("not connected")
        self._channel.send_data(pkt)

    def _send_rtp(self, track_sid: str, packet: bytes) -> None:
        if self._channel is not None:
            self._channel.send_rtp(track_sid, packet)

    async def _add_track(self, req: rtc.AddTrackRequest) -> models.TrackInfo:
        fut: asyncio.Future[models.TrackInfo] = asyncio.get_running_loop().create_future()
        self._pending_tracks[req.cid] = fut
        try:
            self._send(rtc.SignalRequest(add_track=req))
            return await asyncio.wait_for(fut, REQUEST_TIMEOUT)
        finally:
            self._pending_tracks.pop(req.cid, None)

    async def _update_metadata(
        self,
        name: str = "",
        metadata: str = "",
        attributes: dict[str, str] | None = None,
    ) -> None:
        request_id = next(self._request_ids)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_requests[request_id] = fut
        req = rtc.UpdateParticipantMetadata(
            name=name, metadata=metadata, attributes=attributes or {}, request_id=request_id
        )
        try:
            self._send(rtc.SignalRequest(update_metadata=req))
            await asyncio.wait_for(fut, REQUEST_TIMEOUT)
        finally:
            self._pending_requests.pop(request_id, None)

    # ---- incoming
    def _on_signal(self, msg: rtc.SignalResponse) -> None:
        which = msg.WhichOneof("message")
        if which == "join":
            if self._joined is not None and not self._joined.done():
                self._on_join(msg.join)
                self._joined.set_result(msg.join)
        elif which == "update":
            for info in msg.update.participants:
                self._apply_participant(info, announce=True)
        elif which == "track_published":
            fut = self._pending_tracks.get(msg.track_published.cid)
            if fut is not None and not fut.done():
                fut.set_result(msg.track_published.track)
        elif which == "request_response":
            self._on_request_response(msg.request_response)
        elif which == "leave":
            self.disconnect_reason = msg.leave.reason
        elif which == "room_update":
            old = self._room_info.metadata
            self._room_info.CopyFrom(msg.room_update.room)
            if old != self._room_info.metadata:
                self.emit("room_metadata_changed", old, self._room_info.metadata)
        elif which == "speakers_changed":
            speakers = [
                p
                for s in msg.speakers_changed.speakers
                if s.active and (p := self._participant_by_sid(s.sid)) is not None
            ]
            self.emit("active_speakers_changed", speakers)

    def _participant_by_sid(self, sid: str) -> Participant | None:
        if self._local is not None and self._local.sid == sid:
            return self._local
        return self._by_sid.get(sid)

    def _on_request_response(self, rr: rtc.RequestResponse) -> None:
        ok = rr.reason == rtc.RequestResponse.Reason.OK
        if rr.HasField("add_track"):
            fut_t = self._pending_tracks.get(rr.add_track.cid)
            if fut_t is not None and not fut_t.done():
                fut_t.set_exception(PublishError(rr.message or "add_track refused"))
            return
        fut = self._pending_requests.get(rr.request_id)
        if fut is None or fut.done():
            if not ok:
                log.info("request refused by the SFU: %s", rr.message)
            return
        if ok:
            fut.set_result(None)
        else:
            fut.set_exception(PublishError(rr.message or "request refused"))

    def _apply_participant(self, info: models.ParticipantInfo, announce: bool) -> None:
        if self._local is not None and info.identity == self._local.identity:
            if info.sid == self._local.sid and info.version >= self._local._info.version:
                self._update_info(self._local, info)
            return
        rp = self._remote.get(info.identity)
        if info.state == models.ParticipantInfo.State.DISCONNECTED:
            if rp is not None and rp.sid == info.sid:
                self._remove_participant(rp, int(info.disconnect_reason))
            return
        if rp is not None and rp.sid != info.sid:  # same identity rejoined: the old one is gone
            self._remove_participant(rp, 2)
            rp = None
        if rp is None:
            rp = RemoteParticipant(info)
            self._remote[info.identity] = rp
            self._by_sid[info.sid] = rp
            if announce:
                self.emit("participant_connected", rp)
        elif info.version < rp._info.version:
            return  # stale update
        else:
            self._update_info(rp, info)
        self._sync_tracks(rp, info)

    def _update_info(self, p: Participant, info: models.ParticipantInfo) -> None:
        old = p._info
        p._info = models.ParticipantInfo()
        p._info.CopyFrom(info)
        changed = {k: v for k, v in info.attributes.items() if old.attributes.get(k) != v}
        changed.update({k: "" for k in old.attributes if k not in info.attributes})
        if changed:
            self.emit("participant_attributes_changed", changed, p)
        if old.metadata != info.metadata:
            self.emit("participant_metadata_changed", p, old.metadata, info.metadata)
        if old.name != info.name:
            self.emit("participant_name_changed", p, old.name, info.name)

    def _sync_tracks(self, rp: RemoteParticipant, info: models.ParticipantInfo) -> None:
        seen = set()
        for ti in info.tracks:
            seen.add(ti.sid)
            pub = rp.track_publications.get(ti.sid)
            if pub is None:
                kind = (
                    TrackKind.KIND_AUDIO
                    if ti.type == models.TrackType.AUDIO
                    else (TrackKind.KIND_VIDEO)
                )
                source = int(ti.source) if ti.source in TrackSource._value2member_map_ else 0
                pub = RemoteTrackPublication(
                    sid=ti.sid,
                    name=ti.name,
                    kind=kind,
                    source=TrackSource(source),
                    muted=ti.muted,
                    mime_type=ti.mime_type,
                )
                rp.track_publications[ti.sid] = pub
                self.emit("track_published", pub, rp)
                if kind == TrackKind.KIND_AUDIO and self._auto_subscribe:
                    track = RemoteAudioTrack(ti.sid, ti.name)
                    pub.track = track
                    self._tracks[ti.sid] = (track, pub)
                    self.emit("track_subscribed", track, pub, rp)
            elif pub.muted != ti.muted:
                pub.muted = ti.muted
                if pub.track is not None:
                    pub.track.muted = ti.muted
                self.emit("track_muted" if ti.muted else "track_unmuted", rp, pub)
        for sid in [s for s in rp.track_publications if s not in seen]:
            self._drop_track(rp, rp.track_publications.pop(sid))

    def _drop_track(self, rp: RemoteParticipant, pub: RemoteTrackPublication) -> None:
        entry = self._tracks.pop(pub.sid, None)
        if entry is not None:
            track = entry[0]
            track._end()
            pub.track = None
            self.emit("track_unsubscribed", track, pub, rp)
        self.emit("track_unpublished", pub, rp)

    def _remove_participant(self, rp: RemoteParticipant, reason: int) -> None:
        for pub in list(rp.track_publications.values()):
            self._drop_track(rp, pub)
        rp.track_publications.clear()
        rp.disconnect_reason = reason
        self._remote.pop(rp.identity, None)
        self._by_sid.pop(rp.sid, None)
        self.emit("participant_disconnected", rp)

    def _on_rtp(self, sid: str, packet: bytes) -> None:
        entry = self._tracks.get(sid)
        if entry is None:
            self.unknown_rtp += 1
            return
        entry[0]._on_rtp(packet)

    def _on_data(self, pkt: models.DataPacket) -> None:
        which = pkt.WhichOneof("value")
        sender = self._remote.get(pkt.participant_identity)
        if which == "user":
            self.emit(
                "data_received",
                DataPacket(
                    data=bytes(pkt.user.payload),
                    kind=DataPacketKind.KIND_RELIABLE
                    if pkt.kind == models.DataPacket.Kind.RELIABLE
                    else DataPacketKind.KIND_LOSSY,
                    participant=sender,
                    topic=pkt.user.topic,
                ),
            )
        elif which == "sip_dtmf":
            self.emit(
                "sip_dtmf_received",
                SipDTMF(code=pkt.sip_dtmf.code, digit=pkt.sip_dtmf.digit, participant=sender),
            )

    def __repr__(self) -> str:
        return f"Room(name={self.name!r}, state={self._state.name})"

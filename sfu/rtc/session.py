"""A LiveKit client over ``/rtc``: WebSocket signalling plus two aiortc PeerConnections.

Classic (v0) two-PeerConnection mode, subscriber-primary like LiveKit server: the client offers on its
publisher PC, the server offers on the subscriber PC (which also carries the server-created
``_reliable``/``_lossy`` data channels). Media is never decoded: publisher RTP is tapped before aiortc's
jitter buffer and forwarded through :class:`sfu.relay.TrackRelay` (see :mod:`sfu.rtc.tracks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.sdp import candidate_from_sdp
from google.protobuf import json_format
from livekit.protocol import rtc

from roomline.config import Config
from roomline.errors import InvalidRequest, RoomlineError
from roomline.tasks import TaskSet
from sfu.events import SubscriptionChanged
from sfu.media.aiortc import PublishedTrackTap, SubscriberSender
from sfu.node import Node
from sfu.participant import DisconnectReason, Participant, ParticipantState
from sfu.room import Room
from sfu.rtc.sdp import MediaSection, SdpError, advertise_ip, parse_media_sections
from sfu.rtc.tracks import relay_published_track, subscribe_to_relay
from sfu.signal import SignalSession, reason_for, request_response

#: Codecs the SFU forwards (aiortc can negotiate them; JoinResponse restricts clients to them).
FORWARDABLE = {"opus", "vp8", "h264"}
#: Trickled candidates kept while no remote description exists; a client sends a handful.
MAX_QUEUED_CANDIDATES = 64
#: Seconds a publisher offer waits for the previous DTLS handshake (clients give up after 15 s).
PUBLISHER_CONNECT_TIMEOUT = 10.0
#: Outgoing signal messages buffered for a slow client before it is disconnected.
MAX_SIGNAL_BACKLOG = 1024

_REASONS = rtc.RequestResponse.Reason
PUBLISHER = rtc.SignalTarget.PUBLISHER
SUBSCRIBER = rtc.SignalTarget.SUBSCRIBER


class RTCSession(SignalSession):
    """One WebRTC participant."""

    def __init__(
        self,
        node: Node,
        cfg: Config,
        room: Room,
        participant: Participant,
        ws: web.WebSocketResponse,
    ) -> None:
        super().__init__(node, cfg, room, participant)
        self.ws = ws
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_SIGNAL_BACKLOG)
        ice_servers = [
            RTCIceServer(
                urls=list(s.urls), username=s.username or None, credential=s.credential or None
            )
            for s in cfg.rtc.ice_servers
        ]
        # Publisher (client offers): MAX_BUNDLE, because with aiortc's default (BALANCED) a
        # second video m-line in one offer keeps a discarded transport and never receives RTP.
        self.publisher = RTCPeerConnection(
            RTCConfiguration(iceServers=ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        # Subscriber (server offers): MAX_BUNDLE too. With BALANCED, aiortc gives the first
        # audio (or video) m-line its own transport and every later m-line of that kind *shares
        # it, marked bundled*; when the answer bundles the first one onto the data channels'
        # transport, the shared one is stopped and the later m-lines, already "bundled", are
        # never moved: their senders never start. Two tracks of one kind reaching a subscriber
        # before the answer for the first (a late joiner's batch, or a caller's track bound while
        # the talker's offer is in flight) left the second one silent.
        self.subscriber = RTCPeerConnection(
            RTCConfiguration(iceServers=ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._tasks = TaskSet("signal session")
        self._pending_candidates: dict[int, list[dict[str, Any]]] = {PUBLISHER: [], SUBSCRIBER: []}
        # Subscriber negotiation: one offer in flight, re-offer if something changed meanwhile.
        self._offer_id = 0
        self._offer_in_flight = False
        self._renegotiate = False
        self._negotiation_scheduled = False
        self._senders: dict[str, SubscriberSender] = {}
        # Tracks join the subscriber PC only once its transport is connected: aiortc starts a
        # sender only if DTLS is already up when the answer adding it is applied, so a track
        # negotiated while the first handshake is still running would never be sent.
        self._transport_ready = False
        self._deferred: dict[str, SubscriptionChanged] = {}
        self._publisher_settled = asyncio.Event()
        # Publisher side: mid -> track sid of tracks whose media is bound.
        self._published_mids: dict[str, str] = {}
        self._reliable: RTCDataChannel = self.subscriber.createDataChannel(
            "_reliable", ordered=True
        )
        self._lossy: RTCDataChannel = self.subscriber.createDataChannel(
            "_lossy", ordered=False, maxRetransmits=0
        )
        self.publisher.on("datachannel", self._on_datachannel)
        self.subscriber.on("connectionstatechange", self._on_subscriber_state)
        self.publisher.on("connectionstatechange", self._on_publisher_state)

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        self._tasks.spawn(self._guard(coro, what), what)

    async def _guard(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except RoomlineError as exc:
            self.log.info(f"{what} failed", error=exc.message)
            self.send_signal(request_response(reason_for(exc), f"{what}: {exc.message}"))
        except Exception as exc:
            self.log.exception(f"{what} failed")
            self.send_signal(request_response(_REASONS.UNCLASSIFIED_ERROR, f"{what}: {exc}"))

    def send_wire(self, wire: bytes) -> None:
        if self.closed:
            return
        try:
            self._out.put_nowait(wire)
        except asyncio.QueueFull:
            self.log.warning("signal backlog full, disconnecting slow client")
            self.node.detach(self, DisconnectReason.SIGNAL_CLOSE)
            self.close(DisconnectReason.SIGNAL_CLOSE)

    async def run(self) -> None:
        """Serve the WebSocket until it closes. The JoinResponse was queued before."""
        writer = asyncio.get_running_loop().create_task(self._writer())
        self._schedule_negotiation()  # subscriber-primary: offer at once, even without tracks
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    self._on_frame(msg.data, binary=True)
                elif msg.type == WSMsgType.TEXT:
                    self._on_frame(msg.data.encode(), binary=False)
                elif msg.type == WSMsgType.ERROR:
                    self.log.info("websocket error", error=str(self.ws.exception()))
                    break
        finally:
            if not self.closed:
                self.node.detach(self, DisconnectReason.SIGNAL_CLOSE)
                self.close(DisconnectReason.SIGNAL_CLOSE)
            await writer
            await self._shutdown()

    async def _writer(self) -> None:
        while True:
            data = await self._out.get()
            if data is None:
                break
            try:
                await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                break
        if not self.ws.closed:
            await self.ws.close()

    def _on_frame(self, data: bytes, binary: bool) -> None:
        req = rtc.SignalRequest()
        try:
            if binary:
                req.ParseFromString(data)
            else:
                json_format.Parse(data.decode("utf-8"), req, ignore_unknown_fields=True)
        except Exception as exc:
            self.log.info("malformed signal message", size=len(data), error=str(exc)[:200])
            self.send_signal(
                request_response(
                    _REASONS.INVALID_REQUEST,
                    f"malformed signal message ({len(data)} bytes): not a SignalRequest",
                )
            )
            return
        self.handle_request(req)

    # ------------------------------------------------------------------ negotiation

    def _advertised(self, sdp: str) -> str:
        node_ip = self.cfg.rtc.node_ip
        return advertise_ip(sdp, node_ip) if node_ip else sdp

    def on_offer(self, sd: rtc.SessionDescription) -> None:
        self._spawn(self._answer_publisher(sd), "publisher offer")

    def on_answer(self, sd: rtc.SessionDescription) -> None:
        self._spawn(self._apply_subscriber_answer(sd), "subscriber answer")

    def on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        try:
            init = json.loads(trickle.candidateInit or "{}")
        except ValueError:
            raise InvalidRequest("trickle candidateInit is not JSON") from None
        if not isinstance(init, dict) or not init.get("candidate"):
            return  # end-of-candidates or an empty candidate: nothing to add
        pc = self.subscriber if trickle.target == SUBSCRIBER else self.publisher
        if pc.remoteDescription is None:
            queue = self._pending_candidates[trickle.target]
            if len(queue) < MAX_QUEUED_CANDIDATES:
                queue.append(init)
            return
        self._spawn(self._add_candidate(pc, init), "trickle")

    async def _add_candidate(self, pc: RTCPeerConnection, init: dict[str, Any]) -> None:
        text = str(init["candidate"])
        try:
            candidate = candidate_from_sdp(
                text.split(":", 1)[1] if text.startswith("candidate:") else text
            )
        except (ValueError, IndexError):
            raise InvalidRequest(f"malformed ICE candidate {text[:80]!r}") from None
        candidate.sdpMid = init.get("sdpMid")
        index = init.get("sdpMLineIndex")
        candidate.sdpMLineIndex = index if isinstance(index, int) else None
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        # With MAX_BUNDLE every m-line shares one ICE transport. aiortc's addIceCandidate skips
        # "bundled" m-lines by sdpMid, which drops candidates a client trickles for its first mid,
        # so hand them to the bundle transport directly (public ORTC-style objects).
        if pc.sctp is not None:
            ice = pc.sctp.transport.transport
        else:
            transceivers = pc.getTransceivers()
            if not transceivers:
                return
            ice = transceivers[0].receiver.transport.transport
        try:
            await ice.addRemoteCandidate(candidate)
        except ValueError as exc:  # aioice refuses candidates after end-of-candidates
            self.log.debug("candidate ignored", error=str(exc))

    async def _flush_candidates(self, target: int) -> None:
        pc = self.subscriber if target == SUBSCRIBER else self.publisher
        queued, self._pending_candidates[target] = self._pending_candidates[target], []
        for init in queued:
            await self._add_candidate(pc, init)

    def _schedule_negotiation(self) -> None:
        """Coalesce subscription changes of one event batch into one subscriber offer."""
        self._renegotiate = True
        if self._offer_in_flight or self._negotiation_scheduled or self.closed:
            return
        self._negotiation_scheduled = True
        self._spawn(self._offer_subscriber(), "subscriber offer")

    async def _offer_subscriber(self) -> None:
        self._negotiation_scheduled = False
        if self._offer_in_flight or self.closed:
            return
        self._offer_in_flight = True
        self._renegotiate = False
        offer = await self.subscriber.createOffer()
        await self.subscriber.setLocalDescription(offer)
        self._offer_id += 1
        sdp = self._advertised(self.subscriber.localDescription.sdp)
        self.log.debug("subscriber offer", id=self._offer_id, sdp=sdp)
        self.send_signal(
            rtc.SignalResponse(
                offer=rtc.SessionDescription(type="offer", sdp=sdp, id=self._offer_id)
            )
        )

    async def _apply_subscriber_answer(self, sd: rtc.SessionDescription) -> None:
        if sd.type != "answer" or not self._offer_in_flight:
            raise InvalidRequest("unexpected subscriber answer")
        if sd.id and sd.id != self._offer_id:
            self.log.info("stale subscriber answer ignored", id=sd.id, expected=self._offer_id)
            return
        parse_media_sections(sd.sdp)
        await self.subscriber.setRemoteDescription(RTCSessionDescription(sdp=sd.sdp, type="answer"))
        self._offer_in_flight = False
        await self._flush_candidates(SUBSCRIBER)
        self.node.dispatch(self.room.set_state(self.participant.sid, ParticipantState.JOINED))
        if self._renegotiate:
            self._schedule_negotiation()

    async def _answer_publisher(self, sd: rtc.SessionDescription) -> None:
        if sd.type != "offer":
            raise InvalidRequest(f"expected an offer, got {sd.type!r}")
        sections = parse_media_sections(sd.sdp)
        self.log.debug("publisher offer", id=sd.id, sdp=sd.sdp)
        refused = [
            s
            for s in sections
            if s.kind in ("audio", "video") and s.sending and not FORWARDABLE.intersection(s.codecs)
        ]
        if self.publisher.connectionState == "connecting":
            # Same aiortc limit on the receive side: a receiver added while DTLS is connecting is
            # never started. Let the handshake finish first (bounded, like the clients' timeout).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publisher_settled.wait(), PUBLISHER_CONNECT_TIMEOUT)
        for section in refused:
            self.send_signal(
                request_response(
                    _REASONS.UNSUPPORTED_TYPE,
                    f"m-section {section.mid or section.index} offers only unsupported "
                    f"codecs ({', '.join(section.codecs) or 'none'}); "
                    "roomline forwards opus, VP8 and H264",
                )
            )
        media = [s for s in sections if s.kind in ("audio", "video") and s.sending]
        if refused and len(refused) == len(media):
            return  # nothing to receive; aiortc would fail on the codec-less m-lines anyway
        try:
            await self.publisher.setRemoteDescription(
                RTCSessionDescription(sdp=sd.sdp, type="offer")
            )
            answer = await self.publisher.createAnswer()
            await self.publisher.setLocalDescription(answer)
        except (ValueError, SdpError, InvalidAccessError, InvalidStateError, OperationError) as exc:
            raise InvalidRequest(f"offer rejected: {exc}") from None
        sdp = self._advertised(self.publisher.localDescription.sdp)
        self.send_signal(
            rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=sdp, id=sd.id))
        )
        await self._flush_candidates(PUBLISHER)
        self._reconcile_publications([s for s in sections if s not in refused])

    def _reconcile_publications(self, sections: list[MediaSection]) -> None:
        """Bind new sending m-sections to AddTrack'ed publications; unpublish stopped ones."""
        transceivers = {t.mid: t for t in self.publisher.getTransceivers() if t.mid is not None}
        for section in sections:
            if section.kind not in ("audio", "video"):
                continue
            bound = self._published_mids.get(section.mid)
            if bound is not None:
                if not section.sending:
                    self._unpublish(section.mid, bound)
                continue
            if not section.sending:
                continue
            transceiver = transceivers.get(section.mid)
            if transceiver is None:
                continue
            track = self.participant.track_by_cid(section.track_id) if section.track_id else None
            if track is None or track.bound:
                # Rust SDK / unknown msid: the first unbound publication of the same kind (as SV).
                kind = 0 if section.kind == "audio" else 1
                track = next(
                    (
                        t
                        for t in self.participant.tracks.values()
                        if not t.bound and int(t.type) == kind
                    ),
                    None,
                )
            if track is None:
                self.log.info(
                    "media without AddTrack ignored", mid=section.mid, cid=section.track_id
                )
                continue
            relay = relay_published_track(
                PublishedTrackTap(transceiver), track.sid, self.participant.sid
            )
            self.node.relays[track.sid] = relay
            self._published_mids[section.mid] = track.sid
            self.node.dispatch(
                self.room.bind_track(
                    self.participant.sid, track.sid, relay.source.mime, section.mid
                )
            )

    def _unpublish(self, mid: str, track_sid: str) -> None:
        self.log.info("track unpublished by renegotiation", mid=mid, track=track_sid)
        del self._published_mids[mid]
        if track_sid in self.participant.tracks:
            self.node.dispatch(self.room.unpublish_track(self.participant.sid, track_sid))
        relay = self.node.relays.pop(track_sid, None)
        if relay is not None:
            relay.close()

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, event: SubscriptionChanged) -> None:
        if not self._transport_ready:
            self._deferred[event.track_sid] = event
            return
        relay = self.node.relays.get(event.track_sid)
        if relay is None:
            self.log.warning("subscription to a track without media", track=event.track_sid)
            return
        self._senders[event.track_sid] = subscribe_to_relay(
            self.subscriber, relay, self.participant.sid
        )
        self._schedule_negotiation()

    def unsubscribe(self, event: SubscriptionChanged) -> None:
        self._deferred.pop(event.track_sid, None)
        sender = self._senders.pop(event.track_sid, None)
        relay = self.node.relays.get(event.track_sid)
        if relay is not None:
            relay.remove_sink(self.participant.sid)
        elif sender is not None:
            sender.close()
        if sender is not None and not self.closed:
            sender.transceiver.direction = "inactive"
            self._schedule_negotiation()

    def set_track_settings(self, track_sids: list[str], disabled: bool) -> None:
        for track_sid in track_sids:
            sender = self._senders.get(track_sid)
            if sender is None:
                continue
            if disabled:
                sender.pause()
            else:
                sender.resume()
                relay = self.node.relays.get(track_sid)
                if relay is not None and relay.source.kind == "video":
                    relay.request_keyframe()

    # ------------------------------------------------------------------ data

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        reliable = channel.label != "_lossy"

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            if isinstance(message, str):
                message = message.encode()
            self.handle_data(message, reliable)

    def send_data(self, packet: bytes, reliable: bool) -> None:
        channel = self._reliable if reliable else self._lossy
        if channel.readyState == "open":
            channel.send(packet)

    # ------------------------------------------------------------------ state

    async def _on_subscriber_state(self) -> None:
        state = self.subscriber.connectionState
        self.log.debug("subscriber pc", state=state)
        if state == "connected":
            if not self._transport_ready:
                self._transport_ready = True
                deferred, self._deferred = self._deferred, {}
                for event in deferred.values():
                    self.subscribe(event)
            self.node.dispatch(self.room.set_state(self.participant.sid, ParticipantState.ACTIVE))
        elif state == "failed" and not self.closed:
            self.node.detach(self, DisconnectReason.CONNECTION_TIMEOUT)
            self.close(DisconnectReason.CONNECTION_TIMEOUT)

    async def _on_publisher_state(self) -> None:
        state = self.publisher.connectionState
        self.log.debug("publisher pc", state=state)
        if state in ("connected", "failed", "closed"):
            self._publisher_settled.set()

    def close(self, reason: DisconnectReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.log.info("session closed", reason=reason.name)
        for track_sid in list(self._published_mids.values()):
            relay = self.node.relays.pop(track_sid, None)
            if relay is not None:
                relay.close()
        self._published_mids.clear()
        for track_sid, sender in list(self._senders.items()):
            relay = self.node.relays.get(track_sid)
            if relay is not None:
                relay.remove_sink(self.participant.sid)
            else:
                sender.close()
        self._senders.clear()
        try:
            self._out.put_nowait(None)
        except asyncio.QueueFull:
            self._spawn(self.ws.close(), "close websocket")

    async def _shutdown(self) -> None:
        self._tasks.cancel()
        await asyncio.gather(
            self.publisher.close(), self.subscriber.close(), return_exceptions=True
        )

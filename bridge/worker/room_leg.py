"""A call's room leg: the caller as a participant on the local channel, and its media pump.

One :class:`RoomLeg` per call. It joins the room with the token the supervisor minted, publishes
the phone's audio as one Opus microphone track, N−1 mixes the room's audio tracks for the phone
and relays DTMF both ways as LiveKit ``SipDTMF`` data packets. It knows nothing about SIP: the
worker feeds it the phone's PCM (:meth:`RoomLeg.pump`) and hears about the room through
:class:`RoomLegEvents`.

Every method runs on the worker's asyncio thread except :meth:`RoomLeg.produce`, which the bridge
clock thread calls (through the port) for the phone's frame of each tick; the mixer is shared
between the two under ``_mix_lock``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import monotonic

import numpy as np
from livekit.protocol import models, rtc

from bridge.worker.dtmf import DtmfError, code_to_digit, digit_to_code
from bridge.worker.mixer import TAG_ULAW, Mixer
from bridge.worker.port import BridgePort
from roomline.wire import FRAME_MS, OPUS_PT, ULAW_EXT_ID
from roomline.wire import SAMPLE_RATE as RATE
from sfu.local.client import ChannelClient
from sfu.local.codec import Decimator, OpusDecoder, OpusEncoder, RtpPacketizer, audio_level
from sfu.local.g711 import ULAW_FRAME_BYTES, ULAW_RATE, ulaw_encode
from sfu.media.rtp import RtpError, parse_rtp

log = logging.getLogger("bridge.worker.room_leg")

#: Room-side jitter buffer floor (frames): the buffer adapts upwards on stalls and settles back
#: here on a clean link (sfu/local/jitter.py).
ROOM_JITTER_TARGET = 1
#: Client id of the phone's track in the AddTrackRequest.
TRACK_CID = "sip-audio"
#: Attribute that tells the room where the call is (LiveKit's ``sip.callStatus``).
ATTR_CALL_STATUS = "sip.callStatus"


@dataclass(frozen=True)
class RoomLegEvents:
    """What the leg tells its call; each callback runs on the asyncio thread.

    ``joined``: the room accepted the participant. ``audio``: there is somebody to talk to (another
    SIP caller in the room, or the first room audio packet). ``left(reason)``: the room ended the
    participant (leave, error, lost connection). ``dtmf(key)``: somebody in the room sent a key
    for the phone.
    """

    joined: Callable[[], None]
    audio: Callable[[], None]
    left: Callable[[str], None]
    dtmf: Callable[[str], None]


class RoomLeg:
    """The caller's participant in its room; see the module docstring."""

    def __init__(
        self,
        events: RoomLegEvents,
        identity: str = "",
        request_id: int = 0,
        rate: int = RATE,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.events = events
        #: Arrival and tick times for the room jitter buffers (an offline run passes its own,
        #: since it runs faster than real time).
        self.clock = clock
        #: PCM rate of the bridge port this leg pumps (the conference bridge's clock rate).
        self.rate = rate
        #: The caller's participant identity (the decision's, then the JoinResponse's).
        self.identity = identity
        self.request_id = request_id
        self.channel: ChannelClient | None = None
        #: The mixer is shared with the bridge clock thread (:meth:`produce`): every use holds it.
        self._mix_lock = threading.Lock()
        self.mixer = Mixer(
            lambda: OpusDecoder(rate), ROOM_JITTER_TARGET, samples=rate * FRAME_MS // 1000
        )
        self.encoder: OpusEncoder | None = None
        #: Sample rate the phone leg's codec really carries (8000 for G.711, 16000 for G.722);
        #: 0 = unknown, encode at the port's rate. See :meth:`set_phone_rate`.
        self.phone_rate = 0
        self._decimate: Decimator | None = None
        self.packetizer = RtpPacketizer()
        #: Frames for the phone instead of the room's mix while set (called on the bridge clock
        #: thread like :meth:`produce`; set and cleared on the asyncio thread).
        self.tone: Callable[[], bytes] | None = None
        #: Sid of the phone's published track, once the room confirmed it.
        self.track_sid = ""
        self.room_audio_seen = False
        #: Whether this leg plays other G.711 callers' µ-law sidecar instead of decoding their
        #: Opus: only at the sidecar's own rate, where it is sample-exact (see sfu/local/g711.py).
        self.ulaw_in = rate == ULAW_RATE
        #: Remote participant sid → its track sids, to drop a track's decoder when it goes away.
        self._tracks: dict[str, set[str]] = {}

    # --- joining and leaving ----------------------------------------------------------------
    async def join(self, socket: str, token: str, room: str) -> bool:
        """Connect to the local channel and send JOIN; False (and ``left``) if unreachable."""
        ch = ChannelClient(
            on_signal=lambda m: self._on_signal(ch, m),
            on_rtp=self._on_rtp,
            on_data=self._on_data,
            on_closed=self.events.left,
        )
        # Set before connecting: the SFU's answer is dispatched as soon as it is read, which can
        # be before ``connect`` returns, and what it sets off (``sip.callStatus``, say) already
        # sends on this channel.
        self.channel = ch
        try:
            # Only audio: a browser's camera in the room would otherwise send every call of
            # the worker its video packets, each read and parsed in Python to be dropped.
            await ch.connect(socket, token, room, subscribe_kinds=("audio",))
        except OSError as exc:
            self.channel = None
            log.warning("cannot reach room socket: %s", exc)
            self.events.left("room unavailable")
            return False
        return True

    def leave(self) -> None:
        """SignalRequest leave, then close (idempotent: a closed channel ignores writes)."""
        if self.channel is None:
            return
        leave = rtc.LeaveRequest(
            can_reconnect=False,
            reason=models.DisconnectReason.CLIENT_INITIATED,
            action=rtc.LeaveRequest.DISCONNECT,
        )
        self.channel.send_signal(rtc.SignalRequest(leave=leave))
        self.channel.close()
        self._close_encoder()

    def close(self) -> None:
        """Drop the connection without a leave (worker shutdown)."""
        if self.channel is not None:
            self.channel.close()
        self._close_encoder()

    def _close_encoder(self) -> None:
        enc, self.encoder = self.encoder, None
        if enc is not None:
            enc.close()

    def set_call_status(self, status: str) -> None:
        """Publish the call's state as the participant's ``sip.callStatus`` attribute."""
        if self.channel is None:
            return
        upd = rtc.UpdateParticipantMetadata(
            attributes={ATTR_CALL_STATUS: status}, request_id=self.request_id
        )
        self.channel.send_signal(rtc.SignalRequest(update_metadata=upd))

    # --- media ------------------------------------------------------------------------------
    def set_phone_rate(self, rate: int) -> None:
        """Encode the phone's audio for the room at ``rate``, the phone codec's clock rate.

        A G.711 call carries 8 kHz audio, which the bridge hands over upsampled to its 16 kHz
        clock. Encoding that at 16 kHz spends Opus's bits on an empty 4–8 kHz band: on the
        espeak-ng speech, G.711 → 16 kHz Opus 32 kb/s → G.711 scored PESQ NB 3.56 against 3.68
        when the frames are decimated to 8 kHz first, and the 8 kHz encoder costs about half
        (bench/pesq_chain.py). Rates that do not divide the port's rate are ignored.
        """
        self.phone_rate = rate

    def _encoder_for(self, port_rate: int) -> OpusEncoder:
        rate = self.phone_rate
        if not rate or rate >= port_rate or port_rate % rate:
            rate = port_rate
        enc = self.encoder
        if enc is None or enc.rate != rate:
            enc = self.encoder = OpusEncoder(rate=rate)
            self._decimate = Decimator(port_rate // rate) if rate != port_rate else None
        return enc

    def pump(self, port: BridgePort) -> None:
        """Phone → room: encode what the bridge delivered. Room → phone: hand the port
        :meth:`produce`, which mixes each tick's frame when the bridge asks (no ``tx`` queue).

        Each packet to the room carries the frame's RFC 6464 level, so the room's speaker
        detection hears the caller.
        """
        ch, sid = self.channel, self.track_sid
        rx = port.rx
        while rx:
            pcm = rx.popleft()
            if ch is None or not sid:
                continue
            enc = self._encoder_for(port.rate)
            dec = self._decimate
            if dec is not None:
                frame = dec(np.frombuffer(pcm, np.int16))
                pcm = frame.tobytes()
            else:
                frame = np.frombuffer(pcm, np.int16)
            level = audio_level(frame)
            payloads = enc.encode(pcm)
            # A G.711 caller's frame goes out as µ-law as well, for listeners on 8 kHz workers.
            ulaw = ulaw_encode(frame) if enc.rate == ULAW_RATE and len(payloads) == 1 else None
            for payload in payloads:
                ch.send_rtp(sid, self.packetizer.packet(payload, audio_level=level, ulaw=ulaw))
        port.tx.clear()
        port.produce = self.produce

    def produce(self) -> bytes:
        """This tick's frame for the phone; runs on the bridge clock thread (see BridgePort).

        While :attr:`tone` is set (a transfer with ``play_dialtone``) the phone hears its frames
        instead of the room; the room's mix is still drained (muted), so nothing queues up and
        the room is heard again at once when the tone is removed.
        """
        tone = self.tone
        with self._mix_lock:
            frame = self.mixer.next_frame(self.clock())
        return frame if tone is None else tone()

    def send_dtmf(self, digit: str) -> None:
        """A key the phone pressed, for the room (LiveKit spells A–D in lowercase)."""
        if self.channel is None:
            return
        try:
            code = digit_to_code(digit)
        except DtmfError:
            return
        pkt = models.DataPacket(
            kind=models.DataPacket.RELIABLE,
            participant_identity=self.identity,
            sip_dtmf=models.SipDTMF(code=code, digit=digit.lower()),
        )
        self.channel.send_data(pkt)

    def input_stats(self) -> dict[str, dict[str, int]]:
        """Jitter-buffer counters per mixed room track (for the end-of-call log line)."""
        with self._mix_lock:
            return self.mixer.stats()

    # --- room → call ------------------------------------------------------------------------
    def _on_signal(self, ch: ChannelClient, msg: rtc.SignalResponse) -> None:
        which = msg.WhichOneof("message")
        if which == "join":
            self.identity = msg.join.participant.identity or self.identity
            add = rtc.AddTrackRequest(
                cid=TRACK_CID,
                name="phone",
                type=models.TrackType.AUDIO,
                source=models.TrackSource.MICROPHONE,
            )
            ch.send_signal(rtc.SignalRequest(add_track=add))
            self._sync_tracks(msg.join.other_participants)
            self.events.joined()
            if self._other_sip(msg.join.other_participants):
                self.events.audio()
        elif which == "track_published":
            self.track_sid = msg.track_published.track.sid
        elif which == "update":
            self._sync_tracks(msg.update.participants)
            if self._other_sip(msg.update.participants):
                self.events.audio()
        elif which == "leave":
            ch.close()
            self.events.left("removed from room")

    def _sync_tracks(self, participants: Iterable[models.ParticipantInfo]) -> None:
        """Forget the decoders of tracks a participant no longer publishes (or who left)."""
        for p in participants:
            if p.identity == self.identity:
                continue
            gone = p.state == models.ParticipantInfo.State.DISCONNECTED
            now = set() if gone else {t.sid for t in p.tracks}
            for sid in self._tracks.get(p.sid, set()) - now:
                with self._mix_lock:
                    self.mixer.remove(sid)
            if now:
                self._tracks[p.sid] = now
            else:
                self._tracks.pop(p.sid, None)

    def _other_sip(self, participants: Iterable[models.ParticipantInfo]) -> bool:
        return any(
            p.kind == models.ParticipantInfo.Kind.SIP
            and p.identity != self.identity
            and p.state != models.ParticipantInfo.State.DISCONNECTED
            for p in participants
        )

    def _on_rtp(self, sid: str, data: bytes) -> None:
        try:
            pkt = parse_rtp(data)
        except RtpError:
            return
        if pkt.payload_type != OPUS_PT or pkt.payload_end <= pkt.payload_offset:
            return
        ulaw = pkt.extension(ULAW_EXT_ID) if self.ulaw_in and pkt.extensions else None
        if ulaw is not None and len(ulaw) == ULAW_FRAME_BYTES:
            payload, tag = ulaw, TAG_ULAW
        else:
            payload, tag = pkt.payload(data), 0
        with self._mix_lock:
            self.mixer.push(sid, pkt.sequence_number, payload, self.clock(), tag)
        if not self.room_audio_seen:
            self.room_audio_seen = True
            self.events.audio()

    def _on_data(self, pkt: models.DataPacket) -> None:
        if pkt.WhichOneof("value") != "sip_dtmf":
            return
        digit = pkt.sip_dtmf.digit
        try:
            digit_to_code(digit)
        except DtmfError:
            try:
                digit = code_to_digit(pkt.sip_dtmf.code)
            except DtmfError:
                return
        self.events.dtmf(digit.upper())

"""Participants as an agent sees them (``livekit.rtc``): remote ones, and itself.

:class:`LocalParticipant` is the agent's publishing API: audio tracks (encoded to Opus on a steady
20 ms clock), attributes, metadata, name, data packets and SIP DTMF.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any, Protocol

from livekit.protocol import models, rtc

from roomline.errors import RoomlineError
from roomline_agents.sdk.track import LocalAudioTrack, TrackKind
from roomline_agents.sdk.track_publication import (
    LocalTrackPublication,
    RemoteTrackPublication,
    TrackPublishOptions,
)
from sfu.local.codec import FRAME_SAMPLES, RATE, OpusEncoder, RtpPacketizer

#: A publishing clock this late (seconds) restarts instead of sending a burst to catch up.
MAX_PUMP_LAG = 0.2


class PublishError(RoomlineError):
    """A publish/update request was refused by the SFU."""


class RoomLink(Protocol):
    """What a :class:`LocalParticipant` uses of its :class:`~roomline_agents.sdk.room.Room`."""

    def isconnected(self) -> bool: ...

    def emit(self, event: str, *args: Any) -> None: ...

    def _send(self, req: rtc.SignalRequest) -> None: ...

    def _send_data(self, pkt: models.DataPacket) -> None: ...

    def _send_rtp(self, track_sid: str, packet: bytes) -> None: ...

    async def _add_track(self, req: rtc.AddTrackRequest) -> models.TrackInfo: ...

    async def _update_metadata(
        self, name: str = "", metadata: str = "", attributes: dict[str, str] | None = None
    ) -> None: ...


class ParticipantKind(enum.IntEnum):
    PARTICIPANT_KIND_STANDARD = 0
    PARTICIPANT_KIND_INGRESS = 1
    PARTICIPANT_KIND_EGRESS = 2
    PARTICIPANT_KIND_SIP = 3
    PARTICIPANT_KIND_AGENT = 4


class Participant:
    """Common view of a participant (``livekit.rtc.Participant``)."""

    def __init__(self, info: models.ParticipantInfo) -> None:
        self._info = models.ParticipantInfo()
        self._info.CopyFrom(info)
        self.disconnect_reason = 0

    @property
    def sid(self) -> str:
        return self._info.sid

    @property
    def identity(self) -> str:
        return self._info.identity

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def metadata(self) -> str:
        return self._info.metadata

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self._info.attributes)

    @property
    def kind(self) -> int:
        return int(self._info.kind)

    @property
    def state(self) -> int:
        return int(self._info.state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r}, sid={self.sid!r})"


class RemoteParticipant(Participant):
    def __init__(self, info: models.ParticipantInfo) -> None:
        super().__init__(info)
        self.track_publications: dict[str, RemoteTrackPublication] = {}


class LocalParticipant(Participant):
    """The agent itself: publish audio, set attributes, send data and DTMF."""

    def __init__(self, room: RoomLink, info: models.ParticipantInfo) -> None:
        super().__init__(info)
        self._room = room
        self.track_publications: dict[str, LocalTrackPublication] = {}

    async def publish_track(
        self, track: LocalAudioTrack, options: TrackPublishOptions | None = None
    ) -> LocalTrackPublication:
        """AddTrack, then send the source's audio as Opus RTP on a steady 20 ms clock."""
        options = options or TrackPublishOptions()
        req = rtc.AddTrackRequest(
            cid=track.sid,
            name=track.name,
            type=models.TrackType.AUDIO,
            source=int(options.source),  # type: ignore[arg-type]
            disable_dtx=not options.dtx,
        )
        info = await self._room._add_track(req)
        pub = LocalTrackPublication(
            sid=info.sid,
            name=info.name,
            kind=TrackKind.KIND_AUDIO,
            source=options.source,
            mime_type="audio/opus",
            track=track,
        )
        track.sid = info.sid
        pub._pump = asyncio.get_running_loop().create_task(self._pump(pub))
        self.track_publications[pub.sid] = pub
        self._room.emit("local_track_published", pub, track)
        return pub

    async def unpublish_track(self, track_sid: str) -> None:
        pub = self.track_publications.pop(track_sid, None)
        if pub is None:
            raise PublishError(f"track {track_sid!r} is not published")
        if pub._pump is not None:
            pub._pump.cancel()
        # The local channel unpublishes by muting; the track ends when the agent leaves.
        self._room._send(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=track_sid, muted=True)))

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        """Merge ``attributes`` into this participant's (an empty value deletes a key)."""
        await self._room._update_metadata(attributes=attributes)

    async def set_metadata(self, metadata: str) -> None:
        await self._room._update_metadata(metadata=metadata)

    async def set_name(self, name: str) -> None:
        await self._room._update_metadata(name=name)

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: list[str] | None = None,
        topic: str = "",
    ) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        pkt = models.DataPacket(
            kind=models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY,
            destination_identities=list(destination_identities or []),
            user=models.UserPacket(payload=payload, topic=topic),
        )
        self._room._send_data(pkt)

    async def publish_dtmf(self, *, code: int, digit: str) -> None:
        """Send a SIP DTMF digit; a SIP participant's bridge plays it to the phone (RFC 4733)."""
        pkt = models.DataPacket(
            kind=models.DataPacket.Kind.RELIABLE,
            sip_dtmf=models.SipDTMF(code=code, digit=digit),
        )
        self._room._send_data(pkt)

    async def _pump(self, pub: LocalTrackPublication) -> None:
        """The track's 20 ms clock: one Opus packet per tick while the source has audio."""
        assert pub.track is not None
        source = pub.track.source
        packetizer = RtpPacketizer()
        encoder: OpusEncoder | None = None
        loop = asyncio.get_running_loop()
        tick = FRAME_SAMPLES / RATE
        deadline = loop.time()
        while self._room.isconnected():
            pcm = source._pull()
            if pcm is not None and not pub.track.muted:
                if encoder is None:
                    encoder = OpusEncoder()
                for payload in encoder.encode(pcm):
                    self._room._send_rtp(pub.sid, packetizer.packet(payload))
            else:
                # Nothing to say: send nothing, keep the RTP clock running (Opus DTX style).
                packetizer.ts = (packetizer.ts + FRAME_SAMPLES) & 0xFFFFFFFF
            deadline += tick
            delay = deadline - loop.time()
            if delay < -MAX_PUMP_LAG:  # the loop stalled: restart the clock instead of bursting
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))

"""A participant on the local participant channel (``local.sock``) that publishes a tone.

What a bridge call does to the room, without pjsua2: JOIN with a token, ``add_track`` when asked,
then one Opus packet per 20 ms tagged with the track sid. Tests use it as a cheap second publisher
next to SDK participants.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from livekit.protocol import models
from livekit.protocol import rtc as lkrtc

from roomline_harness.aio import paced
from roomline_harness.audio import tone
from sfu.local import socket_path
from sfu.local.client import ChannelClient
from sfu.local.codec import FRAME_SAMPLES, RATE, OpusEncoder, RtpPacketizer


class LocalTonePublisher:
    """Joins a room over the local channel and, after :meth:`add_track`, publishes a sine."""

    def __init__(self, freq: float, name: str = "tone", amplitude: float = 8000.0) -> None:
        self.freq = freq
        self.name = name
        self.amplitude = amplitude
        self.track_sid = ""
        self.closed_reason = ""
        #: Identity -> sids of the audio/video tracks the room announced for it (bound tracks).
        self.remote_tracks: dict[str, set[str]] = {}
        self._joined = asyncio.Event()
        self._published = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self.channel = ChannelClient(
            self._on_signal, lambda sid, pkt: None, lambda p: None, self._on_closed
        )

    def _on_signal(self, msg: lkrtc.SignalResponse) -> None:
        which = msg.WhichOneof("message")
        if which == "join":
            self._note(msg.join.other_participants)
            self._joined.set()
        elif which == "update":
            self._note(msg.update.participants)
        elif which == "track_published":
            self.track_sid = msg.track_published.track.sid
            self._published.set()

    def _note(self, participants: Iterable[models.ParticipantInfo]) -> None:
        for info in participants:
            if info.state == models.ParticipantInfo.State.DISCONNECTED:
                self.remote_tracks.pop(info.identity, None)
            else:
                self.remote_tracks[info.identity] = {t.sid for t in info.tracks}

    def _on_closed(self, reason: str) -> None:
        self.closed_reason = reason

    async def join(self, data_dir: str, token: str, room: str, timeout: float = 10.0) -> None:
        """Connect to the appliance whose ``server.data_dir`` is ``data_dir`` and join ``room``."""
        await self.channel.connect(socket_path(data_dir), token, room)
        await asyncio.wait_for(self._joined.wait(), timeout)

    def add_track(self) -> None:
        """Send AddTrack now (the SFU binds a local track at once) and start sending the tone as
        soon as the sid comes back."""
        add = lkrtc.AddTrackRequest(
            cid=self.name,
            name=self.name,
            type=models.TrackType.AUDIO,
            source=models.TrackSource.MICROPHONE,
        )
        self.channel.send_signal(lkrtc.SignalRequest(add_track=add))
        self._pump = asyncio.get_running_loop().create_task(self._send_tone())

    async def _send_tone(self) -> None:
        await self._published.wait()
        encoder, packetizer = OpusEncoder(), RtpPacketizer()
        pcm = tone(self.freq, 1.0, RATE, self.amplitude)  # a whole number of periods per second
        async for i, _ in paced(FRAME_SAMPLES / RATE):
            off = (i * FRAME_SAMPLES) % len(pcm)
            for payload in encoder.encode(pcm[off : off + FRAME_SAMPLES].tobytes()):
                self.channel.send_rtp(self.track_sid, packetizer.packet(payload))

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self.channel.close()

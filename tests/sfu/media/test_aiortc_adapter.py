"""Real aiortc peers on loopback through the forwarding primitives (no decoding in the "SFU").

publisher PC ──(Opus/VP8, SRTP)──▶ SFU publisher PC ─ PublishedTrackTap ─ TrackRelay
                                                                        ├─ SubscriberSender ─▶ sub PC 1
                                                                        └─ SubscriberSender ─▶ sub PC 2
The "SFU" is wired with the functions the /rtc session uses (``sfu.rtc.tracks``). Subscribers decode
with aiortc's normal path; audio is checked by FFT, video by decoded colours. This is also the guard
for every aiortc 1.16.0 private name ``sfu.media.aiortc`` uses: an aiortc upgrade that moves one
fails here.
"""

from __future__ import annotations

import asyncio
import fractions
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame
from structlog.testing import capture_logs

from roomline_harness.audio import dominant_frequency, snr_db
from roomline_harness.net import free_udp_range
from sfu.media.aiortc import (
    PublishedTrackTap,
    SubscriberSender,
    configure_ice,
    ice_settings,
    reset_ice,
)
from sfu.media.aiortc.sender import srtp_sender
from sfu.relay import TrackRelay
from sfu.rtc.tracks import relay_published_track, subscribe_to_relay

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE = 48000
TONE_HZ = 440.0
#: Test picture: top half red, bottom half blue (RGB); survives VP8 at any bitrate.
TOP_RGB = (220, 30, 30)
BOTTOM_RGB = (30, 30, 220)


def _config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])


class SineTrack(AudioStreamTrack):
    """48 kHz mono 440 Hz sine in 20 ms frames, paced in real time like aiortc's own tracks."""

    def __init__(self, freq: float = TONE_HZ) -> None:
        super().__init__()
        self.freq = freq
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        samples = 960
        if self._t0 is None:
            self._t0 = time.time()
        else:
            wait = self._t0 + self._n / RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (self._n + np.arange(samples)) / RATE
        pcm = (12000 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += samples
        return frame


class ColourTrack(VideoStreamTrack):
    """320x240 frames, top half TOP_RGB, bottom half BOTTOM_RGB, 30 fps."""

    def __init__(self) -> None:
        super().__init__()
        img = np.zeros((240, 320, 3), dtype=np.uint8)
        img[:120] = TOP_RGB
        img[120:] = BOTTOM_RGB
        self._img = img

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(self._img, format="rgb24")
        frame.pts = pts
        frame.time_base = time_base
        return frame


async def _negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _sdp_ssrcs(sdp: str) -> set[int]:
    return {int(m) for m in re.findall(r"^a=ssrc:(\d+) ", sdp, re.M)}


class Subscriber:
    """A plain aiortc peer that decodes whatever it receives."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(_config())
        self.audio: list[np.ndarray] = []
        self.frames: list[np.ndarray] = []
        self.track: MediaStreamTrack | None = None
        self._task: asyncio.Task[None] | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.track = track
            self._task = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, AudioFrame):
                    arr = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                    self.audio.append(arr.astype(np.int16))
                else:
                    assert isinstance(frame, VideoFrame)
                    self.frames.append(frame.to_ndarray(format="rgb24"))
        except MediaStreamError:
            pass

    @property
    def audio_samples(self) -> int:
        return sum(len(a) for a in self.audio)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        await self.pc.close()


class Sfu:
    """The forwarding half of an SFU, wired as the /rtc session does it."""

    def __init__(self) -> None:
        self.pcs: list[RTCPeerConnection] = []
        self.relays: dict[str, TrackRelay] = {}
        self.taps: dict[str, PublishedTrackTap] = {}

    async def publish(self, publisher: RTCPeerConnection) -> None:
        pc = RTCPeerConnection(_config())
        self.pcs.append(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tap = PublishedTrackTap.from_track(pc, track)
            self.taps[track.kind] = tap
            self.relays[track.kind] = relay_published_track(tap, f"TR_{track.kind}", "PA_pub")

        await _negotiate(publisher, pc)

    async def subscribe(self, kind: str, sub: Subscriber, n: int) -> SubscriberSender:
        pc = RTCPeerConnection(_config())
        self.pcs.append(pc)
        ss = subscribe_to_relay(pc, self.relays[kind], f"PA_sub{n}")
        await _negotiate(pc, sub.pc)
        assert f"a=msid:PA_pub|TR_{kind} TR_{kind}" in pc.localDescription.sdp
        return ss

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()


@pytest.fixture
async def ice() -> AsyncIterator[tuple[int, int]]:
    port_range = free_udp_range(32)
    configure_ice(["127.0.0.1"], port_range)
    yield port_range
    reset_ice()


def _candidate_ports(sdp: str) -> list[int]:
    return [
        int(m) for m in re.findall(r"^a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+)", sdp, re.M)
    ]


async def _with_pcs(
    body: Callable[[Sfu, RTCPeerConnection, list[Subscriber]], Awaitable[None]], n_subs: int
) -> None:
    sfu = Sfu()
    pub = RTCPeerConnection(_config())
    subs = [Subscriber() for _ in range(n_subs)]
    try:
        await body(sfu, pub, subs)
    finally:
        for s in subs:
            await s.close()
        await pub.close()
        await sfu.close()


async def test_audio_440hz_reaches_two_subscribers(ice: tuple[int, int]) -> None:
    async def body(sfu: Sfu, pub: RTCPeerConnection, subs: list[Subscriber]) -> None:
        pub.addTrack(SineTrack())
        await sfu.publish(pub)
        lo, hi = ice
        assert all(lo <= p <= hi for p in _candidate_ports(pub.localDescription.sdp))
        senders = [await sfu.subscribe("audio", s, i) for i, s in enumerate(subs)]
        tap = sfu.taps["audio"]
        assert tap.mime.lower() == "audio/opus" and tap.clock_rate == 48000

        # Garbage fed into the tap is counted and dropped; forwarding carries on.
        await tap.feed(b"\x80\x60\x00", 0)
        await tap.feed(b"\x00" * 40, 0)

        # 2.5 s of decoded audio per subscriber (the first 0.5 s is discarded below).
        await _until(lambda: all(s.audio_samples >= int(2.5 * RATE) for s in subs), 30, "audio")
        assert tap.malformed == 2
        pub_ssrcs = _sdp_ssrcs(pub.localDescription.sdp)
        for sub, ss in zip(subs, senders, strict=True):
            pcm = np.concatenate(sub.audio)[int(0.5 * RATE) :]
            freq = dominant_frequency(pcm, RATE)
            snr = snr_db(pcm, RATE, TONE_HZ)
            assert abs(freq - TONE_HZ) < 2.0, freq
            assert snr >= 30.0, snr
            assert ss.ssrc not in pub_ssrcs
            assert sub.pc.getReceivers()[0].getSynchronizationSources()[0].source == ss.ssrc
            assert ss.downtrack is not None and ss.downtrack.stats.packets > 100
            # the synchronous SRTP send keeps aiortc's transport counters (its stats report)
            stats = await ss.transceiver.sender.getStats()
            tx = [st for st in stats.values() if st.type == "transport"][0]
            assert tx.packetsSent >= ss.downtrack.stats.packets, (tx, ss.downtrack.stats)
        assert senders[0].ssrc != senders[1].ssrc

        # Pause one subscriber: nothing forwarded; resume: forwarding restarts.
        paused = senders[0]
        dt = paused.downtrack
        assert dt is not None
        paused.pause()
        before = dt.stats.packets
        await _until(lambda: dt.stats.dropped_paused >= 25, 10, "paused drops")
        assert dt.stats.packets == before
        other = senders[1].downtrack
        assert other is not None and other.stats.packets > before  # the other one kept going
        n_before = subs[0].audio_samples
        paused.resume()
        await _until(lambda: dt.stats.packets >= before + 25, 10, "resumed forwarding")
        await _until(lambda: subs[0].audio_samples > n_before + RATE // 2, 10, "audio after resume")

    await _with_pcs(body, 2)


async def test_video_late_joiner_gets_keyframe_and_nack_is_served(ice: tuple[int, int]) -> None:
    async def body(sfu: Sfu, pub: RTCPeerConnection, subs: list[Subscriber]) -> None:
        pub.addTrack(ColourTrack())
        await sfu.publish(pub)
        early, late = subs
        ss_early = await sfu.subscribe("video", early, 0)

        # Drop one forwarded packet towards the early subscriber: its receiver NACKs and the
        # parked sender's aiortc _retransmit must serve it from the forwarder's history.
        dropped: list[int] = []
        await _until(lambda: ss_early.ready, 20, "early subscriber ready")
        real_send = ss_early._send_rtp
        assert real_send is not None

        def lossy_send(data: bytes) -> None:
            seq = int.from_bytes(data[2:4], "big")
            if not dropped and ss_early.downtrack and ss_early.downtrack.stats.packets > 60:
                dropped.append(seq)
                return
            real_send(data)

        ss_early._send_rtp = lossy_send
        await _until(lambda: len(early.frames) >= 10, 30, "early subscriber frames")
        await _until(lambda: ss_early.retransmissions_served >= 1, 20, "NACK served")
        assert dropped and ss_early.nacks_received >= 1

        # Late joiner after 2 s: aiortc's VP8 encoder sends keyframes only on request, so frames
        # can only be decoded if the forwarder waited for a keyframe and the PLI was relayed.
        await asyncio.sleep(2.0)
        tap = sfu.taps["video"]
        plis_before = tap.keyframes_requested
        ss_late = await sfu.subscribe("video", late, 1)
        await _until(lambda: len(late.frames) >= 5, 30, "late subscriber frames")
        assert tap.keyframes_requested > plis_before
        dt = ss_late.downtrack
        assert dt is not None
        img = late.frames[-1].astype(np.int32)
        h = img.shape[0]
        top = img[: h // 2 - 8].reshape(-1, 3).mean(axis=0)
        bottom = img[h // 2 + 8 :].reshape(-1, 3).mean(axis=0)
        assert np.abs(top - TOP_RGB).max() < 40, top
        assert np.abs(bottom - BOTTOM_RGB).max() < 40, bottom
        assert ss_late.ssrc != ss_early.ssrc

    await _with_pcs(body, 2)


async def test_srtp_sender_refuses_before_dtls_is_connected() -> None:
    pc = RTCPeerConnection(_config())
    try:
        send = srtp_sender(pc.addTransceiver("audio").sender.transport)
        with pytest.raises(ConnectionError, match="not connected"):
            send(b"\x80\x6f" + bytes(30))
    finally:
        await pc.close()


async def test_port_range_exhaustion_is_logged() -> None:
    lo, _ = free_udp_range(2)
    configure_ice(["127.0.0.1"], (lo, lo + 1))
    configure_ice(["127.0.0.1"], (lo, lo + 1))  # idempotent
    pcs = [RTCPeerConnection(_config()) for _ in range(3)]
    try:
        ports: list[list[int]] = []
        with capture_logs() as logs:
            for pc in pcs:
                pc.addTransceiver("audio")
                await pc.setLocalDescription(await pc.createOffer())
                ports.append(_candidate_ports(pc.localDescription.sdp))
        assert sorted(ports[0] + ports[1]) == [lo, lo + 1]
        assert ports[2] == []
        exhausted = [e for e in logs if "exhausted" in e["event"]]
        assert exhausted and exhausted[0]["log_level"] == "error"
        assert exhausted[0]["port_range"] == f"{lo}-{lo + 1}"
        settings = ice_settings()
        assert settings is not None and settings.exhausted == 1
    finally:
        for pc in pcs:
            await pc.close()
        reset_ice()
    assert ice_settings() is None

"""Helpers for tests that drive the real LiveKit Python SDK (``livekit.rtc``) against roomline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from livekit import api, rtc

from roomline_harness.server import API_KEY, API_SECRET

RATE = 48000


def token(
    identity: str,
    room: str,
    *,
    name: str | None = None,
    kind: str | None = None,
    metadata: str = "",
    attributes: dict[str, str] | None = None,
    **grants: Any,
) -> str:
    grants.setdefault("can_update_own_metadata", True)
    t = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(name if name is not None else identity.title())
        .with_grants(api.VideoGrants(room_join=True, room=room, **grants))
    )
    if metadata:
        t = t.with_metadata(metadata)
    if attributes:
        t = t.with_attributes(attributes)
    if kind:
        t = t.with_kind(kind)  # type: ignore[arg-type]
    return t.to_jwt()


async def connect(url: str, tok: str, auto_subscribe: bool = True) -> rtc.Room:
    room = rtc.Room()
    await asyncio.wait_for(
        room.connect(url, tok, rtc.RoomOptions(auto_subscribe=auto_subscribe)), 20
    )
    return room


@contextlib.asynccontextmanager
async def tone_publisher(
    room: rtc.Room, freq: float = 440.0, name: str = "tone", amplitude: float = 0.3
) -> AsyncIterator[rtc.LocalTrackPublication]:
    """Publish a sine on ``room`` (MICROPHONE source) for the duration of the block."""
    source = rtc.AudioSource(RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track(name, source)
    pub = await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )

    async def feed() -> None:
        n, t = 480, 0
        while True:
            x = amplitude * 32767 * np.sin(2 * np.pi * freq * np.arange(t, t + n) / RATE)
            t += n
            await source.capture_frame(rtc.AudioFrame(x.astype(np.int16).tobytes(), RATE, 1, n))

    task = asyncio.create_task(feed())
    try:
        yield pub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def record(
    track: rtc.Track, seconds: float, skip: float = 0.5, sound_within: float = 0.0
) -> np.ndarray:
    """PCM (mono int16 at 48 kHz) received on ``track``; the first ``skip`` seconds are dropped.

    With ``sound_within`` > 0, leading digital silence (a publisher that has not started
    speaking yet, which on a loaded machine can take a few seconds) is dropped too, for up to that
    many seconds of received audio; the recording then starts with the first non-zero frame, so
    what is checked is the content, not when it began.
    """
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    chunks: list[np.ndarray] = []
    need = int((seconds + skip) * RATE)
    got = 0
    silent = 0
    try:
        async for ev in stream:
            data = np.frombuffer(ev.frame.data, dtype=np.int16)
            if not chunks and silent < sound_within * RATE and not data.any():
                silent += len(data)
                continue
            chunks.append(data)
            got += len(data)
            if got >= need:
                break
    finally:
        await stream.aclose()
    return np.concatenate(chunks)[int(skip * RATE) :]


def subscribed_audio(room: rtc.Room, identity: str) -> rtc.Track | None:
    participant = room.remote_participants.get(identity)
    if participant is None:
        return None
    for pub in participant.track_publications.values():
        if pub.kind == rtc.TrackKind.KIND_AUDIO and pub.track is not None:
            return pub.track
    return None

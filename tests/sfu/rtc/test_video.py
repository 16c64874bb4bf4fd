"""Video through the SFU with the LiveKit Python SDK: decoded frames, and a late subscriber's keyframe."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest
from livekit import rtc

from roomline_harness.aio import wait_for
from roomline_harness.lk import connect, token
from roomline_harness.server import Server

W, H = 320, 240


def frame_rgba(i: int) -> rtc.VideoFrame:
    """A frame whose left half is red and right half blue, with a moving bar (so it is not static)."""
    img = np.zeros((H, W, 4), dtype=np.uint8)
    img[:, : W // 2, 0] = 220
    img[:, W // 2 :, 2] = 220
    img[:, :, 3] = 255
    x = (i * 4) % W
    img[:, x : x + 8, 1] = 255
    return rtc.VideoFrame(W, H, rtc.VideoBufferType.RGBA, img.tobytes())


@contextlib.asynccontextmanager
async def video_publisher(room: rtc.Room, codec: rtc.VideoCodec.ValueType = rtc.VideoCodec.VP8):  # type: ignore[no-untyped-def]
    source = rtc.VideoSource(W, H)
    track = rtc.LocalVideoTrack.create_video_track("cam", source)
    await room.local_participant.publish_track(
        track,
        rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False, video_codec=codec
        ),
    )

    async def feed() -> None:
        i = 0
        while True:
            source.capture_frame(frame_rgba(i))
            i += 1
            await asyncio.sleep(1 / 30)

    task = asyncio.create_task(feed())
    try:
        yield track
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def video_track(room: rtc.Room, identity: str) -> rtc.Track | None:
    p = room.remote_participants.get(identity)
    if p is None:
        return None
    for pub in p.track_publications.values():
        if pub.kind == rtc.TrackKind.KIND_VIDEO and pub.track is not None:
            return pub.track
    return None


async def first_frames(track: rtc.Track, count: int) -> tuple[float, list[np.ndarray]]:
    """Seconds until the first decoded frame, and ``count`` frames as RGBA arrays."""
    started = time.monotonic()
    first = 0.0
    frames: list[np.ndarray] = []
    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA)
    try:
        async for ev in stream:
            if not frames:
                first = time.monotonic() - started
            f = ev.frame
            frames.append(np.frombuffer(f.data, dtype=np.uint8).reshape(f.height, f.width, 4))
            if len(frames) >= count:
                break
    finally:
        await stream.aclose()
    return first, frames


def check_content(img: np.ndarray) -> None:
    h, w, _ = img.shape
    left = img[h // 4 : 3 * h // 4, w // 8 : w // 4].reshape(-1, 4).mean(axis=0)
    right = img[h // 4 : 3 * h // 4, 3 * w // 4 : 7 * w // 8].reshape(-1, 4).mean(axis=0)
    assert left[0] > 150 and left[2] < 80, left  # red half survived encode → forward → decode
    assert right[2] > 150 and right[0] < 80, right  # blue half


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_video_forwarded_and_late_subscriber_gets_keyframe(
    server: Server, codec: str
) -> None:
    room = f"sdk-video-{codec}"
    pub = await connect(server.ws_url, token("cam", room))
    early = await connect(server.ws_url, token("early", room))
    late: rtc.Room | None = None
    try:
        async with video_publisher(pub, getattr(rtc.VideoCodec, codec)):
            await wait_for(lambda: video_track(early, "cam") is not None, 10, "early subscribed")
            track = video_track(early, "cam")
            assert track is not None
            (publication,) = early.remote_participants["cam"].track_publications.values()
            assert publication.mime_type.lower() == f"video/{codec.lower()}"  # no transcoding
            _, frames = await asyncio.wait_for(first_frames(track, 10), 15)
            assert frames[-1].shape == (H, W, 4)
            check_content(frames[-1])
            # Let the publisher run long enough that its last keyframe is long gone.
            await asyncio.sleep(3.0)
            late = await connect(server.ws_url, token("late", room))
            await wait_for(lambda: video_track(late, "cam") is not None, 10, "late subscribed")
            track = video_track(late, "cam")
            assert track is not None
            first, frames = await asyncio.wait_for(first_frames(track, 3), 15)
            check_content(frames[-1])
            # The acceptance bound: the relayed keyframe request makes the first frame quick.
            assert first < 1.0, f"late subscriber waited {first:.2f} s for its first frame"
    finally:
        await pub.disconnect()
        await early.disconnect()
        if late is not None:
            await late.disconnect()

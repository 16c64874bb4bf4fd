"""Video helpers for tests that drive the LiveKit Python SDK: a camera publishing any picture (or a
solid colour with a moving bar), the subscribed video tracks of a room, decoded frames
(and how long the first took), and a colour check.

Frames are judged by content: the mean colour of the central region of a decoded RGBA frame. A
solid colour survives VP8/H264 at any bitrate with a wide margin, and the bar keeps the encoder
producing real inter frames (a static picture would compress to almost nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
from livekit import rtc

from roomline_harness.aio import running
from roomline_harness.lk import subscribed_track

W, H = 320, 240

RED = (220, 0, 0)
BLUE = (0, 0, 220)
#: A channel the colour is made of must average above this, every other channel below OFF.
ON, OFF = 150.0, 80.0


def colour_frame(i: int, rgb: tuple[int, int, int]) -> rtc.VideoFrame:
    """Frame ``i`` of a ``rgb`` picture with a 16 px bar of half that colour moving across it."""
    img = np.empty((H, W, 4), dtype=np.uint8)
    img[:, :, :3] = rgb
    img[:, :, 3] = 255
    x = (i * 4) % W
    img[:, x : x + 16, :3] = [c // 2 for c in rgb]
    return rtc.VideoFrame(W, H, rtc.VideoBufferType.RGBA, img.tobytes())


@contextlib.asynccontextmanager
async def camera(
    room: rtc.Room,
    frame: Callable[[int], rtc.VideoFrame],
    name: str = "cam",
    codec: rtc.VideoCodec.ValueType = rtc.VideoCodec.VP8,
    fps: float = 15.0,
) -> AsyncIterator[rtc.LocalTrackPublication]:
    """Publish a W x H CAMERA track named ``name`` for the block, showing ``frame(i)`` as its
    ``i``-th frame at ``fps`` (no simulcast, so what a subscriber decodes is this picture)."""
    source = rtc.VideoSource(W, H)
    track = rtc.LocalVideoTrack.create_video_track(name, source)
    pub = await room.local_participant.publish_track(
        track,
        rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False, video_codec=codec
        ),
    )

    async def feed() -> None:
        i = 0
        while True:
            source.capture_frame(frame(i))
            i += 1
            await asyncio.sleep(1 / fps)

    async with running(feed):
        yield pub


def colour_camera(
    room: rtc.Room,
    rgb: tuple[int, int, int],
    name: str = "cam",
    codec: rtc.VideoCodec.ValueType = rtc.VideoCodec.VP8,
    fps: float = 15.0,
) -> contextlib.AbstractAsyncContextManager[rtc.LocalTrackPublication]:
    """A :func:`camera` showing :func:`colour_frame` in ``rgb``."""
    return camera(room, lambda i: colour_frame(i, rgb), name, codec, fps)


def subscribed_video(room: rtc.Room, identity: str, name: str | None = None) -> rtc.Track | None:
    """``identity``'s subscribed video track at ``room`` (the one named ``name``, if given)."""
    return subscribed_track(room, identity, rtc.TrackKind.KIND_VIDEO, name)


async def first_frames(track: rtc.Track, count: int) -> tuple[float, list[np.ndarray]]:
    """Seconds from the call until the first frame decoded from ``track``, and the first
    ``count`` frames as H x W x 4 RGBA arrays."""
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


async def decoded_frames(track: rtc.Track, count: int) -> list[np.ndarray]:
    """The first ``count`` frames decoded from ``track``, as H x W x 4 RGBA arrays."""
    return (await first_frames(track, count))[1]


def mean_rgb(img: np.ndarray) -> np.ndarray:
    """Mean R, G, B of the central half (each way) of an RGBA frame."""
    h, w, _ = img.shape
    return np.asarray(img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, :3].reshape(-1, 3).mean(axis=0))


def colour_mismatch(img: np.ndarray, rgb: tuple[int, int, int]) -> str:
    """'' if ``img`` shows the colour ``rgb`` (its lit channels above :data:`ON`, the others
    below :data:`OFF`), else a description of what it shows."""
    mean = mean_rgb(img)
    lit = [c > 0 for c in rgb]
    if all(m > ON if on else m < OFF for m, on in zip(mean, lit, strict=True)):
        return ""
    shown = ", ".join(f"{m:.0f}" for m in mean)
    return f"mean RGB ({shown}), expected about {rgb}"

"""Video through the SFU with the LiveKit Python SDK: decoded frames, and a late subscriber's keyframe."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc

from roomline_harness.aio import wait_for
from roomline_harness.lk import connect, token
from roomline_harness.server import Server
from roomline_harness.video import H, W, camera, first_frames
from roomline_harness.video import subscribed_video as video_track


def frame_rgba(i: int) -> rtc.VideoFrame:
    """A frame whose left half is red and right half blue, with a moving bar (so it is not static)."""
    img = np.zeros((H, W, 4), dtype=np.uint8)
    img[:, : W // 2, 0] = 220
    img[:, W // 2 :, 2] = 220
    img[:, :, 3] = 255
    x = (i * 4) % W
    img[:, x : x + 8, 1] = 255
    return rtc.VideoFrame(W, H, rtc.VideoBufferType.RGBA, img.tobytes())


def check_content(img: np.ndarray) -> None:
    """The red left half and the blue right half of :func:`frame_rgba` survived."""
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
        async with camera(pub, frame_rgba, codec=getattr(rtc.VideoCodec, codec), fps=30.0):
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

"""Two video tracks reaching a WebRTC subscriber within one subscriber negotiation.

The video counterpart of test_subscription_race.py. With aiortc's BALANCED bundle policy, the
first video m-line of a subscriber offer gets a transport of its own and a second video m-line
added before the answer shares it; the answer bundles everything onto the data channels'
transport, the shared one is stopped, and the second m-line is left on it: that track never
delivers a frame. The subscriber PC therefore uses MAX_BUNDLE; these tests fail if it does not.

The window is open from the moment the subscriber's first video transceiver is created until the
answer covering it is applied, so each test makes both video tracks reach the subscriber inside
it. Every track is judged by content: decoded frames of the right colour (red or blue), within a
bound, and the failure names the track.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from livekit import rtc

from roomline_harness.aio import wait_for
from roomline_harness.lk import check_rooms, connect, heard, subscribed_audio, token, tone_publisher
from roomline_harness.local_peer import LocalTonePublisher
from roomline_harness.server import Server
from roomline_harness.video import BLUE, RED, colour_camera, colour_mismatch, decoded_frames
from roomline_harness.video import subscribed_video as video_of

#: Rooms per test: each one reaches the window on its own.
ITERATIONS = 3
#: Seconds a subscribed track has to deliver its frames (a track left on a stopped transport
#: delivers none, ever; a working one takes well under a second after its keyframe).
FRAME_TIMEOUT = 15.0
#: Frames decoded per track; the last one is judged (the first may predate a full keyframe's
#: refinement on a loaded machine).
FRAMES = 5
TONE_HZ = 440.0


async def _seen(room: rtc.Room, identity: str, rgb: tuple[int, int, int], name: str) -> str:
    """'' if ``room`` decodes ``identity``'s video track ``name`` in colour ``rgb``, else what
    went wrong (naming the track)."""
    label = f"{identity}/{name}"
    try:
        await wait_for(lambda: video_of(room, identity, name) is not None, 15, label)
    except AssertionError:
        return f"{label}: never subscribed"
    track = video_of(room, identity, name)
    assert track is not None
    try:
        frames = await asyncio.wait_for(decoded_frames(track, FRAMES), FRAME_TIMEOUT)
    except TimeoutError:
        return f"{label}: fewer than {FRAMES} frames decoded in {FRAME_TIMEOUT:g} s"
    wrong = colour_mismatch(frames[-1], rgb)
    return f"{label}: {wrong}" if wrong else ""


def _announced(room: rtc.Room, identity: str, count: int) -> bool:
    """Whether ``room`` has been told of ``count`` tracks of ``identity`` (the SFU announces a
    track once its media is bound, so this is 'published and forwardable')."""
    p = room.remote_participants.get(identity)
    return p is not None and len(p.track_publications) >= count


@contextlib.asynccontextmanager
async def _ready_listener(server: Server, name: str) -> AsyncIterator[rtc.Room]:
    """A listener whose subscriber transport is up (it is subscribed to a local-channel tone):
    tracks published from now on are added to its PC as they are bound, not deferred into the
    batch that follows the first connection."""
    warm = LocalTonePublisher(1000.0, name="warm")
    await warm.join(str(server.data_dir), token("warm", name), name)
    warm.add_track()
    try:
        listener = await connect(server.ws_url, token("listener", name))
        try:
            # Subscriptions are only added once the subscriber transport is connected.
            await wait_for(lambda: subscribed_audio(listener, "warm") is not None, 15, "warm tone")
            yield listener
        finally:
            await listener.disconnect()
    finally:
        await warm.close()


async def _cameras_seen(
    listener: rtc.Room, cameras: list[tuple[rtc.Room, tuple[int, int, int], str]]
) -> list[str]:
    """Start every ``(publisher, colour, track name)`` camera at the same moment, then what
    ``listener`` made of each ('' = decoded in its colour)."""
    async with contextlib.AsyncExitStack() as stack:
        # All publish at once: a later binding lands in the same subscription batch as the first
        # or while the listener's offer carrying the first video m-line is out.
        await asyncio.gather(
            *(stack.enter_async_context(colour_camera(r, rgb, n)) for r, rgb, n in cameras)
        )
        return list(
            await asyncio.gather(
                *(_seen(listener, r.local_participant.identity, rgb, n) for r, rgb, n in cameras)
            )
        )


async def _room_late_listener(server: Server, name: str) -> list[str]:
    # Publishers do not subscribe: they only have to see each other's tracks announced.
    red = await connect(server.ws_url, token("red", name), auto_subscribe=False)
    blue = await connect(server.ws_url, token("blue", name), auto_subscribe=False)
    listener: rtc.Room | None = None
    try:
        async with (
            colour_camera(red, RED, "cam-red"),
            tone_publisher(red, TONE_HZ),
            colour_camera(blue, BLUE, "cam-blue"),
        ):
            await wait_for(lambda: _announced(blue, "red", 2), 15, "red's tracks")
            await wait_for(lambda: _announced(red, "blue", 1), 15, "blue's track")
            listener = await connect(server.ws_url, token("listener", name))
            return list(
                await asyncio.gather(
                    _seen(listener, "red", RED, "cam-red"),
                    _seen(listener, "blue", BLUE, "cam-blue"),
                    heard(listener, "red", TONE_HZ),
                )
            )
    finally:
        await red.disconnect()
        await blue.disconnect()
        if listener is not None:
            await listener.disconnect()


async def _room_two_publishers(server: Server, name: str) -> list[str]:
    async with _ready_listener(server, name) as listener:
        red = await connect(server.ws_url, token("red", name), auto_subscribe=False)
        blue = await connect(server.ws_url, token("blue", name), auto_subscribe=False)
        try:
            return await _cameras_seen(listener, [(red, RED, "cam-red"), (blue, BLUE, "cam-blue")])
        finally:
            await red.disconnect()
            await blue.disconnect()


async def _room_two_cameras(server: Server, name: str) -> list[str]:
    async with _ready_listener(server, name) as listener:
        cams = await connect(server.ws_url, token("cams", name), auto_subscribe=False)
        try:
            return await _cameras_seen(listener, [(cams, RED, "cam-red"), (cams, BLUE, "cam-blue")])
        finally:
            await cams.disconnect()


async def test_late_listener_sees_both_video_tracks(server: Server) -> None:
    """A listener joining a room with a red and a blue camera (and a tone) gets all three in its
    first subscriber offer with media; both cameras must show their colour, the tone be heard."""
    await check_rooms(server, "vb-late", _room_late_listener, ITERATIONS)


async def test_two_publishers_start_video_at_once(server: Server) -> None:
    """A connected listener (no video yet); two publishers start their cameras at the same moment.
    Their tracks are bound a few tens of ms apart: the second video m-line is added while the
    offer carrying the first is out, and goes out in the re-offer that follows its answer."""
    await check_rooms(server, "vb-two", _room_two_publishers, ITERATIONS)


async def test_one_publisher_starts_two_cameras_back_to_back(server: Server) -> None:
    """A connected listener; one participant publishes a red and a blue camera concurrently. The
    SDK negotiates both in one publisher offer, so both are bound together and both video m-lines
    go out in one subscriber offer to a listener whose transport is already up."""
    await check_rooms(server, "vb-cams", _room_two_cameras, ITERATIONS)

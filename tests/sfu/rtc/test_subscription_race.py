"""Two audio tracks reaching a WebRTC subscriber within one subscriber negotiation.

The shape of the bridge full-stack flake: an SDK listener, an SDK talker publishing 440 Hz, and a
caller on the local channel (what a bridge worker is) publishing 1 kHz at about the same moment.
Both tracks must be heard by content. The caller here is :class:`LocalTonePublisher` (the local
channel binds a track as soon as it is added, so its timing is under the test's control).
"""

from __future__ import annotations

import asyncio

from livekit import rtc

from roomline_harness.aio import wait_for
from roomline_harness.lk import (
    check_rooms,
    connect,
    heard,
    silent_track_report,
    subscribed_audio,
    token,
    tone_publisher,
)
from roomline_harness.local_peer import LocalTonePublisher
from roomline_harness.server import Server

TALKER_HZ = 440.0
CALLER_HZ = 1000.0
LISTENER_HZ = 330.0
SECOND_HZ = 700.0
#: Rooms per test: each one hits the window on its own (see the test docstrings).
ITERATIONS = 3


async def _both_heard(listener: rtc.Room) -> list[str]:
    """What was wrong with the talker's and the caller's track at ``listener`` ('' = heard)."""
    return [
        await heard(listener, "talker", TALKER_HZ),
        await heard(listener, "caller", CALLER_HZ),
    ]


async def _room_inflight(server: Server, name: str) -> list[str]:
    listener = await connect(server.ws_url, token("listener", name))
    talker = await connect(server.ws_url, token("talker", name))
    caller = LocalTonePublisher(CALLER_HZ, name="caller")
    talker_announced = asyncio.Event()

    @listener.on("track_published")
    def _on_published(pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
        if who.identity == "talker":
            talker_announced.set()

    try:
        await caller.join(str(server.data_dir), token("caller", name), name)
        async with tone_publisher(talker, TALKER_HZ):
            await asyncio.wait_for(talker_announced.wait(), 15)
            caller.add_track()
            return await _both_heard(listener)
    finally:
        await caller.close()
        await talker.disconnect()
        await listener.disconnect()


async def _room_late_listener(server: Server, name: str) -> list[str]:
    caller = LocalTonePublisher(CALLER_HZ, name="caller")
    await caller.join(str(server.data_dir), token("caller", name), name)
    caller.add_track()
    talker = await connect(server.ws_url, token("talker", name))
    listener: rtc.Room | None = None
    try:
        async with tone_publisher(talker, TALKER_HZ):
            await wait_for(lambda: caller.remote_tracks.get("talker"), 15, "talker's track")
            listener = await connect(server.ws_url, token("listener", name))
            return await _both_heard(listener)
    finally:
        await caller.close()
        await talker.disconnect()
        if listener is not None:
            await listener.disconnect()


async def _room_listener_publishes(server: Server, name: str) -> list[str]:
    listener = await connect(server.ws_url, token("listener", name))
    talker = await connect(server.ws_url, token("talker", name))
    second: rtc.Room | None = None
    try:
        async with tone_publisher(talker, TALKER_HZ):
            await wait_for(lambda: subscribed_audio(listener, "talker") is not None, 15, "talker")
            # The listener's publisher negotiation and the re-offer of its subscriber PC for the
            # second track overlap.
            async with tone_publisher(listener, LISTENER_HZ):
                second = await connect(server.ws_url, token("second", name))
                async with tone_publisher(second, SECOND_HZ):
                    # The second track first: once it plays, the re-offer that added it is
                    # done, and the first track is checked after it.
                    second_heard = await heard(listener, "second", SECOND_HZ)
                    results = [await heard(listener, "talker", TALKER_HZ), second_heard]
                    if any(results):  # where the packets stopped: SFU and client counters
                        report = await silent_track_report(server, listener, name)
                        results = [r + report if r else r for r in results]
                    return results
    finally:
        if second is not None:
            await second.disconnect()
        await talker.disconnect()
        await listener.disconnect()


async def test_first_track_heard_after_listener_publishes_and_a_second_arrives(
    server: Server,
) -> None:
    """The listener hears the talker, starts publishing, and a second publisher joins: the
    first subscription (negotiated before both) must keep playing."""
    await check_rooms(server, "race-republish", _room_listener_publishes, ITERATIONS)


async def test_track_added_while_the_subscriber_offer_is_in_flight(server: Server) -> None:
    """The listener's first audio subscription (the talker) is being negotiated when the
    caller's track is bound: the caller's m-line is added to the subscriber PC before the answer
    for the talker's arrives. The caller's AddTrack is sent when the listener learns of the
    talker's track, which the SFU announces just before its offer."""
    await check_rooms(server, "race-inflight", _room_inflight, ITERATIONS)


async def test_late_listener_hears_every_audio_track(server: Server) -> None:
    """A listener joining a room with two audio publishers subscribes to both in one batch (its
    subscriptions wait for its transport, then go out in one offer). The caller published first,
    so the talker's track is the second one: the CI symptom was the listener hearing digital
    silence from the talker."""
    await check_rooms(server, "race-late", _room_late_listener, ITERATIONS)

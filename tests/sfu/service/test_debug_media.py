"""``GET /debug/media``: per-track and per-subscription forwarding counters, roomAdmin only."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from livekit import api

from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency
from roomline_harness.lk import (
    RATE,
    connect,
    inbound_audio_stats,
    media_stats,
    record,
    subscribed_audio,
    token,
    tone_publisher,
)
from roomline_harness.local_peer import LocalTonePublisher
from roomline_harness.server import API_KEY, API_SECRET, Server

pytestmark = pytest.mark.timeout(120)


def _get(server: Server, query: str, tok: str | None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(f"{server.http_url}/debug/media{query}")
    if tok is not None:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _admin(room: str, admin: bool = True) -> str:
    grants = api.VideoGrants(room_admin=admin, room=room, room_list=not admin)
    return api.AccessToken(API_KEY, API_SECRET).with_grants(grants).to_jwt()


async def test_counters_of_forwarded_tracks(server: Server) -> None:
    """A WebRTC talker heard by a WebRTC listener and a local-channel caller, whose own track
    the listener hears too: every relay and every subscription reports its counters."""
    room_name = "debug-media"
    listener = await connect(server.ws_url, token("listener", room_name))
    talker = await connect(server.ws_url, token("talker", room_name))
    caller = LocalTonePublisher(1000.0, name="caller")
    try:
        await caller.join(str(server.data_dir), token("caller", room_name), room_name)
        caller.add_track()
        async with tone_publisher(talker, 440.0):
            await wait_for(
                lambda: all(subscribed_audio(listener, p) for p in ("talker", "caller")),
                15,
                "both tracks",
            )
            track = subscribed_audio(listener, "talker")
            assert track is not None
            pcm = await asyncio.wait_for(record(track, 1.0, skip=0.3, sound_within=3.0), 20)
            assert abs(dominant_frequency(pcm, RATE) - 440.0) < 5
            stats = await asyncio.to_thread(media_stats, server, room_name)
            client = await inbound_audio_stats(listener)
    finally:
        await caller.close()
        await talker.disconnect()
        await listener.disconnect()

    assert stats["room"] == room_name
    tracks = {t["publisher"]: t for t in stats["tracks"]}
    assert set(tracks) == {"talker", "caller"}
    talker_track = tracks["talker"]
    assert talker_track["track"] == track.sid and talker_track["bound"] is True
    assert talker_track["kind"] == "audio" and talker_track["mime"].lower() == "audio/opus"
    assert talker_track["received"] > 0 and talker_track["malformed"] == 0
    assert talker_track["sink_errors"] == 0
    sub = talker_track["subscribers"]["listener"]
    # The sender was started on the connected transport, in the sending direction.
    assert sub["mid"] and sub["direction"] == "sendonly" and sub["transport"] == "connected"
    assert sub["ready"] is True and sub["paused"] is False and sub["incompatible"] is False
    assert 0 < sub["forwarded"] <= talker_track["received"]
    assert sub["send_errors"] == 0 and sub["dropped_unknown_pt"] == 0
    assert talker_track["subscribers"]["caller"] == {"local": True, "dropped": 0}
    # The caller's track comes over the local channel and leaves over WebRTC.
    caller_track = tracks["caller"]
    assert caller_track["received"] > 0
    assert caller_track["subscribers"]["listener"]["forwarded"] > 0
    # The client's side of the same subscription (what a failure report puts next to it).
    [inbound] = [c for c in client if c.get("track") == track.sid]
    assert inbound["ssrc"] == sub["ssrc"] and inbound["mid"] == sub["mid"]
    assert inbound["packets_received"] > 0
    [transport] = [c for c in client if "transport" in c]
    assert transport["dtls_state"].endswith("CONNECTED") and transport["packets_received"] > 0


async def test_requires_room_admin_for_the_room(server: Server) -> None:
    async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lkapi:
        await lkapi.room.create_room(api.CreateRoomRequest(name="debug-auth"))
    status, body = _get(server, "?room=debug-auth", None)
    assert status == 401 and "roomAdmin" in str(body["error"])
    status, body = _get(server, "?room=debug-auth", "not-a-jwt")
    assert status == 401 and body["error"]
    status, body = _get(server, "?room=debug-auth", _admin("debug-auth", admin=False))
    assert status == 403 and "roomAdmin for room 'debug-auth'" in str(body["error"])
    status, body = _get(server, "?room=debug-auth", _admin("other-room"))
    assert status == 403
    status, body = _get(server, "", _admin("debug-auth"))
    assert status == 400 and "'room'" in str(body["error"])
    status, body = _get(server, "?room=no-such-room", _admin("no-such-room"))
    assert status == 404 and "no-such-room" in str(body["error"])
    status, body = _get(server, "?room=debug-auth", _admin("debug-auth"))
    assert status == 200 and body == {"room": "debug-auth", "tracks": []}

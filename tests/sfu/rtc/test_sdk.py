"""Media plane acceptance with the real LiveKit Python SDK (``livekit.rtc``) on loopback."""

from __future__ import annotations

import asyncio
import json

from livekit import api, rtc
from livekit.protocol import models

from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, snr_db
from roomline_harness.lk import RATE, connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.server import API_KEY, API_SECRET, Server


async def test_tone_identity_attributes_mute_and_kind(server: Server) -> None:
    room = "sdk-tone"
    a = await connect(
        server.ws_url,
        token(
            "alice",
            room,
            name="Alice A",
            kind="agent",
            metadata='{"m":1}',
            attributes={"role": "host"},
        ),
    )
    b = await connect(server.ws_url, token("bob", room))
    try:
        async with tone_publisher(a, 440.0, name="sine-track"):
            await wait_for(lambda: subscribed_audio(b, "alice") is not None, 10, "B subscribed")
            alice = b.remote_participants["alice"]
            assert alice.name == "Alice A"
            assert alice.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            assert alice.metadata == '{"m":1}'
            assert dict(alice.attributes) == {"role": "host"}
            (pub,) = alice.track_publications.values()
            assert pub.name == "sine-track" and pub.source == rtc.TrackSource.SOURCE_MICROPHONE
            assert pub.sid.startswith("TR_") and alice.sid.startswith("PA_")
            track = subscribed_audio(b, "alice")
            assert track is not None
            pcm = await record(track, 2.0, skip=1.0)
            assert abs(dominant_frequency(pcm, RATE) - 440.0) < 3
            assert snr_db(pcm, RATE, 440.0) >= 30

            # Attributes and metadata changes fire B's events.
            changed: list[dict[str, str]] = []
            metadata: list[str] = []
            b.on("participant_attributes_changed", lambda attrs, p: changed.append(dict(attrs)))
            b.on("participant_metadata_changed", lambda p, old, new: metadata.append(new))
            await a.local_participant.set_attributes({"role": "", "state": "talking"})
            await a.local_participant.set_metadata('{"m":2}')
            await wait_for(lambda: bool(changed) and bool(metadata), 5, "attribute events")
            assert dict(alice.attributes) == {"state": "talking"}  # empty value deleted the key
            assert metadata[-1] == '{"m":2}'

            # Mute is seen by B.
            muted: list[str] = []
            b.on("track_muted", lambda p, publication: muted.append(publication.sid))
            local_pub = next(iter(a.local_participant.track_publications.values()))
            local_pub.track.mute()  # type: ignore[union-attr]
            await wait_for(lambda: pub.sid in muted, 5, "mute event")
            assert pub.muted
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_data_to_one_identity_only(server: Server) -> None:
    room = "sdk-data"
    a = await connect(server.ws_url, token("a", room))
    b = await connect(server.ws_url, token("b", room))
    c = await connect(server.ws_url, token("c", room))
    got: dict[str, list[tuple[bytes, str | None, str]]] = {"b": [], "c": []}
    for name, r in (("b", b), ("c", c)):
        r.on(
            "data_received",
            lambda pkt, name=name: got[name].append(
                (pkt.data, pkt.participant.identity if pkt.participant else None, pkt.topic)
            ),
        )
    try:
        await wait_for(lambda: len(a.remote_participants) == 2, 10, "peers")
        await a.local_participant.publish_data(b"for-b", destination_identities=["b"], topic="t1")
        await a.local_participant.publish_data(b"for-all", reliable=False, topic="t2")
        await wait_for(lambda: len(got["b"]) >= 2 and len(got["c"]) >= 1, 10, "data")
        assert (b"for-b", "a", "t1") in got["b"]
        assert all(data != b"for-b" for data, _, _ in got["c"])
        assert (b"for-all", "a", "t2") in got["c"]
        # SendData from the API reaches clients, with no sender.
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            await lk.room.send_data(
                api.SendDataRequest(
                    room=room,
                    data=b"from-api",
                    kind=models.DataPacket.RELIABLE,
                    destination_identities=["c"],
                )
            )
        await wait_for(lambda: any(d == b"from-api" for d, _, _ in got["c"]), 5, "api data")
        assert next(s for d, s, _ in got["c"] if d == b"from-api") is None
        assert all(d != b"from-api" for d, _, _ in got["b"])
    finally:
        for r in (a, b, c):
            await r.disconnect()


async def test_manual_subscription(server: Server) -> None:
    room = "sdk-manual"
    a = await connect(server.ws_url, token("a", room))
    b = await connect(server.ws_url, token("b", room), auto_subscribe=False)
    try:
        async with tone_publisher(a, 440.0):
            await wait_for(
                lambda: (
                    "a" in b.remote_participants
                    and bool(b.remote_participants["a"].track_publications)
                ),
                10,
                "publication known",
            )
            await asyncio.sleep(1.0)
            assert subscribed_audio(b, "a") is None  # no audio until B subscribes
            pub = next(iter(b.remote_participants["a"].track_publications.values()))
            pub.set_subscribed(True)
            await wait_for(lambda: subscribed_audio(b, "a") is not None, 10, "subscribed")
            track = subscribed_audio(b, "a")
            assert track is not None
            pcm = await record(track, 1.5, skip=0.5)
            assert abs(dominant_frequency(pcm, RATE) - 440.0) < 3
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_roomservice_acts_on_live_clients(server: Server) -> None:
    room = "sdk-api"
    a = await connect(server.ws_url, token("a", room))
    b = await connect(server.ws_url, token("b", room))
    disconnected: list[str] = []
    b.on("participant_disconnected", lambda p: disconnected.append(p.identity))
    room_meta: list[str] = []
    b.on("room_metadata_changed", lambda old, new: room_meta.append(new))
    try:
        async with tone_publisher(a, 440.0):
            await wait_for(lambda: subscribed_audio(b, "a") is not None, 10, "subscribed")
            pub = next(iter(b.remote_participants["a"].track_publications.values()))
            async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
                listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
                assert sorted(p.identity for p in listed.participants) == ["a", "b"]
                await lk.room.mute_published_track(
                    api.MuteRoomTrackRequest(room=room, identity="a", track_sid=pub.sid, muted=True)
                )
                await wait_for(lambda: pub.muted, 5, "server mute seen by B")
                await lk.room.update_room_metadata(
                    api.UpdateRoomMetadataRequest(room=room, metadata=json.dumps({"phase": "qa"}))
                )
                await wait_for(lambda: bool(room_meta), 5, "room metadata")
                assert b.metadata == '{"phase": "qa"}'
                await lk.room.update_participant(
                    api.UpdateParticipantRequest(room=room, identity="a", attributes={"vip": "1"})
                )
                await wait_for(
                    lambda: b.remote_participants["a"].attributes.get("vip") == "1", 5, "attrs"
                )
                await lk.room.remove_participant(
                    api.RoomParticipantIdentity(room=room, identity="a")
                )
                await wait_for(lambda: "a" in disconnected, 5, "removed")
                await wait_for(
                    lambda: a.connection_state == rtc.ConnectionState.CONN_DISCONNECTED, 5, "a gone"
                )
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_delete_room_disconnects_everyone(server: Server) -> None:
    room = "sdk-delete"
    a = await connect(server.ws_url, token("a", room))
    try:
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        await wait_for(
            lambda: a.connection_state == rtc.ConnectionState.CONN_DISCONNECTED, 5, "disconnected"
        )
    finally:
        await a.disconnect()


async def test_same_identity_rejoin_replaces_old_session(server: Server) -> None:
    room = "sdk-dup"
    first = await connect(server.ws_url, token("dup", room))
    watcher = await connect(server.ws_url, token("w", room))
    try:
        second = await connect(server.ws_url, token("dup", room))
        await wait_for(
            lambda: first.connection_state == rtc.ConnectionState.CONN_DISCONNECTED, 5, "replaced"
        )
        await wait_for(
            lambda: (
                "dup" in watcher.remote_participants
                and watcher.remote_participants["dup"].sid == second.local_participant.sid
            ),
            5,
            "watcher sees the new session",
        )
        await second.disconnect()
    finally:
        await first.disconnect()
        await watcher.disconnect()


async def test_subscription_permissions_from_the_publisher(server: Server) -> None:
    room = "sdk-perms"
    a = await connect(server.ws_url, token("a", room))
    b = await connect(server.ws_url, token("b", room))
    c = await connect(server.ws_url, token("c", room))
    try:
        a.local_participant.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                rtc.ParticipantTrackPermission(participant_identity="b", allow_all=True)
            ],
        )
        await asyncio.sleep(0.5)
        async with tone_publisher(a, 440.0):
            await wait_for(lambda: subscribed_audio(b, "a") is not None, 10, "b subscribed")
            await wait_for(
                lambda: bool(c.remote_participants["a"].track_publications), 10, "c knows"
            )
            await asyncio.sleep(1.5)
            assert subscribed_audio(c, "a") is None  # c sees the track but may not receive it
            track = subscribed_audio(b, "a")
            assert track is not None
            pcm = await record(track, 1.0, skip=0.3)
            assert abs(dominant_frequency(pcm, RATE) - 440.0) < 3
            # Opening the track to everyone lets c subscribe (auto-subscribe resumes).
            a.local_participant.set_track_subscription_permissions(allow_all_participants=True)
            await wait_for(lambda: subscribed_audio(c, "a") is not None, 10, "c subscribed")
            track = subscribed_audio(c, "a")
            assert track is not None
            pcm = await record(track, 1.0, skip=0.3)
            assert abs(dominant_frequency(pcm, RATE) - 440.0) < 3
    finally:
        for r in (a, b, c):
            await r.disconnect()

"""RoomService against a running ``roomline serve``, driven by the real ``livekit-api`` client."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import jwt
import pytest
from livekit import api

from roomline_harness.server import API_KEY, API_SECRET, Server


def lk(server: Server, key: str = API_KEY, secret: str = API_SECRET) -> api.LiveKitAPI:
    return api.LiveKitAPI(server.http_url, key, secret)


def raw_post(
    server: Server, method: str, body: bytes, content_type: str, token: str | None
) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{server.http_url}/twirp/livekit.RoomService/{method}", data=body, method="POST"
    )
    req.add_header("Content-Type", content_type)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def admin_token(room: str = "", **grants: object) -> str:
    video = api.VideoGrants(room_create=True, room_list=True, room_admin=True, room=room, **grants)  # type: ignore[arg-type]
    return api.AccessToken(API_KEY, API_SECRET).with_grants(video).to_jwt()


async def test_create_list_metadata_delete(server: Server) -> None:
    async with lk(server) as client:
        room = await client.room.create_room(
            api.CreateRoomRequest(name="svc-a", empty_timeout=60, max_participants=7, metadata="m0")
        )
        assert room.sid.startswith("RM_") and room.name == "svc-a"
        assert (room.empty_timeout, room.max_participants, room.metadata) == (60, 7, "m0")
        again = await client.room.create_room(api.CreateRoomRequest(name="svc-a"))
        assert again.sid == room.sid  # an existing room is returned
        listed = await client.room.list_rooms(api.ListRoomsRequest())
        assert "svc-a" in [r.name for r in listed.rooms]
        only = await client.room.list_rooms(api.ListRoomsRequest(names=["svc-a", "nope"]))
        assert [r.name for r in only.rooms] == ["svc-a"]
        updated = await client.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room="svc-a", metadata='{"phase":2}')
        )
        assert updated.metadata == '{"phase":2}'
        parts = await client.room.list_participants(api.ListParticipantsRequest(room="svc-a"))
        assert list(parts.participants) == []
        await client.room.delete_room(api.DeleteRoomRequest(room="svc-a"))
        listed = await client.room.list_rooms(api.ListRoomsRequest(names=["svc-a"]))
        assert list(listed.rooms) == []


async def test_error_codes(server: Server) -> None:
    async with lk(server, secret="wrong-secret") as client:
        with pytest.raises(api.TwirpError) as err:
            await client.room.list_rooms(api.ListRoomsRequest())
        assert err.value.code == "unauthenticated" and err.value.status == 401
    async with lk(server) as client:
        with pytest.raises(api.TwirpError) as err:
            await client.room.delete_room(api.DeleteRoomRequest(room="does-not-exist"))
        assert err.value.code == "not_found"
        with pytest.raises(api.TwirpError) as err:
            await client.room.list_participants(api.ListParticipantsRequest(room="missing"))
        assert err.value.code == "not_found"
    # A token without roomList/roomAdmin: permission_denied.
    join_only = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity("u")
        .with_grants(api.VideoGrants(room_join=True, room="x"))
        .to_jwt()
    )
    async with api.LiveKitAPI(server.http_url, token=join_only) as client:  # type: ignore[call-arg]
        with pytest.raises(api.TwirpError) as err:
            await client.room.list_rooms(api.ListRoomsRequest())
        assert err.value.code == "permission_denied" and err.value.status == 403
        with pytest.raises(api.TwirpError) as err:
            await client.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room="x", metadata="m")
            )
        assert err.value.code == "permission_denied"


def test_json_bodies_both_namings(server: Server) -> None:
    token = admin_token()
    status, body = raw_post(
        server, "CreateRoom", b'{"name":"json-room","emptyTimeout":30}', "application/json", token
    )
    assert status == 200 and body["name"] == "json-room" and body["emptyTimeout"] == 30
    status, body = raw_post(
        server, "CreateRoom", b'{"name":"json-room2","empty_timeout":31}', "application/json", token
    )
    assert status == 200 and body["emptyTimeout"] == 31


def test_bad_input_batch_then_valid_request(server: Server) -> None:
    token = admin_token()
    now = int(time.time())
    expired = jwt.encode(
        {
            "iss": API_KEY,
            "sub": "x",
            "exp": now - 3600,
            "nbf": now - 7200,
            "video": {"roomList": True},
        },
        API_SECRET,
        algorithm="HS256",
    )
    none_alg = jwt.encode(
        {"iss": API_KEY, "sub": "x", "exp": now + 3600, "video": {"roomList": True}},
        None,  # type: ignore[arg-type]  # alg "none" takes no key; the stubs insist on one
        algorithm="none",
    )
    head, payload, sig = token.split(".")
    tampered = ".".join([head, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"), sig])
    cases: list[tuple[str, bytes, str, str | None, int, str, str]] = [
        (
            "ListRooms",
            b"\xff\xff\xff\x07garbage",
            "application/protobuf",
            token,
            400,
            "malformed",
            "protobuf",
        ),
        ("ListRooms", b"{not json", "application/json", token, 400, "malformed", "JSON"),
        ("ListRooms", b'{"names": 5}', "application/json", token, 400, "malformed", "JSON"),
        (
            "ListRooms",
            b"x" * (2 * 1024 * 1024),
            "application/json",
            token,
            400,
            "invalid_argument",
            "larger",
        ),
        ("NoSuchMethod", b"{}", "application/json", token, 404, "bad_route", "no handler"),
        ("ListRooms", b"{}", "text/plain", token, 404, "bad_route", "Content-Type"),
        ("ListRooms", b"{}", "application/json", None, 401, "unauthenticated", "Authorization"),
        ("ListRooms", b"{}", "application/json", expired, 401, "unauthenticated", "expired"),
        ("ListRooms", b"{}", "application/json", none_alg, 401, "unauthenticated", "none"),
        ("ListRooms", b"{}", "application/json", tampered, 401, "unauthenticated", ""),
        ("ListRooms", b"{}", "application/json", "a.b.c", 401, "unauthenticated", ""),
        ("CreateRoom", b'{"name":""}', "application/json", token, 400, "invalid_argument", "name"),
        (
            "CreateRoom",
            b'{"name":"neg","emptyTimeout":-1}',
            "application/json",
            token,
            400,
            "malformed",
            "",
        ),
    ]
    for method, body, ctype, tok, status, code, needle in cases:
        got_status, got = raw_post(server, method, body, ctype, tok)
        assert (got_status, got["code"]) == (status, code), (method, body[:40], got)
        assert needle in got["msg"], got
    assert server.alive()
    status, listed = raw_post(server, "ListRooms", b"{}", "application/json", token)
    assert status == 200 and isinstance(listed.get("rooms", []), list)


async def test_metrics_and_healthz(server: Server) -> None:
    async with lk(server) as client:
        await client.room.create_room(api.CreateRoomRequest(name="metrics-room"))
    await asyncio.sleep(0)
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as resp:
        assert resp.read() == b"ok"
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'roomline_api_requests_total{code="ok",method="RoomService/CreateRoom"}' in text
    assert 'roomline_participants{kind="sip"} 0' in text
    rooms_line = next(line for line in text.splitlines() if line.startswith("roomline_rooms "))
    assert float(rooms_line.split()[1]) >= 1

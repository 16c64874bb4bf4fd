"""RoomLeg on the real local channel of a running server, beside a LiveKit SDK participant."""

from __future__ import annotations

import asyncio

from bridge.worker.room_leg import RoomLeg, RoomLegEvents
from roomline.auth import mint_token
from roomline.wire import OPUS_PT
from roomline_harness.aio import wait_for
from roomline_harness.lk import connect, token, tone_publisher
from roomline_harness.server import API_KEY, API_SECRET, Server
from roomline_harness.video import RED, colour_camera
from sfu.local import socket_path
from sfu.media.rtp import parse_rtp


async def test_a_call_leg_receives_the_rooms_audio_and_no_video(server: Server) -> None:
    """A browser with camera and microphone in the room: the phone's leg gets the microphone's
    Opus and none of the camera's packets (it subscribes to audio only on the channel)."""
    room = "leg-video"
    seen: list[str] = []
    leg = RoomLeg(
        RoomLegEvents(
            joined=lambda: seen.append("joined"),
            audio=lambda: seen.append("audio"),
            left=lambda reason: seen.append(f"left:{reason}"),
            dtmf=lambda key: None,
        ),
        identity="sip_+15550777",
    )
    payload_types: list[int] = []
    accept = leg._on_rtp

    def count(sid: str, data: bytes) -> None:
        payload_types.append(parse_rtp(data).payload_type)
        accept(sid, data)

    leg._on_rtp = count  # type: ignore[method-assign]
    tok = mint_token(API_KEY, API_SECRET, identity="sip_+15550777", room=room, kind="sip")
    assert await leg.join(socket_path(str(server.data_dir)), tok, room)
    web = await connect(server.ws_url, token("web", room))
    try:
        async with colour_camera(web, RED), tone_publisher(web, 440.0):
            await wait_for(lambda: payload_types.count(OPUS_PT) >= 100, 15, "room audio")
            await asyncio.sleep(1.0)  # a second more of camera frames, were any forwarded
    finally:
        await web.disconnect()
        leg.leave()
    assert "audio" in seen
    assert set(payload_types) == {OPUS_PT}, sorted(set(payload_types))

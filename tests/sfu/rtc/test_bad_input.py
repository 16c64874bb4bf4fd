"""Bad input on /rtc: each gets a clear error, the server stays up, and others' audio keeps flowing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from livekit import api
from livekit.protocol import models
from livekit.protocol import rtc as rtc_pb

from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, snr_db
from roomline_harness.lk import RATE, connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.server import API_KEY, API_SECRET, Server, start_server, stop_server

ROOM = "bad-input"
DATA_LIMIT = 2000


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("bad"), limits={"max_data_packet_size": DATA_LIMIT})
    yield srv
    stop_server(srv)


class RawClient:
    """A bare WebSocket signalling client, to send what no SDK would."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.responses: list[rtc_pb.SignalResponse] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.responses.append(rtc_pb.SignalResponse.FromString(msg.data))

    def errors(self) -> list[rtc_pb.RequestResponse]:
        return [r.request_response for r in self.responses if r.HasField("request_response")]

    async def send(self, req: rtc_pb.SignalRequest) -> None:
        await self.ws.send_bytes(req.SerializeToString())


UNSUPPORTED_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 103",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendonly",
        "a=msid:stream cid-isac",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=rtcp-mux",
        "a=rtpmap:103 ISAC/16000",
        "",
    ]
)


async def test_bad_signalling_while_audio_flows(small_server: Server) -> None:
    server = small_server
    a = await connect(server.ws_url, token("a", ROOM))
    b = await connect(server.ws_url, token("b", ROOM))
    http = aiohttp.ClientSession()
    try:
        async with tone_publisher(a, 440.0):
            await wait_for(lambda: subscribed_audio(b, "a") is not None, 10, "audio")

            # A participant whose token forbids publishing, speaking raw signalling.
            tok = token("raw", ROOM, can_publish=False)
            ws = await http.ws_connect(f"{server.ws_url}/rtc?access_token={tok}&auto_subscribe=0")
            raw = RawClient(ws)
            await wait_for(lambda: bool(raw.responses), 5, "first frame")
            assert raw.responses[0].HasField("join")  # JoinResponse is always the first frame
            assert not raw.responses[0].join.participant.permission.can_publish

            await ws.send_bytes(b"\xff\x00garbage\x01\x02")
            await ws.send_str("{this is not json")
            await raw.send(
                rtc_pb.SignalRequest(
                    add_track=rtc_pb.AddTrackRequest(
                        cid="c1", name="mic", type=models.AUDIO, source=models.MICROPHONE
                    )
                )
            )
            await raw.send(
                rtc_pb.SignalRequest(
                    offer=rtc_pb.SessionDescription(type="offer", sdp="v=0\r\nbroken", id=1)
                )
            )
            await raw.send(
                rtc_pb.SignalRequest(
                    trickle=rtc_pb.TrickleRequest(
                        candidateInit="{not json", target=rtc_pb.PUBLISHER
                    )
                )
            )
            await raw.send(
                rtc_pb.SignalRequest(
                    subscription=rtc_pb.UpdateSubscription(track_sids=["TR_nope"], subscribe=True)
                )
            )
            await wait_for(
                lambda: any(r.HasField("subscription_response") for r in raw.responses), 10, "sub"
            )
            sub = next(r for r in raw.responses if r.HasField("subscription_response"))
            assert sub.subscription_response.track_sid == "TR_nope"
            assert sub.subscription_response.err == 2  # SE_TRACK_NOTFOUND
            await wait_for(lambda: len(raw.errors()) >= 5, 10, "five errors")
            messages = [e.message for e in raw.errors()]
            assert sum("malformed signal message" in m for m in messages) == 2
            add = next(e for e in raw.errors() if e.HasField("add_track"))
            assert add.reason == rtc_pb.RequestResponse.Reason.NOT_ALLOWED
            assert "not allowed to publish" in add.message
            assert any("publisher offer" in m for m in messages)
            assert any("candidateInit" in m for m in messages)

            # A publisher whose offer has only a codec roomline cannot forward.
            pub_tok = token("isac", ROOM)
            ws2 = await http.ws_connect(f"{server.ws_url}/rtc?access_token={pub_tok}")
            raw2 = RawClient(ws2)
            await wait_for(lambda: bool(raw2.responses), 5, "join")
            await raw2.send(
                rtc_pb.SignalRequest(
                    add_track=rtc_pb.AddTrackRequest(
                        cid="cid-isac", name="isac", type=models.AUDIO, source=models.MICROPHONE
                    )
                )
            )
            await raw2.send(
                rtc_pb.SignalRequest(
                    offer=rtc_pb.SessionDescription(type="offer", sdp=UNSUPPORTED_OFFER, id=1)
                )
            )
            await wait_for(lambda: bool(raw2.errors()), 10, "unsupported codec error")
            err = raw2.errors()[0]
            assert err.reason in (
                rtc_pb.RequestResponse.Reason.UNSUPPORTED_TYPE,
                rtc_pb.RequestResponse.Reason.INVALID_REQUEST,
            )
            assert "codec" in err.message or "offer" in err.message

            # Oversize data is dropped; a normal packet still arrives.
            got: list[bytes] = []
            b.on("data_received", lambda pkt: got.append(pkt.data))
            await a.local_participant.publish_data(b"x" * (DATA_LIMIT + 500), topic="big")
            await a.local_participant.publish_data(b"small", topic="ok")
            await wait_for(lambda: b"small" in got, 5, "small packet")
            assert all(len(d) <= DATA_LIMIT for d in got)

            # Through all of it, B still hears A's tone and the server is up.
            track = subscribed_audio(b, "a")
            assert track is not None
            pcm = await record(track, 1.5, skip=0.2)
            assert abs(dominant_frequency(pcm, RATE) - 440.0) < 3
            assert snr_db(pcm, RATE, 440.0) >= 25
            assert server.alive()
            await ws.close()
            await ws2.close()
    finally:
        await http.close()
        await a.disconnect()
        await b.disconnect()


async def test_join_rejections_before_upgrade(small_server: Server) -> None:
    server = small_server
    async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name="tiny", max_participants=1))
    first = await connect(server.ws_url, token("first", "tiny"))
    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, str, str]:
            async with http.get(f"{server.http_url}{path}") as resp:
                return (
                    resp.status,
                    await resp.text(),
                    resp.headers.get("Access-Control-Allow-Origin", ""),
                )

        full = token("second", "tiny")
        status, body, _ = await get(f"/rtc/validate?access_token={full}")
        assert status == 403 and "full" in body
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{server.ws_url}/rtc?access_token={full}")
        assert err.value.status == 403
        status, body, cors = await get(f"/rtc/validate?access_token={token('ok', 'other')}")
        assert (status, body, cors) == (200, "success", "*")
        assert (await get("/rtc/validate"))[0] == 401
        status, body, _ = await get("/rtc/validate?access_token=not.a.token")
        assert status == 401 and "token" in body
        no_join = api.AccessToken(API_KEY, API_SECRET).with_identity("x").to_jwt()
        assert (await get(f"/rtc/validate?access_token={no_join}"))[0] == 401
        status, _, cors = await get(f"/rtc/v1/validate?access_token={full}")
        assert status == 404 and cors == "*"  # clients fall back to /rtc on exactly this
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{server.ws_url}/rtc/v1?access_token={full}")
        assert err.value.status == 404
        assert (await get(f"/rtc?access_token={token('plain', 'other')}"))[0] == 404  # no upgrade

        # A resume (reconnect=1) is turned into a full reconnect: leave{RECONNECT} first.
        ws = await http.ws_connect(
            f"{server.ws_url}/rtc?access_token={token('first', 'tiny')}&reconnect=1&sid=PA_x"
        )
        msg = await ws.receive(timeout=5)
        leave = rtc_pb.SignalResponse.FromString(msg.data).leave
        assert leave.action == rtc_pb.LeaveRequest.Action.RECONNECT
        await ws.close()
    assert first.remote_participants == {} and server.alive()
    await first.disconnect()


async def test_ping_both_forms_and_client_leave(small_server: Server) -> None:
    server = small_server
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.ws_url}/rtc?access_token={token('pinger', 'pings')}")
        raw = RawClient(ws)
        await wait_for(lambda: bool(raw.responses), 5, "join")
        join = raw.responses[0].join
        assert join.ping_interval > 0 and join.ping_timeout > 0  # the Rust SDK panics on 0
        assert join.server_info.version and join.room.sid.startswith("RM_")
        assert join.subscriber_primary
        await raw.send(rtc_pb.SignalRequest(ping=1234))
        await raw.send(rtc_pb.SignalRequest(ping_req=rtc_pb.Ping(timestamp=5678, rtt=3)))
        await wait_for(
            lambda: (
                any(r.HasField("pong_resp") for r in raw.responses)
                and any(r.WhichOneof("message") == "pong" for r in raw.responses)
            ),
            5,
            "pongs",
        )
        pong_resp = next(r.pong_resp for r in raw.responses if r.HasField("pong_resp"))
        assert pong_resp.last_ping_timestamp == 5678 and pong_resp.timestamp > 0
        await raw.send(
            rtc_pb.SignalRequest(leave=rtc_pb.LeaveRequest(reason=models.CLIENT_INITIATED))
        )
        await asyncio.wait_for(raw.task, 5)  # the server closes the socket after a client leave
    async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
        await asyncio.sleep(0.2)
        parts = await lk.room.list_participants(api.ListParticipantsRequest(room="pings"))
        assert list(parts.participants) == []

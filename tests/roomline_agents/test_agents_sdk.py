"""In-appliance agents against the real LiveKit SDKs: dispatch, audio both ways, data, DTMF, failures.

One appliance per module (SIP off) with the test agents of ``fixture_agents`` registered. The SDK
(``livekit.rtc``) is the other participant; ``livekit-api`` drives AgentDispatchService.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from livekit import api, rtc

from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, snr_db
from roomline_harness.fixture_agents import REGISTRY
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.server import API_KEY, API_SECRET, Server, start_server, stop_server

pytestmark = pytest.mark.timeout(120)

AGENT_KIND = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("agents"), agents={"workers": 2, "registry": REGISTRY}
    )
    yield srv
    stop_server(srv)


@pytest.fixture
async def lk(agent_server: Server) -> AsyncIterator[api.LiveKitAPI]:
    async with api.LiveKitAPI(agent_server.http_url, API_KEY, API_SECRET) as client:
        yield client


def agents_in(room: rtc.Room) -> list[rtc.RemoteParticipant]:
    return [p for p in room.remote_participants.values() if p.kind == AGENT_KIND]


def metrics(server: Server) -> str:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def log_events(server: Server) -> list[dict[str, Any]]:
    events = []
    for raw in server.log_text().splitlines():
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def failed_count(server: Server, agent: str, kind: str) -> int:
    pattern = rf'roomline_agent_jobs_failed_total{{agent="{agent}",kind="{kind}"}} (\d+)'
    m = re.search(pattern, metrics(server))
    return int(m.group(1)) if m else 0


async def test_dispatch_probe_audio_data_dtmf_and_delete(
    agent_server: Server, lk: api.LiveKitAPI
) -> None:
    web = await connect(agent_server.ws_url, token("web", "probe-room"))
    states: list[str] = []
    echoes: list[tuple[str, bytes]] = []
    dtmf_back: list[str] = []
    left: list[rtc.RemoteParticipant] = []

    @web.on("participant_attributes_changed")
    def on_attrs(changed: dict[str, str], p: rtc.Participant) -> None:
        if "lk.agent.state" in changed:
            states.append(changed["lk.agent.state"])

    web.on("data_received", lambda d: echoes.append((d.participant.identity, d.data)))
    web.on("sip_dtmf_received", lambda d: dtmf_back.append(d.digit))
    web.on("participant_disconnected", left.append)
    try:
        async with tone_publisher(web, 1000.0):
            d = await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name="probe", room="probe-room", metadata='{"x": 1}'
                )
            )
            assert d.id.startswith("AD_") and d.agent_name == "probe" and d.room == "probe-room"
            await wait_for(lambda: bool(agents_in(web)), 20, "agent joins")
            (agent,) = agents_in(web)
            assert agent.name == "probe" and agent.identity.startswith("agent-AJ_")
            await wait_for(lambda: agent.attributes.get("lk.agent.state") == "listening", 10)

            # The agent's Opus track reaches the SDK: 440 Hz by content.
            await wait_for(lambda: subscribed_audio(web, agent.identity) is not None, 10)
            track = subscribed_audio(web, agent.identity)
            assert track is not None
            pcm = await record(track, 2.0, skip=0.5)
            assert abs(dominant_frequency(pcm, 48000) - 440) < 5
            assert snr_db(pcm, 48000, 440) > 20

            # The agent hears the SDK's 1000 Hz and knows who speaks.
            await wait_for(lambda: "heard.web" in agent.attributes, 15, "agent hears web")
            assert abs(int(agent.attributes["heard.web"]) - 1000) < 10

            # Data both ways, addressed to the sender.
            await web.local_participant.publish_data(b"hello", topic="t")
            await wait_for(lambda: bool(echoes), 10, "data echo")
            assert echoes[0] == (agent.identity, b"echo:hello")

            # SipDTMF both ways.
            await web.local_participant.publish_dtmf(code=5, digit="5")
            await wait_for(lambda: agent.attributes.get("dtmf") == "5", 10, "dtmf at agent")
            await wait_for(lambda: dtmf_back == ["5"], 10, "dtmf from agent")

            listed = await lk.agent_dispatch.list_dispatch("probe-room")
            assert [x.id for x in listed] == [d.id]
            (job,) = listed[0].state.jobs
            assert job.state.participant_identity == agent.identity
            assert job.state.status == 1  # JS_RUNNING
            assert listed[0].metadata == '{"x": 1}'
            got = await lk.agent_dispatch.get_dispatch(d.id, "probe-room")
            assert got is not None and got.id == d.id

            deleted = await lk.agent_dispatch.delete_dispatch(d.id, "probe-room")
            assert deleted.id == d.id and deleted.state.deleted_at > 0
            await wait_for(lambda: not agents_in(web), 15, "agent leaves")
            assert left and left[-1].identity == agent.identity
            assert await lk.agent_dispatch.list_dispatch("probe-room") == []
        assert states[0] in ("initializing", "listening") and "listening" in states
    finally:
        await web.disconnect()


async def test_create_room_with_agents_starts_them(
    agent_server: Server, lk: api.LiveKitAPI
) -> None:
    await lk.room.create_room(
        api.CreateRoomRequest(name="auto-room", agents=[api.RoomAgentDispatch(agent_name="probe")])
    )
    web = await connect(agent_server.ws_url, token("web", "auto-room"))
    try:
        await wait_for(lambda: bool(agents_in(web)), 20, "room agent joins")
        listed = await lk.agent_dispatch.list_dispatch("auto-room")
        assert [x.agent_name for x in listed] == ["probe"]
    finally:
        await web.disconnect()
        await lk.room.delete_room(api.DeleteRoomRequest(room="auto-room"))


@pytest.mark.parametrize(
    ("agent", "kind"), [("crash", "error"), ("die", "crashed"), ("hang", "hung")]
)
async def test_failing_agent_removed_with_agent_error_room_goes_on(
    agent_server: Server, lk: api.LiveKitAPI, agent: str, kind: str
) -> None:
    room = f"fail-{agent}"
    web = await connect(agent_server.ws_url, token("web", room))
    other = await connect(agent_server.ws_url, token("other", room))
    gone: list[rtc.RemoteParticipant] = []
    web.on("participant_disconnected", gone.append)
    before = failed_count(agent_server, agent, kind)
    try:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=agent, room=room, restart_policy=api.JobRestartPolicy.JRP_NEVER
            )
        )
        await wait_for(lambda: bool(agents_in(web)), 20, "agent joins")
        (joined,) = agents_in(web)
        await wait_for(
            lambda: any(p.identity == joined.identity for p in gone), 30, "agent removed"
        )
        removed = next(p for p in gone if p.identity == joined.identity)
        assert removed.disconnect_reason == rtc.DisconnectReason.AGENT_ERROR
        assert failed_count(agent_server, agent, kind) == before + 1
        assert "AGENT_ERROR" in agent_server.log_text()
        if kind == "error":  # the job process logged it, in the main process's JSON lines
            # The manager logs the failure too, in whichever order the two lines arrive: pick the
            # job process's own line.
            lines = [
                e
                for e in log_events(agent_server)
                if e.get("event") == "agent job failed"
                and e.get("room") == room
                and e.get("logger") == "roomline_agents.sdk.worker"
            ]
            assert lines, "the job process did not log its failure"
            line = lines[0]
            assert line["level"] == "error"
            assert line["pid"] != agent_server.process.pid and line["agent"] == agent
            assert "agent bug" in json.dumps(line["exception"])
        listed = await lk.agent_dispatch.list_dispatch(room)
        assert listed[0].state.jobs[-1].state.status == 3  # JS_FAILED
        assert listed[0].state.jobs[-1].state.error

        # The room goes on: SDK-to-SDK audio still flows.
        async with tone_publisher(other, 660.0):
            await wait_for(lambda: subscribed_audio(web, "other") is not None, 10)
            track = subscribed_audio(web, "other")
            assert track is not None
            pcm = await record(track, 1.5, skip=0.5)
        assert abs(dominant_frequency(pcm, 48000) - 660) < 5
        assert agent_server.alive()
    finally:
        await web.disconnect()
        await other.disconnect()


async def twirp(server: Server, method: str, body: bytes, tok: str, json: bool = True) -> tuple:
    headers = {
        "Authorization": f"Bearer {tok}",
        "Content-Type": "application/json" if json else "application/protobuf",
    }
    url = f"{server.http_url}/twirp/livekit.AgentDispatchService/{method}"
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_bad_requests_get_clear_errors(agent_server: Server, lk: api.LiveKitAPI) -> None:
    with pytest.raises(api.TwirpError) as err:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="nobody", room="bad-room")
        )
    assert err.value.code == "not_found"
    assert "nobody" in err.value.message and "echo" in err.value.message

    with pytest.raises(api.TwirpError) as err:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="", room="bad-room")
        )
    assert err.value.code == "invalid_argument"

    with pytest.raises(api.TwirpError) as err:
        await lk.agent_dispatch.delete_dispatch("AD_missing", "bad-room")
    assert err.value.code == "not_found"

    admin = api.AccessToken(API_KEY, API_SECRET).with_grants(
        api.VideoGrants(room_admin=True, room="bad-room")
    )
    other_room = api.AccessToken(API_KEY, API_SECRET).with_grants(
        api.VideoGrants(room_admin=True, room="elsewhere")
    )
    status, body = await twirp(
        agent_server,
        "CreateDispatch",
        b'{"agentName":"echo","room":"bad-room"}',
        other_room.to_jwt(),
    )
    assert status == 403 and body["code"] == "permission_denied"
    status, body = await twirp(agent_server, "CreateDispatch", b"{not json", admin.to_jwt())
    assert status == 400 and body["code"] in ("malformed", "invalid_argument")
    status, body = await twirp(
        agent_server, "ListDispatch", b"\xff\xfe\x00garbage", admin.to_jwt(), json=False
    )
    assert status == 400 and body["code"] in ("malformed", "invalid_argument")
    status, body = await twirp(
        agent_server,
        "CreateDispatch",
        b'{"agentName":"echo","room":"bad-room","restartPolicy":7}',
        admin.to_jwt(),
    )
    assert status == 400 and body["code"] == "invalid_argument"
    big = "x" * 70000
    status, body = await twirp(
        agent_server,
        "CreateDispatch",
        b'{"agentName":"echo","room":"bad-room","metadata":"' + big.encode() + b'"}',
        admin.to_jwt(),
    )
    assert status == 429 and body["code"] == "resource_exhausted"

    # The server keeps serving.
    assert agent_server.alive()
    assert await lk.agent_dispatch.list_dispatch("bad-room") == []
    rooms = await lk.room.list_rooms(api.ListRoomsRequest())
    assert rooms is not None

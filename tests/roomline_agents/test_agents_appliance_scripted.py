"""``/agent`` on the whole appliance with hand-written workers (fast; no livekit-agents needed).

* a non-agent token gets 401, a plain GET 404;
* a worker answering ``available=false`` gets no job: the other worker of the name gets it;
* garbage frames close only that worker;
* ListDispatch shows external jobs (worker id ``AW_…``) and built-in ones (``roomline``);
* DeleteDispatch sends JobTermination;
* CreateRoom.agents and a join token's ``roomConfig.agents`` dispatch to the external worker;
* a room with only an agent in it closes after departure_timeout; max_participants ignores agents.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol import agent as agent_pb

from roomline.auth import mint_token
from roomline_harness import lk
from roomline_harness.agent_appliance import start_appliance, workers_registered
from roomline_harness.aio import wait_for
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_appliance(
        tmp_path_factory.mktemp("agents-scripted"),
        room={"departure_timeout": 2, "empty_timeout": 30},
    )
    try:
        yield srv
    finally:
        stop_server(srv)


def wm(**kw: object) -> bytes:
    return agent_pb.WorkerMessage(**kw).SerializeToString()  # type: ignore[arg-type]


def agent_header() -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(API_KEY, API_SECRET, identity="", agent=True)}


class Scripted:
    """A worker that registers and answers each AvailabilityRequest with ``available``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, available: bool) -> None:
        self.ws = ws
        self.available = available
        self.offers: list[agent_pb.Job] = []
        self.assigned: list[agent_pb.JobAssignment] = []
        self.terminated: list[str] = []
        self.closed: aiohttp.WSMessage | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            m = agent_pb.ServerMessage.FromString(msg.data)
            if m.HasField("availability"):
                job = m.availability.job
                self.offers.append(job)
                await self.ws.send_bytes(
                    wm(
                        availability=agent_pb.AvailabilityResponse(
                            job_id=job.id, available=self.available
                        )
                    )
                )
            elif m.HasField("assignment"):
                self.assigned.append(m.assignment)
                await self.ws.send_bytes(
                    wm(
                        update_job=agent_pb.UpdateJobStatus(
                            job_id=m.assignment.job.id, status=agent_pb.JS_RUNNING
                        )
                    )
                )
            elif m.HasField("termination"):
                self.terminated.append(m.termination.job_id)
        self.closed = msg if "msg" in locals() else None

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def connect_worker(
    s: aiohttp.ClientSession,
    server: Server,
    name: str,
    available: bool = True,
    job_type: int = agent_pb.JT_ROOM,
) -> Scripted:
    ws = await s.ws_connect(server.ws_url + "/agent", headers=agent_header())
    reg = agent_pb.RegisterWorkerRequest(agent_name=name, version="t", type=job_type)  # type: ignore[arg-type]
    await ws.send_bytes(wm(register=reg))
    reply = agent_pb.ServerMessage.FromString(await ws.receive_bytes(timeout=10))
    assert reply.register.worker_id.startswith("AW_")
    return Scripted(ws, available)


async def test_http_answers(appliance: Server, http: aiohttp.ClientSession) -> None:
    url = appliance.http_url + "/agent"
    async with http.get(url, headers=agent_header()) as r:
        assert r.status == 404
    room_token = mint_token(API_KEY, API_SECRET, identity="u", room="r")
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(url, headers={"Authorization": f"Bearer {room_token}"})
    assert exc.value.status == 401


async def test_refusal_garbage_list_delete(appliance: Server, http: aiohttp.ClientSession) -> None:
    refuser = await connect_worker(http, appliance, "scripted", available=False)
    taker = await connect_worker(http, appliance, "scripted")
    await wait_for(lambda: workers_registered(appliance, "scripted") == 2, 30, "2 workers")

    # Garbage closes only that connection.
    bad = await http.ws_connect(appliance.ws_url + "/agent", headers=agent_header())
    await bad.send_bytes(b"\xff\xff\xff\xff")
    msg = await bad.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1002

    async with api.LiveKitAPI(appliance.http_url, API_KEY, API_SECRET) as lkapi:
        for i in range(3):
            d = await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="scripted", room=f"s-{i}", metadata="m")
            )
            assert d.agent_name == "scripted" and d.id.startswith("AD_")
        await wait_for(lambda: len(taker.assigned) == 3, 30, "3 assignments")
        assert not refuser.assigned  # it may have been asked, but it never got a job
        assert workers_registered(appliance, "scripted") == 2  # garbage did not hurt them

        [listed] = await lkapi.agent_dispatch.list_dispatch("s-0")
        [job] = listed.state.jobs
        assert job.state.worker_id.startswith("AW_")
        # Assignments arrive in the order the offers resolve (the refuser may be asked first for
        # one room), so match by room rather than by position.
        [s0] = [a for a in taker.assigned if a.job.room.name == "s-0"]
        assert job.id == s0.job.id
        assert job.state.status == agent_pb.JS_RUNNING
        assert s0.job.room.sid.startswith("RM_")

        # Built-ins coexist; ListDispatch tells them apart.
        echo = await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="echo", room="s-0")
        )
        listed_all = await lkapi.agent_dispatch.list_dispatch("s-0")
        by_name = {d.agent_name: d for d in listed_all}
        assert set(by_name) == {"scripted", "echo"}
        assert by_name["echo"].state.jobs[0].state.worker_id == "roomline"
        await lkapi.agent_dispatch.delete_dispatch(echo.id, "s-0")

        await lkapi.agent_dispatch.delete_dispatch(listed.id, "s-0")
        await wait_for(lambda: job.id in taker.terminated, 10, "JobTermination")
        assert await lkapi.agent_dispatch.list_dispatch("s-0") == []

        with pytest.raises(api.TwirpError) as exc:
            await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="nobody", room="s-9")
            )
        assert exc.value.code == "not_found"
        for i in (1, 2):
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=f"s-{i}"))
        await wait_for(lambda: len(taker.terminated) == 3, 10, "terminations on room delete")
    await refuser.close()
    await taker.close()


async def test_room_config_and_token_dispatch(
    appliance: Server, http: aiohttp.ClientSession
) -> None:
    worker = await connect_worker(http, appliance, "cfg-agent")
    async with api.LiveKitAPI(appliance.http_url, API_KEY, API_SECRET) as lkapi:
        await lkapi.room.create_room(
            api.CreateRoomRequest(
                name="cfg-room",
                agents=[api.RoomAgentDispatch(agent_name="cfg-agent", metadata="from-create")],
            )
        )
        await wait_for(lambda: len(worker.assigned) == 1, 10, "CreateRoom.agents job")
        assert worker.assigned[0].job.room.name == "cfg-room"
        assert worker.assigned[0].job.metadata == "from-create"

        # The join that creates the room carries roomConfig.agents.
        tok = (
            api.AccessToken(API_KEY, API_SECRET)
            .with_identity("alice")
            .with_grants(api.VideoGrants(room_join=True, room="tok-room"))
            .with_room_config(
                api.RoomConfiguration(
                    agents=[api.RoomAgentDispatch(agent_name="cfg-agent", metadata="from-token")]
                )
            )
            .to_jwt()
        )
        room = await lk.connect(appliance.ws_url, tok)
        try:
            await wait_for(lambda: len(worker.assigned) == 2, 10, "roomConfig.agents job")
            assert worker.assigned[1].job.room.name == "tok-room"
            assert worker.assigned[1].job.metadata == "from-token"
        finally:
            await room.disconnect()
        for name in ("cfg-room", "tok-room"):
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))
    await worker.close()


async def test_agents_are_dependent(appliance: Server) -> None:
    """An AGENT takes no seat and does not keep the room open."""
    async with api.LiveKitAPI(appliance.http_url, API_KEY, API_SECRET) as lkapi:
        await lkapi.room.create_room(api.CreateRoomRequest(name="dep-room", max_participants=1))
        agent = await lk.connect(
            appliance.ws_url, lk.token("bot", "dep-room", kind="agent", agent=True)
        )
        human = await lk.connect(appliance.ws_url, lk.token("alice", "dep-room"))
        await wait_for(lambda: "bot" in human.remote_participants, 10, "agent visible")
        assert human.remote_participants["bot"].kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        await human.disconnect()
        # departure_timeout is 2 s: the room closes with the agent still in it.
        gone = asyncio.Event()
        agent.on("disconnected", lambda *_: gone.set())
        await asyncio.wait_for(gone.wait(), 15)
        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=["dep-room"]))
        assert not rooms.rooms


async def test_agent_session_data_paths(appliance: Server) -> None:
    """What an AgentSession uses over /rtc: text streams (lk.transcription) and byte streams with
    destination filtering, RPC both ways, lk.agent.state broadcast."""
    agent = await lk.connect(
        appliance.ws_url, lk.token("agent-x", "data-room", kind="agent", agent=True)
    )
    alice = await lk.connect(appliance.ws_url, lk.token("alice", "data-room"))
    carol = await lk.connect(appliance.ws_url, lk.token("carol", "data-room"))
    got: dict[str, list[str]] = {"alice": [], "carol": [], "agent": []}

    def text_handler(who: str) -> object:
        def handler(reader: rtc.TextStreamReader, sender: str) -> None:
            async def read() -> None:
                got[who].append(f"text {sender} {await reader.read_all()}")

            asyncio.ensure_future(read())

        return handler

    def bytes_handler(who: str) -> object:
        def handler(reader: rtc.ByteStreamReader, sender: str) -> None:
            async def read() -> None:
                data = b"".join([chunk async for chunk in reader])
                got[who].append(f"bytes {sender} {len(data)}")

            asyncio.ensure_future(read())

        return handler

    try:
        for who, room in (("alice", alice), ("carol", carol), ("agent", agent)):
            room.register_text_stream_handler("lk.transcription", text_handler(who))  # type: ignore[arg-type]
            room.register_byte_stream_handler("lk.agent.session", bytes_handler(who))  # type: ignore[arg-type]
        await wait_for(lambda: len(agent.remote_participants) == 2, 10, "everyone in")
        await agent.local_participant.send_text(
            "hello alice", topic="lk.transcription", destination_identities=["alice"]
        )
        writer = await agent.local_participant.stream_bytes(
            "blob", topic="lk.agent.session", destination_identities=["carol"]
        )
        await writer.write(b"x" * 40000)  # several chunks
        await writer.aclose()
        await alice.local_participant.send_text("hi agent", topic="lk.transcription")

        @agent.local_participant.register_rpc_method("ping")  # type: ignore[arg-type]
        async def ping(data: rtc.RpcInvocationData) -> str:
            return f"pong {data.caller_identity} {data.payload}"

        reply = await alice.local_participant.perform_rpc(
            destination_identity="agent-x", method="ping", payload="1"
        )
        assert reply == "pong alice 1"
        await wait_for(
            lambda: (
                got["alice"] == ["text agent-x hello alice"]
                and sorted(got["carol"]) == ["bytes agent-x 40000", "text alice hi agent"]
            ),
            10,
            f"streams {got}",
        )
        await wait_for(lambda: got["agent"] == ["text alice hi agent"], 10, f"{got}")

        await agent.local_participant.set_attributes({"lk.agent.state": "listening"})
        await wait_for(
            lambda: (
                carol.remote_participants["agent-x"].attributes.get("lk.agent.state") == "listening"
            ),
            10,
            "lk.agent.state",
        )
        assert got["alice"] == ["text agent-x hello alice"]  # nothing meant for others
    finally:
        for room in (agent, alice, carol):
            await room.disconnect()


async def test_lost_worker_agent_removed_then_redispatched(
    appliance: Server, http: aiohttp.ClientSession
) -> None:
    """The job's agent (here an SDK client joining with the job's token) stays in the room when
    its worker's socket dies; before the job is offered to the other worker, the appliance removes
    it. Then the agent leaving the room ends the job (JS_FAILED, as LiveKit)."""
    first = await connect_worker(http, appliance, "ha-scripted")
    async with api.LiveKitAPI(appliance.http_url, API_KEY, API_SECRET) as lkapi:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="ha-scripted", room="ha-s")
        )
        await wait_for(lambda: len(first.assigned) == 1, 20, "assignment")
        assignment = first.assigned[0]
        agent = await lk.connect(appliance.ws_url, assignment.token)
        left = asyncio.Event()
        reasons: list[int] = []

        def on_disconnected(reason: object) -> None:
            reasons.append(int(reason))  # type: ignore[call-overload]
            left.set()

        agent.on("disconnected", on_disconnected)
        second = await connect_worker(http, appliance, "ha-scripted")
        await first.close()  # the worker dies; its agent is still in the room
        await asyncio.wait_for(left.wait(), 30)  # removed after the 5 s re-dispatch grace ...
        assert reasons == [rtc.DisconnectReason.PARTICIPANT_REMOVED]
        await wait_for(lambda: len(second.assigned) == 1, 20, "re-dispatch")  # ... then moved
        assert second.offers[0].id == assignment.job.id
        [d] = await lkapi.agent_dispatch.list_dispatch("ha-s")
        assert d.state.jobs[-1].state.worker_id != assignment.job.state.worker_id

        # The new agent joins, then leaves by itself: its job ends.
        agent2 = await lk.connect(appliance.ws_url, second.assigned[0].token)
        await asyncio.sleep(0.5)
        await agent2.disconnect()
        await wait_for(lambda: assignment.job.id in second.terminated, 20, "JobTermination")
        [d] = await lkapi.agent_dispatch.list_dispatch("ha-s")
        assert d.state.jobs[-1].state.status == agent_pb.JS_FAILED
        assert d.state.jobs[-1].state.error == "agent worker left the room"
        await lkapi.room.delete_room(api.DeleteRoomRequest(room="ha-s"))
    await second.close()


@pytest.mark.parametrize("job_type", [agent_pb.JT_PUBLISHER, agent_pb.JT_PARTICIPANT])
async def test_job_per_participant(
    appliance: Server, http: aiohttp.ClientSession, job_type: int
) -> None:
    """A JT_PARTICIPANT worker gets one job per joining participant (not for agents), also when
    the join creates the room; a JT_PUBLISHER worker one per participant at its first published
    track (as LiveKit), none for one that only listens. The participant leaving ends its job."""
    name = f"per-{job_type}"
    room = f"per-room-{job_type}"
    worker = await connect_worker(http, appliance, name, job_type=job_type)
    tok = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity("alice")
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_room_config(api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=name)]))
        .to_jwt()
    )
    alice = await lk.connect(appliance.ws_url, tok)
    bob = await lk.connect(appliance.ws_url, lk.token("bob", room))
    carol = await lk.connect(appliance.ws_url, lk.token("carol", room))  # never publishes
    bot = await lk.connect(appliance.ws_url, lk.token("bot", room, kind="agent", agent=True))
    publishers = ["alice", "bob"]
    expected = publishers if job_type == agent_pb.JT_PUBLISHER else [*publishers, "carol"]
    try:
        if job_type == agent_pb.JT_PUBLISHER:
            await asyncio.sleep(1.0)
            assert worker.offers == []  # joined, nothing published yet
        async with contextlib.AsyncExitStack() as tones:
            for peer in (alice, bob, bot):
                await tones.enter_async_context(lk.tone_publisher(peer))
            await wait_for(
                lambda: len(worker.assigned) == len(expected), 20, "per-participant jobs"
            )
            await asyncio.sleep(0.5)
            jobs = {a.job.participant.identity: a.job for a in worker.assigned}
            assert sorted(jobs) == expected and len(worker.offers) == len(expected)
            assert all(j.type == job_type for j in jobs.values())
            await bob.disconnect()
            await wait_for(lambda: jobs["bob"].id in worker.terminated, 20, "bob's job ends")
            assert jobs["alice"].id not in worker.terminated
    finally:
        for peer in (alice, bob, carol, bot):
            await peer.disconnect()
    await worker.close()

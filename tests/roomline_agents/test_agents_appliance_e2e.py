"""Unmodified livekit-agents 1.8 workers against the whole appliance (``python -m appliance.cli``).

* automatic dispatch: a worker without agent name gets a job for a room created by a join; the SDK
  observer sees an AGENT participant, its ``lk.agent.state`` attribute update, and hears its tone;
  when the observer leaves, the room (only the agent left) closes and the job ends;
* by name: ``CreateRoom.agents`` and ``CreateDispatch``; DeleteDispatch ends the job and removes
  the agent; a JT_PUBLISHER worker gets one job per participant, at its first published track;
* two workers of one name share jobs; SIGKILL of one moves its running job to the other.

Workers run from another venv (``worker_helpers.agents_python``); skipped when none is found.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit import api, rtc

from roomline_harness import lk
from roomline_harness.agent_appliance import (
    TONE_WORKER,
    start_appliance,
    workers_registered,
)
from roomline_harness.agent_workers import agents_python, start_worker, stop_worker
from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@pytest.fixture(scope="module")
def py() -> str:
    found = agents_python()
    if found is None:
        pytest.skip("livekit-agents is not installed (set ROOMLINE_AGENTS_PYTHON)")
    return found


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, py: str) -> Iterator[Server]:
    srv = start_appliance(
        tmp_path_factory.mktemp("agents-e2e"),
        room={"departure_timeout": 3, "empty_timeout": 120},
    )
    try:
        yield srv
    finally:
        stop_server(srv)


class Workers:
    def __init__(self, py: str, server: Server, tmp: Path) -> None:
        self.py, self.server, self.tmp = py, server, tmp
        self.out = tmp / "notes.txt"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, tag: str, agent_name: str = "", **env: str) -> None:
        workdir = self.tmp / tag
        workdir.mkdir()
        proc, log_path = start_worker(
            self.py,
            TONE_WORKER,
            workdir,
            self.server.ws_url,
            {"E2E_OUT": str(self.out), "E2E_TAG": tag, "E2E_AGENT_NAME": agent_name, **env},
        )
        self.procs[tag], self.logs[tag] = proc, log_path

    def notes(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        return [line.split() for line in self.out.read_text().splitlines()]

    def note(self, *words: str) -> list[str] | None:
        """The first note starting with ``words`` (tag, event, job ...)."""
        for n in self.notes():
            if n[: len(words)] == list(words):
                return n
        return None

    def debug(self) -> str:
        text = "\n--- appliance\n" + self.server.log_text()[-3000:]
        for tag, path in self.logs.items():
            text += f"\n--- worker {tag}\n" + path.read_text(errors="replace")[-3000:]
        return text

    async def wait_registered(self, agent_name: str, count: int) -> None:
        try:
            await wait_for(
                lambda: workers_registered(self.server, agent_name) >= count,
                90,
                f"{count} worker(s) {agent_name!r}",
            )
        except AssertionError:
            raise AssertionError(self.debug()) from None

    async def wait(self, cond: object, timeout: float, what: str) -> None:
        try:
            await wait_for(cond, timeout, what)  # type: ignore[arg-type]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.debug()}") from None

    async def kill(self, tag: str) -> None:
        proc = self.procs[tag]
        os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)

    async def stop_all(self) -> None:
        for proc in self.procs.values():
            await stop_worker(proc)


@pytest.fixture
async def workers(py: str, appliance: Server, tmp_path: Path) -> AsyncIterator[Workers]:
    w = Workers(py, appliance, tmp_path)
    try:
        yield w
    finally:
        await w.stop_all()
        await wait_for(lambda: workers_registered(appliance, "") == 0, 30, "workers gone")


def agents_in(room: rtc.Room) -> list[rtc.RemoteParticipant]:
    return [p for p in room.remote_participants.values() if p.kind == AGENT]


async def hear(room: rtc.Room, identity: str, freq: float, w: Workers) -> None:
    await w.wait(lambda: lk.subscribed_audio(room, identity) is not None, 30, "agent audio")
    track = lk.subscribed_audio(room, identity)
    assert track is not None
    pcm = await asyncio.wait_for(lk.record(track, 1.0, skip=0.5, sound_within=10), 25)
    heard = dominant_frequency(pcm, lk.RATE)
    if abs(heard - freq) >= 15:
        # Where the track's packets stopped: the SFU's counters and what the client received.
        report = await lk.silent_track_report(w.server, room, room.name)
        what = "digital silence" if not pcm.any() else f"{heard:.0f} Hz"
        raise AssertionError(
            f"{room.local_participant.identity} heard {what} from {identity}'s track "
            f"{track.sid}, expected {freq:.0f} Hz{report}{w.debug()}"
        )


async def test_automatic_dispatch_tone_and_room_close(appliance: Server, workers: Workers) -> None:
    workers.start("auto", E2E_FREQ="440")
    await workers.wait_registered("", 1)
    observer = await lk.connect(appliance.ws_url, lk.token("alice", "auto-room"))
    try:
        await workers.wait(lambda: agents_in(observer), 60, "an AGENT participant")
        [agent] = agents_in(observer)
        assert agent.identity.startswith("agent-AJ_")
        await workers.wait(
            lambda: agent.attributes.get("lk.agent.state") == "speaking", 30, "lk.agent.state"
        )
        await hear(observer, agent.identity, 440.0, workers)
        joined = workers.note("auto", "joined")
        assert joined is not None and joined[3] == "auto-room" and joined[4] == agent.identity
    finally:
        await observer.disconnect()
    # Only the agent is left: the room closes after departure_timeout (3 s) and the job ends.
    job_id = joined[2]
    await workers.wait(lambda: workers.note("auto", "shutdown", job_id), 30, "job end")
    async with api.LiveKitAPI(appliance.http_url, API_KEY, API_SECRET) as lkapi:
        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=["auto-room"]))
        assert not rooms.rooms


async def test_named_dispatch(appliance: Server, workers: Workers) -> None:
    workers.start("named", "tone-agent", E2E_FREQ="660")
    workers.start("pub", "pub-agent", E2E_WORKER_TYPE="publisher", E2E_FREQ="880")
    await workers.wait_registered("tone-agent", 1)
    await workers.wait_registered("pub-agent", 1)
    async with api.LiveKitAPI(appliance.http_url, API_KEY, API_SECRET) as lkapi:
        await lkapi.room.create_room(
            api.CreateRoomRequest(
                name="cr-room",
                agents=[
                    api.RoomAgentDispatch(agent_name="tone-agent"),
                    api.RoomAgentDispatch(agent_name="pub-agent"),
                ],
            )
        )
        observer = await lk.connect(appliance.ws_url, lk.token("bob", "cr-room"))
        try:
            await workers.wait(lambda: len(agents_in(observer)) == 1, 60, "the room's agent")
            # The JT_PUBLISHER job starts when bob publishes (as LiveKit), and is about bob.
            assert workers.note("pub", "joined") is None
            async with lk.tone_publisher(observer, 330.0):
                await workers.wait(lambda: len(agents_in(observer)) == 2, 60, "two agents")
            by_name = {p.attributes.get("lk.agent_name"): p for p in agents_in(observer)}
            assert set(by_name) == {"tone-agent", "pub-agent"}
            assert by_name["tone-agent"].attributes["lk.agent.name"] == "tone-agent"
            # The pub-agent's track (bob's second subscription, a re-offer) first, then the
            # tone-agent's: the first subscription must still play after that re-offer.
            await hear(observer, by_name["pub-agent"].identity, 880.0, workers)
            await hear(observer, by_name["tone-agent"].identity, 660.0, workers)
            pub = workers.note("pub", "joined")
            assert pub is not None and pub[5] == "bob"
        finally:
            await observer.disconnect()

        d = await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="tone-agent", room="cd-room", metadata="x")
        )

        async def job_id() -> str:
            [listed] = await lkapi.agent_dispatch.list_dispatch("cd-room")
            return listed.state.jobs[0].id if listed.state.jobs else ""

        jid = await job_id()
        assert jid
        await workers.wait(lambda: workers.note("named", "joined", jid), 60, "CreateDispatch job")
        identity = workers.note("named", "joined", jid)[4]  # type: ignore[index]
        res = await lkapi.room.list_participants(api.ListParticipantsRequest(room="cd-room"))
        assert [(p.identity, p.kind) for p in res.participants] == [(identity, AGENT)]

        await lkapi.agent_dispatch.delete_dispatch(d.id, "cd-room")
        await workers.wait(lambda: workers.note("named", "shutdown", jid), 30, "job terminated")
        for _ in range(100):
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room="cd-room"))
            if not res.participants:
                break
            await asyncio.sleep(0.1)
        assert not res.participants


async def test_two_workers_share_and_fail_over(appliance: Server, workers: Workers) -> None:
    workers.start("w1", "ha-agent", E2E_FREQ="500")
    workers.start("w2", "ha-agent", E2E_FREQ="500")
    await workers.wait_registered("ha-agent", 2)
    async with api.LiveKitAPI(appliance.http_url, API_KEY, API_SECRET) as lkapi:

        async def assigned(room: str) -> tuple[str, str]:
            """(job id, worker id) of the room's job once a worker has it."""
            for _ in range(200):
                [d] = await lkapi.agent_dispatch.list_dispatch(room)
                job = d.state.jobs[-1]
                if job.state.participant_identity:
                    return job.id, job.state.worker_id
                await asyncio.sleep(0.1)
            raise AssertionError(f"no worker took the job of {room}")

        rooms: dict[str, tuple[str, str]] = {}
        for i in range(10):  # weighted random between two idle workers: both get one soon
            room = f"ha-{i}"
            await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="ha-agent", room=room)
            )
            rooms[room] = await assigned(room)
            if len({w for _, w in rooms.values()}) == 2 and i >= 1:
                break
        assert len({w for _, w in rooms.values()}) == 2, rooms

        # Which process runs the first room's job?
        victim_room = "ha-0"
        job, worker_id = rooms[victim_room]
        await workers.wait(
            lambda: workers.note("w1", "joined", job) or workers.note("w2", "joined", job),
            60,
            "first job running",
        )
        victim = "w1" if workers.note("w1", "joined", job) else "w2"
        survivor = "w2" if victim == "w1" else "w1"
        await workers.kill(victim)

        # After the re-dispatch grace the survivor runs the same job in the same room.
        await workers.wait(lambda: workers.note(survivor, "joined", job), 60, "job moved")
        [d] = await lkapi.agent_dispatch.list_dispatch(victim_room)
        assert d.state.jobs[-1].id == job and d.state.jobs[-1].state.worker_id != worker_id
        res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=victim_room))
        assert [p.kind for p in res.participants] == [AGENT]
        for room in rooms:
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))

"""The ``/agent`` edge: HTTP/auth answers, bad peers, and an unmodified livekit-agents worker.

The edge tests use an aiohttp client as the "worker". The end-to-end test runs the real
``livekit-agents`` 1.8.x worker (``python agent.py start``, see ``worker_helpers``) against a tiny
aiohttp app that has only the ``/agent`` route; it is skipped when livekit-agents is not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from livekit.protocol import agent as agent_pb

from roomline.auth import mint_token, verify_token
from roomline.errors import Unavailable
from roomline_agents.service.agent_ws import AgentWorkerService
from roomline_agents.service.worker_registry import AGENT_NAME_ATTRIBUTE, AgentJob, JobPhase
from roomline_harness.agent_workers import (
    agents_python,
    start_worker,
    stop_worker,
    wait_for,
)

pytestmark = pytest.mark.timeout(150)

KEYS = {"devkey": "secret"}
AGENT_NAME = "e2e-agent"


def agent_token(**kw: object) -> str:
    return mint_token("devkey", "secret", identity="", agent=True, **kw)  # type: ignore[arg-type]


class Harness:
    def __init__(self, service: AgentWorkerService, port: int) -> None:
        self.service = service
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.started: list[AgentJob] = []
        self.ended: list[AgentJob] = []


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    service = AgentWorkerService(KEYS, register_timeout=1.5, heartbeat=2.0)
    app = web.Application()
    service.install(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    h = Harness(service, port)
    service.on_job_started = h.started.append
    service.on_job_ended = h.ended.append
    try:
        yield h
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)


def wm(**kw: object) -> bytes:
    return agent_pb.WorkerMessage(**kw).SerializeToString()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- edge


async def test_http_answers(harness: Harness) -> None:
    url = harness.http + "/agent"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Authorization": f"Bearer {agent_token()}"}) as r:
            assert r.status == 404  # a plain GET is not a worker
        for headers in (
            {},
            {"Authorization": "Bearer " + mint_token("devkey", "secret", identity="u", room="r")},
            {"Authorization": "Bearer " + mint_token("devkey", "wrong", identity="", agent=True)},
            {"Authorization": "Bearer not.a.jwt"},
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(url, headers=headers)
            assert exc.value.status == 401
        ws = await s.ws_connect(url + "?access_token=" + agent_token())
        await ws.close()


async def test_register_ping_and_bad_peers(harness: Harness) -> None:
    url = harness.http + "/agent"
    headers = {"Authorization": f"Bearer {agent_token()}"}
    registered: list[object] = []
    harness.service.on_worker_registered = registered.append
    async with aiohttp.ClientSession() as s:
        good = await s.ws_connect(url, headers=headers, autoping=True)
        await good.send_bytes(
            wm(register=agent_pb.RegisterWorkerRequest(agent_name="x", version="test"))
        )
        reply = agent_pb.ServerMessage.FromString(await good.receive_bytes(timeout=5))
        assert reply.register.worker_id.startswith("AW_")
        assert registered == harness.service.workers
        await good.send_bytes(wm(ping=agent_pb.WorkerPing(timestamp=42)))
        pong = agent_pb.ServerMessage.FromString(await good.receive_bytes(timeout=5))
        assert pong.pong.last_timestamp == 42
        # Read in a task from now on: the client answers the server's WebSocket pings only while
        # it reads (and aiohttp restarts receive()'s timeout after each ping).
        good_reader = asyncio.create_task(good.receive())

        garbage = await s.ws_connect(url, headers=headers)
        await garbage.send_bytes(b"\xff\xff\xff\xff")
        msg = await garbage.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1002
        assert "malformed WorkerMessage" in msg.extra  # type: ignore[operator]

        silent = await s.ws_connect(url, headers=headers)
        msg = await silent.receive(timeout=5)  # register_timeout=1.5 s
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008

        # WebSocket pings do not stand in for registering.
        pinger = await s.ws_connect(url, headers=headers)
        t0 = time.monotonic()
        msg = None  # type: ignore[assignment]
        for _ in range(30):
            if pinger.closed:
                break
            await pinger.ping()
            with contextlib.suppress(asyncio.TimeoutError):
                msg = await pinger.receive(timeout=0.2)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
        assert msg is not None and msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
        assert 1.0 < time.monotonic() - t0 < 4.0

        text = await s.ws_connect(url, headers=headers)
        await text.send_str("{}")
        msg = await text.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1003

        # The good worker survived the others and stays connected across heartbeats (2 s).
        await asyncio.sleep(2.5)
        assert not good_reader.done() and not good.closed
        good_reader.cancel()
        assert [w.agent_name for w in harness.service.workers] == ["x"]
        await good.close()
        await wait_for(lambda: not harness.service.workers, 5, "worker removed")


async def test_dispatch_with_scripted_worker(harness: Harness) -> None:
    """The full job flow with a hand-written worker (fast, no livekit-agents needed)."""
    url = harness.http + "/agent"
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(url, headers={"Authorization": f"Bearer {agent_token()}"})
        await ws.send_bytes(wm(register=agent_pb.RegisterWorkerRequest(agent_name="scripted")))
        await ws.receive_bytes(timeout=5)
        with pytest.raises(Unavailable, match="no workers available"):
            await harness.service.dispatch("room", "nobody")

        async def answer() -> None:
            req = agent_pb.ServerMessage.FromString(await ws.receive_bytes(timeout=5))
            job_id = req.availability.job.id
            await ws.send_bytes(
                wm(availability=agent_pb.AvailabilityResponse(job_id=job_id, available=True))
            )

        task = asyncio.create_task(answer())
        job = await harness.service.dispatch("room", "scripted", metadata="m", timeout=10)
        await task
        assign = agent_pb.ServerMessage.FromString(await ws.receive_bytes(timeout=5))
        assert assign.assignment.job.id == job.id and assign.assignment.token == job.token
        assert harness.started == [job]
        await ws.send_bytes(
            wm(update_job=agent_pb.UpdateJobStatus(job_id=job.id, status=agent_pb.JS_FAILED))
        )
        await wait_for(lambda: harness.ended, 5, "job end")
        assert job.status == agent_pb.JS_FAILED
        await ws.close()


async def test_job_of_lost_worker_moves_to_another(harness: Harness) -> None:
    """livekit/agents#1472: a worker that dies must not strand its job (OSS LiveKit does)."""
    service = harness.service
    service.registry.redispatch_grace = 0.5
    orphaned: list[AgentJob] = []
    service.on_job_orphaned = orphaned.append
    url = harness.http + "/agent"
    headers = {"Authorization": f"Bearer {agent_token()}"}

    async def worker(s: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        ws = await s.ws_connect(url, headers=headers)
        await ws.send_bytes(wm(register=agent_pb.RegisterWorkerRequest(agent_name="ha")))
        await ws.receive_bytes(timeout=5)
        return ws

    async def accept(ws: aiohttp.ClientWebSocketResponse) -> agent_pb.AvailabilityRequest:
        req = agent_pb.ServerMessage.FromString(await ws.receive_bytes(timeout=10)).availability
        await ws.send_bytes(
            wm(availability=agent_pb.AvailabilityResponse(job_id=req.job.id, available=True))
        )
        return req

    async with aiohttp.ClientSession() as s:
        first = await worker(s)
        accepting = asyncio.create_task(accept(first))
        job = await service.dispatch("ha-room", "ha", timeout=10)
        assert not (await accepting).resuming
        second = await worker(s)
        await first.close()  # the worker dies with the job assigned
        req = await accept(second)
        assert req.job.id == job.id and req.resuming
        assign = agent_pb.ServerMessage.FromString(await second.receive_bytes(timeout=5))
        assert assign.assignment.job.id == job.id
        assert orphaned == [job] and harness.started == [job, job]
        assert job.worker_id == service.workers[0].id and job.phase is JobPhase.ASSIGNED
        await second.close()


# ------------------------------------------------------------------------- real livekit-agents

WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, pathlib
    from livekit.agents import JobContext, WorkerOptions, cli

    OUT = pathlib.Path(os.environ["E2E_OUT"])

    def note(line):
        with OUT.open("a") as f:
            f.write(line + "\\n")

    async def entrypoint(ctx: JobContext):
        note(f"started {ctx.job.id} {ctx.job.room.name} {ctx.job.metadata}")
        if ctx.job.metadata == "quit":
            ctx.shutdown("done")  # the worker then reports JS_SUCCESS itself
            return

        async def bye(reason=""):
            note(f"shutdown {ctx.job.id}")

        ctx.add_shutdown_callback(bye)
        await asyncio.Event().wait()  # until the server terminates the job

    if __name__ == "__main__":
        cli.run_app(
            WorkerOptions(
                entrypoint_fnc=entrypoint,
                agent_name=os.environ["E2E_AGENT_NAME"],
                load_fnc=lambda *a: 0.0,  # load gating off (shared 2-core box)
                port=0,  # no fixed health port
                num_idle_processes=0,
                drain_timeout=2,
                initialize_process_timeout=60.0,
                max_retry=3,
            )
        )
    """
)


@pytest.mark.slow
async def test_real_livekit_agents_worker(harness: Harness, tmp_path: Path) -> None:
    py = await asyncio.to_thread(agents_python)
    if py is None:
        pytest.skip("livekit-agents is not installed (set ROOMLINE_AGENTS_PYTHON)")
    out = tmp_path / "agent-events.txt"
    proc, log_path = start_worker(
        py,
        WORKER_SCRIPT,
        tmp_path,
        f"ws://127.0.0.1:{harness.port}",
        {"E2E_OUT": str(out), "E2E_AGENT_NAME": AGENT_NAME},
    )
    service = harness.service
    try:
        try:
            await wait_for(
                lambda: any(w.agent_name == AGENT_NAME for w in service.workers) or proc.poll(),
                60,
                "the worker to register",
            )
        except AssertionError:
            raise AssertionError(log_path.read_text()[-4000:]) from None
        assert proc.poll() is None, log_path.read_text()[-4000:]
        [worker] = service.workers
        assert worker.version.startswith("1.") and worker.job_type == agent_pb.JT_ROOM
        assert worker.permissions.agent

        job = await service.dispatch("e2e-room", AGENT_NAME, metadata="hello", timeout=20)
        assert job.phase in (JobPhase.ASSIGNED, JobPhase.RUNNING)
        claims = verify_token(job.token, KEYS)
        assert claims.kind_name == "agent"
        assert claims.identity == f"agent-{job.id}"
        assert claims.attributes[AGENT_NAME_ATTRIBUTE] == AGENT_NAME
        assert claims.attributes["lk.agent.name"] == AGENT_NAME  # set by the worker
        assert claims.video.room_join and claims.video.room == "e2e-room" and claims.video.agent
        assert 3500 < claims.expires_at - time.time() <= 3600
        assert harness.started == [job]

        # The worker launches a job process and reports JS_RUNNING; the entrypoint runs.
        await wait_for(lambda: job.phase is JobPhase.RUNNING, 60, "JS_RUNNING")
        await wait_for(lambda: out.exists() and "started" in out.read_text(), 30, "entrypoint")
        assert f"started {job.id} e2e-room hello" in out.read_text()

        service.terminate(job.id, "test done")
        assert job.status == agent_pb.JS_SUCCESS and harness.ended == [job]
        await wait_for(lambda: f"shutdown {job.id}" in out.read_text(), 30, "job shutdown")

        # A job that ends by itself: the worker's UpdateJobStatus(JS_SUCCESS) ends it here.
        job2 = await service.dispatch("e2e-room-2", AGENT_NAME, metadata="quit", timeout=20)
        await wait_for(lambda: not job2.active, 60, "the worker to report the end of job 2")
        assert job2.status == agent_pb.JS_SUCCESS and job2.end_reason == "worker reported success"
        assert harness.ended == [job, job2]
    finally:
        await stop_worker(proc)
    await wait_for(lambda: not service.workers, 10, "worker deregistered")

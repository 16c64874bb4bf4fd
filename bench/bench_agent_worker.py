"""Agent pickup time: room created → agent joined, for an external livekit-agents worker and a
built-in agent.

    .venv/bin/python -m bench.bench_agent_worker [--rounds 20] [--idle 2]

A real ``roomline serve`` (this checkout, SIP off) and one unmodified ``livekit-agents`` worker
(``.venv-agents`` or ``ROOMLINE_AGENTS_PYTHON``) registered as ``bench-agent``, kept warm with
``--idle`` prestarted job processes. Each round creates a room with ``CreateRoom.agents`` and polls
(every 5 ms) ListDispatch until a worker holds the job (*assigned*: AvailabilityRequest, answer,
token, JobAssignment) and ListParticipants until the AGENT participant is in the room (*joined*:
plus the job process start and its ``/rtc`` join with two PeerConnections). Then the room is
deleted and the worker gets a second to warm a new process. The same is measured for the built-in
``echo`` (job processes over the local channel). Printed: median and p99 in ms.

No assertions; the worker, the appliance and the poller share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from livekit import api

from roomline_harness.agent_appliance import (
    TONE_WORKER,
    start_appliance,
    workers_registered,
)
from roomline_harness.agent_workers import agents_python, start_worker, stop_worker
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server

AGENT_KIND = 4


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def one_round(lk: api.LiveKitAPI, room: str, agent: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    await lk.room.create_room(
        api.CreateRoomRequest(name=room, agents=[api.RoomAgentDispatch(agent_name=agent)])
    )
    assigned = joined = 0.0
    deadline = t0 + 60
    while time.perf_counter() < deadline and not joined:
        if not assigned:
            for d in await lk.agent_dispatch.list_dispatch(room):
                if d.state.jobs and d.state.jobs[-1].state.participant_identity:
                    assigned = time.perf_counter() - t0
        res = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        if any(p.kind == AGENT_KIND for p in res.participants):
            joined = time.perf_counter() - t0
            assigned = assigned or joined
        else:
            await asyncio.sleep(0.005)
    await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    if not joined:
        raise RuntimeError(f"no agent joined {room} in 60 s")
    return assigned, joined


async def measure(server: Server, agent: str, rounds: int) -> tuple[list[float], list[float]]:
    assigned: list[float] = []
    joined: list[float] = []
    async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
        await one_round(lk, f"warmup-{agent}", agent)
        for i in range(rounds):
            await asyncio.sleep(1.0)  # let the worker replace the job process it used
            a, j = await one_round(lk, f"bench-{agent}-{i}", agent)
            assigned.append(a * 1000)
            joined.append(j * 1000)
    return assigned, joined


def report(label: str, assigned: list[float], joined: list[float]) -> None:
    print(
        f"{label:<28} assigned median {statistics.median(assigned):6.0f} ms  "
        f"p99 {pct(assigned, 99):6.0f} ms | joined median {statistics.median(joined):6.0f} ms  "
        f"p99 {pct(joined, 99):6.0f} ms  (n={len(joined)})"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--idle", type=int, default=2, help="warm job processes in the worker")
    args = ap.parse_args()
    py = agents_python()
    if py is None:
        raise SystemExit(
            "livekit-agents not found: run .ci/setup --test or set ROOMLINE_AGENTS_PYTHON"
        )
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-worker-"))
    server = start_appliance(tmp, room={"departure_timeout": 1})
    workdir = tmp / "worker"
    workdir.mkdir()
    proc, log_path = start_worker(
        py,
        TONE_WORKER,
        workdir,
        server.ws_url,
        {
            "E2E_OUT": str(tmp / "notes.txt"),
            "E2E_AGENT_NAME": "bench-agent",
            "E2E_IDLE": str(args.idle),
        },
    )
    try:
        deadline = time.monotonic() + 90
        while not workers_registered(server, "bench-agent"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(log_path.read_text()[-3000:])
            await asyncio.sleep(0.1)
        await asyncio.sleep(5)  # the worker prestarts its idle processes
        report("external (livekit-agents)", *await measure(server, "bench-agent", args.rounds))
        report("built-in echo", *await measure(server, "echo", args.rounds))
    finally:
        await stop_worker(proc)
        stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

"""Agent pickup time: room created → agent joined, for an external livekit-agents worker and a
built-in agent.

    .venv/bin/python -m bench.bench_agent_worker [--rounds 20] [--idle 2] [--sip-rounds 10]

A real ``roomline serve`` (this checkout, SIP off) and one unmodified ``livekit-agents`` worker
(``.venv-agents`` or ``ROOMLINE_AGENTS_PYTHON``) registered as ``bench-agent``, kept warm with
``--idle`` prestarted job processes. Each round creates a room with ``CreateRoom.agents`` and polls
(every 5 ms) ListDispatch until a worker holds the job (*assigned*: AvailabilityRequest, answer,
token, JobAssignment) and ListParticipants until the AGENT participant is in the room (*joined*:
plus the job process start and its ``/rtc`` join with two PeerConnections). Then the room is
deleted and the worker gets a second to warm a new process. The same is measured for the built-in
``echo`` (job processes over the local channel). Printed: median and p99 in ms.

**SIP INVITE → first agent audio** (``--sip-rounds``, 0 to skip): the appliance also runs a bridge
worker, and a SIP dispatch rule per number sends each call to one agent: the external
``TONE_WORKER`` (an rtc-only agent that publishes a tone as soon as it joins: the pickup path
alone), the external ``SESSION_WORKER`` (an ``AgentSession`` that greets with espeak-ng: pickup plus
session start, stand-in LLM and TTS) and the built-in ``ivr`` (espeak-ng greeting). Each round a
small SIP UAC (``bench/bench_sip.py``'s ``SipUA``, PCMU, sending silence) dials, and the time from
sending the INVITE to the first received RTP packet above -40 dBFS is taken, together with
INVITE → 200 OK. Each call lasts until that audio arrives; then BYE, and 2 s for the room to close
and the worker to warm a new process.

No assertions; the worker, the appliance and the poller share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from livekit import api

from bench.bench_sip import SipUA
from roomline_harness.agent_appliance import (
    SESSION_GREETING,
    SESSION_WORKER,
    TONE_WORKER,
    start_appliance,
    workers_registered,
)
from roomline_harness.agent_workers import agents_python, start_worker, stop_worker
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server

AGENT_KIND = 4
#: Phone number -> (agent name, label) of the SIP rows. The built-in ``ivr`` needs no worker.
SIP_AGENTS = {
    "+15550701": ("bench-sip-tone", "external rtc-only (tone)"),
    "+15550702": ("bench-sip-session", "external AgentSession"),
    "+15550703": ("ivr", "built-in ivr"),
}
#: A received 20 ms PCMU packet counts as agent audio above this RMS (-40 dBFS).
AUDIO_RMS = 32768 * 10 ** (-40 / 20)


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


def sip_section() -> tuple[dict[str, object], int]:
    rs, re_ = free_udp_range(40)
    port = free_port()
    rules = [
        {
            "name": f"to-{agent}",
            "numbers": [number],
            "rule": {"dispatch_rule_individual": {"room_prefix": f"call-{agent}-"}},
            "room_config": {"agents": [{"agent_name": agent}]},
        }
        for number, (agent, _) in SIP_AGENTS.items()
    ]
    section: dict[str, object] = {
        "enabled": True,
        "bind_address": "127.0.0.1",
        "workers": [{"sip_port": port, "rtp_port_start": rs, "rtp_port_end": re_}],
        "trunks": [{"name": "t", "allowed_addresses": ["127.0.0.1"], "numbers": list(SIP_AGENTS)}],
        "dispatch_rules": rules,
    }
    return section, port


async def sip_round(port: int, number: str) -> tuple[float, float]:
    """One call: (INVITE -> 200 OK, INVITE -> first agent audio) in ms."""
    ua = SipUA("+15557770000")
    await ua.open()
    sender: asyncio.Task[None] | None = None
    try:
        t0 = time.monotonic()
        answered = await ua.call(port, number)
        sender = asyncio.create_task(ua.stream(np.zeros(8000 * 40, np.int16)))
        deadline = t0 + 30
        seen = 0
        while time.monotonic() < deadline:
            for r in ua.received[seen:]:
                if float(np.sqrt(np.mean(r.pcm.astype(np.float64) ** 2))) > AUDIO_RMS:
                    return answered, (r.t - t0) * 1000
            seen = len(ua.received)
            await asyncio.sleep(0.005)
        raise RuntimeError(f"no agent audio on {number} within 30 s")
    finally:
        if sender is not None:
            sender.cancel()
        await ua.hangup(port)
        ua.close()


async def measure_sip(port: int, number: str, rounds: int) -> tuple[list[float], list[float]]:
    answer: list[float] = []
    audio: list[float] = []
    await sip_round(port, number)  # warm-up
    for _ in range(rounds):
        await asyncio.sleep(2.0)  # the room closes; the worker warms a new job process
        a, first = await sip_round(port, number)
        answer.append(a)
        audio.append(first)
    return answer, audio


def report_sip(label: str, answer: list[float], audio: list[float]) -> None:
    print(
        f"SIP {label:<26} INVITE->200 median {statistics.median(answer):6.0f} ms  "
        f"p99 {pct(answer, 99):6.0f} ms | INVITE->agent audio median "
        f"{statistics.median(audio):6.0f} ms  p99 {pct(audio, 99):6.0f} ms  (n={len(audio)})"
    )


async def wait_registered(
    server: Server, name: str, proc: subprocess.Popen[bytes], log_path: Path
) -> None:
    deadline = time.monotonic() + 90
    while not workers_registered(server, name):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(log_path.read_text()[-3000:])
        await asyncio.sleep(0.1)


def report(label: str, assigned: list[float], joined: list[float]) -> None:
    print(
        f"{label:<28} assigned median {statistics.median(assigned):6.0f} ms  "
        f"p99 {pct(assigned, 99):6.0f} ms | joined median {statistics.median(joined):6.0f} ms  "
        f"p99 {pct(joined, 99):6.0f} ms  (n={len(joined)})"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sip-rounds", type=int, default=10, help="0: skip the SIP rows")
    ap.add_argument("--idle", type=int, default=2, help="warm job processes in each worker")
    args = ap.parse_args()
    py = agents_python()
    if py is None:
        raise SystemExit(
            "livekit-agents not found: run .ci/setup --test or set ROOMLINE_AGENTS_PYTHON"
        )
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-worker-"))
    sip, sip_port = sip_section()
    server = start_appliance(tmp, room={"departure_timeout": 1}, sip=sip)
    workers: list[subprocess.Popen[bytes]] = []
    scripts = [("bench-agent", TONE_WORKER)]
    if args.sip_rounds:
        scripts += [("bench-sip-tone", TONE_WORKER), ("bench-sip-session", SESSION_WORKER)]
    try:
        for name, script in scripts:
            workdir = tmp / name
            workdir.mkdir()
            env = {
                "E2E_OUT": str(tmp / f"{name}.txt"),
                "E2E_AGENT_NAME": name,
                "E2E_IDLE": str(args.idle),
                "E2E_GREETING": SESSION_GREETING,
            }
            proc, log_path = start_worker(py, script, workdir, server.ws_url, env)
            workers.append(proc)
            await wait_registered(server, name, proc, log_path)
        await asyncio.sleep(5)  # the workers prestart their idle processes
        report("external (livekit-agents)", *await measure(server, "bench-agent", args.rounds))
        report("built-in echo", *await measure(server, "echo", args.rounds))
        if args.sip_rounds:
            for number, (_, label) in SIP_AGENTS.items():
                report_sip(label, *await measure_sip(sip_port, number, args.sip_rounds))
    finally:
        for proc in workers:
            await stop_worker(proc)
        stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

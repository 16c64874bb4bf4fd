"""Acceptance: mixed worker pools behind the Kamailio front, with real bridge workers.

``roomline serve`` in front mode with two workers and ``sip.wideband_workers: 1``: the first
worker runs the 16 kHz bridge clock, the second 8 kHz. Which worker took a call is read from the
supervisor's per-worker active calls (``roomline_sip_active_calls{sip_port=...}``).

* The split shows in ``/healthz``, ``/metrics`` and the workers' own ``--bridge-rate``.
* A G.711-only caller (pjsua2 phone) lands on the 8 kHz worker; a G.722 caller on the 16 kHz
  worker, and its 6 kHz tone reaches the room (FFT: energy above 4 kHz).
* Overflow: with the 8 kHz worker's 4 slots taken by G.711 calls (SIPp), the next G.711 caller is
  answered by the 16 kHz worker and the room hears its tone; with both full the next gets 486.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from roomline_harness.aio import wait_for
from roomline_harness.front_appliance import HAVE_KAMAILIO, _scenario
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.outbound import Ports, pick_ports, start_appliance
from roomline_harness.server import Server, stop_server
from roomline_harness.sip.fullstack import (
    band_share,
    check_tone,
    metrics,
    phone_args,
    room_for,
    sip_section,
    worker_pid,
)
from roomline_harness.sip.peers import PhoneProcess
from roomline_harness.sip.sipp import SIPP, run_sipp, sipp_cmd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    pytest.mark.skipif(not HAVE_KAMAILIO, reason="kamailio not installed"),
    pytest.mark.timeout(180),
]

RATE = 48000
#: Phone → room (SDK), as in test_front_appliance.py under load on the shared host.
ROOM_SNR = 15.0
CALLS_PER_WORKER = 4
NUMBERS = {
    "g711": "+15550171",
    "g722": "+15550172",
    "overflow": "+15550173",
    "busy": "+15550174",
}
#: Numbers the SIPp calls that fill the workers dial (each call its own caller and room).
FILL = [f"+1555017{i:02d}" for i in range(10, 20)]


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Ports]]:
    tmp = tmp_path_factory.mktemp("pools")
    section, _ = sip_section([*NUMBERS.values(), *FILL])
    ports = pick_ports()
    extra: dict[str, Any] = {
        "trunks": section["trunks"],
        "dispatch_rules": section["dispatch_rules"],
        "wideband_workers": 1,
        # SIPp's filler calls send no RTP; they must outlive the overflow test.
        "media_timeout": 60.0,
    }
    server = start_appliance(tmp, ports, front=True, sip_extra=extra)
    try:
        deadline = time.monotonic() + 60  # both workers ready and up in the front
        while _dispatch_up(server) < 2:
            assert time.monotonic() < deadline, "workers never marked up in the front"
            time.sleep(0.25)
        yield server, ports
    finally:
        stop_server(server)


def _dispatch_up(server: Server) -> float:
    return sum(v for (n, _), v in metrics(server).items() if n == "roomline_sip_worker_dispatch_up")


def _wide(ports: Ports) -> int:
    return ports.front_workers


def _narrow(ports: Ports) -> int:
    return ports.front_workers + 1


def _active(server: Server) -> dict[int, float]:
    return {
        int(lbl.split('"')[1]): v
        for (n, lbl), v in metrics(server).items()
        if n == "roomline_sip_active_calls" and lbl
    }


async def _wait_active(server: Server, want: Mapping[int, float], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(_active, server)
        if all(got.get(p) == n for p, n in want.items()):
            return
        assert time.monotonic() < end, f"active calls {got}, expected {want}"
        await asyncio.sleep(0.2)


async def _heard_in_room(
    server: Server, web: Any, phone: PhoneProcess, caller: str, active: Mapping[int, float]
) -> tuple[Any, list[dict[str, Any]]]:
    """Once the caller's track is in the room and the workers carry ``active`` calls: 2 s of
    what the room hears from the phone, and the phone's events when it is done."""
    ident = f"sip_{caller}"
    await wait_for(lambda: subscribed_audio(web, ident) is not None, 15, ident)
    await _wait_active(server, active)
    track = subscribed_audio(web, ident)
    assert track is not None
    pcm = await record(track, 2.0, skip=0.5)
    return pcm, await phone.wait(30)


def _phone(ports: Ports, number: str, workdir: Path, caller: str, *extra: str) -> list[str]:
    return phone_args(ports.front, number, workdir, caller, *extra)


def test_split_shows_in_health_metrics_and_worker_args(pools: tuple[Server, Ports]) -> None:
    server, ports = pools
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as resp:
        body = resp.read().decode()
    assert "sip-workers: ok 2/2 ready (1 at 16 kHz, 1 at 8 kHz)" in body, body
    m = metrics(server)
    for port, rate in ((_wide(ports), 16000), (_narrow(ports), 8000)):
        assert m[("roomline_sip_worker_bridge_rate_hz", f'{{sip_port="{port}"}}')] == rate
        pid = worker_pid(server, port)
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--bridge-rate") + 1] == str(rate).encode(), argv
    listing = (server.data_dir / "sip-front" / "dispatcher.list").read_text()
    assert f"1 sip:127.0.0.1:{_wide(ports)} " in listing
    assert f"2 sip:127.0.0.1:{_narrow(ports)} " in listing


async def test_g711_caller_on_8k_worker_g722_caller_on_16k_worker(
    pools: tuple[Server, Ports], tmp_path: Path
) -> None:
    server, ports = pools
    await _wait_active(server, {_wide(ports): 0, _narrow(ports): 0})
    # G.711 only (PCMU): the 8 kHz worker.
    phone = await PhoneProcess.start(
        _phone(
            ports, NUMBERS["g711"], tmp_path, "+15551230171", "--tone", "1000", "--duration", "3"
        )
    )
    await _wait_active(server, {_narrow(ports): 1, _wide(ports): 0})
    events = await phone.wait(30)
    answers = [e for e in events if e["event"] == "answer_sdp" and "200" in e["status"]]
    assert answers and "PCMU/8000" in answers[0]["sdp"], events
    await _wait_active(server, {_narrow(ports): 0})
    # G.722: the 16 kHz worker, and the band above 4 kHz reaches the room.
    number, caller = NUMBERS["g722"], "+15551230172"
    web = await connect(server.ws_url, token("web", room_for(number)))
    try:
        phone = await PhoneProcess.start(
            _phone(ports, number, tmp_path, caller, "--codec", "G722/16000", "--tone", "6000",
                   "--duration", "5")
        )  # fmt: skip
        pcm, events = await _heard_in_room(
            server, web, phone, caller, {_wide(ports): 1, _narrow(ports): 0}
        )
    finally:
        await web.disconnect()
    answers = [e for e in events if e["event"] == "answer_sdp" and "200" in e["status"]]
    assert answers and "G722/8000" in answers[0]["sdp"], events  # G.722: 8000 in SDP
    chk = check_tone(pcm, RATE, 6000.0)
    high = band_share(pcm, RATE, 4000, 8000)
    print(f"G.722 phone 6 kHz -> SDK via the 16 kHz worker: {chk}, 4-8 kHz share {high:.3f}")
    assert abs(chk.freq - 6000.0) < 5 and high > 0.9


async def test_overflow_into_the_other_pool_then_486(
    pools: tuple[Server, Ports], tmp_path: Path
) -> None:
    server, ports = pools
    await _wait_active(server, {_wide(ports): 0, _narrow(ports): 0})
    wd = Path(tempfile.mkdtemp(prefix="rlpool", dir="/tmp"))  # SIPp paths stay short
    target = f"127.0.0.1:{ports.front}"
    fillers: list[asyncio.Task[tuple[int, str]]] = []
    try:

        def fill(name: str, numbers: list[str], play_ms: int) -> asyncio.Task[tuple[int, str]]:
            sc = _scenario(wd / f"{name}.xml", pcap=None, play_ms=play_ms)
            rows = "".join(f"+1555800{n[-4:]};{n};\n" for n in numbers)
            (wd / f"{name}.csv").write_text("SEQUENTIAL\n" + rows)
            media, _ = free_udp_range(4)
            cmd = sipp_cmd(sc, target, local_port=free_port(), media_port=media,
                           calls=len(numbers), concurrent=len(numbers), rate=20)  # fmt: skip
            cmd += ["-inf", str(wd / f"{name}.csv")]
            task = asyncio.create_task(run_sipp(cmd, wd, timeout=90))
            fillers.append(task)
            return task

        # The 8 kHz worker's 4 slots: G.711 calls go there first.
        fill("narrow", FILL[:CALLS_PER_WORKER], 25000)
        await _wait_active(server, {_narrow(ports): CALLS_PER_WORKER, _wide(ports): 0})
        # The next G.711 caller overflows to the 16 kHz worker, and is heard in its room.
        number, caller = NUMBERS["overflow"], "+15551230173"
        web = await connect(server.ws_url, token("web", room_for(number)))
        try:
            async with tone_publisher(web, 440.0):
                phone = await PhoneProcess.start(
                    _phone(ports, number, tmp_path, caller, "--tone", "1000", "--duration", "5")
                )
                want = {_wide(ports): 1, _narrow(ports): CALLS_PER_WORKER}
                pcm, events = await _heard_in_room(server, web, phone, caller, want)
        finally:
            await web.disconnect()
        answers = [e for e in events if e["event"] == "answer_sdp" and "200" in e["status"]]
        assert answers and "PCMU/8000" in answers[0]["sdp"], events
        chk = check_tone(pcm, RATE, 1000.0)
        print(f"overflow G.711 phone 1 kHz -> SDK via the 16 kHz worker: {chk}")
        assert abs(chk.freq - 1000.0) < 5 and chk.snr >= ROOM_SNR
        # Both pools full: the next caller gets 486 from the front.
        await _wait_active(server, {_wide(ports): 0})
        fill("wide", FILL[CALLS_PER_WORKER : 2 * CALLS_PER_WORKER], 8000)
        await _wait_active(
            server, {_wide(ports): CALLS_PER_WORKER, _narrow(ports): CALLS_PER_WORKER}
        )
        key = ("roomline_sip_front_rejections_total", '{reason="all_busy_486"}')
        before = metrics(server).get(key, 0)
        busy = _scenario(
            wd / "busy.xml",
            pcap=None,
            play_ms=0,
            expect=486,
            caller="+15551230174",
            callee=NUMBERS["busy"],
        )
        media, _ = free_udp_range(4)
        rc, out = await run_sipp(
            sipp_cmd(busy, target, local_port=free_port(), media_port=media), wd, timeout=30
        )
        assert rc == 0, out[-3000:]
        assert metrics(server).get(key, 0) >= before + 1
        for task in fillers:
            rc, out = await task
            assert rc == 0, out[-3000:]
    finally:
        for task in fillers:
            task.cancel()
        await asyncio.gather(*fillers, return_exceptions=True)
        shutil.rmtree(wd, ignore_errors=True)

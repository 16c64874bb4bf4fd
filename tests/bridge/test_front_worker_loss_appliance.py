"""Acceptance: a bridge worker killed with SIGKILL behind the Kamailio front; its callers get a BYE.

``roomline serve`` from this tree with the front and two workers; six SIPp callers (PCMU RTP)
whose calls hold 20 s but answer a BYE if one comes. The worker carrying the most calls is killed:
each of its callers must get the front's BYE within seconds (and answer 200), the other worker's
calls run to their end untouched, ``roomline_sip_calls_ended_by_worker_loss_total`` counts the
ended calls and the log names each one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomline_harness.front_appliance import HAVE_KAMAILIO, _scenario, received_requests
from roomline_harness.net import free_block, free_port, free_udp_range
from roomline_harness.server import Server, start_server, stop_server
from roomline_harness.sip.fullstack import metrics, worker_pid
from roomline_harness.sip.pcap import write_tone_pcap
from roomline_harness.sip.sipp import SIPP, run_sipp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    pytest.mark.skipif(not HAVE_KAMAILIO, reason="kamailio not installed"),
    pytest.mark.skipif(
        shutil.which("kamcmd") is None and not os.path.exists("/usr/sbin/kamcmd"),
        reason="kamcmd not installed",
    ),
    pytest.mark.timeout(150),
]

WORKERS = 2
CALLS = 6
TRUNK = "ST_local"


def _number(i: int) -> str:
    return f"+1555800{i:04d}"


def _caller(i: int) -> str:
    return f"+1555900{i:04d}"


def _ready(server: Server) -> bool:
    m = metrics(server)
    return sum(v for (n, _), v in m.items() if n == "roomline_sip_worker_dispatch_up") == WORKERS


def _per_worker(server: Server, name: str) -> dict[int, float]:
    return {
        int(labels.split('"')[1]): v
        for (n, labels), v in metrics(server).items()
        if n == name and labels
    }


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[tuple[Server, int, Path]]:
    sip_port = free_port()
    worker_base = free_block(WORKERS)
    rtp = free_udp_range(40)
    server = start_server(
        tmp_path,
        sip={
            "enabled": True,
            "port": sip_port,
            "workers": WORKERS,
            "worker_base_port": worker_base,
            "rtp_port_start": rtp[0],
            "rtp_port_end": rtp[1],
            "trunks": [
                {
                    "sip_trunk_id": TRUNK,
                    "name": "local",
                    "allowed_addresses": ["127.0.0.1"],
                    "numbers": [_number(i) for i in range(CALLS)],
                }
            ],
            "dispatch_rules": [
                {
                    "sip_dispatch_rule_id": "SDR_calls",
                    "name": "calls",
                    "trunk_ids": [TRUNK],
                    "rule": {"dispatch_rule_callee": {"room_prefix": "call"}},
                }
            ],
        },
        logging={"level": "info", "format": "json"},
    )
    workdir = Path(tempfile.mkdtemp(prefix="rldw", dir="/tmp"))  # SIPp paths stay short
    try:
        deadline = time.monotonic() + 60
        while not _ready(server):
            assert server.alive() and time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.25)
        yield server, sip_port, workdir
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_killed_worker_callers_get_bye_from_front(
    appliance: tuple[Server, int, Path],
) -> None:
    server, sip_port, wd = appliance
    pcap = wd / "t1k.pcap"
    write_tone_pcap(pcap, 1000.0, 25.0)
    sc = _scenario(wd / "uac.xml", pcap=pcap, play_ms=20000, answer_bye=True)
    inject = wd / "calls.csv"
    inject.write_text(
        "SEQUENTIAL\n" + "".join(f"{_caller(i)};{_number(i)};\n" for i in range(CALLS))
    )
    msg = wd / "uac.msg"
    assert SIPP is not None
    cmd = [
        SIPP, "-sf", str(sc), f"127.0.0.1:{sip_port}", "-i", "127.0.0.1",
        "-p", str(free_port()), "-mi", "127.0.0.1", "-mp", str(free_udp_range(4 * CALLS)[0]),
        "-m", str(CALLS), "-l", str(CALLS), "-r", "10", "-inf", str(inject),
        "-nostdin", "-timeout", "60s", "-timeout_error", "-max_socket", "100",
        "-trace_msg", "-message_file", str(msg),
    ]  # fmt: skip
    calls = asyncio.create_task(run_sipp(cmd, wd, timeout=90))

    end = time.monotonic() + 40
    while True:
        act = await asyncio.to_thread(_per_worker, server, "roomline_sip_active_calls")
        if sum(act.values()) >= CALLS:
            break
        assert time.monotonic() < end and not calls.done(), act
        await asyncio.sleep(0.25)
    victim, on_victim = max(act.items(), key=lambda kv: kv[1])
    assert 0 < on_victim < CALLS, act  # both workers carry calls
    pid = worker_pid(server, victim)
    assert pid is not None
    before = await asyncio.to_thread(
        _per_worker, server, "roomline_sip_calls_ended_by_worker_loss_total"
    )
    assert before == {p: 0 for p in act}, before

    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    # Each caller of the dead worker gets a BYE from the front, within seconds (the calls would
    # otherwise hold for 20 s and end with the caller's own BYE).
    while len(set(received_requests(msg, "BYE"))) < on_victim:
        assert time.monotonic() - t_kill < 10, received_requests(msg, "BYE")
        await asyncio.sleep(0.05)
    print(f"{on_victim} callers got the front's BYE {time.monotonic() - t_kill:.2f}s after kill -9")

    # Every SIPp call succeeds: the victim's callers answered the BYE 200, the others held to the
    # end and hung up themselves (answered 200 by their live worker).
    rc, out = await calls
    assert rc == 0, out[-3000:]
    byes = received_requests(msg, "BYE")
    assert len(byes) == len(set(byes)) == on_victim, byes
    assert msg.read_text(errors="replace").count("SIP/2.0 200 OK") >= CALLS * 2

    after = await asyncio.to_thread(
        _per_worker, server, "roomline_sip_calls_ended_by_worker_loss_total"
    )
    assert after == {p: (on_victim if p == victim else 0) for p in act}, after
    logged = [
        e for e in server.log_events() if "sip call ended by the front" in str(e.get("event", ""))
    ]
    assert len(logged) == on_victim, logged
    assert {c for e in logged for c in byes if c in str(e["event"])} == set(byes)

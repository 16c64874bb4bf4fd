"""The ``reminder`` example agent end to end: ``CreateDispatch`` with JSON metadata → the agent
dials through an outbound trunk → the pjsua2 test phone (callee mode) answers → it hears the
spoken message (energy in the speech band, recorded by the phone) → the agent's BYE arrives.

Whole appliance (roomline_harness/outbound.py: two bridge workers, one agent worker), real
``livekit-api`` for the dispatch and the trunk, real LiveKit SDK watching the agent's attributes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from roomline_agents.examples.reminder import BadMetadata, Reminder
from roomline_harness.aio import wait_for
from roomline_harness.audio import read_wav
from roomline_harness.lk import connect, token
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.outbound import Ports, pick_ports, start_appliance
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server
from roomline_harness.sip.peers import PhoneProcess, disconnected
from roomline_harness.sip.sipp import SIPP
from roomline_harness.sip.sipp_uas import uas_cmd, uas_scenario

MESSAGE = "Hello. Your table at the restaurant is ready. Please come to the front desk."


@dataclass
class Stack:
    server: Server
    ports: Ports


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("reminder")
    ports = pick_ports()
    server = start_appliance(tmp, ports)
    try:
        yield Stack(server, ports)
    finally:
        stop_server(server)
        print("---- appliance log tail ----\n" + server.log_text()[-5000:])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rlrem", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def watch_status(room: rtc.Room) -> list[str]:
    """Every ``reminder.status`` value the agent sets, in order (kept after it leaves)."""
    statuses: list[str] = []

    def on_attrs(_changed: dict[str, str], p: rtc.Participant) -> None:
        s = p.attributes.get("reminder.status")
        if s and (not statuses or statuses[-1] != s):
            statuses.append(s)

    room.on("participant_attributes_changed", on_attrs)
    return statuses


def speech_windows(pcm: np.ndarray, rate: int, level_dbfs: float = -40.0) -> int:
    """How many 100 ms windows of ``pcm`` are louder than ``level_dbfs`` (RMS)."""
    n = rate // 10
    x = pcm.astype(np.float64) / 32768.0
    count = 0
    for i in range(0, len(x) - n + 1, n):
        rms = float(np.sqrt(np.mean(x[i : i + n] ** 2))) + 1e-12
        count += 20 * np.log10(rms) > level_dbfs
    return count


def speech_band_share(pcm: np.ndarray, rate: int) -> float:
    """Share of the recording's power between 100 Hz and 4 kHz."""
    x = pcm.astype(np.float64)
    power = np.abs(np.fft.rfft(x - x.mean())) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    return float(power[(freqs >= 100) & (freqs <= 4000)].sum() / (power.sum() + 1e-30))


def test_metadata_parsing() -> None:
    r = Reminder.parse(json.dumps({"number": "+15551", "trunk": "ST_x", "message": "hi"}))
    assert (r.number, r.trunk, r.message, r.ringing_timeout) == ("+15551", "ST_x", "hi", 30)
    for bad in ("", "[1]", '{"trunk": "ST_x"}', '{"number": "+1"}', '{"number": 5, "trunk": "t"}',
                '{"number": "+1", "trunk": "t", "ringing_timeout": 0}'):  # fmt: skip
        with pytest.raises(BadMetadata):
            Reminder.parse(bad)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_reminder_calls_speaks_and_hangs_up(stack: Stack, short_dir: Path) -> None:
    port = free_port()
    rtp_start, _ = free_udp_range(40)
    heard = short_dir / "heard.wav"
    phone = await PhoneProcess.start(
        [
            "--answer",
            "--port",
            str(port),
            "--rtp-start",
            str(rtp_start),
            "--ring-ms",
            "300",
            "--record",
            str(heard),
            "--duration",
            "40",
            "--max-wait",
            "60",
            "--workdir",
            str(short_dir),
        ]  # fmt: skip
    )
    room_name, number = "reminder_ok", "+15557772001"
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    room = await connect(stack.server.ws_url, token("observer", room_name))
    statuses = watch_status(room)
    try:
        trunk = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(
                    address=f"127.0.0.1:{port}", numbers=["+15550003000"]
                )
            )
        )
        meta = {"number": number, "message": MESSAGE, "trunk": trunk.sip_trunk_id}
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name="reminder", room=room_name, metadata=json.dumps(meta)
            )
        )
        await wait_for(lambda: "delivered" in statuses, 60, "message delivered")
        events: list[dict[str, Any]] = await phone.wait(20)
    finally:
        phone.kill()
        await room.disconnect()
        await lk.aclose()
    print("agent statuses:", statuses)
    assert statuses[-3:] == ["dialing", "speaking", "delivered"], statuses
    offer = next(e for e in events if e["event"] == "offer")
    assert f"INVITE sip:{number}@127.0.0.1:{port}" in offer["request"], offer
    gone = disconnected(events)
    assert gone is not None and not gone["local_hangup"], events  # the agent's BYE
    pcm, rate = read_wav(heard)
    windows = speech_windows(pcm, rate)
    share = speech_band_share(pcm, rate)
    print(f"callee heard {len(pcm) / rate:.1f} s, {windows} loud 100 ms windows, "
          f"{share:.3f} of the power in 100 Hz-4 kHz")  # fmt: skip
    assert windows >= 15, windows  # the message is ~4 s of speech (tones without espeak-ng)
    assert share > 0.9, share


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_reminder_bad_metadata(stack: Stack) -> None:
    room_name = "reminder_bad"
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    room = await connect(stack.server.ws_url, token("observer", room_name))
    statuses = watch_status(room)
    try:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name="reminder", room=room_name, metadata=json.dumps({"number": "+1555"})
            )
        )
        await wait_for(lambda: bool(statuses), 30, "agent refuses")
        assert statuses == ["bad-metadata:trunk missing"]
    finally:
        await room.disconnect()
        await lk.aclose()


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_reminder_busy_callee(stack: Stack, short_dir: Path) -> None:
    """A callee that answers 486: the agent reports the Twirp code and SIP status, and leaves."""
    port = free_port()
    media, _ = free_udp_range(4)
    sc = uas_scenario(short_dir / "uas.xml", provisional=180, ring_ms=200, final=486)
    sipp = await asyncio.create_subprocess_exec(
        *uas_cmd(sc, local_port=port, media_port=media, timeout_s=30),
        cwd=str(short_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    room_name = "reminder_busy"
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    room = await connect(stack.server.ws_url, token("observer", room_name))
    statuses = watch_status(room)
    try:
        await asyncio.sleep(0.3)
        trunk = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(
                    address=f"127.0.0.1:{port}", numbers=["+15550003001"]
                )
            )
        )
        meta = {"number": "+15557772002", "trunk": trunk.sip_trunk_id, "message": "hi"}
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name="reminder", room=room_name, metadata=json.dumps(meta)
            )
        )
        await wait_for(lambda: statuses[-1:] != ["dialing"] and len(statuses) >= 2, 30, "outcome")
        assert statuses == ["dialing", "failed:resource_exhausted:486"], statuses
        out, _ = await asyncio.wait_for(sipp.communicate(), 20)
        assert sipp.returncode == 0, out.decode(errors="replace")[-2000:]
    finally:
        if sipp.returncode is None:
            sipp.kill()
            await sipp.wait()
        await room.disconnect()
        await lk.aclose()

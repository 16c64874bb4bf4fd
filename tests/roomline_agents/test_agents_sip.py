"""Phone calls answered by in-appliance agents: the pjsua2 test phone dials, a dispatch rule starts
the agent, the phone's recording is checked by content (FFT / level), the room by the LiveKit SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from livekit import api, rtc

from roomline.config import embedded_yaml
from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, read_wav, snr_db
from roomline_harness.lk import connect, token
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import API_KEY, API_SECRET, Server, start_server, stop_server
from roomline_harness.sip.peers import disconnected, run_phone

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

CALLER = "+15551234567"
AGENT_KIND = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


def sip_section(**extra: Any) -> dict[str, Any]:
    rs, re_ = free_udp_range(40)
    port = free_port()
    return {
        "enabled": True,
        "bind_address": "127.0.0.1",
        "workers": [{"sip_port": port, "rtp_port_start": rs, "rtp_port_end": re_}],
        **extra,
    }


def phone_args(srv: Server, workdir: Path, *extra: str) -> list[str]:
    prs, _ = free_udp_range(20)
    port = srv.extra["sip_port"]
    return [
        *("--dest", f"sip:+15550100@127.0.0.1:{port}", "--port", str(free_port())),
        *("--rtp-start", str(prs), "--caller", CALLER, "--workdir", str(workdir)),
        *extra,
    ]


def start(tmp: Path, sip: dict[str, Any]) -> Server:
    srv = start_server(tmp, sip=sip)
    srv.extra["sip_port"] = sip["workers"][0]["sip_port"]
    return srv


async def room_names(srv: Server) -> set[str]:
    async with api.LiveKitAPI(srv.http_url, API_KEY, API_SECRET) as lk:
        return {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}


async def new_room(srv: Server, before: set[str], timeout: float = 20.0) -> str:
    """The room the call created (rooms of earlier calls may still be open)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        fresh = await room_names(srv) - before
        if fresh:
            return fresh.pop()
        await asyncio.sleep(0.05)
    raise AssertionError("no room was created for the call")


def agent_of(room: rtc.Room) -> rtc.RemoteParticipant | None:
    return next((p for p in room.remote_participants.values() if p.kind == AGENT_KIND), None)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    sip = sip_section(
        trunks=[{"name": "t", "allowed_addresses": ["127.0.0.1"], "numbers": ["+15550100"]}],
        dispatch_rules=[
            {
                "name": "echo",
                "rule": {"dispatch_rule_direct": {"room_name": "echo-room"}},
                "room_config": {"agents": [{"agent_name": "echo"}]},
            }
        ],
    )
    srv = start(tmp_path_factory.mktemp("echo"), sip)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def ivr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shipped default trunk and dispatch rule (embedded config), on test ports."""
    default = yaml.safe_load(embedded_yaml())["sip"]
    sip = sip_section(trunks=default["trunks"], dispatch_rules=default["dispatch_rules"])
    srv = start(tmp_path_factory.mktemp("ivr"), sip)
    yield srv
    stop_server(srv)


async def test_echo_agent_plays_back_the_callers_tone(echo_server: Server, tmp_path: Path) -> None:
    args = phone_args(echo_server, tmp_path, "--tone", "1000", "--tone-seconds", "2")
    args += ["--record", str(tmp_path / "heard.wav"), "--duration", "8"]
    before = await room_names(echo_server)
    phone = asyncio.create_task(run_phone(args, timeout=60))
    room_name = await new_room(echo_server, before)
    web = await connect(echo_server.ws_url, token("web", room_name))
    states: list[str] = []

    @web.on("participant_attributes_changed")
    def on_attrs(changed: dict[str, str], p: rtc.Participant) -> None:
        if p.kind == AGENT_KIND and "lk.agent.state" in changed:
            states.append(changed["lk.agent.state"])

    try:
        await wait_for(lambda: agent_of(web) is not None, 20, "echo agent in the room")
        agent = agent_of(web)
        assert agent is not None and agent.name == "echo"
        events = await phone
    finally:
        await web.disconnect()
    end = disconnected(events)
    assert end is not None and end["local_hangup"], events
    # The agent went listening -> thinking -> speaking -> listening around the echo.
    assert "speaking" in states and states[-1] == "listening", states

    x, rate = read_wav(tmp_path / "heard.wav")
    x = np.asarray(x, dtype=np.float64)
    quiet = x[: int(1.8 * rate)]  # while the caller talks, the agent only listens
    assert np.sqrt(np.mean(quiet**2)) < 100
    echo = x[int(3.0 * rate) : int(4.4 * rate)]  # tone ends at 2 s, + ~0.6 s pause detection
    assert abs(dominant_frequency(echo, rate) - 1000) < 10
    assert snr_db(echo, rate, 1000) > 15


async def ivr_call(srv: Server, tmp_path: Path, digit: str, duration: float) -> dict[str, Any]:
    args = phone_args(srv, tmp_path, "--record", str(tmp_path / "heard.wav"))
    args += ["--duration", str(duration), "--dtmf", digit, "--dtmf-at", "5"]
    before = await room_names(srv)
    phone = asyncio.create_task(run_phone(args, timeout=60))
    room_name = await new_room(srv, before)
    assert room_name.startswith("call-")
    web = await connect(srv.ws_url, token("web", room_name))
    front = await connect(srv.ws_url, token("front-desk-staff", "front-desk"))
    left: list[str] = []
    web.on("participant_disconnected", lambda p: left.append(p.identity))
    caller_in_front_desk = False
    try:
        await wait_for(lambda: agent_of(web) is not None, 20, "ivr agent in the room")
        agent = agent_of(web)
        assert agent is not None and agent.name == "ivr"
        await wait_for(lambda: agent.attributes.get("ivr.choice") == digit, 30, "key seen")
        attributes = dict(agent.attributes)
        await wait_for(lambda: agent.identity in left, 30, "ivr agent leaves")
        caller_present = f"sip_{CALLER}" in web.remote_participants
        if digit == "2":
            await wait_for(lambda: f"sip_{CALLER}" in front.remote_participants, 15, "caller moved")
            moved = front.remote_participants[f"sip_{CALLER}"]
            caller_in_front_desk = moved.kind == 3 and "sip.callID" in moved.attributes
        events = await phone
    finally:
        await web.disconnect()
        await front.disconnect()
    x, rate = read_wav(tmp_path / "heard.wav")
    return {
        "attributes": attributes,
        "caller_present_after_agent_left": caller_present,
        "caller_in_front_desk": caller_in_front_desk,
        "events": events,
        "greeting": np.asarray(x[: 4 * rate], dtype=np.float64),
    }


async def test_default_config_ivr_greets_and_transfers_on_2(
    ivr_server: Server, tmp_path: Path
) -> None:
    got = await ivr_call(ivr_server, tmp_path, "2", duration=16)
    # The greeting is audible speech (espeak-ng) or the fallback tones: clearly not silence.
    assert np.sqrt(np.mean(got["greeting"] ** 2)) > 300
    attrs = got["attributes"]
    assert attrs["ivr.menu"] == "transfer" and attrs["ivr.transfer_to"] == "front-desk"
    assert attrs["ivr.caller"] == f"sip_{CALLER}"
    # Room state: the caller was moved (MoveParticipant) to the front-desk room, still a SIP
    # participant with its sip.* attributes, and the call went on (the phone hangs up itself).
    assert got["caller_in_front_desk"]
    assert not got["caller_present_after_agent_left"]
    end = disconnected(got["events"])
    assert end is not None and end["local_hangup"]


async def test_default_config_ivr_hangs_up_on_9(ivr_server: Server, tmp_path: Path) -> None:
    got = await ivr_call(ivr_server, tmp_path, "9", duration=30)
    assert got["attributes"]["ivr.menu"] == "hangup"
    end = disconnected(got["events"])
    assert end is not None and not end["local_hangup"], got["events"]  # the appliance sent BYE

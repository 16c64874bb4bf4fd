"""PIN dispatch rules end to end: a pjsua2 phone enters a PIN by DTMF before it joins the room.

A direct rule with ``pin: "1234"``. The appliance answers, plays two 440 Hz beeps (the phone
records them), and joins the caller to the room only after ``1234#``; a LiveKit SDK client in the
room sees no SIP participant while the call is answered but the PIN not entered, then the caller
with its audio. ``9999#`` gets a BYE from the appliance and nobody joins.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import rtc

from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, read_wav
from roomline_harness.lk import connect, record, subscribed_audio, token
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import Server, start_server, stop_server
from roomline_harness.sip.fullstack import worker_metric
from roomline_harness.sip.peers import disconnected, run_phone
from roomline_harness.sip.sipp import SIPP

NUMBER = "+15550777"
ROOM = "vault"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="SIP test tools not installed (run .ci/setup --test)"),
]


def _server(tmp: Path, sip_port: int) -> Server:
    rtp_start, rtp_end = free_udp_range(40)
    (tmp / "srv").mkdir()
    return start_server(
        tmp / "srv",
        sip={
            "enabled": True,
            "bind_address": "127.0.0.1",
            "workers": [
                {"sip_port": sip_port, "rtp_port_start": rtp_start, "rtp_port_end": rtp_end}
            ],
            "trunks": [{"name": "lan", "allowed_addresses": ["127.0.0.1"], "numbers": [NUMBER]}],
            "dispatch_rules": [
                {
                    "name": "vault",
                    "rule": {"dispatch_rule_direct": {"room_name": ROOM, "pin": "1234"}},
                }
            ],
        },
    )


def _phone(
    tmp: Path, sip_port: int, caller: str, dtmf: str, **extra: str
) -> asyncio.Task[list[dict[str, Any]]]:
    phone_rtp, _ = free_udp_range(20)
    args = [
        "--dest",
        f"sip:{NUMBER}@127.0.0.1:{sip_port}",
        "--port",
        str(free_port()),
        "--rtp-start",
        str(phone_rtp),
        "--caller",
        caller,
        "--dtmf",
        dtmf,
        "--dtmf-at",
        "3",
        "--workdir",
        str(tmp),
    ]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return asyncio.create_task(run_phone(args, timeout=60))


@pytest.mark.timeout(180)
async def test_pin_rule_joins_after_right_pin_and_hangs_up_on_wrong_pin(tmp_path: Path) -> None:
    sip_port = free_port()
    server = _server(tmp_path, sip_port)
    web: rtc.Room | None = None
    try:
        web = await connect(server.ws_url, token("watcher", ROOM))
        joined: list[str] = []
        web.on("participant_connected", lambda p: joined.append(p.identity))

        # Right PIN. The phone sends 1234# 3 s after the appliance answers it.
        caller = "+15551110001"
        heard = tmp_path / "heard.wav"
        call = _phone(
            tmp_path, sip_port, caller, "1234#", tone="1000", duration="12", record=str(heard)
        )
        # Answered and collecting the PIN (the worker counts the call) ...
        await wait_for(
            lambda: worker_metric(server, "roomline_sip_active_calls", sip_port) == 1,
            20,
            "call answered for PIN entry",
        )
        # ... but not in the room: the PIN is not entered yet.
        assert f"sip_{caller}" not in web.remote_participants
        assert joined == []
        await wait_for(lambda: subscribed_audio(web, f"sip_{caller}") is not None, 20, "caller")
        p = web.remote_participants[f"sip_{caller}"]
        assert p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
        await wait_for(lambda: p.attributes.get("sip.callStatus") == "active", 5, "active")
        assert p.attributes["sip.phoneNumber"] == caller
        track = subscribed_audio(web, f"sip_{caller}")
        assert track is not None
        pcm = await record(track, 1.0)
        assert abs(dominant_frequency(pcm, 48000) - 1000.0) < 20  # the phone's tone, after PIN
        events = await call
        ended = disconnected(events)
        assert ended is not None and ended["local_hangup"] is True, events
        # The prompt: the phone heard 440 Hz beeps right after the answer.
        samples, rate = read_wav(heard)
        first = samples[: int(1.2 * rate)]
        assert np.abs(first).max() > 1000, "no prompt heard"
        assert abs(dominant_frequency(first, rate) - 440.0) < 15
        await wait_for(lambda: f"sip_{caller}" not in web.remote_participants, 10, "caller gone")

        # Wrong PIN: the appliance hangs up, nobody joins. (The phone needs a source: pjmedia
        # sends RFC 4733 events only from a stream that the conference bridge feeds.)
        caller2 = "+15551110002"
        events = await _phone(tmp_path, sip_port, caller2, "9999#", tone="1000", duration="20")
        ended = disconnected(events)
        assert ended is not None and ended["local_hangup"] is False, events
        assert any(e["event"] == "dtmf_sent" for e in events)
        assert joined == [f"sip_{caller}"]
        assert f"sip_{caller2}" not in web.remote_participants
        await wait_for(
            lambda: worker_metric(server, "roomline_sip_active_calls", sip_port) == 0,
            10,
            "slot released",
        )
    finally:
        if web is not None:
            await web.disconnect()
        stop_server(server)

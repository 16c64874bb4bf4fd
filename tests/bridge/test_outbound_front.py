"""Outbound calls behind the Kamailio front: the INVITE leaves through the front (one SIP address
for carriers), record-routed, so the callee's in-dialog requests come back through it too; a TCP +
SRTP trunk is reached over TCP from the front (the worker still talks UDP to the front)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from livekit import api

from bridge.service.front_dialogs import CONFIRMED, find_kamcmd, list_dialogs
from roomline_harness.outbound import Ports, pick_ports, start_appliance
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server
from roomline_harness.sip.fullstack import metrics, worker_pid
from roomline_harness.sip.sipp import SIPP
from roomline_harness.sip.sipp_uas import uas_cmd, uas_scenario

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None or shutil.which("kamailio", path="/usr/sbin:/usr/bin") is None,
                       reason="sipp or kamailio not installed"),
    pytest.mark.timeout(120),
]  # fmt: skip


@pytest.fixture(scope="module")
def front_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, object]]:
    tmp = tmp_path_factory.mktemp("outfront")
    ports = pick_ports()
    server = start_appliance(tmp, ports, front=True)
    try:
        yield server, ports
    finally:
        stop_server(server)
        print("---- appliance log tail ----\n" + server.log_text()[-5000:])


async def test_outbound_through_front(front_stack: tuple[object, object]) -> None:
    server, ports = front_stack
    short = Path(tempfile.mkdtemp(prefix="rlof", dir="/tmp"))
    try:
        sc = uas_scenario(short / "uas.xml", provisional=180, ring_ms=200)
        sipp_port, media = ports.base + 160, ports.base + 170  # type: ignore[attr-defined]
        proc = await asyncio.create_subprocess_exec(
            *uas_cmd(sc, local_port=sipp_port, media_port=media),
            cwd=str(short),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await asyncio.sleep(0.3)
        lk = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)  # type: ignore[attr-defined]
        try:
            trunk = await lk.sip.create_outbound_trunk(
                api.CreateSIPOutboundTrunkRequest(
                    trunk=api.SIPOutboundTrunkInfo(
                        address=f"127.0.0.1:{sipp_port}", numbers=["+15550001000"]
                    )
                )
            )
            info = await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk.sip_trunk_id,
                    sip_call_to="+15557770031",
                    room_name="front_out",
                    wait_until_answered=True,
                )
            )
            assert info.participant_identity == "sip_+15557770031"
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room="front_out", identity=info.participant_identity)
            )
        finally:
            await lk.aclose()
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        msgs = (short / "msgs.log").read_text(errors="replace")
        front = f"127.0.0.1:{ports.front}"  # type: ignore[attr-defined]
        invite = msgs[msgs.index("INVITE sip:") :]
        invite = invite[: invite.index("\n\n")]
        print(invite)
        assert f"Record-Route: <sip:{front}" in invite  # the dialog stays on the front
        assert "Route: <" not in invite.replace("Record-Route: <", "")  # own Route consumed
        assert f"Via: SIP/2.0/UDP {front}" in invite  # the carrier sees the front's address
    finally:
        shutil.rmtree(short, ignore_errors=True)


async def test_outbound_callee_gets_bye_when_its_worker_dies(
    front_stack: tuple[object, object],
) -> None:
    """An outbound call is a front dialog of the worker that placed it: kill -9 that worker and
    the callee gets the front's BYE (with the Reason header), counted per worker."""
    server, ports = cast(Server, front_stack[0]), cast(Ports, front_stack[1])
    deadline = time.monotonic() + 60  # both workers ready and up in the front
    while (
        sum(v for (n, _), v in metrics(server).items() if n == "roomline_sip_worker_dispatch_up")
        < 2
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.25)
    short = Path(tempfile.mkdtemp(prefix="rlod", dir="/tmp"))
    try:
        # The callee answers and then waits up to 60 s for a BYE (the room never hangs up).
        sc = uas_scenario(short / "uas.xml", provisional=180, ring_ms=200, play_ms=0)
        # Like a real carrier (RFC 3261 12.1.1) the callee copies Record-Route into its answer,
        # so the worker's ACK passes the front and confirms the front's dialog.
        text = sc.read_text()
        answer = "SIP/2.0 200 OK\n      [last_Via:]"
        assert answer in text
        sc.write_text(text.replace(answer, answer + "\n      [last_Record-Route:]", 1))
        sipp_port, media = ports.sipp(7)
        proc = await asyncio.create_subprocess_exec(
            *uas_cmd(sc, local_port=sipp_port, media_port=media, timeout_s=60),
            cwd=str(short),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await asyncio.sleep(0.3)
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            trunk = await lk.sip.create_outbound_trunk(
                api.CreateSIPOutboundTrunkRequest(
                    trunk=api.SIPOutboundTrunkInfo(
                        address=f"127.0.0.1:{sipp_port}", numbers=["+15550001001"]
                    )
                )
            )
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk.sip_trunk_id,
                    sip_call_to="+15557770032",
                    room_name="front_out_dies",
                    wait_until_answered=True,
                )
            )
        active = {
            int(lbl.split('"')[1]): v
            for (n, lbl), v in metrics(server).items()
            if n == "roomline_sip_active_calls" and lbl
        }
        (port,) = [p for p, v in active.items() if v == 1]
        # Two workers, wideband_workers auto: the first runs 16 kHz, the second 8 kHz. An
        # outbound call goes to a free 16 kHz worker (its offer carries G.722).
        assert port == ports.front_workers, active
        pid = worker_pid(server, port)
        assert pid is not None
        # Kill it once the worker's ACK has passed the front (the dialog is confirmed).
        kamcmd = find_kamcmd()
        assert kamcmd is not None
        sock = str(server.data_dir / "sip-front" / "kamailio_ctl")
        deadline = time.monotonic() + 10
        # (The other test's callee does not copy Record-Route: its dialog never got past
        # state 3 and is left alone.)
        while CONFIRMED not in [d.state for d in await list_dialogs(kamcmd, sock)]:
            assert time.monotonic() < deadline, await list_dialogs(kamcmd, sock)
            await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        out, _ = await asyncio.wait_for(proc.communicate(), 15)  # the BYE ends the scenario
        print(f"callee got the front's BYE and ended {time.monotonic() - t0:.2f}s after kill -9")
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        msgs = (short / "msgs.log").read_text(errors="replace")
        bye = msgs[msgs.index("BYE sip:") :]
        assert 'Reason: Q.850;cause=41;text="roomline bridge worker failed"' in bye[:2000]
        key = ("roomline_sip_calls_ended_by_worker_loss_total", f'{{sip_port="{port}"}}')
        deadline = time.monotonic() + 5  # counted once the RPC returns, just after the BYE
        while metrics(server).get(key) != 1:
            assert time.monotonic() < deadline, metrics(server).get(key)
            await asyncio.sleep(0.1)
    finally:
        shutil.rmtree(short, ignore_errors=True)


async def test_outbound_tcp_srtp_through_front(front_stack: tuple[object, object]) -> None:
    """A TCP + SRTP-required trunk behind the front: the pjsua2 phone answers, the INVITE came
    over TCP from the front's address with RTP/SAVP, and the room hears the callee's tone."""
    from roomline_harness.lk import connect, record, subscribed_audio, token
    from roomline_harness.net import free_port, free_udp_range
    from roomline_harness.sip.fullstack import check_tone
    from roomline_harness.sip.peers import PhoneProcess

    server, ports = front_stack
    short = Path(tempfile.mkdtemp(prefix="rlot", dir="/tmp"))
    port = free_port()
    rtp_start, _ = free_udp_range(40)
    phone = await PhoneProcess.start(
        [
            "--answer",
            "--tcp",
            "--srtp",
            "mandatory",
            "--port",
            str(port),
            "--rtp-start",
            str(rtp_start),
            "--tone",
            "1000",
            "--duration",
            "4",
            "--max-wait",
            "30",
            "--workdir",
            str(short),
        ]  # fmt: skip
    )
    lk = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)  # type: ignore[attr-defined]
    room = await connect(server.ws_url, token("web", "front_tcp"))  # type: ignore[attr-defined]
    try:
        await asyncio.sleep(0.5)
        trunk = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(
                    address=f"127.0.0.1:{port}",
                    numbers=["+15550001001"],
                    transport=api.SIPTransport.SIP_TRANSPORT_TCP,
                    media_encryption=api.SIPMediaEncryption.SIP_MEDIA_ENCRYPT_REQUIRE,
                )
            )
        )
        await lk.sip.create_sip_participant(
            api.CreateSIPParticipantRequest(
                sip_trunk_id=trunk.sip_trunk_id,
                sip_call_to="+15557770032",
                room_name="front_tcp",
                wait_until_answered=True,
            )
        )
        ident = "sip_+15557770032"
        for _ in range(100):
            if subscribed_audio(room, ident) is not None:
                break
            await asyncio.sleep(0.1)
        track = subscribed_audio(room, ident)
        assert track is not None
        chk = check_tone(await asyncio.wait_for(record(track, 1.5, skip=0.3), 15), 48000, 1000.0)
        print(f"callee over TCP+SRTP via the front -> room: {chk}")
        assert abs(chk.freq - 1000.0) < 5 and chk.snr >= 20
        events = await phone.wait(30)
    finally:
        phone.kill()
        await room.disconnect()
        await lk.aclose()
        shutil.rmtree(short, ignore_errors=True)
    offer = next(e for e in events if e["event"] == "offer")
    print(offer["request"], "|", offer["via"])
    front = f"127.0.0.1:{ports.front}"  # type: ignore[attr-defined]
    assert offer["via"].startswith(f"Via: SIP/2.0/TCP {front}"), offer
    assert "RTP/SAVP" in offer["sdp"] and "a=crypto:" in offer["sdp"], offer

"""Outbound calls to the pjsua2 test phone as callee: over a TCP trunk, and over an SRTP trunk.

The whole appliance (two direct bridge workers, roomline_harness/outbound.py) places the call with
``CreateSIPParticipant`` (real ``livekit-api``); the callee is ``roomline_harness.sip.phone
--answer`` (180, then 200), playing a 1 kHz tone and recording what it hears; an SDK peer in the
room plays 440 Hz. Audio is checked both ways by FFT, the offer the callee received is checked
for its transport / SRTP lines, and with root the RTP on the wire is checked for SRTP's auth tag.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api

from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, read_wav
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.outbound import Ports, pick_ports, start_appliance
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server
from roomline_harness.sip.fullstack import check_tone
from roomline_harness.sip.peers import PhoneProcess, disconnected
from roomline_harness.sip.sipp import SIPP
from roomline_harness.sip.sipp_uas import uas_cmd, uas_scenario
from roomline_harness.sip.sniff import can_sniff, rtp_payload_sizes, sniff_udp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE = 48000
#: PCMU 20 ms = 160 bytes; SRTP appends the auth tag (10 bytes for *_80, 4 for *_32).
PLAIN_SIZES = {160}
SRTP_SIZES = {170, 164}


@dataclass
class Stack:
    server: Server
    ports: Ports


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("outphone")
    ports = pick_ports()
    server = start_appliance(tmp, ports)
    try:
        yield Stack(server, ports)
    finally:
        stop_server(server)
        print("---- appliance log tail ----\n" + server.log_text()[-6000:])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rlop", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def callee_args(port: int, wd: Path, heard: Path, *extra: str) -> list[str]:
    rtp_start, _ = free_udp_range(40)
    return [
        "--answer",
        "--port", str(port),
        "--rtp-start", str(rtp_start),
        "--ring-ms", "500",
        "--tone", "1000",
        "--record", str(heard),
        "--duration", "8",
        "--max-wait", "40",
        "--workdir", str(wd),
        *extra,
    ]  # fmt: skip


def _worker_rtp(stack: Stack) -> range:
    return range(stack.ports.worker_rtp(0)[0], stack.ports.worker_rtp(1)[1] + 1)


async def call_both_ways(
    stack: Stack,
    wd: Path,
    number: str,
    trunk: api.SIPOutboundTrunkInfo,
    phone: tuple[str, ...] = (),
) -> tuple[list[dict[str, Any]], dict[tuple[int, int], set[int]]]:
    """Dial ``number`` through ``trunk`` to the phone callee; check audio both ways by FFT.

    Returns the phone's events and the RTP payload sizes seen on the wire per (src, dst) port
    pair during 2 s of the call (empty without root)."""
    port = int(trunk.address.rsplit(":", 1)[1])
    heard = wd / "heard.wav"
    room_name = f"out_phone_{number[-4:]}"
    ident = f"sip_{number}"
    proc = await PhoneProcess.start(callee_args(port, wd, heard, *phone))
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    room = await connect(stack.server.ws_url, token("web", room_name))
    sizes: dict[tuple[int, int], set[int]] = {}
    try:
        await asyncio.sleep(0.5)  # the phone binds its SIP port
        created = await lk.sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(trunk=trunk))
        async with tone_publisher(room, 440.0):
            info = await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=created.sip_trunk_id,
                    sip_call_to=number,
                    room_name=room_name,
                    wait_until_answered=True,
                )
            )
            assert info.participant_identity == ident
            await wait_for(lambda: subscribed_audio(room, ident) is not None, 10, "callee track")
            track = subscribed_audio(room, ident)
            assert track is not None
            sniffing = (
                asyncio.create_task(asyncio.to_thread(sniff_udp, _worker_rtp(stack), 2.0))
                if can_sniff()
                else None
            )
            pcm = await asyncio.wait_for(record(track, 2.0, skip=0.5), 20)
            if sniffing is not None:
                sizes = rtp_payload_sizes(await sniffing)
            chk = check_tone(pcm, RATE, 1000.0)
            print(f"callee 1 kHz -> room: {chk}")
            assert abs(chk.freq - 1000.0) < 5 and chk.snr >= 20, chk
            events = await proc.wait(40)  # the phone hangs up 8 s after the answer
    finally:
        proc.kill()
        await room.disconnect()
        await lk.aclose()
    gone = disconnected(events)
    assert gone is not None and gone["local_hangup"], events
    pcm2, rate = read_wav(heard)
    chk2 = check_tone(pcm2[int(3.0 * rate) : int(7.0 * rate)], rate, 440.0)
    print(f"room 440 Hz -> callee: {chk2}")
    # Median of 0.5 s windows: the phone's own pjmedia clock (a separate process) drops a window
    # now and then when the 2-core host is loaded; the worker's counters stay clean then.
    assert abs(chk2.freq - 440.0) < 8 and chk2.median_window >= 15, chk2
    return events, sizes


def _offer(events: list[dict[str, Any]]) -> dict[str, Any]:
    offer = next((e for e in events if e["event"] == "offer"), None)
    assert offer is not None, events
    print("offer:", offer["request"], "|", offer["via"], "\n" + offer["sdp"])
    return offer


def _assert_wire(sizes: dict[tuple[int, int], set[int]], stack: Stack, allowed: set[int]) -> None:
    print("RTP payload sizes on the wire:", sizes)
    rtp = _worker_rtp(stack)
    to_worker = [v for (s, d), v in sizes.items() if d in rtp and s not in rtp]
    from_worker = [v for (s, d), v in sizes.items() if s in rtp and d not in rtp]
    assert to_worker and from_worker, sizes
    assert all(v <= allowed for v in to_worker + from_worker), sizes


async def test_phone_callee_over_tcp(stack: Stack, short_dir: Path) -> None:
    port = free_port()
    trunk = api.SIPOutboundTrunkInfo(
        name="tcp",
        address=f"127.0.0.1:{port}",
        numbers=["+15550002000"],
        transport=api.SIPTransport.SIP_TRANSPORT_TCP,
    )
    events, sizes = await call_both_ways(stack, short_dir, "+15557771001", trunk, ("--tcp",))
    offer = _offer(events)
    assert "transport=tcp" in offer["request"], offer
    assert "SIP/2.0/TCP" in offer["via"], offer
    assert "a=crypto" not in offer["sdp"] and "RTP/AVP" in offer["sdp"], offer
    if sizes:
        _assert_wire(sizes, stack, PLAIN_SIZES)


async def test_tls_trunk_refused_in_direct_mode(stack: Stack, short_dir: Path) -> None:
    """Direct mode (no front): the workers have no TLS transport, so a TLS trunk call fails at
    once with failed_precondition, and the TLS-listening callee gets nothing (no UDP fallback)."""
    port = free_port()
    phone = await PhoneProcess.start(
        ["--answer", "--tls", "--port", str(port), "--max-wait", "4", "--workdir", str(short_dir)]
    )
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    try:
        created = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(
                    address=f"127.0.0.1:{port}",
                    numbers=["+15550002009"],
                    transport=api.SIPTransport.SIP_TRANSPORT_TLS,
                )
            )
        )
        with pytest.raises(api.TwirpError) as err:
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=created.sip_trunk_id,
                    sip_call_to="+15557771009",
                    room_name="out_tls_direct",
                    wait_until_answered=True,
                )
            )
        assert err.value.code == "failed_precondition", err.value.message
        assert "TLS trunks need the SIP front" in err.value.message, err.value.message
        events = await phone.wait(15)
    finally:
        phone.kill()
        await lk.aclose()
    assert not any(e["event"] == "offer" for e in events), events


async def test_phone_callee_srtp_required(stack: Stack, short_dir: Path) -> None:
    port = free_port()
    trunk = api.SIPOutboundTrunkInfo(
        name="srtp",
        address=f"127.0.0.1:{port}",
        numbers=["+15550002001"],
        media_encryption=api.SIPMediaEncryption.SIP_MEDIA_ENCRYPT_REQUIRE,
    )
    events, sizes = await call_both_ways(
        stack, short_dir, "+15557771002", trunk, ("--srtp", "mandatory")
    )
    offer = _offer(events)
    assert "RTP/SAVP" in offer["sdp"] and "a=crypto:" in offer["sdp"], offer
    if sizes:
        _assert_wire(sizes, stack, SRTP_SIZES)


async def test_srtp_required_callee_without_crypto_fails(stack: Stack, short_dir: Path) -> None:
    """A callee that cannot do SRTP refuses the RTP/SAVP offer; nobody stays in the room."""
    port = free_port()
    number = "+15557771003"
    proc = await PhoneProcess.start(callee_args(port, short_dir, short_dir / "h.wav"))
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    try:
        await asyncio.sleep(0.5)
        created = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(
                    address=f"127.0.0.1:{port}",
                    numbers=["+15550002002"],
                    media=api.SIPMediaConfig(
                        encryption=api.SIPMediaEncryption.SIP_MEDIA_ENCRYPT_REQUIRE
                    ),
                )
            )
        )
        with pytest.raises(api.SipCallError) as err:
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=created.sip_trunk_id,
                    sip_call_to=number,
                    room_name="out_phone_nocrypto",
                    wait_until_answered=True,
                )
            )
        print("error:", err.value.code, err.value.sip_status_code, err.value)
        assert err.value.sip_status_code is not None and err.value.sip_status_code >= 300
        room = await lk.room.list_participants(
            api.ListParticipantsRequest(room="out_phone_nocrypto")
        )
        assert not [p for p in room.participants if p.identity == f"sip_{number}"]
    finally:
        proc.kill()
        await proc.wait(10)
        await lk.aclose()


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_srtp_required_plain_answer_fails(stack: Stack, short_dir: Path) -> None:
    """A callee that answers the RTP/SAVP offer 200 with plain RTP: LiveKit's
    ``failed_precondition`` / encryption-required; the call is ended with a BYE."""
    sc = uas_scenario(short_dir / "uas.xml", provisional=180, ring_ms=200)
    port = free_port()
    media, _ = free_udp_range(4)
    proc = await asyncio.create_subprocess_exec(
        *uas_cmd(sc, local_port=port, media_port=media, timeout_s=30),
        cwd=str(short_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    number = "+15557771004"
    try:
        await asyncio.sleep(0.3)
        created = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(
                    address=f"127.0.0.1:{port}",
                    numbers=["+15550002003"],
                    media_encryption=api.SIPMediaEncryption.SIP_MEDIA_ENCRYPT_REQUIRE,
                )
            )
        )
        with pytest.raises(api.TwirpError) as err:
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=created.sip_trunk_id,
                    sip_call_to=number,
                    room_name="out_phone_plain_answer",
                    wait_until_answered=True,
                )
            )
        print("error:", err.value.code, err.value.metadata, err.value)
        assert err.value.code == "failed_precondition", err.value
        assert "encryption-required" in err.value.message
        # SIPp may see the BYE right behind the ACK and count it "unexpected" (it still
        # answers it), so its exit code says nothing here: the messages do.
        await asyncio.wait_for(proc.communicate(), 30)
        msgs = (short_dir / "msgs.log").read_text(errors="replace")
        assert "RTP/SAVP" in msgs and "a=crypto:" in msgs  # the offer
        assert "BYE sip:" in msgs, msgs[-3000:]
        room = await lk.room.list_participants(
            api.ListParticipantsRequest(room="out_phone_plain_answer")
        )
        assert not [p for p in room.participants if p.identity == f"sip_{number}"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await lk.aclose()


# --- dial tone to an inbound caller while its transfer runs ---------------------------------------
def classify(pcm: np.ndarray, rate: int, seconds: float = 0.5) -> list[str]:
    """Per window: ``"440"`` (the room), ``"425"`` (the ringing tone), ``"quiet"`` or ``"?"``."""
    n = int(seconds * rate)
    out: list[str] = []
    for i in range(0, len(pcm) - n + 1, n):
        w = pcm[i : i + n].astype(np.float64)
        rms = float(np.sqrt(np.mean(w**2))) / 32768.0 + 1e-12
        if 20 * np.log10(rms) < -45:
            out.append("quiet")
            continue
        f = dominant_frequency(w, rate)
        out.append("440" if abs(f - 440) < 5 else "425" if abs(f - 425) < 5 else "?")
    return out


def runs(labels: list[str]) -> list[str]:
    """Consecutive duplicates collapsed; mixed windows (``?``) at transitions dropped."""
    out: list[str] = []
    for label in labels:
        if label != "?" and (not out or out[-1] != label):
            out.append(label)
    return out


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_inbound_transfer_plays_dialtone_then_restores_room(
    stack: Stack, short_dir: Path
) -> None:
    """The pjsua2 phone calls in; TransferSIPParticipant(play_dialtone) REFERs it to a SIPp
    target that rings 2.5 s and answers 486. The caller hears: the room (440 Hz), the ringing
    tone (425 Hz, 1 s on), silence (the tone's off phase, room muted), the room again after the
    failure (486 → resource_exhausted)."""
    number, caller = "+15550004000", "+15557773001"
    room_name, ident = "in_xfer_tone", f"sip_{caller}"
    target_port = free_port()
    target_media, _ = free_udp_range(4)
    target_dir = short_dir / "target"
    target_dir.mkdir()
    sc = uas_scenario(target_dir / "uas.xml", provisional=180, ring_ms=2500, final=486)
    target = await asyncio.create_subprocess_exec(
        *uas_cmd(sc, local_port=target_port, media_port=target_media, timeout_s=30),
        cwd=str(target_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    room = await connect(stack.server.ws_url, token("web", room_name))
    heard = short_dir / "heard.wav"
    rtp_start, _ = free_udp_range(40)
    phone = None
    try:
        trunk = await lk.sip.create_inbound_trunk(
            api.CreateSIPInboundTrunkRequest(
                trunk=api.SIPInboundTrunkInfo(
                    name="in", numbers=[number], allowed_addresses=["127.0.0.1"]
                )
            )
        )
        await lk.sip.create_dispatch_rule(
            api.CreateSIPDispatchRuleRequest(
                dispatch_rule=api.SIPDispatchRuleInfo(
                    trunk_ids=[trunk.sip_trunk_id],
                    rule=api.SIPDispatchRule(
                        dispatch_rule_direct=api.SIPDispatchRuleDirect(room_name=room_name)
                    ),
                )
            )
        )
        async with tone_publisher(room, 440.0):
            phone = await PhoneProcess.start(
                [
                    "--dest",
                    f"sip:{number}@127.0.0.1:{stack.ports.worker_sip(0)}",
                    "--port",
                    str(free_port()),
                    "--rtp-start",
                    str(rtp_start),
                    "--caller",
                    caller,
                    "--record",
                    str(heard),
                    "--duration",
                    "10",
                    "--max-wait",
                    "40",
                    "--workdir",
                    str(short_dir),
                ]  # fmt: skip
            )
            await wait_for(lambda: subscribed_audio(room, ident) is not None, 20, "caller in room")
            await asyncio.sleep(2.5)  # the caller hears the room first
            with pytest.raises(api.SipCallError) as err:
                await lk.sip.transfer_sip_participant(
                    api.TransferSIPParticipantRequest(
                        participant_identity=ident,
                        room_name=room_name,
                        transfer_to=f"sip:desk@127.0.0.1:{target_port}",
                        play_dialtone=True,
                    )
                )
            print("transfer:", err.value.code, err.value.sip_status_code)
            assert err.value.code == "resource_exhausted" and err.value.sip_status_code == 486
            events = await phone.wait(40)  # the call went on; the phone hangs up at 10 s
    finally:
        if phone is not None:
            phone.kill()
        if target.returncode is None:
            target.kill()
        await target.wait()
        await room.disconnect()
        await lk.aclose()
    gone = disconnected(events)
    assert gone is not None and gone["local_hangup"], events  # not ended by the transfer
    pcm, rate = read_wav(heard)
    labels = classify(pcm, rate)
    print("caller heard (0.5 s windows):", " ".join(labels))
    assert runs(labels)[:4] == ["440", "425", "quiet", "440"], labels
    assert labels.count("425") >= 1 and labels.count("quiet") >= 2, labels

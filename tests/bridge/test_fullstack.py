"""The SIP acceptance tests against the whole appliance.

One ``roomline serve`` per module with two supervised bridge workers (pjsua2), trunks and a callee
dispatch rule from the config (roomline_harness/sip/fullstack.py). Callers are real SIP peers (SIPp, the
pjsua2 test phone), room peers are the real LiveKit Python SDK, the control plane is the real
``livekit-api``. Audio is checked by content (FFT, SNR). Every test dials its own number, so it
has its own room (``call_<number>``); all use worker A except the ``kill -9`` test (worker B).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from bridge.worker.tick import TickStats
from roomline_harness.aio import wait_for
from roomline_harness.audio import last_seconds, read_wav
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import API_KEY, API_SECRET, Server, start_server, stop_server
from roomline_harness.sip.fullstack import (
    PBX_PASSWORD,
    Workers,
    auth_scenario,
    band_level_db,
    band_share,
    check_tone,
    metrics,
    phone_args,
    room_for,
    session_refresh_scenario,
    sip_section,
    worker_metric,
    worker_pid,
)
from roomline_harness.sip.pcap import write_tone_pcap
from roomline_harness.sip.peers import PhoneProcess
from roomline_harness.sip.sipp import SIPP, run_sipp, sipp_cmd, uac_scenario

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    pytest.mark.timeout(120),
]

RATE = 48000
#: Phone → room over SIP, Opus and WebRTC: ~36–40 dB measured on an idle host.
ROOM_SNR = 25.0
#: What the pjsua2 phone records passes two pjsua processes plus the SFU on a shared 2-vCPU host;
#: scheduling stalls of other processes cost single 0.5 s windows a lot, so the median window is
#: checked (clean windows measure ~37 dB; every figure is printed).
PHONE_SNR = 20.0

NUMBERS = {
    "tone": "+15550101",
    "hear": "+15550102",
    "pair": "+15550103",
    "dtmf": "+15550104",
    "bye": "+15550105",
    "remove": "+15550106",
    "hold": "+15550107",
    "refresh": "+15550108",
    "cap": "+15550109",
    "kill": "+15550110",
    "bad": "+15550111",
    "headers": "+15550112",
    "speaker": "+15550113",
    "wideband": "+15550114",
}


@dataclass
class Stack:
    server: Server
    workers: Workers

    @property
    def a(self) -> int:
        return self.workers.sip_ports[0]

    @property
    def b(self) -> int:
        return self.workers.sip_ports[1]

    def target(self, port: int | None = None) -> str:
        return f"127.0.0.1:{port or self.a}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("sipfs")
    for attempt in range(3):  # free ports are picked independently and may collide
        section, workers = sip_section(list(NUMBERS.values()), workers=2)
        try:
            server = start_server(tmp, sip=section, logging={"level": "info", "format": "json"})
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        for port in workers.sip_ports:  # workers report their cap once pjsua is up
            _wait_sync(lambda p=port: worker_metric(server, "roomline_sip_worker_max_calls", p) > 0)
        yield Stack(server, workers)
    finally:
        stop_server(server)


def _wait_sync(pred, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    import time

    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "appliance workers not ready"
        time.sleep(0.1)


@contextlib.asynccontextmanager
async def sdk(stack: Stack, identity: str, number: str) -> AsyncIterator[rtc.Room]:
    room = await connect(stack.server.ws_url, token(identity, room_for(number)))
    try:
        yield room
    finally:
        await room.disconnect()


async def participants(stack: Stack, room: str) -> list[str]:
    async with api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET) as lk:
        try:
            resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        except api.TwirpError as exc:
            if exc.code == "not_found":
                return []
            raise
    return [p.identity for p in resp.participants]


def sipp(
    stack: Stack, scenario: Path, number: str, port: int | None = None, **kw: Any
) -> list[str]:
    return sipp_cmd(
        scenario,
        stack.target(port),
        service=number,
        # SIPp binds UDP: probe UDP ports (its RTP uses media_port and the next few)
        local_port=free_port(tcp=False),
        media_port=free_udp_range(8)[0],
        **kw,  # type: ignore[arg-type]
    )


def on_left(room: rtc.Room, identity: str, event: asyncio.Event) -> None:
    """Set ``event`` when ``identity`` disconnects from ``room``."""

    def handler(p: rtc.RemoteParticipant) -> None:
        if p.identity == identity:
            event.set()

    room.on("participant_disconnected", handler)


async def caller_track(room: rtc.Room, identity: str, timeout: float = 15.0) -> rtc.Track:
    await wait_for(lambda: subscribed_audio(room, identity) is not None, timeout, identity)
    track = subscribed_audio(room, identity)
    assert track is not None
    return track


def phone_pcm(path: Path, start: float, end: float) -> tuple[np.ndarray, int]:
    pcm, rate = read_wav(path)
    return pcm[int(start * rate) : int(end * rate)], rate


async def wait_idle(stack: Stack, port: int) -> None:
    """No call left on a worker (a previous test's call must not count against the cap)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 15
    while worker_metric(stack.server, "roomline_sip_active_calls", port) != 0:
        assert loop.time() < end, "worker still has calls"
        await asyncio.sleep(0.2)


# --- 1. phone → room: tone, identity, kind, attributes -----------------------------------------
async def test_sipp_tone_reaches_room_as_sip_participant(stack: Stack, short_dir: Path) -> None:
    number, caller = NUMBERS["tone"], "+15551230101"
    ident = f"sip_{caller}"
    write_tone_pcap(short_dir / "tone.pcap", 1000.0, 8.0)
    sc = uac_scenario(
        short_dir / "uac.xml", pcap=short_dir / "tone.pcap", play_ms=6000, caller=caller
    )
    async with sdk(stack, "web", number) as web:
        left: asyncio.Event = asyncio.Event()
        on_left(web, ident, left)
        call = asyncio.create_task(run_sipp(sipp(stack, sc, number), short_dir))
        track = await caller_track(web, ident)
        p = web.remote_participants[ident]
        await wait_for(lambda: p.attributes.get("sip.callStatus") == "active", 5, "active")
        assert p.name == f"Phone {caller}"
        assert p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
        a = dict(p.attributes)
        assert a["sip.phoneNumber"] == caller
        assert a["sip.trunkPhoneNumber"] == number
        assert a["sip.trunkID"] == "ST_local"
        assert a["sip.ruleID"] == "SDR_calls"
        assert a["sip.callID"].startswith("SCL_")
        assert a["sip.callIDFull"].startswith("1-") and a["sip.callIDFull"].endswith("@127.0.0.1")
        assert a["sip.callTag"].endswith("rl1")
        assert a["sip.hostname"] == "127.0.0.1"
        assert a["sip.h.x-test-id"] == "sipp-1"  # include_headers: SIP_X_HEADERS
        assert a["test_id"] == "sipp-1"  # headers_to_attributes
        pcm = await record(track, 2.0, skip=0.5)
        chk = check_tone(pcm, RATE, 1000.0)
        print(f"SIPp PCMU 1 kHz -> SDK: {chk}")
        assert abs(chk.freq - 1000.0) < 5
        assert chk.snr >= ROOM_SNR
        rc, out = await call
        assert rc == 0, out[-2000:]
        await asyncio.wait_for(left.wait(), 10)  # BYE from SIPp → the participant leaves
    assert await participants(stack, room_for(number)) == []


# --- 1a. the trunk's headers on the 200 OK, read off the wire by SIPp ---------------------------
async def test_answer_carries_trunk_headers(stack: Stack, short_dir: Path) -> None:
    number = NUMBERS["headers"]
    # SIPp fails the call unless each header is there with a matching value (leading blanks are
    # part of the value SIPp sees).
    sc = uac_scenario(
        short_dir / "uac.xml",
        play_ms=500,
        answer_headers={
            "X-Roomline-Trunk": r"^ *local$",  # trunk.headers
            "X-Called-Number": rf"^ *\{number}$",  # trunk.attributes_to_headers
        },
    )
    rc, out = await run_sipp(sipp(stack, sc, number, trace_dir=short_dir), short_dir)
    assert rc == 0, out[-2000:]
    answer = _answer_200(short_dir)
    assert "X-Roomline-Trunk: local" in answer
    assert f"X-Called-Number: {number}" in answer
    assert "X-Never-Sent" not in answer  # mapped attribute not set: no header


def _answer_200(trace_dir: Path) -> str:
    """The 200 OK to the INVITE from SIPp's message trace."""
    for path in trace_dir.glob("*_messages.log"):
        for msg in path.read_text(errors="replace").split("\n\n"):
            if "SIP/2.0 200" in msg and "CSeq: 1 INVITE" in msg:
                return msg
    raise AssertionError("no 200 OK to the INVITE in SIPp's trace")


# --- 1b. room → phone: the SDK's 440 Hz at the pjsua2 phone ------------------------------------
async def test_phone_hears_sdk_tone(stack: Stack, tmp_path: Path) -> None:
    number, caller = NUMBERS["hear"], "+15551230102"
    rec = tmp_path / "heard.wav"
    async with sdk(stack, "web", number) as web, tone_publisher(web, 440.0):
        phone = await PhoneProcess.start(
            phone_args(
                stack.a,
                number,
                tmp_path,
                caller,
                "--tone",
                "1000",
                "--record",
                str(rec),
                "--duration",
                "6",
            )
        )
        track = await caller_track(web, f"sip_{caller}")
        pcm = await record(track, 2.0, skip=0.5)
        events = await phone.wait(30)
    room_chk = check_tone(pcm, RATE, 1000.0)
    heard, rate = phone_pcm(rec, 2.0, 5.5)
    chk = check_tone(heard, rate, 440.0)
    print(f"phone 1 kHz -> SDK: {room_chk}\nSDK 440 Hz -> phone: {chk}")
    assert abs(room_chk.freq - 1000.0) < 5 and room_chk.snr >= ROOM_SNR
    assert abs(chk.freq - 440.0) < 5
    assert chk.median_window >= PHONE_SNR
    assert any(e["event"] == "disconnected" and e["local_hangup"] for e in events), events


# --- 2. two phones hear each other, not themselves ---------------------------------------------
async def test_two_phones_hear_each_other_not_themselves(stack: Stack, tmp_path: Path) -> None:
    number = NUMBERS["pair"]
    rec_a, rec_b = tmp_path / "a.wav", tmp_path / "b.wav"
    a = await PhoneProcess.start(
        phone_args(
            stack.a,
            number,
            tmp_path,
            "+15551230201",
            "--tone",
            "1000",
            "--record",
            str(rec_a),
            "--duration",
            "7",
        )
    )
    await asyncio.sleep(0.5)
    b = await PhoneProcess.start(
        phone_args(
            stack.a,
            number,
            tmp_path,
            "+15551230202",
            "--tone",
            "600",
            "--record",
            str(rec_b),
            "--duration",
            "6",
        )
    )
    ev_a, ev_b = await asyncio.gather(a.wait(30), b.wait(30))
    assert any(e["event"] == "disconnected" and e["local_hangup"] for e in ev_a), ev_a
    assert any(e["event"] == "disconnected" and e["local_hangup"] for e in ev_b), ev_b
    # Both are in the room from ~1 s (B answered) to ~6 s after A's answer.
    pcm_a, rate = phone_pcm(rec_a, 2.5, 5.5)
    pcm_b, _ = phone_pcm(rec_b, 2.0, 5.0)
    chk_a, chk_b = check_tone(pcm_a, rate, 600.0), check_tone(pcm_b, rate, 1000.0)
    self_a = band_level_db(pcm_a, rate, 1000.0, 600.0)
    self_b = band_level_db(pcm_b, rate, 600.0, 1000.0)
    print(
        f"A hears {chk_a}, own 1 kHz at {self_a:.1f} dB\nB hears {chk_b}, own 600 Hz at {self_b:.1f} dB"
    )
    assert abs(chk_a.freq - 600.0) < 5 and chk_a.median_window >= PHONE_SNR
    assert abs(chk_b.freq - 1000.0) < 5 and chk_b.median_window >= PHONE_SNR
    assert self_a < -30 and self_b < -30
    # The worker's loop ran once per conference tick, woken by the clock after the last port
    # (bridge/worker/tick.py); the timer stood in only for the odd late wake-up. Before the
    # gate, about a fifth of a busy worker's services were extra ones run by the timer.
    clock, timer = await _loop_wakes(stack.server)
    print(f"worker loop: {clock} services woken by the clock, {timer} by the timer")
    assert clock >= 150  # two calls, ~5 s with ports open: ~250 ticks
    assert timer <= clock // 10


async def _loop_wakes(server: Server) -> tuple[int, int]:
    """The last "worker loop so far" counters a worker logged (at a call's end)."""
    found: list[tuple[int, int]] = []
    for _ in range(50):
        found = [
            (st.clock, st.timer)
            for e in server.log_events()
            if (st := TickStats.parse(str(e.get("event", "")))) is not None
        ]
        if len(found) >= 2:  # both calls ended
            break
        await asyncio.sleep(0.1)
    assert found, "no worker logged its loop counters"
    return max(found)


# --- 3. DTMF both ways -------------------------------------------------------------------------
async def test_dtmf_phone_to_sdk_and_sdk_to_phone(stack: Stack, tmp_path: Path) -> None:
    number, caller = NUMBERS["dtmf"], "+15551230301"
    ident = f"sip_{caller}"
    got: list[tuple[int, str, str]] = []
    async with sdk(stack, "web", number) as web:
        web.on(
            "sip_dtmf_received",
            lambda d: got.append(
                (d.code, d.digit, d.participant.identity if d.participant else "")
            ),
        )
        phone = await PhoneProcess.start(
            phone_args(
                stack.a,
                number,
                tmp_path,
                caller,
                # pjmedia emits RFC 4733 from the stream's encoder path, which only runs while
                # something transmits into the call: without a tone the phone sends nothing.
                "--tone",
                "1000",
                "--dtmf",
                "1234*#",
                "--dtmf-at",
                "1.0",
                "--duration",
                "6",
            )
        )
        await caller_track(web, ident)
        p = web.remote_participants[ident]
        await wait_for(lambda: p.attributes.get("sip.callStatus") == "active", 5, "active")
        await wait_for(lambda: len(got) >= 6, 10, "six DTMF digits at the SDK")
        for code, digit in ((9, "9"), (0, "0"), (10, "*"), (11, "#")):
            await web.local_participant.publish_dtmf(code=code, digit=digit)
            await asyncio.sleep(0.3)
        events = await phone.wait(30)
    print(f"SDK got {got}; phone got {[e for e in events if e['event'] == 'dtmf']}")
    assert got == [
        (1, "1", ident),
        (2, "2", ident),
        (3, "3", ident),
        (4, "4", ident),
        (10, "*", ident),
        (11, "#", ident),
    ]
    received = [e for e in events if e["event"] == "dtmf"]
    assert "".join(e["digit"] for e in received) == "90*#"
    # pjsua reports RFC 4733 events as method 0 (PJSUA_DTMF_METHOD_RFC2833)
    assert {e["method"] for e in received} == {0}


# --- 4. call control ---------------------------------------------------------------------------
async def test_bye_from_phone_removes_participant(stack: Stack, tmp_path: Path) -> None:
    number, caller = NUMBERS["bye"], "+15551230401"
    ident = f"sip_{caller}"
    async with sdk(stack, "web", number) as web:
        left: asyncio.Event = asyncio.Event()
        on_left(web, ident, left)
        phone = await PhoneProcess.start(
            phone_args(stack.a, number, tmp_path, caller, "--tone", "1000", "--duration", "3")
        )
        await caller_track(web, ident)
        assert ident in await participants(stack, room_for(number))
        events = await phone.wait(30)
        await asyncio.wait_for(left.wait(), 10)
    bye = next(e for e in events if e["event"] == "disconnected")
    assert bye["local_hangup"] and bye["code"] == 200, events
    assert await participants(stack, room_for(number)) == []


async def test_remove_participant_sends_bye(stack: Stack, tmp_path: Path) -> None:
    number, caller = NUMBERS["remove"], "+15551230501"
    ident = f"sip_{caller}"
    async with sdk(stack, "web", number) as web:
        phone = await PhoneProcess.start(
            phone_args(stack.a, number, tmp_path, caller, "--duration", "30", "--max-wait", "40")
        )
        await caller_track(web, ident)
        async with api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET) as lk:
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room=room_for(number), identity=ident)
            )
        events = await phone.wait(15)  # ends on the BYE, long before its own 30 s
        await wait_for(lambda: ident not in web.remote_participants, 10, "gone at the SDK")
    bye = next((e for e in events if e["event"] == "disconnected"), None)
    assert bye is not None and not bye["local_hangup"], events
    assert await participants(stack, room_for(number)) == []


async def test_hold_and_resume_keep_the_call(stack: Stack, tmp_path: Path) -> None:
    number, caller = NUMBERS["hold"], "+15551230601"
    ident = f"sip_{caller}"
    rec = tmp_path / "heard.wav"
    async with sdk(stack, "web", number) as web, tone_publisher(web, 440.0):
        left: asyncio.Event = asyncio.Event()
        on_left(web, ident, left)
        phone = await PhoneProcess.start(
            phone_args(
                stack.a, number, tmp_path, caller,
                "--tone", "1000", "--record", str(rec),
                "--hold-at", "1.5", "--resume-at", "3.0", "--duration", "7.5",
            )
        )  # fmt: skip
        track = await caller_track(web, ident)
        await asyncio.sleep(4.5)  # past hold and resume (answer + ~1 s)
        assert not left.is_set(), "hold/resume ended the call"
        pcm = await record(track, 1.5, skip=0.0)
        events = await phone.wait(30)
        await asyncio.wait_for(left.wait(), 10)
    kinds = [e["event"] for e in events]
    assert "hold" in kinds and "resume" in kinds, kinds
    bye = next(e for e in events if e["event"] == "disconnected")
    assert bye["local_hangup"], events  # the phone ended the call, not the bridge
    chk = check_tone(pcm, RATE, 1000.0)
    # The recording leaves out the hold (last_seconds): its last 3.3 s before the hang-up are
    # after the resume (at 3.0 s of a 7.5 s call).
    whole, rate = read_wav(rec)
    heard = last_seconds(whole, rate, 3.0, before_end=0.3)
    phone_chk = check_tone(heard, rate, 440.0)
    jbuf = next((e for e in events if e["event"] == "jbuf"), {})
    print(f"after resume: SDK hears {chk}; phone hears {phone_chk}; phone jitter buffer {jbuf}")
    assert abs(chk.freq - 1000.0) < 5 and chk.median_window >= ROOM_SNR
    assert abs(phone_chk.freq - 440.0) < 5 and phone_chk.median_window >= PHONE_SNR


async def test_session_timer_refresh_keeps_the_call(stack: Stack, short_dir: Path) -> None:
    number, caller = NUMBERS["refresh"], "+15551230701"
    ident = f"sip_{caller}"
    write_tone_pcap(short_dir / "tone.pcap", 1000.0, 9.0)
    sc = session_refresh_scenario(
        short_dir / "refresh.xml", short_dir / "tone.pcap", caller, before_ms=2000, after_ms=4000
    )
    async with sdk(stack, "web", number) as web:
        left: asyncio.Event = asyncio.Event()
        on_left(web, ident, left)
        call = asyncio.create_task(run_sipp(sipp(stack, sc, number), short_dir))
        track = await caller_track(web, ident)
        await asyncio.sleep(3.0)  # the re-INVITE goes out ~2 s after the ACK
        assert not left.is_set() and not call.done(), "the refresh ended the call"
        pcm = await record(track, 1.5, skip=0.0)
        rc, out = await call  # 200 to the re-INVITE and to the final BYE
        await asyncio.wait_for(left.wait(), 10)
    chk = check_tone(pcm, RATE, 1000.0)
    print(f"after the session refresh: SDK hears {chk}")
    assert rc == 0, out[-2000:]
    assert abs(chk.freq - 1000.0) < 5 and chk.median_window >= ROOM_SNR


# --- 5. rejections -----------------------------------------------------------------------------
def raw_invite_status(port: int, number: str) -> str:
    """Send one minimal INVITE over UDP and return the final response's status line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        local = sock.getsockname()[1]
        sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        sdp += "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        invite = (
            f"INVITE sip:{number}@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKraw{local}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:+15557770009@127.0.0.1:{local}>;tag=raw\r\n"
            f"To: <sip:{number}@127.0.0.1:{port}>\r\n"
            f"Call-ID: raw-{local}@127.0.0.1\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:+15557770009@127.0.0.1:{local}>\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        sock.sendto(invite.encode(), ("127.0.0.1", port))
        while True:
            data, _ = sock.recvfrom(65535)
            line = data.split(b"\r\n", 1)[0].decode()
            code = int(line.split()[1])
            if code >= 200:
                ack = invite.replace("INVITE sip:", "ACK sip:", 1).replace(
                    "CSeq: 1 INVITE", "CSeq: 1 ACK"
                )
                sock.sendto(
                    ack.split("Content-Type")[0].encode() + b"Content-Length: 0\r\n\r\n",
                    ("127.0.0.1", port),
                )
                return line


async def test_rejected_calls_get_status_and_no_participant(stack: Stack, short_dir: Path) -> None:
    before = metrics(stack.server)

    def rejected(status: int) -> float:
        key = ("roomline_sip_rejected_calls_total", f'{{status="{status}"}}')
        return metrics(stack.server).get(key, 0.0) - before.get(key, 0.0)

    # wrong digest password: 407 challenge, then 401
    wrong = auth_scenario(short_dir / "wrong.xml", "wrong-password")
    rc, out = await run_sipp(sipp(stack, wrong, "+15550200"), short_dir)
    assert rc == 0, out[-2000:]
    # disallowed source address (trunk only allows 10.0.0.1): no trunk → 404
    remote = uac_scenario(short_dir / "remote.xml", expect=404, caller="+15557770002")
    rc, out = await run_sipp(sipp(stack, remote, "+15550300"), short_dir)
    assert rc == 0, out[-2000:]
    # a trunk matches but no dispatch rule does: 404
    norule = uac_scenario(short_dir / "norule.xml", expect=404, caller="+15557770003")
    rc, out = await run_sipp(sipp(stack, norule, "+15550400"), short_dir)
    assert rc == 0, out[-2000:]
    # The final response carries LiveKit's reason phrase (a bare UDP INVITE, read by hand).
    status_line = await asyncio.get_running_loop().run_in_executor(
        None, raw_invite_status, stack.a, "+15550300"
    )
    assert status_line == "SIP/2.0 404 No trunk found", status_line
    for room in ("+15550200", "+15550300", "+15550400"):
        assert await participants(stack, room_for(room)) == []
    assert rejected(407) == 1 and rejected(401) == 1 and rejected(404) == 3
    # the right password gets through the same challenge (the 407 above was not a dead end)
    right = auth_scenario(short_dir / "right.xml", PBX_PASSWORD, hold_ms=2500)
    call = asyncio.create_task(run_sipp(sipp(stack, right, "+15550200"), short_dir))
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while "sip_+15557770001" not in await participants(stack, room_for("+15550200")):
        assert loop.time() < end, "authenticated caller never joined"
        await asyncio.sleep(0.2)
    rc, out = await call
    assert rc == 0, out[-2000:]


# --- 6. capacity and crashes -------------------------------------------------------------------
async def test_fifth_call_is_busy_and_four_keep_audio(stack: Stack, short_dir: Path) -> None:
    number = NUMBERS["cap"]
    await wait_idle(stack, stack.a)
    write_tone_pcap(short_dir / "tone.pcap", 1000.0, 14.0)
    four = uac_scenario(
        short_dir / "four.xml",
        pcap=short_dir / "tone.pcap",
        play_ms=12000,
        caller="+155500011[call_number]",
    )
    idents = [f"sip_+155500011{i}" for i in range(1, 5)]
    async with sdk(stack, "web", number) as web:
        calls = asyncio.create_task(
            run_sipp(sipp(stack, four, number, calls=4, concurrent=4, rate=20), short_dir)
        )
        try:
            tracks = [await caller_track(web, i, 20) for i in idents]
        except AssertionError:
            if calls.done():  # SIPp gave up: show why instead of a bare timeout
                rc, out = calls.result()
                raise AssertionError(f"SIPp ended early (rc {rc}): {out[-2000:]}") from None
            raise
        busy = uac_scenario(short_dir / "busy.xml", expect=486, caller="+15550009999")
        rc5, out5 = await run_sipp(sipp(stack, busy, number), short_dir)
        assert rc5 == 0, out5[-2000:]
        checks = [check_tone(await record(t, 1.0, skip=0.0), RATE, 1000.0) for t in tracks]
        rc, out = await calls
    for ident, chk in zip(idents, checks, strict=True):
        print(f"{ident}: {chk}")
        assert abs(chk.freq - 1000.0) < 5 and chk.median_window >= ROOM_SNR
    assert "sip_+15550009999" not in await participants(stack, room_for(number))
    assert rc == 0, out[-2000:]


async def test_kill9_worker_ends_only_its_calls(
    stack: Stack, tmp_path: Path, short_dir: Path
) -> None:
    number, caller = NUMBERS["kill"], "+15551230901"
    ident = f"sip_{caller}"
    pid = worker_pid(stack.server, stack.b)
    assert pid is not None
    restarts = worker_metric(stack.server, "roomline_sip_worker_restarts_total", stack.b)
    async with sdk(stack, "listener", number) as web, sdk(stack, "talker", number) as talker:
        async with tone_publisher(talker, 440.0):
            # The talker's audio reaches the listener before the phone joins: what is checked
            # after the kill is then that it keeps flowing, not a subscription still being set
            # up while the caller's track is added. (Both at once used to leave the second of
            # the two tracks silent for good, a subscriber-PC bundling bug fixed in
            # sfu/rtc/session.py and covered by tests/sfu/rtc/test_subscription_race.py.)
            before = await record(
                await caller_track(web, "talker"), 0.5, skip=0.0, sound_within=5.0
            )
            assert abs(check_tone(before, RATE, 440.0).freq - 440.0) < 5
            phone = await PhoneProcess.start(
                phone_args(
                    stack.b,
                    number,
                    tmp_path,
                    caller,
                    "--tone",
                    "1000",
                    "--duration",
                    "30",
                    "--max-wait",
                    "40",
                )
            )
            try:
                await caller_track(web, ident)
                os.kill(pid, signal.SIGKILL)
                # the channel drops with the process: the room loses the caller only
                await wait_for(lambda: ident not in web.remote_participants, 10, "caller gone")
                assert stack.server.alive()
                # 3 s, judged by the median 0.5 s window: the kill and the worker's restart load
                # the 2-core machine, and a transient stall must not count as a broken room.
                pcm = await record(await caller_track(web, "talker"), 3.0, skip=0.5)
            finally:
                phone.kill()
                await phone.wait(5)
        chk = check_tone(pcm, RATE, 440.0)
        print(f"SDK -> SDK after kill -9 of the worker: {chk}")
        assert abs(chk.freq - 440.0) < 5 and chk.median_window >= ROOM_SNR
        # the supervisor restarts the worker, and it takes a new call
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while not (
            worker_metric(stack.server, "roomline_sip_worker_restarts_total", stack.b) > restarts
            and worker_pid(stack.server, stack.b) not in (None, pid)
            and worker_metric(stack.server, "roomline_sip_worker_max_calls", stack.b) > 0
        ):
            assert loop.time() < end, "worker not restarted"
            await asyncio.sleep(0.2)
        await _good_call(stack, web, short_dir, number, stack.b, "+15551230902")


async def _good_call(
    stack: Stack, web: rtc.Room, short_dir: Path, number: str, port: int, caller: str
) -> None:
    """A SIPp 1 kHz call that the SDK in ``web`` hears."""
    write_tone_pcap(short_dir / "good.pcap", 1000.0, 6.0)
    sc = uac_scenario(
        short_dir / "good.xml", pcap=short_dir / "good.pcap", play_ms=4000, caller=caller
    )
    call = asyncio.create_task(run_sipp(sipp(stack, sc, number, port), short_dir))
    pcm = await record(await caller_track(web, f"sip_{caller}"), 1.5, skip=0.5)
    rc, out = await call
    chk = check_tone(pcm, RATE, 1000.0)
    print(f"good call on :{port}: {chk}")
    assert rc == 0, out[-2000:]
    assert abs(chk.freq - 1000.0) < 5 and chk.snr >= ROOM_SNR


# --- 7. bad input ------------------------------------------------------------------------------
async def test_malformed_sip_is_rejected_or_ignored(stack: Stack, short_dir: Path) -> None:
    number = NUMBERS["bad"]
    restarts = worker_metric(stack.server, "roomline_sip_worker_restarts_total", stack.a)
    pid = worker_pid(stack.server, stack.a)
    junk = [
        b"\x00\xff" * 300,
        b"INVITE\r\n\r\n",
        b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: nonsense\r\n\r\n",
        b"SIP/2.0 200 OK\r\nCSeq: banana\r\n\r\n",
        ("OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 99999\r\n\r\n" + "A" * 900).encode(),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for datagram in junk:
            s.sendto(datagram, ("127.0.0.1", stack.a))
        replies = []
        with contextlib.suppress(TimeoutError):
            while True:
                replies.append(s.recv(65536))
    # pjsip drops unparsable datagrams; whatever it does answer is a SIP error response
    for r in replies:
        assert r.startswith(b"SIP/2.0 4"), r[:80]
    with socket.create_connection(("127.0.0.1", stack.a), timeout=2) as t:  # SIP over TCP too
        t.sendall(b"\x16\x03\x01\x02\x00" + b"\xee" * 2000 + b"\r\n\r\n")
    bad = uac_scenario(short_dir / "bad.xml", expect=400, broken_sdp=True, caller="+15557770004")
    rc, out = await run_sipp(sipp(stack, bad, number), short_dir)
    assert rc == 0, out[-2000:]
    assert await participants(stack, room_for(number)) == []
    assert stack.server.alive() and worker_pid(stack.server, stack.a) == pid
    assert worker_metric(stack.server, "roomline_sip_worker_restarts_total", stack.a) == restarts
    async with sdk(stack, "web", number) as web:
        await _good_call(stack, web, short_dir, number, stack.a, "+15551231101")


# --- 5. the phone caller is an active speaker (RFC 6464 level from the worker) ----------------
async def test_phone_caller_is_an_active_speaker(stack: Stack, short_dir: Path) -> None:
    number, caller = NUMBERS["speaker"], "+15551230113"
    ident = f"sip_{caller}"
    write_tone_pcap(short_dir / "tone.pcap", 1000.0, 8.0)
    sc = uac_scenario(
        short_dir / "uac.xml", pcap=short_dir / "tone.pcap", play_ms=5000, caller=caller
    )
    async with sdk(stack, "web", number) as web:
        seen: list[list[str]] = []
        web.on("active_speakers_changed", lambda sp: seen.append([p.identity for p in sp]))
        call = asyncio.create_task(run_sipp(sipp(stack, sc, number), short_dir))
        await wait_for(lambda: any(ident in s for s in seen), 10, "phone caller speaking")
        rc, out = await call
        assert rc == 0, out[-2000:]
        await wait_for(lambda: bool(seen) and ident not in seen[-1], 10, "caller stopped")


# --- 6. wideband: G.722 both ways keeps the 4-8 kHz band ----------------------------------------
async def test_g722_caller_keeps_wideband_both_ways(stack: Stack, tmp_path: Path) -> None:
    number, caller = NUMBERS["wideband"], "+15551230114"
    rec = tmp_path / "heard.wav"
    async with sdk(stack, "web", number) as web, tone_publisher(web, 6000.0):
        phone = await PhoneProcess.start(
            phone_args(
                stack.a,
                number,
                tmp_path,
                caller,
                "--codec",
                "G722/16000",
                "--tone",
                "6000",
                "--record",
                str(rec),
                "--duration",
                "6",
            )  # fmt: skip
        )
        track = await caller_track(web, f"sip_{caller}")
        pcm = await record(track, 2.0, skip=0.5)
        await phone.wait(30)
    room_chk = check_tone(pcm, RATE, 6000.0)
    heard, rate = phone_pcm(rec, 2.0, 5.5)
    chk = check_tone(heard, rate, 6000.0)
    # energy above 4 kHz (FFT): the 6 kHz tone dominates what a narrowband path would cut
    high = band_share(pcm, RATE, 4000, 8000)
    print(f"G.722 phone 6 kHz -> SDK: {room_chk}, 4-8 kHz share {high:.3f}\n"
          f"SDK 6 kHz -> G.722 phone: {chk}")  # fmt: skip
    assert abs(room_chk.freq - 6000.0) < 5 and room_chk.snr >= ROOM_SNR and high > 0.9
    assert abs(chk.freq - 6000.0) < 5 and chk.median_window >= PHONE_SNR

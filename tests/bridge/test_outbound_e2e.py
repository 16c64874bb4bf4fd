"""Outbound calls and transfers against the whole appliance with real SIP peers on loopback.

One ``python -m appliance.cli serve`` per module (this tree, via PYTHONPATH) with two bridge
workers; the callee is SIPp in UAS mode (tests/sip/sipp_uas.py); the control plane is the real
``livekit-api``; the room side is the real LiveKit Python SDK (audio checked by FFT). Ports come
from 37000-37999.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api, rtc

from roomline_harness.aio import wait_for
from roomline_harness.lk import connect, record, subscribed_audio, token
from roomline_harness.outbound import Ports, pick_ports, start_appliance
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server
from roomline_harness.sip.fullstack import check_tone
from roomline_harness.sip.pcap import write_tone_pcap
from roomline_harness.sip.sipp import SIPP
from roomline_harness.sip.sipp_uas import uas_cmd, uas_scenario

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    pytest.mark.timeout(120),
]

RATE = 48000


@dataclass
class Stack:
    server: Server
    ports: Ports
    counter: int = 0

    def next_sipp(self) -> tuple[int, int]:
        self.counter += 1
        return self.ports.sipp(self.counter)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("outbound")
    server = None
    for attempt in range(3):
        ports = pick_ports()
        try:
            server = start_appliance(tmp, ports)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    assert server is not None
    try:
        yield Stack(server, ports)
    finally:
        stop_server(server)
        print("---- appliance log tail ----\n" + server.log_text()[-6000:])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rlob", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Callee:
    """A SIPp UAS process."""

    def __init__(self, stack: Stack, scenario: Path, cwd: Path) -> None:
        self.port, self.media = stack.next_sipp()
        self.cmd = uas_cmd(scenario, local_port=self.port, media_port=self.media)
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            cwd=str(self.cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        await asyncio.sleep(0.3)  # SIPp binds its port

    async def wait(self, timeout: float = 40) -> tuple[int, str]:
        assert self.proc is not None
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            out, _ = await self.proc.communicate()
        return self.proc.returncode or 0, out.decode(errors="replace")

    def messages(self) -> str:
        for p in self.cwd.glob("msgs.log"):
            return p.read_text(errors="replace")
        return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@contextlib.asynccontextmanager
async def callee(stack: Stack, scenario: Path, cwd: Path) -> AsyncIterator[Callee]:
    c = Callee(stack, scenario, cwd)
    await c.start()
    try:
        yield c
    finally:
        c.kill()


@contextlib.asynccontextmanager
async def lkapi(stack: Stack) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    try:
        yield client
    finally:
        await client.aclose()


async def make_trunk(lk: api.LiveKitAPI, c: Callee, **kw: Any) -> str:
    t = await lk.sip.create_outbound_trunk(
        api.CreateSIPOutboundTrunkRequest(
            trunk=api.SIPOutboundTrunkInfo(
                name="sipp",
                address=f"127.0.0.1:{c.port}",
                numbers=["+15550001000"],
                **kw,
            )
        )
    )
    return t.sip_trunk_id


class Watcher:
    """Records every ``sip.callStatus`` value the room sees for one identity."""

    def __init__(self, room: rtc.Room, identity: str) -> None:
        self.identity = identity
        self.statuses: list[str] = []
        self.left = asyncio.Event()
        self.disconnect_reason: Any = None
        room.on("participant_connected", self._joined)
        room.on("participant_attributes_changed", self._changed)
        room.on("participant_disconnected", self._left)
        self.room = room

    def _add(self, p: rtc.RemoteParticipant) -> None:
        s = p.attributes.get("sip.callStatus")
        if p.identity == self.identity and s and (not self.statuses or self.statuses[-1] != s):
            self.statuses.append(s)

    def _joined(self, p: rtc.RemoteParticipant) -> None:
        self._add(p)

    def _changed(self, changed: dict[str, str], p: rtc.Participant) -> None:
        if isinstance(p, rtc.RemoteParticipant):
            self._add(p)

    def _left(self, p: rtc.RemoteParticipant) -> None:
        if p.identity == self.identity:
            self.disconnect_reason = p.disconnect_reason
            self.left.set()

    def attrs(self) -> dict[str, str]:
        p = self.room.remote_participants.get(self.identity)
        return dict(p.attributes) if p else {}


@contextlib.asynccontextmanager
async def observer(stack: Stack, room_name: str, identity: str) -> AsyncIterator[Watcher]:
    room = await connect(stack.server.ws_url, token("observer", room_name))
    try:
        yield Watcher(room, identity)
    finally:
        await room.disconnect()


async def remove(stack: Stack, room: str, identity: str) -> None:
    async with lkapi(stack) as lk:
        with contextlib.suppress(api.TwirpError):
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room=room, identity=identity)
            )


# --- answer with a tone; ringing observed; attributes ---------------------------------------------
async def test_answer_tone_ringing_and_attributes(stack: Stack, short_dir: Path) -> None:
    write_tone_pcap(short_dir / "tone.pcap", 1000.0, 8.0)
    sc = uas_scenario(
        short_dir / "uas.xml",
        provisional=180,
        ring_ms=1500,
        pcap="tone.pcap",
        play_ms=200,
        answer_headers={"X-Callee-Info": "vip", "X-Other": "1"},
    )
    room, ident = "out_answer", "sip_+15557770001"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(
            lk,
            c,
            headers_to_attributes={"X-Callee-Info": "callee.info"},
            include_headers=api.SIPHeaderOptions.SIP_X_HEADERS,
        )
        async with observer(stack, room, ident) as w:
            t0 = time.monotonic()
            info = await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to="+15557770001",
                    room_name=room,
                    participant_name="Callee",
                    wait_until_answered=True,
                )
            )
            print(f"answered after {time.monotonic() - t0:.2f} s")
            assert info.participant_identity == ident and info.room_name == room
            assert info.sip_call_id.startswith("SCL_") and info.participant_id.startswith("PA_")
            await wait_for(lambda: "active" in w.statuses, 10, "active")
            assert w.statuses[:3] == ["dialing", "ringing", "active"], w.statuses
            a = w.attrs()
            assert a["sip.callID"] == info.sip_call_id
            assert a["sip.trunkID"] == trunk_id
            assert a["sip.phoneNumber"] == "+15557770001"
            assert a["sip.trunkPhoneNumber"] == "+15550001000"
            assert a["sip.hostname"] == f"127.0.0.1:{c.port}"
            assert a.get("sip.callIDFull"), a
            assert a.get("callee.info") == "vip", a  # headers_to_attributes from the 200 OK
            assert a.get("sip.h.x-other") == "1", a  # include_headers: SIP_X_HEADERS
            assert a.get("sip.callTag", "").endswith("rluas1"), a  # the 200 OK's To-tag
            p = w.room.remote_participants[ident]
            assert p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
            assert p.name == "Callee"
            await wait_for(lambda: subscribed_audio(w.room, ident) is not None, 10, "track")
            track = subscribed_audio(w.room, ident)
            assert track is not None
            pcm = await asyncio.wait_for(record(track, 2.0, skip=0.5), 20)
            chk = check_tone(pcm, RATE, 1000.0)
            print(f"callee PCMU 1 kHz -> SDK: {chk}")
            assert abs(chk.freq - 1000.0) < 5 and chk.snr >= 20
            await remove(stack, room, ident)  # roomline sends BYE; SIPp answers 200
            rc, out = await c.wait(20)
            assert rc == 0, out[-3000:]
            assert "INVITE sip:+15557770001@127.0.0.1" in c.messages()


# --- final non-2xx: exact Twirp codes and sip_status_code -----------------------------------------
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (486, "resource_exhausted"),
        (603, "permission_denied"),
        (404, "not_found"),
        (480, "resource_exhausted"),
        (500, "failed_precondition"),
    ],
)
async def test_rejected_call_maps_status(
    stack: Stack, short_dir: Path, status: int, code: str
) -> None:
    sc = uas_scenario(short_dir / "uas.xml", provisional=180, ring_ms=300, final=status)
    room, ident = f"out_rej_{status}", f"sip_+1555777{status}"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c)
        async with observer(stack, room, ident) as w:
            with pytest.raises(api.SipCallError) as exc:
                await lk.sip.create_sip_participant(
                    api.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk_id,
                        sip_call_to=f"+1555777{status}",
                        room_name=room,
                        wait_until_answered=True,
                    )
                )
            err = exc.value
            print(f"{status} -> {err.code} ({err.status}) {err.sip_status_code} {err.sip_status}")
            assert err.code == code
            assert err.sip_status_code == status
            await asyncio.wait_for(w.left.wait(), 10)
            expected = (
                rtc.DisconnectReason.USER_REJECTED
                if status in (486, 603)
                else rtc.DisconnectReason.SIP_TRUNK_FAILURE
                if status >= 500
                else rtc.DisconnectReason.USER_UNAVAILABLE
            )
            assert w.disconnect_reason == expected
            assert "hangup" not in w.statuses
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]


async def test_rejected_without_wait_leaves_room(stack: Stack, short_dir: Path) -> None:
    """Without wait_until_answered the RPC returns at once; the busy callee then leaves."""
    sc = uas_scenario(short_dir / "uas.xml", provisional=180, ring_ms=1000, final=486)
    room, ident = "out_nowait", "agent-callee"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c)
        async with observer(stack, room, ident) as w:
            t0 = time.monotonic()
            info = await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to="+15557770002",
                    room_name=room,
                    participant_identity=ident,
                    hide_phone_number=True,
                )
            )
            assert time.monotonic() - t0 < 1.0
            assert info.participant_identity == ident
            await wait_for(lambda: bool(w.statuses), 5, "joined")
            assert w.statuses[0] == "dialing"
            a = w.attrs()
            assert "sip.phoneNumber" not in a and "sip.trunkPhoneNumber" not in a
            await asyncio.wait_for(w.left.wait(), 10)
            assert w.disconnect_reason == rtc.DisconnectReason.USER_REJECTED
            assert "ringing" in w.statuses and "hangup" not in w.statuses
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]


async def test_no_answer_is_canceled(stack: Stack, short_dir: Path) -> None:
    sc = uas_scenario(short_dir / "uas.xml", provisional=180, no_answer=True)
    room, ident = "out_noanswer", "sip_+15557770003"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c)
        async with observer(stack, room, ident) as w:
            t0 = time.monotonic()
            with pytest.raises(api.TwirpError) as exc:
                await lk.sip.create_sip_participant(
                    api.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk_id,
                        sip_call_to="+15557770003",
                        room_name=room,
                        wait_until_answered=True,
                        ringing_timeout=Duration(seconds=3),
                    )
                )
            took = time.monotonic() - t0
            print(f"no answer: {exc.value.code} after {took:.2f} s")
            assert exc.value.code == "canceled" and exc.value.status == 408
            assert "sip_status_code" not in exc.value.metadata
            assert 2.9 <= took < 6
            await asyncio.wait_for(w.left.wait(), 10)
            assert w.disconnect_reason == rtc.DisconnectReason.USER_UNAVAILABLE
        rc, out = await c.wait(15)  # SIPp required the CANCEL
        assert rc == 0, out[-3000:]
        assert "CANCEL sip:" in c.messages()


async def test_digest_challenge_answered(stack: Stack, short_dir: Path) -> None:
    sc = uas_scenario(
        short_dir / "uas.xml", challenge=("alice", "s3cret-pw"), provisional=180, play_ms=200
    )
    room, ident = "out_auth", "sip_+15557770004"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c, auth_username="alice", auth_password="s3cret-pw")
        info = await lk.sip.create_sip_participant(
            api.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id,
                sip_call_to="+15557770004",
                room_name=room,
                wait_until_answered=True,
                headers={"X-Campaign": "spring"},
                display_name="Roomline Test",
            )
        )
        assert info.participant_identity == ident
        await remove(stack, room, ident)
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]
        msgs = c.messages()
        assert "Authorization: Digest" in msgs and 'username="alice"' in msgs
        assert "X-Campaign: spring" in msgs
        assert 'From: "Roomline Test" <sip:+15550001000@' in msgs
        assert "s3cret-pw" not in stack.server.log_text()


async def test_early_media_reaches_room(stack: Stack, short_dir: Path) -> None:
    write_tone_pcap(short_dir / "early.pcap", 700.0, 4.0)
    sc = uas_scenario(
        short_dir / "uas.xml", provisional=183, early_pcap="early.pcap", early_ms=3500, play_ms=200
    )
    room, ident = "out_early", "sip_+15557770005"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c)
        async with observer(stack, room, ident) as w:
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id, sip_call_to="+15557770005", room_name=room
                )
            )
            await wait_for(lambda: subscribed_audio(w.room, ident) is not None, 10, "track")
            track = subscribed_audio(w.room, ident)
            assert track is not None
            await wait_for(lambda: "ringing" in w.statuses, 5, "ringing")
            pcm = await asyncio.wait_for(record(track, 1.5, skip=0.3), 20)
            assert w.statuses[-1] == "ringing", w.statuses  # still before the answer
            chk = check_tone(pcm, RATE, 700.0)
            print(f"early media 700 Hz -> SDK: {chk}")
            assert abs(chk.freq - 700.0) < 5 and chk.snr >= 15
            await wait_for(lambda: "active" in w.statuses, 10, "active")
            await remove(stack, room, ident)
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]


# --- initial DTMF after the answer (RFC 4733, w = 0.5 s) ------------------------------------------
class RtpSink(asyncio.DatagramProtocol):
    """Receives roomline's RTP and decodes RFC 4733 events (payload type 101)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self._seen: set[int] = set()
        self.packets = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets += 1
        if len(data) < 16 or data[1] & 0x7F != 101:
            return
        ts = int.from_bytes(data[4:8], "big")
        if ts in self._seen:
            return
        self._seen.add(ts)
        self.events.append(("0123456789*#ABCD"[data[12]], time.monotonic()))


async def test_initial_dtmf_in_order(stack: Stack, short_dir: Path) -> None:
    rtp_port = stack.ports.base + 199
    sc = uas_scenario(short_dir / "uas.xml", provisional=180, ring_ms=200, sdp_port=rtp_port)
    room, ident = "out_dtmf", "sip_+15557770006"
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(
        RtpSink, local_addr=("127.0.0.1", rtp_port)
    )
    try:
        async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
            trunk_id = await make_trunk(lk, c)
            async with observer(stack, room, ident) as w:
                t0 = time.monotonic()
                await lk.sip.create_sip_participant(
                    api.CreateSIPParticipantRequest(
                        sip_trunk_id=trunk_id,
                        sip_call_to="+15557770006",
                        room_name=room,
                        dtmf="12w3#",
                        wait_until_answered=True,
                    )
                )
                took = time.monotonic() - t0
                digits = "".join(d for d, _ in sink.events)
                print(f"DTMF received {digits!r}; RPC took {took:.2f} s; statuses {w.statuses}")
                assert digits == "123#"
                gap = sink.events[2][1] - sink.events[1][1]
                assert gap >= 0.5, gap  # the 'w'
                await wait_for(lambda: "active" in w.statuses, 5, "active")
                assert w.statuses[-2:] == ["automation", "active"], w.statuses
                await remove(stack, room, ident)
            rc, out = await c.wait(15)
            assert rc == 0, out[-3000:]
    finally:
        transport.close()


# --- cold transfer (REFER) ------------------------------------------------------------------------
async def _answered_call(lk: api.LiveKitAPI, c: Callee, room: str, number: str) -> None:
    trunk_id = await make_trunk(lk, c)
    await lk.sip.create_sip_participant(
        api.CreateSIPParticipantRequest(
            sip_trunk_id=trunk_id, sip_call_to=number, room_name=room, wait_until_answered=True
        )
    )


async def test_transfer_accepted(stack: Stack, short_dir: Path) -> None:
    sc = uas_scenario(
        short_dir / "uas.xml",
        provisional=180,
        ring_ms=200,
        refer={"status": 202, "notify": [100, 200]},
    )
    room, ident = "out_xfer_ok", "sip_+15557770007"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        async with observer(stack, room, ident) as w:
            await _answered_call(lk, c, room, "+15557770007")
            await wait_for(lambda: "active" in w.statuses, 5, "active")
            t0 = time.monotonic()
            await lk.sip.transfer_sip_participant(
                api.TransferSIPParticipantRequest(
                    participant_identity=ident,
                    room_name=room,
                    transfer_to="sip:+15550009999@127.0.0.1",
                    headers={"X-Transfer-Reason": "sales"},
                    play_dialtone=True,
                )
            )
            print(f"transfer ok after {time.monotonic() - t0:.2f} s")
            await asyncio.wait_for(w.left.wait(), 10)
            assert w.statuses[-1] == "hangup", w.statuses
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]
        msgs = c.messages()
        assert "Refer-To: <sip:+15550009999@127.0.0.1>" in msgs
        assert "X-Transfer-Reason: sales" in msgs


@pytest.mark.parametrize(
    ("refer", "status", "code"),
    [
        ({"status": 202, "notify": [100, 486]}, 486, "resource_exhausted"),
        ({"status": 405}, 405, "invalid_argument"),
    ],
)
async def test_transfer_failed_call_goes_on(
    stack: Stack, short_dir: Path, refer: dict[str, Any], status: int, code: str
) -> None:
    write_tone_pcap(short_dir / "tone.pcap", 1000.0, 12.0)
    sc = uas_scenario(
        short_dir / "uas.xml", provisional=180, ring_ms=200, refer=refer, pcap="tone.pcap"
    )
    number = f"+155577710{status}"
    room, ident = f"out_xfer_{status}", f"sip_{number}"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        async with observer(stack, room, ident) as w:
            await _answered_call(lk, c, room, number)
            with pytest.raises(api.SipCallError) as exc:
                await lk.sip.transfer_sip_participant(
                    api.TransferSIPParticipantRequest(
                        participant_identity=ident, room_name=room, transfer_to="tel:+15550009999"
                    )
                )
            err = exc.value
            print(f"transfer {refer} -> {err.code} {err.sip_status_code} {err.sip_status}")
            assert err.code == code and err.sip_status_code == status
            # The call goes on: still in the room, still active, audio still flowing.
            await asyncio.sleep(1.0)
            assert not w.left.is_set() and w.statuses[-1] == "active", w.statuses
            track = subscribed_audio(w.room, ident)
            assert track is not None
            pcm = await asyncio.wait_for(record(track, 1.0, skip=0.2), 20)
            assert abs(check_tone(pcm, RATE, 1000.0).freq - 1000.0) < 5
            await remove(stack, room, ident)
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]
        assert "Refer-To: tel:+15550009999" in c.messages()


# --- transfer of an inbound caller (the agent use case) -------------------------------------------
async def test_transfer_inbound_caller(stack: Stack, short_dir: Path) -> None:
    from roomline_harness.sip.sipp_uas import uac_refer_scenario

    caller, number, room = "+15550007777", "+15550008888", "in_xfer"
    ident = f"sip_{caller}"
    sc = uac_refer_scenario(short_dir / "uac.xml", caller=caller)
    async with lkapi(stack) as lk:
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
                        dispatch_rule_direct=api.SIPDispatchRuleDirect(room_name=room)
                    ),
                )
            )
        )
        port, media = stack.next_sipp()
        from roomline_harness.sip.sipp import SIPP

        assert SIPP is not None
        cmd = [
            SIPP, "-sf", str(sc), f"127.0.0.1:{stack.ports.worker_sip(0)}", "-s", number,
            "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media),
            "-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error",
            "-trace_msg", "-message_file", "msgs.log",
        ]  # fmt: skip
        async with observer(stack, room, ident) as w:
            proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=str(short_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            try:
                await wait_for(lambda: "active" in w.statuses, 15, "inbound caller active")
                await lk.sip.transfer_sip_participant(
                    api.TransferSIPParticipantRequest(
                        participant_identity=ident,
                        room_name=room,
                        transfer_to="sip:reception@127.0.0.1:5999",
                    )
                )
                await asyncio.wait_for(w.left.wait(), 10)
                out, _ = await asyncio.wait_for(proc.communicate(), 20)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
            assert w.statuses[-1] == "hangup", w.statuses
        msgs = (short_dir / "msgs.log").read_text(errors="replace")
        assert "Refer-To: <sip:reception@127.0.0.1:5999>" in msgs


# --- from an agent job: place a call, transfer it ---------------------------------------------------
def _agent(room: rtc.Room) -> rtc.RemoteParticipant | None:
    for p in room.remote_participants.values():
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return p
    return None


async def test_agent_places_call_and_transfers(stack: Stack, short_dir: Path) -> None:
    sc = uas_scenario(
        short_dir / "uas.xml", provisional=180, ring_ms=200, refer={"status": 202, "notify": [200]}
    )
    room, number = "out_agent", "+15557770021"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c)
        async with observer(stack, room, f"sip_{number}") as w:
            meta = {"trunk": trunk_id, "to": number, "transfer_to": "sip:desk@127.0.0.1"}
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name="outbound_test", room=room, metadata=json.dumps(meta)
                )
            )
            await wait_for(lambda: _agent(w.room) is not None, 20, "agent joins")
            agent = _agent(w.room)
            assert agent is not None
            await wait_for(lambda: "test.call" in agent.attributes, 20, "agent's call")
            assert agent.attributes["test.call"] == f"ok:sip_{number}"
            await wait_for(lambda: "test.transfer" in agent.attributes, 20, "agent's transfer")
            assert agent.attributes["test.transfer"] == "ok"
            await asyncio.wait_for(w.left.wait(), 10)
            assert w.statuses[-1] == "hangup", w.statuses
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]


async def test_agent_call_rejected(stack: Stack, short_dir: Path) -> None:
    sc = uas_scenario(short_dir / "uas.xml", provisional=None, final=603)
    room, number = "out_agent_rej", "+15557770022"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c)
        async with observer(stack, room, f"sip_{number}") as w:
            meta = {"trunk": trunk_id, "to": number}
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name="outbound_test", room=room, metadata=json.dumps(meta)
                )
            )
            await wait_for(lambda: _agent(w.room) is not None, 20, "agent joins")
            agent = _agent(w.room)
            assert agent is not None
            await wait_for(lambda: "test.call" in agent.attributes, 20, "agent's call")
            assert agent.attributes["test.call"] == "err:permission_denied:603"
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]


async def test_dialtone_while_ringing(stack: Stack, short_dir: Path) -> None:
    """play_dialtone: the room hears the 425 Hz ringing tone until the callee answers."""
    sc = uas_scenario(short_dir / "uas.xml", provisional=180, ring_ms=4000)
    room, ident = "out_dialtone", "sip_+15557770008"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c)
        async with observer(stack, room, ident) as w:
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to="+15557770008",
                    room_name=room,
                    play_dialtone=True,
                )
            )
            await wait_for(lambda: subscribed_audio(w.room, ident) is not None, 10, "track")
            track = subscribed_audio(w.room, ident)
            assert track is not None
            pcm = await asyncio.wait_for(
                record(track, 0.6, skip=0.1), 20
            )  # inside the tone's first 1 s burst
            assert w.statuses[-1] in ("dialing", "ringing"), w.statuses
            chk = check_tone(pcm, RATE, 425.0)
            print(f"dial tone -> SDK: {chk}")
            assert abs(chk.freq - 425.0) < 5 and chk.snr >= 15
            await wait_for(lambda: "active" in w.statuses, 10, "active")
            await remove(stack, room, ident)
        rc, out = await c.wait(15)
        assert rc == 0, out[-3000:]


async def test_max_call_duration_ends_call(stack: Stack, short_dir: Path) -> None:
    sc = uas_scenario(short_dir / "uas.xml", provisional=None)
    room, ident = "out_maxdur", "sip_+15557770009"
    async with callee(stack, sc, short_dir) as c, lkapi(stack) as lk:
        trunk_id = await make_trunk(lk, c)
        async with observer(stack, room, ident) as w:
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to="+15557770009",
                    room_name=room,
                    wait_until_answered=True,
                    max_call_duration=Duration(seconds=2),
                )
            )
            t0 = time.monotonic()
            await asyncio.wait_for(w.left.wait(), 10)
            took = time.monotonic() - t0
            print(f"max_call_duration 2 s: ended after {took:.2f} s")
            assert 1.5 <= took < 4.0
            assert w.statuses[-1] == "hangup", w.statuses
        rc, out = await c.wait(15)  # SIPp got roomline's BYE
        assert rc == 0, out[-3000:]

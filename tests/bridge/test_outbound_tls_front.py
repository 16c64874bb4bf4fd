"""Outbound calls over a TLS trunk, through the Kamailio front.

The appliance runs in front mode with TLS (a self-signed server certificate made here with
openssl); the worker sends the INVITE to the front over UDP and the front opens a TLS client
connection to the trunk, verifying the carrier's certificate against ``sip.outbound_tls_ca_file``.
The callee is the pjsua2 test phone listening on TLS with its own self-signed certificate (which,
given as the CA file, is the one certificate the front trusts).

* trusted callee (TLS + SRTP required, as carriers pair them): answered, the INVITE arrived over TLS from the front (top Via ``SIP/2.0/TLS``
  with the front's TLS port), audio both ways by FFT (1 kHz callee → room, 440 Hz room → callee),
  and the callee's BYE (back over TLS through the front) ends the call: the participant leaves.
* a callee with a certificate the CA file does not cover: the handshake fails, the RPC fails with
  a SIP error, and the phone never sees an INVITE (no fallback to another transport).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api

from roomline_harness.aio import wait_for
from roomline_harness.audio import read_wav
from roomline_harness.front_appliance import HAVE_KAMAILIO
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.outbound import Ports, pick_ports, start_appliance
from roomline_harness.server import API_KEY, API_SECRET, Server, stop_server
from roomline_harness.sip.fullstack import check_tone
from roomline_harness.sip.peers import PhoneProcess, disconnected

HAVE_TLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so").exists()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_KAMAILIO, reason="kamailio not installed"),
    pytest.mark.skipif(not HAVE_TLS_MODULE, reason="kamailio-tls-modules not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
    pytest.mark.timeout(120),
]

RATE = 48000


@dataclass
class Stack:
    server: Server
    ports: Ports
    certs: Path


def _self_signed(d: Path, name: str, cn: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("outtls")
    certs = Path(tempfile.mkdtemp(prefix="rltls", dir="/tmp"))
    front_cert, front_key = _self_signed(certs, "front", "front.roomline.test")
    callee_cert, _ = _self_signed(certs, "callee", "callee.roomline.test")
    _self_signed(certs, "stranger", "stranger.roomline.test")
    ports = pick_ports()
    sip = {
        "tls_port": ports.front_tls,
        "tls_cert_file": str(front_cert),
        "tls_key_file": str(front_key),
        # The callee's self-signed certificate is the one CA the front trusts.
        "outbound_tls_ca_file": str(callee_cert),
    }
    server = start_appliance(tmp, ports, front=True, sip_extra=sip)
    try:
        yield Stack(server, ports, certs)
    finally:
        stop_server(server)
        shutil.rmtree(certs, ignore_errors=True)
        print("---- appliance log tail ----\n" + server.log_text()[-5000:])


def _callee(port: int, wd: Path, certs: Path, name: str, heard: Path) -> list[str]:
    rtp_start, _ = free_udp_range(40)
    return [
        "--answer", "--tls",
        "--tls-cert", str(certs / f"{name}.crt"),
        "--tls-key", str(certs / f"{name}.key"),
        "--port", str(port),
        "--rtp-start", str(rtp_start),
        "--ring-ms", "300",
        "--tone", "1000",
        "--record", str(heard),
        "--duration", "7",
        "--workdir", str(wd),
    ]  # fmt: skip


async def _tls_trunk(lk: api.LiveKitAPI, port: int, srtp: bool = False) -> str:
    info = api.SIPOutboundTrunkInfo(
        address=f"127.0.0.1:{port}",
        numbers=["+15550001002"],
        transport=api.SIPTransport.SIP_TRANSPORT_TLS,
    )
    if srtp:
        info.media_encryption = api.SIPMediaEncryption.SIP_MEDIA_ENCRYPT_REQUIRE
    trunk = await lk.sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(trunk=info))
    return str(trunk.sip_trunk_id)


async def test_tls_trunk_through_front(stack: Stack) -> None:
    """A TLS + SRTP-required trunk: the front reaches the callee over TLS (certificate verified),
    SDES keys in the SDP; audio flows both ways."""
    wd = Path(tempfile.mkdtemp(prefix="rltc", dir="/tmp"))
    heard = wd / "heard.wav"
    port = free_port()
    phone = await PhoneProcess.start(
        [
            *_callee(port, wd, stack.certs, "callee", heard),
            "--srtp",
            "mandatory",
            "--max-wait",
            "40",
        ]
    )
    room_name, ident = "out_tls", "sip_+15557770041"
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    room = await connect(stack.server.ws_url, token("web", room_name))
    try:
        await asyncio.sleep(0.5)  # the phone binds its TLS port
        trunk_id = await _tls_trunk(lk, port, srtp=True)
        async with tone_publisher(room, 440.0):
            info = await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to="+15557770041",
                    room_name=room_name,
                    wait_until_answered=True,
                )
            )
            assert info.participant_identity == ident
            await wait_for(lambda: subscribed_audio(room, ident) is not None, 10, "callee track")
            track = subscribed_audio(room, ident)
            assert track is not None
            pcm = await asyncio.wait_for(record(track, 2.0, skip=0.5), 20)
            chk = check_tone(pcm, RATE, 1000.0)
            print(f"TLS callee 1 kHz -> room: {chk}")
            assert abs(chk.freq - 1000.0) < 5 and chk.snr >= 20, chk
            events = await phone.wait(40)  # the phone hangs up 7 s after the answer
            # Its BYE came back over TLS through the front (record-routed) to the worker.
            await wait_for(lambda: ident not in room.remote_participants, 10, "callee left")
    finally:
        phone.kill()
        await room.disconnect()
        await lk.aclose()
    try:
        offer = next(e for e in events if e["event"] == "offer")
        print(offer["request"], "|", offer["via"])
        assert offer["request"].startswith("INVITE sip:+15557770041@127.0.0.1"), offer
        assert ";transport=tls" in offer["request"].lower(), offer
        assert "RTP/SAVP" in offer["sdp"] and "a=crypto:" in offer["sdp"], offer  # TLS + SRTP
        # The INVITE came over TLS, from the front's TLS socket.
        assert offer["via"].startswith(f"Via: SIP/2.0/TLS 127.0.0.1:{stack.ports.front_tls}"), offer
        gone = disconnected(events)
        assert gone is not None and gone["local_hangup"], events
        pcm2, rate = read_wav(heard)
        chk2 = check_tone(pcm2[int(2.5 * rate) : int(6.0 * rate)], rate, 440.0)
        print(f"room 440 Hz -> TLS callee: {chk2}")
        assert abs(chk2.freq - 440.0) < 8 and chk2.median_window >= 15, chk2
    finally:
        shutil.rmtree(wd, ignore_errors=True)


async def test_tls_trunk_untrusted_certificate(stack: Stack) -> None:
    """A carrier certificate outside the CA file: no call (the handshake is refused), a SIP
    error from the RPC, and nothing reaches the callee over any transport."""
    wd = Path(tempfile.mkdtemp(prefix="rltu", dir="/tmp"))
    port = free_port()
    phone = await PhoneProcess.start(
        [*_callee(port, wd, stack.certs, "stranger", wd / "heard.wav"), "--max-wait", "12"]
    )
    lk = api.LiveKitAPI(stack.server.http_url, API_KEY, API_SECRET)
    try:
        await asyncio.sleep(0.5)
        trunk_id = await _tls_trunk(lk, port)
        with pytest.raises(api.SipCallError) as err:
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk_id,
                    sip_call_to="+15557770042",
                    room_name="out_tls_bad",
                    wait_until_answered=True,
                    ringing_timeout=Duration(seconds=10),
                )
            )
        print("untrusted carrier:", err.value.status, err.value.message, err.value.sip_status_code)
        # From the front (docs/sip-trunks.md): 477 when the send itself failed, 408 when the
        # handshake failed after the INVITE was queued on the connection.
        assert err.value.sip_status_code in (408, 477), err.value.message
        expected = {408: "deadline_exceeded", 477: "invalid_argument"}
        assert err.value.code == expected[err.value.sip_status_code], err.value.code
        events = await phone.wait(20)
    finally:
        phone.kill()
        await lk.aclose()
        shutil.rmtree(wd, ignore_errors=True)
    assert not any(e["event"] in ("offer", "incoming") for e in events), events

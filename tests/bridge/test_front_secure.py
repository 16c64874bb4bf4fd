"""Acceptance: SRTP (SDES) per inbound trunk and SIP over TLS, through the whole appliance.

``roomline serve`` from this tree with the Kamailio front (2 workers), TLS on ``sip.tls_port`` with
a self-signed certificate made here with openssl, and three trunks, one per LiveKit
``media_encryption``: REQUIRE, ALLOW, DISABLE (the default). Callers are real peers: the pjsua2
test phone (SRTP mandatory = ``RTP/SAVP`` + ``a=crypto``, optional = ``RTP/AVP`` + ``a=crypto``,
or plain; UDP or TLS) and SIPp (UDP only: this SIPp is built without OpenSSL). Room peers are the
LiveKit SDK; audio is checked by FFT both ways.

* SRTP phone → REQUIRE trunk: answered with ``RTP/SAVP`` + ``a=crypto`` (the 200's SDP as the
  phone received it), 1000 Hz phone → room and 440 Hz room → phone.
* plain offer → REQUIRE trunk: 488 (SIPp and the plain phone).
* SRTP-only offer → DISABLE trunk: 488. ALLOW trunk: a plain offer gets plain RTP, an optional
  SRTP offer gets ``a=crypto``.
* TLS phone (SRTP mandatory) → front TLS port → REQUIRE trunk: answered, SIP participant, audio
  both ways, the worker logs the caller's source as ``;tls``.

Ports: one free block of 1000 (below the kernel's ephemeral range).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from roomline_harness.aio import wait_for
from roomline_harness.audio import read_wav
from roomline_harness.front_appliance import HAVE_KAMAILIO, _scenario
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.net import free_block
from roomline_harness.server import API_KEY, API_SECRET, Server, start_server, stop_server
from roomline_harness.sip.fullstack import check_tone, metrics
from roomline_harness.sip.peers import PhoneProcess, disconnected, run_phone
from roomline_harness.sip.sipp import SIPP, run_sipp
from roomline_harness.sip.sniff import can_sniff, rtp_payload_sizes, sniff_udp

HAVE_TLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so").exists()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    pytest.mark.skipif(not HAVE_KAMAILIO, reason="kamailio not installed"),
    pytest.mark.skipif(not HAVE_TLS_MODULE, reason="kamailio-tls-modules not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
    pytest.mark.timeout(240),
]

# One block of 1000 ports, free when the module is imported, below the ephemeral range.
BASE = free_block(1000)
SIP = BASE + 60
TLS = BASE + 61
WORKER_BASE = BASE + 70
WORKERS = 2
RTP = (BASE + 200, BASE + 299)
RTC = (BASE + 600, BASE + 699)
SIPP_PORTS = itertools.cycle(range(BASE + 100, BASE + 130))
MEDIA_PORTS = itertools.cycle(range(BASE + 400, BASE + 480, 8))
PHONE_PORTS = itertools.cycle(range(BASE + 130, BASE + 150))
PHONE_RTP = itertools.cycle(range(BASE + 500, BASE + 590, 10))

REQUIRE = "+15558000001"
ALLOW = "+15558000002"
PLAIN = "+15558000003"
RATE = 48000
ROOM_SNR = 15.0
CRYPTO = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"


@dataclass
class Appliance:
    server: Server
    workdir: Path


def _room(number: str) -> str:
    return f"call_{number}"


def _self_signed(d: Path) -> tuple[Path, Path]:
    cert, key = d / "sip.crt", d / "sip.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=roomline.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _trunk(tid: str, number: str, encryption: str | None) -> dict[str, Any]:
    t: dict[str, Any] = {
        "sip_trunk_id": tid,
        "name": tid,
        "allowed_addresses": ["127.0.0.1"],
        "numbers": [number],
    }
    if encryption:
        t["media_encryption"] = encryption
    return t


def _healthz(server: Server) -> str:
    try:
        with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    tmp = tmp_path_factory.mktemp("secure")
    workdir = Path(tempfile.mkdtemp(prefix="rlsec", dir="/tmp"))
    cert, key = _self_signed(tmp)
    sip = {
        "enabled": True,
        "bind_address": "127.0.0.1",
        "port": SIP,
        "tls_port": TLS,
        "tls_cert_file": str(cert),
        "tls_key_file": str(key),
        "workers": WORKERS,
        "worker_base_port": WORKER_BASE,
        "rtp_port_start": RTP[0],
        "rtp_port_end": RTP[1],
        "trunks": [
            _trunk("ST_require", REQUIRE, "SIP_MEDIA_ENCRYPT_REQUIRE"),
            _trunk("ST_allow", ALLOW, "SIP_MEDIA_ENCRYPT_ALLOW"),
            _trunk("ST_plain", PLAIN, None),
        ],
        "dispatch_rules": [
            {
                "sip_dispatch_rule_id": "SDR_calls",
                "name": "calls",
                "trunk_ids": ["ST_require", "ST_allow", "ST_plain"],
                "rule": {"dispatch_rule_callee": {"room_prefix": "call"}},
            }
        ],
    }
    server = start_server(
        tmp,
        sip=sip,
        rtc={"port_range_start": RTC[0], "port_range_end": RTC[1]},
        logging={"level": "info", "format": "json"},
    )
    try:
        end = time.monotonic() + 60
        while f"{WORKERS}/{WORKERS} ready" not in _healthz(server):
            assert time.monotonic() < end, _healthz(server)
            time.sleep(0.25)
        yield Appliance(server, workdir)
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)


def _sipp(scenario: Path) -> list[str]:
    assert SIPP is not None
    return [SIPP, "-sf", str(scenario), f"127.0.0.1:{SIP}", "-i", "127.0.0.1"] + [
        "-p",
        str(next(SIPP_PORTS)),
        "-mi",
        "127.0.0.1",
        "-mp",
        str(next(MEDIA_PORTS)),
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        "30s",
        "-timeout_error",
    ]


def _savp(path: Path) -> Path:
    """Turn a scenario's plain PCMU offer into an SRTP-only one (RTP/SAVP + a=crypto)."""
    text = path.read_text()
    assert "RTP/AVP 0 101" in text
    text = text.replace("RTP/AVP 0 101", "RTP/SAVP 0 101").replace(
        "a=sendrecv", f"a=sendrecv\n      {CRYPTO}"
    )
    path.write_text(text)
    return path


def _phone_args(number: str, wd: Path, *extra: str) -> list[str]:
    return [
        "--dest",
        f"sip:{number}@127.0.0.1:{SIP}",
        "--port",
        str(next(PHONE_PORTS)),
        "--rtp-start",
        str(next(PHONE_RTP)),
        "--caller",
        "+15557770001",
        "--workdir",
        str(wd),
        *extra,
    ]


def _answer(events: list[dict[str, Any]]) -> dict[str, Any]:
    ans = next((e for e in events if e["event"] == "answer_sdp"), None)
    assert ans is not None, events
    return ans


async def _sip_participants(server: Server, room: str) -> list[str]:
    async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
        try:
            resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        except api.TwirpError:
            return []
    return [p.identity for p in resp.participants if p.kind == api.ParticipantInfo.Kind.SIP]


#: PCMU 20 ms = 160 bytes of payload; SRTP adds the auth tag (10 bytes for *_80, 4 for *_32).
PLAIN_SIZES = {160}
SRTP_SIZES = {170, 164}


def _sniff(seconds: float) -> asyncio.Task[list[Any]]:
    """Capture the workers' RTP (both directions) in the background for ``seconds``."""
    return asyncio.create_task(asyncio.to_thread(sniff_udp, range(RTP[0], RTP[1] + 1), seconds))


def _assert_wire(packets: list[Any], sizes: set[int]) -> None:
    """Both directions of one call carried PCMU RTP with payloads of exactly ``sizes``."""
    seen = rtp_payload_sizes(packets)
    print("RTP payload sizes on the wire:", seen)
    to_worker = [v for (s, d), v in seen.items() if RTP[0] <= d <= RTP[1]]
    from_worker = [v for (s, d), v in seen.items() if RTP[0] <= s <= RTP[1]]
    assert to_worker and from_worker, seen
    assert all(v <= sizes for v in to_worker + from_worker), seen


async def _call_both_ways(
    app: Appliance, tmp: Path, number: str, *phone: str
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The phone (tone 1000 Hz) calls ``number``; an SDK peer plays 440 Hz. Checks audio both
    ways and that the caller is a SIP participant; returns the phone's events and 2 s of the
    call's RTP as captured on the loopback interface (empty without root)."""
    server = app.server
    heard = tmp / "heard.wav"
    room = await connect(server.ws_url, token("web", _room(number)))
    try:
        async with tone_publisher(room, 440.0):
            proc = await PhoneProcess.start(
                _phone_args(number, tmp, "--tone", "1000", "--record", str(heard))
                + ["--duration", "9", *phone]
            )
            try:
                ident = "sip_+15557770001"
                await wait_for(lambda: subscribed_audio(room, ident) is not None, 20, ident)
                assert await _sip_participants(server, _room(number)) == [ident]
                track = subscribed_audio(room, ident)
                assert track is not None
                sniffing = _sniff(2.0) if can_sniff() else None
                pcm = await record(track, 2.0, skip=1.0)
                packets = await sniffing if sniffing is not None else []
                chk = check_tone(pcm, RATE, 1000.0)
                print(f"phone 1000 Hz -> room: {chk}")
                assert abs(chk.freq - 1000.0) < 5 and chk.snr >= ROOM_SNR, chk
                events = await proc.wait(40)
            finally:
                proc.kill()
    finally:
        await room.disconnect()
    assert any(e["event"] == "disconnected" and e["local_hangup"] for e in events), events
    pcm2, rate = read_wav(heard)
    chk = check_tone(pcm2[int(3.0 * rate) : int(8.0 * rate)], rate, 440.0)
    print(f"room 440 Hz -> phone: {chk}")
    assert abs(chk.freq - 440.0) < 8, chk
    return events, packets


# --- SRTP --------------------------------------------------------------------------------------
async def test_srtp_phone_to_require_trunk_answered_with_savp(
    appliance: Appliance, tmp_path: Path
) -> None:
    events, packets = await _call_both_ways(appliance, tmp_path, REQUIRE, "--srtp", "mandatory")
    ans = _answer(events)
    print("answer:", ans["status"], ans["sdp"])
    assert ans["status"].startswith("SIP/2.0 200")
    assert "m=audio" in ans["sdp"] and "RTP/SAVP" in ans["sdp"], ans
    assert "a=crypto:" in ans["sdp"], ans
    if can_sniff():  # on the wire: SRTP both ways (auth tag after the encrypted payload)
        _assert_wire(packets, SRTP_SIZES)


def _rejection_counts(server: Server) -> dict[str, float]:
    """The worker-side rejection counters by reason, and the 488 count by status."""
    m = metrics(server)
    out = {
        labels.split('"')[1]: v
        for (name, labels), v in m.items()
        if name == "roomline_sip_worker_rejections_total"
    }
    out["status488"] = m.get(("roomline_sip_rejected_calls_total", '{status="488"}'), 0.0)
    return out


async def _assert_grew(server: Server, before: dict[str, float], want: dict[str, float]) -> None:
    """The counters moved by exactly ``want`` (the worker's report may trail SIPp's exit)."""

    def grew() -> dict[str, float]:
        now = _rejection_counts(server)
        return {k: v - before.get(k, 0.0) for k, v in now.items() if v != before.get(k, 0.0)}

    with contextlib.suppress(AssertionError):
        await wait_for(lambda: grew() == want, 5)
    assert grew() == want


async def test_plain_offer_to_require_trunk_gets_488(appliance: Appliance, tmp_path: Path) -> None:
    wd = appliance.workdir
    before = _rejection_counts(appliance.server)
    sc = _scenario(
        wd / "plain488.xml", pcap=None, play_ms=0, expect=488, caller="+15557770002", callee=REQUIRE
    )
    rc, out = await run_sipp(_sipp(sc), wd, 30)
    assert rc == 0, out[-3000:]
    # The pjsua2 phone without SRTP too.
    events = await run_phone(_phone_args(REQUIRE, tmp_path), 30)
    gone = disconnected(events)
    assert gone is not None and gone["code"] == 488, events
    assert not await _sip_participants(appliance.server, _room(REQUIRE))
    # The worker refused it (the trunk matched), and said why.
    states = [
        e
        for e in appliance.server.log_events()
        if e.get("event") == "sip call state" and e.get("state") == "rejected"
    ]
    assert any("encryption-required" in str(e.get("reason")) for e in states), states
    # ...and both 488s are counted: by status, and among the workers' own rejections by reason.
    await _assert_grew(appliance.server, before, {"encryption-required": 2, "status488": 2})


async def test_srtp_only_offer_to_disable_trunk_gets_488(appliance: Appliance) -> None:
    wd = appliance.workdir
    sc = _savp(
        _scenario(
            wd / "savp488.xml",
            pcap=None,
            play_ms=0,
            expect=488,
            caller="+15557770003",
            callee=PLAIN,
        )
    )
    before = _rejection_counts(appliance.server)
    rc, out = await run_sipp(_sipp(sc), wd, 30)
    assert rc == 0, out[-3000:]
    await _assert_grew(appliance.server, before, {"encryption-disabled": 1, "status488": 1})


async def test_allow_trunk_takes_plain_and_srtp(appliance: Appliance, tmp_path: Path) -> None:
    wd = appliance.workdir
    sc = _scenario(
        wd / "allowplain.xml", pcap=None, play_ms=500, caller="+15557770004", callee=ALLOW
    )
    rc, out = await run_sipp(_sipp(sc), wd, 30)
    assert rc == 0, out[-3000:]
    sc2 = _savp(
        _scenario(wd / "allowsavp.xml", pcap=None, play_ms=500, caller="+15557770005", callee=ALLOW)
    )
    rc, out = await run_sipp(_sipp(sc2), wd, 30)
    assert rc == 0, out[-3000:]
    # pjsua's optional SRTP offer (RTP/AVP + a=crypto) is answered with crypto.
    events = await run_phone(_phone_args(ALLOW, tmp_path, "--srtp", "optional", "--duration", "1"))
    ans = _answer(events)
    assert ans["status"].startswith("SIP/2.0 200") and "a=crypto:" in ans["sdp"], ans
    # ...and a plain phone gets plain RTP (on the wire too).
    sniffing = _sniff(4.0) if can_sniff() else None
    events = await run_phone(_phone_args(ALLOW, tmp_path, "--duration", "2", "--tone", "1000"))
    ans = _answer(events)
    assert ans["status"].startswith("SIP/2.0 200") and "a=crypto" not in ans["sdp"], ans
    assert "RTP/AVP" in ans["sdp"], ans
    if sniffing is not None:
        _assert_wire(await sniffing, PLAIN_SIZES)


async def test_optional_srtp_offer_to_disable_trunk_is_answered(
    appliance: Appliance, tmp_path: Path
) -> None:
    """Documented difference from LiveKit (docs/sip-trunks.md): pjsua2 builds the SDP answer
    before the trunk is known, so optional crypto (RTP/AVP + a=crypto) is answered on DISABLE."""
    events = await run_phone(_phone_args(PLAIN, tmp_path, "--srtp", "optional", "--duration", "1"))
    ans = _answer(events)
    assert ans["status"].startswith("SIP/2.0 200") and "RTP/AVP" in ans["sdp"], ans


# --- TLS ---------------------------------------------------------------------------------------
async def test_tls_srtp_phone_through_front(appliance: Appliance, tmp_path: Path) -> None:
    server = appliance.server
    events, packets = await _call_both_ways(
        appliance,
        tmp_path,
        REQUIRE,
        "--tls",
        "--srtp",
        "mandatory",
        "--dest",
        f"sip:{REQUIRE}@127.0.0.1:{TLS}",
    )
    ans = _answer(events)
    assert "RTP/SAVP" in ans["sdp"] and "a=crypto:" in ans["sdp"], ans
    if can_sniff():
        _assert_wire(packets, SRTP_SIZES)
    accepted = [
        ln
        for ln in server.log_text().splitlines()
        if "sip call accepted" in ln and "+15557770001" in ln and ";tls" in ln
    ]
    assert accepted, [ln for ln in server.log_text().splitlines() if "sip call accepted" in ln]

"""``sip.wideband: false``: bridge workers on an 8 kHz conference clock, G.711 only.

One ``roomline serve`` with one supervised worker (direct mode, so the phone reaches the worker
itself and the test reads its SDP answer). Checks that the setting reaches the worker process,
that a G.711 call carries audio both ways by content (FFT) without the 16 kHz bridge, and that a
caller offering only G.722 is refused with 488 instead of being silently cut to narrowband.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from roomline_harness.aio import wait_for
from roomline_harness.audio import read_wav
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import Server, start_server, stop_server
from roomline_harness.sip.fullstack import (
    Workers,
    check_tone,
    phone_args,
    room_for,
    sip_section,
    worker_metric,
    worker_pid,
)
from roomline_harness.sip.pcap import RtpStream
from roomline_harness.sip.peers import PhoneProcess
from roomline_harness.sip.sipp import run_sipp, sipp_cmd, uac_scenario
from roomline_harness.sip.sniff import UdpPacket, can_sniff, sniff_udp
from roomline_harness.speech_chain import read_speech

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE = 48000
#: Phone → room over G.711, Opus and WebRTC (the wideband path measures ~36–40 dB idle).
ROOM_SNR = 25.0
#: What the pjsua2 phone records (median of 0.5 s windows; see tests/bridge/test_fullstack.py).
PHONE_SNR = 20.0
NUMBERS = {"audio": "+15550151", "g722": "+15550152", "pair": "+15550153"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Workers]]:
    tmp = tmp_path_factory.mktemp("sipnb")
    section, workers = sip_section(list(NUMBERS.values()), workers=1)
    section["wideband"] = False
    server = start_server(tmp, sip=section, logging={"level": "info", "format": "json"})
    try:
        port = workers.sip_ports[0]
        deadline = time.monotonic() + 20
        while worker_metric(server, "roomline_sip_worker_max_calls", port) <= 0:
            assert time.monotonic() < deadline, "worker never reported ready"
            time.sleep(0.1)
        yield server, workers
    finally:
        stop_server(server)


def test_setting_reaches_the_worker(stack: tuple[Server, Workers]) -> None:
    server, workers = stack
    pid = worker_pid(server, workers.sip_ports[0])
    assert pid is not None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--bridge-rate") + 1] == b"8000", argv


async def test_g711_call_audio_both_ways(stack: tuple[Server, Workers], tmp_path: Path) -> None:
    server, workers = stack
    number, caller = NUMBERS["audio"], "+15551230151"
    rec = tmp_path / "heard.wav"
    web = await connect(server.ws_url, token("web", room_for(number)))
    try:
        async with tone_publisher(web, 440.0):
            phone = await PhoneProcess.start(
                phone_args(
                    workers.sip_ports[0],
                    number,
                    tmp_path,
                    caller,
                    "--tone",
                    "1000",
                    "--record",
                    str(rec),
                    "--duration",
                    "6",
                )  # fmt: skip
            )
            ident = f"sip_{caller}"
            await wait_for(lambda: subscribed_audio(web, ident) is not None, 15, ident)
            track = subscribed_audio(web, ident)
            assert track is not None
            pcm = await record(track, 2.0, skip=0.5)
            events = await phone.wait(30)
    finally:
        await web.disconnect()
    room_chk = check_tone(pcm, RATE, 1000.0)
    heard, rate = read_wav(rec)
    chk = check_tone(heard[int(2.0 * rate) : int(5.5 * rate)], rate, 440.0)
    print(f"phone 1 kHz -> SDK: {room_chk}\nSDK 440 Hz -> phone: {chk}")
    answers = [e for e in events if e["event"] == "answer_sdp" and "200" in e["status"]]
    assert answers and "PCMU/8000" in answers[0]["sdp"], events
    assert "G722" not in answers[0]["sdp"]
    assert abs(room_chk.freq - 1000.0) < 5 and room_chk.snr >= ROOM_SNR
    assert abs(chk.freq - 440.0) < 5 and chk.median_window >= PHONE_SNR


async def test_g722_only_caller_gets_488(stack: tuple[Server, Workers], tmp_path: Path) -> None:
    server, workers = stack
    number = NUMBERS["g722"]
    phone = await PhoneProcess.start(
        phone_args(
            workers.sip_ports[0],
            number,
            tmp_path,
            "+15551230152",
            "--codec",
            "G722/16000",
            "--duration",
            "3",
        )  # fmt: skip
    )
    events = await phone.wait(30)
    gone = [e for e in events if e["event"] == "disconnected"]
    assert gone and gone[0]["code"] == 488, events
    assert not any(e["event"] == "answered" for e in events), events


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """SIPp wants short paths for its pcap files."""
    d = Path(tempfile.mkdtemp(prefix="rlnb", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _rtp_payloads(packets: list[UdpPacket], dst_port: int) -> bytes:
    """The PCMU payloads sent to ``dst_port``, in order of sequence number, concatenated."""
    frames: dict[int, bytes] = {}
    for p in packets:
        b = p.payload
        if p.dst_port != dst_port or len(b) < 12 or b[0] >> 6 != 2 or b[1] & 0x7F != 0:
            continue
        frames[struct.unpack("!H", b[2:4])[0]] = b[12 + 4 * (b[0] & 0x0F) :]
    return b"".join(frames[s] for s in sorted(frames))


@pytest.mark.skipif(not can_sniff(), reason="reading loopback packets needs root")
async def test_two_g711_callers_hear_each_others_codes(
    stack: tuple[Server, Workers], short_dir: Path
) -> None:
    """Phone A's µ-law reaches phone B unchanged through the room (the µ-law sidecar, played by
    B's leg on this 8 kHz worker): the frames of speech A sends are found byte for byte in what
    the worker sends B. Through Opus alone none would be (tests/bridge/worker/test_room_leg.py)."""
    server, workers = stack
    number = NUMBERS["pair"]
    speech = read_speech()[: 4 * 8000].astype(np.int16)
    a_stream = RtpStream()
    a_stream.audio(speech)
    a_frames = [p[12:].replace(b"\x7f", b"\xff") for _, p in a_stream.packets]
    a_stream.write(short_dir / "speech.pcap")
    b_stream = RtpStream()
    b_stream.silence(7.0)
    b_stream.write(short_dir / "quiet.pcap")
    target = f"127.0.0.1:{workers.sip_ports[0]}"
    b_media, a_media = free_udp_range(8)[0], free_udp_range(8)[0]
    sc_b = uac_scenario(short_dir / "b.xml", pcap="quiet.pcap", play_ms=7000, caller="+15551230154")
    sc_a = uac_scenario(
        short_dir / "a.xml", pcap="speech.pcap", play_ms=4500, caller="+15551230153"
    )
    sniffing = asyncio.create_task(asyncio.to_thread(sniff_udp, range(b_media, b_media + 1), 9.0))
    call_b = asyncio.create_task(
        run_sipp(
            sipp_cmd(
                sc_b, target, service=number, local_port=free_port(tcp=False), media_port=b_media
            ),
            short_dir,
        )
    )
    await asyncio.sleep(1.5)  # B is in the room before A speaks
    rc_a, out_a = await run_sipp(
        sipp_cmd(sc_a, target, service=number, local_port=free_port(tcp=False), media_port=a_media),
        short_dir,
    )
    rc_b, out_b = await call_b
    # µ-law has two codes for 0 (0x7F, 0xFF): compare what the phones play, so one of them.
    heard = _rtp_payloads(await sniffing, b_media).replace(b"\x7f", b"\xff")
    assert rc_a == 0, out_a[-2000:]
    assert rc_b == 0, out_b[-2000:]
    # Frames with speech in them (µ-law silence, 0xFF/0x7F, would match by chance).
    spoken = [f for f in a_frames if len(set(f)) > 8]
    exact = sum(1 for f in spoken if f in heard)
    print(f"{exact} of {len(spoken)} speech frames of A reached B byte for byte ({len(heard)} B)")
    assert len(heard) > 3 * 8000, "B received less than 3 s of audio"
    assert exact >= 0.8 * len(spoken), f"{exact} of {len(spoken)} frames exact"

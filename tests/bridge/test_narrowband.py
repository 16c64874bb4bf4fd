"""``sip.wideband: false``: bridge workers on an 8 kHz conference clock, G.711 only.

One ``roomline serve`` with one supervised worker (direct mode, so the phone reaches the worker
itself and the test reads its SDP answer). Checks that the setting reaches the worker process,
that a G.711 call carries audio both ways by content (FFT) without the 16 kHz bridge, and that a
caller offering only G.722 is refused with 488 instead of being silently cut to narrowband.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomline_harness.aio import wait_for
from roomline_harness.audio import read_wav
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
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
from roomline_harness.sip.peers import PhoneProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE = 48000
#: Phone → room over G.711, Opus and WebRTC (the wideband path measures ~36–40 dB idle).
ROOM_SNR = 25.0
#: What the pjsua2 phone records (median of 0.5 s windows; see tests/bridge/test_fullstack.py).
PHONE_SNR = 20.0
NUMBERS = {"audio": "+15550151", "g722": "+15550152"}


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

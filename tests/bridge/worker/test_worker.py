"""End to end: real SIP peers (SIPp, the pjsua2 test phone) ⇄ bridge worker ⇄ stand-in room.

Audio is checked by content (FFT / SNR); DTMF by digit order; call control by what each side saw.
The worker runs under the real :class:`WorkerSupervisor`; the room side is the stand-in server of
roomline_harness/standin_room.py (the lead's ``sfu/local`` replaces it in the full-stack tests).
"""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from livekit.protocol import models

from bridge.worker.sched import thread_policies
from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, last_seconds, read_wav, snr_db
from roomline_harness.bridge import Bridge
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.sip.pcap import RtpStream
from roomline_harness.sip.peers import digits, disconnected, run_phone
from roomline_harness.sip.sipp import SIPP, run_sipp, sipp_cmd, uac_scenario
from roomline_harness.standin_room import Conn, StandinRoom, garbage_frames

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed"),
    pytest.mark.timeout(120),
]

RATE = 48000
#: Phone-side recordings pass through two pjsua processes on a shared 2-vCPU host; an occasional
#: 20–40 ms scheduling glitch costs a few dB over a 2 s window, so the phone side checks frequency
#: plus a looser SNR floor (clean windows measure ~35 dB, printed by the tests).
PHONE_SNR = 15.0


def window(pcm: np.ndarray, rate: int, start: float, end: float) -> np.ndarray:
    return pcm[int(start * rate) : int(end * rate)]


def assert_tone(pcm: np.ndarray, rate: int, freq: float, min_snr: float = 25.0) -> float:
    assert len(pcm) > rate // 4, f"only {len(pcm)} samples"
    f = dominant_frequency(pcm, rate)
    snr = snr_db(pcm, rate, freq)
    assert abs(f - freq) < 5, f"dominant {f:.1f} Hz, wanted {freq}"
    assert snr >= min_snr, f"SNR {snr:.1f} dB at {freq} Hz"
    return snr


def phone_args(bridge: Bridge, d: Path, *extra: str) -> list[str]:
    return [
        "--dest",
        f"sip:room@{bridge.target}",
        "--port",
        str(free_port()),
        "--rtp-start",
        str(free_udp_range(40)[0]),
        "--workdir",
        str(d),
        *extra,
    ]


def sipp(bridge: Bridge, scenario: Path, **kw: Any) -> list[str]:
    return sipp_cmd(scenario, bridge.target, local_port=free_port(), media_port=free_port(), **kw)


async def test_sipp_pcmu_tone_and_dtmf_reach_room_then_bye_leaves(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    stream = RtpStream()
    stream.tone(1000, 4.0, pt=0)
    stream.write(short_dir / "tone.pcap")
    stream.dtmf("1234*#")
    stream.write(short_dir / "dtmf.pcap")
    sc = uac_scenario(
        short_dir / "uac.xml",
        pcap=short_dir / "tone.pcap",
        play_ms=4000,
        dtmf_pcap=short_dir / "dtmf.pcap",
        dtmf_ms=3000,
    )
    rc, out = await run_sipp(sipp(bridge, sc), short_dir)
    assert rc == 0, out[-2000:]
    conn = room.conns[0]
    await asyncio.wait_for(conn.closed.wait(), 10)
    # phone → room: PCMU 1 kHz became Opus on the channel
    snr = assert_tone(window(conn.published_pcm(), RATE, 0.5, 3.5), RATE, 1000.0)
    print(f"SIPp PCMU 1 kHz -> room Opus: SNR {snr:.1f} dB")
    # RFC 4733 from the phone → DataPacket(sip_dtmf) DATA frames, in order
    assert conn.dtmf_digits() == "1234*#"
    assert [d.sip_dtmf.code for d in conn.data] == [1, 2, 3, 4, 10, 11]
    # BYE from the phone → SignalRequest leave on the channel, then the channel closes
    assert conn.got_leave.is_set()
    assert conn.signals[-1].WhichOneof("message") == "leave"
    assert conn.join["room"] == "test-room"
    req = bridge.policy.seen[0]
    assert req.from_user == "+15550001111" and req.to_user == "room"
    assert req.headers["X-Test-Id"] == "sipp-1" and req.user_agent == "roomline-sipp-test"
    await wait_for(lambda: any(s.state == "hangup" for s in bridge.states), 20)
    assert [s.state for s in bridge.states] == ["active", "hangup"]
    assert bridge.states[0].codec == "PCMU/8000"


async def test_phone_hears_room_tone_gets_dtmf_and_survives_hold(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    room.tone_freq = 440.0

    async def room_side() -> Conn:
        conn = await room.new_conn.get()
        await conn.joined.wait()
        await asyncio.sleep(2.5)
        for d in "59#":
            conn.send_data(
                models.DataPacket(
                    kind=models.DataPacket.RELIABLE, sip_dtmf=models.SipDTMF(code=0, digit=d)
                )
            )
        return conn

    task = asyncio.create_task(room_side())
    heard = short_dir / "heard.wav"
    events = await run_phone(
        phone_args(
            bridge,
            short_dir,
            "--codec",
            "PCMA/8000",
            "--tone",
            "1000",
            "--record",
            str(heard),
            "--duration",
            "9",
            "--dtmf",
            "1234*#",
            "--dtmf-at",
            "1",
            "--hold-at",
            "5",
            "--resume-at",
            "6",
        )  # fmt: skip
    )
    conn = await task
    end = disconnected(events)
    assert end is not None and end["local_hangup"], events  # hold did not end the call
    assert digits(events) == "59#"  # room DataPacket → RFC 4733 → phone
    assert conn.dtmf_digits() == "1234*#"  # phone RFC 4733 → room DataPacket
    pcm, rate = read_wav(heard)
    snr = assert_tone(window(pcm, rate, 0.5, 4.0), rate, 440.0, PHONE_SNR)
    print(f"room Opus 440 Hz -> phone PCMA: SNR {snr:.1f} dB")
    # The recording leaves out the hold (last_seconds): its last seconds before the hang-up (at
    # 9 s; resume at 6 s) are after the resume.
    snr2 = assert_tone(last_seconds(pcm, rate, 2.0, before_end=0.3), rate, 440.0, PHONE_SNR)
    print(f"after hold/resume: SNR {snr2:.1f} dB")
    assert [e["status"] for e in events if e["event"] == "media"][-1] == 1  # active again


async def test_fifth_concurrent_call_is_busy_and_four_keep_audio(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    stream = RtpStream()
    stream.tone(1000, 7.0, pt=0)
    stream.write(short_dir / "tone.pcap")
    four = uac_scenario(short_dir / "four.xml", pcap=short_dir / "tone.pcap", play_ms=7000)
    busy = uac_scenario(short_dir / "busy.xml", expect=486)
    first = asyncio.create_task(
        run_sipp(sipp(bridge, four, calls=4, concurrent=4, rate=20), short_dir)
    )
    await wait_for(lambda: len(room.conns) == 4 and all(c.published_sid for c in room.conns), 20)
    rc5, out5 = await run_sipp(sipp(bridge, busy), short_dir)
    assert rc5 == 0, out5[-2000:]
    rc, out = await first
    assert rc == 0, out[-2000:]
    assert len(room.conns) == 4
    for conn in room.conns:
        assert_tone(window(conn.published_pcm(), RATE, 1.0, 6.0), RATE, 1000.0)
    assert bridge.sup.workers[0].max_calls == 4


async def test_only_the_clock_thread_preempts_in_a_call(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    """bridge/worker/sched.py on a live worker: during a call every thread of the worker is
    SCHED_BATCH except pjmedia's conference clock, which the first port callback put back in
    SCHED_OTHER; the call's audio still reaches the room."""
    stream = RtpStream()
    stream.tone(1000, 3.0, pt=0)
    stream.write(short_dir / "tone.pcap")
    sc = uac_scenario(short_dir / "uac.xml", pcap=short_dir / "tone.pcap", play_ms=3000)
    call = asyncio.create_task(run_sipp(sipp(bridge, sc), short_dir))
    await wait_for(lambda: bool(room.conns) and bool(room.conns[0].published_sid), 20)
    pid = bridge.sup.workers[0].pid
    assert pid is not None

    def clock_is_other() -> bool:
        return any(n == "clock" and p == os.SCHED_OTHER for n, p in thread_policies(pid).values())

    await wait_for(clock_is_other, 10)
    threads = thread_policies(pid)
    print("worker threads (name, class):", sorted(threads.values()))
    assert threads[pid][1] == os.SCHED_BATCH  # the asyncio thread
    assert {"clock", "media"} <= {name for name, _ in threads.values()}
    for name, policy in threads.values():
        assert policy == (os.SCHED_OTHER if name == "clock" else os.SCHED_BATCH), (name, policy)
    rc, out = await call
    assert rc == 0, out[-2000:]
    assert_tone(window(room.conns[0].published_pcm(), RATE, 0.5, 2.5), RATE, 1000.0)


async def test_room_leave_hangs_up_answered_call(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    async def room_side() -> None:
        conn = await room.new_conn.get()
        await conn.joined.wait()
        await asyncio.sleep(1.5)
        conn.send_leave()

    task = asyncio.create_task(room_side())
    events = await run_phone(phone_args(bridge, short_dir, "--duration", "30"))
    await task
    end = disconnected(events)
    assert end is not None and not end["local_hangup"], events  # the bridge sent BYE
    assert any(e["event"] == "state" and e["state"] == "CONFIRMED" for e in events)
    await wait_for(lambda: any(s.reason == "removed from room" for s in bridge.states), 20)


async def test_room_leave_before_answer_gives_486(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    bridge.policy.ringing = True  # wait_for_audio: nobody publishes, so it keeps ringing

    async def room_side() -> None:
        conn = await room.new_conn.get()
        await conn.joined.wait()
        await asyncio.sleep(1.0)
        conn.send_leave()

    task = asyncio.create_task(room_side())
    events = await run_phone(phone_args(bridge, short_dir, "--duration", "30"))
    await task
    end = disconnected(events)
    assert end is not None and end["code"] == 486, events
    assert any(e["event"] == "state" and e["code"] == 180 for e in events)


async def test_ringing_timeout_gives_486_and_room_audio_answers(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    bridge.policy.ringing = True
    bridge.policy.ringing_timeout = 1.5
    events = await run_phone(phone_args(bridge, short_dir, "--duration", "30"))
    end = disconnected(events)
    assert end is not None and end["code"] == 486, events
    assert room.conns[0].got_leave.is_set() or room.conns[0].closed.is_set()

    # Same policy, but the room starts publishing audio: the call is answered.
    bridge.policy.ringing_timeout = 20
    room.tone_freq = 440.0
    heard = short_dir / "heard.wav"
    events = await run_phone(
        phone_args(bridge, short_dir, "--duration", "3", "--record", str(heard))
    )
    end = disconnected(events)
    assert end is not None and end["local_hangup"], events
    pcm, rate = read_wav(heard)
    assert_tone(window(pcm, rate, 0.5, 2.5), rate, 440.0, PHONE_SNR)


async def test_garbage_frames_on_channel_do_not_break_the_worker(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    room.tone_freq = 440.0

    async def room_side() -> None:
        conn = await room.new_conn.get()
        await conn.joined.wait()
        await asyncio.sleep(0.5)
        conn.send_raw(garbage_frames())

    task = asyncio.create_task(room_side())
    heard = short_dir / "heard.wav"
    events = await run_phone(
        phone_args(bridge, short_dir, "--duration", "4", "--record", str(heard))
    )
    await task
    end = disconnected(events)
    assert end is not None and end["local_hangup"], events  # skipped frames, call went on
    pcm, rate = read_wav(heard)
    assert_tone(window(pcm, rate, 1.0, 3.5), rate, 440.0, PHONE_SNR)

    # A framing error (absurd length) ends only that call; the worker keeps serving.
    async def room_side2() -> None:
        conn = await room.new_conn.get()
        await conn.joined.wait()
        await asyncio.sleep(1.0)
        conn.send_raw(b"\xff\xff\xff\xff\x01junk")

    task = asyncio.create_task(room_side2())
    events = await run_phone(phone_args(bridge, short_dir, "--duration", "30"))
    await task
    end = disconnected(events)
    assert end is not None and not end["local_hangup"], events
    events = await run_phone(phone_args(bridge, short_dir, "--duration", "2"))
    assert disconnected(events)["local_hangup"]  # type: ignore[index]


async def test_broken_sdp_rejected_and_worker_keeps_serving(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    bad = uac_scenario(short_dir / "bad.xml", broken_sdp=True, expect=400)
    rc, out = await run_sipp(sipp(bridge, bad), short_dir)
    assert rc == 0, out[-3000:]
    ok = uac_scenario(short_dir / "ok.xml", play_ms=1000)
    rc, out = await run_sipp(sipp(bridge, ok), short_dir)
    assert rc == 0, out[-2000:]


async def test_supervisor_rejections_carry_status_and_headers(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    bridge.policy.status = 404
    rc, out = await run_sipp(sipp(bridge, uac_scenario(short_dir / "a.xml", expect=404)), short_dir)
    assert rc == 0, out[-2000:]
    bridge.policy.status = 407
    bridge.policy.headers = {"Proxy-Authenticate": 'Digest realm="roomline", nonce="abc"'}
    sc = uac_scenario(short_dir / "b.xml", expect=407)
    text = (
        sc.read_text()
        .replace(
            '<recv response="407"/>',
            '<recv response="407"><action><ereg regexp="realm=.roomline." search_in="hdr" '
            'header="Proxy-Authenticate:" check_it="true" assign_to="r"/></action></recv>',
        )
        .replace("</scenario>", '<Reference variables="r"/>\n</scenario>')
    )
    sc.write_text(text)
    rc, out = await run_sipp(sipp(bridge, sc), short_dir)
    assert rc == 0, out[-2000:]
    assert room.conns == []
    assert [s.state for s in bridge.states] == ["rejected", "rejected"]


async def test_media_timeout_hangs_up(bridge: Bridge, room: StandinRoom, short_dir: Path) -> None:
    bridge.policy.media_timeout = 1.5
    stream = RtpStream()
    stream.tone(1000, 1.0, pt=0)
    stream.write(short_dir / "tone.pcap")
    sc = uac_scenario(short_dir / "quiet.xml", pcap=short_dir / "tone.pcap", play_ms=20000)
    task = asyncio.create_task(run_sipp(sipp(bridge, sc), short_dir, timeout=25))
    await wait_for(lambda: any(s.reason == "media-timeout" for s in bridge.states), 15)
    await asyncio.wait_for(room.conns[0].closed.wait(), 5)
    assert room.conns[0].got_leave.is_set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_killed_worker_restarts_and_takes_a_call(
    bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    w = bridge.sup.workers[0]
    old = w.pid
    os.kill(old, signal.SIGKILL)
    await wait_for(lambda: w.pid != old and w.ready, 30)
    assert w.restarts >= 1 and bridge.sup.metrics()["bridge_workers_ready"] == 1
    stream = RtpStream()
    stream.tone(1000, 2.0, pt=8)
    stream.write(short_dir / "tone.pcap")
    sc = uac_scenario(short_dir / "uac.xml", pcap=short_dir / "tone.pcap", play_ms=2000, pt=8)
    rc, out = await run_sipp(sipp(bridge, sc), short_dir)
    assert rc == 0, out[-2000:]
    assert_tone(window(room.conns[-1].published_pcm(), RATE, 0.3, 1.8), RATE, 1000.0)


@pytest.fixture
def info_logging() -> Iterator[None]:
    """Workers log at the main process's level when started (``child_env``): info, so the
    end-of-call line is written. Requested before ``bridge`` so it applies to its worker."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(old)


async def test_both_ends_report_their_jitter_buffer_counters(
    info_logging: None, bridge: Bridge, room: StandinRoom, short_dir: Path
) -> None:
    """The worker's end-of-call line carries the phone stream's pjmedia jitter-buffer counters,
    and the test phone reports its own (``jbuf``): bench/pesq_live.py compares the two."""
    room.tone_freq = 440.0
    with structlog.testing.capture_logs() as logs:
        # Recording: the phone's conference bridge pulls its stream (unpulled, pjmedia's
        # buffer only fills and discards). --worker-media: the worker's buffer settings.
        events = await run_phone(
            phone_args(
                bridge,
                short_dir,
                "--worker-media",
                "--record",
                str(short_dir / "heard.wav"),
                "--tone",
                "1000",
                "--duration",
                "3",
            )  # fmt: skip
        )
        await wait_for(lambda: any("ended: port" in str(e.get("event")) for e in logs), 15)
    end = disconnected(events)
    assert end is not None and end["local_hangup"], events
    keys = {"lost", "discard", "empty", "prefetch", "avg_delay_ms", "max_delay_ms"}
    phone_jb = next(e for e in events if e["event"] == "jbuf")
    assert keys <= set(phone_jb)
    # A live stream's buffer holds at least part of a frame (a default JbufState is all 0).
    assert phone_jb["avg_delay_ms"] > 0 and phone_jb["max_delay_ms"] >= phone_jb["avg_delay_ms"]
    line = next(str(e["event"]) for e in logs if "ended: port" in str(e.get("event")))
    m = re.search(r"phone jitter buffer (\{[^}]*\}); room inputs", line)
    assert m, line
    worker_jb = ast.literal_eval(m.group(1))
    assert set(worker_jb) == keys, line
    assert worker_jb["avg_delay_ms"] > 0, line
    print(f"phone: {phone_jb}\nworker: {worker_jb}")

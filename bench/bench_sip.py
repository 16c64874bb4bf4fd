"""SIP bridge benchmarks against the whole appliance (``roomline serve`` with bridge workers).

The phone side is a small SIP UAC written here (UDP, PCMU, RTP paced by the asyncio clock), so
send and receive instants are taken on this process's monotonic clock next to the LiveKit SDK's.
Figures printed (no assertions):

* **INVITE → 200 OK**: sequential calls, immediate answer (includes the supervisor decision and
  the room JOIN over the local channel).
* **Added one-way latency**, excluding the 20 ms packetisation of the phone leg:
  - phone → room: from sending the RTP packet whose first sample starts a 1 kHz burst to the
    SDK's ``AudioStream`` yielding the 10 ms frame where the burst starts;
  - room → phone: from the SDK's ``capture_frame`` of the burst's first 10 ms frame to the
    arrival of the PCMU packet carrying its onset, minus the time the onset waited for the rest
    of that 20 ms packet. This includes the SDK's own WebRTC send path.
* **Transcoded calls per core**: N concurrent calls, each in its own room with one SDK peer;
  G.711 → Opus and Opus → G.711 both run (speech-like audio both ways). Worker and main-process
  CPU from /proc over a fixed window, minus the idle baseline.
* **PESQ narrowband** (ITU-T P.862 via PyPI ``pesq``) of speech-like audio phone A → room →
  phone B, with 0 % and 3 % random loss on phone A's uplink (pjmedia conceals it).

    .venv/bin/python bench/bench_sip.py --calls 8 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit import rtc  # noqa: E402

from roomline_harness.aio import wait_for  # noqa: E402
from roomline_harness.lk import connect, subscribed_audio, token  # noqa: E402
from roomline_harness.net import free_block, free_port, free_udp_range  # noqa: E402
from roomline_harness.server import Server, start_server, stop_server  # noqa: E402
from roomline_harness.sip.fullstack import cpu_seconds, room_for, sip_section, worker_pid  # noqa: E402
from roomline_harness.sip.pcap import linear_to_ulaw  # noqa: E402
from roomline_harness.soak import descendants  # noqa: E402
from sfu.local.g711 import ulaw_decode  # noqa: E402

RATE = 8000
SAMPLES = 160  # 20 ms of PCMU
ROOM_RATE = 48000


def pctl(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def describe(name: str, xs: list[float], unit: str = "ms") -> None:
    if not xs:
        print(f"{name:34s} no samples")
        return
    print(
        f"{name:34s} n={len(xs):4d}  median {statistics.median(xs):7.1f} {unit}"
        f"  p99 {pctl(xs, 0.99):7.1f} {unit}  max {max(xs):7.1f} {unit}"
    )


def ulaw_to_linear(b: bytes) -> np.ndarray:
    return ulaw_decode(b, len(b))


def speech_like(seconds: float, rate: int, seed: int = 1) -> np.ndarray:
    """Voiced harmonics with a gliding pitch, a 4 Hz syllable envelope with pauses, fricative
    noise bursts and a spectral tilt; int16 at ``rate``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 140 + 50 * np.sin(2 * np.pi * 0.7 * t) + 20 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k**1.2 for k in range(1, 25) if k * 250 < rate / 2)
    syll = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 0.6
    pauses = (np.sin(2 * np.pi * 0.35 * t) > -0.6).astype(float)
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.3 * t) > 0.8)
    x = (voiced * syll + 0.15 * noise * syll) * pauses
    return (x / np.max(np.abs(x)) * 12000).astype(np.int16)


# --- a minimal SIP UAC over UDP (PCMU) -----------------------------------------------------------
class _Proto(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Callable[[bytes, tuple[str, int], float], None]) -> None:
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_packet(data, addr, time.monotonic())


@dataclass
class Received:
    t: float
    seq: int
    ts: int
    pcm: np.ndarray


@dataclass
class SipUA:
    """One phone: INVITE/ACK/BYE and a PCMU RTP stream paced by the asyncio clock."""

    caller: str
    sip: asyncio.DatagramTransport | None = None
    rtp: asyncio.DatagramTransport | None = None
    sip_port: int = 0
    rtp_port: int = 0
    remote_rtp: tuple[str, int] | None = None
    dialog: dict[str, str] = field(default_factory=dict)
    responses: asyncio.Queue[tuple[int, dict[str, str], str]] = field(default_factory=asyncio.Queue)
    received: list[Received] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)  # sample index -> send time
    bye_received: bool = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.sip, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self._on_sip), local_addr=("127.0.0.1", 0)
        )
        self.rtp, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self._on_rtp), local_addr=("127.0.0.1", 0)
        )
        self.sip_port = self.sip.get_extra_info("sockname")[1]
        self.rtp_port = self.rtp.get_extra_info("sockname")[1]

    def close(self) -> None:
        for tr in (self.sip, self.rtp):
            if tr is not None:
                tr.close()

    def _on_rtp(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        if len(data) < 12 or data[1] & 0x7F != 0:
            return
        seq = int.from_bytes(data[2:4], "big")
        ts = int.from_bytes(data[4:8], "big")
        self.received.append(Received(now, seq, ts, ulaw_to_linear(data[12:])))

    def _on_sip(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        text = data.decode(errors="replace")
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        if lines[0].startswith("SIP/2.0"):
            code = int(lines[0].split()[1])
            if (
                code == 200
                and headers.get("cseq", "").endswith("INVITE")
                and "to_tag" in self.dialog
            ):
                self._ack(addr)  # a retransmitted 200: ACK again
            self.responses.put_nowait((code, headers, body))
        elif lines[0].startswith("BYE"):
            self.bye_received = True
            self._reply(addr, headers, "200 OK")
        else:
            self._reply(addr, headers, "200 OK")

    def _reply(self, addr: tuple[str, int], h: dict[str, str], status: str) -> None:
        msg = (
            f"SIP/2.0 {status}\r\nVia: {h.get('via', '')}\r\nFrom: {h.get('from', '')}\r\n"
            f"To: {h.get('to', '')}\r\nCall-ID: {h.get('call-id', '')}\r\n"
            f"CSeq: {h.get('cseq', '')}\r\nContent-Length: 0\r\n\r\n"
        )
        assert self.sip is not None
        self.sip.sendto(msg.encode(), addr)

    def _request(self, method: str, cseq: int, body: str = "", to_tag: str = "") -> bytes:
        d = self.dialog
        to = f"<sip:{d['number']}@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (
            f"{method} {d['ruri']} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip_port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{self.caller}@127.0.0.1>;tag={d['tag']}\r\n"
            f"To: {to}\r\nCall-ID: {d['call_id']}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{self.caller}@127.0.0.1:{self.sip_port}>\r\n"
            f"User-Agent: roomline-bench\r\n{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    def _ack(self, addr: tuple[str, int]) -> None:
        assert self.sip is not None
        self.sip.sendto(self._request("ACK", 1, to_tag=self.dialog["to_tag"]), addr)

    async def call(self, port: int, number: str) -> float:
        """INVITE → 200 → ACK; returns the INVITE → 200 time in ms."""
        sdp = (
            f"v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n"
        )
        self.dialog = {
            "number": number,
            "ruri": f"sip:{number}@127.0.0.1:{port}",
            "tag": uuid.uuid4().hex[:10],
            "call_id": uuid.uuid4().hex,
        }
        target = ("127.0.0.1", port)
        assert self.sip is not None
        t0 = time.monotonic()
        self.sip.sendto(self._request("INVITE", 1, sdp), target)
        while True:
            code, headers, body = await asyncio.wait_for(self.responses.get(), 15)
            if code >= 200:
                break
        elapsed = (time.monotonic() - t0) * 1000
        if code != 200:
            raise RuntimeError(f"INVITE answered {code}")
        self.dialog["to_tag"] = headers.get("to", "").partition("tag=")[2].split(";")[0]
        contact = re.search(r"<([^>]+)>", headers.get("contact", ""))
        if contact:
            self.dialog["ruri"] = contact.group(1)
        m_port = re.search(r"m=audio (\d+)", body)
        c_addr = re.search(r"c=IN IP4 (\S+)", body)
        assert m_port and c_addr, body
        self.remote_rtp = (c_addr.group(1), int(m_port.group(1)))
        self._ack(target)
        return elapsed

    async def hangup(self, port: int) -> None:
        if self.bye_received or not self.dialog:
            return
        assert self.sip is not None
        self.sip.sendto(self._request("BYE", 2, to_tag=self.dialog["to_tag"]), ("127.0.0.1", port))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.responses.get(), 3)

    async def stream(
        self, pcm: np.ndarray, loss: float = 0.0, seed: int = 7, jitter: float = 0.0
    ) -> None:
        """Send ``pcm`` (8 kHz int16) as PCMU, one packet per 20 ms on an absolute schedule.

        ``loss``: share of packets dropped at random; ``jitter``: each packet is held back by a
        random 0..``jitter`` s (so packets may arrive reordered).
        """
        assert self.rtp is not None and self.remote_rtp is not None
        rng = random.Random(seed)
        ssrc = random.getrandbits(32)
        seq, ts = random.getrandbits(16), random.getrandbits(32)
        loop = asyncio.get_running_loop()
        start = loop.time()
        payloads = linear_to_ulaw(pcm[: len(pcm) // SAMPLES * SAMPLES]).tobytes()
        for i in range(len(payloads) // SAMPLES):
            delay = start + i * 0.020 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            hdr = bytes([0x80, 0x80 if i == 0 else 0]) + seq.to_bytes(2, "big")
            hdr += ts.to_bytes(4, "big") + ssrc.to_bytes(4, "big")
            self.sent_at[i * SAMPLES] = time.monotonic()
            pkt = hdr + payloads[i * SAMPLES : (i + 1) * SAMPLES]
            hold = rng.random() * jitter if jitter else 0.0
            if not (loss and rng.random() < loss):
                if hold > 0:
                    loop.call_later(hold, self.rtp.sendto, pkt, self.remote_rtp)
                else:
                    self.rtp.sendto(pkt, self.remote_rtp)
            seq = (seq + 1) & 0xFFFF
            ts = (ts + SAMPLES) & 0xFFFFFFFF

    def received_pcm(self) -> np.ndarray:
        """Received audio placed by RTP timestamp (gaps stay silent)."""
        if not self.received:
            return np.zeros(0, np.int16)
        base = self.received[0].ts
        end = max((r.ts - base) & 0xFFFFFFFF for r in self.received) + SAMPLES
        out = np.zeros(end, np.int16)
        for r in self.received:
            off = (r.ts - base) & 0xFFFFFFFF
            out[off : off + len(r.pcm)] = r.pcm
        return out


# --- helpers -------------------------------------------------------------------------------------
def bursts(seconds: float, rate: int, period: float = 0.5, length: float = 0.1) -> np.ndarray:
    """1 kHz bursts of ``length`` every ``period`` seconds, starting on 20 ms boundaries."""
    x = np.zeros(int(seconds * rate), np.int16)
    n = int(length * rate)
    burst = (10000 * np.sin(2 * np.pi * 1000 * np.arange(n) / rate)).astype(np.int16)
    for k in range(1, int(seconds / period)):
        s = int(k * period * rate)
        x[s : s + n] = burst[: len(x) - s]
    return x


def onsets(x: np.ndarray, rate: int, threshold: float = 3000, quiet: float = 0.2) -> list[int]:
    """Sample indexes where |x| first exceeds ``threshold`` after ``quiet`` s below it."""
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > threshold)
    out: list[int] = []
    last = -(10**9)
    for i in loud:
        if i - last > quiet * rate:
            out.append(int(i))
        last = int(i)
    return out


async def publisher(
    room: rtc.Room, pcm48: np.ndarray, stamps: dict[int, float] | None = None
) -> None:
    """Publish ``pcm48`` (48 kHz) in 10 ms frames paced by the loop clock (no deep queue)."""
    source = rtc.AudioSource(ROOM_RATE, 1, queue_size_ms=40)
    track = rtc.LocalAudioTrack.create_audio_track("bench", source)
    await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )
    n = ROOM_RATE // 100
    loop = asyncio.get_running_loop()
    start = loop.time()
    i = 0
    while True:
        delay = start + i * 0.010 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        off = (i * n) % len(pcm48)  # len(pcm48) is a multiple of 10 ms
        if stamps is not None:
            stamps[i * n] = time.monotonic()
        frame = pcm48[off : off + n]
        await source.capture_frame(rtc.AudioFrame(frame.tobytes(), ROOM_RATE, 1, n))
        i += 1


async def sdk_frames(track: rtc.Track, seconds: float) -> list[tuple[float, np.ndarray]]:
    stream = rtc.AudioStream(track, sample_rate=ROOM_RATE, num_channels=1)
    out: list[tuple[float, np.ndarray]] = []
    end = time.monotonic() + seconds
    try:
        async for ev in stream:
            out.append((time.monotonic(), np.frombuffer(ev.frame.data, np.int16).copy()))
            if time.monotonic() > end:
                break
    finally:
        await stream.aclose()
    return out


@dataclass
class Stack:
    """The appliance under test. ``ports[i]`` is where phones send the calls meant for worker
    ``i`` (its own port in direct mode, the front's port for all in front mode); ``workers`` are
    the workers' SIP ports."""

    server: Server
    ports: list[int]
    workers: list[int] = field(default_factory=list)
    front: bool = False

    def __post_init__(self) -> None:
        if not self.workers:
            self.workers = list(self.ports)


def start_stack(
    tmp: Path,
    numbers: list[str],
    workers: int,
    log_level: str = "warning",
    front: bool = False,
    **sip: Any,
) -> Stack:
    """``roomline serve`` with ``workers`` direct-mode workers, or with ``front`` that many
    loopback workers behind the Kamailio front (as deployed); ``sip`` adds ``sip.*`` keys."""
    for attempt in range(3):  # free ports are picked independently and may collide
        section, ws = sip_section(numbers, workers=0 if front else workers)
        if front:
            front_port = free_port()
            base = free_block(workers)
            rtp = free_udp_range(40 * workers)
            section.update(
                workers=workers,
                port=front_port,
                worker_base_port=base,
                rtp_port_start=rtp[0],
                rtp_port_end=rtp[1],
            )
        section.update(sip)
        try:
            server = start_server(tmp, sip=section, logging={"level": log_level, "format": "json"})
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        if front:
            return Stack(server, [front_port] * workers, [base + i for i in range(workers)], True)
        return Stack(server, ws.sip_ports)
    raise AssertionError("unreachable")


def front_pids(server: Server) -> list[int]:
    """The Kamailio processes (the SIP front) under ``server``, from /proc."""
    out = []
    for pid in descendants(server.process.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "kamailio":
                out.append(pid)
        except OSError:
            continue  # exited meanwhile
    return out


async def wait_workers(stack: Stack) -> None:
    from roomline_harness.sip.fullstack import worker_metric

    def ready() -> bool:
        return all(
            worker_metric(stack.server, "roomline_sip_worker_max_calls", p) > 0
            for p in stack.workers
        )

    await wait_for(ready, 30, "workers ready")
    if stack.front:
        await asyncio.sleep(3.0)  # the front marks each worker up once it answers OPTIONS


# --- the benchmarks ------------------------------------------------------------------------------
async def bench_invite(stack: Stack, n: int) -> None:
    times = []
    for i in range(n):
        ua = SipUA(f"+1555300{i:04d}")
        await ua.open()
        try:
            times.append(await ua.call(stack.ports[0], "+15550601"))
            await asyncio.sleep(0.05)
            await ua.hangup(stack.ports[0])
        finally:
            ua.close()
        await asyncio.sleep(0.2)
    describe("INVITE -> 200 OK", times)


async def bench_latency(stack: Stack, seconds: float) -> None:
    number = "+15550602"
    web = await connect(stack.server.ws_url, token("probe", room_for(number)))
    ua = SipUA("+15553100001")
    await ua.open()
    try:
        await ua.call(stack.ports[0], number)
        ident = f"sip_{ua.caller}"
        up = asyncio.create_task(ua.stream(bursts(seconds + 3, RATE)))
        await wait_for(lambda: subscribed_audio(web, ident) is not None, 15, "caller track")
        track = subscribed_audio(web, ident)
        assert track is not None
        frames = await sdk_frames(track, seconds)
        up.cancel()
        # phone -> room: the packet that starts a burst vs the SDK frame where it starts
        period = int(0.5 * RATE)
        tx_up = sorted(t for s, t in ua.sent_at.items() if s > 0 and s % period == 0)
        lat_up = []
        for k in range(1, len(frames)):
            if _loud(frames[k][1]) and not _loud(frames[k - 1][1]):
                lat_up += _match(frames[k][0], tx_up)
        # room -> phone: bursts published by the SDK, onsets in the PCMU the phone receives
        pcm48 = bursts(2.0, ROOM_RATE)
        n = ROOM_RATE // 100
        loud_starts = {
            s
            for s in range(n, len(pcm48), n)
            if _loud(pcm48[s : s + n]) and not _loud(pcm48[s - n : s])
        }
        stamps: dict[int, float] = {}
        ua.received.clear()
        silence = asyncio.create_task(ua.stream(np.zeros(int((seconds + 4) * RATE), np.int16)))
        pub = asyncio.create_task(publisher(web, pcm48, stamps))
        await asyncio.sleep(seconds + 1)
        pub.cancel()
        silence.cancel()
        tx_down = sorted(t for s, t in stamps.items() if s % len(pcm48) in loud_starts)
        lat_down = []
        rx = ua.received
        for k in range(1, len(rx)):
            if _loud(rx[k].pcm) and not _loud(rx[k - 1].pcm):
                on = onsets(rx[k].pcm, RATE, quiet=0.0)[0]
                # exclude the phone leg's packetisation: the onset waited for the packet's rest
                lat_down += _match(rx[k].t - (SAMPLES - on) / RATE, tx_down)
        # baseline: the same bursts SDK -> SFU -> SDK (both WebRTC endpoints, no bridge)
        talker = await connect(stack.server.ws_url, token("talker", room_for(number)))
        stamps.clear()
        pub = asyncio.create_task(publisher(talker, pcm48, stamps))
        await wait_for(lambda: subscribed_audio(web, "talker") is not None, 15, "talker")
        track2 = subscribed_audio(web, "talker")
        assert track2 is not None
        frames2 = await sdk_frames(track2, seconds)
        pub.cancel()
        await talker.disconnect()
        tx_sdk = sorted(t for s, t in stamps.items() if s % len(pcm48) in loud_starts)
        lat_sdk = []
        for k in range(1, len(frames2)):
            if _loud(frames2[k][1]) and not _loud(frames2[k - 1][1]):
                lat_sdk += _match(frames2[k][0], tx_sdk)
        # phone -> room -> phone: both ends are bridge legs, no WebRTC endpoint involved
        ub = SipUA("+15553100002")
        await ub.open()
        try:
            await ub.call(stack.ports[0], number)
            keep_b = asyncio.create_task(ub.stream(np.zeros(int((seconds + 4) * RATE), np.int16)))
            await asyncio.sleep(1.0)
            ua.sent_at.clear()
            ub.received.clear()
            await ua.stream(bursts(seconds, RATE))
            keep_b.cancel()
            await ub.hangup(stack.ports[0])
        finally:
            ub.close()
        tx_pp = sorted(t for s, t in ua.sent_at.items() if s > 0 and s % period == 0)
        lat_pp = []
        rx = ub.received
        for k in range(1, len(rx)):
            if _loud(rx[k].pcm) and not _loud(rx[k - 1].pcm):
                on = onsets(rx[k].pcm, RATE, quiet=0.0)[0]
                lat_pp += _match(rx[k].t - (SAMPLES - on) / RATE, tx_pp)
        describe("SDK -> SFU -> SDK (baseline)", lat_sdk)
        describe("phone -> room -> phone", lat_pp)
        describe("phone -> room (SDK frame)", lat_up)
        describe("room (SDK capture) -> phone", lat_down)
        await ua.hangup(stack.ports[0])
    finally:
        ua.close()
        await web.disconnect()


def _loud(pcm: np.ndarray) -> bool:
    return len(pcm) > 0 and bool(np.max(np.abs(pcm.astype(np.int32))) > 3000)


def _match(t_rx: float, tx: list[float]) -> list[float]:
    """Latency (ms) to the latest send instant before ``t_rx`` (bursts are 500 ms apart)."""
    cands = [t for t in tx if t <= t_rx and t_rx - t < 0.4]
    return [(t_rx - cands[-1]) * 1000] if cands else []


async def bench_capacity(stack: Stack, calls: int, seconds: float) -> None:
    pids = [worker_pid(stack.server, p) for p in stack.workers]
    assert all(pids), pids
    main_pid = stack.server.process.pid
    fpids = front_pids(stack.server) if stack.front else []

    def cpu() -> tuple[float, float]:
        # the front (Kamailio, signalling only) counts with the main process
        main = cpu_seconds(main_pid) + sum(cpu_seconds(p) for p in fpids)
        return sum(cpu_seconds(p) for p in pids if p), main

    w0, m0 = cpu()
    t0 = time.monotonic()
    await asyncio.sleep(5)
    w1, m1 = cpu()
    dt = time.monotonic() - t0
    idle_w, idle_m = (w1 - w0) / dt, (m1 - m0) / dt
    speech8 = speech_like(seconds + 20, RATE, seed=3)
    speech48 = speech_like(4.0, ROOM_RATE, seed=5)
    rooms, uas, tasks = [], [], []
    try:
        for i in range(calls):
            number = f"+155507{i:05d}"
            web = await connect(stack.server.ws_url, token(f"peer{i}", room_for(number)))
            rooms.append(web)
            tasks.append(asyncio.create_task(publisher(web, speech48)))
            ua = SipUA(f"+155532{i:05d}")
            await ua.open()
            uas.append(ua)
            await ua.call(stack.ports[i // 4 % len(stack.ports)], number)
            tasks.append(asyncio.create_task(ua.stream(speech8)))
        await asyncio.sleep(3)
        w0, m0 = cpu()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        w1, m1 = cpu()
        dt = time.monotonic() - t0
        busy_w, busy_m = (w1 - w0) / dt, (m1 - m0) / dt
        heard = [len(u.received) / (dt + 3 + 1) for u in uas]
        per_call_w = (busy_w - idle_w) / calls
        per_call_m = (busy_m - idle_m) / calls
        print(
            f"capacity: {calls} calls on {len(pids)} workers, {dt:.1f} s window; "
            f"phone legs received {statistics.median(heard):.0f} pkt/s (median)"
        )
        print(f"  workers idle {idle_w * 100:5.1f} % of a core, busy {busy_w * 100:5.1f} %")
        print(f"  main    idle {idle_m * 100:5.1f} % of a core, busy {busy_m * 100:5.1f} %")
        print(
            f"  per call: worker {per_call_w * 100:4.1f} % -> {1 / per_call_w:5.1f} calls/core"
            f" (bridge only); + main process {per_call_m * 100:4.1f} % -> "
            f"{1 / (per_call_w + per_call_m):5.1f} calls/core all-in"
        )
    finally:
        for t in tasks:
            t.cancel()
        for ua, i in zip(uas, range(calls), strict=False):
            await ua.hangup(stack.ports[i // 4 % len(stack.ports)])
            ua.close()
        for web in rooms:
            await web.disconnect()


async def bench_pesq(stack: Stack, loss: float, seconds: float) -> float:
    from pesq import pesq

    number = "+15550603" if loss == 0 else "+15550604"
    ref = speech_like(seconds, RATE, seed=11)
    a, b = SipUA("+15553300001"), SipUA("+15553300002")
    await a.open()
    await b.open()
    try:
        await b.call(stack.ports[0], number)
        await a.call(stack.ports[0], number)
        keep_b = asyncio.create_task(b.stream(np.zeros(int((seconds + 4) * RATE), np.int16)))
        await asyncio.sleep(1.0)  # both subscribed before A talks
        b.received.clear()
        lead = np.zeros(RATE // 2, np.int16)
        await a.stream(np.concatenate([lead, ref, lead]), loss=loss)
        await asyncio.sleep(0.5)
        keep_b.cancel()
        deg = b.received_pcm().astype(np.float64)
        # align by cross-correlation (PESQ also aligns, but only within a limited range)
        r = ref.astype(np.float64)
        corr = np.correlate(deg, r[: RATE * 2], mode="valid")
        off = int(np.argmax(np.abs(corr)))
        deg = deg[off : off + len(r)]
        if len(deg) < len(r):
            deg = np.pad(deg, (0, len(r) - len(deg)))
        score = float(pesq(RATE, r, deg, "nb"))
        # PESQ is tuned for real speech: this synthetic signal scores low even through G.711
        # alone, so print that ceiling next to the measured path.
        g711 = ulaw_to_linear(linear_to_ulaw(ref).tobytes()).astype(np.float64)
        ceiling = float(pesq(RATE, r, g711, "nb"))
        print(
            f"PESQ NB phone -> room -> phone, {loss * 100:.0f} % uplink loss: {score:.2f}"
            f"  (G.711 encode+decode alone: {ceiling:.2f})"
        )
        await a.hangup(stack.ports[0])
        await b.hangup(stack.ports[0])
        return score
    finally:
        a.close()
        b.close()


def use_server_tree(tree: str) -> None:
    """Run the appliance from another checkout (an A/B against an older commit).

    The appliance is started with cwd = the repository root and workers run as
    ``python -m bridge.worker`` (cwd first on sys.path): point both at the other tree.
    """
    import roomline_harness.server

    os.environ["PYTHONPATH"] = tree
    roomline_harness.server.ROOT = Path(tree)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=8, help="concurrent calls for the capacity run")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--invites", type=int, default=30)
    ap.add_argument("--only", choices=("invite", "latency", "capacity", "pesq"))
    ap.add_argument(
        "--narrowband", action="store_true", help="sip.wideband: false (8 kHz bridge, G.711 only)"
    )
    ap.add_argument(
        "--server-tree", default="", help="PYTHONPATH of the appliance (e.g. another worktree)"
    )
    ap.add_argument(
        "--front", action="store_true", help="phones call the Kamailio front (front mode)"
    )
    a = ap.parse_args()
    if a.server_tree:
        use_server_tree(a.server_tree)
    numbers = ["+15550601", "+15550602", "+15550603", "+15550604"]
    numbers += [f"+155507{i:05d}" for i in range(a.calls)]
    workers = max(1, -(-a.calls // 4))
    with tempfile.TemporaryDirectory(prefix="rlbench") as tmp:
        sip: dict[str, Any] = {"wideband": False} if a.narrowband else {}
        stack = start_stack(Path(tmp), numbers, workers, front=a.front, **sip)
        try:
            await wait_workers(stack)
            if a.only in (None, "invite"):
                await bench_invite(stack, a.invites)
            if a.only in (None, "latency"):
                await bench_latency(stack, a.seconds)
            if a.only in (None, "pesq"):
                await bench_pesq(stack, 0.0, 8.0)
                await bench_pesq(stack, 0.03, 8.0)
            if a.only in (None, "capacity"):
                await asyncio.sleep(3)
                await bench_capacity(stack, a.calls, a.seconds)
        finally:
            stop_server(stack.server)


if __name__ == "__main__":
    asyncio.run(main())

"""Concurrent outbound calls with audio both ways: CPU per call (``bench_outbound.py --concurrent``).

N calls are placed with ``CreateSIPParticipant`` at once, each into its own room where a LiveKit
SDK peer (bench process) publishes a 440 Hz tone. The callee is :class:`MediaUas`: a UDP UAS in the
bench process that answers every INVITE with its own RTP socket, streams a 1 kHz PCMU tone (50
packets/s) and keeps what it receives. With every call active, the CPU of the bridge workers and of
the main process (/proc utime+stime) is taken over a window; then each direction is checked: the
SDK peer hears 1 kHz from its callee, the callee hears 440 Hz and got ~50 packets/s.

"All-in" per call = busy CPU of all workers + the main process (idle included, as in the bridge
figures of bench/README.md) / N; the main process carries the SDK peers' WebRTC legs (aiortc, SRTP)
as it would for browsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import time
from collections import deque

import numpy as np
from livekit import api, rtc

from bench.bench_outbound import Uas
from bench.bench_sip import ulaw_to_linear
from roomline_harness.audio import dominant_frequency
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.outbound import Ports
from roomline_harness.server import API_KEY, API_SECRET, Server
from roomline_harness.sip.fullstack import cpu_seconds, worker_pid
from roomline_harness.sip.pcap import linear_to_ulaw

RATE_8K = 8000
#: One second of the callee's 1 kHz tone as PCMU, sent 160 bytes (20 ms) per packet.
_TONE = linear_to_ulaw(
    (8000 * np.sin(2 * np.pi * 1000 * np.arange(RATE_8K) / RATE_8K)).astype(np.int16)
).tobytes()


class RtpLeg(asyncio.DatagramProtocol):
    """The callee's media: sends the 1 kHz PCMU tone to the offer's address, keeps what arrives."""

    def __init__(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.recent: deque[bytes] = deque(maxlen=100)  # last 2 s of PCMU payloads
        self._seq = 0
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        start = time.monotonic()
        ssrc = 0x1234ABCD
        while self.transport is not None:
            n = self._seq
            off = (n * 160) % RATE_8K
            payload = _TONE[off : off + 160]
            header = struct.pack("!BBHII", 0x80, 0, n & 0xFFFF, n * 160 & 0xFFFFFFFF, ssrc)
            self.transport.sendto(header + payload, self.remote)
            self._seq += 1
            await asyncio.sleep(max(0.0, start + self._seq * 0.02 - time.monotonic()))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 12 and data[1] & 0x7F == 0:
            self.received += 1
            self.recent.append(data[12:])

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class MediaUas(Uas):
    """:class:`Uas` whose 200 OK offers a real RTP socket per call (:class:`RtpLeg`)."""

    def __init__(self) -> None:
        super().__init__()
        self.legs: dict[str, RtpLeg] = {}
        self._offers: dict[str, tuple[str, int]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        head, _, body = text.partition("\r\n\r\n")
        if head.startswith("INVITE "):
            cid = re.search(r"^Call-ID:\s*(\S+)", head, re.M | re.I)
            ip = re.search(r"^c=IN IP4 (\S+)", body, re.M)
            port = re.search(r"^m=audio (\d+)", body, re.M)
            if cid and ip and port:
                self._offers[cid.group(1)] = (ip.group(1), int(port.group(1)))
        elif head.startswith("BYE "):
            cid = re.search(r"^Call-ID:\s*(\S+)", head, re.M | re.I)
            leg = self.legs.get(cid.group(1)) if cid else None
            if leg is not None:
                leg.close()
        super().datagram_received(data, addr)

    def _answer(self, hdrs: list[str], addr: tuple[str, int], call_id: str) -> None:
        asyncio.get_running_loop().create_task(self._answer_with_media(hdrs, addr, call_id))

    async def _answer_with_media(self, hdrs: list[str], addr: tuple[str, int], cid: str) -> None:
        remote = self._offers.get(cid, ("127.0.0.1", 9))
        loop = asyncio.get_running_loop()
        _t, leg = await loop.create_datagram_endpoint(
            lambda: RtpLeg(remote), local_addr=("127.0.0.1", 0)
        )
        self.legs[cid] = leg
        port = _t.get_extra_info("sockname")[1]
        sdp = (
            "v=0\r\no=uas 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
        )
        self._reply(hdrs, addr, "200 OK", sdp)
        self.answers[cid] = time.monotonic()

    def close(self) -> None:
        for leg in self.legs.values():
            leg.close()


async def _cpu(pids: list[int], seconds: float) -> list[float]:
    """Each pid's CPU (fraction of one core) over ``seconds``."""
    c0, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
    await asyncio.sleep(seconds)
    dt = time.monotonic() - t0
    return [(cpu_seconds(p) - c) / dt for p, c in zip(pids, c0, strict=True)]


async def run_capacity(server: Server, ports: Ports, calls: int, seconds: float) -> None:
    """Place ``calls`` concurrent calls with audio both ways; print CPU per call and checks."""
    loop = asyncio.get_running_loop()
    transport, uas = await loop.create_datagram_endpoint(
        MediaUas, local_addr=("127.0.0.1", ports.base + 166)
    )
    workers = [worker_pid(server, ports.worker_sip(i)) for i in range(2)]
    wpids = [p for p in workers if p is not None]
    main_pid = server.process.pid
    idle = await _cpu([*wpids, main_pid], 3.0)
    lk = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    rooms: list[rtc.Room] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            trunk = await lk.sip.create_outbound_trunk(
                api.CreateSIPOutboundTrunkRequest(
                    trunk=api.SIPOutboundTrunkInfo(
                        name="cap", address=f"127.0.0.1:{uas.port}", numbers=["+15550001000"]
                    )
                )
            )
            for i in range(calls):
                room = await connect(server.ws_url, token(f"peer{i}", f"bench-cap-{i}"))
                rooms.append(room)
                await stack.enter_async_context(tone_publisher(room, 440.0))
            await asyncio.gather(
                *(
                    lk.sip.create_sip_participant(
                        api.CreateSIPParticipantRequest(
                            sip_trunk_id=trunk.sip_trunk_id,
                            sip_call_to=f"+1555200{i:04d}",
                            room_name=f"bench-cap-{i}",
                            participant_identity="callee",
                            wait_until_answered=True,
                        )
                    )
                    for i in range(calls)
                )
            )
            await asyncio.sleep(2.0)  # jitter buffers settle
            rx0 = {cid: leg.received for cid, leg in uas.legs.items()}
            t0 = time.monotonic()
            busy = await _cpu([*wpids, main_pid], seconds)
            dt = time.monotonic() - t0
            rates = [(leg.received - rx0.get(cid, 0)) / dt for cid, leg in uas.legs.items()]
            callee_hears = [
                dominant_frequency(ulaw_to_linear(b"".join(leg.recent)), RATE_8K)
                for leg in uas.legs.values()
            ]
            sdk_hears: list[float] = []
            for room in rooms:
                track = subscribed_audio(room, "callee")
                if track is None:
                    sdk_hears.append(0.0)
                    continue
                pcm = await asyncio.wait_for(record(track, 1.0, skip=0.2), 10)
                sdk_hears.append(dominant_frequency(pcm, 48000))
    finally:
        for room in rooms:
            await room.disconnect()
        await lk.aclose()
        uas.close()
        transport.close()
    idle_w, busy_w = sum(idle[:-1]), sum(busy[:-1])
    idle_m, busy_m = idle[-1], busy[-1]
    per_call_w = (busy_w - idle_w) / calls
    all_in = (busy_w + busy_m) / calls
    ok_rx = sum(1 for f, r in zip(callee_hears, rates, strict=True) if abs(f - 440) < 10 and r > 45)
    ok_sdk = sum(1 for f in sdk_hears if abs(f - 1000) < 10)
    print(f"concurrent outbound calls: {calls} on {len(wpids)} workers, {dt:.1f} s window")
    print(f"  workers: idle {idle_w * 100:5.1f} %  busy {busy_w * 100:5.1f} % of a core")
    print(f"  main:    idle {idle_m * 100:5.1f} %  busy {busy_m * 100:5.1f} % of a core")
    print(f"  worker marginal per call {per_call_w * 100:.2f} % of a core")
    print(
        f"  all-in per call {all_in * 100:.2f} % -> {1 / all_in:.1f} calls/core "
        f"(workers only, marginal: {1 / per_call_w if per_call_w > 0 else float('inf'):.1f})"
    )
    print(
        f"  callee hears 440 Hz at >45 pkt/s: {ok_rx}/{calls} "
        f"(pkt/s {min(rates):.1f}..{max(rates):.1f}; Hz {[round(f) for f in callee_hears]}); "
        f"SDK hears 1 kHz: {ok_sdk}/{calls} (Hz {[round(f) for f in sdk_hears]})"
    )

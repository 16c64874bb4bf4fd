"""Forwarding cost of the SFU media plane: CPU µs per forwarded packet, packets/s per core.

Two processes on loopback, both on uvloop, all media over SRTP:

* the **SFU process** (measured): one aiortc PC per publisher and one per subscriber, wired with
  the functions the ``/rtc`` session uses (``sfu.rtc.tracks``), so each packet takes the production
  path: ``PublishedTrackTap`` → ``TrackRelay.on_rtp`` → per subscriber ``SubscriberSender.send``
  (``DownTrack.forward`` rewrite, SRTP protect, UDP send). Signalling is not involved;
* the **client process** (this one): N publisher PCs sending 50 packets/s of Opus-sized payloads
  (pre-encoded ``av.Packet``s, so no encoder cost), and N×M subscriber PCs that count packets with a
  tap (no decoding).

The SFU samples ``time.process_time()`` (user+sys CPU of the whole SFU process, so idle PC upkeep
such as RTCP and ICE consent is included) and its forwarded-packet counter every window; we print
median and p99 over windows of µs/packet, packets/s per core and the ratio to roomline's design
target of 20,000 forwarded packets/s per core.

    .venv/bin/python bench/bench_forwarding.py --publishers 3 --subscribers 50 --seconds 15
    .venv/bin/python bench/bench_forwarding.py --ports 31000-31999   # ICE ports (SFU | clients)
    .venv/bin/python bench/bench_forwarding.py --micro      # in-process per-step costs
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import multiprocessing as mp
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av  # noqa: E402
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection  # noqa: E402
from aiortc import RTCSessionDescription as SDP  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402

from sfu.media.aiortc import PublishedTrackTap, SubscriberSender, configure_ice  # noqa: E402
from sfu.media.forwarder import SourcePacket  # noqa: E402
from sfu.relay import TrackRelay  # noqa: E402
from sfu.rtc.tracks import relay_published_track, subscribe_to_relay  # noqa: E402

TARGET_PPS = 20_000
PAYLOAD_BYTES = 80  # Opus ~32 kbit/s, 20 ms
PTIME = 0.02


def config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])


PortRange = tuple[int, int] | None


def split_ports(spec: str | None) -> tuple[PortRange, PortRange]:
    """``"LO-HI"`` → (SFU half, client half); None → OS-chosen ports on both sides."""
    if not spec:
        return None, None
    lo, _, hi = spec.partition("-")
    start, end = int(lo), int(hi)
    mid = (start + end) // 2
    if end - start < 3:
        raise ValueError(f"port range {spec} is too small")
    return (start, mid), (mid + 1, end)


def pctl(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class StampTrack(MediaStreamTrack):
    """Pre-encoded 'Opus' packets every 20 ms; the payload starts with CLOCK_MONOTONIC in ns."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._t0: float | None = None
        self._filler = bytes(PAYLOAD_BYTES - 8)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            wait = self._t0 + self._n * PTIME - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pkt = av.Packet(struct.pack("!Q", time.monotonic_ns()) + self._filler)
        pkt.pts = self._n * 960
        pkt.time_base = fractions.Fraction(1, 48000)
        self._n += 1
        return pkt


# ================================================================================ SFU process


def sfu_process(conn: Connection, port_range: PortRange) -> None:
    import uvloop

    uvloop.run(_sfu_main(conn, port_range))


async def _sfu_main(conn: Connection, port_range: PortRange) -> None:
    configure_ice(["127.0.0.1"], port_range)
    loop = asyncio.get_running_loop()
    pcs: list[RTCPeerConnection] = []
    relays: dict[int, TrackRelay] = {}
    pending: dict[str, RTCPeerConnection] = {}
    subs: list[SubscriberSender] = []

    def forwarded() -> int:
        return sum(s.downtrack.stats.packets for s in subs if s.downtrack is not None)

    while True:
        msg = await loop.run_in_executor(None, conn.recv)
        op = msg[0]
        if op == "publish":
            _, idx, offer = msg
            pc = RTCPeerConnection(config())
            pcs.append(pc)

            def on_track(
                track: MediaStreamTrack, pc: RTCPeerConnection = pc, idx: int = idx
            ) -> None:
                tap = PublishedTrackTap.from_track(pc, track)
                relays[idx] = relay_published_track(tap, f"TR_pub{idx}", f"PA_pub{idx}")

            pc.on("track", on_track)
            await pc.setRemoteDescription(SDP(offer, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            conn.send(pc.localDescription.sdp)
        elif op == "subscribe":
            _, pub_idx, key = msg
            pc = RTCPeerConnection(config())
            pcs.append(pc)
            subs.append(subscribe_to_relay(pc, relays[pub_idx], f"PA_sub{key}"))
            await pc.setLocalDescription(await pc.createOffer())
            pending[key] = pc
            conn.send(pc.localDescription.sdp)
        elif op == "answer":
            _, key, answer = msg
            await pending.pop(key).setRemoteDescription(SDP(answer, "answer"))
            conn.send("ok")
        elif op == "measure":
            _, seconds, window = msg
            windows = []
            c0, p0, w0 = time.process_time(), forwarded(), time.monotonic()
            end = w0 + seconds
            while time.monotonic() < end:
                await asyncio.sleep(window)
                c1, p1, w1 = time.process_time(), forwarded(), time.monotonic()
                windows.append((c1 - c0, p1 - p0, w1 - w0))
                c0, p0, w0 = c1, p1, w1
            conn.send(windows)
        elif op == "pause":
            for s in subs:
                s.pause() if msg[1] else s.resume()
            conn.send("ok")
        elif op == "stats":
            conn.send(
                {
                    "forwarded": forwarded(),
                    "not_ready": sum(s.dropped_not_ready for s in subs),
                    "send_errors": sum(s.send_errors for s in subs),
                }
            )
        elif op == "stop":
            for pc in pcs:
                await pc.close()
            conn.send("ok")
            return


# ============================================================================= client side


class Harness:
    """Client side: publishers and counting subscribers connected through the SFU process."""

    def __init__(self, sfu_ports: PortRange = None) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=sfu_process, args=(child, sfu_ports), daemon=True)
        self.proc.start()
        self.pcs: list[RTCPeerConnection] = []
        self.received = 0
        self.latencies_ns: list[int] = []
        self.record_latency = False
        self._lock = asyncio.Lock()

    async def rpc(self, *msg: Any) -> Any:
        async with self._lock:  # one request in flight on the pipe
            self.conn.send(msg)
            return await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)

    async def add_publisher(self, idx: int) -> None:
        pc = RTCPeerConnection(config())
        self.pcs.append(pc)
        pc.addTransceiver(StampTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self.rpc("publish", idx, pc.localDescription.sdp)
        await pc.setRemoteDescription(SDP(answer, "answer"))

    def _on_rtp(self, pkt: SourcePacket) -> None:
        self.received += 1
        if self.record_latency:
            off = pkt.view.payload_offset
            (sent,) = struct.unpack_from("!Q", pkt.data, off)
            self.latencies_ns.append(time.monotonic_ns() - sent)

    async def add_subscriber(self, pub_idx: int, key: str) -> None:
        pc = RTCPeerConnection(config())
        self.pcs.append(pc)

        def on_track(track: MediaStreamTrack) -> None:
            PublishedTrackTap.from_track(pc, track, self._on_rtp)

        pc.on("track", on_track)
        offer = await self.rpc("subscribe", pub_idx, key)
        await pc.setRemoteDescription(SDP(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.rpc("answer", key, pc.localDescription.sdp)

    async def setup(self, publishers: int, subscribers: int) -> None:
        for p in range(publishers):
            await self.add_publisher(p)
        await asyncio.sleep(0.5)  # let the publisher tracks appear in the SFU
        keys = [(p, f"{p}_{s}") for p in range(publishers) for s in range(subscribers)]
        for i in range(0, len(keys), 10):
            await asyncio.gather(*(self.add_subscriber(p, k) for p, k in keys[i : i + 10]))
        expected = publishers * subscribers * 50 * 0.8
        deadline = time.monotonic() + 60
        while True:
            before = self.received
            await asyncio.sleep(1.0)
            if self.received - before >= expected or time.monotonic() > deadline:
                break

    async def close(self) -> None:
        await self.rpc("stop")
        for pc in self.pcs:
            await pc.close()
        self.proc.join(10)


def summarize(windows: list[tuple[float, int, float]]) -> dict[str, float]:
    us = [c / p * 1e6 for c, p, _ in windows if p]
    pps = [p / w for _, p, w in windows]
    cpu = [c / w * 100 for c, _, w in windows]
    per_core = [1e6 / u for u in us]
    return {
        "us_median": statistics.median(us),
        "us_p99": pctl(us, 0.99),
        "pps": statistics.median(pps),
        "cpu_pct": statistics.median(cpu),
        "per_core_median": statistics.median(per_core),
        "per_core_p1": pctl(per_core, 0.01),
    }


async def run(
    publishers: int, subscribers: int, seconds: float, window: float, sfu_ports: PortRange
) -> None:
    h = Harness(sfu_ports)
    try:
        t0 = time.monotonic()
        await h.setup(publishers, subscribers)
        print(
            f"setup: {publishers} publishers x {subscribers} subscribers "
            f"({publishers * (subscribers + 1)} SFU PCs) in {time.monotonic() - t0:.1f}s"
        )
        windows = await h.rpc("measure", seconds, window)
        stats = await h.rpc("stats")
        if not any(p for _, p, _ in windows):
            print(f"nothing was forwarded while measuring (SFU stats {stats}); no figures")
            return
        # Same PCs, publishers still sending, every subscriber paused: the SFU's upkeep cost
        # (RTCP, ICE consent, receiving) without forwarding; the difference is the forwarding cost.
        await h.rpc("pause", True)
        idle = await h.rpc("measure", max(3.0, seconds / 3), window)
        await h.rpc("pause", False)
        s = summarize(windows)
        mean_w = statistics.mean(w for _, _, w in windows)
        print(f"windows: {len(windows)} x {mean_w:.2f}s (asked {window:.1f}s); SFU stats {stats}")
        print(f"forwarded pkt/s (median window): {s['pps']:.0f}")
        print(f"SFU CPU: {s['cpu_pct']:.1f}% of one core (median window)")
        print(f"CPU µs per forwarded packet: median {s['us_median']:.1f}  p99 {s['us_p99']:.1f}")
        idle_cpu = statistics.median(c / w for c, _, w in idle)
        marginal = [(c - idle_cpu * w) / p * 1e6 for c, p, w in windows if p]
        print(
            f"SFU CPU with all subscribers paused (upkeep): {idle_cpu * 100:.1f}% -> marginal "
            f"forwarding cost: median {statistics.median(marginal):.1f} µs/pkt "
            f"({1e6 / statistics.median(marginal):.0f} pkt/s per core)"
        )
        print(
            f"forwarded pkt/s per core: median {s['per_core_median']:.0f}  "
            f"worst window {s['per_core_p1']:.0f}  "
            f"ratio to {TARGET_PPS} target: {s['per_core_median'] / TARGET_PPS:.2f}"
        )
    finally:
        await h.close()


# ============================================================================= micro bench


def micro() -> None:
    """Per-step costs of the hot path, in-process (no sockets)."""
    import pylibsrtp

    from sfu.media.forwarder import DownTrack, SourceInfo
    from sfu.media.rtp import ExtensionWriter, ntp_timestamp, parse_rtp

    data = bytes.fromhex("90e0" + "1234" + "00000001" + "deadbeef") + bytes.fromhex(
        "bede0001" + "10" + "30" + "20" + "0c"
    )
    data += bytes(PAYLOAD_BYTES)
    src = SourceInfo("audio", "audio/opus", 48000, 96, audio_level_id=2)
    dt = DownTrack("audio", 1234, {96: 111}, ExtensionWriter("0", 1, 2), 48000)
    pkt = SourcePacket(src, data)
    now = ntp_timestamp(time.time())
    key = os.urandom(30)
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True  # the same packet is protected repeatedly below
    session = pylibsrtp.Session(policy=policy)
    out = dt.forward(pkt, now)
    assert out is not None
    steps: list[tuple[str, Callable[[], object]]] = [
        ("parse_rtp", lambda: parse_rtp(data)),
        ("SourcePacket (parse + level + keyframe)", lambda: SourcePacket(src, data)),
        ("DownTrack.forward (rewrite)", lambda: dt.forward(pkt, now)),
        ("ntp_timestamp(time.time())", lambda: ntp_timestamp(time.time())),
        ("pylibsrtp protect", lambda: session.protect(out)),
    ]
    n = 200_000
    for name, fn in steps:
        best = min(_timeit(fn, n) for _ in range(3))
        print(f"{name:45s} {best * 1e6:6.2f} µs")


def _timeit(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--publishers", type=int, default=3)
    ap.add_argument("--subscribers", type=int, default=50, help="per publisher")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument(
        "--ports",
        help="UDP range LO-HI for ICE: the lower half for the SFU, the upper half for the clients "
        "(default: OS-chosen ports)",
    )
    ap.add_argument("--micro", action="store_true", help="in-process per-step microbenchmarks")
    args = ap.parse_args()
    if args.micro:
        micro()
        return
    import uvloop

    sfu_ports, client_ports = split_ports(args.ports)
    configure_ice(["127.0.0.1"], client_ports)
    uvloop.run(run(args.publishers, args.subscribers, args.seconds, args.window, sfu_ports))


if __name__ == "__main__":
    main()

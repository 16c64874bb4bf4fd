"""One-way latency the SFU forwarder adds, publisher → subscriber on loopback.

Each publisher packet carries CLOCK_MONOTONIC (ns, system-wide on Linux) in its first payload bytes;
the subscriber's tap subtracts it from its own CLOCK_MONOTONIC on arrival. Measured twice:

* **direct**: publisher PC → subscriber PC in this process (aiortc send + SRTP + loopback + receive);
* **via SFU**: publisher → SFU process (tap → TrackRelay → SubscriberSender) → subscriber.

"Added" = via-SFU − direct, for the median and p99 of per-packet latencies. Run idle (few
subscribers) and under load (``--subscribers 50``) to see queueing in the SFU's event loop.

    .venv/bin/python bench/bench_latency.py --subscribers 4 --seconds 10 [--ports 31000-31999]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc import MediaStreamTrack, RTCPeerConnection  # noqa: E402

from bench.bench_forwarding import (  # noqa: E402
    Harness,
    PortRange,
    StampTrack,
    config,
    pctl,
    split_ports,
)
from sfu.media.aiortc import PublishedTrackTap, configure_ice  # noqa: E402
from sfu.media.forwarder import SourcePacket  # noqa: E402


def describe(name: str, lat_ns: list[int]) -> tuple[float, float]:
    ms = [x / 1e6 for x in lat_ns]
    med, p99 = statistics.median(ms), pctl(ms, 0.99)
    print(
        f"{name:10s} n={len(ms):6d}  median {med:6.3f} ms  p99 {p99:6.3f} ms  max {max(ms):6.3f} ms"
    )
    return med, p99


async def direct(seconds: float) -> list[int]:
    pub, sub = RTCPeerConnection(config()), RTCPeerConnection(config())
    lat: list[int] = []
    recording = False

    def on_rtp(pkt: SourcePacket) -> None:
        if recording:
            (sent,) = struct.unpack_from("!Q", pkt.data, pkt.view.payload_offset)
            lat.append(time.monotonic_ns() - sent)

    def on_track(track: MediaStreamTrack) -> None:
        PublishedTrackTap.from_track(sub, track, on_rtp)

    sub.on("track", on_track)
    pub.addTransceiver(StampTrack(), direction="sendonly")
    await pub.setLocalDescription(await pub.createOffer())
    await sub.setRemoteDescription(pub.localDescription)
    await sub.setLocalDescription(await sub.createAnswer())
    await pub.setRemoteDescription(sub.localDescription)
    await asyncio.sleep(2.0)
    recording = True
    await asyncio.sleep(seconds)
    recording = False
    await pub.close()
    await sub.close()
    return lat


async def via_sfu(subscribers: int, seconds: float, sfu_ports: PortRange) -> list[int]:
    h = Harness(sfu_ports)
    try:
        await h.setup(1, subscribers)
        h.record_latency = True
        await asyncio.sleep(seconds)
        h.record_latency = False
        return h.latencies_ns
    finally:
        await h.close()


async def run(subscribers: int, seconds: float, sfu_ports: PortRange) -> None:
    d_med, d_p99 = describe("direct", await direct(seconds))
    s_med, s_p99 = describe("via SFU", await via_sfu(subscribers, seconds, sfu_ports))
    print(
        f"added by SFU ({subscribers} subscribers): median {s_med - d_med:.3f} ms, "
        f"p99 {s_p99 - d_p99:.3f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--ports",
        help="UDP range LO-HI for ICE: the lower half for the SFU, the upper half for the clients "
        "(default: OS-chosen ports)",
    )
    args = ap.parse_args()
    import uvloop

    sfu_ports, client_ports = split_ports(args.ports)
    configure_ice(["127.0.0.1"], client_ports)
    uvloop.run(run(args.subscribers, args.seconds, sfu_ports))


if __name__ == "__main__":
    main()

"""Join-to-first-audio through a running ``roomline serve``, with the real LiveKit Python SDK.

A publisher sends a continuous 440 Hz tone. N times, a fresh client connects and we time from the
start of ``Room.connect()`` to the first received audio frame that is not silence (the whole path a
user waits for: /rtc fallback, JoinResponse, subscriber PC, ICE, DTLS, renegotiation, first RTP,
decode). Prints median and p99 and the ratio to the 500 ms target.

    .venv/bin/python bench/bench_join.py [--joins 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from livekit import rtc  # noqa: E402

from roomline_harness.lk import connect, token, tone_publisher  # noqa: E402
from roomline_harness.server import start_server, stop_server  # noqa: E402

TARGET_MS = 500.0


async def one_join(url: str, room: str, identity: str) -> float:
    started = time.perf_counter()
    client = rtc.Room()
    got: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def listen(track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        async for ev in stream:
            pcm = np.frombuffer(ev.frame.data, dtype=np.int16)
            if np.abs(pcm).max(initial=0) > 1000:
                if not got.done():
                    got.set_result(time.perf_counter())
                break
        await stream.aclose()

    tasks: list[asyncio.Task[None]] = []
    client.on(
        "track_subscribed",
        lambda track, pub, part: tasks.append(asyncio.ensure_future(listen(track))),
    )
    await client.connect(url, token(identity, room))
    first = await asyncio.wait_for(got, 15)
    await client.disconnect()
    for task in tasks:
        task.cancel()
    return (first - started) * 1000


async def run(joins: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), logging={"level": "warning"})
        try:
            publisher = await connect(server.ws_url, token("tone", "bench-join"))
            async with tone_publisher(publisher, 440.0):
                await asyncio.sleep(1.0)
                times = []
                for i in range(joins):
                    times.append(await one_join(server.ws_url, "bench-join", f"joiner-{i}"))
                    await asyncio.sleep(0.2)
            await publisher.disconnect()
        finally:
            stop_server(server)
    times.sort()
    med = statistics.median(times)
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    print(f"join-to-first-audio over {joins} joins (SDK connect() → first non-silent frame)")
    print(
        f"  median {med:6.0f} ms   p99 {p99:6.0f} ms   min {times[0]:.0f} ms   max {times[-1]:.0f} ms"
    )
    print(f"  target p50 ≤ {TARGET_MS:.0f} ms → ratio {med / TARGET_MS:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--joins", type=int, default=20)
    asyncio.run(run(ap.parse_args().joins))


if __name__ == "__main__":
    main()

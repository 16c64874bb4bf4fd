"""Bridge media path at load: calls per core all-in, per-leg latency, underruns, codec ceiling.

    PYTHONPATH=. .venv/bin/python bench/bench_media.py --calls 16 --seconds 20

A real ``roomline serve`` with ``ceil(calls / 4)`` bridge workers (the wheel caps a worker at 4
calls). Every call sits in a room with a peer; the phones (this process, PCMU over UDP, absolute
20 ms pacing) stream speech-like audio all the time. Who the peer is (``--peer``):

* ``sip`` (default): calls come in pairs, both phones of a pair dial the same number. Every call
  encodes G.711 → Opus. Towards the phone, a caller on an 8 kHz worker plays its peer's µ-law
  sidecar (sfu/local/g711.py) and decodes no Opus; on a 16 kHz worker it decodes the peer's Opus.
* ``opus``: one phone per room, and a participant on the local channel (this process, not
  counted) publishes pre-encoded Opus speech into each room, as a browser or an agent would. So
  G.711 → Opus and Opus → G.711 (with the N−1 mix) both run for every call.

Printed:

* CPU of the workers and of the main process (/proc utime + stime, so the load of other
  processes on the host does not count), idle and busy, per call, and **calls per core all-in**;
  beside it the **codec-only ceiling** measured in this process in the same run: per call and
  20 ms, G.711 decode + Opus encode (16 kHz) + Opus decode (16 kHz) + G.711 encode.
* **Added latency per bridge leg** while the calls run: a probe phone and a probe participant on
  the local channel (this process, no WebRTC) in one room; 1 kHz bursts each way.
  phone → room: phone sends the RTP packet that starts a burst → the Opus packet whose decoded
  frame first contains it arrives at the probe participant. room → phone: probe sends the Opus
  packet that starts a burst → the PCMU packet with the onset arrives at the phone. The bridge
  relays whole 20 ms frames (the mix is made when the conference clock asks for a frame), so
  nothing waits for "the rest of the packet"; the older figure that subtracted the onset's
  position in its packet is still printed, but Opus's decoder delay puts the onset ~7 ms into
  the frame, so it under-reads (below zero with the 8 kHz bridge).
* Port underruns and room jitter-buffer stalls of every call (from the workers' end-of-call logs).

``--pesq`` runs only the speech-quality table (bench/pesq_live.py): PESQ NB phone → room → phone
beside G.711 through pjmedia alone, clean and with 3 % loss + 0..30 ms jitter, paired rounds
(``--pesq-rounds``, ``--pesq-clean-rounds``), medians per condition; one bridge worker.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.protocol import models  # noqa: E402
from livekit.protocol import rtc as lkrtc  # noqa: E402

from bench.bench_sip import (  # noqa: E402
    RATE,
    SAMPLES,
    SipUA,
    Stack,
    bursts,
    front_pids,
    onsets,
    speech_like,
    start_stack,
    use_server_tree,
    wait_workers,
)
from bench.pesq_live import pesq_table  # noqa: E402
from bridge.worker.tick import TickStats  # noqa: E402
from roomline_harness.aio import paced  # noqa: E402
from roomline_harness.lk import token  # noqa: E402
from roomline_harness.sip.fullstack import (  # noqa: E402
    cpu_seconds,
    metrics,
    room_for,
    worker_pid,
)
from roomline_harness.sip.pcap import linear_to_ulaw  # noqa: E402
from sfu.local import socket_path  # noqa: E402
from sfu.local.client import ChannelClient  # noqa: E402
from sfu.local.codec import OpusDecoder, OpusEncoder, RtpPacketizer  # noqa: E402
from sfu.local.jitter import SHRINK_GUARD_S  # noqa: E402
from sfu.media.rtp import parse_rtp  # noqa: E402

ROOM_RATE = 48000


def worker_rates(stack: Stack) -> dict[int, int]:
    """Calls up per bridge clock (Hz → calls), from ``/metrics``: where the front put them."""
    m = metrics(stack.server)
    out: dict[int, int] = {}
    for p in stack.workers:
        label = f'{{sip_port="{p}"}}'
        rate = int(m.get(("roomline_sip_worker_bridge_rate_hz", label), 0))
        out[rate] = out.get(rate, 0) + int(m.get(("roomline_sip_active_calls", label), 0))
    return out


def pctl(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else float("nan")


def codec_ceiling(frames: int = 500, enc_rate: int = 16000) -> float:
    """µs of CPU per call per 20 ms for the codecs alone: PyAV Opus encode at ``enc_rate`` (16 kHz;
    8 kHz is what a G.711 call's leg encodes since the phone-rate change, its 16 → 8 kHz
    decimation not counted) and decode to 16 kHz (the 48 → 16 kHz decimation included) + G.711
    both ways by table look-up (pjmedia's C cost, ~1 µs, not numpy's μ-law formula)."""
    from bench.bench_sip import ulaw_to_linear

    x16 = speech_like(frames * 0.02 + 1, 16000, seed=9)
    x8 = speech_like(frames * 0.02 + 1, 8000, seed=9)
    dec_lut = ulaw_to_linear(bytes(range(256)))
    enc_lut = linear_to_ulaw(np.arange(-32768, 32768, dtype=np.int32)).astype(np.uint8)
    enc, dec = OpusEncoder(rate=enc_rate), OpusDecoder(rate=16000)
    xe = x16 if enc_rate == 16000 else x8
    n = enc_rate // 50
    pk = [p for i in range(frames) for p in enc.encode(xe[i * n : (i + 1) * n].tobytes())]
    t0 = time.process_time()
    for i in range(frames):
        u = enc_lut[x8[i * 160 : (i + 1) * 160].astype(np.int32) + 32768]
        dec_lut[u]
        enc.encode(xe[i * n : (i + 1) * n].tobytes())
        dec.decode(pk[i])
    return (time.process_time() - t0) / frames * 1e6


#: A peer packet sent this late (s) leaves a gap the room buffer of the call re-buffers on
#: (3 empty ticks): counted, so the bench's own hiccups are not read as the appliance's.
PEER_LATE_S = 0.05


async def opus_peer(
    sock: str, identity: str, room: str, packets: list[bytes], late: list[tuple[float, float]]
) -> None:
    """A participant that publishes ``packets`` (Opus, 20 ms each) in a loop with absolute 20 ms
    pacing until cancelled; what it receives is only counted by the room, not kept. Appends to
    ``late`` (when, how late) for every packet sent more than :data:`PEER_LATE_S` behind
    schedule."""
    peer = Probe(keep=False)
    await peer.ch.connect(sock, token(identity, room), room)
    try:
        await asyncio.wait_for(peer.published.wait(), 10)
        pk = RtpPacketizer()
        async for i, lateness in paced():
            if lateness > PEER_LATE_S:
                late.append((time.monotonic(), lateness))
            peer.ch.send_rtp(peer.track_sid, pk.packet(packets[i % len(packets)]))
    finally:
        peer.ch.close()


def opus_speech(seconds: float = 10.0) -> list[bytes]:
    """Speech-like audio encoded once as 48 kHz Opus packets (what a browser publishes)."""
    pcm = speech_like(seconds, ROOM_RATE, seed=77)
    enc = OpusEncoder()
    return [
        p
        for i in range(len(pcm) // 960)
        for p in enc.encode(pcm[i * 960 : (i + 1) * 960].tobytes())
    ]


class Probe:
    """A participant on the local channel: publishes Opus bursts, records what it receives."""

    def __init__(self, keep: bool = True) -> None:
        self.rx: list[tuple[float, str, bytes]] = []
        self.keep = keep
        self.track_sid = ""
        self.joined = asyncio.Event()
        self.published = asyncio.Event()
        self.ch = ChannelClient(self._signal, self._rtp, lambda p: None, lambda r: None)

    def _signal(self, msg: lkrtc.SignalResponse) -> None:
        which = msg.WhichOneof("message")
        if which == "join":
            add = lkrtc.AddTrackRequest(
                cid="probe", name="probe", type=models.TrackType.AUDIO,
                source=models.TrackSource.MICROPHONE,
            )  # fmt: skip
            self.ch.send_signal(lkrtc.SignalRequest(add_track=add))
            self.joined.set()
        elif which == "track_published":
            self.track_sid = msg.track_published.track.sid
            self.published.set()

    def _rtp(self, sid: str, data: bytes) -> None:
        if self.keep:
            self.rx.append((time.monotonic(), sid, data))

    async def publish(self, pcm48: np.ndarray, stamps: dict[int, float]) -> None:
        enc, pk, n = OpusEncoder(), RtpPacketizer(), 960
        async for i, _ in paced():
            off = (i * n) % len(pcm48)
            stamps[off + (i * n // len(pcm48)) * len(pcm48)] = time.monotonic()
            for p in enc.encode(pcm48[off : off + n].tobytes()):
                self.ch.send_rtp(self.track_sid, pk.packet(p))


def _loud(pcm: np.ndarray, thr: float = 3000) -> bool:
    return len(pcm) > 0 and bool(np.max(np.abs(pcm.astype(np.int32))) > thr)


async def latency_probe(stack, data_dir: Path, number: str, seconds: float) -> tuple[dict, str]:  # type: ignore[no-untyped-def]
    """Latencies in ms per direction, and the probe participant's track sid (its stream's
    jitter-buffer counters are in the probe call's end-of-call line)."""
    probe = Probe()
    await probe.ch.connect(
        socket_path(str(data_dir)), token("probe", room_for(number)), room_for(number)
    )
    await asyncio.wait_for(probe.published.wait(), 10)
    ua = SipUA("+15553900001")
    await ua.open()
    res: dict[str, list[float]] = {"up": [], "down": [], "down_corr": []}
    try:
        await ua.call(stack.ports[-1], number)
        # phone -> room
        up = asyncio.create_task(ua.stream(bursts(seconds + 1, RATE)))
        await asyncio.sleep(seconds + 1.5)
        up.cancel()
        period = int(0.5 * RATE)
        tx_up = sorted(t for s, t in ua.sent_at.items() if s > 0 and s % period == 0)
        dec = OpusDecoder()
        prev = False
        for t, sid, data in probe.rx:
            if sid == probe.track_sid:
                continue
            pkt = parse_rtp(data)
            loud = _loud(dec.decode(pkt.payload(data)))
            if loud and not prev:
                c = [x for x in tx_up if x <= t and t - x < 0.4]
                if c:
                    res["up"].append((t - c[-1]) * 1000)
            prev = loud
        # room -> phone
        pcm48 = bursts(2.0, ROOM_RATE)
        loud_starts = {
            s
            for s in range(960, len(pcm48), 960)
            if _loud(pcm48[s : s + 960]) and not _loud(pcm48[s - 960 : s])
        }
        stamps: dict[int, float] = {}
        ua.received.clear()
        keep = asyncio.create_task(ua.stream(np.zeros(int((seconds + 3) * RATE), np.int16)))
        pub = asyncio.create_task(probe.publish(pcm48, stamps))
        await asyncio.sleep(seconds + 1)
        pub.cancel()
        keep.cancel()
        tx_down = sorted(t for s, t in stamps.items() if s % len(pcm48) in loud_starts)
        rx = ua.received
        for k in range(1, len(rx)):
            if _loud(rx[k].pcm) and not _loud(rx[k - 1].pcm):
                on = onsets(rx[k].pcm, RATE, quiet=0.0)[0]
                # Matched on the packet's arrival: the onset's correction below can move an
                # early onset to before the probe's send time (Opus's 6.5 ms decoder delay
                # puts the onset ~7 ms into the frame), which used to drop every sample.
                c = [x for x in tx_down if x <= rx[k].t and rx[k].t - x < 0.4]
                if c:
                    res["down"].append((rx[k].t - c[-1]) * 1000)
                    res["down_corr"].append((rx[k].t - (SAMPLES - on) / RATE - c[-1]) * 1000)
        await ua.hangup(stack.ports[-1])
    finally:
        ua.close()
        probe.ch.close()
    return res, probe.track_sid


def call_logs(log_text: str) -> list[tuple[int, int, str]]:
    """(port underruns, rx frames, room input stats) of each finished call, from worker logs.

    The appliance logs JSON lines: the pattern is matched inside each line's ``event`` text (the
    room input stats end the event, not the line).
    """
    pattern = re.compile(
        r"ended: port rx=(\d+) tx=\d+ underruns=(\d+)(?: produced=\d+)?"
        r"(?:; phone jitter buffer \{[^}]*\})?; room inputs (\{.*\})$"
    )
    out = []
    for line in log_text.splitlines():
        if "ended: port rx=" not in line:
            continue
        try:
            event = str(json.loads(line).get("event", ""))
        except (ValueError, AttributeError):
            event = line
        m = pattern.search(event)
        if m:
            out.append((int(m.group(2)), int(m.group(1)), m.group(3)))
    return out


def loop_wakes(log_text: str) -> tuple[int, int, int] | None:
    """Services woken by the clock, by the timer, and ticks without a wake-up, summed over the
    workers (each worker's last "worker loop so far" line; bridge/worker/tick.py); None if no
    worker logged them (an appliance tree older than the counters)."""
    last: dict[object, TickStats] = {}
    for line in log_text.splitlines():
        if "worker loop so far" not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        st = TickStats.parse(str(rec.get("event", "")))
        if st is not None:
            last[rec.get("pid")] = st
    if not last:
        return None
    return (
        sum(v.clock for v in last.values()),
        sum(v.timer for v in last.values()),
        sum(v.short_ticks for v in last.values()),
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--latency-seconds", type=float, default=8.0)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--pesq", action="store_true", help="only the PESQ runs (no load)")
    ap.add_argument("--save-pesq", action="store_true", help="store the degraded recordings")
    ap.add_argument(
        "--pesq-rounds", type=int, default=4, help="paired rounds (loss seeds) with 3 %% loss"
    )
    ap.add_argument("--pesq-clean-rounds", type=int, default=2, help="paired rounds at 0 %% loss")
    ap.add_argument(
        "--pesq-concurrent",
        action="store_true",
        help="run each room round and its pjmedia-alone pair at the same time (faster, noisier)",
    )
    ap.add_argument(
        "--server-tree", default="", help="PYTHONPATH of the appliance (e.g. another worktree)"
    )
    ap.add_argument(
        "--narrowband",
        action="store_true",
        help="sip.wideband: false (8 kHz bridge clock, G.711 only)",
    )
    ap.add_argument(
        "--front",
        action="store_true",
        help="front mode as deployed: phones call the Kamailio front, which picks the worker "
        "(16/8 kHz pools by codec); the front's CPU counts in the all-in figure",
    )
    ap.add_argument("--workers", type=int, default=0, help="worker count (default: calls / 4)")
    ap.add_argument(
        "--wideband-workers",
        default="",
        help="sip.wideband_workers with --front (default: the config's, auto = half)",
    )
    ap.add_argument(
        "--peer",
        choices=("sip", "opus"),
        default="sip",
        help="each call's room peer: another SIP caller (default) or an Opus participant",
    )
    a = ap.parse_args()
    opus = a.peer == "opus"
    calls = a.calls if opus else a.calls + a.calls % 2
    rooms = calls if opus else calls // 2
    numbers = [f"+155508{i:05d}" for i in range(rooms)] + ["+15550899999"]
    workers = -(-calls // 4) + (0 if a.no_latency else 1)  # +1: the latency probe's own worker
    if a.workers:
        workers = a.workers
    if a.pesq and not a.workers:
        workers = 1  # the PESQ rounds use one room on the last worker (or the front's pick)
    if a.server_tree:
        use_server_tree(a.server_tree)
    with tempfile.TemporaryDirectory(prefix="rlbm") as tmp:
        # info: the PESQ table reads each call's end-of-call line (room jitter-buffer counters)
        sip: dict[str, Any] = {"wideband": False} if a.narrowband else {}
        if a.wideband_workers:
            sip["wideband_workers"] = (
                int(a.wideband_workers) if a.wideband_workers.isdigit() else a.wideband_workers
            )
        stack = start_stack(
            Path(tmp),
            numbers,
            workers,
            "info",  # the end-of-call lines (underruns, jitter stalls) are info
            front=a.front,
            **sip,
        )
        try:
            await wait_workers(stack)
            if a.pesq:
                t0 = time.monotonic()
                await pesq_table(
                    stack,
                    numbers[-1],
                    Path(tmp),
                    a.pesq_rounds,
                    a.pesq_clean_rounds,
                    a.save_pesq,
                    not a.pesq_concurrent,
                )
                print(
                    f"  PESQ rounds took {time.monotonic() - t0:.0f} s; "
                    f"load average {os.getloadavg()}"
                )
                return
            pids = [worker_pid(stack.server, p) for p in stack.workers]
            main_pid = stack.server.process.pid
            fpids = front_pids(stack.server) if stack.front else []

            def cpu() -> tuple[float, float]:
                # the front (Kamailio) counts with the main process: signalling, no media
                main = cpu_seconds(main_pid) + sum(cpu_seconds(p) for p in fpids)
                return sum(cpu_seconds(p) for p in pids if p), main

            await asyncio.sleep(2)
            w0, m0, t0 = *cpu(), time.monotonic()
            await asyncio.sleep(5)
            w1, m1, t1 = *cpu(), time.monotonic()
            idle_w, idle_m = (w1 - w0) / (t1 - t0), (m1 - m0) / (t1 - t0)
            uas, tasks, peer_tasks = [], [], []
            peer_late: list[tuple[float, float]] = []
            if opus:
                packets = opus_speech()
                sock = socket_path(str(Path(tmp) / "data"))
                for i in range(rooms):
                    peer_tasks.append(
                        asyncio.create_task(
                            opus_peer(sock, f"peer{i}", room_for(numbers[i]), packets, peer_late)
                        )
                    )
                await asyncio.sleep(1)
            for i in range(calls):
                ua = SipUA(f"+155538{i:05d}")
                await ua.open()
                uas.append(ua)
                await ua.call(stack.ports[i // 4], numbers[i if opus else i // 2])
                tasks.append(
                    asyncio.create_task(ua.stream(speech_like(a.seconds + 60, RATE, seed=3 + i)))
                )
            await asyncio.sleep(3)
            # No cyclic GC in this process while it measures: its 16+ phones keep every packet
            # they receive, and a full collection over that heap stalls the loop for tens of ms
            # late in a long run. The probe participant's packets then leave late, the probe
            # call's room buffer stalls and grows, and room -> phone read 40-63 ms in 60 s runs
            # (3.7-8 ms with the collector off, or in short runs). The appliance is not affected.
            gc.freeze()
            gc.disable()
            w0, m0, t0 = *cpu(), time.monotonic()
            await asyncio.sleep(a.seconds)
            w1, m1, t1 = *cpu(), time.monotonic()
            dt = t1 - t0
            busy_w, busy_m = (w1 - w0) / dt, (m1 - m0) / dt
            rates = worker_rates(stack)
            # packets each phone received inside the window: 50/s when the bridge clock kept up
            pps = statistics.median(
                sum(1 for r in list(u.received) if t0 <= r.t < t1) / dt for u in uas
            )
            ceiling_us = statistics.median(codec_ceiling() for _ in range(3))
            ceiling8_us = statistics.median(codec_ceiling(enc_rate=8000) for _ in range(3))
            lat, probe_sid = None, ""
            if not a.no_latency:
                lat, probe_sid = await latency_probe(
                    stack, Path(tmp) / "data", numbers[-1], a.latency_seconds
                )
            gc.enable()
            heard = [len(u.received) for u in uas]
            for t in tasks:
                t.cancel()
            for i, ua in enumerate(uas):
                await ua.hangup(stack.ports[i // 4])
                ua.close()
            # The Opus peers stop after the calls ended, so no call counts their end as a stall.
            for t in peer_tasks:
                t.cancel()
            await asyncio.sleep(1.5)
            log_text = stack.server.log_text()
            logs = call_logs(log_text)
            wakes = loop_wakes(log_text)
        finally:
            from roomline_harness.server import stop_server

            stop_server(stack.server)
    n_w = len([p for p in pids if p])
    per_call_w = (busy_w - idle_w) / calls
    per_call_m = (busy_m - idle_m) / calls
    # all-in: busy CPU of every worker and of the main process, idle included, per call
    all_in = (busy_w + busy_m) / calls
    peers = "1 SIP caller + 1 Opus participant" if opus else "2 SIP callers"
    print(f"calls {calls} ({rooms} rooms of {peers}) on {n_w} workers, {dt:.1f} s window")
    if a.front:
        print(
            f"  front mode: {len(fpids)} Kamailio processes (counted with main); calls per "
            f"worker bridge clock: {rates}"
        )
    print(f"  workers: idle {idle_w * 100:5.1f} %  busy {busy_w * 100:5.1f} % of a core")
    print(f"  main:    idle {idle_m * 100:5.1f} %  busy {busy_m * 100:5.1f} % of a core")
    print(
        f"  per call: workers {per_call_w * 100:.2f} % + main {per_call_m * 100:.2f} % (marginal) "
        f"-> {1 / (per_call_w + per_call_m):.1f} calls/core; all-in incl. idle "
        f"{all_in * 100:.2f} % -> {1 / all_in:.1f} calls/core"
    )
    print(
        f"  codec-only ceiling (same run): {ceiling_us:.0f} us/call/20 ms -> "
        f"{20000 / ceiling_us:.0f} calls/core; ratio all-in/ceiling "
        f"{(1 / all_in) / (20000 / ceiling_us):.2f}"
    )
    print(
        f"  codec-only ceiling, 8 kHz encode (same run): {ceiling8_us:.0f} us/call/20 ms -> "
        f"{20000 / ceiling8_us:.0f} calls/core; ratio all-in/ceiling "
        f"{(1 / all_in) / (20000 / ceiling8_us):.2f}"
    )
    print(f"  phone packets received per call: median {statistics.median(heard)}")
    print(
        f"  in the window: {pps:.1f} pkt/s per phone (50 = every tick served); all-in per "
        f"served tick: {all_in * 50 / pps * 100:.2f} % -> {pps / 50 / all_in:.1f} calls/core"
    )
    und = [u for u, rx, _ in logs if rx > 100]
    # A stall is a frame late at the tick it was due. The room buffer also stalls once when a
    # stream stops (the peer hung up first): after 3 empty ticks that stall turns into a
    # re-buffer (``underruns``), so stalls minus re-buffers are the late frames of live streams.
    stats = [json.loads(s.replace("'", '"')) for _, rx, s in logs if rx > 100]
    late = [sum(v.get("stalls", 0) - v.get("underruns", 0) for v in st.values()) for st in stats]
    rebuf = [sum(v.get("underruns", 0) for v in st.values()) for st in stats]
    # Streams that stop (a peer hanging up first; Opus peers held up while this process
    # measures the ceiling) re-buffer outside the window, not while the calls are measured.
    rebuf_when = "when the peers stopped or paused outside the window" if opus else "at hang-up"
    print(
        f"  finished calls {len(und)} of {calls}: port underruns per call max "
        f"{max(und, default=0)} total {sum(und)}; room jitter stalls of live streams per call "
        f"max {max(late, default=0)} total {sum(late)} (re-buffers: {sum(rebuf)}, {rebuf_when}); "
        f"per call {sorted(late, reverse=True)}"
    )
    if opus:
        inside = [x for t, x in peer_late if t0 <= t <= t1]
        print(
            f"  Opus peers (this process): {len(inside)} packets sent more than "
            f"{PEER_LATE_S * 1000:.0f} ms late inside the window (worst "
            f"{max(inside, default=0) * 1000:.0f} ms), {len(peer_late) - len(inside)} outside it "
            "(the codec-only ceiling is measured in this process's loop after the window): each "
            "such gap makes the listening call's room buffer re-buffer"
        )
    if wakes is None:
        print("  worker loops: not logged by this appliance")
    else:
        print(
            f"  worker loops: {wakes[0]} services woken by the clock, {wakes[1]} by the timer, "
            f"{wakes[2]} ticks without a wake-up (summed over the busy workers)"
        )
    kept = [sum(v.get("kept", 0) for v in st.values()) for st in stats]
    tight = [sum(v.get("tight", 0) for v in st.values()) for st in stats]
    print(
        f"  room buffers that kept an extra frame (arrivals within "
        f"{SHRINK_GUARD_S * 1000:.0f} ms of the tick): {sum(1 for k in kept if k)} of "
        f"{len(kept)} calls; frames played that close: {sum(tight)}; starts put off a tick: "
        f"{sum(sum(v.get('deferred', 0) for v in st.values()) for st in stats)}; stalls soon "
        f"after a shrink (window doubled): "
        f"{sum(sum(v.get('recurred', 0) for v in st.values()) for st in stats)}"
    )
    for st in stats:
        if probe_sid and probe_sid in st:
            p = st[probe_sid]
            print(
                f"  probe call's room buffer (room -> phone): stalls {p.get('stalls', 0)}, level at"
                f" the end {p.get('level', 0)}, concealed {p.get('concealed', 0)}, "
                f"kept {p.get('kept', 0)}, tight {p.get('tight', 0)}"
            )
    if lat:
        for k, name in (
            ("up", "phone -> room"),
            ("down", "room -> phone"),
            ("down_corr", "room -> phone minus the onset's place in its packet (old figure)"),
        ):
            xs = lat[k]
            print(
                f"  latency {name} at load: n={len(xs)} median {statistics.median(xs) if xs else float('nan'):.1f} ms "
                f"p99 {pctl(xs, 0.99):.1f} ms max {max(xs, default=float('nan')):.1f} ms"
            )
    print(f"  load average {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())

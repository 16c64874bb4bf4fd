"""Live PESQ NB: phone → room → phone beside G.711 through pjmedia alone, same impairment.

Run by ``bench/bench_media.py --pesq`` (see there for the command). Each round plays the
espeak-ng sentences of ``tests/data/speech/harvard_8k.wav`` from two Python phones (PCMU, absolute
20 ms pacing, :meth:`bench.bench_sip.SipUA.stream`) at the same time and with the same ``seed``,
so both streams lose the same packets and hold each packet back by the same random 0..jitter:

* **room**: phone A → bridge leg → room → bridge leg → phone B (a real appliance); phone B's
  received PCMU, placed by RTP timestamp, is scored.
* **pjmedia alone**: phone R → a pjsua2 callee configured like the bridge worker
  (``roomline_harness/sip/phone.py --worker-media``: 16 kHz conference clock, jitter buffer
  1 frame initial / adaptive 1..8, pjmedia's PLC, resampler quality 8); the callee records what
  its conference bridge takes from the call (16 kHz, exactly where the worker's BridgePort
  sits), decimated to 8 kHz by a long zero-phase FIR (transparent to PESQ: 3.96 → 3.96 offline).
  This is the goal's "G.711 with the same impairment through pjmedia alone". Beside it, the same
  recording through one more G.711 encode + decode offline ("+ G.711 out"): the second G.711
  stage every transcoding path pays on its way to phone B, so the attainable figure for a room.

Both recordings are aligned to the reference by the cross-correlation lag over its first 2 s and
scored with PyPI ``pesq`` (NB). Rounds of one condition use seeds ``SEED0, SEED0 + 1, ...``
(paired: the room and the reference see the same loss pattern in the same round); the medians
per condition are compared against the goal "room ≥ reference − 0.1".
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import statistics
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pesq import pesq

from bench.bench_sip import RATE, SipUA, Stack, ulaw_to_linear
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.sip.pcap import linear_to_ulaw
from roomline_harness.sip.peers import PhoneProcess
from roomline_harness.speech_chain import SPEECH, down2, ulaw_roundtrip

#: Seed of the first round of a condition (11 was the one seed the bench used before).
SEED0 = 11
#: Silence before and after the sentences (the jitter buffers settle, the tail drains).
LEAD_S = 0.5
#: The goal's margin: room ≥ reference − MARGIN.
MARGIN = 0.1


def read_speech() -> np.ndarray:
    """The 8 kHz reference sentences as int16."""
    with wave.open(str(SPEECH)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).copy()


def aligned(deg: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``deg`` from its cross-correlation lag against ``ref``'s first 2 s, cut/padded to ``ref``."""
    d = deg.astype(np.float64)
    corr = np.correlate(d, ref.astype(np.float64)[: RATE * 2], mode="valid")
    off = int(np.argmax(np.abs(corr)))
    d = d[off : off + len(ref)]
    return np.pad(d, (0, len(ref) - len(d)))


def score(ref: np.ndarray, deg: np.ndarray) -> float:
    return float(pesq(RATE, ref.astype(np.float64), aligned(deg, ref), "nb"))


def g711_alone(ref: np.ndarray) -> float:
    """PESQ NB of one G.711 µ-law encode + decode: the goal's clean reference."""
    deg = ulaw_to_linear(linear_to_ulaw(ref).tobytes()).astype(np.float64)
    return float(pesq(RATE, ref.astype(np.float64), deg, "nb"))


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)
        return pcm, w.getframerate()


async def _until(proc: PhoneProcess, event: str, timeout: float) -> None:
    """Read the phone's stdout until its ``PHONE`` event ``event`` (e.g. ``listening``)."""
    out = proc.proc.stdout
    assert out is not None

    async def scan() -> None:
        while True:
            line = await out.readline()
            if not line:
                raise RuntimeError(f"test phone exited before {event!r}")
            if line.startswith(b"PHONE ") and f'"event": "{event}"'.encode() in line:
                return

    await asyncio.wait_for(scan(), timeout)


async def room_round(
    stack: Stack, number: str, signal: np.ndarray, loss: float, jitter: float, seed: int
) -> tuple[np.ndarray, str, str]:
    """Phone A → room → phone B; what B received (8 kHz, by RTP timestamp), A's and B's Call-IDs."""
    a, b = SipUA("+15553910001"), SipUA("+15553910002")
    await a.open()
    await b.open()
    try:
        await b.call(stack.ports[-1], number)
        await a.call(stack.ports[-1], number)
        keep_b = asyncio.create_task(b.stream(np.zeros(len(signal) + 6 * RATE, np.int16)))
        await asyncio.sleep(1.0)
        b.received.clear()
        await a.stream(signal, loss=loss, jitter=jitter, seed=seed)
        await asyncio.sleep(0.5)
        keep_b.cancel()
        await a.hangup(stack.ports[-1])
        await b.hangup(stack.ports[-1])
    finally:
        a.close()
        b.close()
    return b.received_pcm(), a.dialog["call_id"], b.dialog["call_id"]


async def pjmedia_round(
    wd: Path, signal: np.ndarray, loss: float, jitter: float, seed: int, jb: str = ""
) -> tuple[np.ndarray, dict[str, int]]:
    """Phone R → pjsua2 callee with the worker's media settings; what it played out (8 kHz) and
    its jitter-buffer counters."""
    port = free_port()
    rtp_start, _ = free_udp_range(40)
    rec = wd / f"pjmedia_{port}.wav"
    phone = await PhoneProcess.start(
        [
            "--answer", "--worker-media",
            "--port", str(port),
            "--rtp-start", str(rtp_start),
            "--ring-ms", "0",
            "--record", str(rec),
            "--duration", "120",
            "--max-wait", "120",
            "--workdir", str(wd),
            *(["--jb", jb] if jb else []),
        ]
    )  # fmt: skip
    r = SipUA("+15553910003")
    try:
        await _until(phone, "listening", 15)
        await r.open()
        await r.call(port, "+15553919999")
        await asyncio.sleep(0.5)  # no room to join: the leading silence settles the buffer
        await r.stream(signal, loss=loss, jitter=jitter, seed=seed)
        await asyncio.sleep(0.5)
        await r.hangup(port)
        events = await phone.wait(15)
    finally:
        r.close()
        phone.kill()
    if not any(e["event"] == "disconnected" for e in events):
        raise RuntimeError(f"pjmedia reference call did not end cleanly: {events[-3:]}")
    jbuf = next((e for e in events if e["event"] == "jbuf"), {})
    pcm, rate = _read_wav(rec)
    rec.unlink()
    if rate not in (RATE, 2 * RATE):
        raise RuntimeError(f"pjmedia reference recorded at {rate} Hz")
    return (down2(pcm) if rate == 2 * RATE else pcm), jbuf


@dataclass
class Condition:
    """Scores of one condition, one entry per round (paired by index)."""

    name: str
    loss: float
    jitter: float
    room: list[float] = field(default_factory=list)
    pjmedia: list[float] = field(default_factory=list)
    pjmedia_g711: list[float] = field(default_factory=list)
    #: Call-IDs of phone A's and phone B's calls in each round (their end-of-call log lines have
    #: the worker's phone jitter-buffer counters, resp. the room jitter buffer's).
    call_ids: list[tuple[str, str]] = field(default_factory=list)
    #: The pjmedia-alone callee's jitter-buffer counters in each round.
    ref_jbuf: list[dict[str, int]] = field(default_factory=list)

    def line(self, label: str, xs: list[float]) -> str:
        runs = " ".join(f"{x:.2f}" for x in xs)
        return f"    {label:<28} median {statistics.median(xs):.2f}  [{runs}]"


async def run_condition(
    stack: Stack,
    number: str,
    wd: Path,
    cond: Condition,
    rounds: int,
    save: str,
    sequential: bool = True,
) -> None:
    """``rounds`` paired rounds (room, then pjmedia alone; or both at once), same seed."""
    ref = read_speech()
    lead = np.zeros(int(LEAD_S * RATE), np.int16)
    signal = np.concatenate([lead, ref, lead])
    for k in range(rounds):
        seed = SEED0 + k
        if sequential:
            room, id_a, id_b = await room_round(stack, number, signal, cond.loss, cond.jitter, seed)
            alone, jbuf = await pjmedia_round(wd, signal, cond.loss, cond.jitter, seed)
        else:
            (room, id_a, id_b), (alone, jbuf) = await asyncio.gather(
                room_round(stack, number, signal, cond.loss, cond.jitter, seed),
                pjmedia_round(wd, signal, cond.loss, cond.jitter, seed),
            )
        cond.call_ids.append((id_a, id_b))
        cond.ref_jbuf.append(jbuf)
        cond.room.append(score(ref, room))
        cond.pjmedia.append(score(ref, alone))
        cond.pjmedia_g711.append(score(ref, ulaw_roundtrip(alone)))
        if save and k == 0:
            with wave.open(str(SPEECH.parent / save), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                deg = np.clip(np.rint(aligned(room, ref)), -32768, 32767).astype(np.int16)
                w.writeframes(deg.tobytes())


def call_counters(log_text: str) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """Call-ID → (the phone stream's pjmedia jitter-buffer counters, the room jitter-buffer
    counters summed over the call's room tracks), from the worker's end-of-call log lines (the
    server must log at ``info``)."""
    out: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for line in log_text.splitlines():
        if "ended: port" not in line:
            continue
        try:  # a JSON line: the text is one of its string fields
            fields = json.loads(line)
            msg = next(v for v in fields.values() if isinstance(v, str) and "ended: port" in v)
        except (ValueError, AttributeError, StopIteration):
            msg = line
        m = re.search(
            r"call (\S+) ended: port .*?(?:; phone jitter buffer (\{[^}]*\}))?; room inputs (\{.*\})",
            msg,
        )
        if not m:
            continue
        tracks = ast.literal_eval(m.group(3))
        total: dict[str, int] = {}
        for stats in tracks.values():
            for k, v in stats.items():
                total[k] = total.get(k, 0) + int(v)
        out[m.group(1)] = (ast.literal_eval(m.group(2)) if m.group(2) else {}), total
    return out


ROOM_KEYS = ("played", "stalls", "concealed", "late", "shrunk")
JBUF_KEYS = ("lost", "discard", "empty", "prefetch", "avg_delay_ms", "max_delay_ms")


def _counters(c: dict[str, int] | None, keys: tuple[str, ...]) -> str:
    if not c:
        return "(none)"
    return " ".join(f"{k}={c.get(k, 0)}" for k in keys)


def report(cond: Condition, g711: float) -> bool:
    """Print one condition; True when the room's median meets reference − MARGIN (the clean
    condition's reference is G.711 alone, the impaired one's G.711 via pjmedia alone)."""
    room, alone = statistics.median(cond.room), statistics.median(cond.pjmedia)
    goal_ref = g711 if cond.loss == 0 and cond.jitter == 0 else alone
    ok = room >= goal_ref - MARGIN
    print(f"  {cond.name} (seeds {SEED0}..{SEED0 + len(cond.room) - 1}, paired):")
    print(cond.line("phone -> room -> phone", cond.room))
    print(cond.line("G.711 via pjmedia alone", cond.pjmedia))
    print(cond.line("  + G.711 out (offline)", cond.pjmedia_g711))
    diffs = [r - p for r, p in zip(cond.room, cond.pjmedia, strict=True)]
    print(
        f"    room - pjmedia alone: medians {room - alone:+.2f}, per round "
        f"{' '.join(f'{d:+.2f}' for d in diffs)}\n    goal room >= {goal_ref:.2f} - {MARGIN} "
        f"({'G.711 alone' if goal_ref == g711 else 'pjmedia alone'}): {'met' if ok else 'NOT met'}"
    )
    return ok


async def pesq_table(
    stack: Stack,
    number: str,
    wd: Path,
    rounds: int,
    clean_rounds: int,
    save: bool,
    sequential: bool = True,
) -> None:
    """Clean and 3 % loss + 30 ms jitter conditions, printed with their references."""
    ref = read_speech()
    g711 = g711_alone(ref)
    print(f"  PESQ NB, {len(ref) / RATE:.1f} s of espeak-ng speech; G.711 encode+decode alone: "
          f"{g711:.2f}")  # fmt: skip
    conds = [
        (Condition("0 % loss", 0.0, 0.0), clean_rounds, "deg_clean.wav"),
        (Condition("3 % loss + 0..30 ms jitter on the phone uplink", 0.03, 0.03), rounds,
         "deg_loss3_jit30.wav"),
    ]  # fmt: skip
    for cond, n, name in conds:
        await run_condition(stack, number, wd, cond, n, name if save else "", sequential)
    await asyncio.sleep(1.0)  # the worker logs each call's end after its BYE
    ended = call_counters(stack.server.log_text())
    for cond, _, _ in conds:
        report(cond, g711)
        print("    jitter buffers per round: worker's pjmedia (phone A's uplink) | pjmedia alone "
              "| room (phone B's leg, hearing A)")  # fmt: skip
        for k, ((id_a, id_b), ref_jb) in enumerate(zip(cond.call_ids, cond.ref_jbuf, strict=True)):
            worker_jb = ended.get(id_a, ({}, {}))[0]
            room_jb = ended.get(id_b, ({}, {}))[1]
            print(f"      {SEED0 + k}: {_counters(worker_jb, JBUF_KEYS)} | "
                  f"{_counters(ref_jb, JBUF_KEYS)} | {_counters(room_jb, ROOM_KEYS)}")  # fmt: skip

"""Room-model fan-out: a room with N participants where participants update their attributes.

Measures, per attribute update: the model alone (merge, limits, recipients), and the whole delivery
path the signalling layer uses (model → ``ParticipantUpdate`` serialized once → handed to every
recipient's session). Prints median and p99 in µs per event and per recipient.

    .venv/bin/python bench/bench_room_fanout.py [--participants 1000] [--updates 2000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfu.events import Event  # noqa: E402
from sfu.node import Node  # noqa: E402
from sfu.participant import DisconnectReason, Participant, ParticipantInit  # noqa: E402
from sfu.roommanager import RoomManager  # noqa: E402
from sfu.signal import encode_broadcast  # noqa: E402


class CountingSession:
    """Stands in for a connected client: keeps what it would write to its socket."""

    def __init__(self, participant: Participant) -> None:
        self.participant = participant
        self.bytes = 0
        self.messages = 0

    def on_event(self, event: Event, wire: bytes | None = None) -> None:
        if wire is not None:
            self.bytes += len(wire)
        self.messages += 1

    def send_data(self, packet: bytes, reliable: bool) -> None:
        pass

    def close(self, reason: DisconnectReason) -> None:
        pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--participants", type=int, default=1000)
    ap.add_argument("--updates", type=int, default=2000)
    args = ap.parse_args()

    node = Node(RoomManager())
    node.encode_broadcast = encode_broadcast
    sessions: list[CountingSession] = []
    for i in range(args.participants):
        init = ParticipantInit(
            identity=f"user-{i}", name=f"User {i}", attributes={"role": "member"}
        )
        room, participant, events = node.join("big", init)
        session = CountingSession(participant)
        node.attach(session)  # type: ignore[arg-type]
        sessions.append(session)
    recipients = args.participants  # everyone, the sender included, is told

    rng = random.Random(1)
    model_us: list[float] = []
    full_us: list[float] = []
    for n in range(args.updates):
        who = sessions[rng.randrange(len(sessions))].participant
        attrs = {"state": f"s{n}", "mood": "" if n % 3 else "ok"}
        t0 = time.perf_counter()
        events = room.update_participant(who.sid, attributes=attrs)
        t1 = time.perf_counter()
        node.dispatch(events)
        t2 = time.perf_counter()
        model_us.append((t1 - t0) * 1e6)
        full_us.append((t2 - t0) * 1e6)

    delivered = sum(s.messages for s in sessions)
    print(f"room fan-out: {args.participants} participants, {args.updates} attribute updates")
    print(f"  messages delivered: {delivered} ({delivered / args.updates:.0f} per update)")
    for label, values in (("model only", model_us), ("model + serialize + deliver", full_us)):
        med, p99 = statistics.median(values), pct(values, 0.99)
        print(
            f"  {label:28s} per event: median {med:8.1f} µs  p99 {p99:8.1f} µs   "
            f"per recipient: median {med / recipients:6.3f} µs  p99 {p99 / recipients:6.3f} µs"
        )


if __name__ == "__main__":
    main()

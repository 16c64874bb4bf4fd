"""Prometheus text exposition at ``/metrics``: rooms, participants by kind, tracks, API requests.

Gauges are computed from the live model at scrape time (nothing to keep in sync); counters are kept here.
Other parts (SIP workers, agents) register extra collectors returning ready-made sample lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from aiohttp import web

from sfu.node import Node
from sfu.participant import ParticipantKind

#: A collector yields (metric name, help, type, [(labels, value)]).
Sample = tuple[dict[str, str], float]
Family = tuple[str, str, str, list[Sample]]
Collector = Callable[[], Iterable[Family]]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


class Metrics:
    """Registry of the appliance's metrics."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.api_requests: Counter[tuple[str, str]] = Counter()
        self.collectors: list[Collector] = [self._model, self._media]

    def count_api_request(self, method: str, code: str) -> None:
        self.api_requests[(method, code)] += 1

    def _model(self) -> Iterable[Family]:
        rooms = self.node.rooms.rooms.values()
        kinds: Counter[str] = Counter({k.name.lower(): 0 for k in ParticipantKind})
        tracks: Counter[str] = Counter({"audio": 0, "video": 0})
        for room in rooms:
            for participant in room.participants.values():
                kinds[participant.kind.name.lower()] += 1
                for track in participant.tracks.values():
                    tracks["audio" if track.is_audio else "video"] += 1
        yield ("roomline_rooms", "Rooms open on this node.", "gauge", [({}, len(rooms))])
        yield (
            "roomline_participants",
            "Participants connected, by kind.",
            "gauge",
            [({"kind": k}, v) for k, v in sorted(kinds.items())],
        )
        yield (
            "roomline_tracks",
            "Published tracks, by type.",
            "gauge",
            [({"type": k}, v) for k, v in sorted(tracks.items())],
        )
        yield (
            "roomline_api_requests_total",
            "Twirp API requests, by method and result code.",
            "counter",
            [({"method": m, "code": c}, v) for (m, c), v in sorted(self.api_requests.items())],
        )

    def _media(self) -> Iterable[Family]:
        received: Counter[str] = Counter({"audio": 0, "video": 0})
        sent: Counter[str] = Counter({"audio": 0, "video": 0})
        dropped: Counter[str] = Counter({"audio": 0, "video": 0})
        sinks: Counter[str] = Counter({"audio": 0, "video": 0})
        for relay in self.node.relays.values():
            kind = relay.source.kind
            received[kind] += relay.packets
            for sink in relay.sinks.values():
                sinks[kind] += 1
                stats = getattr(getattr(sink, "downtrack", None), "stats", None)
                if stats is not None:
                    sent[kind] += stats.packets
                dropped[kind] += getattr(sink, "dropped_not_ready", 0) + getattr(sink, "dropped", 0)
        yield (
            "roomline_rtp_received_packets_total",
            "RTP packets received from publishers (since the tracks were published).",
            "counter",
            [({"kind": k}, v) for k, v in sorted(received.items())],
        )
        yield (
            "roomline_rtp_forwarded_packets_total",
            "RTP packets forwarded to WebRTC subscribers.",
            "counter",
            [({"kind": k}, v) for k, v in sorted(sent.items())],
        )
        yield (
            "roomline_rtp_dropped_packets_total",
            "RTP packets not forwarded (subscriber not ready yet, or too slow).",
            "counter",
            [({"kind": k}, v) for k, v in sorted(dropped.items())],
        )
        yield (
            "roomline_subscriptions",
            "Active forwarding subscriptions, by kind.",
            "gauge",
            [({"kind": k}, v) for k, v in sorted(sinks.items())],
        )

    def render(self) -> str:
        lines: list[str] = []
        for collector in self.collectors:
            for name, help_text, kind, samples in collector():
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                for labels, value in samples:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(text=self.render(), content_type="text/plain", charset="utf-8")

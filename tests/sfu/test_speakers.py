"""Active speakers: the sans-I/O detector, and ``speakers_changed`` seen by a real SDK client."""

from __future__ import annotations

from roomline_harness.aio import wait_for
from roomline_harness.lk import connect, token, tone_publisher
from roomline_harness.server import Server
from sfu.speakers import LEVEL_MAX_AGE, SpeakerDetector


def test_detector_reports_changes_only() -> None:
    d = SpeakerDetector()
    assert d.update({}, 10.0) == []
    (start,) = d.update({"PA_a": (20, 10.0), "PA_b": (100, 10.0)}, 10.1)
    assert start.participant_sid == "PA_a" and start.active and 0.8 < start.level < 0.9
    assert d.update({"PA_a": (25, 10.2)}, 10.3) == []  # still speaking: nothing new
    # Stale level (publisher muted / stopped sending) ends the speaking state.
    (stop,) = d.update({"PA_a": (25, 10.2)}, 10.2 + LEVEL_MAX_AGE + 0.1)
    assert stop.participant_sid == "PA_a" and not stop.active and stop.level == 0.0
    # Quiet audio (below the threshold) never counts.
    assert d.update({"PA_b": (90, 20.0)}, 20.0) == []


async def test_sdk_sees_active_speaker(server: Server) -> None:
    a = await connect(server.ws_url, token("talker", "speakers"))
    b = await connect(server.ws_url, token("listener", "speakers"))
    seen: list[list[str]] = []
    b.on("active_speakers_changed", lambda speakers: seen.append([p.identity for p in speakers]))
    try:
        async with tone_publisher(a, 440.0, amplitude=0.5):
            await wait_for(lambda: any("talker" in s for s in seen), 10, "talker speaking")
        await wait_for(lambda: bool(seen) and seen[-1] == [], 10, "talker stopped")
    finally:
        await a.disconnect()
        await b.disconnect()

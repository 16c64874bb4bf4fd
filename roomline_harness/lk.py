"""Helpers for tests that drive the real LiveKit Python SDK (``livekit.rtc``) against roomline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from livekit import api, rtc

from roomline_harness.aio import running, wait_for
from roomline_harness.audio import dominant_frequency, snr_db
from roomline_harness.server import API_KEY, API_SECRET, Server

RATE = 48000
#: SNR a tone must reach to count as heard: Opus gives 35–48 dB at the levels tests publish; a
#: silent, absent or wrong track gives nothing near the tone.
MIN_TONE_SNR = 20.0


def token(
    identity: str,
    room: str,
    *,
    name: str | None = None,
    kind: str | None = None,
    metadata: str = "",
    attributes: dict[str, str] | None = None,
    **grants: Any,
) -> str:
    grants.setdefault("can_update_own_metadata", True)
    t = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(name if name is not None else identity.title())
        .with_grants(api.VideoGrants(room_join=True, room=room, **grants))
    )
    if metadata:
        t = t.with_metadata(metadata)
    if attributes:
        t = t.with_attributes(attributes)
    if kind:
        t = t.with_kind(kind)  # type: ignore[arg-type]
    return t.to_jwt()


async def connect(url: str, tok: str, auto_subscribe: bool = True) -> rtc.Room:
    room = rtc.Room()
    await asyncio.wait_for(
        room.connect(url, tok, rtc.RoomOptions(auto_subscribe=auto_subscribe)), 20
    )
    return room


@contextlib.asynccontextmanager
async def tone_publisher(
    room: rtc.Room, freq: float = 440.0, name: str = "tone", amplitude: float = 0.3
) -> AsyncIterator[rtc.LocalTrackPublication]:
    """Publish a sine on ``room`` (MICROPHONE source) for the duration of the block."""
    source = rtc.AudioSource(RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track(name, source)
    pub = await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )

    async def feed() -> None:
        n, t = 480, 0
        while True:
            x = amplitude * 32767 * np.sin(2 * np.pi * freq * np.arange(t, t + n) / RATE)
            t += n
            await source.capture_frame(rtc.AudioFrame(x.astype(np.int16).tobytes(), RATE, 1, n))

    async with running(feed):
        yield pub


async def record(
    track: rtc.Track, seconds: float, skip: float = 0.5, sound_within: float = 0.0
) -> np.ndarray:
    """PCM (mono int16 at 48 kHz) received on ``track``; the first ``skip`` seconds are dropped.

    With ``sound_within`` > 0, leading digital silence (a publisher that has not started
    speaking yet, which on a loaded machine can take a few seconds) is dropped too, for up to that
    many seconds of received audio; the recording then starts with the first non-zero frame, so
    what is checked is the content, not when it began.
    """
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    chunks: list[np.ndarray] = []
    need = int((seconds + skip) * RATE)
    got = 0
    silent = 0
    try:
        async for ev in stream:
            data = np.frombuffer(ev.frame.data, dtype=np.int16)
            if not chunks and silent < sound_within * RATE and not data.any():
                silent += len(data)
                continue
            chunks.append(data)
            got += len(data)
            if got >= need:
                break
    finally:
        await stream.aclose()
    return np.concatenate(chunks)[int(skip * RATE) :]


def subscribed_track(
    room: rtc.Room, identity: str, kind: rtc.TrackKind.ValueType, name: str | None = None
) -> rtc.Track | None:
    """``identity``'s subscribed track of ``kind`` at ``room`` (the one named ``name``, if given);
    None while ``room`` does not know the participant or has no such track yet."""
    participant = room.remote_participants.get(identity)
    if participant is None:
        return None
    for pub in participant.track_publications.values():
        if pub.kind != kind or pub.track is None:
            continue
        if name is None or pub.name == name:
            return pub.track
    return None


def subscribed_audio(room: rtc.Room, identity: str) -> rtc.Track | None:
    """``identity``'s (first) subscribed audio track at ``room``."""
    return subscribed_track(room, identity, rtc.TrackKind.KIND_AUDIO)


async def heard(
    room: rtc.Room,
    identity: str,
    freq: float,
    *,
    min_snr: float = MIN_TONE_SNR,
    subscribe_within: float = 15.0,
) -> str:
    """'' if ``room`` hears a ``freq`` tone from ``identity``'s audio track, else what went wrong
    (naming the track), so that a test can gather every track's verdict before asserting.

    Heard means: subscribed within ``subscribe_within`` seconds, and 1 s of it (after the first
    sound, allowed 3 s: a subscription whose sender has not started plays digital silence) has its
    dominant frequency within 5 Hz of ``freq`` at ``min_snr`` dB or more.
    """
    label = f"{identity}/audio"
    try:
        await wait_for(
            lambda: subscribed_audio(room, identity) is not None, subscribe_within, label
        )
    except AssertionError:
        return f"{label}: never subscribed"
    track = subscribed_audio(room, identity)
    assert track is not None
    try:
        pcm = await asyncio.wait_for(record(track, 1.0, skip=0.3, sound_within=3.0), 20)
    except TimeoutError:
        return f"{label}: no audio frames"
    if not pcm.any():
        return f"{label}: digital silence"
    f, snr = dominant_frequency(pcm, RATE), snr_db(pcm, RATE, freq)
    if abs(f - freq) >= 5 or snr < min_snr:
        return f"{label}: {f:.0f} Hz at {snr:.1f} dB, expected {freq:.0f} Hz"
    return ""


async def check_rooms(
    server: Server,
    prefix: str,
    room: Callable[[Server, str], Awaitable[list[str]]],
    iterations: int,
) -> None:
    """Run ``room(server, name)`` in ``iterations`` fresh rooms named ``prefix-i``; each run
    returns one verdict per track ('' = fine, as from :func:`heard`). Fails naming every failed
    track, so a race hit in any room fails the test and the message shows how often it hit."""
    failures: list[str] = []
    for i in range(iterations):
        results = await room(server, f"{prefix}-{i}")
        failures += [f"room {i}: {r}" for r in results if r]
    assert not failures, f"{len(failures)} failed track(s) in {iterations} rooms: {failures}"


def media_stats(server: Server, room: str) -> dict[str, Any]:
    """The SFU's forwarding counters for ``room`` (``GET /debug/media``, a roomAdmin token)."""
    tok = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_grants(api.VideoGrants(room_admin=True, room=room))
        .to_jwt()
    )
    req = urllib.request.Request(f"{server.http_url}/debug/media?room={room}")
    req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            result: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return {"status": err.code, "error": err.read().decode(errors="replace")}
    return result


async def inbound_audio_stats(room: rtc.Room) -> list[dict[str, Any]]:
    """What ``room``'s subscriber PC received: per transport, and per audio stream (libwebrtc's
    transport and inbound-rtp stats)."""
    stats = await room.get_rtc_stats()
    out: list[dict[str, Any]] = []
    for s in stats.subscriber_stats:
        if s.WhichOneof("stats") == "transport":
            t = s.transport.transport
            out.append(
                {
                    "transport": s.transport.rtc.id,
                    "packets_received": t.packets_received,
                    "bytes_received": t.bytes_received,
                    "dtls_state": _enum_name(t, "dtls_state"),
                    "ice_state": _enum_name(t, "ice_state"),
                    "selected_pair_changes": t.selected_candidate_pair_changes,
                }
            )
        if s.WhichOneof("stats") != "inbound_rtp":
            continue
        ib = s.inbound_rtp
        if ib.stream.kind != "audio":
            continue
        out.append(
            {
                "track": ib.inbound.track_identifier,
                "mid": ib.inbound.mid,
                "ssrc": ib.stream.ssrc,
                "packets_received": ib.received.packets_received,
                "packets_lost": ib.received.packets_lost,
                "bytes_received": ib.inbound.bytes_received,
                "packets_discarded": ib.inbound.packets_discarded,
                "concealed_samples": ib.inbound.concealed_samples,
                "total_samples_received": ib.inbound.total_samples_received,
            }
        )
    return out


def _enum_name(message: Any, field: str) -> str:
    value = getattr(message, field)
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number.get(value)
    return enum.name if enum is not None else str(value)


async def silent_track_report(
    server: Server, room: rtc.Room, room_name: str, interval: float = 1.0
) -> str:
    """Both ends' view of the media, for an assertion message when a track sounds wrong.

    Each side is read twice, ``interval`` seconds apart: counters that still grow mean packets
    are flowing (late, if the client is far behind the SFU); counters that stand still mean the
    flow stopped at that point.
    """

    async def client() -> list[dict[str, Any]]:
        try:
            return await inbound_audio_stats(room)
        except Exception as exc:  # the report must never hide the original failure
            return [{"error": repr(exc)}]

    sfu_1, client_1 = await asyncio.to_thread(media_stats, server, room_name), await client()
    await asyncio.sleep(interval)
    sfu_2, client_2 = await asyncio.to_thread(media_stats, server, room_name), await client()
    return (
        f"\nSFU /debug/media: {json.dumps(sfu_1, indent=1)}"
        f"\nclient inbound-rtp (audio): {json.dumps(client_1, indent=1)}"
        f"\n{interval:g} s later, SFU: {json.dumps(sfu_2)}"
        f"\n{interval:g} s later, client: {json.dumps(client_2)}"
    )

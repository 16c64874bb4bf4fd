"""roomline_agents/sdk/room.py without sockets: signal, RTP and data handling (audio attributed
to its speaker, DTMF, contained handler errors)."""

from __future__ import annotations

import asyncio

import numpy as np
from livekit.protocol import models, rtc

from roomline_agents.sdk import (
    AudioStream,
    ConnectionState,
    LocalParticipant,
    Room,
)
from roomline_harness.audio import dominant_frequency, tone
from sfu.local.codec import OpusEncoder, RtpPacketizer


def info(identity: str, sid: str, version: int = 1, **kw: object) -> models.ParticipantInfo:
    return models.ParticipantInfo(identity=identity, sid=sid, version=version, **kw)  # type: ignore[arg-type]


def joined_room() -> Room:
    room = Room()
    room._local = LocalParticipant(room, info("agent-1", "PA_me"))
    room._state = ConnectionState.CONN_CONNECTED
    return room


def opus_packets(freq: float, seconds: float) -> list[bytes]:
    enc, pk = OpusEncoder(), RtpPacketizer()
    x = tone(freq, seconds, 48000, 8000).astype(np.int16)
    return [
        pk.packet(p) for i in range(0, len(x), 960) for p in enc.encode(x[i : i + 960].tobytes())
    ]


async def test_room_attributes_audio_to_its_speaker() -> None:
    room = joined_room()
    seen: list[tuple[str, ...]] = []
    room.on("participant_connected", lambda p: seen.append(("connected", p.identity)))
    room.on("track_subscribed", lambda t, pub, p: seen.append(("subscribed", t.sid, p.identity)))
    room.on("participant_disconnected", lambda p: seen.append(("left", p.identity)))
    room.on("participant_attributes_changed", lambda ch, p: seen.append(("attrs", p.identity)))
    audio = models.TrackInfo(sid="TR_a", type=models.TrackType.AUDIO, name="mic")
    voice = models.TrackInfo(sid="TR_b", type=models.TrackType.AUDIO, name="mic")
    room._on_signal(
        rtc.SignalResponse(
            update=rtc.ParticipantUpdate(
                participants=[
                    info("alice", "PA_a", tracks=[audio]),
                    info("bob", "PA_b", tracks=[voice]),
                ]
            )
        )
    )
    assert ("subscribed", "TR_a", "alice") in seen and ("subscribed", "TR_b", "bob") in seen
    streams = {
        who: AudioStream(room.remote_participants[who].track_publications[sid].track)  # type: ignore[arg-type]
        for who, sid in (("alice", "TR_a"), ("bob", "TR_b"))
    }
    for pkt_a, pkt_b in zip(opus_packets(440, 0.6), opus_packets(1000, 0.6), strict=True):
        room._on_rtp("TR_a", pkt_a)
        room._on_rtp("TR_b", pkt_b)
    room._on_rtp("TR_unknown", b"x" * 20)
    room._on_rtp("TR_a", b"\x00" * 5)  # truncated RTP: counted, skipped
    assert room.unknown_rtp == 1
    for who, freq in (("alice", 440), ("bob", 1000)):
        frames = [
            np.frombuffer(streams[who]._queue.popleft().data, np.int16)  # type: ignore[union-attr]
            for _ in range(30)
        ]
        assert abs(dominant_frequency(np.concatenate(frames[5:]), 48000) - freq) < 5
    # Stale versions are ignored; newer attributes are announced; leaving ends the stream.
    room._on_signal(
        rtc.SignalResponse(
            update=rtc.ParticipantUpdate(
                participants=[
                    info("alice", "PA_a", version=2, tracks=[audio], attributes={"k": "v"})
                ]
            )
        )
    )
    assert ("attrs", "alice") in seen
    room._on_signal(
        rtc.SignalResponse(
            update=rtc.ParticipantUpdate(
                participants=[
                    info(
                        "alice", "PA_a", version=3, state=models.ParticipantInfo.State.DISCONNECTED
                    )
                ]
            )
        )
    )
    assert ("left", "alice") in seen and "alice" not in room.remote_participants
    assert streams["alice"]._queue[-1] is None  # ended


async def test_room_data_and_dtmf_events() -> None:
    room = joined_room()
    room._on_signal(
        rtc.SignalResponse(
            update=rtc.ParticipantUpdate(
                participants=[info("sip_1", "PA_s", kind=models.ParticipantInfo.Kind.SIP)]
            )
        )
    )
    got: list[object] = []
    room.on("data_received", got.append)
    room.on("sip_dtmf_received", got.append)
    room._on_data(
        models.DataPacket(
            participant_identity="sip_1", user=models.UserPacket(payload=b"hi", topic="t")
        )
    )
    room._on_data(
        models.DataPacket(participant_identity="sip_1", sip_dtmf=models.SipDTMF(code=2, digit="2"))
    )
    assert got[0].data == b"hi" and got[0].participant.identity == "sip_1"  # type: ignore[attr-defined]
    assert got[1].digit == "2" and got[1].participant.identity == "sip_1"  # type: ignore[attr-defined]


def test_event_handler_errors_are_contained() -> None:
    room = Room()
    calls: list[int] = []
    room.on("x", lambda: 1 / 0)
    room.on("x", lambda: calls.append(1))
    room.emit("x")
    assert calls == [1]


async def test_room_knows_itself_from_the_join_on() -> None:
    """An update about the agent itself, read together with the join answer, is not a remote."""
    room = Room()
    room._joined = asyncio.get_running_loop().create_future()
    me = info("agent-1", "PA_me")
    room._on_signal(rtc.SignalResponse(join=rtc.JoinResponse(participant=me)))
    room._on_signal(
        rtc.SignalResponse(
            update=rtc.ParticipantUpdate(participants=[info("agent-1", "PA_me", version=2)])
        )
    )
    assert room.isconnected() and room.remote_participants == {}


def test_remote_track_conceals_a_lost_packet_and_skips_a_pause() -> None:
    room = joined_room()
    audio = models.TrackInfo(sid="TR_a", type=models.TrackType.AUDIO, name="mic")
    room._on_signal(
        rtc.SignalResponse(
            update=rtc.ParticipantUpdate(participants=[info("alice", "PA_a", tracks=[audio])])
        )
    )
    track = room.remote_participants["alice"].track_publications["TR_a"].track
    assert track is not None
    stream = AudioStream(track)  # type: ignore[arg-type]
    packets = opus_packets(440, 0.4)  # 20 packets
    for i, pkt in enumerate(packets):
        if i not in (5, 12, 13, 14, 15, 16):  # one loss; then a 5-packet gap (a pause)
            room._on_rtp("TR_a", pkt)
    # 14 packets played, one concealed (5); the pause is skipped, not filled.
    assert len(stream._queue) == 15 and track._jitter.stats.concealed == 1

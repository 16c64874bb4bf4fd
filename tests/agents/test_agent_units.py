"""Sans-I/O parts of roomline_agents.sdk: control protocol, VAD, dispatch table, the Room's signal/RTP/data
handling (attribution of audio to speakers), prompts. No sockets, no processes."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from livekit.protocol import models, rtc

from roomline.errors import NotFound
from roomline_agents import control
from roomline_agents.sdk import (
    AudioFrame,
    AudioSource,
    AudioStream,
    ConnectionState,
    LocalParticipant,
    Room,
)
from roomline_agents.sdk.audio import FRAME_BYTES, resample
from roomline_agents.sdk.tts import parse_wav, tones
from roomline_agents.sdk.vad import EnergyVAD, level_dbfs
from roomline_agents.sdk.worker import load_entrypoint
from roomline_agents.service.dispatch import MAX_RESTARTS, DispatchTable, JobState, dispatch_proto
from sfu.local.codec import OpusEncoder, RtpPacketizer
from tests.audio_utils import dominant_frequency, tone

# ------------------------------------------------------------------ control


def test_control_round_trip() -> None:
    msgs: list[control.Message] = [
        control.Ready(pid=7),
        control.Heartbeat(),
        control.StartJob(
            job_id="AJ_1",
            dispatch_id="AD_1",
            agent_name="echo",
            target="m:f",
            room="r",
            identity="agent-AJ_1",
            token="t",
            attributes={"a": "b"},
        ),
        control.StopJob(reason="x"),
        control.JobStatus(state="failed", error="boom"),
        control.RemoveParticipant(request_id=3, identity="sip_1"),
        control.Result(request_id=3, ok=False, error="no"),
    ]
    for msg in msgs:
        assert control.decode(control.encode(msg)) == msg


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "not JSON"),
        (b"[1]\n", "JSON object"),
        (b'{"type":"nope"}\n', "unknown control message type"),
        (b'{"type":"ready"}\n', "missing field pid"),
        (b'{"type":"ready","pid":"7"}\n', "bad type"),
        (b'{"type":"ready","pid":true}\n', "bad type"),
        (b'{"type":"ready","pid":1,"extra":1}\n', "unknown fields"),
        (b'{"type":"job_status","state":"weird"}\n', "unknown"),
        (
            b'{"type":"start_job","job_id":"","dispatch_id":"","agent_name":"a","target":"m:f",'
            b'"room":"r","identity":"i","token":"t"}\n',
            "job_id",
        ),
        (b"\xff\xfe\n", "UTF-8"),
        (b'{"type":"ready","pid":' + b"1" * (control.MAX_LINE_BYTES) + b"}", "too long"),
    ],
)
def test_control_invalid(line: bytes, error: str) -> None:
    with pytest.raises(control.ControlError, match=error):
        control.decode(line)


def test_control_truncated() -> None:
    line = control.encode(control.JobStatus(state="running"))
    for cut in range(1, len(line) - 2):
        with pytest.raises(control.ControlError):
            control.decode(line[:cut])


# ------------------------------------------------------------------ VAD


def test_vad_start_and_end_after_pause() -> None:
    vad = EnergyVAD(silence_ms=600)
    loud = tone(300, 0.02, 48000, 8000).astype(np.int16)
    quiet = np.zeros(960, dtype=np.int16)
    events = [vad.push(loud) for _ in range(20)] + [vad.push(quiet) for _ in range(40)]
    assert events.count("start") == 1 and events.count("end") == 1
    assert events.index("end") == 20 + 30 - 1  # exactly 600 ms of silence
    assert level_dbfs(quiet) == -120.0 and level_dbfs(np.zeros(0, np.int16)) == -120.0


def test_vad_ignores_a_click() -> None:
    vad = EnergyVAD(min_speech_ms=60)
    loud = np.full(960, 10000, dtype=np.int16)
    assert vad.push(loud) is None and vad.push(np.zeros(960, np.int16)) is None
    assert not vad.speaking


# ------------------------------------------------------------------ dispatch table


def test_dispatch_table_jobs_restarts_and_proto() -> None:
    t = DispatchTable()
    d = t.create("r", "echo", 1.0, metadata="m")
    job = t.new_job(d, 2.0)
    assert d.current is job and job.identity == f"agent-{job.id}"
    t.set_state(job, JobState.FAILED, 3.0, "boom")
    delays = []
    for _ in range(MAX_RESTARTS + 2):
        delay = t.restart_delay(job)
        if delay is None:
            break
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0][:MAX_RESTARTS]
    p = dispatch_proto(d)
    assert p.id == d.id and p.state.jobs[0].state.status == JobState.FAILED
    assert p.state.jobs[0].state.error == "boom" and p.metadata == "m"
    assert t.find("r") == [d] and t.find("other") == []
    with pytest.raises(NotFound):
        t.remove(d.id, "other", 4.0)
    assert t.remove(d.id, "r", 4.0).deleted_at == 4.0
    with pytest.raises(NotFound):
        t.remove(d.id, "r", 5.0)


def test_dispatch_never_restart_policy() -> None:
    t = DispatchTable()
    d = t.create("r", "echo", 1.0, restart_policy=1)  # JRP_NEVER
    job = t.new_job(d, 1.0)
    t.set_state(job, JobState.FAILED, 2.0, "x")
    assert t.restart_delay(job) is None


# ------------------------------------------------------------------ Room (no socket)


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


# ------------------------------------------------------------------ audio helpers


async def test_audio_source_frames_and_backpressure() -> None:
    src = AudioSource(16000, 1, queue_size_ms=100)
    x = tone(500, 0.05, 16000, 8000).astype(np.int16)
    await src.capture_frame(AudioFrame(x.tobytes(), 16000, 1, len(x)))
    frame = src._pull()
    assert frame is not None and len(frame) == FRAME_BYTES  # resampled to 48 kHz, 20 ms
    with pytest.raises(ValueError):
        await src.capture_frame(AudioFrame(x.tobytes(), 8000, 1, len(x)))
    src.clear_queue()
    assert src._pull() is None and src.queued_duration == 0.0
    with pytest.raises(ValueError):
        AudioFrame(b"\x00" * 3, 48000, 1, 2)


def test_resample_keeps_frequency() -> None:
    y = resample(tone(440, 0.5, 22050, 8000).astype(np.int16), 22050)
    assert abs(len(y) - 24000) < 200 and abs(dominant_frequency(y, 48000) - 440) < 3


def test_prompt_wav_parsing_and_fallback() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(np.zeros(100, np.int16).tobytes())
    pcm, rate, ch = parse_wav(buf.getvalue())
    assert (len(pcm), rate, ch) == (100, 22050, 1)
    with pytest.raises((wave.Error, EOFError)):
        parse_wav(b"RIFF\x00\x00")  # truncated
    with pytest.raises((wave.Error, EOFError)):
        parse_wav(b"not a wav at all" * 4)  # invalid
    beeps = tones([660.0, 880.0])
    assert len(beeps) > 0 and np.abs(beeps).max() > 1000


def test_load_entrypoint_errors() -> None:
    assert callable(load_entrypoint("roomline_agents.examples.echo:entrypoint"))
    with pytest.raises(ModuleNotFoundError):
        load_entrypoint("no.such.module:f")
    with pytest.raises(AttributeError):
        load_entrypoint("roomline_agents.examples.echo:nope")
    with pytest.raises(TypeError):
        load_entrypoint("roomline_agents.examples.echo:MAX_TURN_SECONDS")

"""Agents used by the tests (registered through ``agents.registry`` in the test config)."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from roomline_agents.sdk import (
    AgentState,
    AudioFrame,
    AudioSource,
    AudioStream,
    DataPacket,
    JobContext,
    LocalAudioTrack,
    RemoteAudioTrack,
    RemoteParticipant,
    RemoteTrackPublication,
    SipDTMF,
)
from roomline_harness.audio import dominant_frequency


async def probe(ctx: JobContext) -> None:
    """Publishes 440 Hz, reports what it hears per speaker, echoes data and DTMF."""
    room = ctx.room
    tasks: set[asyncio.Task[None]] = set()

    async def listen(track: RemoteAudioTrack, who: str) -> None:
        stream = AudioStream(track)
        pcm: list[np.ndarray] = []
        async for ev in stream:
            pcm.append(np.frombuffer(ev.frame.data, dtype=np.int16).copy())
            if len(pcm) == 100:  # 2 s; the last second is analysed
                f = dominant_frequency(np.concatenate(pcm[50:]), 48000)
                await room.local_participant.set_attributes({f"heard.{who}": f"{f:.0f}"})
                pcm.clear()

    @room.on("track_subscribed")
    def on_track(track: RemoteAudioTrack, pub: RemoteTrackPublication, p: RemoteParticipant):
        t = asyncio.get_running_loop().create_task(listen(track, p.identity))
        tasks.add(t)

    @room.on("data_received")
    def on_data(packet: DataPacket) -> None:
        sender = packet.participant.identity if packet.participant else ""
        asyncio.ensure_future(
            room.local_participant.publish_data(
                b"echo:" + packet.data, topic="echo", destination_identities=[sender]
            )
        )

    @room.on("sip_dtmf_received")
    def on_dtmf(dtmf: SipDTMF) -> None:
        asyncio.ensure_future(room.local_participant.set_attributes({"dtmf": dtmf.digit}))
        asyncio.ensure_future(room.local_participant.publish_dtmf(code=dtmf.code, digit=dtmf.digit))

    await ctx.connect()
    source = AudioSource(48000, 1)
    await room.local_participant.publish_track(LocalAudioTrack.create_audio_track("tone", source))
    await ctx.set_agent_state(AgentState.LISTENING)
    n = 0
    while True:  # 10 ms frames, like SDK code does
        x = 0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(n, n + 480) / 48000)
        n += 480
        await source.capture_frame(AudioFrame(x.astype(np.int16).tobytes(), 48000, 1, 480))


async def crash(ctx: JobContext) -> None:
    await ctx.connect()
    await ctx.set_agent_state(AgentState.THINKING)
    await asyncio.sleep(0.5)
    raise RuntimeError("agent bug")


async def hang(ctx: JobContext) -> None:
    await ctx.connect()
    await ctx.set_agent_state(AgentState.THINKING)
    time.sleep(3600)  # blocks the job's event loop: no more heartbeats


async def die(ctx: JobContext) -> None:
    await ctx.connect()
    await asyncio.sleep(0.5)
    os._exit(3)  # a native crash, as far as the supervisor can tell


async def until_stopped(ctx: JobContext) -> None:
    """Never joins a room; runs until the supervisor stops the job (process-pool tests)."""
    await ctx.wait_for_shutdown()


REGISTRY = {
    "probe": "roomline_harness.fixture_agents:probe",
    "crash": "roomline_harness.fixture_agents:crash",
    "hang": "roomline_harness.fixture_agents:hang",
    "die": "roomline_harness.fixture_agents:die",
}

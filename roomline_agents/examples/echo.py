"""``echo``: listens to the caller and, after each pause, plays back what it heard.

Turn-taking is an energy VAD (:mod:`roomline_agents.sdk.vad`): speech, then ~600 ms of silence, ends a
turn. ``lk.agent.state`` goes initializing → listening → thinking (turn ended) → speaking
(playing back) → listening. The agent hears one participant at a time — the first non-agent
participant — and leaves when that participant leaves.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from roomline_agents.examples import play
from roomline_agents.sdk import (
    AgentState,
    AudioSource,
    AudioStream,
    JobContext,
    LocalAudioTrack,
    ParticipantKind,
    RemoteAudioTrack,
    RemoteParticipant,
    RemoteTrackPublication,
    TrackPublishOptions,
    TrackSource,
)
from roomline_agents.sdk.vad import EnergyVAD

log = logging.getLogger("roomline_agents.sdk.echo")

#: Longest turn replayed (seconds); longer speech keeps only its end, so memory stays bounded.
MAX_TURN_SECONDS = 15.0
#: Audio kept from before the VAD fired, so the first syllable is not cut (seconds).
PRE_ROLL_SECONDS = 0.2


class Echo:
    """The echo behaviour on an already connected room; ``ivr`` reuses it for its option 1."""

    def __init__(self, ctx: JobContext, source: AudioSource) -> None:
        self.ctx = ctx
        self.source = source
        self.vad = EnergyVAD()
        self.turns = 0

    async def run(self, track: RemoteAudioTrack) -> None:
        """Echo the turns heard on ``track`` until the track or the room ends."""
        stream = AudioStream(track)
        frames: list[np.ndarray] = []
        pre: list[np.ndarray] = []
        pre_frames = int(PRE_ROLL_SECONDS / 0.02)
        max_frames = int(MAX_TURN_SECONDS / 0.02)
        await self.ctx.set_agent_state(AgentState.LISTENING)
        try:
            async for ev in stream:
                pcm = np.frombuffer(ev.frame.data, dtype=np.int16)
                event = self.vad.push(pcm)
                if not self.vad.speaking and event != "end":
                    pre = (pre + [pcm])[-pre_frames:]
                    continue
                if event == "start":
                    frames = list(pre)
                frames.append(pcm)
                frames = frames[-max_frames:]
                if event == "end":
                    await self._reply(stream, np.concatenate(frames))
                    frames, pre = [], []
        finally:
            await stream.aclose()

    async def _reply(self, stream: AudioStream, turn: np.ndarray) -> None:
        self.turns += 1
        await self.ctx.set_agent_state(AgentState.THINKING)
        await self.ctx.set_agent_state(AgentState.SPEAKING)
        await play(self.source, turn)
        # Half duplex: what arrived while we spoke is dropped, so a loud line cannot loop.
        stream.clear()
        self.vad.reset()
        await self.ctx.set_agent_state(AgentState.LISTENING)


async def publish_voice(ctx: JobContext) -> AudioSource:
    """Publish the agent's voice track (48 kHz mono, Opus) and return its source."""
    source = AudioSource(48000, 1)
    track = LocalAudioTrack.create_audio_track("agent-voice", source)
    await ctx.room.local_participant.publish_track(
        track, TrackPublishOptions(source=TrackSource.SOURCE_MICROPHONE)
    )
    return source


async def first_audio_track(ctx: JobContext, participant: RemoteParticipant) -> RemoteAudioTrack:
    """``participant``'s first subscribed audio track (waits for it)."""
    for pub in participant.track_publications.values():
        if pub.track is not None:
            return pub.track
    fut: asyncio.Future[RemoteAudioTrack] = asyncio.get_running_loop().create_future()

    def on_sub(track: RemoteAudioTrack, pub: RemoteTrackPublication, p: RemoteParticipant) -> None:
        if p.identity == participant.identity and not fut.done():
            fut.set_result(track)

    ctx.room.on("track_subscribed", on_sub)
    try:
        return await fut
    finally:
        ctx.room.off("track_subscribed", on_sub)


#: How long a phone-oriented agent that found only non-phone participants waits for a SIP caller
#: (the call that dispatched it is usually joining at that moment).
CALLER_GRACE_S = 3.0


async def find_caller(ctx: JobContext) -> RemoteParticipant:
    """The participant to serve: a SIP caller if there is one, else the first non-agent.

    A room can hold web users when a call arrives (a direct dispatch rule into a shared room), and
    the phone caller is the one the agent was dispatched for.
    """
    sip = ParticipantKind.PARTICIPANT_KIND_SIP
    for p in ctx.room.remote_participants.values():
        if p.kind == sip:
            return p
    first = await ctx.wait_for_participant()
    if first.kind == sip:
        return first
    try:
        return await asyncio.wait_for(ctx.wait_for_participant(kind=sip), CALLER_GRACE_S)
    except TimeoutError:
        return first


def leave_with(ctx: JobContext, participant: RemoteParticipant) -> None:
    """End the job when ``participant`` leaves (a call agent has nobody left to talk to)."""

    def on_left(p: RemoteParticipant) -> None:
        if p.identity == participant.identity:
            ctx.shutdown(f"{p.identity} left")

    ctx.room.on("participant_disconnected", on_left)


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    source = await publish_voice(ctx)
    caller = await find_caller(ctx)
    leave_with(ctx, caller)
    log.info("echo agent serving %s in %s", caller.identity, ctx.room.name)
    track = await first_audio_track(ctx, caller)
    await Echo(ctx, source).run(track)

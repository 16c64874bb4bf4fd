"""In-appliance agents: participants that run code (AI models, IVRs) instead of a camera and mic.

An agent is ``async def entrypoint(ctx: JobContext)``; it joins its room as an AGENT participant over
the local participant channel, in its own process. The API mirrors ``livekit.rtc`` (and LiveKit
Agents' ``JobContext``) so agent code reads like code written for the LiveKit Python SDK; see
docs/agents.md.

    from roomline_agents.sdk import AudioSource, AudioStream, JobContext, LocalAudioTrack

    async def entrypoint(ctx: JobContext) -> None:
        await ctx.connect()
        source = AudioSource(48000, 1)
        track = LocalAudioTrack.create_audio_track("agent", source)
        await ctx.room.local_participant.publish_track(track)

        @ctx.room.on("track_subscribed")
        def on_track(track, publication, participant): ...
"""

from __future__ import annotations

from roomline_agents.sdk.audio import AudioFrame, AudioFrameEvent, AudioSource, AudioStream
from roomline_agents.sdk.event_emitter import EventEmitter
from roomline_agents.sdk.job import (
    AGENT_STATE_ATTRIBUTE,
    AgentState,
    AutoSubscribe,
    JobContext,
    JobInfo,
)
from roomline_agents.sdk.participant import (
    LocalParticipant,
    Participant,
    ParticipantKind,
    PublishError,
    RemoteParticipant,
)
from roomline_agents.sdk.room import (
    ConnectError,
    ConnectionState,
    DataPacket,
    DataPacketKind,
    Room,
    RoomOptions,
    SipDTMF,
)
from roomline_agents.sdk.track import (
    LocalAudioTrack,
    RemoteAudioTrack,
    Track,
    TrackKind,
    TrackSource,
)
from roomline_agents.sdk.track_publication import (
    LocalTrackPublication,
    RemoteTrackPublication,
    TrackPublication,
    TrackPublishOptions,
)

__all__ = [
    "AGENT_STATE_ATTRIBUTE",
    "AgentState",
    "AudioFrame",
    "AudioFrameEvent",
    "AudioSource",
    "AudioStream",
    "AutoSubscribe",
    "ConnectError",
    "ConnectionState",
    "DataPacket",
    "DataPacketKind",
    "EventEmitter",
    "JobContext",
    "JobInfo",
    "LocalAudioTrack",
    "LocalParticipant",
    "LocalTrackPublication",
    "Participant",
    "ParticipantKind",
    "PublishError",
    "RemoteAudioTrack",
    "RemoteParticipant",
    "RemoteTrackPublication",
    "Room",
    "RoomOptions",
    "SipDTMF",
    "Track",
    "TrackKind",
    "TrackPublication",
    "TrackPublishOptions",
    "TrackSource",
]

"""In-appliance agents: participants that run code (AI models, IVRs) instead of a camera and mic.

An agent is ``async def entrypoint(ctx: JobContext)``; it joins its room as an AGENT participant over
the local participant channel, in its own process. The API mirrors ``livekit.rtc`` (and LiveKit
Agents' ``JobContext``) so agent code reads like code written for the LiveKit Python SDK; see
docs/agents.md.

    from sfu.agents import AudioSource, AudioStream, JobContext, LocalAudioTrack

    async def entrypoint(ctx: JobContext) -> None:
        await ctx.connect()
        source = AudioSource(48000, 1)
        track = LocalAudioTrack.create_audio_track("agent", source)
        await ctx.room.local_participant.publish_track(track)

        @ctx.room.on("track_subscribed")
        def on_track(track, publication, participant): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sfu.agents.audio import AudioFrame, AudioFrameEvent, AudioSource, AudioStream
from sfu.agents.job import (
    AGENT_STATE_ATTRIBUTE,
    AgentState,
    AutoSubscribe,
    JobContext,
    JobInfo,
)
from sfu.agents.room import (
    ConnectError,
    ConnectionState,
    DataPacket,
    DataPacketKind,
    LocalAudioTrack,
    LocalParticipant,
    LocalTrackPublication,
    ParticipantKind,
    PublishError,
    RemoteAudioTrack,
    RemoteParticipant,
    RemoteTrackPublication,
    Room,
    RoomOptions,
    SipDTMF,
    TrackKind,
    TrackPublishOptions,
    TrackSource,
)

if TYPE_CHECKING:
    from sfu.app import Appliance, Extension

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
    "JobContext",
    "JobInfo",
    "LocalAudioTrack",
    "LocalParticipant",
    "LocalTrackPublication",
    "ParticipantKind",
    "PublishError",
    "RemoteAudioTrack",
    "RemoteParticipant",
    "RemoteTrackPublication",
    "Room",
    "RoomOptions",
    "SipDTMF",
    "TrackKind",
    "TrackPublishOptions",
    "TrackSource",
    "install",
]


def install(appliance: Appliance) -> Extension | None:
    """The appliance extension (dispatch service, job supervisor); see :mod:`sfu.agents.service`."""
    from sfu.agents import service

    return service.install(appliance)

"""Track publications (``livekit.rtc``): a track as published in the room, with its options."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from roomline_agents.sdk.track import LocalAudioTrack, RemoteAudioTrack, TrackKind, TrackSource


@dataclass
class TrackPublishOptions:
    source: TrackSource = TrackSource.SOURCE_MICROPHONE
    dtx: bool = True


@dataclass
class TrackPublication:
    sid: str
    name: str
    kind: TrackKind
    source: TrackSource
    muted: bool = False
    mime_type: str = ""


@dataclass
class RemoteTrackPublication(TrackPublication):
    track: RemoteAudioTrack | None = None

    @property
    def subscribed(self) -> bool:
        return self.track is not None


@dataclass
class LocalTrackPublication(TrackPublication):
    track: LocalAudioTrack | None = None
    _pump: asyncio.Task[None] | None = field(default=None, repr=False)

    async def wait_for_subscription(self) -> None:
        return None

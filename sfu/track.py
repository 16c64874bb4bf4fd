"""Track publications: one audio or video stream a participant makes available to the room."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TrackType(enum.IntEnum):
    """Values of LiveKit's ``TrackType``."""

    AUDIO = 0
    VIDEO = 1
    DATA = 2


class TrackSource(enum.IntEnum):
    """Values of LiveKit's ``TrackSource``; the source is a hint, not a constraint (seed)."""

    UNKNOWN = 0
    CAMERA = 1
    MICROPHONE = 2
    SCREEN_SHARE = 3
    SCREEN_SHARE_AUDIO = 4


#: Names used in token grants (``canPublishSources``) for each source.
SOURCE_GRANT_NAMES: dict[str, TrackSource] = {
    "camera": TrackSource.CAMERA,
    "microphone": TrackSource.MICROPHONE,
    "screen_share": TrackSource.SCREEN_SHARE,
    "screen_share_audio": TrackSource.SCREEN_SHARE_AUDIO,
}

#: The letter LiveKit puts after ``TR_A``/``TR_V`` in a track sid.
SOURCE_SID_LETTER: dict[TrackSource, str] = {
    TrackSource.UNKNOWN: "U",
    TrackSource.CAMERA: "C",
    TrackSource.MICROPHONE: "M",
    TrackSource.SCREEN_SHARE: "S",
    TrackSource.SCREEN_SHARE_AUDIO: "s",
}


@dataclass(slots=True)
class VideoLayer:
    """One simulcast layer as announced by the publisher."""

    quality: int
    width: int
    height: int
    bitrate: int = 0


@dataclass(slots=True)
class TrackPublication:
    """A published track as the room model knows it.

    ``cid`` is the client's own id for the track (the WebRTC track id), used to match the media that
    arrives later to this publication.
    """

    sid: str
    cid: str
    type: TrackType
    source: TrackSource = TrackSource.UNKNOWN
    name: str = ""
    muted: bool = False
    mime_type: str = ""
    mid: str = ""
    width: int = 0
    height: int = 0
    simulcast: bool = False
    layers: list[VideoLayer] = field(default_factory=list)
    stream: str = ""
    disable_dtx: bool = False
    stereo: bool = False
    #: False until media for the track has actually arrived (the SFU "binds" it).
    bound: bool = False

    @property
    def is_audio(self) -> bool:
        return self.type == TrackType.AUDIO

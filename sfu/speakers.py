"""Active-speaker detection from the RFC 6464 audio-level header extension. Sans-I/O.

Publishers put the level of each audio packet in the ``ssrc-audio-level`` extension (0 = 0 dBov,
the loudest, 127 = silence); the relay keeps the last one it saw. Every interval the node samples
them here and tells the room only about changes, as LiveKit's ``speakers_changed`` does (clients
drive ``isSpeaking`` from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Levels above -45 dBov count as speech: quiet rooms sit around -60 to -70, voice at -20 to -40.
SPEAKING_THRESHOLD_DBOV = 45
#: A level older than this (seconds) means the publisher stopped sending audio (muted, DTX).
LEVEL_MAX_AGE = 0.5


@dataclass(frozen=True, slots=True)
class Speaker:
    """One entry of ``speakers_changed``: ``level`` is 0..1 (1 = 0 dBov)."""

    participant_sid: str
    level: float
    active: bool


@dataclass(slots=True)
class SpeakerDetector:
    """Tracks who is speaking in one room."""

    active: dict[str, float] = field(default_factory=dict)

    def update(self, levels: dict[str, tuple[int, float]], now: float) -> list[Speaker]:
        """``levels``: participant sid → (loudest RFC 6464 level of its tracks, when seen).

        Returns the changes: participants who started speaking (with their level) and those who
        stopped (level 0, ``active`` False). An empty list means nothing to tell.
        """
        speaking: dict[str, float] = {}
        for sid, (dbov, seen_at) in levels.items():
            if now - seen_at <= LEVEL_MAX_AGE and dbov <= SPEAKING_THRESHOLD_DBOV:
                speaking[sid] = round(1.0 - dbov / 127.0, 3)
        changes = [
            Speaker(sid, level, True) for sid, level in speaking.items() if sid not in self.active
        ]
        changes += [Speaker(sid, 0.0, False) for sid in self.active if sid not in speaking]
        self.active = speaking
        return changes

"""Identifiers in LiveKit's format: a type prefix plus 12 base62 characters.

Clients parse the prefixes (the Rust SDK ``unwrap()``s ``PA_``/``TR_``/``RM_``), so they are
part of the wire contract, not decoration.
"""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

ROOM_PREFIX = "RM_"
PARTICIPANT_PREFIX = "PA_"
TRACK_PREFIX = "TR_"


def random_id(length: int = 12) -> str:
    """Return ``length`` random base62 characters from a CSPRNG."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_sid(prefix: str) -> str:
    """Return a new sid such as ``RM_x8Jk2...``."""
    return prefix + random_id()


def new_track_sid(is_video: bool, source_letter: str = "") -> str:
    """Track sids follow LiveKit's ``TR_`` + A/V + source letter + id (e.g. ``TR_AM...``)."""
    return TRACK_PREFIX + ("V" if is_video else "A") + source_letter + random_id(10)

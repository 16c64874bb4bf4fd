"""Framing of the local participant channel (docs/architecture.md, "Local participant channel").

``u32 length (big endian, counts kind + payload) | u8 kind | payload``. Used by both ends: the SFU's
:mod:`sfu.local.server` and the clients (SIP bridge workers, agent workers). Sans-I/O.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from roomline.errors import InvalidRequest

#: Largest frame accepted (1 MiB): a JoinResponse of a big room fits easily; anything larger is a
#: broken or hostile peer and the connection is closed instead of buffering without bound.
MAX_FRAME = 1 << 20


class Kind(enum.IntEnum):
    JOIN = 0
    SIGNAL = 1
    RTP = 2
    DATA = 3
    ERROR = 4


class FrameError(InvalidRequest):
    """The channel byte stream is malformed (framing, not payload)."""


def encode_frame(kind: int, payload: bytes) -> bytes:
    if len(payload) + 1 > MAX_FRAME:
        raise FrameError("frame too large")
    return struct.pack("!IB", len(payload) + 1, kind) + payload


def encode_rtp(sid: str, packet: bytes) -> bytes:
    raw = sid.encode("ascii")
    if len(raw) > 255:
        raise FrameError("track sid too long")
    return encode_frame(Kind.RTP, bytes([len(raw)]) + raw + packet)


def decode_rtp(payload: bytes) -> tuple[str, bytes]:
    """Split an RTP frame payload into (track sid, RTP packet)."""
    if not payload:
        raise FrameError("RTP frame truncated")
    n = payload[0]
    if len(payload) < 1 + n:
        raise FrameError("RTP frame sid truncated")
    try:
        sid = payload[1 : 1 + n].decode("ascii")
    except UnicodeDecodeError as exc:
        raise FrameError("RTP frame sid is not ASCII") from exc
    return sid, payload[1 + n :]


@dataclass
class FrameDecoder:
    """Incremental frame parser: :meth:`feed` bytes, get complete ``(kind, payload)`` frames."""

    _buf: bytearray | None = None

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buf) if self._buf is not None else 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._buf is None:
            self._buf = bytearray()
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= 4:
            (length,) = struct.unpack_from("!I", self._buf)
            if length < 1 or length > MAX_FRAME:
                raise FrameError(f"bad frame length {length}")
            if len(self._buf) < 4 + length:
                break
            kind = self._buf[4]
            out.append((kind, bytes(self._buf[5 : 4 + length])))
            del self._buf[: 4 + length]
        return out

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

_LENGTH = struct.Struct("!I")
_RTP_HEAD = struct.Struct("!IBB")


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
    size = 2 + len(raw) + len(packet)  # kind, sid length, sid, packet
    if size > MAX_FRAME:
        raise FrameError("frame too large")
    # One join instead of three concatenations: this runs for every packet on both ends.
    return b"".join((_RTP_HEAD.pack(size, Kind.RTP, len(raw)), raw, packet))


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
        # Whole frames are cut straight out of ``data`` (a local channel read almost always
        # holds whole frames); only a frame split across reads is assembled in the buffer.
        buf: bytes | bytearray = data
        if self._buf:
            self._buf += data
            buf = self._buf
        out: list[tuple[int, bytes]] = []
        off, end = 0, len(buf)
        while end - off >= 4:
            (length,) = _LENGTH.unpack_from(buf, off)
            if length < 1 or length > MAX_FRAME:
                raise FrameError(f"bad frame length {length}")
            stop = off + 4 + length
            if stop > end:
                break
            out.append((buf[off + 4], bytes(buf[off + 5 : stop])))
            off = stop
        self._buf = bytearray(buf[off:]) if off < end else None
        return out

"""Client side of the local participant channel (docs/architecture.md, "Local participant channel").

Framing: ``u32 length (BE, counts kind + payload) | u8 kind | payload``. :class:`FrameDecoder` is
the sans-I/O parser; :class:`ChannelClient` is the thin asyncio adapter a bridge call uses to JOIN
and then exchange SIGNAL / RTP / DATA frames.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from sfu.errors import InvalidRequest

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


class ChannelClient:
    """One participant connection to ``local.sock``; callbacks run in the asyncio loop.

    ``on_signal(SignalResponse)``, ``on_rtp(sid, packet)``, ``on_data(DataPacket)`` and
    ``on_closed(reason)`` (exactly once). Undecodable payloads are counted in ``bad_frames`` and
    skipped; a framing error closes the connection.
    """

    def __init__(
        self,
        on_signal: Callable[[rtc.SignalResponse], None],
        on_rtp: Callable[[str, bytes], None],
        on_data: Callable[[models.DataPacket], None],
        on_closed: Callable[[str], None],
    ) -> None:
        self._on_signal = on_signal
        self._on_rtp = on_rtp
        self._on_data = on_data
        self._on_closed = on_closed
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.bad_frames = 0

    async def connect(self, path: str, token: str, room: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        self._writer = writer
        join = {"token": token, "room": room, "auto_subscribe": True}
        writer.write(encode_frame(Kind.JOIN, json.dumps(join).encode()))
        self._task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        dec = FrameDecoder()
        reason = "room connection closed"
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for kind, payload in dec.feed(data):
                    if kind == Kind.ERROR:
                        reason = "room error: " + payload.decode("utf-8", "replace")[:200]
                        return
                    self._dispatch(kind, payload)
        except FrameError as exc:
            reason = f"bad frame from room: {exc.message}"
        except (ConnectionError, OSError) as exc:
            reason = f"room connection lost: {exc}"
        finally:
            self._finish(reason)

    def _dispatch(self, kind: int, payload: bytes) -> None:
        try:
            if kind == Kind.SIGNAL:
                self._on_signal(rtc.SignalResponse.FromString(payload))
            elif kind == Kind.RTP:
                sid, pkt = decode_rtp(payload)
                self._on_rtp(sid, pkt)
            elif kind == Kind.DATA:
                self._on_data(models.DataPacket.FromString(payload))
            else:
                self.bad_frames += 1
        except (FrameError, DecodeError, ValueError, UnicodeDecodeError):
            # One undecodable frame is skipped; the call continues.
            self.bad_frames += 1

    def _finish(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        self._on_closed(reason)

    def _write(self, frame: bytes) -> None:
        if self._writer is not None and not self._closed and not self._writer.is_closing():
            self._writer.write(frame)

    def send_signal(self, req: rtc.SignalRequest) -> None:
        self._write(encode_frame(Kind.SIGNAL, req.SerializeToString()))

    def send_rtp(self, sid: str, packet: bytes) -> None:
        self._write(encode_rtp(sid, packet))

    def send_data(self, pkt: models.DataPacket) -> None:
        self._write(encode_frame(Kind.DATA, pkt.SerializeToString()))

    def close(self) -> None:
        """Close without firing ``on_closed`` (the caller initiated it)."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()

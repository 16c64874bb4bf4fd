"""Client side of the local participant channel (docs/architecture.md, "Local participant channel").

The framing lives in :mod:`sfu.local.framing` (shared with the SFU side); :class:`ChannelClient` is
the thin asyncio adapter a bridge call uses to JOIN and then exchange SIGNAL / RTP / DATA frames.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from sfu.local.framing import FrameDecoder, FrameError, Kind, decode_rtp, encode_frame, encode_rtp


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

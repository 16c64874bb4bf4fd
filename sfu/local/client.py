"""Client side of the local participant channel: how bridge calls and agent jobs join a room.

:class:`ChannelClient` is the asyncio layer around :class:`sfu.local.protocol.ClientProtocol`,
which holds the protocol itself (the JOIN fields are documented there). A bridge call connects by
path; an agent job connects over the socket its supervisor opened for it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable

from livekit.protocol import models, rtc

from sfu.local import stream
from sfu.local.framing import MAX_FRAME
from sfu.local.protocol import (
    MEDIA_KINDS,
    ClientProtocol,
    ConnectionClosed,
    DataPacketReceived,
    Event,
    FrameRejected,
    JoinRequest,
    RtpReceived,
    SignalResponseReceived,
    State,
)


class ChannelClient:
    """One participant connection to ``local.sock``; callbacks run in the asyncio loop.

    ``on_signal(SignalResponse)``, ``on_rtp(sid, packet)``, ``on_data(DataPacket)`` and
    ``on_closed(reason)`` (exactly once, unless :meth:`close` was called first). Undecodable
    payloads are counted in ``bad_frames`` and skipped; a framing error closes the connection.
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
        self._protocol: ClientProtocol | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.bad_frames = 0

    async def connect(
        self,
        path: str,
        token: str,
        room: str = "",
        *,
        auto_subscribe: bool = True,
        subscribe_kinds: Iterable[str] = MEDIA_KINDS,
    ) -> None:
        """Connect to the channel at ``path`` and send the JOIN; the answer comes to on_signal."""
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_FRAME + 8)
        self._start(
            reader, writer, JoinRequest(token, room, auto_subscribe, frozenset(subscribe_kinds))
        )

    async def connect_socket(
        self,
        sock: socket.socket,
        token: str,
        room: str = "",
        *,
        auto_subscribe: bool = True,
        subscribe_kinds: Iterable[str] = MEDIA_KINDS,
    ) -> None:
        """Like :meth:`connect`, over an already connected socket (an agent job's)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME + 8)
        self._start(
            reader, writer, JoinRequest(token, room, auto_subscribe, frozenset(subscribe_kinds))
        )

    def _start(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, join: JoinRequest
    ) -> None:
        self._protocol = ClientProtocol(join)
        self._writer = writer
        self._flush()
        self._task = asyncio.get_running_loop().create_task(self._read(reader, self._protocol))

    async def _read(self, reader: asyncio.StreamReader, protocol: ClientProtocol) -> None:
        try:
            while protocol.state is not State.CLOSED:
                for event in await stream.receive(reader, protocol):
                    if self._closed:
                        return
                    self._dispatch(event)
        except (ConnectionError, OSError) as exc:
            self._finish(f"room connection lost: {exc}")
        finally:
            self._finish(protocol.close_reason or "room connection closed")

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RtpReceived):
            self._on_rtp(event.track_sid, event.packet)
        elif isinstance(event, SignalResponseReceived):
            self._on_signal(event.response)
        elif isinstance(event, DataPacketReceived):
            self._on_data(event.packet)
        elif isinstance(event, FrameRejected):
            self.bad_frames += 1  # one undecodable frame is skipped; the call continues
        elif isinstance(event, ConnectionClosed):
            self._finish(event.reason)

    def _finish(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._protocol is not None:
            self._protocol.close()
        if self._writer is not None:
            self._writer.close()
        self._on_closed(reason)

    def _flush(self) -> None:
        if self._protocol is not None and self._writer is not None:
            stream.flush(self._protocol, self._writer)

    @property
    def joined(self) -> bool:
        """The SFU answered the JOIN and the connection is open."""
        return self._protocol is not None and self._protocol.state is State.OPEN

    def send_signal(self, req: rtc.SignalRequest) -> None:
        if self._protocol is not None and self._protocol.send_signal(req):
            self._flush()

    def send_rtp(self, sid: str, packet: bytes) -> None:
        if self._protocol is not None and self._protocol.send_rtp(sid, packet):
            self._flush()

    def send_data(self, pkt: models.DataPacket) -> None:
        if self._protocol is not None and self._protocol.send_data(pkt):
            self._flush()

    def close(self) -> None:
        """Close without firing ``on_closed`` (the caller initiated it)."""
        self._closed = True
        if self._protocol is not None:
            self._protocol.close()
        if self._writer is not None:
            self._writer.close()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

"""Client side of the local participant channel: how bridge calls and agent jobs join a room.

:class:`ChannelClient` is the asyncio layer around :class:`sfu.local.protocol.ClientProtocol`,
which holds the protocol itself (the JOIN fields are documented there). A bridge call connects by
path; an agent job connects over the socket its supervisor opened for it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import cast

from livekit.protocol import models, rtc

from sfu.local import stream
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
    Callbacks can run before :meth:`connect` returns (the answer is dispatched as soon as it is
    read), so keep a reference to the client from before the call if a callback sends on it.

    The I/O is an :class:`asyncio.Protocol`: the loop hands each chunk it reads straight to the
    sans-I/O protocol and the events are dispatched in the same call. A bridge worker receives
    one RTP packet per room track every 20 ms on each call's connection; a ``StreamReader`` read
    loop paid a future, a task step and a coroutine resume on top of that for every chunk.
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
        self._transport: asyncio.Transport | None = None
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
        join = JoinRequest(token, room, auto_subscribe, frozenset(subscribe_kinds))
        await self._open(join, path=path)

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
        join = JoinRequest(token, room, auto_subscribe, frozenset(subscribe_kinds))
        await self._open(join, sock=sock)

    async def _open(
        self, join: JoinRequest, path: str | None = None, sock: socket.socket | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: _Reader(self, join), path, sock=sock)

    # ---- called by _Reader (loop thread)
    def _opened(self, transport: asyncio.Transport, join: JoinRequest) -> None:
        self._protocol = ClientProtocol(join)
        self._transport = transport
        if self._closed:  # closed while connecting
            transport.close()
            return
        self._flush()

    def _received(self, data: bytes | None) -> None:
        protocol = self._protocol
        if protocol is None or self._closed:
            return
        if data is None:
            protocol.receive_eof()
        else:
            protocol.receive_data(data)
        for event in protocol.events_received():
            if self._closed:
                return
            self._dispatch(event)
        if protocol.state is State.CLOSED:
            self._finish(protocol.close_reason or "room connection closed")

    def _lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._finish(f"room connection lost: {exc}")
        else:
            self._received(None)
            self._finish("room connection closed")

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
        if self._transport is not None:
            self._transport.close()
        self._on_closed(reason)

    def _flush(self) -> None:
        if self._protocol is not None and self._transport is not None:
            stream.flush(self._protocol, self._transport)

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
        if self._transport is not None:
            self._transport.close()


class _Reader(asyncio.Protocol):
    """The asyncio end of one :class:`ChannelClient` connection: bytes in, nothing else."""

    def __init__(self, client: ChannelClient, join: JoinRequest) -> None:
        self._client = client
        self._join = join

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._client._opened(cast(asyncio.Transport, transport), self._join)

    def data_received(self, data: bytes) -> None:
        self._client._received(data)

    def eof_received(self) -> bool:
        self._client._received(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._lost(exc)

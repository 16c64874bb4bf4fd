"""The worker's end of the control channel to its supervisor (JSON lines, :mod:`bridge.control`).

The worker asks two kinds of questions, "where does this INVITE go?" and "is this PIN right?".
Both go through :meth:`ControlClient.request`: the message's ``id`` pairs it with the reply, and
a supervisor that does not answer in time (or a missing channel) yields the caller's fallback
reply, so a call is never left waiting forever. Every other message from the supervisor is
handed to ``on_message``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TypeVar

import bridge.control as control

log = logging.getLogger("bridge.worker.control_client")

#: How long the supervisor may take to answer a request before the fallback reply is used.
REQUEST_TIMEOUT_S = 10.0

#: A question the worker asks, and the supervisor's answer to it.
Request = control.InviteRequest | control.PinEntered
Reply = control.InviteResult | control.PinResult
R = TypeVar("R", control.InviteResult, control.PinResult)


class ControlClient:
    """Sends control messages and pairs replies with requests; see the module docstring.

    ``on_message`` gets every message that is not a reply; ``on_closed`` runs once when the
    supervisor's end goes away (a worker without a supervisor can route no calls).
    """

    def __init__(
        self, on_message: Callable[[control.Message], None], on_closed: Callable[[], None]
    ) -> None:
        self._on_message = on_message
        self._on_closed = on_closed
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._next_id = 1
        self._task: asyncio.Task[None] | None = None

    async def open(self, fd: int) -> None:
        """Use the inherited socketpair end ``fd`` and start reading from it."""
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._writer = writer
        self._task = asyncio.get_running_loop().create_task(self._read(reader))

    def new_id(self) -> int:
        """A fresh request id (unique within this worker process)."""
        req_id = self._next_id
        self._next_id += 1
        return req_id

    def send(self, msg: control.Message) -> None:
        """Write one message; silently dropped without a live channel."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(control.encode(msg))

    async def request(self, msg: Request, fallback: R, timeout: float = REQUEST_TIMEOUT_S) -> R:
        """Send ``msg`` and wait for the reply with its ``id``.

        Returns ``fallback`` if no reply of the fallback's type arrives within ``timeout``.
        """
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[msg.id] = fut
        self.send(msg)
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            log.warning("no %s reply for request %d in %.0f s", msg.TYPE, msg.id, timeout)
            return fallback
        finally:
            self._pending.pop(msg.id, None)
        if not isinstance(reply, type(fallback)):
            log.warning("request %d got a %s reply", msg.id, reply.TYPE)
            return fallback
        return reply

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            async for msg in control.messages(reader):
                if isinstance(msg, control.InviteResult | control.PinResult):
                    fut = self._pending.get(msg.id)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                else:
                    self._on_message(msg)
        finally:
            self._on_closed()

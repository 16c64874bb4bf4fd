"""The local channel's asyncio helpers: the one write helper of both ends, and a read step.

:mod:`sfu.local.protocol` does no I/O. Each end (:class:`sfu.local.server.LocalChannelServer`,
:class:`sfu.local.client.ChannelClient`) reads with an :class:`asyncio.Protocol` that feeds what
the loop reads to the sans-I/O protocol and handles the events in the same call: a bridge worker
sends and receives an RTP frame per call and room track every 20 ms, and a ``StreamReader``
loop paid a future, a task step and a coroutine resume on top of each. Writes go through
:func:`flush`. :func:`receive` is the read step for code that does read with a
``StreamReader`` (the test harness's stand-in room and test clients).
"""

from __future__ import annotations

import asyncio

from sfu.local.protocol import Event, Protocol

#: Bytes read from a connection at a time (:func:`receive`).
READ_SIZE = 65536


async def receive(reader: asyncio.StreamReader, protocol: Protocol) -> list[Event]:
    """Read once (end of stream included) into ``protocol``; the events that produced."""
    data = await reader.read(READ_SIZE)
    if data:
        protocol.receive_data(data)
    else:
        protocol.receive_eof()
    return protocol.events_received()


def flush(protocol: Protocol, transport: asyncio.WriteTransport | asyncio.StreamWriter) -> None:
    """Write what ``protocol`` has queued (dropped if the transport is already closing).

    ``transport`` is a connection's transport, or a ``StreamWriter`` (same two methods).

    Several queued frames go out in one write (one system call, one wake-up of the reader).
    """
    chunks = protocol.data_to_send()
    if not chunks or transport.is_closing():
        return
    transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

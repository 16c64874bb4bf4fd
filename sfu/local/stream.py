"""asyncio plumbing of the local channel (the SFU end, and the client's writes): feed, write.

:mod:`sfu.local.protocol` does no I/O; these three functions are all the I/O the server adds
to it, and :func:`flush` is also the client's. The server awaits the room's forwarding of each
packet, hence a stream read loop. The client end (:mod:`sfu.local.client`) has nothing to await
per packet and reads with an :class:`asyncio.Protocol` instead (a bridge worker gets a packet
per call and room track every 20 ms).
"""

from __future__ import annotations

import asyncio

from sfu.local.protocol import Event, Protocol

#: Bytes read from a connection at a time.
READ_SIZE = 65536


async def receive(reader: asyncio.StreamReader, protocol: Protocol) -> list[Event]:
    """Read once (end of stream included) into ``protocol``; the events that produced."""
    data = await reader.read(READ_SIZE)
    if data:
        protocol.receive_data(data)
    else:
        protocol.receive_eof()
    return protocol.events_received()


def flush(protocol: Protocol, writer: asyncio.StreamWriter | asyncio.WriteTransport) -> None:
    """Write what ``protocol`` has queued (dropped if the stream is already closing).

    ``writer`` is the server's stream writer or the client's transport (same two methods).
    """
    chunks = protocol.data_to_send()
    if not writer.is_closing():
        for chunk in chunks:
            writer.write(chunk)


async def close(protocol: Protocol, writer: asyncio.StreamWriter) -> None:
    """Send what is queued (an ERROR frame, say), then close the stream."""
    flush(protocol, writer)
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()

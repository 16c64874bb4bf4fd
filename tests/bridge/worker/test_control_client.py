"""ControlClient.request: replies are paired by id; silence or a wrong reply gives the fallback."""

from __future__ import annotations

import asyncio
import socket

import bridge.control as control
from bridge.worker.control_client import ControlClient


async def test_request_pairs_reply_by_id_and_falls_back_on_timeout() -> None:
    worker_end, supervisor_end = socket.socketpair()
    others: list[control.Message] = []
    closed = asyncio.Event()
    client = ControlClient(others.append, closed.set)
    await client.open(worker_end.detach())
    reader, writer = await asyncio.open_unix_connection(sock=supervisor_end)

    async def supervisor() -> None:
        async for msg in control.messages(reader):
            if isinstance(msg, control.InviteRequest) and msg.call_id == "answered":
                writer.write(control.encode(control.Shutdown()))
                # a reply for somebody else first, then ours
                writer.write(control.encode(control.InviteResult(id=999, status=486)))
                writer.write(control.encode(control.InviteResult(id=msg.id, status=404)))
            elif isinstance(msg, control.PinEntered):
                writer.write(control.encode(control.InviteResult(id=msg.id, status=486)))

    task = asyncio.create_task(supervisor())

    def invite(call_id: str) -> control.InviteRequest:
        return control.InviteRequest(
            id=client.new_id(), call_id=call_id, from_user="", from_host="", to_user="1",
            src_ip="127.0.0.1", src_port=5060,
        )  # fmt: skip

    req = invite("answered")
    res = await client.request(req, control.InviteResult(id=req.id, status=503))
    assert (res.id, res.status) == (req.id, 404)
    assert others == [control.Shutdown()]

    req = invite("ignored")
    res = await client.request(req, control.InviteResult(id=req.id, status=503), timeout=0.2)
    assert res.status == 503

    # a reply of the wrong type is not taken for the answer
    pin = control.PinEntered(id=client.new_id(), call_id="c", digits="1")
    fallback = control.PinResult(id=pin.id, call_id="c", status=503)
    assert await client.request(pin, fallback, timeout=5) is fallback

    writer.close()
    await asyncio.wait_for(closed.wait(), 5)
    task.cancel()

"""Codec-routed worker pools in a real Kamailio front, with Python stand-in workers.

The front keeps two dispatcher sets: 16 kHz workers (set 1) and 8 kHz workers (set 2). An INVITE
whose offer carries G.722 (payload type 9 on the ``m=audio`` line, or an rtpmap for it) or that has
no offer goes to the 16 kHz pool first; any other offer to the 8 kHz pool. Each pool takes the
other's overflow (no free slot by call load, or a worker answering 486/503), the call load follows
the call into the other pool, and the caller gets 486 only when both pools are full.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest

from bridge.service.front import FrontWorker, KamailioFront
from roomline_harness.front_sip import (
    FRONT_HOST,
    UAC,
    Lines,
    Worker,
    free_ports,
    header,
    in_dialog,
    open_uac,
    request,
    start_front,
    start_worker,
    status_of,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed"),
    pytest.mark.timeout(120),
]


def _sdp(mline: str, *attrs: str) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0", mline]
    return "\r\n".join([*lines, *attrs, "a=sendrecv", ""])


#: Offers by what the front should make of them.
G711 = _sdp("m=audio 40000 RTP/AVP 0 8 101", "a=rtpmap:101 telephone-event/8000")
G722_STATIC = _sdp("m=audio 40000 RTP/AVP 0 9 101", "a=rtpmap:9 G722/8000")
G722_LAST = _sdp("m=audio 40000 RTP/AVP 0 9")  # PT 9 last on the line, no rtpmap
G722_DYNAMIC = _sdp("m=audio 40000 RTP/AVP 96 0", "a=rtpmap:96 g722/8000")
#: Port 9 (the discard port WebRTC-style offers use) is not payload type 9.
G711_PORT_9 = _sdp("m=audio 9 RTP/AVP 0 8")
#: Payload type 9 on a video line says nothing about the audio.
G711_VIDEO_9 = _sdp("m=audio 40000 RTP/AVP 0", "m=video 40002 RTP/AVP 9")


class Call:
    """One INVITE from its own UAC and its final response."""

    def __init__(self, uac: UAC, invite: str, final: str) -> None:
        self.uac, self.invite, self.final = uac, invite, final

    @property
    def status(self) -> int | None:
        return status_of(self.final)

    async def hang_up(self, port: int) -> None:
        dest = (FRONT_HOST, port)
        self.uac.send(in_dialog("ACK", self.invite, self.final, dest, self.uac.addr, 1, True), dest)
        self.uac.send(in_dialog("BYE", self.invite, self.final, dest, self.uac.addr, 2, True), dest)
        ok = await self.uac.final(5.0)
        assert ok is not None and status_of(ok) == 200, ok
        self.uac.close()


async def _call(port: int, sdp: str | None) -> Call:
    uac = await open_uac()
    extra = ["Content-Type: application/sdp"] if sdp else []
    inv = request("INVITE", (FRONT_HOST, port), uac.addr, extra=extra, body=sdp or "")
    uac.send(inv, (FRONT_HOST, port))
    final = await uac.final(5.0)
    assert final is not None, "no final response to INVITE"
    return Call(uac, inv, final)


def _took(worker: Worker, call: Call) -> bool:
    cid = header(call.invite, "Call-ID")
    return any(header(m, "Call-ID") == cid for m in worker.requests("INVITE"))


@pytest.fixture
async def pools() -> AsyncIterator[tuple[int, Worker, Worker, Lines]]:
    """One 16 kHz and one 8 kHz stand-in worker, one call slot each."""
    wide_port, narrow_port = free_ports(2)
    wide, narrow = await start_worker(wide_port), await start_worker(narrow_port)
    lines = Lines()
    front, port, run_dir = await start_front(
        [FrontWorker(wide_port, maxload=1), FrontWorker(narrow_port, maxload=1, wideband=False)],
        lines,
    )
    try:
        yield port, wide, narrow, lines
    finally:
        await front.stop()
        wide.close()
        narrow.close()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.parametrize(
    ("sdp", "pool"),
    [
        (G711, "narrow"),
        (G711_PORT_9, "narrow"),
        (G711_VIDEO_9, "narrow"),
        (G722_STATIC, "wide"),
        (G722_LAST, "wide"),
        (G722_DYNAMIC, "wide"),
        (None, "wide"),
    ],
    ids=["g711", "g711-port-9", "g711-video-pt-9", "g722-pt9", "g722-pt9-last", "g722-rtpmap",
         "late-offer"],
)  # fmt: skip
async def test_offer_picks_the_pool(
    pools: tuple[int, Worker, Worker, Lines], sdp: str | None, pool: str
) -> None:
    port, wide, narrow, _ = pools
    call = await _call(port, sdp)
    assert call.status == 200, call.final
    first, other = (wide, narrow) if pool == "wide" else (narrow, wide)
    assert _took(first, call) and not _took(other, call)
    await call.hang_up(port)


async def test_each_pool_takes_the_others_overflow_and_486_when_both_full(
    pools: tuple[int, Worker, Worker, Lines],
) -> None:
    port, wide, narrow, lines = pools
    g711 = await _call(port, G711)  # the 8 kHz worker's only slot
    assert g711.status == 200 and _took(narrow, g711)
    overflow = await _call(port, G711)  # 8 kHz pool full by call load: the 16 kHz worker
    assert overflow.status == 200 and _took(wide, overflow) and not _took(narrow, overflow)
    full = await _call(port, G722_STATIC)  # both full: 486 from the front itself
    assert full.status == 486 and not _took(wide, full) and not _took(narrow, full)
    assert lines.has("front: all workers full")
    # The BYE frees the slot in the pool the call was counted in (the 16 kHz one)...
    await overflow.hang_up(port)
    wideband = await _call(port, G722_DYNAMIC)
    assert wideband.status == 200 and _took(wide, wideband)
    # ... and the other way round: a G.722 caller overflows into the 8 kHz pool.
    await g711.hang_up(port)
    g722 = await _call(port, G722_STATIC)
    assert g722.status == 200 and _took(narrow, g722)
    for c in (wideband, g722):
        await c.hang_up(port)
    full.uac.close()


@pytest.mark.parametrize("status", [486, 503, 0], ids=["486", "503", "no-answer"])
async def test_failover_continues_into_the_other_pool(status: int) -> None:
    """An 8 kHz worker answering ``status`` (0: nothing within ``fr_timer_ms``): the call goes on
    to the 16 kHz pool, and the load leaves the 8 kHz worker (it is offered the next call again,
    not skipped as full)."""
    wide_port, narrow_port = free_ports(2)
    wide, bad = await start_worker(wide_port), await start_worker(narrow_port, status)
    lines = Lines()
    front, port, run_dir = await start_front(
        [FrontWorker(wide_port, maxload=1), FrontWorker(narrow_port, maxload=1, wideband=False)],
        lines,
    )
    try:
        first = await _call(port, G711)
        assert first.status == 200 and _took(bad, first) and _took(wide, first)
        assert lines.has("trying the other pool")
        # The 16 kHz worker is full now; the 8 kHz one was released: it is tried, fails, and
        # the caller gets its answer (nothing free in the other pool).
        second = await _call(port, G711)
        assert _took(bad, second) and not _took(wide, second)
        # A proxy does not pass a 503 on (RFC 3261 16.7: Kamailio's tm sends 500 instead); no
        # answer at all ends in tm's own 408.
        assert second.status == {503: 500, 0: 408}.get(status, status)
        # The first call's BYE frees the 16 kHz slot: the overflow works again.
        await first.hang_up(port)
        third = await _call(port, G711)
        assert third.status == 200 and _took(bad, third) and _took(wide, third)
        await third.hang_up(port)
        second.uac.close()
    finally:
        await front.stop()
        wide.close()
        bad.close()
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_one_pool_only_takes_every_offer() -> None:
    """All workers at 8 kHz (``wideband_workers: 0``): G.722 offers and late offers go there too
    (the rendered script names no empty set)."""
    ports = free_ports(2)
    workers = [await start_worker(p) for p in ports]
    lines = Lines()
    front: KamailioFront
    front, port, run_dir = await start_front(
        [FrontWorker(p, maxload=2, wideband=False) for p in ports], lines
    )
    try:
        assert 'ds_is_active("1")' not in front.cfg_path.read_text()
        calls = [await _call(port, sdp) for sdp in (G722_STATIC, None, G711)]
        assert all(c.status == 200 for c in calls), [c.final for c in calls]
        assert sum(len(w.requests("INVITE")) for w in workers) == 3
        for c in calls:
            await c.hang_up(port)
        assert not lines.has("not found")  # no lookup of a missing dispatcher set
    finally:
        await front.stop()
        for w in workers:
            w.close()
        shutil.rmtree(run_dir, ignore_errors=True)

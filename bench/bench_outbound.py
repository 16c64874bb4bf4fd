"""Outbound call set-up latency against the whole appliance (``CreateSIPParticipant``).

The callee is a minimal SIP UAS written here (UDP, answers every INVITE with 200 OK at once, or
after ``--ring-ms`` with a 180 first), so the INVITE's arrival and the 200's departure are taken on
this process's monotonic clock next to the ``livekit-api`` call and the LiveKit SDK's attribute
events. Figures printed (no assertions), over ``--calls`` sequential calls:

* **API → INVITE**: from calling ``create_sip_participant`` (no ``wait_until_answered``) to the
  INVITE arriving at the callee (validation, token, worker pick, room join over the local
  channel, per-call pjsua account, INVITE).
* **API → RPC return**: the same call's HTTP round trip (returns once the callee is in the room).
* **200 OK → active**: from sending the 200 OK to the SDK seeing ``sip.callStatus=active``.
* **wait_until_answered RPC**: API call → return with an immediate answer.

With ``--concurrent N`` it then places N calls at once with audio both ways and prints CPU per call
and calls per core (bench/outbound_capacity.py); ``--calls 0`` skips the latency part.

    PYTHONPATH=. .venv/bin/python bench/bench_outbound.py --calls 20
    PYTHONPATH=. .venv/bin/python bench/bench_outbound.py --calls 0 --concurrent 8 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit import api, rtc  # noqa: E402

from roomline_harness.lk import connect, token  # noqa: E402
from roomline_harness.outbound import pick_ports, start_appliance  # noqa: E402
from roomline_harness.server import API_KEY, API_SECRET, stop_server  # noqa: E402


class Uas(asyncio.DatagramProtocol):
    """Answers INVITEs with 200 OK (SDP: PCMU), BYEs with 200; timestamps INVITEs and 200s."""

    def __init__(self, ring_ms: int = 0) -> None:
        super().__init__()
        self.ring_ms = ring_ms
        self.transport: asyncio.DatagramTransport | None = None
        self.invites: dict[str, float] = {}
        self.answers: dict[str, float] = {}
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        text = data.decode(errors="replace")
        head, _, _body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        method = lines[0].split(" ", 1)[0]
        hdrs = [ln for ln in lines[1:] if ln]
        call_id = next(
            (h.split(":", 1)[1].strip() for h in hdrs if h.lower().startswith("call-id:")), ""
        )
        if method == "INVITE":
            if call_id in self.invites:
                return  # retransmission
            self.invites[call_id] = now
            if self.ring_ms:
                self._reply(hdrs, addr, "180 Ringing", "")
                asyncio.get_running_loop().call_later(
                    self.ring_ms / 1000, self._answer, hdrs, addr, call_id
                )
            else:
                self._answer(hdrs, addr, call_id)
        elif method == "BYE":
            self._reply(hdrs, addr, "200 OK", "")

    def _answer(self, hdrs: list[str], addr: tuple[str, int], call_id: str) -> None:
        sdp = (
            "v=0\r\no=uas 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.port + 2} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
        )
        self._reply(hdrs, addr, "200 OK", sdp)
        self.answers[call_id] = time.monotonic()

    def _reply(self, hdrs: list[str], addr: tuple[str, int], status: str, sdp: str) -> None:
        keep = [
            h
            for h in hdrs
            if h.split(":", 1)[0].strip().lower() in ("via", "from", "call-id", "cseq")
        ]
        to = next(h for h in hdrs if h.lower().startswith("to:"))
        if ";tag=" not in to:
            to += ";tag=bench"
        out = [f"SIP/2.0 {status}", *keep, to, f"Contact: <sip:uas@127.0.0.1:{self.port}>"]
        if sdp:
            out += ["Content-Type: application/sdp", f"Content-Length: {len(sdp)}", "", sdp]
        else:
            out += ["Content-Length: 0", "", ""]
        assert self.transport is not None
        self.transport.sendto("\r\n".join(out).encode(), addr)


def describe(name: str, xs: list[float]) -> None:
    if not xs:
        print(f"{name}: no samples")
        return
    s = sorted(xs)

    def pct(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    print(
        f"{name}: n={len(xs)} median {statistics.median(xs):.1f} ms, "
        f"p90 {pct(0.9):.1f} ms, p99 {pct(0.99):.1f} ms, min {s[0]:.1f}, max {s[-1]:.1f}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20, help="sequential calls (0: skip)")
    ap.add_argument("--concurrent", type=int, default=0, help="then N calls at once (max 8)")
    ap.add_argument("--seconds", type=float, default=10.0, help="CPU window of --concurrent")
    args = ap.parse_args()
    if not 0 <= args.concurrent <= 8:
        ap.error("--concurrent: the bench appliance has 2 workers of 4 calls (0..8)")
    tmp = Path(tempfile.mkdtemp(prefix="rlbo"))
    ports = pick_ports()
    server = start_appliance(tmp, ports)
    loop = asyncio.get_running_loop()
    transport, uas = await loop.create_datagram_endpoint(
        Uas, local_addr=("127.0.0.1", ports.base + 165)
    )
    api_to_invite: list[float] = []
    api_rtt: list[float] = []
    ok_to_active: list[float] = []
    wait_rpc: list[float] = []
    try:
        lk = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
        trunk = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(
                    name="bench", address=f"127.0.0.1:{uas.port}", numbers=["+15550001000"]
                )
            )
        )
        room_name = "bench-outbound"
        obs = await connect(server.ws_url, token("observer", room_name))
        active_at: dict[str, float] = {}

        def changed(_changed: dict[str, str], p: rtc.Participant) -> None:
            if p.attributes.get("sip.callStatus") == "active" and p.identity not in active_at:
                active_at[p.identity] = time.monotonic()

        obs.on("participant_attributes_changed", changed)
        for i in range(args.calls):
            ident = f"callee{i}"
            before = set(uas.invites)
            t0 = time.monotonic()
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk.sip_trunk_id,
                    sip_call_to=f"+1555000{i:04d}",
                    room_name=room_name,
                    participant_identity=ident,
                )
            )
            api_rtt.append((time.monotonic() - t0) * 1e3)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and ident not in active_at:
                await asyncio.sleep(0.005)
            new = set(uas.invites) - before
            if new and ident in active_at:
                cid = new.pop()
                api_to_invite.append((uas.invites[cid] - t0) * 1e3)
                ok_to_active.append((active_at[ident] - uas.answers[cid]) * 1e3)
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room=room_name, identity=ident)
            )
            await asyncio.sleep(0.3)
        for i in range(max(3, args.calls // 4) if args.calls else 0):
            ident = f"waiter{i}"
            t0 = time.monotonic()
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk.sip_trunk_id,
                    sip_call_to=f"+1555100{i:04d}",
                    room_name=room_name,
                    participant_identity=ident,
                    wait_until_answered=True,
                )
            )
            wait_rpc.append((time.monotonic() - t0) * 1e3)
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room=room_name, identity=ident)
            )
            await asyncio.sleep(0.3)
        await obs.disconnect()
        await lk.aclose()
        if args.concurrent:
            from bench.outbound_capacity import run_capacity

            await run_capacity(server, ports, args.concurrent, args.seconds)
    finally:
        transport.close()
        stop_server(server)
    describe("API call -> INVITE on the wire", api_to_invite)
    describe("API call -> RPC returns (callee in the room)", api_rtt)
    describe("200 OK sent -> sip.callStatus=active seen by the SDK", ok_to_active)
    describe("wait_until_answered RPC (immediate answer)", wait_rpc)


if __name__ == "__main__":
    asyncio.run(main())

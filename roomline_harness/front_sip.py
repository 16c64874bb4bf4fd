"""Tiny SIP peers for the front tests: a recording UAS "worker" and a UDP UAC, both asyncio;
and a real Kamailio front started in front of them (:func:`start_front`).

Only what the tests need: enough SIP to make Kamailio route, nothing more.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from bridge.service.front import FrontOptions, FrontWorker, KamailioFront

FRONT_HOST = "127.0.0.1"

#: This module's tests take ports from 28000-28999 only (shared machine); each test process gets
#: its own 100-port slice by pid so parallel runs rarely collide, and ports are probed first.
PORT_RANGE = (28000, 28999)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports in 28000-28999 free for both UDP and TCP on ``host``."""
    ports: list[int] = []
    candidates = list(range(PORT_RANGE[0], PORT_RANGE[1] + 1))
    random.Random(os.getpid() ^ time.monotonic_ns()).shuffle(candidates)
    for port in candidates:
        if len(ports) == n:
            break
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind((host, port))
        except OSError:
            continue
        ports.append(port)
    if len(ports) < n:
        raise RuntimeError("not enough free ports in 28000-28999")
    return ports


def header(msg: str, name: str) -> str | None:
    """First value of header ``name`` (case-insensitive), or None."""
    for line in msg.split("\r\n")[1:]:
        if not line:
            break
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


def headers(msg: str, name: str) -> list[str]:
    out = []
    for line in msg.split("\r\n")[1:]:
        if not line:
            break
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            out.append(v.strip())
    return out


def status_of(msg: str) -> int | None:
    m = re.match(r"SIP/2\.0 (\d{3}) ", msg)
    return int(m.group(1)) if m else None


def method_of(msg: str) -> str | None:
    m = re.match(r"([A-Z]+) \S+ SIP/2\.0", msg)
    return m.group(1) if m else None


@dataclass
class Worker(asyncio.DatagramProtocol):
    """A stand-in bridge worker on UDP: records every message, answers like a small UAS.

    OPTIONS → 200; INVITE → 100 then ``invite_status`` (200 with a To-tag by default; 0 = no
    answer at all); BYE,
    CANCEL and others → 200; ACK → nothing.
    """

    invite_status: int = 200
    received: list[str] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = data.decode("utf-8", "replace")
        self.received.append(msg)
        method = method_of(msg)
        if method is None or method == "ACK":
            return
        if method == "INVITE":
            if self.invite_status == 0:
                return  # a hung worker: alive for OPTIONS, silent for calls
            self._reply(msg, addr, 100, "Trying", tag=False)
            self._reply(msg, addr, self.invite_status, "Reply", tag=True)
        else:
            self._reply(msg, addr, 200, "OK", tag=method != "OPTIONS")

    def _reply(self, msg: str, addr: tuple[str, int], code: int, reason: str, tag: bool) -> None:
        lines = [f"SIP/2.0 {code} {reason}"]
        for line in msg.split("\r\n")[1:]:
            if not line:
                break
            k = line.partition(":")[0].strip().lower()
            if k in ("via", "v", "from", "f", "call-id", "i", "cseq", "record-route"):
                lines.append(line)
            elif k in ("to", "t"):
                if tag and ";tag=" not in line:
                    line += ";tag=w" + str(abs(hash(header(msg, "Call-ID"))) % 10**8)
                lines.append(line)
        if code == 200 and method_of(msg) == "INVITE":
            assert self.transport is not None
            host, port = self.transport.get_extra_info("sockname")[:2]
            lines.append(f"Contact: <sip:worker@{host}:{port}>")
        lines += ["Content-Length: 0", "", ""]
        assert self.transport is not None
        self.transport.sendto("\r\n".join(lines).encode(), addr)

    def requests(self, method: str) -> list[str]:
        return [m for m in self.received if method_of(m) == method]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_worker(port: int, invite_status: int = 200, host: str = "127.0.0.1") -> Worker:
    loop = asyncio.get_running_loop()
    w = Worker(invite_status=invite_status)
    await loop.create_datagram_endpoint(lambda: w, local_addr=(host, port))
    return w


class UAC(asyncio.DatagramProtocol):
    """A UDP client bound to ``host`` that sends raw requests and queues every reply."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data.decode("utf-8", "replace"))

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def send(self, data: bytes | str, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data.encode() if isinstance(data, str) else data, dest)

    async def final(self, timeout: float = 5.0) -> str | None:
        """The next final (>=200) response, or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                return None
            code = status_of(msg)
            if code is not None and code >= 200:
                return msg

    async def anything(self, timeout: float) -> str | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_uac(host: str = "127.0.0.1") -> UAC:
    loop = asyncio.get_running_loop()
    u = UAC()
    await loop.create_datagram_endpoint(lambda: u, local_addr=(host, 0))
    return u


def request(
    method: str,
    front: tuple[str, int],
    src: tuple[str, int],
    *,
    call_id: str | None = None,
    cseq: int = 1,
    to_tag: str = "",
    user_agent: str = "roomline-test",
    extra: list[str] | None = None,
    body: str = "",
    ruri_user: str = "+15550100",
) -> str:
    """A well-formed request to the front from ``src`` (UDP)."""
    call_id = call_id or f"{random.getrandbits(64):x}@test"
    branch = f"z9hG4bK{random.getrandbits(48):x}"
    host, port = front
    user = f"{ruri_user}@" if ruri_user else ""
    lines = [
        f"{method} sip:{user}{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:caller@{src[0]}>;tag=c{random.getrandbits(32):x}",
        f"To: <sip:{user}{host}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:caller@{src[0]}:{src[1]}>",
        f"User-Agent: {user_agent}",
        *(extra or []),
        f"Content-Length: {len(body.encode())}",
        "",
        body,
    ]
    return "\r\n".join(lines)


def in_dialog(
    method: str,
    invite: str,
    final: str,
    front: tuple[str, int],
    src: tuple[str, int],
    cseq: int,
    routes: bool,
) -> str:
    """ACK/BYE for the dialog set up by ``invite``/``final``; ``routes=False`` plays a simple UA
    that ignores Record-Route and sends straight to the front with no Route header."""
    branch = f"z9hG4bK{random.getrandbits(48):x}"
    contact = header(final, "Contact") or f"<sip:{front[0]}:{front[1]}>"
    target = re.sub(r"^.*<|>.*$", "", contact)
    route_lines = []
    if routes:
        rr = headers(final, "Record-Route")
        route_lines = [f"Route: {r}" for r in reversed(rr)]
    else:
        target = f"sip:+15550100@{front[0]}:{front[1]}"
    lines = [
        f"{method} {target} SIP/2.0",
        f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: {header(invite, 'From')}",
        f"To: {header(final, 'To')}",
        f"Call-ID: {header(invite, 'Call-ID')}",
        f"CSeq: {cseq} {method}",
        *route_lines,
        "User-Agent: roomline-test",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines)


class Lines:
    """Collects the front's log lines (``on_line`` of :class:`KamailioFront`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in ln for ln in self.lines)


async def start_front(
    workers: list[FrontWorker], lines: Lines, **kw: Any
) -> tuple[KamailioFront, int, str]:
    """A real Kamailio front on :data:`FRONT_HOST` (a free port) for ``workers``: probes every
    second, 1 s to a worker's first reply. Returns the front, its port and its run directory."""
    (port,) = free_ports(1)
    run_dir = tempfile.mkdtemp(prefix="front-", dir="/tmp")
    opts = FrontOptions(
        workers=tuple(workers),
        bind_address=FRONT_HOST,
        port=port,
        trusted_addresses=("127.0.0.9",),
        ping_interval=1,
        fr_timer_ms=1000,
        **kw,
    )
    front = KamailioFront(opts, run_dir, on_line=lines, stop_timeout=3.0)
    await front.start()
    await front.wait_ready()
    return front, port, run_dir

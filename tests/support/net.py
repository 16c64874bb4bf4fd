"""Free ports for peers that must be told a port in advance (SIPp, pjsua2, RTP ranges).

Servers we control bind port 0 and report the port they got (see :mod:`tests.support.server`);
these helpers are for the rest. A port found here is free *now*: another process may take it before
the peer binds it, so callers that can retry should.
"""

from __future__ import annotations

import random
import socket

#: UDP ranges are searched here, below the kernel's ephemeral range (32768+, where the ports of
#: :func:`free_port` and of every outgoing socket come from), so they do not collide with those.
_RANGE_LOW, _RANGE_HIGH = 20000, 32000


def free_port(*, udp: bool = True, tcp: bool = True) -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (SIP listens on both), or just one of them."""
    kinds = [k for k, want in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)) if want]
    if not kinds:
        raise ValueError("free_port: ask for tcp, udp or both")
    for _ in range(100):
        with socket.socket(socket.AF_INET, kinds[0]) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if all(_bindable(port, kind) for kind in kinds[1:]):
                return port
    raise RuntimeError("no free port")


def free_udp_range(size: int) -> tuple[int, int]:
    """``(first, last)`` of ``size`` consecutive UDP ports that are all free right now."""
    for _ in range(200):
        start = random.randrange(_RANGE_LOW, _RANGE_HIGH - size, 2)  # RTP starts on even ports
        socks: list[socket.socket] = []
        try:
            for port in range(start, start + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start, start + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no free range of {size} UDP ports")


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

"""Free ports for peers that must be told a port in advance (SIPp, pjsua2, RTP ranges).

Servers we control bind port 0 and report the port they got (see :mod:`roomline_harness.server`);
these helpers are for the rest. A port found here is free *now*: another process may take it before
the peer binds it, so callers that can retry should.
"""

from __future__ import annotations

import os
import random
import socket

#: Names a narrower space for this process's UDP ranges ("LOW-HIGH"): ``.ci/test`` gives the test
#: session that runs beside the soak one part of the space and the soak another, so that a range
#: one of them probed cannot be one the other's appliance binds later.
RANGE_ENV = "ROOMLINE_TEST_UDP_RANGE"


def parse_range(text: str) -> tuple[int, int]:
    """``"LOW-HIGH"`` as a pair of ports, ``LOW < HIGH``."""
    low, sep, high = text.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 0 < int(low) < int(high) < 65536:
        raise ValueError(f"expected LOW-HIGH ports, got {text!r}")
    return int(low), int(high)


#: UDP ranges are searched here, below the kernel's ephemeral range (32768+, where the ports of
#: :func:`free_port` and of every outgoing socket come from), so they do not collide with those.
_RANGE_LOW, _RANGE_HIGH = parse_range(os.environ.get(RANGE_ENV) or "20000-32000")

#: Where the next range search starts. Ranges are handed out round-robin through the space from a
#: random start, so two ranges asked for by one process (a server's WebRTC range and its SIP
#: workers' RTP range, probed one after the other while neither is bound yet) never overlap until
#: the whole space has been handed out once; probing alone cannot promise that, since a probed
#: range is free again as soon as the probe's sockets close.
_cursor = random.randrange(_RANGE_LOW, _RANGE_HIGH, 2)


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
    start = _next_free(size, (socket.SOCK_DGRAM,))
    return start, start + size - 1


def _next_free(size: int, kinds: tuple[int, ...]) -> int:
    """The first block of ``size`` ports at or after the cursor that binds for every kind."""
    global _cursor
    span = _RANGE_HIGH - _RANGE_LOW
    for _ in range(span // 2):
        if _cursor + size > _RANGE_HIGH:
            _cursor = _RANGE_LOW
        start = _cursor
        _cursor += size + size % 2  # the next block starts on an even port too
        if all(_bindable(p, kind) for p in range(start, start + size) for kind in kinds):
            return start
    raise RuntimeError(f"no {size} consecutive free ports in {_RANGE_LOW}-{_RANGE_HIGH}")


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(size: int, low: int = _RANGE_LOW, high: int = _RANGE_HIGH) -> int:
    """First port of ``size`` consecutive ports in ``[low, high]`` free for both TCP and UDP now.

    For a peer that needs several fixed ports at once (the soak's appliance, SIPp and RTP ranges),
    or a run that must keep inside a port range it was given.
    """
    both = (socket.SOCK_DGRAM, socket.SOCK_STREAM)
    if (low, high) == (_RANGE_LOW, _RANGE_HIGH):
        return _next_free(size, both)  # the shared space: round-robin with free_udp_range
    starts = list(range(low + low % 2, high - size + 2, 2))  # even: RTP ranges start on one
    random.shuffle(starts)
    for start in starts[:200]:
        if all(_bindable(p, kind) for p in range(start, start + size) for kind in both):
            return start
    raise RuntimeError(f"no {size} consecutive free ports in {low}-{high}")

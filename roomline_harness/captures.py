"""Captured packets in ``tests/data/*.bin``: u16 big-endian length prefix, then the packet."""

from __future__ import annotations

import struct

from roomline_harness.paths import DATA


def load(name: str) -> list[bytes]:
    """The packets of ``tests/data/<name>``, in capture order."""
    raw = (DATA / name).read_bytes()
    out, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("!H", raw, pos)
        out.append(raw[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out

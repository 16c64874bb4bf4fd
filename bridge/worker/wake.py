"""The worker's SIP sockets, found so that SIP arriving at an idle worker wakes its loop.

pjsua runs with ``threadCnt=0``: nothing reads the SIP sockets unless the worker calls
``libHandleEvents``. With calls up the conference clock wakes the loop every 20 ms anyway; with
none the worker used to poll every 20 ms too, which cost about 0.7 % of a core per idle worker
(8 workers in the default config: 6 % of a core doing nothing). Instead the loop watches pjsua's
listening sockets (``loop.add_reader``) and polls slowly for pjsua's timers.

pjsua2 does not expose its sockets, so they are found the way ``ss -p`` does: the kernel's socket
tables in ``/proc/self/net`` give the inodes bound to the SIP port, ``/proc/self/fd`` maps inodes
to descriptors. Only sockets that live as long as the transport are watched (the UDP socket and
the TCP listener): an accepted TCP connection is closed by pjsua whenever it likes, and a
descriptor closed under an event loop's watch could later name some other socket. Messages on
such connections are picked up by the slow poll, or the 20 ms one while a call is up.

Linux only; anywhere else (or if ``/proc`` is unreadable) nothing is found and the worker keeps
polling every 20 ms.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["LISTEN_STATES", "WakeTableError", "parse_socket_table", "sip_socket_fds"]

#: ``st`` column values of sockets that last as long as the transport: TCP LISTEN (0A) and an
#: unconnected UDP socket (07, "TCP_CLOSE" in the kernel's numbering).
LISTEN_STATES = frozenset({"0A", "07"})
#: Kernel socket tables searched, relative to ``/proc/self/net``.
TABLES = ("udp", "udp6", "tcp", "tcp6")


class WakeTableError(ValueError):
    """A ``/proc/net`` socket table line that does not have the kernel's layout."""


def parse_socket_table(text: str, port: int) -> set[int]:
    """Inodes of listening sockets bound to local ``port`` in one ``/proc/net/{udp,tcp}[6]`` text.

    Lines are ``sl local_address rem_address st ... uid timeout inode ...`` with the address as
    ``HEXADDR:HEXPORT``. The header line is skipped; a data line with fewer than 10 fields or a
    non-hex port or inode raises :class:`WakeTableError` naming the line.
    """
    inodes: set[int] = set()
    for n, line in enumerate(text.splitlines()):
        fields = line.split()
        if n == 0 or not fields:
            continue  # the header
        if len(fields) < 10:
            raise WakeTableError(f"socket table line {n}: {len(fields)} fields, want >= 10")
        local, state, inode = fields[1], fields[3], fields[9]
        _, sep, hexport = local.rpartition(":")
        try:
            if not sep:
                raise ValueError(local)
            local_port = int(hexport, 16)
            ino = int(inode)
        except ValueError:
            raise WakeTableError(
                f"socket table line {n}: local address {local!r} or inode {inode!r} unreadable"
            ) from None
        if local_port == port and state in LISTEN_STATES and ino:
            inodes.add(ino)
    return inodes


def _fds_of(inodes: set[int], fd_dir: str) -> list[int]:
    fds = []
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            fds.append(int(name))
    return sorted(fds)


def sip_socket_fds(
    port: int, tables: Iterable[str] = TABLES, proc: str = "/proc/self"
) -> list[int]:
    """This process's descriptors of the UDP socket and TCP listener bound to ``port``.

    An empty list when there are none or ``/proc`` cannot be read (not Linux).
    """
    inodes: set[int] = set()
    try:
        for table in tables:
            path = os.path.join(proc, "net", table)
            if not os.path.exists(path):
                continue  # no IPv6 in this kernel
            with open(path, encoding="ascii") as f:
                inodes |= parse_socket_table(f.read(), port)
        return _fds_of(inodes, os.path.join(proc, "fd")) if inodes else []
    except (OSError, WakeTableError):
        return []

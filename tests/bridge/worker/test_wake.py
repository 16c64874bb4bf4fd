"""An idle worker polls pjsua slowly and is woken by SIP on its sockets (bridge/worker/wake.py).

The table parser runs on captured ``/proc/net`` text; the descriptor lookup on real sockets of
this process; the wake-up on a real worker process whose slow poll is stretched to 60 s, so that
only the socket watch can explain a prompt answer.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.worker.wake import WakeTableError, parse_socket_table, sip_socket_fds
from roomline_harness.net import free_port, free_udp_range

ROOT = Path(__file__).resolve().parents[3]

# Captured from this machine (/proc/net/udp and /proc/net/tcp), trimmed: port 0x1F40 = 8000.
UDP_TABLE = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 8384: 0100007F:1F40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3373376 2 00000000ce92b22b 0
 8385: 0100007F:9154 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3374138 2 000000007f2c9e53 0
"""
TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3370797 1 00000000c6d38bf6 100 0 0 10 0
   1: 0100007F:1F40 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3370999 1 00000000dd58fb8c 100 0 0 10 0
   2: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1084 1 00000000dd58fb8c 100 0 0 10 0
"""


def test_socket_table_finds_the_udp_socket_and_tcp_listener_of_a_port() -> None:
    assert parse_socket_table(UDP_TABLE, 8000) == {3373376}
    # the established connection (st 01) on the same port is not a transport-lifetime socket
    assert parse_socket_table(TCP_TABLE, 8000) == {3370797}
    assert parse_socket_table(TCP_TABLE, 2024) == {1084}
    assert parse_socket_table(UDP_TABLE, 5060) == set()


def test_socket_table_invalid_port_is_named() -> None:
    bad = UDP_TABLE.replace("0100007F:1F40", "0100007F:ZZZZ")
    with pytest.raises(WakeTableError, match="line 1: local address '0100007F:ZZZZ'"):
        parse_socket_table(bad, 8000)


def test_socket_table_truncated_line_is_named() -> None:
    cut = UDP_TABLE.splitlines()
    cut[2] = cut[2][:40]
    with pytest.raises(WakeTableError, match="line 2: 5 fields"):
        parse_socket_table("\n".join(cut), 8000)


def test_sip_socket_fds_are_this_process_udp_socket_and_tcp_listener() -> None:
    port = free_port(udp=True, tcp=True)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
    ):
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))
        tcp.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = tcp.accept()
        try:
            # the accepted connection shares the port but is not returned
            assert sip_socket_fds(port) == sorted([udp.fileno(), tcp.fileno()])
        finally:
            conn.close()
            client.close()
    assert sip_socket_fds(port) == []


def test_sip_socket_fds_without_proc_is_empty(tmp_path: Path) -> None:
    assert sip_socket_fds(5060, proc=str(tmp_path)) == []


def _options(port: int, local: tuple[str, int], transport: str) -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    host, lport = local
    return (
        f"OPTIONS sip:bridge@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{lport};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{host}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:bridge@127.0.0.1:{port}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}@test\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def slow_idle_worker(tmp_path: Path) -> Iterator[int]:
    """A real worker process whose idle poll is 60 s (only a socket wake answers promptly)."""
    port = free_port(udp=True, tcp=True)
    start, end = free_udp_range(8)
    code = (
        "import bridge.worker.worker as w; w.IDLE_POLL_S = 60.0; "
        "from bridge.worker.__main__ import main; main(sys.argv[1:])"
    )
    args = ["--sip-port", str(port), "--sip-host", "127.0.0.1"]
    args += ["--rtp-start", str(start), "--rtp-end", str(end)]
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; " + code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while port not in _tcp_listeners() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)  # past the first 20 ms poll: the 60 s one is armed now
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _tcp_listeners() -> set[int]:
    out = set()
    for table in ("/proc/net/tcp",):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    out.add(int(fields[1].rsplit(":", 1)[1], 16))
    return out


@pytest.mark.timeout(90)
def test_idle_worker_answers_udp_options_without_waiting_for_its_poll(
    slow_idle_worker: int,
) -> None:
    port = slow_idle_worker
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5.0)
        for _ in range(2):  # twice: the wake-up works again once the worker is idle again
            s.sendto(_options(port, s.getsockname(), "UDP"), ("127.0.0.1", port))
            reply = s.recv(4096).decode()
            assert reply.startswith("SIP/2.0 200"), reply[:200]
            time.sleep(1.0)


@pytest.mark.timeout(90)
def test_idle_worker_keeps_answering_on_an_open_tcp_connection(slow_idle_worker: int) -> None:
    """The listener wakes the loop for the connection; while it is open the worker polls every
    20 ms, since the connection's own socket is not watched."""
    port = slow_idle_worker
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
        for _ in range(3):
            s.sendall(_options(port, s.getsockname(), "TCP"))
            reply = s.recv(4096).decode()
            assert reply.startswith("SIP/2.0 200"), reply[:200]
            time.sleep(1.0)

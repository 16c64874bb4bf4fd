"""Capture UDP on the loopback interface (AF_PACKET, needs root): what really went on the wire.

No tcpdump on the test hosts, so a raw socket does it; used to tell SRTP from plain RTP (SRTP
keeps the 12-byte RTP header in clear and appends an auth tag to the encrypted payload).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003


@dataclass(frozen=True)
class UdpPacket:
    src_port: int
    dst_port: int
    payload: bytes
    #: ``time.time()`` when the packet was read off the socket (to line it up with peer events).
    at: float = 0.0


def can_sniff() -> bool:
    return hasattr(socket, "AF_PACKET") and os.geteuid() == 0


def sniff_udp(ports: range, seconds: float, iface: str = "lo") -> list[UdpPacket]:
    """IPv4 UDP packets on ``iface`` with a source or destination port in ``ports``."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    out: list[UdpPacket] = []
    try:
        s.bind((iface, 0))
        s.settimeout(0.2)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                frame, addr = s.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows every packet twice
            if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
                continue
            ihl = (ip[0] & 0x0F) * 4
            sport, dport, length = struct.unpack("!HHH", ip[ihl : ihl + 6])
            if sport in ports or dport in ports:
                out.append(UdpPacket(sport, dport, bytes(ip[ihl + 8 : ihl + length]), time.time()))
    finally:
        s.close()
    return out


def rtp_payload_sizes(packets: list[UdpPacket], pt: int = 0) -> dict[tuple[int, int], set[int]]:
    """Payload sizes (after the 12-byte header) of RTP version 2 packets of payload type ``pt``,
    by (source port, destination port)."""
    sizes: dict[tuple[int, int], set[int]] = {}
    for p in packets:
        b = p.payload
        if len(b) < 12 or b[0] >> 6 != 2 or b[1] & 0x7F != pt:
            continue
        cc = b[0] & 0x0F
        sizes.setdefault((p.src_port, p.dst_port), set()).add(len(b) - 12 - 4 * cc)
    return sizes

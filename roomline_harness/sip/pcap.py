"""Write pcap files of G.711 RTP (a tone) and RFC 4733 DTMF for SIPp ``play_pcap_audio``.

Ethernet/IPv4/UDP/RTP, one packet every 20 ms. SIPp replays the RTP header (seq/ts/SSRC) as is
and only rewrites addresses and ports, so the DTMF file continues the tone file's stream
(same SSRC, following seq/ts) when chained with :class:`RtpStream`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from roomline_harness.sip.dtmf import generate_digit
from sfu.local.g711 import ulaw_encode

SAMPLES = 160  # 20 ms at 8 kHz


def linear_to_ulaw(x: np.ndarray) -> np.ndarray:
    """G.711 μ-law codes of ``x`` (clipped to 16 bits), by the production table."""
    pcm = np.clip(x, -32768, 32767).astype(np.int16)
    return np.frombuffer(ulaw_encode(pcm), np.uint8)


def linear_to_alaw(x: np.ndarray) -> np.ndarray:
    """G.711 A-law encoder (vectorised)."""
    s = x.astype(np.int32) >> 3  # 13-bit
    sign = np.where(s >= 0, 0x80, 0)
    mag = np.where(s >= 0, s, -s - 1)
    mag = np.minimum(mag, 0xFFF)
    exp = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4)
    exp = np.clip(exp, 0, 7)
    mant = np.where(exp == 0, mag >> 1, mag >> exp) & 0x0F
    return (((sign | (exp << 4) | mant) ^ 0x55) & 0xFF).astype(np.uint8)


@dataclass
class RtpStream:
    """Sequence/timestamp state shared by consecutive pcap files of one stream."""

    ssrc: int = 0x1234ABCD
    seq: int = 1000
    ts: int = 160000
    time_us: int = 1_000_000
    packets: list[tuple[int, bytes]] = field(default_factory=list)

    def add(self, pt: int, payload: bytes, marker: bool = False, ts: int | None = None) -> None:
        hdr = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | pt,
            self.seq & 0xFFFF,
            (self.ts if ts is None else ts) & 0xFFFFFFFF,
            self.ssrc,
        )
        self.packets.append((self.time_us, hdr + payload))
        self.seq += 1
        self.time_us += 20_000

    def tone(self, freq: float, seconds: float, pt: int = 0, amplitude: float = 10000.0) -> None:
        n = int(seconds * 50)
        t = np.arange(n * SAMPLES) / 8000.0
        self.audio((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16), pt)

    def audio(self, pcm: np.ndarray, pt: int = 0) -> None:
        """8 kHz int16 samples as 20 ms G.711 packets (a partial last frame is left out)."""
        enc = linear_to_ulaw(pcm) if pt == 0 else linear_to_alaw(pcm)
        for i in range(len(pcm) // SAMPLES):
            self.add(pt, enc[i * SAMPLES : (i + 1) * SAMPLES].tobytes(), marker=(i == 0))
            self.ts += SAMPLES

    def silence(self, seconds: float, pt: int = 0) -> None:
        self.tone(0.0, seconds, pt, amplitude=0.0)

    def dtmf(self, digits: str, pt_event: int = 101, pt_audio: int = 0, gap: float = 0.2) -> None:
        """Each digit: 250 ms event (all packets share its timestamp), then ``gap`` s of silence."""
        for d in digits:
            start = self.ts
            for marker, dur, payload in generate_digit(d):
                self.add(pt_event, payload, marker=marker, ts=start)
                self.ts = start + dur
            self.ts = start + 2000
            self.silence(gap, pt_audio)

    def write(self, path: str | Path, src_port: int = 6000, dst_port: int = 7000) -> None:
        """Write the collected packets (and clear them) as a pcap file."""
        out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t_us, rtp in self.packets:
            udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(rtp), 0) + rtp
            ip = _ipv4(udp, "127.0.0.1", "127.0.0.1")
            eth = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00" + ip
            out += struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(eth), len(eth))
            out += eth
        Path(path).write_bytes(bytes(out))
        self.packets = []


def _ipv4(payload: bytes, src: str, dst: str) -> bytes:
    def addr(a: str) -> bytes:
        return bytes(int(x) for x in a.split("."))

    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, 17, 0, addr(src), addr(dst)
    )
    words = struct.unpack("!10H", hdr)
    csum = sum(words)
    while csum >> 16:
        csum = (csum & 0xFFFF) + (csum >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~csum & 0xFFFF) + hdr[12:]
    return hdr + payload


def write_tone_pcap(path: str | Path, freq: float, seconds: float, pt: int = 0) -> None:
    """N seconds of a tone as PCMU (pt 0) or PCMA (pt 8)."""
    s = RtpStream()
    s.tone(freq, seconds, pt)
    s.write(path)

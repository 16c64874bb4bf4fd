"""A stand-in for the SFU side of the local participant channel, for bridge tests only.

Implements the framing of docs/architecture.md: answers JOIN with a SIGNAL JoinResponse, answers
``add_track`` with ``track_published``, records everything the worker sends (RTP, DATA, SIGNAL)
and can send RTP (an Opus tone), DATA packets, ``leave`` and garbage to the worker. The token is
taken as the identity (the real server verifies a JWT).
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass, field

import numpy as np
from livekit.protocol import models, rtc

from sfu.local.codec import FRAME_SAMPLES, OpusDecoder, OpusEncoder, RtpPacketizer, parse_rtp
from sfu.local.framing import FrameDecoder, FrameError, Kind, decode_rtp, encode_frame, encode_rtp


@dataclass
class Conn:
    """One worker connection (= one call)."""

    writer: asyncio.StreamWriter
    index: int
    join: dict[str, object] = field(default_factory=dict)
    identity: str = ""
    rtp: list[tuple[str, bytes]] = field(default_factory=list)
    data: list[models.DataPacket] = field(default_factory=list)
    signals: list[rtc.SignalRequest] = field(default_factory=list)
    published_sid: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    got_leave: asyncio.Event = field(default_factory=asyncio.Event)
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tone_task: asyncio.Task[None] | None = None

    def send(self, kind: int, payload: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_frame(kind, payload))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_data(self, pkt: models.DataPacket) -> None:
        self.send(Kind.DATA, pkt.SerializeToString())

    def send_leave(self) -> None:
        leave = rtc.LeaveRequest(reason=models.DisconnectReason.PARTICIPANT_REMOVED)
        self.send(Kind.SIGNAL, rtc.SignalResponse(leave=leave).SerializeToString())

    def start_tone(self, freq: float, sid: str = "TR_remote", amplitude: float = 8000.0) -> None:
        self.tone_task = asyncio.get_running_loop().create_task(self._tone(freq, sid, amplitude))

    async def _tone(self, freq: float, sid: str, amplitude: float) -> None:
        enc, pk = OpusEncoder(), RtpPacketizer()
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while not self.writer.is_closing():
            t = (np.arange(FRAME_SAMPLES) + n * FRAME_SAMPLES) / 48000.0
            pcm = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16).tobytes()
            for p in enc.encode(pcm):
                self.writer.write(encode_rtp(sid, pk.packet(p)))
            n += 1
            # pace by wall clock so jitter does not accumulate
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

    def published_pcm(self) -> np.ndarray:
        """Decode the Opus RTP the worker published (in arrival order)."""
        dec = OpusDecoder()
        frames = [
            dec.decode(parse_rtp(p).payload) for sid, p in self.rtp if sid == self.published_sid
        ]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)

    def dtmf_digits(self) -> str:
        return "".join(d.sip_dtmf.digit for d in self.data if d.WhichOneof("value") == "sip_dtmf")

    def close(self) -> None:
        if self.tone_task is not None:
            self.tone_task.cancel()
        self.writer.close()


class StandinRoom:
    """Unix-socket server at ``path``; ``conns`` in connection order."""

    def __init__(self, path: str, other_participants: list[models.ParticipantInfo] | None = None):
        self.path = path
        self.conns: list[Conn] = []
        self.new_conn: asyncio.Queue[Conn] = asyncio.Queue()
        self.others = other_participants or []
        self.tone_freq: float | None = None  # if set, every joined conn gets this tone
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def stop(self) -> None:
        for c in self.conns:
            c.close()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer, len(self.conns))
        self.conns.append(conn)
        self.new_conn.put_nowait(conn)
        dec = FrameDecoder()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for kind, payload in dec.feed(data):
                    self._frame(conn, kind, payload)
                    conn.changed.set()
        except (FrameError, ConnectionError):
            pass
        finally:
            conn.closed.set()
            conn.changed.set()
            if conn.tone_task is not None:
                conn.tone_task.cancel()

    def _frame(self, conn: Conn, kind: int, payload: bytes) -> None:
        if kind == Kind.JOIN:
            conn.join = json.loads(payload)
            conn.identity = str(conn.join.get("token", ""))
            me = models.ParticipantInfo(
                sid=f"PA_call{conn.index}", identity=conn.identity, kind=models.ParticipantInfo.SIP
            )
            jr = rtc.JoinResponse(
                room=models.Room(name=str(conn.join.get("room", ""))),
                participant=me,
                other_participants=self.others,
            )
            conn.send(Kind.SIGNAL, rtc.SignalResponse(join=jr).SerializeToString())
            conn.joined.set()
            if self.tone_freq is not None:
                conn.start_tone(self.tone_freq)
        elif kind == Kind.SIGNAL:
            req = rtc.SignalRequest.FromString(payload)
            conn.signals.append(req)
            which = req.WhichOneof("message")
            if which == "add_track":
                conn.published_sid = f"TR_call{conn.index}"
                info = models.TrackInfo(
                    sid=conn.published_sid, type=models.TrackType.AUDIO, name=req.add_track.name
                )
                resp = rtc.TrackPublishedResponse(cid=req.add_track.cid, track=info)
                conn.send(Kind.SIGNAL, rtc.SignalResponse(track_published=resp).SerializeToString())
            elif which == "leave":
                conn.got_leave.set()
        elif kind == Kind.RTP:
            conn.rtp.append(decode_rtp(payload))
        elif kind == Kind.DATA:
            conn.data.append(models.DataPacket.FromString(payload))


def garbage_frames() -> bytes:
    """Frames a broken server might send: unknown kind, bad protobufs, truncated RTP sid."""
    return (
        encode_frame(9, b"whatever")
        + encode_frame(Kind.SIGNAL, b"\xff\xff\xff\xff")
        + encode_frame(Kind.DATA, b"\x0a\xff")
        + encode_frame(Kind.RTP, b"\x20ab")
        + encode_frame(Kind.RTP, struct.pack("!B", 3) + b"TR_" + b"\x00\x01")
    )

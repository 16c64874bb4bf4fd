"""A stand-in for the SFU side of the local participant channel, for bridge tests only.

Speaks :class:`sfu.local.protocol.ServerProtocol`: answers JOIN with a SIGNAL JoinResponse, answers
``add_track`` with ``track_published``, records everything the worker sends (RTP, DATA, SIGNAL)
and can send RTP (an Opus tone), DATA packets, ``leave`` and garbage to the worker. The token is
taken as the identity (the real server verifies a JWT).
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import numpy as np
from livekit.protocol import models, rtc

from sfu.local import stream
from sfu.local.codec import FRAME_SAMPLES, OpusDecoder, OpusEncoder, RtpPacketizer
from sfu.local.framing import Kind, encode_frame
from sfu.local.protocol import (
    DataReceived,
    Event,
    JoinReceived,
    RtpReceived,
    ServerProtocol,
    SignalRequestReceived,
    State,
)
from sfu.media.rtp import parse_rtp


@dataclass
class Conn:
    """One worker connection (= one call)."""

    writer: asyncio.StreamWriter
    index: int
    protocol: ServerProtocol = field(default_factory=ServerProtocol)
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

    def flush(self) -> None:
        stream.flush(self.protocol, self.writer)

    def send_signal(self, resp: rtc.SignalResponse) -> None:
        self.protocol.send_signal(resp.SerializeToString())
        self.flush()

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_data(self, pkt: models.DataPacket) -> None:
        self.protocol.send_data(pkt.SerializeToString())
        self.flush()

    def send_leave(self) -> None:
        leave = rtc.LeaveRequest(reason=models.DisconnectReason.PARTICIPANT_REMOVED)
        self.send_signal(rtc.SignalResponse(leave=leave))

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
                self.protocol.send_rtp(sid, pk.packet(p))
            self.flush()
            n += 1
            # pace by wall clock so jitter does not accumulate
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

    def published_pcm(self) -> np.ndarray:
        """Decode the Opus RTP the worker published (in arrival order)."""
        dec = OpusDecoder()
        frames = [
            dec.decode(parse_rtp(p).payload(p)) for sid, p in self.rtp if sid == self.published_sid
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
        try:
            while conn.protocol.state is not State.CLOSED:
                for event in await stream.receive(reader, conn.protocol):
                    self._event(conn, event)
                    conn.changed.set()
                conn.flush()
        except ConnectionError:
            pass
        finally:
            conn.closed.set()
            conn.changed.set()
            if conn.tone_task is not None:
                conn.tone_task.cancel()

    def _event(self, conn: Conn, event: Event) -> None:
        if isinstance(event, JoinReceived):
            conn.protocol.accept()
            conn.join = event.join.as_dict()
            conn.identity = event.join.token
            me = models.ParticipantInfo(
                sid=f"PA_call{conn.index}", identity=conn.identity, kind=models.ParticipantInfo.SIP
            )
            jr = rtc.JoinResponse(
                room=models.Room(name=event.join.room),
                participant=me,
                other_participants=self.others,
            )
            conn.send_signal(rtc.SignalResponse(join=jr))
            conn.joined.set()
            if self.tone_freq is not None:
                conn.start_tone(self.tone_freq)
        elif isinstance(event, SignalRequestReceived):
            req = event.request
            conn.signals.append(req)
            which = req.WhichOneof("message")
            if which == "add_track":
                conn.published_sid = f"TR_call{conn.index}"
                info = models.TrackInfo(
                    sid=conn.published_sid, type=models.TrackType.AUDIO, name=req.add_track.name
                )
                resp = rtc.TrackPublishedResponse(cid=req.add_track.cid, track=info)
                conn.send_signal(rtc.SignalResponse(track_published=resp))
            elif which == "leave":
                conn.got_leave.set()
        elif isinstance(event, RtpReceived):
            conn.rtp.append((event.track_sid, event.packet))
        elif isinstance(event, DataReceived):
            conn.data.append(models.DataPacket.FromString(event.payload))


def garbage_frames() -> bytes:
    """Frames a broken server might send: unknown kind, bad protobufs, truncated RTP sid."""
    return (
        encode_frame(9, b"whatever")
        + encode_frame(Kind.SIGNAL, b"\xff\xff\xff\xff")
        + encode_frame(Kind.DATA, b"\x0a\xff")
        + encode_frame(Kind.RTP, b"\x20ab")
        + encode_frame(Kind.RTP, struct.pack("!B", 3) + b"TR_" + b"\x00\x01")
    )

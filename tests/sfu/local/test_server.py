"""The local participant channel with a real Unix-socket client and a real LiveKit SDK peer."""

from __future__ import annotations

import asyncio
import json
import struct
import urllib.request

import av
import numpy as np
import pytest
from livekit.protocol import models
from livekit.protocol import rtc as rtc_pb

from roomline.auth import mint_token
from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, snr_db
from roomline_harness.lk import connect, record, subscribed_audio, token, tone_publisher
from roomline_harness.server import API_KEY, API_SECRET, Server
from sfu.local import socket_path, stream
from sfu.local.framing import Kind, encode_frame, encode_rtp
from sfu.local.protocol import (
    ClientProtocol,
    ConnectionClosed,
    DataPacketReceived,
    JoinRequest,
    RtpReceived,
    SignalResponseReceived,
    State,
)


class LocalPeer:
    """A minimal local-channel participant used by these tests."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.signals: list[rtc_pb.SignalResponse] = []
        self.rtp: dict[str, list[bytes]] = {}
        self.data: list[models.DataPacket] = []
        self.error = ""
        self.closed = asyncio.Event()

    async def open(self, server: Server, payload: bytes, kind: int = Kind.JOIN) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(
            socket_path(str(server.data_dir))
        )
        self.writer.write(encode_frame(kind, payload))
        asyncio.get_running_loop().create_task(self._read())

    async def join(self, server: Server, room: str, identity: str, kind: str = "sip") -> None:
        tok = mint_token(
            API_KEY, API_SECRET, identity=identity, room=room, kind=kind, name=f"Local {identity}"
        )
        await self.open(server, json.dumps({"token": tok, "subscribe_kinds": ["audio"]}).encode())
        await wait_for(lambda: any(s.HasField("join") for s in self.signals), 5, "JoinResponse")

    async def _read(self) -> None:
        # The client protocol parses what the server sends; this peer writes its frames raw.
        protocol = ClientProtocol(JoinRequest(""))
        while protocol.state is not State.CLOSED:
            for event in await stream.receive(self.reader, protocol):
                if isinstance(event, SignalResponseReceived):
                    self.signals.append(event.response)
                elif isinstance(event, RtpReceived):
                    self.rtp.setdefault(event.track_sid, []).append(event.packet)
                elif isinstance(event, DataPacketReceived):
                    self.data.append(event.packet)
                elif isinstance(event, ConnectionClosed):
                    self.error = event.reason.removeprefix("room error: ")
        self.closed.set()

    def signal(self, req: rtc_pb.SignalRequest) -> None:
        self.writer.write(encode_frame(Kind.SIGNAL, req.SerializeToString()))

    async def publish(self) -> str:
        self.signal(
            rtc_pb.SignalRequest(
                add_track=rtc_pb.AddTrackRequest(
                    cid="phone", name="phone", type=models.AUDIO, source=models.MICROPHONE
                )
            )
        )
        await wait_for(lambda: any(s.HasField("track_published") for s in self.signals), 5)
        return next(
            s.track_published.track.sid for s in self.signals if s.HasField("track_published")
        )


def opus_packets(freq: float, seconds: float) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = 64000
    out: list[bytes] = []
    n = 960
    for i in range(int(seconds * 50)):
        t = np.arange(i * n, (i + 1) * n)
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * freq * t / 48000)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = i * n
        for packet in enc.encode(frame):
            out.append(bytes(packet))
    return out


def decode_opus_rtp(packets: list[bytes]) -> np.ndarray:
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate = 48000
    dec.layout = "mono"
    pcm: list[np.ndarray] = []
    for raw in packets:
        cc = raw[0] & 0x0F
        offset = 12 + 4 * cc
        if raw[0] & 0x10:
            (length,) = struct.unpack_from("!H", raw, offset + 2)
            offset += 4 + 4 * length
        for frame in dec.decode(av.Packet(raw[offset:])):
            arr = frame.to_ndarray()
            pcm.append(arr.reshape(-1) if arr.shape[0] == 1 else arr.mean(axis=0))
    return np.concatenate(pcm).astype(np.float64)


async def test_local_publisher_heard_by_sdk_and_sdk_heard_locally(server: Server) -> None:
    peer = LocalPeer()
    await peer.join(server, "local-a", "sip_+15550001")
    join = next(s.join for s in peer.signals if s.HasField("join"))
    assert join.participant.identity == "sip_+15550001" and join.participant.kind == 3
    sid = await peer.publish()
    listener = await connect(server.ws_url, token("web", "local-a"))
    try:
        await wait_for(lambda: subscribed_audio(listener, "sip_+15550001") is not None, 10, "sub")
        remote = listener.remote_participants["sip_+15550001"]
        assert remote.kind == 3 and remote.name == "Local sip_+15550001"

        payloads = opus_packets(1000.0, 8.0)

        async def send() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, payload in enumerate(payloads):  # paced on a 20 ms clock, like a phone leg
                header = struct.pack("!BBHII", 0x80, 111, i & 0xFFFF, i * 960, 0x1234)
                peer.writer.write(encode_rtp(sid, header + payload))
                await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))

        sender = asyncio.create_task(send())
        track = subscribed_audio(listener, "sip_+15550001")
        assert track is not None
        pcm = await record(track, 2.0, skip=1.0)
        sender.cancel()
        with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        forwarded = next(
            line
            for line in metrics.splitlines()
            if line.startswith('roomline_rtp_forwarded_packets_total{kind="audio"}')
        )
        assert float(forwarded.split()[1]) > 50  # the SFU forwarded the phone's packets itself
        assert abs(dominant_frequency(pcm, 48000) - 1000.0) < 5
        assert snr_db(pcm, 48000, 1000.0) >= 25

        # SDK -> local: the local peer receives the Opus RTP of the SDK's tone and decodes 440 Hz.
        async with tone_publisher(listener, 440.0):
            await wait_for(lambda: sum(len(v) for v in peer.rtp.values()) > 150, 10, "rtp")
        pkts = max(peer.rtp.values(), key=len)
        pcm = decode_opus_rtp(pkts[50:])
        assert abs(dominant_frequency(pcm, 48000) - 440.0) < 5
        assert snr_db(pcm, 48000, 440.0) >= 25
    finally:
        await listener.disconnect()
    peer.signal(rtc_pb.SignalRequest(leave=rtc_pb.LeaveRequest(reason=models.CLIENT_INITIATED)))
    await asyncio.wait_for(peer.closed.wait(), 5)


async def test_local_bad_input_refused_and_server_keeps_serving(server: Server) -> None:
    cases = [
        (b"not json", Kind.JOIN, "JSON"),
        (json.dumps({"token": "a.b.c"}).encode(), Kind.JOIN, "token"),
        (json.dumps({"nope": 1}).encode(), Kind.JOIN, "token"),
        (b"\x00\x01", Kind.SIGNAL, "first frame must be JOIN"),
    ]
    for payload, kind, needle in cases:
        peer = LocalPeer()
        await peer.open(server, payload, kind)
        await asyncio.wait_for(peer.closed.wait(), 6)
        assert needle in peer.error, (payload, peer.error)
    # Bad frames after a good join get a request_response; the session and the server go on.
    peer = LocalPeer()
    await peer.join(server, "local-b", "sip_+1555")
    peer.writer.write(encode_frame(Kind.SIGNAL, b"\xff\xff\xff"))
    peer.writer.write(encode_rtp("TR_notmine", b"\x80" * 20))
    peer.writer.write(encode_frame(9, b"x"))
    await wait_for(
        lambda: sum(s.HasField("request_response") for s in peer.signals) >= 3, 5, "errors"
    )
    messages = [s.request_response.message for s in peer.signals if s.HasField("request_response")]
    assert any("malformed SignalRequest" in m for m in messages)
    assert any("did not publish" in m for m in messages)
    assert any("unknown frame kind" in m for m in messages)
    sid = await peer.publish()
    assert sid.startswith("TR_A")
    assert server.alive()


async def test_local_join_in_pieces_admitted_and_silence_times_out(server: Server) -> None:
    """The server's protocol sees bytes as the loop reads them: a JOIN written a few bytes at a
    time is still one JOIN; a connection that never sends one is refused after JOIN_TIMEOUT."""
    silent = LocalPeer()
    silent.reader, silent.writer = await asyncio.open_unix_connection(
        socket_path(str(server.data_dir))
    )
    read_silent = asyncio.get_running_loop().create_task(silent._read())
    tok = mint_token(API_KEY, API_SECRET, identity="sip_pieces", room="local-pieces", kind="sip")
    frame = encode_frame(Kind.JOIN, json.dumps({"token": tok}).encode())
    peer = LocalPeer()
    peer.reader, peer.writer = await asyncio.open_unix_connection(socket_path(str(server.data_dir)))
    asyncio.get_running_loop().create_task(peer._read())
    for i in range(0, len(frame), 7):
        peer.writer.write(frame[i : i + 7])
        await peer.writer.drain()
        await asyncio.sleep(0.002)
    await wait_for(lambda: any(s.HasField("join") for s in peer.signals), 5, "JoinResponse")
    join = next(s.join for s in peer.signals if s.HasField("join"))
    assert join.participant.identity == "sip_pieces"
    await asyncio.wait_for(silent.closed.wait(), 10)
    await read_silent
    assert "no JOIN frame within 5 s" in silent.error, silent.error
    assert not peer.closed.is_set()  # the joined one is untouched
    assert server.alive()


async def test_move_local_participant_keeps_its_call_going(server: Server) -> None:
    from livekit import api

    peer = LocalPeer()
    await peer.join(server, "move-a", "sip_+1555000777")
    sid = await peer.publish()
    a = await connect(server.ws_url, token("watch-a", "move-a"))
    b = await connect(server.ws_url, token("watch-b", "move-b"))
    left: list[str] = []
    a.on("participant_disconnected", lambda p: left.append(p.identity))
    payloads = opus_packets(1000.0, 10.0)

    async def send() -> None:  # keeps using the sid it got before the move, like a bridge call
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, payload in enumerate(payloads):
            header = struct.pack("!BBHII", 0x80, 111, i & 0xFFFF, i * 960, 0x4321)
            peer.writer.write(encode_rtp(sid, header + payload))
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))

    sender = asyncio.create_task(send())
    try:
        await wait_for(lambda: subscribed_audio(a, "sip_+1555000777") is not None, 10, "in A")
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            await lk.room.move_participant(
                api.MoveParticipantRequest(
                    room="move-a", identity="sip_+1555000777", destination_room="move-b"
                )
            )
            with pytest.raises(api.TwirpError) as err:  # WebRTC clients cannot be moved
                await lk.room.move_participant(
                    api.MoveParticipantRequest(
                        room="move-a", identity="watch-a", destination_room="move-b"
                    )
                )
            assert err.value.code == "unimplemented"
        await wait_for(lambda: "sip_+1555000777" in left, 5, "left A")
        await wait_for(lambda: subscribed_audio(b, "sip_+1555000777") is not None, 10, "in B")
        moved = b.remote_participants["sip_+1555000777"]
        assert moved.kind == 3 and moved.name == "Local sip_+1555000777"
        assert any(s.HasField("room_moved") for s in peer.signals)
        room_moved = next(s.room_moved for s in peer.signals if s.HasField("room_moved"))
        assert room_moved.room.name == "move-b"
        track = subscribed_audio(b, "sip_+1555000777")
        assert track is not None
        pcm = await record(track, 1.5, skip=0.5)
        assert abs(dominant_frequency(pcm, 48000) - 1000.0) < 5
        assert snr_db(pcm, 48000, 1000.0) >= 25
    finally:
        sender.cancel()
        await a.disconnect()
        await b.disconnect()

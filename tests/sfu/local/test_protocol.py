"""The local participant channel without a subprocess: the sans-I/O protocol on plain bytes, the
push-driven jitter buffer, and the asyncio layers (server, client, agent SDK) paired in-process."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit.protocol import models, rtc

from roomline.auth import mint_token
from roomline.config import Config
from roomline.errors import InvalidRequest
from roomline_agents.sdk import AudioFrame, AudioSource, AudioStream, LocalAudioTrack, Room
from roomline_agents.sdk.room import RoomOptions
from roomline_harness.aio import wait_for
from roomline_harness.audio import dominant_frequency, tone
from sfu.local import server as local_server
from sfu.local.client import ChannelClient
from sfu.local.codec import OpusEncoder, RtpPacketizer
from sfu.local.framing import Kind, encode_frame, encode_rtp
from sfu.local.jitter import JitterBuffer
from sfu.local.jitter import Kind as PlayKind
from sfu.local.protocol import (
    ChannelStateError,
    ClientProtocol,
    ConnectionClosed,
    DataReceived,
    Event,
    FrameRejected,
    JoinReceived,
    JoinRequest,
    RtpReceived,
    ServerProtocol,
    SignalRequestReceived,
    SignalResponseReceived,
    State,
    pump,
)
from sfu.local.server import LocalChannelServer
from sfu.server import SFUServer

KEY, SECRET = next(iter(Config().keys.items()))


def join_frame(**fields: object) -> bytes:
    return encode_frame(Kind.JOIN, json.dumps({"token": "t", **fields}).encode())


def join_response() -> bytes:
    resp = rtc.SignalResponse(join=rtc.JoinResponse(participant=models.ParticipantInfo(sid="PA_1")))
    return resp.SerializeToString()


def joined_pair() -> tuple[ClientProtocol, ServerProtocol]:
    client, srv = ClientProtocol(JoinRequest("t", "r")), ServerProtocol()
    _, to_server = pump(client, srv)
    assert to_server == [JoinReceived(JoinRequest("t", "r"))]
    srv.accept()
    srv.send_signal(join_response())
    to_client, _ = pump(client, srv)
    assert [type(e) for e in to_client] == [SignalResponseReceived]
    assert client.state is State.OPEN and srv.state is State.OPEN
    return client, srv


def error_text(srv: ServerProtocol) -> str:
    """The reason of the ERROR frame ``srv`` queued (and the connection is closed)."""
    (data,) = srv.data_to_send()
    assert data[4] == Kind.ERROR and srv.state is State.CLOSED
    return data[5:].decode()


# ------------------------------------------------------------------ protocol: handshake & frames


def test_join_request_round_trip_and_defaults() -> None:
    join = JoinRequest("tok", "room", False, frozenset({"audio"}))
    assert JoinRequest.decode(join.encode()) == join
    assert JoinRequest.decode(b'{"token": "x", "future_field": 1}') == JoinRequest("x")
    assert JoinRequest.decode(b'{"token": "x", "subscribe_kinds": []}').subscribe_kinds == set()


def test_exchange_signal_rtp_data_both_ways() -> None:
    client, srv = joined_pair()
    client.send_signal(rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="c")))
    client.send_rtp("TR_a", b"\x80" * 20)
    client.send_data(models.DataPacket(user=models.UserPacket(payload=b"hi")))
    to_client, to_server = pump(client, srv)
    assert [type(e) for e in to_server] == [SignalRequestReceived, RtpReceived, DataReceived]
    assert to_server[0].request.add_track.cid == "c"  # type: ignore[union-attr]
    assert to_server[1] == RtpReceived("TR_a", b"\x80" * 20)
    packet = models.DataPacket.FromString(to_server[2].payload)  # type: ignore[union-attr]
    assert packet.user.payload == b"hi"
    srv.send_rtp("TR_b", b"\x80\x6f")
    srv.send_data(models.DataPacket(sip_dtmf=models.SipDTMF(digit="5")).SerializeToString())
    to_client, _ = pump(client, srv)
    assert to_client[0] == RtpReceived("TR_b", b"\x80\x6f")
    assert to_client[1].packet.sip_dtmf.digit == "5"  # type: ignore[union-attr]
    # Client closes: the server sees a clean end of stream.
    client.close()
    _, to_server = pump(client, srv)
    assert to_server == [ConnectionClosed("connection closed", clean=True)]


def test_byte_by_byte_equals_one_chunk() -> None:
    stream = (
        join_frame(room="r")
        + encode_frame(Kind.SIGNAL, b"")
        + encode_rtp("TR_x", b"\x80" * 13)
        + encode_frame(Kind.DATA, b"")
    )
    whole = ServerProtocol()
    whole.receive_data(stream[: len(join_frame(room="r"))])
    whole.accept()
    whole.receive_data(stream[len(join_frame(room="r")) :])
    split = ServerProtocol()
    events: list[Event] = []
    for i in range(len(stream)):
        split.receive_data(stream[i : i + 1])
        events += split.events_received()
        if split.state is State.JOINING:
            split.accept()
    assert events == whole.events_received()


def test_sending_before_join_is_a_bug_and_after_close_a_no_op() -> None:
    client, srv = ClientProtocol(JoinRequest("t")), ServerProtocol()
    with pytest.raises(ChannelStateError):
        client.send_rtp("TR_a", b"x")
    with pytest.raises(ChannelStateError):
        srv.send_signal(b"")
    with pytest.raises(ChannelStateError):
        srv.accept()
    client.close()
    assert client.send_rtp("TR_a", b"x") is False and client.data_to_send() == [
        encode_frame(Kind.JOIN, JoinRequest("t").encode())
    ]


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "string 'token'"),
        (b'{"token": 7}', "string 'token'"),
        (b'{"token": "t", "room": 5}', "'room' must be a string"),
        (b'{"token": "t", "auto_subscribe": "yes"}', "'auto_subscribe'"),
        (b'{"token": "t", "subscribe_kinds": "audio"}', "list of strings"),
        (b'{"token": "t", "subscribe_kinds": ["audio", "smell"]}', "'audio' and 'video'"),
    ],
)
def test_server_join_invalid(stream: bytes, reason: str) -> None:
    srv = ServerProtocol()
    srv.receive_data(encode_frame(Kind.JOIN, stream))
    assert srv.events_received() == [ConnectionClosed(srv.close_reason)]
    assert reason in error_text(srv) and reason in srv.close_reason


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (encode_frame(Kind.SIGNAL, b""), "first frame must be JOIN, got kind 1"),
        (join_frame() + encode_frame(Kind.SIGNAL, b""), "frames sent before the join was answered"),
        (b"\x00\x00\x00\x00", "bad frame length 0"),
        (b"\xff\xff\xff\xff\x00", "bad frame length"),
    ],
)
def test_server_handshake_invalid(stream: bytes, reason: str) -> None:
    srv = ServerProtocol()
    srv.receive_data(stream)
    events = srv.events_received()
    # A JOIN followed too early by another frame is never handed out: nothing may act on it.
    assert not any(isinstance(e, JoinReceived) for e in events)
    assert events == [ConnectionClosed(srv.close_reason)]
    assert reason in error_text(srv)
    srv.receive_data(join_frame())  # closed: ignored
    assert srv.events_received() == [] and srv.data_to_send() == []


def test_server_frames_invalid_are_rejected_and_the_connection_goes_on() -> None:
    _, srv = joined_pair()
    srv.receive_data(
        encode_frame(Kind.SIGNAL, b"\xff\xff\xff")
        + encode_frame(Kind.RTP, b"\x09TR")
        + encode_frame(Kind.RTP, b"")
        + encode_frame(Kind.RTP, b"\x02\xff\xfe")
        + encode_frame(9, b"x")
        + encode_frame(Kind.JOIN, b"{}")
    )
    events = srv.events_received()
    assert all(isinstance(e, FrameRejected) for e in events)
    messages = [e.message for e in events if isinstance(e, FrameRejected)]
    assert messages == [
        "malformed SignalRequest",
        "RTP frame sid truncated",
        "RTP frame truncated",
        "RTP frame sid is not ASCII",
        "unknown frame kind 9",
        "unknown frame kind 0",
    ]
    assert srv.state is State.OPEN
    srv.receive_data(b"\x7f\xff\xff\xff")  # a framing error ends it
    assert srv.events_received() == [ConnectionClosed("bad frame: bad frame length 2147483647")]


def test_client_frames_invalid() -> None:
    client, _ = joined_pair()
    client.receive_data(
        encode_frame(Kind.SIGNAL, b"\xff\xff\xff\xff")
        + encode_frame(Kind.DATA, b"\x0a\xff")
        + encode_frame(Kind.RTP, b"\x20ab")
        + encode_frame(9, b"whatever")
    )
    events = client.events_received()
    assert [e.kind for e in events if isinstance(e, FrameRejected)] == [1, 3, 2, 9]
    assert client.state is State.OPEN
    client.receive_data(encode_frame(Kind.ERROR, "room full ✗".encode()) + join_frame())
    assert client.events_received() == [ConnectionClosed("room error: room full ✗")]
    assert client.state is State.CLOSED


def test_client_refused_before_join() -> None:
    client = ClientProtocol(JoinRequest("t"))
    client.receive_data(encode_frame(Kind.ERROR, b"token expired"))
    assert client.events_received() == [ConnectionClosed("room error: token expired")]


def test_client_truncated() -> None:
    stream = encode_frame(Kind.SIGNAL, join_response()) + encode_rtp("TR_a", b"\x80" * 30)
    first = len(encode_frame(Kind.SIGNAL, join_response()))
    for cut in range(len(stream)):
        client = ClientProtocol(JoinRequest("t"))
        client.receive_data(stream[:cut])
        client.receive_eof()
        events = client.events_received()
        closed = events[-1]
        assert isinstance(closed, ConnectionClosed) and closed.clean == (cut == first)
        assert len(events) == (2 if cut >= first else 1)
        if cut in (0, first):
            assert "middle of a frame" not in closed.reason
        else:
            assert "middle of a frame" in closed.reason


def test_server_truncated() -> None:
    stream = join_frame(room="r")
    for cut in range(len(stream)):
        srv = ServerProtocol()
        srv.receive_data(stream[:cut])
        assert srv.events_received() == []
        srv.receive_eof()
        assert srv.events_received() == [
            ConnectionClosed("connection closed before the join was answered")
        ]
    _, srv = joined_pair()
    srv.receive_data(encode_rtp("TR_a", b"\x80" * 20)[:-1])
    srv.receive_eof()
    assert srv.events_received() == [ConnectionClosed("connection closed in the middle of a frame")]


def test_server_fail_after_join_and_shutdown() -> None:
    client, srv = joined_pair()
    srv.fail("server shutting down")
    to_client, _ = pump(client, srv)
    assert to_client == [ConnectionClosed("room error: server shutting down")]


def test_join_request_rejects_unknown_kinds_when_built() -> None:
    with pytest.raises(InvalidRequest):
        JoinRequest("t", subscribe_kinds=frozenset({"data"}))


# ------------------------------------------------------------------ jitter buffer without a clock


def kinds(out: list[object]) -> list[str]:
    return [o.kind.value for o in out]  # type: ignore[attr-defined]


def test_pop_ready_in_order_is_immediate() -> None:
    jb = JitterBuffer(target_frames=2)
    for seq in (65534, 65535, 0, 1):  # wraps
        jb.push(seq, bytes([seq & 0xFF]))
        out = jb.pop_ready()
        assert [(o.kind, o.payload) for o in out] == [(PlayKind.PLAY, bytes([seq & 0xFF]))]
    assert jb.stats.played == 4 and len(jb) == 0


def test_pop_ready_reorder_loss_duplicate_late_gap() -> None:
    jb = JitterBuffer(target_frames=2)
    jb.push(10, b"a")
    assert kinds(jb.pop_ready()) == ["play"]  # type: ignore[arg-type]
    jb.push(12, b"c")  # 11 missing: may be reordered, wait
    assert jb.pop_ready() == []
    jb.push(11, b"b")  # it was
    assert [o.payload for o in jb.pop_ready()] == [b"b", b"c"]
    jb.push(14, b"e")
    jb.push(15, b"f")  # 13 now counts as lost
    assert kinds(jb.pop_ready()) == ["conceal", "play", "play"]  # type: ignore[arg-type]
    jb.push(13, b"d")  # too late
    jb.push(15, b"f")  # duplicate of a played frame: also behind
    assert jb.pop_ready() == [] and jb.stats.late == 2
    jb.push(26, b"q")  # 10 missing: a pause or restart, skipped without concealment
    assert [(o.kind.value, o.payload) for o in jb.pop_ready()] == [("play", b"q")]
    jb.push(30000, b"z")  # far away: a new stream
    assert [o.payload for o in jb.pop_ready()] == [b"z"]
    assert jb.stats.concealed == 1


def test_pop_ready_target_one_conceals_at_once() -> None:
    jb = JitterBuffer(target_frames=1)
    jb.push(1, b"a")
    jb.push(3, b"c")
    assert kinds(jb.pop_ready()) == ["play", "conceal", "play"]  # type: ignore[arg-type]


# ------------------------------------------------------------------ in-process server + clients


@pytest.fixture
async def channel() -> AsyncIterator[LocalChannelServer]:
    sfu = SFUServer(Config())
    srv = LocalChannelServer(sfu.node, sfu.cfg, "/nonexistent/never-listened.sock")
    yield srv
    await srv.stop()


def tok(identity: str, room: str = "local-pair", kind: str = "sip") -> str:
    return mint_token(KEY, SECRET, identity=identity, room=room, kind=kind)


class Peer:
    """A ChannelClient with everything it receives recorded."""

    def __init__(self) -> None:
        self.signals: list[rtc.SignalResponse] = []
        self.rtp: list[tuple[str, bytes]] = []
        self.data: list[models.DataPacket] = []
        self.closed: list[str] = []
        self.client = ChannelClient(
            self.signals.append,
            lambda sid, p: self.rtp.append((sid, p)),
            self.data.append,
            self.closed.append,
        )

    def first(self, which: str) -> rtc.SignalResponse:
        return next(s for s in self.signals if s.WhichOneof("message") == which)

    async def join(self, channel: LocalChannelServer, token: str, **kw: object) -> None:
        sock = await channel.connect_pair()
        await self.client.connect_socket(sock, token, **kw)  # type: ignore[arg-type]
        await wait_for(lambda: bool(self.signals) or bool(self.closed), 5, "join answer")


async def test_pair_two_local_participants_hear_each_other(channel: LocalChannelServer) -> None:
    a, b = Peer(), Peer()
    await a.join(channel, tok("sip_a"))
    assert a.client.joined and a.first("join").join.participant.identity == "sip_a"
    await b.join(channel, tok("sip_b"), subscribe_kinds=["audio"])
    a.client.send_signal(
        rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="c", name="phone", type=0))  # type: ignore[arg-type]
    )
    await wait_for(lambda: any(s.HasField("track_published") for s in a.signals), 5, "publish")
    sid = a.first("track_published").track_published.track.sid
    await asyncio.sleep(0.05)  # b's subscription follows the publication
    enc, pk = OpusEncoder(), RtpPacketizer()
    for _ in range(5):
        for payload in enc.encode(bytes(1920)):
            a.client.send_rtp(sid, pk.packet(payload))
    await wait_for(lambda: len(b.rtp) >= 5, 5, "rtp at b")
    assert {s for s, _ in b.rtp} == {sid}
    a.client.send_data(models.DataPacket(user=models.UserPacket(payload=b"hello")))
    await wait_for(lambda: bool(b.data), 5, "data at b")
    assert b.data[0].participant_identity == "sip_a" and b.data[0].user.payload == b"hello"
    # Garbage after the join: answered with request_response, the session goes on.
    a.client._transport.write(encode_frame(Kind.SIGNAL, b"\xff\xff"))  # type: ignore[union-attr]
    await wait_for(lambda: any(s.HasField("request_response") for s in a.signals), 5, "refusal")
    assert "malformed SignalRequest" in a.first("request_response").request_response.message
    assert a.client.joined and not a.closed
    a.client.close()
    b.client.close()


async def test_pair_join_refused(
    channel: LocalChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = Peer()
    await bad.join(channel, "not-a-token")
    await wait_for(lambda: bool(bad.closed), 5, "refusal")
    assert bad.closed[0].startswith("room error: ") and not bad.client.joined
    wrong_room = Peer()
    await wrong_room.join(channel, tok("x", room="elsewhere"), room="local-pair")
    await wait_for(lambda: bool(wrong_room.closed), 5, "refusal")
    assert wrong_room.closed == ["room error: JOIN room differs from the token's room"]
    # No JOIN in time: the server says so and closes.
    monkeypatch.setattr(local_server, "JOIN_TIMEOUT", 0.1)
    reader, writer = await asyncio.open_unix_connection(sock=await channel.connect_pair())
    data = await asyncio.wait_for(reader.read(), 5)
    assert data[4] == Kind.ERROR and data[5:] == b"no JOIN frame within 0.1 s"
    writer.close()
    assert not channel.sessions


async def test_agent_room_in_process(channel: LocalChannelServer) -> None:
    """The agent SDK's Room over the in-process pair: join, publish audio, hear a caller, leave."""
    caller = Peer()
    await caller.join(channel, tok("sip_caller"))
    caller.client.send_signal(
        rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="c", name="phone", type=0))  # type: ignore[arg-type]
    )
    await wait_for(lambda: any(s.HasField("track_published") for s in caller.signals), 5)
    caller_sid = caller.first("track_published").track_published.track.sid

    room = Room()
    token = mint_token(
        KEY,
        SECRET,
        identity="agent-1",
        room="local-pair",
        kind="agent",
        can_update_own_metadata=True,
    )
    await room._connect(await channel.connect_pair(), token, RoomOptions())
    assert room.isconnected() and room.local_participant.identity == "agent-1"
    await room.local_participant.set_attributes({"lk.agent.state": "listening"})
    assert room.local_participant.attributes == {"lk.agent.state": "listening"}

    # Caller -> agent: a 440 Hz tone arrives as frames on the agent's AudioStream.
    (remote,) = room.remote_participants.values()
    await wait_for(lambda: bool(remote.track_publications), 5, "caller track at agent")
    pub = remote.track_publications[caller_sid]
    assert pub.track is not None
    stream = AudioStream(pub.track)
    enc, pk = OpusEncoder(), RtpPacketizer()
    x = tone(440, 0.6, 48000, 8000).astype(np.int16)
    for i in range(0, len(x), 960):
        for payload in enc.encode(x[i : i + 960].tobytes()):
            caller.client.send_rtp(caller_sid, pk.packet(payload))
    frames = []
    async for ev in stream:
        frames.append(np.frombuffer(ev.frame.data, np.int16))
        if len(frames) == 30:
            break
    assert abs(dominant_frequency(np.concatenate(frames[5:]), 48000) - 440) < 5

    # Agent -> caller: a published track's Opus RTP reaches the caller.
    source = AudioSource(48000, 1)
    local = await room.local_participant.publish_track(
        LocalAudioTrack.create_audio_track("agent", source)
    )
    await source.capture_frame(AudioFrame(bytes(1920 * 5), 48000, 1, 960 * 5))
    await wait_for(lambda: sum(s == local.sid for s, _ in caller.rtp) >= 5, 5, "agent audio")
    header = caller.rtp[-1][1][:12]
    assert struct.unpack("!BB", header[:2])[1] & 0x7F == 111

    await room.disconnect()
    assert not room.isconnected()
    await wait_for(lambda: len(channel.sessions) == 1, 5, "agent session gone")
    caller.client.close()

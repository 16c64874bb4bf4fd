"""The local participant channel's protocol, sans-I/O: both ends of one connection.

Shaped like websockets' ``Protocol``: the I/O layer feeds the bytes it reads to
:meth:`Protocol.receive_data` (and calls :meth:`Protocol.receive_eof` at end of stream), handles
what :meth:`Protocol.events_received` returns, and writes what :meth:`Protocol.data_to_send`
returns. Nothing here touches a socket, a clock or an event loop, so the handshake and every
malformed-input path can be tested with plain bytes. :class:`ServerProtocol` is the SFU's end
(:mod:`sfu.local.server`); :class:`ClientProtocol` the end of bridge workers and agent jobs
(:mod:`sfu.local.client`). Frames are those of :mod:`sfu.local.framing`.

A connection goes like this:

1. The client sends one JOIN frame whose payload is a UTF-8 JSON object (:class:`JoinRequest`):

   ``token`` (string, required)
       A LiveKit access token granting ``roomJoin``. Its identity, name, kind, metadata,
       attributes and permissions define the participant, exactly as on ``/rtc``.
   ``room`` (string, optional)
       If present and not empty, must equal the token's room.
   ``auto_subscribe`` (bool, default true)
       Subscribe to every track published in the room (``auto_subscribe`` on ``/rtc``).
   ``subscribe_kinds`` (list of ``"audio"`` and ``"video"``, default both)
       Which kinds of subscribed tracks the SFU actually forwards over this connection. Agents
       send ``["audio"]`` (they have no use for video); an empty list means no media at all.

   Unknown fields are ignored. The client sends nothing else until the server has answered.
2. The server answers with a SIGNAL frame carrying ``SignalResponse.join``, or with an ERROR frame
   (a UTF-8 reason) and closes the stream: invalid token, room full, first frame not a JOIN,
   frames sent before the answer, no JOIN within the server's time limit.
3. Both sides then exchange SIGNAL frames (client to server ``SignalRequest``, server to client
   ``SignalResponse``), RTP frames (track sid + one RTP packet) and DATA frames (``DataPacket``).
   A frame that cannot be decoded is reported as :class:`FrameRejected` and the connection goes
   on: the server answers it with a ``request_response`` INVALID_REQUEST, the client counts it.
   A framing error (impossible length) ends the connection, since the byte stream cannot be
   resynchronised after it.
4. Either side ends the connection by closing the stream; a client leaving on purpose sends a
   ``leave`` request first. The server may send an ERROR frame before closing.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from roomline.errors import InvalidRequest
from sfu.local.framing import FrameDecoder, FrameError, Kind, decode_rtp, encode_frame, encode_rtp

#: Media kinds a JOIN may ask for in ``subscribe_kinds``.
MEDIA_KINDS = frozenset({"audio", "video"})
#: Longest ERROR reason sent or reported (bytes / characters).
MAX_ERROR_LENGTH = 1000


class ChannelStateError(RuntimeError):
    """A frame was sent in a state that does not allow it (a bug in the caller)."""


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """The JOIN frame's fields; see the module docstring."""

    token: str
    room: str = ""
    auto_subscribe: bool = True
    subscribe_kinds: frozenset[str] = MEDIA_KINDS

    def __post_init__(self) -> None:
        if not self.subscribe_kinds <= MEDIA_KINDS:
            raise InvalidRequest("JOIN 'subscribe_kinds' may only contain 'audio' and 'video'")

    def as_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "room": self.room,
            "auto_subscribe": self.auto_subscribe,
            "subscribe_kinds": sorted(self.subscribe_kinds),
        }

    def encode(self) -> bytes:
        return json.dumps(self.as_dict()).encode()

    @classmethod
    def decode(cls, payload: bytes) -> JoinRequest:
        """Parse a JOIN payload; raises :class:`InvalidRequest` with the reason to send back."""
        try:
            obj = json.loads(payload)
        except ValueError:
            raise InvalidRequest("JOIN payload is not JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("token"), str):
            raise InvalidRequest("JOIN needs a JSON object with a string 'token'")
        room = obj.get("room") or ""
        if not isinstance(room, str):
            raise InvalidRequest("JOIN 'room' must be a string")
        auto_subscribe = obj.get("auto_subscribe", True)
        if not isinstance(auto_subscribe, bool):
            raise InvalidRequest("JOIN 'auto_subscribe' must be true or false")
        kinds = obj.get("subscribe_kinds", sorted(MEDIA_KINDS))
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise InvalidRequest("JOIN 'subscribe_kinds' must be a list of strings")
        return cls(obj["token"], room, auto_subscribe, frozenset(kinds))


# ---------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class JoinReceived:
    """Server: the client asked to join; answer with :meth:`ServerProtocol.accept` or ``fail``."""

    join: JoinRequest


@dataclass(frozen=True, slots=True)
class SignalRequestReceived:
    """Server: a ``SignalRequest`` from the participant."""

    request: rtc.SignalRequest


@dataclass(frozen=True, slots=True)
class SignalResponseReceived:
    """Client: a ``SignalResponse`` from the SFU (the first one is the ``join`` answer)."""

    response: rtc.SignalResponse


@dataclass(frozen=True, slots=True)
class RtpReceived:
    """Either side: one RTP packet of the track ``track_sid``."""

    track_sid: str
    packet: bytes


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Server: a serialized ``DataPacket``, left for the signalling layer to check and relay."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class DataPacketReceived:
    """Client: a ``DataPacket`` relayed by the SFU."""

    packet: models.DataPacket


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """Either side: a frame that could not be decoded was skipped; the connection goes on."""

    kind: int
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Either side: the connection is over; close the stream after sending :meth:`data_to_send`.

    ``clean`` is true for an end of stream between frames after the join; ``reason`` says why.
    """

    reason: str
    clean: bool = False


Event = (
    JoinReceived
    | SignalRequestReceived
    | SignalResponseReceived
    | RtpReceived
    | DataReceived
    | DataPacketReceived
    | FrameRejected
    | ConnectionClosed
)


class State(enum.Enum):
    CONNECTING = "connecting"  # server: waiting for the JOIN; client: waiting for its answer
    JOINING = "joining"  # server: JOIN received, not yet accepted or refused
    OPEN = "open"
    CLOSED = "closed"


# ---------------------------------------------------------------------------------- protocols


class Protocol:
    """What both ends share: framing, the output buffer, events and the end of the connection."""

    def __init__(self) -> None:
        self.state = State.CONNECTING
        #: Why the connection ended ("" while it has not).
        self.close_reason = ""
        self._decoder = FrameDecoder()
        self._events: list[Event] = []
        self._writes: list[bytes] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state={self.state.value})"

    # ---- input
    def receive_data(self, data: bytes) -> None:
        """Parse ``data`` (any chunk of the byte stream) into events."""
        if self.state is State.CLOSED:
            return
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            self._fail_framing(exc.message)
            return
        for kind, payload in frames:
            if self.state is State.CLOSED:
                return
            self._receive_frame(kind, payload)

    def receive_eof(self) -> None:
        """The peer closed the stream."""
        if self.state is State.CLOSED:
            return
        truncated = self._decoder.pending > 0
        self._closed(self._eof_reason(truncated), clean=self.state is State.OPEN and not truncated)

    # ---- output
    def events_received(self) -> list[Event]:
        """Events parsed since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """Bytes to write, in order, since the last call."""
        writes, self._writes = self._writes, []
        return writes

    def close(self) -> None:
        """End the connection from this side (no event: the caller knows)."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.close_reason = self.close_reason or "closed locally"

    def send_rtp(self, track_sid: str, packet: bytes) -> bool:
        """Queue one RTP packet of ``track_sid``; False (nothing queued) once closed."""
        if not self._can_send():
            return False
        self._writes.append(encode_rtp(track_sid, packet))
        return True

    # ---- shared internals
    def _can_send(self) -> bool:
        if self.state is State.OPEN:
            return True
        if self.state is State.CLOSED:
            return False  # the peer may close at any time; late sends are dropped
        raise ChannelStateError(f"cannot send media or signal while {self.state.value}")

    def _send_frame(self, kind: Kind, payload: bytes) -> bool:
        if not self._can_send():
            return False
        self._writes.append(encode_frame(kind, payload))
        return True

    def _closed(self, reason: str, clean: bool = False) -> None:
        self.state = State.CLOSED
        self.close_reason = reason
        self._events.append(ConnectionClosed(reason, clean))

    def _receive_rtp(self, kind: int, payload: bytes) -> None:
        try:
            sid, packet = decode_rtp(payload)
        except FrameError as exc:
            self._events.append(FrameRejected(kind, exc.message))
            return
        self._events.append(RtpReceived(sid, packet))

    def _receive_frame(self, kind: int, payload: bytes) -> None:
        raise NotImplementedError

    def _fail_framing(self, message: str) -> None:
        raise NotImplementedError

    def _eof_reason(self, truncated: bool) -> str:
        raise NotImplementedError


class ServerProtocol(Protocol):
    """The SFU's end of one connection (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        #: The JOIN, once received.
        self.join: JoinRequest | None = None

    def accept(self) -> None:
        """Admit the participant; the caller then sends the ``join`` answer with send_signal."""
        if self.state is not State.JOINING:
            raise ChannelStateError(f"cannot accept a join while {self.state.value}")
        self.state = State.OPEN

    def fail(self, message: str) -> None:
        """Send an ERROR frame with ``message`` and end the connection (refusal or shutdown)."""
        if self.state is State.CLOSED:
            return
        reason = message.encode("utf-8", "replace")[:MAX_ERROR_LENGTH]
        self._writes.append(encode_frame(Kind.ERROR, reason))
        self.state = State.CLOSED
        self.close_reason = message

    def send_signal(self, wire: bytes) -> bool:
        """Queue a serialized ``SignalResponse``."""
        return self._send_frame(Kind.SIGNAL, wire)

    def send_data(self, payload: bytes) -> bool:
        """Queue a serialized ``DataPacket``."""
        return self._send_frame(Kind.DATA, payload)

    def _refuse(self, message: str) -> None:
        # A JOIN not yet handed out must not be acted on after the refusal.
        self._events = [e for e in self._events if not isinstance(e, JoinReceived)]
        self.fail(message)
        self._events.append(ConnectionClosed(message))

    def _fail_framing(self, message: str) -> None:
        if self.state is State.OPEN:
            self._closed(f"bad frame: {message}")
        else:
            self._refuse(message)

    def _eof_reason(self, truncated: bool) -> str:
        if self.state is not State.OPEN:
            return "connection closed before the join was answered"
        return "connection closed in the middle of a frame" if truncated else "connection closed"

    def _receive_frame(self, kind: int, payload: bytes) -> None:
        if self.state is State.CONNECTING:
            if kind != Kind.JOIN:
                self._refuse(f"first frame must be JOIN, got kind {kind}")
                return
            try:
                self.join = JoinRequest.decode(payload)
            except InvalidRequest as exc:
                self._refuse(exc.message)
                return
            self.state = State.JOINING
            self._events.append(JoinReceived(self.join))
        elif self.state is State.JOINING:
            self._refuse("frames sent before the join was answered")
        elif kind == Kind.RTP:
            self._receive_rtp(kind, payload)
        elif kind == Kind.SIGNAL:
            try:
                request = rtc.SignalRequest.FromString(payload)
            except (DecodeError, ValueError):
                self._events.append(FrameRejected(kind, "malformed SignalRequest"))
                return
            self._events.append(SignalRequestReceived(request))
        elif kind == Kind.DATA:
            self._events.append(DataReceived(payload))
        else:
            self._events.append(FrameRejected(kind, f"unknown frame kind {kind}"))


class ClientProtocol(Protocol):
    """A participant's end of one connection; the JOIN is queued at construction."""

    def __init__(self, join: JoinRequest) -> None:
        super().__init__()
        self.join = join
        self._writes.append(encode_frame(Kind.JOIN, join.encode()))

    def send_signal(self, request: rtc.SignalRequest) -> bool:
        return self._send_frame(Kind.SIGNAL, request.SerializeToString())

    def send_data(self, packet: models.DataPacket) -> bool:
        return self._send_frame(Kind.DATA, packet.SerializeToString())

    def _fail_framing(self, message: str) -> None:
        self._closed(f"bad frame from room: {message}")

    def _eof_reason(self, truncated: bool) -> str:
        if truncated:
            return "room connection closed in the middle of a frame"
        if self.state is State.CONNECTING:
            return "room connection closed before the join was answered"
        return "room connection closed"

    def _receive_frame(self, kind: int, payload: bytes) -> None:
        if kind == Kind.ERROR:
            text = payload.decode("utf-8", "replace")[:MAX_ERROR_LENGTH]
            self._closed("room error: " + text)
        elif kind == Kind.SIGNAL:
            try:
                response = rtc.SignalResponse.FromString(payload)
            except (DecodeError, ValueError):
                self._events.append(FrameRejected(kind, "malformed SignalResponse"))
                return
            if self.state is State.CONNECTING and response.WhichOneof("message") == "join":
                self.state = State.OPEN
            self._events.append(SignalResponseReceived(response))
        elif kind == Kind.RTP:
            self._receive_rtp(kind, payload)
        elif kind == Kind.DATA:
            try:
                packet = models.DataPacket.FromString(payload)
            except (DecodeError, ValueError):
                self._events.append(FrameRejected(kind, "malformed DataPacket"))
                return
            self._events.append(DataPacketReceived(packet))
        else:
            self._events.append(FrameRejected(kind, f"unexpected frame kind {kind}"))


def pump(a: Protocol, b: Protocol) -> tuple[list[Event], list[Event]]:
    """Move everything ``a`` and ``b`` have to send to the other side (in-memory pair).

    Returns the events each side received; an end that closed delivers EOF to the other. Used by
    tests and anything that wants both ends in one process without a socket.
    """
    events_a: list[Event] = []
    events_b: list[Event] = []
    while True:
        moved = False
        for src, dst, sink in ((a, b, events_b), (b, a, events_a)):
            for chunk in src.data_to_send():
                moved = True
                dst.receive_data(chunk)
            if src.state is State.CLOSED and dst.state is not State.CLOSED:
                moved = True
                dst.receive_eof()
            sink.extend(dst.events_received())
        if not moved:
            return events_a, events_b

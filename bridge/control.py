"""Control protocol between a bridge worker and its supervisor (JSON lines).

One message per line, UTF-8 JSON object with a ``type`` key, on a Unix socketpair whose worker end is
passed as ``--control-fd N`` (stdout stays free for pjsua's own logging). Every message is a frozen
dataclass here; :func:`encode` / :func:`decode` convert them. Decoding is strict: an unknown type, a
missing or unknown field, or a field of the wrong type raises :class:`ControlError`, so a version skew
between supervisor and worker fails loudly instead of half-working.

Worker → supervisor: :class:`Ready`, :class:`InviteRequest`, :class:`CallState`.
Supervisor → worker: :class:`InviteResult`, :class:`Hangup`, :class:`Shutdown`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sfu.errors import InvalidRequest

#: A control line longer than this is refused (a whole INVITE's headers fit in a few KiB; the cap
#: stops a confused peer from making the other side buffer without bound).
MAX_LINE_BYTES = 256 * 1024

#: Final SIP status codes the supervisor may answer an INVITE with.
INVITE_STATUSES = frozenset({200, 400, 401, 403, 404, 407, 480, 486, 488, 500, 503, 603})

#: Call states reported in :class:`CallState`.
CALL_STATES = frozenset({"ringing", "active", "hangup", "rejected"})


class ControlError(InvalidRequest):
    """A control message could not be decoded or is invalid."""


@dataclass(frozen=True)
class Ready:
    """Worker started: SIP is listening and this many calls may run at once (the pjsua cap)."""

    TYPE: ClassVar[str] = "ready"
    sip_port: int
    max_calls: int
    pid: int = 0


@dataclass(frozen=True)
class InviteRequest:
    """A new INVITE arrived; the worker asks where it goes. ``id`` pairs it with the result."""

    TYPE: ClassVar[str] = "invite"
    id: int
    call_id: str
    from_user: str
    from_host: str
    to_user: str
    src_ip: str
    src_port: int
    from_tag: str = ""
    to_host: str = ""
    user_agent: str = ""
    transport: str = "udp"
    headers: dict[str, str] = field(default_factory=dict)
    authorization: str | None = None


@dataclass(frozen=True)
class InviteResult:
    """The supervisor's decision for :class:`InviteRequest` ``id``.

    ``status`` 200 means: join the local channel at ``socket`` with ``token``; ``ringing`` True
    keeps the phone ringing (180) until a remote audio track arrives (``wait_for_audio``), False
    answers as soon as the room JoinResponse arrives. Any other status rejects the call with that
    code and ``headers`` (e.g. ``Proxy-Authenticate`` with 407). ``drop`` rejects without telling
    the caller more than pjsua already did (see docs/bridge.md).
    """

    TYPE: ClassVar[str] = "invite_result"
    id: int
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    token: str = ""
    room: str = ""
    identity: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    socket: str = ""
    ringing: bool = False
    ringing_timeout: float = 180.0
    max_call_duration: float = 24 * 3600.0
    media_timeout: float = 15.0
    media_timeout_initial: float = 30.0

    def __post_init__(self) -> None:
        if self.status not in INVITE_STATUSES:
            raise ControlError(f"invite_result status {self.status} not allowed")
        if self.status == 200 and not self.drop and (not self.token or not self.socket):
            raise ControlError("invite_result 200 needs token and socket")
        for name in ("ringing_timeout", "max_call_duration", "media_timeout"):
            if getattr(self, name) <= 0:
                raise ControlError(f"invite_result {name} must be positive")


@dataclass(frozen=True)
class CallState:
    """A call changed state (for metrics and the SIP call list)."""

    TYPE: ClassVar[str] = "call_state"
    call_id: str
    state: str
    reason: str = ""
    status: int = 0
    codec: str = ""
    room: str = ""
    identity: str = ""
    active_calls: int = 0

    def __post_init__(self) -> None:
        if self.state not in CALL_STATES:
            raise ControlError(f"call_state state {self.state!r} unknown")


@dataclass(frozen=True)
class Hangup:
    """Supervisor asks the worker to end a call (BYE, or 486 before answer)."""

    TYPE: ClassVar[str] = "hangup"
    call_id: str
    reason: str = ""


@dataclass(frozen=True)
class Shutdown:
    """Supervisor asks the worker to hang up everything and exit."""

    TYPE: ClassVar[str] = "shutdown"


Message = Ready | InviteRequest | InviteResult | CallState | Hangup | Shutdown

_TYPES: dict[str, type[Any]] = {
    cls.TYPE: cls for cls in (Ready, InviteRequest, InviteResult, CallState, Hangup, Shutdown)
}


def encode(msg: Message) -> bytes:
    """One JSON line (with trailing newline) for ``msg``."""
    body = {"type": msg.TYPE, **dataclasses.asdict(msg)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is float:
        # JSON has one number type; accept ints for float fields but never bools.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int or tp is bool or tp is str:
        if type(value) is tp:
            return value
    elif origin is dict:
        if isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return dict(value)
    elif origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is not type(None):
                try:
                    return _check(value, arg, where)
                except ControlError:
                    pass
    raise ControlError(f"field {where}: bad type {type(value).__name__}")


def decode(line: bytes | str) -> Message:
    """Parse one control line; raises :class:`ControlError` on anything unexpected."""
    if isinstance(line, bytes):
        if len(line) > MAX_LINE_BYTES:
            raise ControlError("control line too long")
        try:
            line = line.decode()
        except UnicodeDecodeError as exc:
            raise ControlError("control line is not UTF-8") from exc
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ControlError("control line is not JSON") from exc
    if not isinstance(obj, dict):
        raise ControlError("control message must be a JSON object")
    cls = _TYPES.get(obj.pop("type", None))  # type: ignore[arg-type]
    if cls is None:
        raise ControlError("unknown control message type")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(obj) - set(fields)
    if unknown:
        raise ControlError(f"{cls.TYPE}: unknown fields {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in obj:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ControlError(f"{cls.TYPE}: missing field {name}")
            continue
        kwargs[name] = _check(obj[name], hints[name], f"{cls.TYPE}.{name}")
    msg: Message = cls(**kwargs)
    return msg

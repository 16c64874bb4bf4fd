"""Control protocol between a bridge worker and its supervisor (JSON lines).

One message per line, UTF-8 JSON object with a ``type`` key, on a Unix socketpair whose worker end is
passed as ``--control-fd N`` (stdout stays free for pjsua's own logging). Every message is a frozen
dataclass here; :func:`encode` / :func:`decode` convert them. Decoding is strict: an unknown type, a
missing or unknown field, or a field of the wrong type raises :class:`ControlError`, so a version skew
between supervisor and worker fails loudly instead of half-working.

Worker → supervisor: :class:`Ready`, :class:`InviteRequest`, :class:`PinEntered`, :class:`CallState`.
Supervisor → worker: :class:`InviteResult`, :class:`PinResult`, :class:`Hangup`, :class:`Shutdown`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from roomline.errors import InvalidRequest
from roomline.jsonlines import JsonLinesCodec

#: A control line longer than this is refused (a whole INVITE's headers fit in a few KiB; the cap
#: stops a confused peer from making the other side buffer without bound).
MAX_LINE_BYTES = 256 * 1024

#: Final SIP status codes the supervisor may answer an INVITE with.
INVITE_STATUSES = frozenset({200, 400, 401, 403, 404, 407, 480, 486, 488, 500, 503, 603})

#: Call states reported in :class:`CallState`.
CALL_STATES = frozenset({"ringing", "active", "hangup", "rejected"})

#: Longest PIN a caller may enter (LiveKit's check also stops at 16 digits).
MAX_PIN_DIGITS = 16
#: DTMF keys that may appear in a PIN (``#`` ends the entry and is never part of it).
PIN_CHARS = frozenset("0123456789*ABCD")


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
    the caller more than pjsua already did (see docs/bridge.md). ``collect_pin`` (with 200, no
    token yet): answer, prompt for a PIN by DTMF and send :class:`PinEntered`; the room details
    come in the :class:`PinResult`.
    """

    TYPE: ClassVar[str] = "invite_result"
    id: int
    status: int
    #: SIP reason phrase for a rejection (LiveKit's wording, e.g. "No trunk found").
    reason: str = ""
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
    collect_pin: bool = False

    def __post_init__(self) -> None:
        if self.status not in INVITE_STATUSES:
            raise ControlError(f"invite_result status {self.status} not allowed")
        if self.collect_pin and self.status != 200:
            raise ControlError("invite_result collect_pin needs status 200")
        needs_room = self.status == 200 and not self.drop and not self.collect_pin
        if needs_room and (not self.token or not self.socket):
            raise ControlError("invite_result 200 needs token and socket")
        for name in ("ringing_timeout", "max_call_duration", "media_timeout"):
            if getattr(self, name) <= 0:
                raise ControlError(f"invite_result {name} must be positive")


@dataclass(frozen=True)
class PinEntered:
    """The caller finished entering a PIN (``digits`` without the final ``#``; may be empty)."""

    TYPE: ClassVar[str] = "pin_entered"
    id: int
    call_id: str
    digits: str

    def __post_init__(self) -> None:
        # A PIN is a short digit string; anything else is a confused peer, not a caller.
        if len(self.digits) > MAX_PIN_DIGITS or any(c not in PIN_CHARS for c in self.digits):
            raise ControlError("pin_entered digits must be up to 16 of 0-9 * A-D")


@dataclass(frozen=True)
class PinResult:
    """The supervisor's answer to :class:`PinEntered` ``id``.

    200: join the room exactly like an accepted :class:`InviteResult` (same fields). Any other
    status (403 "Wrong PIN") ends the already answered call with a BYE.
    """

    TYPE: ClassVar[str] = "pin_result"
    id: int
    call_id: str
    status: int
    reason: str = ""
    token: str = ""
    room: str = ""
    identity: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    socket: str = ""
    ringing_timeout: float = 180.0
    max_call_duration: float = 24 * 3600.0
    media_timeout: float = 15.0
    media_timeout_initial: float = 30.0

    def __post_init__(self) -> None:
        if self.status not in INVITE_STATUSES:
            raise ControlError(f"pin_result status {self.status} not allowed")
        if self.status == 200 and (not self.token or not self.socket):
            raise ControlError("pin_result 200 needs token and socket")
        for name in ("ringing_timeout", "max_call_duration", "media_timeout"):
            if getattr(self, name) <= 0:
                raise ControlError(f"pin_result {name} must be positive")


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


Message = (
    Ready | InviteRequest | InviteResult | PinEntered | PinResult | CallState | Hangup | Shutdown
)

_CODEC: JsonLinesCodec[Message] = JsonLinesCodec(
    (Ready, InviteRequest, InviteResult, PinEntered, PinResult, CallState, Hangup, Shutdown),
    ControlError,
    MAX_LINE_BYTES,
)
#: One JSON line (with trailing newline) for a message.
encode = _CODEC.encode
#: Parse one control line; raises :class:`ControlError` on anything unexpected.
decode = _CODEC.decode
#: Async iterator over the messages of a stream (bad lines logged and skipped).
messages = _CODEC.messages

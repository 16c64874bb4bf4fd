"""Control protocol between a bridge worker and its supervisor (JSON lines).

One message per line, UTF-8 JSON object with a ``type`` key, on a Unix socketpair whose worker end is
passed as ``--control-fd N`` (stdout stays free for pjsua's own logging). Every message is a frozen
dataclass here; :func:`encode` / :func:`decode` convert them. Decoding is strict: an unknown type, a
missing or unknown field, or a field of the wrong type raises :class:`ControlError`, so a version skew
between supervisor and worker fails loudly instead of half-working.

Worker → supervisor: :class:`Ready`, :class:`InviteRequest`, :class:`PinEntered`, :class:`CallState`,
:class:`DialProgress`, :class:`TransferResult`.
Supervisor → worker: :class:`InviteResult`, :class:`PinResult`, :class:`Shutdown`, :class:`Dial`
(outbound call), :class:`Transfer` (REFER).

There is no "hang up this call" message: the main process ends a caller's call by removing the
participant from its room; the worker sees the room leg leave and sends BYE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from roomline.errors import InvalidRequest
from roomline.jsonlines import JsonLinesCodec
from roomline.wire import MAX_PIN_DIGITS, PIN_DIGITS

#: A control line longer than this is refused (a whole INVITE's headers fit in a few KiB; the cap
#: stops a confused peer from making the other side buffer without bound).
MAX_LINE_BYTES = 256 * 1024

#: Final SIP status codes the supervisor may answer an INVITE with.
INVITE_STATUSES = frozenset({200, 400, 401, 403, 404, 407, 480, 486, 488, 500, 503, 603})

#: Per-trunk media encryption (LiveKit ``SIPMediaEncryption``): ``disable`` = plain RTP (an
#: SRTP-only offer gets 488), ``allow`` = SRTP (SDES) when the caller offers it, ``require`` =
#: SRTP or 488. Carried in :class:`InviteResult`; the worker applies it before answering.
MEDIA_ENCRYPTIONS = frozenset({"disable", "allow", "require"})

#: Call states reported in :class:`CallState`.
#: Conference-bridge clocks a worker runs (``--bridge-rate``): 16 kHz keeps G.722 wideband and
#: resamples G.711; 8 kHz carries G.711 only, without resampling (``sip.wideband: false``).
BRIDGE_RATE_WIDEBAND = 16000
BRIDGE_RATE_NARROWBAND = 8000
CALL_STATES = frozenset({"ringing", "active", "hangup", "rejected"})

#: Why a worker rejected an INVITE itself (:attr:`CallState.cause`, a metrics label): the trunk's
#: SRTP policy against the offer (488; bridge/worker/sdes.py), ringing timeout or the room ending
#: the participant before the answer (486), no decision from the supervisor in time (503), an
#: INVITE whose headers cannot be parsed (400).
WORKER_REJECT_CAUSES = frozenset(
    {
        "encryption-required",
        "encryption-required-no-offer",
        "encryption-disabled",
        "no-common-crypto",
        "ringing-timeout",
        "room-left",
        "no-decision",
        "bad-request",
    }
)

#: A SIP header name is an RFC 3261 token; values may not break the header line.
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


class ControlError(InvalidRequest):
    """A control message could not be decoded or is invalid."""


def _single_line(value: str) -> bool:
    return not any(c in "\r\n\0" for c in value)


def _check_headers(where: str, headers: dict[str, str]) -> None:
    """Header names must be tokens and values single-line: they go verbatim into a SIP message."""
    for name, value in headers.items():
        if not name or any(c not in _TOKEN_CHARS for c in name):
            raise ControlError(f"{where}: bad SIP header name {name!r}")
        if not _single_line(value):
            raise ControlError(f"{where}: SIP header {name} value spans lines")


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
    answers as soon as the room JoinResponse arrives. ``headers`` go into the final response: the
    trunk's fixed headers on 200, ``Proxy-Authenticate`` on 407. With 200, each
    ``attributes_to_headers`` entry (attribute name → header name) also adds that header with the
    attribute's value from ``attributes`` when the attribute is set. Any other status rejects the
    call with that code and ``headers``. ``drop`` rejects without telling
    the caller more than pjsua already did (see docs/bridge.md). ``collect_pin`` (with 200, no
    token yet): answer, prompt for a PIN by DTMF and send :class:`PinEntered`; the room details
    come in the :class:`PinResult`. ``media_encryption`` (one of :data:`MEDIA_ENCRYPTIONS`) is
    the matched trunk's SRTP policy: with ``require`` the worker answers 488 to an offer without
    SDES crypto, with ``disable`` it answers 488 to an SRTP-only (``RTP/SAVP``) offer.
    """

    TYPE: ClassVar[str] = "invite_result"
    id: int
    status: int
    #: SIP reason phrase for a rejection (LiveKit's wording, e.g. "No trunk found").
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    attributes_to_headers: dict[str, str] = field(default_factory=dict)
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
    media_encryption: str = "disable"

    def __post_init__(self) -> None:
        if self.status not in INVITE_STATUSES:
            raise ControlError(f"invite_result status {self.status} not allowed")
        if self.media_encryption not in MEDIA_ENCRYPTIONS:
            raise ControlError(f"invite_result media_encryption {self.media_encryption!r} unknown")
        if self.collect_pin and self.status != 200:
            raise ControlError("invite_result collect_pin needs status 200")
        needs_room = self.status == 200 and not self.drop and not self.collect_pin
        if needs_room and (not self.token or not self.socket):
            raise ControlError("invite_result 200 needs token and socket")
        for name in ("ringing_timeout", "max_call_duration", "media_timeout"):
            if getattr(self, name) <= 0:
                raise ControlError(f"invite_result {name} must be positive")
        _check_headers("invite_result headers", self.headers)
        _check_headers(
            "invite_result attributes_to_headers",
            {h: "" for h in self.attributes_to_headers.values()},
        )

    def answer_headers(self) -> dict[str, str]:
        """The headers of the 200 OK: ``headers`` plus the mapped attributes that are set."""
        out = dict(self.headers)
        for attr, header in self.attributes_to_headers.items():
            value = self.attributes.get(attr, "")
            # An attribute may hold anything; only a single-line value can be a header value.
            if value and _single_line(value):
                out[header] = value
        return out


@dataclass(frozen=True)
class PinEntered:
    """The caller finished entering a PIN (``digits`` without the final ``#``; may be empty)."""

    TYPE: ClassVar[str] = "pin_entered"
    id: int
    call_id: str
    digits: str

    def __post_init__(self) -> None:
        # A PIN is a short digit string; anything else is a confused peer, not a caller.
        if len(self.digits) > MAX_PIN_DIGITS or any(c not in PIN_DIGITS for c in self.digits):
            raise ControlError(f"pin_entered digits must be up to {MAX_PIN_DIGITS} of {PIN_DIGITS}")


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
    #: For ``rejected``: empty when the supervisor's decision rejected the call (already counted
    #: there); else why the worker rejected it itself, a short label (:data:`WORKER_REJECT_CAUSES`).
    cause: str = ""

    def __post_init__(self) -> None:
        if self.state not in CALL_STATES:
            raise ControlError(f"call_state state {self.state!r} unknown")
        if self.cause and self.cause not in WORKER_REJECT_CAUSES:
            raise ControlError(f"call_state cause {self.cause!r} unknown")


@dataclass(frozen=True)
class Shutdown:
    """Supervisor asks the worker to hang up everything and exit."""

    TYPE: ClassVar[str] = "shutdown"


# --- outbound calls and transfers (issue 11) -------------------------------------------------------

#: States reported in :class:`DialProgress`: ``joined`` (callee in the room, INVITE going out),
#: ``ringing`` (first 18x), ``answered`` (200 OK, initial DTMF playing), ``active``, ``failed``
#: (final non-2xx, ringing timeout, error: ``status``/``reason``), ``hangup`` (normal end).
DIAL_STATES = frozenset({"joined", "ringing", "answered", "active", "failed", "hangup"})


@dataclass(frozen=True)
class Dial:
    """Supervisor asks a worker to place an outbound call (``CreateSIPParticipant``).

    The worker joins the callee to ``room`` with ``token`` at once, then INVITEs ``to_uri`` from
    ``sip:<from_user>@<from_host>`` (empty ``from_host``: the worker's own address;
    ``display_name`` None or empty: none sent), answering 401/407 with the digest
    credentials, and reports :class:`DialProgress` with the same ``id`` and ``call_id``.
    """

    TYPE: ClassVar[str] = "dial"
    id: int
    call_id: str
    to_uri: str
    from_user: str
    token: str
    room: str
    identity: str
    socket: str
    from_host: str = ""
    display_name: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    auth_username: str = ""
    auth_password: str = field(default="", repr=False)
    dtmf: str = ""
    play_dialtone: bool = False
    ringing_timeout: float = 180.0
    max_call_duration: float = 24 * 3600.0
    include_headers: int = 0
    headers_to_attributes: dict[str, str] = field(default_factory=dict)
    #: Route the INVITE (and the dialog) through this SIP proxy, e.g. the Kamailio front
    #: ``sip:127.0.0.1:5060;lr``; empty: straight to the trunk.
    outbound_proxy: str = ""
    #: SRTP (SDES) for the call, one of :data:`MEDIA_ENCRYPTIONS`: ``disable`` offers plain RTP,
    #: ``allow`` offers ``a=crypto`` and takes a plain answer, ``require`` offers ``RTP/SAVP`` and
    #: fails the call (``encryption-required``) if the answer has no usable crypto.
    media_encryption: str = "disable"

    def __post_init__(self) -> None:
        if self.media_encryption not in MEDIA_ENCRYPTIONS:
            raise ControlError(f"dial media_encryption {self.media_encryption!r} unknown")
        bad = frozenset('<> "\r\n\0')
        for name in ("to_uri", "from_user", "from_host", "call_id"):
            value = getattr(self, name)
            extra = "" if name == "to_uri" else "@"
            if (not value and name != "from_host") or any(c in bad or c in extra for c in value):
                raise ControlError(f"dial {name} is not usable in a SIP URI")
        if not self.token or not self.socket:
            raise ControlError("dial needs token and socket")
        if self.outbound_proxy and (
            not self.outbound_proxy.startswith(("sip:", "sips:"))
            or any(c in bad for c in self.outbound_proxy)
        ):
            raise ControlError("dial outbound_proxy must be a sip: URI")
        if self.display_name is not None and (
            not _single_line(self.display_name) or '"' in self.display_name
        ):
            raise ControlError("dial display_name must be one line without quotes")
        for name in ("ringing_timeout", "max_call_duration"):
            if getattr(self, name) <= 0:
                raise ControlError(f"dial {name} must be positive")
        _check_headers("dial headers", self.headers)
        _check_headers("dial headers_to_attributes", dict.fromkeys(self.headers_to_attributes, ""))


@dataclass(frozen=True)
class DialProgress:
    """A worker reports how an outbound call (:class:`Dial` ``id``) goes."""

    TYPE: ClassVar[str] = "dial_progress"
    id: int
    call_id: str
    state: str
    status: int = 0
    reason: str = ""
    participant_sid: str = ""
    sip_call_id: str = ""

    def __post_init__(self) -> None:
        if self.state not in DIAL_STATES:
            raise ControlError(f"dial_progress state {self.state!r} unknown")


@dataclass(frozen=True)
class Transfer:
    """Supervisor asks the worker owning outbound/inbound call ``call_id`` for a cold transfer
    (REFER to ``transfer_to``, already in name-addr form for sip/sips)."""

    TYPE: ClassVar[str] = "transfer"
    id: int
    call_id: str
    transfer_to: str
    headers: dict[str, str] = field(default_factory=dict)
    play_dialtone: bool = False
    ringing_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.transfer_to or not _single_line(self.transfer_to):
            raise ControlError("transfer transfer_to must be one line")
        if self.ringing_timeout <= 0:
            raise ControlError("transfer ringing_timeout must be positive")
        _check_headers("transfer headers", self.headers)


@dataclass(frozen=True)
class TransferResult:
    """Outcome of :class:`Transfer` ``id``: ``ok``, else the failing SIP ``status``/``reason``
    (``reason`` ``ringing-timeout`` when no final NOTIFY came in time)."""

    TYPE: ClassVar[str] = "transfer_result"
    id: int
    call_id: str
    ok: bool
    status: int = 0
    reason: str = ""


Message = (
    Ready
    | InviteRequest
    | InviteResult
    | PinEntered
    | PinResult
    | CallState
    | Shutdown
    | Dial
    | DialProgress
    | Transfer
    | TransferResult
)

_CODEC: JsonLinesCodec[Message] = JsonLinesCodec(
    (
        Ready, InviteRequest, InviteResult, PinEntered, PinResult, CallState, Shutdown,
        Dial, DialProgress, Transfer, TransferResult,
    ),
    ControlError,
    MAX_LINE_BYTES,
)  # fmt: skip
#: One JSON line (with trailing newline) for a message.
encode = _CODEC.encode
#: Parse one control line; raises :class:`ControlError` on anything unexpected.
decode = _CODEC.decode
#: Async iterator over the messages of a stream (bad lines logged and skipped).
messages = _CODEC.messages

"""Control protocol between the agent supervisor (main process) and a job process (JSON lines).

One message per line: a UTF-8 JSON object with a ``type`` key, on a Unix socketpair whose job end is
passed as ``--control-fd N``. A second socketpair (``--fd-socket N``) carries only the local-channel
connection the supervisor opens for the job (SCM_RIGHTS), see :mod:`roomline_agents.service.supervisor`.

Decoding is strict, like the bridge's (bridge/control.py): unknown type, missing or unknown field, or
a wrong type raises :class:`ControlError`, so version skew fails loudly.

Job → supervisor: :class:`Ready`, :class:`Heartbeat`, :class:`ConnectRequest`, :class:`JobStatus`,
:class:`RemoveParticipant`, :class:`SipCall`.
Supervisor → job: :class:`StartJob`, :class:`StopJob`, :class:`ConnectFailed`, :class:`Result`,
:class:`Shutdown`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from roomline.errors import InvalidRequest
from roomline.jsonlines import JsonLinesCodec

#: Attribute LiveKit Agents uses for the agent state (initializing/listening/thinking/speaking).
AGENT_STATE_ATTRIBUTE = "lk.agent.state"

#: A control line longer than this is refused: a StartJob carries a token plus metadata bounded by
#: ``limits.max_metadata_size`` (64 KiB by default); the cap stops a confused peer from making the
#: other side buffer without bound.
MAX_LINE_BYTES = 512 * 1024

#: Job states reported in :class:`JobStatus` (LiveKit ``JobStatus`` without PENDING).
JOB_STATES = frozenset({"running", "success", "failed"})


class ControlError(InvalidRequest):
    """A control message could not be decoded or is invalid."""


@dataclass(frozen=True)
class Ready:
    """The job process has imported its libraries and waits for a :class:`StartJob`."""

    TYPE: ClassVar[str] = "ready"
    pid: int


@dataclass(frozen=True)
class Heartbeat:
    """Sent every second from the job's event loop; silence means the loop is blocked (hung)."""

    TYPE: ClassVar[str] = "heartbeat"


@dataclass(frozen=True)
class StartJob:
    """Run ``target`` (``module:callable``) for ``room`` as participant ``identity``."""

    TYPE: ClassVar[str] = "start_job"
    job_id: str
    dispatch_id: str
    agent_name: str
    target: str
    room: str
    identity: str
    token: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("job_id", "agent_name", "target", "room", "identity", "token"):
            if not getattr(self, name):
                raise ControlError(f"start_job.{name} must not be empty")


@dataclass(frozen=True)
class StopJob:
    """Ask the job to shut down (DeleteDispatch, room closed, appliance stopping)."""

    TYPE: ClassVar[str] = "stop_job"
    reason: str = ""


@dataclass(frozen=True)
class ConnectRequest:
    """``JobContext.connect()``: the job wants its local-channel connection now."""

    TYPE: ClassVar[str] = "connect"


@dataclass(frozen=True)
class ConnectFailed:
    """The supervisor could not open the local channel for the job."""

    TYPE: ClassVar[str] = "connect_failed"
    error: str


@dataclass(frozen=True)
class JobStatus:
    """The job started running, ended normally (``success``) or failed with ``error``."""

    TYPE: ClassVar[str] = "job_status"
    state: str
    error: str = ""

    def __post_init__(self) -> None:
        if self.state not in JOB_STATES:
            raise ControlError(f"job_status state {self.state!r} unknown")


@dataclass(frozen=True)
class RemoveParticipant:
    """RoomService.RemoveParticipant for the job's own room (e.g. an IVR hanging up a caller).

    With ``destination`` set it is MoveParticipant instead: the participant goes to that room.
    """

    TYPE: ClassVar[str] = "remove_participant"
    request_id: int
    identity: str
    destination: str = ""


@dataclass(frozen=True)
class Result:
    """Answer to a request carrying ``request_id``.

    For :class:`SipCall`: ``response`` is the RPC's answer (protobuf JSON) and a failure carries
    the Twirp ``code`` and ``meta`` (``sip_status_code``...) so the SDK can raise like livekit-api.
    """

    TYPE: ClassVar[str] = "result"
    request_id: int
    ok: bool
    error: str = ""
    code: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    response: str = ""


#: SIP RPCs an agent job may call (bridge/service/outbound.py), always in its own room.
SIP_METHODS = frozenset({"CreateSIPParticipant", "TransferSIPParticipant"})


@dataclass(frozen=True)
class SipCall:
    """An agent places a call or transfers a SIP participant: ``request`` is the LiveKit request
    message as protobuf JSON; its ``room_name`` must be the job's room (empty: filled in)."""

    TYPE: ClassVar[str] = "sip_call"
    request_id: int
    method: str
    request: str

    def __post_init__(self) -> None:
        if self.method not in SIP_METHODS:
            raise ControlError(f"sip_call method {self.method!r} unknown")


@dataclass(frozen=True)
class Shutdown:
    """Exit now (an idle process that is no longer needed)."""

    TYPE: ClassVar[str] = "shutdown"


Message = (
    Ready
    | Heartbeat
    | StartJob
    | StopJob
    | ConnectRequest
    | ConnectFailed
    | JobStatus
    | RemoveParticipant
    | Result
    | Shutdown
    | SipCall
)

_CODEC: JsonLinesCodec[Message] = JsonLinesCodec(
    (
        Ready,
        Heartbeat,
        StartJob,
        StopJob,
        ConnectRequest,
        ConnectFailed,
        JobStatus,
        RemoveParticipant,
        Result,
        Shutdown,
        SipCall,
    ),
    ControlError,
    MAX_LINE_BYTES,
)
#: One JSON line (with trailing newline) for a message.
encode = _CODEC.encode
#: Parse one control line; raises :class:`ControlError` on anything unexpected.
decode = _CODEC.decode
#: Async iterator over the messages of a stream (bad lines logged and skipped).
messages = _CODEC.messages

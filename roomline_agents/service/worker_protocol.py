"""The LiveKit agent-worker protocol for one ``/agent`` WebSocket connection, without any I/O.

An unmodified ``livekit-agents`` worker connects to ``/agent`` and exchanges one serialized protobuf
per binary WebSocket frame: it sends ``livekit.WorkerMessage`` and the server answers with
``livekit.ServerMessage`` (docs/agents.md, "Run your LiveKit Agents against roomline"). This module is the state
machine of one such connection, in the style of the ``websockets`` library's sans-I/O core::

    conn = WorkerConnection(now=loop.time())
    conn.receive_data(frame)                  # every binary frame received
    for event in conn.events_received():      # Registered, StatusUpdated, AvailabilityAnswered ...
        ...
    conn.send_availability_request(job)       # queue frames to send
    for frame in conn.data_to_send():         # write these, in order, as binary frames
        ...

Nothing here reads a clock: the edge passes ``now`` (any monotonic seconds) and enforces
:attr:`WorkerConnection.register_deadline` by calling :meth:`WorkerConnection.check_deadline`.
A frame that cannot be decoded, or an unknown message, yields a fatal :class:`ProtocolError` and
closes this connection only; odd-but-harmless input yields a non-fatal one and is ignored.
"""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from livekit.protocol import agent as agent_pb
from livekit.protocol import models

__all__ = [
    "AGENT_PROTOCOL",
    "DEFAULT_MAX_FRAME_SIZE",
    "REGISTER_TIMEOUT",
    "AvailabilityAnswered",
    "CloseCode",
    "ConnectionState",
    "Event",
    "JobStatusUpdated",
    "MigrateJob",
    "PingReceived",
    "ProtocolError",
    "Registered",
    "SimulateJob",
    "StatusUpdated",
    "WorkerConnection",
    "default_permissions",
    "new_worker_id",
    "server_info",
]

#: ``ServerInfo.agent_protocol`` (Go ``CurrentProtocol``); the worker sends no ``protocol=`` param.
AGENT_PROTOCOL = 1
#: LiveKit signalling protocol version reported in ``ServerInfo.protocol`` (what Go reports).
SIGNAL_PROTOCOL = 16
#: Seconds a new connection has to send ``RegisterWorkerRequest`` (Go ``RegisterTimeout``).
REGISTER_TIMEOUT = 10.0
#: Largest frame accepted. Real frames are < 1 KiB, except an AvailabilityResponse with 64 KiB of
#: metadata plus 64 KiB of attributes.
DEFAULT_MAX_FRAME_SIZE = 256 * 1024
#: Registered agent names longer than this are refused (names are registry keys, not free text).
MAX_AGENT_NAME = 128
#: ``protocol/agent/environment.go``: namespace/deployment at most 64 bytes.
MAX_DEPLOYMENT = 64
MAX_IDENTITY = 128
MAX_NAME = 128
MAX_METADATA = 64 * 1024
MAX_ATTRIBUTES = 64 * 1024
WORKER_ID_PREFIX = "AW_"

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_JOB_TYPES = frozenset(agent_pb.JobType.values())
_WORKER_STATUSES = frozenset(agent_pb.WorkerStatus.values())
_JOB_STATUSES = frozenset(agent_pb.JobStatus.values())


def new_worker_id() -> str:
    """``AW_`` + 12 base62 characters, as LiveKit's ``guid.New(AgentWorkerPrefix)``."""
    return WORKER_ID_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(12))


def default_permissions() -> models.ParticipantPermission:
    """What Go grants a worker that registered without ``allowed_permissions``."""
    return models.ParticipantPermission(
        can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True
    )


def server_info(version: str = "", node_id: str = "", region: str = "") -> models.ServerInfo:
    """The ``ServerInfo`` sent in ``RegisterWorkerResponse`` (the worker logs region/protocol)."""
    return models.ServerInfo(
        edition=models.ServerInfo.Standard,
        version=version,
        protocol=SIGNAL_PROTOCOL,
        region=region,
        node_id=node_id,
        agent_protocol=AGENT_PROTOCOL,
    )


class CloseCode(enum.IntEnum):
    """WebSocket close codes the edge uses for a fatal :class:`ProtocolError`."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009


class ConnectionState(enum.Enum):
    AWAITING_REGISTER = "awaiting_register"
    REGISTERED = "registered"
    CLOSED = "closed"


# ------------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Registered:
    """The worker registered; its ``RegisterWorkerResponse`` is already queued."""

    worker_id: str
    agent_name: str
    job_type: int
    version: str
    namespace: str
    deployment: str
    permissions: models.ParticipantPermission

    @property
    def key(self) -> tuple[str, str, int, str]:
        """LiveKit's worker key: (agent_name, namespace, job_type, deployment)."""
        return (self.agent_name, self.namespace, self.job_type, self.deployment)


@dataclass(frozen=True, slots=True)
class StatusUpdated:
    """``UpdateWorkerStatus``. ``status`` is None when the worker did not set it (keep the old one).

    ``load`` is clamped to [0, 1]; a NaN load reads as 1 (full)."""

    status: int | None
    load: float
    job_count: int
    draining: bool = False


@dataclass(frozen=True, slots=True)
class AvailabilityAnswered:
    """The worker's answer to an :class:`AvailabilityRequest` this connection sent.

    ``error`` is set when an acceptance carried unusable participant fields (too long, bad
    attributes); such an answer is reported with ``available=False`` and must be treated as a refusal.
    """

    job_id: str
    available: bool
    terminate: bool = False
    supports_resume: bool = False
    participant_identity: str = ""
    participant_name: str = ""
    participant_metadata: str = ""
    participant_attributes: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True, slots=True)
class JobStatusUpdated:
    """``UpdateJobStatus``: JS_RUNNING when the job process starts, JS_SUCCESS/JS_FAILED at exit."""

    job_id: str
    status: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A protobuf ``WorkerPing`` (unused by worker 1.8.9). The ``WorkerPong`` is already queued."""

    timestamp: int


@dataclass(frozen=True, slots=True)
class MigrateJob:
    """``MigrateJobRequest``: after re-registering, the worker lists the jobs it still runs."""

    job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SimulateJob:
    """``SimulateJobRequest`` (debug): the worker asks for a job in ``room`` for itself."""

    job_type: int
    room: models.Room
    participant: models.ParticipantInfo | None


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Input that breaks the protocol. ``fatal`` ones have closed the connection (see ``close_code``)."""

    message: str
    fatal: bool = True
    close_code: int = CloseCode.PROTOCOL_ERROR


Event = (
    Registered
    | StatusUpdated
    | AvailabilityAnswered
    | JobStatusUpdated
    | PingReceived
    | MigrateJob
    | SimulateJob
    | ProtocolError
)


# -------------------------------------------------------------------------------------- validation


def _bad_text(value: str, limit: int, what: str, *, allow_space: bool = True) -> str:
    """Reason ``value`` is unacceptable, or ""."""
    if len(value.encode()) > limit:
        return f"{what} longer than {limit} bytes"
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or (not allow_space and ch.isspace()):
            return (
                f"{what} contains {'whitespace or ' if not allow_space else ''}control characters"
            )
    return ""


def _bad_deployment(value: str, what: str) -> str:
    """``protocol/agent/environment.go``: <= 64 bytes, no ``_``, no whitespace or control chars."""
    if "_" in value:
        return f"{what} must not contain '_'"
    return _bad_text(value, MAX_DEPLOYMENT, what, allow_space=False)


def _clamp_load(load: float) -> float:
    if math.isnan(load):
        return 1.0
    return min(1.0, max(0.0, load))


# -------------------------------------------------------------------------------------- connection


class WorkerConnection:
    """Server side of one worker connection.

    ``now`` is only used to compute :attr:`register_deadline`; pass the same clock to
    :meth:`check_deadline`. ``worker_id`` and ``info`` fill the ``RegisterWorkerResponse``.
    """

    def __init__(
        self,
        *,
        now: float = 0.0,
        register_timeout: float = REGISTER_TIMEOUT,
        worker_id: str | None = None,
        info: models.ServerInfo | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.worker_id = worker_id or new_worker_id()
        self.info = info if info is not None else server_info()
        self.max_frame_size = max_frame_size
        self.register_deadline: float | None = now + register_timeout
        self.state = ConnectionState.AWAITING_REGISTER
        self.registration: Registered | None = None
        #: The error that closed the connection, if one did.
        self.close_error: ProtocolError | None = None
        #: Jobs offered with an AvailabilityRequest and not yet answered or withdrawn.
        self.offered: set[str] = set()
        self._events: list[Event] = []
        self._out: list[bytes] = []

    # ------------------------------------------------------------------ state

    @property
    def registered(self) -> bool:
        return self.state is ConnectionState.REGISTERED

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    def events_received(self) -> list[Event]:
        """Events parsed since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """Serialized ``ServerMessage`` frames queued since the last call, in order."""
        out, self._out = self._out, []
        return out

    def check_deadline(self, now: float) -> ProtocolError | None:
        """Close the connection if it has not registered by :attr:`register_deadline`."""
        if self.state is ConnectionState.AWAITING_REGISTER and self.register_deadline is not None:
            if now >= self.register_deadline:
                return self._fail("worker did not register in time", CloseCode.POLICY_VIOLATION)
        return None

    def close(self) -> None:
        """The transport closed (or the edge closes it): further input and output are dropped."""
        self.state = ConnectionState.CLOSED
        self.register_deadline = None
        self.offered.clear()

    def _fail(self, message: str, code: int = CloseCode.PROTOCOL_ERROR) -> ProtocolError:
        err = ProtocolError(message, fatal=True, close_code=code)
        self._events.append(err)
        self.close_error = err
        self.close()
        return err

    def _warn(self, message: str) -> None:
        self._events.append(ProtocolError(message, fatal=False, close_code=0))

    # ------------------------------------------------------------------ input

    def receive_text(self, text: str) -> None:
        """A text frame. The handshake reads bytes, so before registration this is fatal; after
        it, the frame is ignored (as the Python worker ignores text from the server)."""
        if self.closed:
            return
        if not self.registered:
            self._fail(
                "text frame before register (expected binary protobuf)", CloseCode.UNSUPPORTED_DATA
            )
        else:
            self._warn(f"ignored a text frame of {len(text)} characters")

    def receive_data(self, data: bytes) -> None:
        """One binary frame: a serialized ``livekit.WorkerMessage``."""
        if self.closed:
            return
        if len(data) > self.max_frame_size:
            self._fail(
                f"frame of {len(data)} bytes exceeds {self.max_frame_size}",
                CloseCode.MESSAGE_TOO_BIG,
            )
            return
        msg = agent_pb.WorkerMessage()
        try:
            msg.ParseFromString(bytes(data))
        except (DecodeError, ValueError, RuntimeError) as exc:
            self._fail(f"malformed WorkerMessage ({len(data)} bytes): {exc}")
            return
        kind = msg.WhichOneof("message")
        if kind is None:
            # Go: ErrUnknownWorkerSignal ends the connection.
            self._fail(f"WorkerMessage with no known message ({len(data)} bytes)")
            return
        if not self.registered:
            if kind == "register":
                self._on_register(msg.register)
            elif kind == "ping":
                self._on_ping(msg.ping)
            else:
                self._warn(f"ignored {kind} before register")
            return
        if kind == "register":
            self._warn("ignored a second register")
            return
        handler = getattr(self, f"_on_{kind}")
        handler(getattr(msg, kind))

    def _on_register(self, req: agent_pb.RegisterWorkerRequest) -> None:
        if req.type not in _JOB_TYPES:
            self._fail(f"register: unknown job type {req.type}")
            return
        for reason in (
            _bad_text(req.agent_name, MAX_AGENT_NAME, "register: agent_name"),
            _bad_deployment(req.deployment, "register: deployment"),
            _bad_deployment(req.namespace, "register: namespace"),
            _bad_text(req.version, MAX_NAME, "register: version"),
        ):
            if reason:
                self._fail(reason)
                return
        permissions = models.ParticipantPermission()
        if req.HasField("allowed_permissions"):
            permissions.CopyFrom(req.allowed_permissions)
        else:
            permissions = default_permissions()
        self.state = ConnectionState.REGISTERED
        self.register_deadline = None
        self._send(
            agent_pb.ServerMessage(
                register=agent_pb.RegisterWorkerResponse(
                    worker_id=self.worker_id, server_info=self.info
                )
            )
        )
        self.registration = Registered(
            worker_id=self.worker_id,
            agent_name=req.agent_name,
            job_type=int(req.type),
            version=req.version,
            namespace=req.namespace,
            deployment=req.deployment,
            permissions=permissions,
        )
        self._events.append(self.registration)

    def _on_availability(self, resp: agent_pb.AvailabilityResponse) -> None:
        if resp.job_id not in self.offered:
            self._warn(f"ignored availability answer for job {resp.job_id[:64]!r} not offered")
            return
        self.offered.discard(resp.job_id)
        attributes = dict(resp.participant_attributes)
        error = ""
        if resp.available:
            error = (
                _bad_text(resp.participant_identity, MAX_IDENTITY, "participant_identity")
                or _bad_text(resp.participant_name, MAX_NAME, "participant_name")
                or (
                    f"participant_metadata longer than {MAX_METADATA} bytes"
                    if len(resp.participant_metadata.encode()) > MAX_METADATA
                    else ""
                )
                or (
                    f"participant_attributes larger than {MAX_ATTRIBUTES} bytes"
                    if sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())
                    > MAX_ATTRIBUTES
                    else ""
                )
                or ("empty attribute key" if "" in attributes else "")
            )
            if error:
                self._warn(f"job {resp.job_id}: unusable acceptance: {error}")
        self._events.append(
            AvailabilityAnswered(
                job_id=resp.job_id,
                available=resp.available and not error,
                terminate=resp.terminate,
                supports_resume=resp.supports_resume,
                participant_identity=resp.participant_identity,
                participant_name=resp.participant_name,
                participant_metadata=resp.participant_metadata,
                participant_attributes=attributes,
                error=error,
            )
        )

    def _on_update_worker(self, upd: agent_pb.UpdateWorkerStatus) -> None:
        status: int | None = None
        if upd.HasField("status"):
            if upd.status in _WORKER_STATUSES:
                status = int(upd.status)
            else:
                self._warn(f"ignored unknown worker status {upd.status}")
        self._events.append(
            StatusUpdated(
                status=status,
                load=_clamp_load(upd.load),
                job_count=max(0, upd.job_count),
                draining=bool(getattr(upd, "draining", False)),
            )
        )

    def _on_update_job(self, upd: agent_pb.UpdateJobStatus) -> None:
        if upd.status not in _JOB_STATUSES:
            self._warn(f"ignored unknown job status {upd.status} for job {upd.job_id[:64]!r}")
            return
        self._events.append(JobStatusUpdated(upd.job_id, int(upd.status), upd.error[:1024]))

    def _on_ping(self, ping: agent_pb.WorkerPing) -> None:
        # Go answers with the worker's timestamp and its own clock in ms; the worker does not
        # read it, so the echo is enough and keeps this module clock-free.
        self._send(
            agent_pb.ServerMessage(
                pong=agent_pb.WorkerPong(last_timestamp=ping.timestamp, timestamp=ping.timestamp)
            )
        )
        self._events.append(PingReceived(ping.timestamp))

    def _on_migrate_job(self, req: agent_pb.MigrateJobRequest) -> None:
        self._events.append(MigrateJob(tuple(req.job_ids)))

    def _on_simulate_job(self, req: agent_pb.SimulateJobRequest) -> None:
        participant = None
        if req.HasField("participant"):
            participant = models.ParticipantInfo()
            participant.CopyFrom(req.participant)
        room = models.Room()
        room.CopyFrom(req.room)
        self._events.append(SimulateJob(int(req.type), room, participant))

    # ------------------------------------------------------------------ output

    def _send(self, msg: agent_pb.ServerMessage) -> None:
        if not self.closed:
            self._out.append(msg.SerializeToString())

    def _require_registered(self, what: str) -> None:
        if not self.registered:
            raise RuntimeError(f"cannot send {what}: connection is {self.state.value}")

    def send_availability_request(self, job: agent_pb.Job, *, resuming: bool = False) -> None:
        """Offer ``job``; the answer arrives as :class:`AvailabilityAnswered`."""
        self._require_registered("AvailabilityRequest")
        self.offered.add(job.id)
        self._send(
            agent_pb.ServerMessage(
                availability=agent_pb.AvailabilityRequest(job=job, resuming=resuming)
            )
        )

    def withdraw(self, job_id: str) -> None:
        """Forget an offer (timed out): a late answer is then reported as non-fatal and ignored."""
        self.offered.discard(job_id)

    def send_assignment(self, job: agent_pb.Job, token: str, url: str | None = None) -> None:
        """``JobAssignment``: the worker joins the room with ``token`` (at ``url`` if given)."""
        self._require_registered("JobAssignment")
        assignment = agent_pb.JobAssignment(job=job, token=token)
        if url:
            assignment.url = url
        self._send(agent_pb.ServerMessage(assignment=assignment))

    def send_termination(self, job_id: str) -> None:
        """``JobTermination``: the worker shuts that job's process down."""
        self._require_registered("JobTermination")
        self._send(agent_pb.ServerMessage(termination=agent_pb.JobTermination(job_id=job_id)))

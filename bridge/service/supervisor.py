"""Starts and watches bridge worker processes; routes their INVITE questions to the app.

Each worker gets its own SIP port and RTP range (the PyPI pjsua2 wheel caps a process at 4 calls,
so capacity scales with processes) and a Unix socketpair for the JSON-lines control protocol
(:mod:`bridge.control`), passed as ``--control-fd``. A worker that exits is restarted with exponential
backoff (reset after it has run for ``stable_after`` seconds).
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import structlog

import bridge.control as control
from roomline.process import Backoff, ProcessSupervisor, describe_exit

log = structlog.get_logger(__name__)

DecideInvite = Callable[
    [control.InviteRequest], control.InviteResult | Awaitable[control.InviteResult]
]
CheckPin = Callable[[control.PinEntered], control.PinResult | Awaitable[control.PinResult]]
OnCallState = Callable[["WorkerHandle", control.CallState], None]
#: A worker died carrying these calls (SIP Call-ID → last state).
OnWorkerLost = Callable[["WorkerHandle", dict[str, str]], None]
#: Receives outbound-call reports (:class:`~bridge.control.DialProgress`,
#: :class:`~bridge.control.TransferResult`); see bridge/service/outbound.py.
OnOutbound = Callable[["WorkerHandle", control.Message], None]


@dataclass(frozen=True)
class WorkerSpec:
    """Where one worker listens, and its conference clock.

    ``bridge_rate`` is passed to the worker as ``--bridge-rate``: 16000 (G.722 offered first,
    G.711 resampled) or 8000 (G.711 only). The front routes by it (bridge/service/front.py) and
    :meth:`WorkerSupervisor.pick_worker` prefers 16 kHz workers for outbound calls.
    """

    sip_port: int
    rtp_start: int
    rtp_end: int
    sip_host: str = "0.0.0.0"
    public_ip: str = ""
    extra_args: tuple[str, ...] = ()
    bridge_rate: int = control.BRIDGE_RATE_WIDEBAND

    def __post_init__(self) -> None:
        if self.bridge_rate not in (control.BRIDGE_RATE_WIDEBAND, control.BRIDGE_RATE_NARROWBAND):
            raise ValueError(f"bridge_rate must be 16000 or 8000, got {self.bridge_rate!r}")
        if "--bridge-rate" in self.extra_args:
            raise ValueError("the bridge rate goes in bridge_rate, not in extra_args")

    @property
    def wideband(self) -> bool:
        """True for a 16 kHz worker (offers G.722)."""
        return self.bridge_rate == control.BRIDGE_RATE_WIDEBAND


#: A call's state in :attr:`WorkerHandle.calls` between its INVITE and the supervisor's decision.
DECIDING = "deciding"


@dataclass
class WorkerHandle:
    """Live view of one worker for /metrics and routing."""

    spec: WorkerSpec
    pid: int = 0
    max_calls: int = 0
    ready: bool = False
    restarts: int = 0
    #: Deaths while serving (signal, error exit, or calls dropped), not planned stops.
    crashes: int = 0
    calls: dict[str, str] = field(default_factory=dict)  # SIP Call-ID → state
    started_at: float = 0.0
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None

    @property
    def bridge_rate(self) -> int:
        """The worker's conference clock (Hz): 16000 or 8000."""
        return self.spec.bridge_rate

    @property
    def active_calls(self) -> int:
        """Calls holding one of the worker's slots: being decided, ringing or active."""
        return sum(1 for s in self.calls.values() if s in (DECIDING, "ringing", "active"))

    def send(self, msg: control.Message) -> None:
        """Write a control message to this worker if its channel is up."""
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(control.encode(msg))


def pools(workers: Iterable[WorkerHandle]) -> str:
    """``"4 at 16 kHz, 4 at 8 kHz"``: how many of ``workers`` run each bridge clock."""
    rates: dict[int, int] = {}
    for w in workers:
        rates[w.bridge_rate] = rates.get(w.bridge_rate, 0) + 1
    parts = [f"{rates[r]} at {r // 1000} kHz" for r in sorted(rates, reverse=True)]
    return ", ".join(parts) or "none"


class WorkerSupervisor:
    """Runs one worker per :class:`WorkerSpec`; ``decide_invite`` answers every INVITE.

    ``check_pin`` answers every :class:`~bridge.control.PinEntered` (PIN dispatch rules); without
    it a PIN entry is answered 503.
    """

    def __init__(
        self,
        specs: list[WorkerSpec],
        decide_invite: DecideInvite,
        on_call_state: OnCallState | None = None,
        python: str = sys.executable,
        check_pin: CheckPin | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        on_worker_lost: OnWorkerLost | None = None,
    ) -> None:
        self.workers = [WorkerHandle(s) for s in specs]
        self._on_worker_lost = on_worker_lost
        self._decide = decide_invite
        self._on_call_state = on_call_state
        self._check_pin = check_pin
        self._procs = ProcessSupervisor(
            "bridge.worker",
            python=python,
            backoff=Backoff(backoff_initial, backoff_max, stable_after),
        )
        self._tasks: list[asyncio.Task[None]] = []
        #: Set by :class:`bridge.service.outbound.OutboundCalls` (outbound calls, transfers).
        self.on_outbound: OnOutbound | None = None

    async def start(self) -> None:
        """Start every worker (each is restarted with backoff whenever it exits)."""
        for w in self.workers:
            self._tasks.append(asyncio.get_running_loop().create_task(self._keep_running(w)))

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every worker has reported ``ready``."""
        await asyncio.wait_for(
            asyncio.gather(*(w.ready_event.wait() for w in self.workers)), timeout
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask every worker to shut down, kill those that do not within ``timeout``."""
        self._procs.stopping = True
        for w in self.workers:
            w.send(control.Shutdown())
        # The worker treats SIGTERM like Shutdown (BYE to every call); SIGKILL after ``timeout``.
        await asyncio.gather(
            *(self._procs.stop(w.proc, timeout) for w in self.workers if w.proc is not None)
        )
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._procs.close()

    def pick_worker(self) -> WorkerHandle | None:
        """The worker for an outbound call, or None if every ready worker is full.

        A ready 16 kHz worker with a free slot first (its offer carries G.722, so a wideband
        callee stays wideband), else an 8 kHz one; within a pool the one with the most free slots.
        """
        free = [w for w in self.workers if w.ready and w.active_calls < w.max_calls]
        return max(free, key=lambda w: (w.bridge_rate, w.max_calls - w.active_calls), default=None)

    def metrics(self) -> dict[str, int]:
        return {
            "bridge_workers": len(self.workers),
            "bridge_workers_ready": sum(w.ready for w in self.workers),
            "bridge_workers_wideband": sum(w.spec.wideband for w in self.workers),
            "bridge_max_calls": sum(w.max_calls for w in self.workers if w.ready),
            "bridge_active_calls": sum(w.active_calls for w in self.workers),
            "bridge_worker_restarts": sum(w.restarts for w in self.workers),
        }

    # --- internals ----------------------------------------------------------------------------
    async def _keep_running(self, w: WorkerHandle) -> None:
        def restarting(_delay: float) -> None:
            w.restarts += 1

        await self._procs.keep_running(
            lambda: self._run_once(w), on_restart=restarting, sip_port=w.spec.sip_port
        )

    async def _run_once(self, w: WorkerHandle) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        s = w.spec
        args = [
            "--sip-port",
            str(s.sip_port),
            "--sip-host",
            s.sip_host,
            "--rtp-start",
            str(s.rtp_start),
            "--rtp-end",
            str(s.rtp_end),
            "--control-fd",
            str(child.fileno()),
            "--bridge-rate",
            str(s.bridge_rate),
            *(["--public-ip", s.public_ip] if s.public_ip else []),
            *s.extra_args,
        ]
        try:
            proc = await self._procs.spawn("bridge.worker", args, pass_fds=(child.fileno(),))
        finally:
            child.close()
        w.proc, w.pid, w.started_at = proc, proc.pid, time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        w.writer = writer
        reader_task = asyncio.get_running_loop().create_task(self._read(w, reader))
        try:
            code = await self._procs.wait(proc, sip_port=s.sip_port)
            self._account_exit(w, code)
        finally:
            w.ready = False
            w.ready_event.clear()
            w.calls.clear()
            writer.close()
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)

    def _account_exit(self, w: WorkerHandle, code: int) -> None:
        """A worker that dies (signal, non-zero exit, or any exit while it carried calls and the
        appliance is not stopping) is a crash: count it, name the calls it took with it, and hand
        them to ``on_worker_lost`` so the control plane can end them cleanly."""
        if self._procs.stopping or (code == 0 and not w.calls):
            return
        lost = dict(w.calls)
        w.crashes += 1
        log.error(
            "bridge worker died",
            sip_port=w.spec.sip_port,
            pid=w.pid,
            status=describe_exit(code),
            calls_lost=len(lost),
            calls=", ".join(f"{cid} ({state})" for cid, state in lost.items()) or "none",
        )
        if self._on_worker_lost is not None:
            try:
                self._on_worker_lost(w, lost)
            except Exception:
                log.exception("on_worker_lost failed", sip_port=w.spec.sip_port)

    async def _read(self, w: WorkerHandle, reader: asyncio.StreamReader) -> None:
        async for msg in control.messages(reader):
            if isinstance(msg, control.Ready):
                w.max_calls, w.ready = msg.max_calls, True
                w.ready_event.set()
            elif isinstance(msg, control.InviteRequest):
                w.calls[msg.call_id] = DECIDING
                asyncio.get_running_loop().create_task(self._answer(w, msg))
            elif isinstance(msg, control.PinEntered):
                asyncio.get_running_loop().create_task(self._answer_pin(w, msg))
            elif isinstance(msg, control.CallState):
                if msg.state in ("hangup", "rejected"):
                    w.calls.pop(msg.call_id, None)
                else:
                    w.calls[msg.call_id] = msg.state
                if self._on_call_state is not None:
                    self._on_call_state(w, msg)
            elif isinstance(msg, control.DialProgress | control.TransferResult):
                if self.on_outbound is not None:
                    self.on_outbound(w, msg)

    async def _answer(self, w: WorkerHandle, req: control.InviteRequest) -> None:
        try:
            res = self._decide(req)
            if inspect.isawaitable(res):
                res = await res
            assert isinstance(res, control.InviteResult)
            if res.id != req.id:
                res = control.InviteResult(**{**res.__dict__, "id": req.id})
        except Exception:  # the app's callback failed: the caller gets 503, the worker lives on
            log.exception("decide_invite failed", call_id=req.call_id)
            res = control.InviteResult(id=req.id, status=503, headers={"Retry-After": "5"})
        # Only a call still being decided is tracked on: under load the caller (or the front, after
        # its timer) may have cancelled while the decision was awaited, and the worker's
        # ``hangup`` has already removed it; counting it again would hold the slot for ever.
        if w.calls.get(req.call_id) == DECIDING:
            if res.status == 200:
                w.calls[req.call_id] = "ringing"
            else:
                del w.calls[req.call_id]
        w.send(res)

    async def _answer_pin(self, w: WorkerHandle, req: control.PinEntered) -> None:
        try:
            if self._check_pin is None:
                raise RuntimeError("no check_pin callback")
            res = self._check_pin(req)
            if inspect.isawaitable(res):
                res = await res
            assert isinstance(res, control.PinResult)
            if res.id != req.id or res.call_id != req.call_id:
                res = control.PinResult(**{**res.__dict__, "id": req.id, "call_id": req.call_id})
        except Exception:  # as for INVITEs: the caller is hung up, the worker lives on
            log.exception("check_pin failed", call_id=req.call_id)
            res = control.PinResult(id=req.id, call_id=req.call_id, status=503)
        w.send(res)

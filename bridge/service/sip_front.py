"""The appliance's SIP front: :class:`KamailioFront` wired to the supervised bridge workers.

* Files go to ``<data_dir>/sip-front`` (``kamailio.cfg``, ``dispatcher.list``, ``tls.cfg``, the
  ``kamcmd`` socket ``kamailio_ctl``).
* :meth:`SIPFront.preflight` runs before any worker starts: a missing ``kamailio`` binary (or TLS
  module) or a config Kamailio refuses stops ``roomline serve`` with a message naming the Debian
  package (:class:`SIPFrontError`).
* Worker state is pushed into Kamailio's dispatcher at once (``kamcmd dispatcher.set_state``): a
  worker that exits is marked down before the OPTIONS probes would notice, and marked up again as
  soon as its restart reports ready. The probes (every ``ping_interval`` s) remain the safety net.
* Each worker's ``maxload`` is its detected call cap (``WorkerHandle.max_calls``); the list starts
  at 4 (the wheel's ``PJSUA_MAX_CALLS``) and is re-rendered, with a Kamailio restart, only if a
  worker reports a different cap.
* A worker that dies takes its calls with it; :meth:`SIPFront.end_calls_of` ends them for the
  callers too: the front BYEs every confirmed dialog that worker carried (``dlg.end_dlg``, see
  :mod:`bridge.service.front_dialogs`), logs each and counts them
  (``roomline_sip_calls_ended_by_worker_loss_total``).
* Kamailio's log lines go to the ``bridge.front`` logger and count front rejections by reason
  (``roomline_sip_front_rejections_total``): 486 all full, 503 no worker, blocked user agent,
  flood ban, malformed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from bridge.service import front as front_mod
from bridge.service.front import (
    FrontConfigError,
    FrontError,
    KamailioFront,
    front_options_from_sip,
)
from bridge.service.front_dialogs import (
    FrontDialog,
    FrontRPCError,
    end_worker_dialogs_waiting,
    find_kamcmd,
)
from bridge.service.kamailio_cfg import dispatcher_set
from bridge.service.supervisor import WorkerHandle, WorkerSupervisor, pools
from roomline.config import CALLS_PER_WORKER, SIPConfig
from roomline.errors import RoomlineError
from sfu.service.metrics import Family

__all__ = ["REJECTION_PATTERNS", "SIPFront", "SIPFrontError"]

log = logging.getLogger("bridge.front")

#: Substrings of the generated script's xlog lines → rejection reason label.
REJECTION_PATTERNS: tuple[tuple[str, str], ...] = (
    ("front: all workers full", "all_busy_486"),
    ("front: no worker up", "no_worker_503"),
    ("front: blocked user-agent", "blocked_user_agent"),
    ("front: flood from", "flood_ban"),
    ("front: malformed request", "malformed"),
    ("front: dropped ", "oversized"),
)

#: How often worker state is compared with what Kamailio was told.
WATCH_INTERVAL = 0.2
#: How long a dead worker's not yet confirmed dialogs are watched for their ACK, and how often.
EARLY_WAIT = 5.0
EARLY_POLL = 0.5


class SIPFrontError(RoomlineError):
    """The SIP front cannot run (Kamailio missing, or it refused its config)."""


class SIPFront:
    """Kamailio in front of ``supervisor``'s workers, configured from ``sip``."""

    def __init__(
        self,
        sip: SIPConfig,
        supervisor: WorkerSupervisor,
        data_dir: str,
        *,
        binary: str = "kamailio",
    ) -> None:
        self.sip = sip
        self.supervisor = supervisor
        self.run_dir = Path(data_dir) / "sip-front"
        self.maxloads = [CALLS_PER_WORKER] * len(supervisor.workers)
        self.front = KamailioFront(
            front_options_from_sip(sip, self.maxloads),
            self.run_dir,
            binary=binary,
            on_line=self._on_line,
        )
        self.rejections: dict[str, int] = {reason: 0 for _, reason in REJECTION_PATTERNS}
        self._told: dict[int, bool] = {}  # sip_port → state last pushed to Kamailio
        self._watch: asyncio.Task[None] | None = None
        self._kamcmd = find_kamcmd()
        #: Calls the front ended with a BYE because their worker died, by worker SIP port.
        self.ended_by_worker_loss: dict[int, int] = {}
        self._endings: set[asyncio.Task[int]] = set()

    # --- lifecycle -----------------------------------------------------------------------------
    async def preflight(self) -> None:
        """Binary, modules and ``kamailio -c`` on the rendered files; :class:`SIPFrontError`."""
        try:
            await self.front.check()
        except (FrontError, FrontConfigError) as exc:
            raise SIPFrontError(f"SIP front: {exc}") from None

    async def start(self) -> None:
        try:
            await self.front.start()
            await self.front.wait_ready()
        except (FrontError, FrontConfigError) as exc:
            await self.front.stop()
            raise SIPFrontError(f"SIP front: {exc}") from None
        log.info(
            "SIP front listening on %s:%d (udp, tcp%s)%s for %d workers (%s)",
            self.front.options.bind_address,
            self.sip.port,
            f", tls {self.sip.tls_port}" if self.front.options.tls_enabled else "",
            f" advertising {self.front.options.advertise}" if self.front.options.advertise else "",
            len(self.supervisor.workers),
            pools(self.supervisor.workers),
        )
        self._watch = asyncio.get_running_loop().create_task(self._watch_workers())

    async def stop(self) -> None:
        for t in list(self._endings):
            t.cancel()
        await asyncio.gather(*self._endings, return_exceptions=True)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await self.front.stop()

    # --- a worker died ---------------------------------------------------------------------------
    def worker_lost(self, worker: WorkerHandle, calls: dict[str, str]) -> None:
        """Called when ``worker`` died carrying ``calls``: end its dialogs in the background."""
        task = asyncio.get_running_loop().create_task(self.end_calls_of(worker, calls))
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def end_calls_of(self, worker: WorkerHandle, calls: dict[str, str] | None = None) -> int:
        """BYE the callers of every confirmed dialog ``worker`` carried; returns how many.

        ``calls`` (the supervisor's view) only serves the log: the dialogs come from Kamailio
        itself, so calls the worker had not reported yet, and outbound calls, are ended too.
        Dialogs still waiting for their ACK are tried again for :data:`EARLY_WAIT` seconds.
        """
        port = worker.spec.sip_port
        if self._kamcmd is None:
            log.warning("kamcmd not found: calls of the dead worker on port %d not ended", port)
            return 0
        uri = f"sip:127.0.0.1:{port}"
        ended: list[FrontDialog] = []  # also those ended before an RPC failure

        def count(batch: list[FrontDialog]) -> None:
            ended.extend(batch)
            for d in batch:
                log.warning(
                    "sip call ended by the front (BYE to the far end): its bridge worker died "
                    "call_id=%s sip_port=%d",
                    d.call_id,
                    port,
                )
            self.ended_by_worker_loss[port] = self.ended_by_worker_loss.get(port, 0) + len(batch)

        early: list[FrontDialog] = []
        try:
            # A call answered just before the death is confirmed once its caller's ACK passes
            # the front: it is looked at again for EARLY_WAIT seconds.
            _, early = await end_worker_dialogs_waiting(
                self._kamcmd,
                self.front.ctl_socket,
                uri,
                wait=EARLY_WAIT,
                poll=EARLY_POLL,
                on_ended=count,
            )
        except FrontRPCError as exc:
            log.error("cannot end the calls of the dead worker on port %d: %s", port, exc)
        for d in early:
            log.warning(
                "sip call of the dead worker not confirmed, left to the front's timers "
                "call_id=%s sip_port=%d state=%d",
                d.call_id,
                port,
                d.state,
            )
        log.info(
            "front ended %d of the dead worker's calls on port %d (supervisor had %d)",
            len(ended),
            port,
            len(calls or {}),
        )
        return len(ended)

    # --- health and metrics --------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.front.pid is not None

    def health(self) -> tuple[str, bool, str]:
        pid = self.front.pid
        detail = f"kamailio pid {pid} on port {self.sip.port}" if pid else "kamailio not running"
        if self.front.restarts:
            detail += f", {self.front.restarts} restarts"
        return "sip-front", pid is not None, detail

    def metrics(self) -> Iterable[Family]:
        yield ("roomline_sip_front_up", "1 while Kamailio runs.", "gauge", [({}, int(self.up))])
        yield (
            "roomline_sip_front_restarts_total",
            "Kamailio restarts after it exited.",
            "counter",
            [({}, self.front.restarts)],
        )
        yield (
            "roomline_sip_front_rejections_total",
            "Requests the front answered or dropped itself, by reason (from its log lines).",
            "counter",
            [({"reason": r}, n) for r, n in sorted(self.rejections.items())],
        )
        yield (
            "roomline_sip_calls_ended_by_worker_loss_total",
            "Calls the front ended with a BYE to the caller because their bridge worker died.",
            "counter",
            [
                (
                    {"sip_port": str(w.spec.sip_port)},
                    self.ended_by_worker_loss.get(w.spec.sip_port, 0),
                )
                for w in self.supervisor.workers
            ],
        )
        yield (
            "roomline_sip_worker_dispatch_up",
            "1 while the front may send calls to the worker.",
            "gauge",
            [
                ({"sip_port": str(w.spec.sip_port)}, int(self._told.get(w.spec.sip_port, False)))
                for w in self.supervisor.workers
            ],
        )

    # --- internals -----------------------------------------------------------------------------
    def _on_line(self, line: str) -> None:
        for needle, reason in REJECTION_PATTERNS:
            if needle in line:
                self.rejections[reason] += 1
                break
        if self.front._stopping:
            # Kamailio reports its children's exits at ALERT level while it shuts down.
            log.info("kamailio: %s", line)
            return
        front_mod._log_line(line)

    async def _watch_workers(self) -> None:
        """Push each worker's up/down state (and a changed call cap) into Kamailio."""
        pid = None
        while True:
            if self.front.pid != pid:  # a (re)started Kamailio loaded the list: tell it again
                pid = self.front.pid
                self._told.clear()
            if pid is not None:
                await self._sync_caps()
                for w in self.supervisor.workers:
                    ready = w.ready
                    if self._told.get(w.spec.sip_port) is not ready:
                        if await self._set_state(w, ready):
                            self._told[w.spec.sip_port] = ready
            await asyncio.sleep(WATCH_INTERVAL)

    async def _sync_caps(self) -> None:
        workers = self.supervisor.workers
        caps = [w.max_calls if w.max_calls > 0 else self.maxloads[i] for i, w in enumerate(workers)]
        if caps == self.maxloads:
            return
        log.info(
            "worker call caps %s differ from the dispatcher's %s: reloading", caps, self.maxloads
        )
        self.maxloads = caps
        self.front.options = front_options_from_sip(self.sip, caps)
        try:
            await self.front.reload_config()
        except (FrontError, FrontConfigError) as exc:
            log.error("cannot reload the SIP front: %s", exc)

    async def _set_state(self, w: WorkerHandle, up: bool) -> bool:
        if self._kamcmd is None:
            return True  # the OPTIONS probes do it, only slower
        uri = f"sip:127.0.0.1:{w.spec.sip_port}"
        state = "a" if up else "ip"
        proc = await asyncio.create_subprocess_exec(
            self._kamcmd,
            "-s",
            f"unix:{self.front.ctl_socket}",
            "dispatcher.set_state",
            state,
            str(dispatcher_set(w.spec.wideband)),
            uri,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return False
        if proc.returncode != 0:
            if os.path.exists(self.front.ctl_socket):
                log.debug("kamcmd dispatcher.set_state %s %s: %s", state, uri, err.decode()[:200])
            return False
        log.info("worker %s marked %s in the SIP front", uri, "up" if up else "down")
        return True

"""How the SIP bridge plugs into the appliance: the SIP Twirp service and the bridge workers.

The store of trunks and dispatch rules and the INVITE decisions live in the main process (they are
control plane); workers only carry signalling and media and ask the supervisor what to do with each
INVITE (docs/bridge.md). An accepted caller joins its room over the local participant channel.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

import bridge.control as control
from bridge.service.decide import DecideOptions, Decision, InviteDecider
from bridge.service.outbound import OutboundCalls
from bridge.service.sip_front import SIPFront
from bridge.service.sip_service import SERVICE, SIPService
from bridge.service.store import SIPStore
from bridge.service.supervisor import WorkerHandle, WorkerSupervisor, pools
from bridge.service.trunks import InboundCall
from bridge.service.workers import plan_workers
from roomline.lifecycle import Service
from sfu.service.metrics import Family

if TYPE_CHECKING:
    from sfu.server import SFUServer

log = structlog.get_logger(__name__)


#: The fields an INVITE report and the decider's call description share (all but the decider's
#: own ``lk_call_id``); a unit test checks that the control message has every one of them.
CALL_FIELDS = tuple(f.name for f in dataclasses.fields(InboundCall) if f.name != "lk_call_id")


def inbound_call(req: control.InviteRequest) -> InboundCall:
    """The decider's view of an INVITE a worker reported."""
    return InboundCall(**{name: getattr(req, name) for name in CALL_FIELDS})


def _source(call: InboundCall) -> str:
    """The caller's true ``ip:port;transport`` (behind the front: from X-Roomline-Source)."""
    host = f"[{call.src_ip}]" if ":" in call.src_ip else call.src_ip
    return f"{host}:{call.src_port};{call.transport or 'udp'}"


class AgentStarter(Protocol):
    """What the bridge needs from the agents part: start a rule's agents in an existing room."""

    def ensure(self, room: str, agent_names: list[str]) -> None: ...


class SIPBridge:
    """Supervised bridge workers plus the INVITE decisions they ask for."""

    def __init__(
        self,
        server: SFUServer,
        store: SIPStore,
        local_socket: str,
        agent_starter: AgentStarter | None = None,
    ) -> None:
        self.node = server.node
        self.agent_starter = agent_starter
        cfg = server.cfg
        self.cfg = cfg
        self.decider = InviteDecider(
            store,
            cfg.keys,
            DecideOptions(
                blocked_user_agents=tuple(cfg.sip.blocked_user_agents),
                hide_inbound_port=cfg.sip.hide_inbound_port,
                max_calls_per_trunk=cfg.sip.max_calls_per_trunk,
            ),
        )
        self.socket = local_socket
        self.supervisor = WorkerSupervisor(
            plan_workers(cfg.sip),
            self.decide,
            self.on_call_state,
            check_pin=self.check_pin,
            on_worker_lost=self.on_worker_lost,
        )
        #: The Kamailio front (None in the older direct mode, ``sip.workers`` as a list).
        self.front = (
            SIPFront(cfg.sip, self.supervisor, cfg.server.data_dir)
            if cfg.sip.front_enabled
            else None
        )
        self.rejected: dict[int, int] = {}
        #: Rejections the workers decided themselves, by cause (control.WORKER_REJECT_CAUSES).
        self.worker_rejections: dict[str, int] = {}
        # Calls answered for PIN entry, by SIP Call-ID: check_pin re-evaluates the same INVITE.
        self.pin_calls: dict[str, InboundCall] = {}

    def decide(self, req: control.InviteRequest) -> control.InviteResult:
        """The decision for a worker's INVITE: reject, accept into a room, or collect a PIN first."""
        call = inbound_call(req)
        decision = self.decider.decide(call, time.time())
        if decision.accepted and decision.pin_required:
            # Answer and let the worker collect the PIN; the room comes with check_pin.
            self.pin_calls[call.call_id] = call
            log.info("sip call needs a PIN", call_id=call.call_id, rule=decision.pin_required)
            return control.InviteResult(
                id=req.id,
                status=200,
                collect_pin=True,
                max_call_duration=decision.max_call_duration or self.cfg.sip.max_call_duration,
                media_timeout=self.cfg.sip.media_timeout,
                **self._answer_headers(decision),
            )
        if not decision.accepted:
            status = self._rejected(
                "sip call rejected",
                call,
                decision,
                dropped=decision.drop,
                src_ip=call.src_ip,
                src=_source(call),
            )
            return control.InviteResult(
                id=req.id,
                status=status,
                reason=decision.reason,
                headers=dict(decision.extra_headers),
                drop=decision.drop,
            )
        self._prepare_room(decision)
        log.info(
            "sip call accepted",
            call_id=call.call_id,
            room=decision.room_name,
            identity=decision.participant_identity,
            trunk=decision.trunk_id,
            rule=decision.rule_id,
            src=_source(call),
        )
        return control.InviteResult(
            id=req.id,
            status=200,
            ringing=self.cfg.sip.answer == "wait_for_audio",
            **self._answer_headers(decision),
            **self._join_fields(decision),
        )

    def _rejected(self, event: str, call: InboundCall, decision: Decision, **fields: Any) -> int:
        """Count and log a rejection; returns the SIP status the worker may send for it."""
        self.rejected[decision.status] = self.rejected.get(decision.status, 0) + 1
        log.info(
            event,
            call_id=call.call_id,
            status=decision.status,
            reason=decision.reason,
            **fields,
        )
        return decision.status if decision.status in control.INVITE_STATUSES else 403

    @staticmethod
    def _answer_headers(decision: Decision) -> dict[str, Any]:
        """The trunk's additions to the 200 OK (fixed headers, attributes mapped to headers) and
        its SRTP policy, which the worker applies to the SDP offer before answering."""
        return {
            "headers": dict(decision.headers),
            "attributes_to_headers": dict(decision.attributes_to_headers),
            "media_encryption": decision.media_encryption,
        }

    def _join_fields(self, decision: Decision) -> dict[str, Any]:
        """What a worker needs to join an accepted caller to its room."""
        return {
            "token": decision.token,
            "room": decision.room_name,
            "identity": decision.participant_identity,
            "attributes": dict(decision.attributes),
            "socket": self.socket,
            "ringing_timeout": decision.ringing_timeout or self.cfg.sip.ringing_timeout,
            "max_call_duration": decision.max_call_duration or self.cfg.sip.max_call_duration,
            "media_timeout": self.cfg.sip.media_timeout,
        }

    def check_pin(self, req: control.PinEntered) -> control.PinResult:
        """The caller entered ``req.digits``: join the rule's room, or 403 "Wrong PIN"."""
        call = self.pin_calls.pop(req.call_id, None)
        if call is None:
            return control.PinResult(
                id=req.id, call_id=req.call_id, status=403, reason="No PIN expected"
            )
        decision = self.decider.check_pin(call, req.digits, time.time())
        if not decision.accepted:
            self.decider.call_ended(call.call_id)
            # Never log the digits: they are the room's secret.
            status = self._rejected("sip call PIN rejected", call, decision)
            return control.PinResult(
                id=req.id, call_id=req.call_id, status=status, reason=decision.reason
            )
        self._prepare_room(decision)
        log.info(
            "sip call accepted after PIN",
            call_id=call.call_id,
            room=decision.room_name,
            identity=decision.participant_identity,
            rule=decision.rule_id,
        )
        return control.PinResult(
            id=req.id, call_id=req.call_id, status=200, **self._join_fields(decision)
        )

    def _prepare_room(self, decision: Decision) -> None:
        """Create the rule's room with its metadata and agents before the caller joins it."""
        node = self.node
        if decision.room_name not in node.rooms.rooms:
            node.create_room(
                decision.room_name,
                metadata=decision.room_metadata,
                agents=list(decision.agents),
            )
        elif decision.agents and self.agent_starter is not None:
            # A direct rule's room may already exist (someone joined first): its agents still
            # belong to the call.
            self.agent_starter.ensure(decision.room_name, list(decision.agents))

    def on_call_state(self, worker: WorkerHandle, state: control.CallState) -> None:
        """A worker reported a call state; ended calls free their slot in the decider."""
        log.info(
            "sip call state",
            call_id=state.call_id,
            state=state.state,
            reason=state.reason,
            room=state.room,
            worker_pid=worker.pid,
        )
        if state.state == "rejected" and state.cause:
            # The worker refused the call itself (SRTP policy, ringing timeout, no decision...):
            # the supervisor's decision did not count it.
            self.rejected[state.status] = self.rejected.get(state.status, 0) + 1
            self.worker_rejections[state.cause] = self.worker_rejections.get(state.cause, 0) + 1
        if state.call_id and state.state in ("hangup", "rejected"):
            self.pin_calls.pop(state.call_id, None)
            self.decider.call_ended(state.call_id)

    def on_worker_lost(self, worker: WorkerHandle, calls: dict[str, str]) -> None:
        """A worker died with ``calls``: free their trunk slots and PIN state. Their participants
        leave the room when the worker's local-channel connections drop (reason
        SIP_TRUNK_FAILURE, see sfu/local/server.py); behind the front the callers get a BYE
        (:meth:`SIPFront.end_calls_of`)."""
        for call_id in calls:
            self.pin_calls.pop(call_id, None)
            self.decider.call_ended(call_id)
        if self.front is not None:
            # The callers too: the front BYEs every dialog that worker carried.
            self.front.worker_lost(worker, calls)

    def health(self) -> tuple[str, bool, str]:
        """/healthz line: healthy while at least one worker takes calls."""
        workers = self.supervisor.workers
        ready = [w for w in workers if w.ready]
        cap = sum(w.max_calls for w in ready)
        active = sum(w.active_calls for w in workers)
        detail = f"{len(ready)}/{len(workers)} ready ({pools(ready)}), {active}/{cap} calls"
        return "sip-workers", bool(ready), detail

    def metrics(self) -> Iterable[Family]:
        """Prometheus families for ``/metrics``: worker caps, active calls, restarts, rejections."""
        workers = self.supervisor.workers
        yield (
            "roomline_sip_worker_max_calls",
            "Concurrent call cap of each bridge worker (detected from the installed pjsua2).",
            "gauge",
            [({"sip_port": str(w.spec.sip_port)}, w.max_calls) for w in workers],
        )
        yield (
            "roomline_sip_worker_bridge_rate_hz",
            "Conference clock of each bridge worker: 16000 (G.722 first) or 8000 (G.711 only).",
            "gauge",
            [({"sip_port": str(w.spec.sip_port)}, w.bridge_rate) for w in workers],
        )
        yield (
            "roomline_sip_active_calls",
            "Calls ringing or active, by worker.",
            "gauge",
            [({"sip_port": str(w.spec.sip_port)}, w.active_calls) for w in workers],
        )
        yield (
            "roomline_sip_worker_restarts_total",
            "Bridge worker restarts after a crash.",
            "counter",
            [({"sip_port": str(w.spec.sip_port)}, w.restarts) for w in workers],
        )
        yield (
            "roomline_sip_worker_crashes_total",
            "Bridge workers that died while serving (signal, error exit or calls dropped).",
            "counter",
            [({"sip_port": str(w.spec.sip_port)}, w.crashes) for w in workers],
        )
        yield (
            "roomline_sip_rejected_calls_total",
            "INVITEs rejected (or dropped) by the supervisor's decision or by a worker, by SIP status.",
            "counter",
            [({"status": str(k)}, v) for k, v in sorted(self.rejected.items())],
        )
        yield (
            "roomline_sip_worker_rejections_total",
            "INVITEs a worker rejected itself (SRTP policy 488, ringing timeout, no decision...), "
            "by reason.",
            "counter",
            [({"reason": r}, n) for r, n in sorted(self.worker_rejections.items())],
        )


class SIPPart(Service):
    """The SIP part of the appliance: the trunk/rule store and its Twirp service, plus the bridge
    workers when ``sip.enabled``."""

    def __init__(
        self, store: SIPStore, bridge: SIPBridge | None, service: SIPService | None = None
    ) -> None:
        self.store = store
        self.bridge = bridge
        #: The ``livekit.SIP`` service (agents place calls and transfer through it).
        self.service = service

    async def start(self) -> None:
        """Start the SIP front (if configured) and the bridge workers."""
        if self.bridge is None:
            return
        front = self.bridge.front
        if front is not None:
            await front.preflight()  # before any worker: a missing kamailio stops serve here
        else:
            log.warning(
                "sip.workers is a list: direct mode without the SIP front, each worker on its "
                "own public port; write `workers: auto` (or a count) for one SIP address"
            )
        await self.bridge.supervisor.start()
        if front is not None:
            try:
                await front.start()
            except Exception:
                await self.bridge.supervisor.stop()
                raise

    async def stop(self) -> None:
        """Stop the bridge workers and close the store."""
        if self.bridge is not None:
            if self.bridge.front is not None:
                await self.bridge.front.stop()
            await self.bridge.supervisor.stop()
        self.store.close()


def front_proxy_uri(sip: Any) -> str:
    """The loose-route URI the workers send outbound requests through (the front's address as
    the loopback workers reach it)."""
    import ipaddress

    from bridge.service.workers import front_bind_address, front_internal_port

    internal = front_internal_port(sip)
    if internal:
        return f"sip:127.0.0.1:{internal};lr"
    bind = front_bind_address(sip)
    host = "127.0.0.1" if ipaddress.ip_address(bind).is_unspecified else bind
    if ":" in host:
        host = f"[{host}]"
    return f"sip:{host}:{sip.port};lr"


def tls_trunks_unavailable(front_tls: bool | None) -> str:
    """Why TLS trunks cannot be dialled ("" = they can); ``front_tls`` is None without a front."""
    if front_tls is None:
        return (
            "TLS trunks need the SIP front: the bridge workers have no TLS transport "
            "(set sip.workers to a count or auto)"
        )
    if not front_tls:
        return (
            "TLS trunks need TLS on the SIP front: set sip.tls_cert_file and sip.tls_key_file "
            "(the front opens the TLS connection to the carrier)"
        )
    return ""


def install(
    server: SFUServer, local_socket: str, agent_starter: AgentStarter | None = None
) -> SIPPart:
    """Open the SIP store, register the ``livekit.SIP`` Twirp service and build the bridge."""
    cfg = server.cfg
    os.makedirs(cfg.server.data_dir, exist_ok=True)
    store = SIPStore.open(
        cfg.server.data_dir,
        config_trunks=cfg.sip.trunks,
        config_rules=cfg.sip.dispatch_rules,
        config_outbound_trunks=cfg.sip.outbound_trunks,
    )
    service = SIPService(store)
    server.twirp.register(SERVICE, service.methods())
    bridge = SIPBridge(server, store, local_socket, agent_starter) if cfg.sip.enabled else None
    if bridge is not None:
        server.metrics.collectors.append(bridge.metrics)
        server.health_checks.append(bridge.health)
        if bridge.front is not None:
            server.metrics.collectors.append(bridge.front.metrics)
            server.health_checks.append(bridge.front.health)
        # Outbound calls and transfers (bridge/service/outbound.py); behind the front, outbound
        # INVITEs leave through it too (one SIP address for carriers).
        proxy = front_proxy_uri(cfg.sip) if bridge.front is not None else ""
        service.outbound = OutboundCalls(
            store,
            bridge.supervisor,
            server.node,
            cfg.keys,
            local_socket,
            outbound_proxy=proxy,
            tls_unavailable=tls_trunks_unavailable(
                bridge.front.front.options.tls_enabled if bridge.front is not None else None
            ),
        )
    return SIPPart(store, bridge, service)

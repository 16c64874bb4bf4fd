"""The job an agent entrypoint receives: ``async def entrypoint(ctx: JobContext)``.

Shaped after LiveKit Agents' ``JobContext``: ``ctx.room`` (a
:class:`~roomline_agents.sdk.room.Room`, not yet connected), ``await ctx.connect()``, ``ctx.job`` (who dispatched what, with which metadata),
``ctx.shutdown()`` and ``ctx.add_shutdown_callback()``. The job ends when the room disconnects (the
agent was removed, the room closed) or when ``ctx.shutdown()`` is called; returning from the
entrypoint does not end it while the room is connected, as in LiveKit Agents.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from roomline_agents.control import AGENT_STATE_ATTRIBUTE
from roomline_agents.sdk.participant import ParticipantKind, RemoteParticipant
from roomline_agents.sdk.room import Room, RoomOptions

log = logging.getLogger("roomline_agents.sdk")


class AgentState(enum.StrEnum):
    """Values of ``lk.agent.state`` (LiveKit Agents' convention)."""

    INITIALIZING = "initializing"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class AutoSubscribe(enum.StrEnum):
    """What to receive; agents on the local channel receive audio only."""

    SUBSCRIBE_ALL = "subscribe_all"
    SUBSCRIBE_NONE = "subscribe_none"
    AUDIO_ONLY = "audio_only"


@dataclass(frozen=True)
class JobInfo:
    """One dispatch of one agent to one room."""

    id: str
    dispatch_id: str
    agent_name: str
    room_name: str
    identity: str
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


class JobContext:
    """Everything an entrypoint needs for its room; see the module docstring."""

    def __init__(
        self,
        job: JobInfo,
        token: str,
        open_channel: Callable[[], Awaitable[socket.socket]],
        remove_participant: Callable[..., Awaitable[None]],
        sip_call: Callable[[str, str, float], Awaitable[Any]] | None = None,
    ) -> None:
        self.job = job
        self._sip_call = sip_call
        self.room = Room()
        self._token = token
        self._open_channel = open_channel
        self._remove_participant = remove_participant
        self._shutdown = asyncio.Event()
        self.shutdown_reason = ""
        self._callbacks: list[Callable[[], Awaitable[Any]]] = []
        self.room.on("disconnected", lambda reason: self.shutdown("room disconnected"))

    async def connect(self, auto_subscribe: AutoSubscribe = AutoSubscribe.AUDIO_ONLY) -> None:
        """Join the room as this job's AGENT participant."""
        if self.room.isconnected():
            return
        sock = await self._open_channel()
        options = RoomOptions(auto_subscribe=auto_subscribe != AutoSubscribe.SUBSCRIBE_NONE)
        await self.room._connect(sock, self._token, options)

    @property
    def agent(self) -> Any:
        """The agent's own participant (``ctx.room.local_participant``)."""
        return self.room.local_participant

    async def set_agent_state(self, state: AgentState | str) -> None:
        """Publish ``lk.agent.state`` (initializing, listening, thinking, speaking)."""
        value = state.value if isinstance(state, AgentState) else str(state)
        await self.room.local_participant.set_attributes({AGENT_STATE_ATTRIBUTE: value})

    async def wait_for_participant(
        self, identity: str | None = None, kind: int | None = None
    ) -> RemoteParticipant:
        """The first remote participant matching ``identity``/``kind`` (agents are skipped)."""

        def matches(p: RemoteParticipant) -> bool:
            if identity is not None:
                return p.identity == identity
            if kind is not None:
                return p.kind == kind
            return p.kind != ParticipantKind.PARTICIPANT_KIND_AGENT

        for p in self.room.remote_participants.values():
            if matches(p):
                return p
        fut: asyncio.Future[RemoteParticipant] = asyncio.get_running_loop().create_future()

        def on_connected(p: RemoteParticipant) -> None:
            if matches(p) and not fut.done():
                fut.set_result(p)

        self.room.on("participant_connected", on_connected)
        try:
            return await fut
        finally:
            self.room.off("participant_connected", on_connected)

    async def remove_participant(self, identity: str) -> None:
        """RoomService.RemoveParticipant in this job's room (a SIP caller gets a BYE)."""
        await self._remove_participant(identity)

    async def move_participant(self, identity: str, destination_room: str) -> None:
        """RoomService.MoveParticipant from this job's room to ``destination_room``.

        Supported for SIP callers and other local participants: the call goes on in the new room.
        """
        await self._remove_participant(identity, destination_room)

    async def create_sip_participant(self, request: Any, *, timeout: float | None = None) -> Any:
        """Place an outbound call into this job's room, like ``livekit-api``'s
        ``lk.sip.create_sip_participant(api.CreateSIPParticipantRequest(...))``.

        ``room_name`` may be left empty (this job's room); another room is refused. Returns the
        ``SIPParticipantInfo``; a failed call raises ``livekit.api.SipCallError`` (with
        ``sip_status_code``) or ``livekit.api.TwirpError``, exactly as the server API does.
        """
        from livekit.protocol import sip as sip_pb

        if timeout is None:
            ringing = request.ringing_timeout.seconds if request.HasField("ringing_timeout") else 0
            timeout = (ringing or 180) + 40.0 if request.wait_until_answered else 30.0
        return await self._sip("CreateSIPParticipant", request, sip_pb.SIPParticipantInfo, timeout)

    async def transfer_sip_participant(self, request: Any, *, timeout: float | None = None) -> Any:
        """Cold-transfer a SIP participant of this job's room (SIP REFER), like ``livekit-api``'s
        ``lk.sip.transfer_sip_participant(api.TransferSIPParticipantRequest(...))``.

        Success returns when the far end accepted and reported 200; a failure raises
        ``livekit.api.SipCallError`` and the call goes on.
        """
        from livekit.protocol import sip as sip_pb

        if timeout is None:
            ringing = request.ringing_timeout.seconds if request.HasField("ringing_timeout") else 0
            timeout = (ringing or 30) + 10.0
        return await self._sip(
            "TransferSIPParticipant", request, sip_pb.TransferSIPParticipantResponse, timeout
        )

    async def _sip(self, method: str, request: Any, response_type: Any, timeout: float) -> Any:
        from google.protobuf import json_format
        from livekit import api

        from sfu.service.twirp import TWIRP_STATUS

        if self._sip_call is None:
            raise RuntimeError("this job cannot reach the SIP service")
        res = await self._sip_call(method, json_format.MessageToJson(request), timeout)
        if not res.ok:
            err_cls = api.SipCallError if "sip_status_code" in res.meta else api.TwirpError
            code = res.code or "unknown"
            status = TWIRP_STATUS.get(code, 500)
            raise err_cls(code, res.error, status=status, metadata=dict(res.meta))
        return json_format.Parse(res.response or "{}", response_type())

    def add_shutdown_callback(self, callback: Callable[[], Awaitable[Any]]) -> None:
        self._callbacks.append(callback)

    def shutdown(self, reason: str = "") -> None:
        """End the job: shutdown callbacks run, then the agent leaves the room."""
        if not self._shutdown.is_set():
            self.shutdown_reason = reason
            self._shutdown.set()

    async def wait_for_shutdown(self) -> None:
        await self._shutdown.wait()

    @property
    def is_shutting_down(self) -> bool:
        return self._shutdown.is_set()

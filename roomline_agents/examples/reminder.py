"""``reminder``: places one outbound call from the dispatch metadata, speaks a message, hangs up.

Dispatch it into a room with ``CreateDispatch`` (agent name ``reminder``) and JSON metadata::

    {"number": "+15551234567", "message": "Your table is ready.", "trunk": "ST_..."}

``number`` and ``trunk`` (an outbound trunk id) are required; ``message`` defaults to a short
notice, and ``from`` (one of the trunk's numbers) and ``ringing_timeout`` (seconds, default 30)
are optional. The agent renders the message with espeak-ng (a tone pattern without it) while it
dials, waits for the answer (``wait_until_answered``), speaks the message into the room (the
callee hears it), then removes the callee (the bridge sends BYE) and leaves.

Attributes the agent sets on itself: ``reminder.number``, then ``reminder.status`` =
``dialing`` → ``speaking`` → ``delivered``; or ``failed:<twirp code>:<sip status>`` when the call
is not answered, ``hung-up`` when the callee hangs up mid-message, ``bad-metadata:<why>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from roomline_agents.examples import play
from roomline_agents.examples.echo import publish_voice
from roomline_agents.sdk import AgentState, JobContext, RemoteParticipant
from roomline_agents.sdk.tts import prompt

log = logging.getLogger("roomline_agents.sdk.reminder")

DEFAULT_MESSAGE = "This is a reminder from roomline."
DEFAULT_RINGING_TIMEOUT_S = 30
#: After the answer: let the callee's media settle before the first word (and its ear reach it).
SETTLE_S = 0.5
#: Silence after the message so its tail is played out before the BYE.
TAIL_S = 0.3
#: Fallback prompt (no espeak-ng): a rising three-note pattern.
FALLBACK_TONES = [523.0, 659.0, 784.0]


class BadMetadata(ValueError):
    """The dispatch metadata cannot describe a call."""


@dataclass(frozen=True)
class Reminder:
    """A parsed dispatch metadata."""

    number: str
    trunk: str
    message: str = DEFAULT_MESSAGE
    from_number: str = ""
    ringing_timeout: int = DEFAULT_RINGING_TIMEOUT_S

    @classmethod
    def parse(cls, metadata: str) -> Reminder:
        try:
            data = json.loads(metadata or "")
        except ValueError:
            raise BadMetadata("not JSON") from None
        if not isinstance(data, dict):
            raise BadMetadata("not a JSON object")
        number, trunk = data.get("number"), data.get("trunk")
        if not isinstance(number, str) or not number:
            raise BadMetadata("number missing")
        if not isinstance(trunk, str) or not trunk:
            raise BadMetadata("trunk missing")
        message = data.get("message") or DEFAULT_MESSAGE
        timeout = data.get("ringing_timeout", DEFAULT_RINGING_TIMEOUT_S)
        if not isinstance(message, str):
            raise BadMetadata("message must be a string")
        if not isinstance(timeout, int) or not 0 < timeout <= 600:
            raise BadMetadata("ringing_timeout must be 1..600 seconds")
        return cls(number, trunk, message, str(data.get("from") or ""), timeout)


async def entrypoint(ctx: JobContext) -> None:
    from google.protobuf.duration_pb2 import Duration
    from livekit import api

    await ctx.connect()
    me = ctx.room.local_participant
    try:
        job = Reminder.parse(ctx.job.metadata)
    except BadMetadata as exc:
        log.warning("reminder: bad dispatch metadata: %s", exc)
        await me.set_attributes({"reminder.status": f"bad-metadata:{exc}"})
        ctx.shutdown("bad metadata")
        return
    speech = asyncio.ensure_future(prompt(job.message, FALLBACK_TONES))
    source = await publish_voice(ctx)
    await me.set_attributes({"reminder.number": job.number, "reminder.status": "dialing"})
    log.info("reminder: calling %s through %s", job.number, job.trunk)
    try:
        info = await ctx.create_sip_participant(
            api.CreateSIPParticipantRequest(
                sip_trunk_id=job.trunk,
                sip_call_to=job.number,
                sip_number=job.from_number,
                wait_until_answered=True,
                ringing_timeout=Duration(seconds=job.ringing_timeout),
            )
        )
    except api.TwirpError as exc:
        status = exc.metadata.get("sip_status_code", "")
        log.info("reminder: call to %s failed: %s %s", job.number, exc.code, status)
        speech.cancel()
        await me.set_attributes({"reminder.status": f"failed:{exc.code}:{status}"})
        ctx.shutdown("call failed")
        return
    callee = info.participant_identity
    hung_up = asyncio.Event()

    def on_left(p: RemoteParticipant) -> None:
        if p.identity == callee:
            hung_up.set()

    ctx.room.on("participant_disconnected", on_left)
    pcm = await speech
    await asyncio.sleep(SETTLE_S)
    await me.set_attributes({"reminder.status": "speaking"})
    await ctx.set_agent_state(AgentState.SPEAKING)
    speaking = asyncio.ensure_future(play(source, pcm))
    gone = asyncio.ensure_future(hung_up.wait())
    await asyncio.wait({speaking, gone}, return_when=asyncio.FIRST_COMPLETED)
    for task in (speaking, gone):
        task.cancel()
    await asyncio.gather(speaking, gone, return_exceptions=True)
    if hung_up.is_set():
        await me.set_attributes({"reminder.status": "hung-up"})
        ctx.shutdown("callee hung up")
        return
    await asyncio.sleep(TAIL_S)
    await ctx.remove_participant(callee)  # the bridge sends BYE
    await me.set_attributes({"reminder.status": "delivered"})
    log.info("reminder: delivered to %s", job.number)
    ctx.shutdown("message delivered")

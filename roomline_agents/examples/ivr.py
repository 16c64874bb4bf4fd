"""``ivr``: answers a call with a spoken menu and acts on the caller's DTMF keys.

Menu (the prompts are spoken with espeak-ng when installed, tone patterns otherwise):

* **1** — echo test: the agent becomes the ``echo`` agent for the rest of the call.
* **2** — transfer: the agent records ``ivr.transfer_to`` (the destination room), says so, moves
  the caller there (MoveParticipant: the call goes on in that room) and leaves.
* **3** — (only with ``sip_transfer_to`` in the job metadata) operator: a SIP caller is
  cold-transferred there by SIP REFER (``TransferSIPParticipant``; the call leaves roomline). If
  the far end refuses, the caller hears "that line is busy" and the menu again.
* **9** — hang up: the agent says goodbye and removes the caller (RemoveParticipant → the bridge
  sends BYE), then leaves.
* **\\*** — repeat the menu; any other key: "not an option" and the menu again.

Attributes the agent sets on itself (the room sees them as ``participant_attributes_changed``):

* ``lk.agent.state``: initializing → speaking (prompt) → listening (waiting for a key) ...
* ``ivr.caller``: identity of the participant being served
* ``ivr.menu``: ``main`` → ``echo`` | ``transfer`` | ``operator`` | ``hangup``
* ``ivr.choice``: the last key pressed
* ``ivr.transfer_to``: destination room after **2**

Job metadata (JSON, optional): ``{"transfer_to": "front-desk", "greeting": "Welcome to ...",
"sip_transfer_to": "sip:operator@pbx.example.com"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np

from roomline.wire import DTMF_DIGITS
from roomline_agents.examples import play
from roomline_agents.examples.echo import (
    Echo,
    find_caller,
    first_audio_track,
    leave_with,
    publish_voice,
)
from roomline_agents.sdk import AgentState, AudioSource, JobContext, SipDTMF
from roomline_agents.sdk.tts import prompt

log = logging.getLogger("roomline_agents.sdk.ivr")

DEFAULT_GREETING = "Welcome to roomline."
MENU = "Press 1 for an echo test. Press 2 for the front desk. Press 9 to hang up."
DEFAULT_TRANSFER_TO = "front-desk"


def options(metadata: str) -> dict[str, str]:
    """The job metadata's settings; anything unparsable falls back to the defaults."""
    try:
        data = json.loads(metadata) if metadata else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {
        "greeting": str(data.get("greeting") or DEFAULT_GREETING),
        "transfer_to": str(data.get("transfer_to") or DEFAULT_TRANSFER_TO),
        "sip_transfer_to": str(data.get("sip_transfer_to") or ""),
    }


async def render_prompts(opts: dict[str, str]) -> dict[str, np.ndarray]:
    """Every prompt as 48 kHz PCM, rendered once before the caller needs it."""
    menu = MENU
    if opts.get("sip_transfer_to"):
        menu = menu.replace("Press 9", "Press 3 for an operator. Press 9")
    texts = {
        "menu": (f"{opts['greeting']} {menu}", [660.0, 880.0, 990.0]),
        "operator": ("Transferring you to an operator.", [660.0, 990.0]),
        "busy": ("Sorry, that line is busy.", [330.0, 330.0]),
        "echo": ("Echo test. Say something, and pause.", [880.0]),
        "transfer": ("Please hold. Someone from the front desk will join you.", [660.0, 660.0]),
        "goodbye": ("Goodbye.", [990.0, 660.0]),
        "invalid": ("Sorry, that is not an option.", [330.0]),
    }
    rendered = await asyncio.gather(*(prompt(t, f) for t, f in texts.values()))
    return dict(zip(texts, rendered, strict=True))


class IVR:
    def __init__(self, ctx: JobContext, source: AudioSource, prompts: dict[str, np.ndarray]):
        self.ctx = ctx
        self.source = source
        self.prompts = prompts
        self.keys: asyncio.Queue[str] = asyncio.Queue(maxsize=32)

    def on_dtmf(self, dtmf: SipDTMF) -> None:
        digit = dtmf.digit or DTMF_DIGITS[dtmf.code % len(DTMF_DIGITS)]
        log.info("ivr: key %r from %s", digit, dtmf.participant and dtmf.participant.identity)
        if not self.keys.full():
            self.keys.put_nowait(digit)

    async def say(self, name: str) -> None:
        await self.ctx.set_agent_state(AgentState.SPEAKING)
        await play(self.source, self.prompts[name])
        await self.ctx.set_agent_state(AgentState.LISTENING)

    async def menu_until_key(self) -> str:
        """Play the menu; a key pressed meanwhile interrupts it (barge-in)."""
        speaking = asyncio.ensure_future(self.say("menu"))
        key = asyncio.ensure_future(self.keys.get())
        try:
            await asyncio.wait({speaking, key}, return_when=asyncio.FIRST_COMPLETED)
            if not speaking.done():
                speaking.cancel()
                self.source.clear_queue()
                await self.ctx.set_agent_state(AgentState.LISTENING)
            return await key
        finally:
            # The job may be cancelled (caller hung up mid-menu): never leave a task behind
            # whose exception nobody retrieves.
            for task in (speaking, key):
                if not task.done():
                    task.cancel()
            await asyncio.gather(speaking, key, return_exceptions=True)


async def sip_transfer(ctx: JobContext, identity: str, target: str) -> bool:
    """Cold-transfer ``identity`` to ``target`` by SIP REFER; False if the far end refused."""
    from livekit import api

    try:
        await ctx.transfer_sip_participant(
            api.TransferSIPParticipantRequest(
                participant_identity=identity, room_name=ctx.room.name, transfer_to=target
            )
        )
    except api.TwirpError as exc:
        log.info("ivr: SIP transfer of %s to %s failed: %s", identity, target, exc)
        return False
    return True


async def entrypoint(ctx: JobContext) -> None:
    opts = options(ctx.job.metadata)
    rendering = asyncio.ensure_future(render_prompts(opts))
    await ctx.connect()
    source = await publish_voice(ctx)
    prompts = await rendering
    ivr = IVR(ctx, source, prompts)
    ctx.room.on("sip_dtmf_received", ivr.on_dtmf)
    caller = await find_caller(ctx)
    leave_with(ctx, caller)
    await ctx.room.local_participant.set_attributes(
        {"ivr.caller": caller.identity, "ivr.menu": "main"}
    )
    log.info("ivr answering %s in %s", caller.identity, ctx.room.name)
    while True:
        key = await ivr.menu_until_key()
        menu = {"1": "echo", "2": "transfer", "9": "hangup"}.get(key)
        if key == "3" and opts["sip_transfer_to"]:
            menu = "operator"
        changes = {"ivr.choice": key, **({"ivr.menu": menu} if menu else {})}
        if menu == "transfer":
            changes["ivr.transfer_to"] = opts["transfer_to"]
        await ctx.room.local_participant.set_attributes(changes)
        if menu == "echo":
            await ivr.say("echo")
            track = await first_audio_track(ctx, caller)
            await Echo(ctx, source).run(track)
            return
        if menu == "transfer":
            await ivr.say("transfer")
            await ctx.move_participant(caller.identity, opts["transfer_to"])
            ctx.shutdown("caller transferred")
            return
        if menu == "operator":
            await ivr.say("operator")
            if await sip_transfer(ctx, caller.identity, opts["sip_transfer_to"]):
                ctx.shutdown("caller transferred by SIP REFER")
                return
            await ivr.say("busy")
            continue
        if menu == "hangup":
            await ivr.say("goodbye")
            await ctx.remove_participant(caller.identity)
            ctx.shutdown("caller hung up by the IVR")
            return
        if key != "*":
            await ivr.say("invalid")

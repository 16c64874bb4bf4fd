"""Test agent (registered by tests/bridge/test_outbound_e2e.py): places an outbound call from its
job and optionally transfers the callee, reporting outcomes as its own attributes.

Job metadata (JSON): ``{"trunk": "ST_...", "to": "+1555...", "transfer_to": "sip:..."}``.
Attributes: ``test.call`` = ``ok:<identity>`` or ``err:<code>:<sip status>``; ``test.transfer``
= ``ok`` or ``err:<code>:<sip status>``.
"""

from __future__ import annotations

import json

from livekit import api

from roomline_agents.sdk import JobContext


async def entrypoint(ctx: JobContext) -> None:
    meta = json.loads(ctx.job.metadata or "{}")
    await ctx.connect()
    local = ctx.room.local_participant
    try:
        info = await ctx.create_sip_participant(
            api.CreateSIPParticipantRequest(
                sip_trunk_id=meta["trunk"], sip_call_to=meta["to"], wait_until_answered=True
            )
        )
    except api.SipCallError as e:
        await local.set_attributes({"test.call": f"err:{e.code}:{e.sip_status_code}"})
        await ctx.wait_for_shutdown()
        return
    await local.set_attributes({"test.call": f"ok:{info.participant_identity}"})
    if meta.get("transfer_to"):
        try:
            await ctx.transfer_sip_participant(
                api.TransferSIPParticipantRequest(
                    participant_identity=info.participant_identity,
                    transfer_to=meta["transfer_to"],
                )
            )
            await local.set_attributes({"test.transfer": "ok"})
        except api.SipCallError as e:
            await local.set_attributes({"test.transfer": f"err:{e.code}:{e.sip_status_code}"})
    await ctx.wait_for_shutdown()

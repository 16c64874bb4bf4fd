"""The SIP Twirp service on a running appliance, driven by the real ``livekit-api`` SipService."""

from __future__ import annotations

from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import sip as sip_pb

from roomline_harness.server import API_KEY, API_SECRET, start_server, stop_server


async def test_trunks_and_rules_survive_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            trunk = await lk.sip.create_inbound_trunk(
                sip_pb.CreateSIPInboundTrunkRequest(
                    trunk=sip_pb.SIPInboundTrunkInfo(
                        name="carrier", numbers=["+15550100"], allowed_addresses=["10.0.0.0/8"]
                    )
                )
            )
            assert trunk.sip_trunk_id.startswith("ST_")
            rule = await lk.sip.create_dispatch_rule(
                sip_pb.CreateSIPDispatchRuleRequest(
                    dispatch_rule=sip_pb.SIPDispatchRuleInfo(
                        name="support",
                        trunk_ids=[trunk.sip_trunk_id],
                        rule=sip_pb.SIPDispatchRule(
                            dispatch_rule_individual=sip_pb.SIPDispatchRuleIndividual(
                                room_prefix="call"
                            )
                        ),
                    )
                )
            )
            assert rule.sip_dispatch_rule_id.startswith("SDR_")
            with pytest.raises(api.TwirpError) as err:
                await lk.sip.create_inbound_trunk(
                    sip_pb.CreateSIPInboundTrunkRequest(
                        trunk=sip_pb.SIPInboundTrunkInfo(
                            name="bad", allowed_addresses=["10.0.0.0/99"]
                        )
                    )
                )
            assert err.value.code == "invalid_argument" and "allowed_addresses" in err.value.message
    finally:
        stop_server(server)
    # Same data dir, new process: what the API created is still there.
    server = start_server(tmp_path)
    try:
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            trunks = await lk.sip.list_inbound_trunk(sip_pb.ListSIPInboundTrunkRequest())
            assert [t.sip_trunk_id for t in trunks.items] == [trunk.sip_trunk_id]
            rules = await lk.sip.list_dispatch_rule(sip_pb.ListSIPDispatchRuleRequest())
            assert [r.sip_dispatch_rule_id for r in rules.items] == [rule.sip_dispatch_rule_id]
            await lk.sip.delete_dispatch_rule(
                sip_pb.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule.sip_dispatch_rule_id)
            )
            await lk.sip.delete_trunk(sip_pb.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))
            trunks = await lk.sip.list_inbound_trunk(sip_pb.ListSIPInboundTrunkRequest())
            assert list(trunks.items) == []
        # sip.admin is required.
        no_admin = (
            api.AccessToken(API_KEY, API_SECRET)
            .with_grants(api.VideoGrants(room_list=True))
            .to_jwt()
        )
        async with api.LiveKitAPI(server.http_url, token=no_admin) as lk:  # type: ignore[call-arg]
            with pytest.raises(api.TwirpError) as err:
                await lk.sip.list_inbound_trunk(sip_pb.ListSIPInboundTrunkRequest())
            assert err.value.code == "permission_denied"
    finally:
        stop_server(server)

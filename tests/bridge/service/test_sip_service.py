"""The Twirp SIP service driven by the real ``livekit-api`` client over loopback HTTP.

The test serves :class:`SIPService` through the production Twirp edge (``sfu/service/twirp.py``)
on its own aiohttp app, without the rest of the appliance.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import models as models_pb
from livekit.protocol import sip as sip_pb

from bridge.service.sip_service import METHODS, SERVICE, SIPService
from bridge.service.store import SIPStore
from sfu.service.twirp import TwirpRouter

KEY, SECRET = "APItestkey", "a-test-secret-that-is-long-enough-0123"
KEYS = {KEY: SECRET}
MAX_BODY = 1024 * 1024
CALLED = "+15559870000"


def make_app(service: SIPService) -> web.Application:
    """The production Twirp edge with only the SIP service registered."""
    router = TwirpRouter(KEYS, MAX_BODY)
    router.register(SERVICE, service.methods())
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_routes(router.routes())
    return app


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.store: SIPStore | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0, **config: Any) -> None:
        self.store = SIPStore.open(self.data_dir, **config)
        self.runner = web.AppRunner(make_app(SIPService(self.store)))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        assert self.runner is not None and self.store is not None
        await self.runner.cleanup()
        self.store.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(tmp_path)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def lk(server: Server) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(server.url, KEY, SECRET)
    yield client
    await client.aclose()


def inbound(**kw: Any) -> api.CreateSIPInboundTrunkRequest:
    return api.CreateSIPInboundTrunkRequest(trunk=api.SIPInboundTrunkInfo(**kw))


def direct_rule(room: str, **kw: Any) -> api.CreateSIPDispatchRuleRequest:
    rule = api.SIPDispatchRule(dispatch_rule_direct=api.SIPDispatchRuleDirect(room_name=room))
    return api.CreateSIPDispatchRuleRequest(dispatch_rule=api.SIPDispatchRuleInfo(rule=rule, **kw))


def test_methods_table_is_complete() -> None:
    for name, (req, resp, handler) in METHODS.items():
        assert hasattr(SIPService, handler), name
        assert req.DESCRIPTOR.full_name.startswith("livekit.")
        assert resp.DESCRIPTOR.full_name.startswith("livekit.")


async def test_trunk_crud_with_real_client_and_restart(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    await srv.start()
    lk = api.LiveKitAPI(srv.url, KEY, SECRET)
    try:
        t = await lk.sip.create_inbound_trunk(
            inbound(
                name="carrier",
                numbers=[CALLED],
                allowed_addresses=["203.0.113.0/24"],
                auth_username="carrier",
                auth_password="s3cret",
            )
        )
        assert t.sip_trunk_id.startswith("ST_") and len(t.sip_trunk_id) == 15
        assert t.created_at.seconds > 0
        got = await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
        assert [x.sip_trunk_id for x in got.items] == [t.sip_trunk_id]

        # Update with fields: ListUpdate add/remove, optional scalars.
        t2 = await lk.sip.update_inbound_trunk_fields(
            t.sip_trunk_id,
            numbers=models_pb.ListUpdate(add=["+15559870001"]),
            allowed_addresses=["198.51.100.7"],
            name="renamed",
        )
        assert list(t2.numbers) == [CALLED, "+15559870001"]
        assert list(t2.allowed_addresses) == ["198.51.100.7"]
        assert t2.name == "renamed" and t2.auth_username == "carrier"

        # Replace entirely.
        t3 = await lk.sip.update_inbound_trunk(
            t.sip_trunk_id, api.SIPInboundTrunkInfo(name="replaced", numbers=["+15550000001"])
        )
        assert t3.sip_trunk_id == t.sip_trunk_id and t3.auth_username == ""

        rule = await lk.sip.create_dispatch_rule(
            direct_rule("lobby", trunk_ids=[t.sip_trunk_id], name="lobby rule")
        )
        assert rule.sip_dispatch_rule_id.startswith("SDR_")
        out = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(address="sip.carrier.net", numbers=[CALLED])
            )
        )
    finally:
        await lk.aclose()
        await srv.stop()

    # Restart: a new store object on the same file, a new HTTP server.
    srv2 = Server(tmp_path)
    await srv2.start()
    lk2 = api.LiveKitAPI(srv2.url, KEY, SECRET)
    try:
        trunks = await lk2.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
        assert [(x.sip_trunk_id, x.name) for x in trunks.items] == [(t.sip_trunk_id, "replaced")]
        rules = await lk2.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
        assert [r.sip_dispatch_rule_id for r in rules.items] == [rule.sip_dispatch_rule_id]
        assert rules.items[0].rule.dispatch_rule_direct.room_name == "lobby"
        outs = await lk2.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
        assert [o.sip_trunk_id for o in outs.items] == [out.sip_trunk_id]

        deleted = await lk2.sip.delete_dispatch_rule(
            api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule.sip_dispatch_rule_id)
        )
        assert deleted.sip_dispatch_rule_id == rule.sip_dispatch_rule_id
        info = await lk2.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=t.sip_trunk_id))
        assert info.sip_trunk_id == t.sip_trunk_id
        assert (await lk2.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items == []
        with pytest.raises(api.TwirpError) as exc:
            await lk2.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=t.sip_trunk_id))
        assert exc.value.code == "not_found" and exc.value.status == 404
    finally:
        await lk2.aclose()
        await srv2.stop()


async def test_list_filters(lk: api.LiveKitAPI) -> None:
    a = await lk.sip.create_inbound_trunk(inbound(numbers=["+15550000001"]))
    b = await lk.sip.create_inbound_trunk(inbound(numbers=["+15550000002"]))
    d = await lk.sip.create_inbound_trunk(inbound(allowed_addresses=["10.0.0.0/8"]))
    by_num = await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest(numbers=["15550000002"]))  # fmt: skip
    # The default trunk (no numbers) matches any number filter, as in LiveKit.
    assert {x.sip_trunk_id for x in by_num.items} == {b.sip_trunk_id, d.sip_trunk_id}
    by_id = await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest(trunk_ids=[a.sip_trunk_id]))  # fmt: skip
    assert [x.sip_trunk_id for x in by_id.items] == [a.sip_trunk_id]

    r1 = await lk.sip.create_dispatch_rule(direct_rule("one", trunk_ids=[a.sip_trunk_id]))
    r2 = await lk.sip.create_dispatch_rule(direct_rule("two", trunk_ids=[b.sip_trunk_id]))
    r3 = await lk.sip.create_dispatch_rule(direct_rule("wild"))
    rules = await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest(trunk_ids=[a.sip_trunk_id]))  # fmt: skip
    assert {r.sip_dispatch_rule_id for r in rules.items} == {
        r1.sip_dispatch_rule_id,
        r3.sip_dispatch_rule_id,
    }
    rules = await lk.sip.list_dispatch_rule(
        api.ListSIPDispatchRuleRequest(dispatch_rule_ids=[r2.sip_dispatch_rule_id])
    )
    assert [r.sip_dispatch_rule_id for r in rules.items] == [r2.sip_dispatch_rule_id]


async def test_dispatch_rule_updates(lk: api.LiveKitAPI) -> None:
    t = await lk.sip.create_inbound_trunk(inbound(numbers=[CALLED]))
    r = await lk.sip.create_dispatch_rule(direct_rule("lobby", attributes={"a": "1", "b": "2"}))
    r2 = await lk.sip.update_dispatch_rule_fields(
        r.sip_dispatch_rule_id,
        trunk_ids=[t.sip_trunk_id],
        name="n",
        attributes={"a": "", "c": "3"},
        rule=api.SIPDispatchRule(
            dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="call")
        ),
    )
    assert list(r2.trunk_ids) == [t.sip_trunk_id] and r2.name == "n"
    assert dict(r2.attributes) == {"b": "2", "c": "3"}
    assert r2.rule.WhichOneof("rule") == "dispatch_rule_individual"
    r3 = await lk.sip.update_dispatch_rule(
        r.sip_dispatch_rule_id,
        api.SIPDispatchRuleInfo(
            rule=api.SIPDispatchRule(
                dispatch_rule_callee=api.SIPDispatchRuleCallee(room_prefix="sales")
            )
        ),
    )
    assert r3.sip_dispatch_rule_id == r.sip_dispatch_rule_id and list(r3.trunk_ids) == []


async def test_legacy_create_dispatch_rule_form(lk: api.LiveKitAPI) -> None:
    r = await lk.sip.create_dispatch_rule(
        api.CreateSIPDispatchRuleRequest(
            rule=api.SIPDispatchRule(
                dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="call")
            ),
            name="legacy",
            attributes={"k": "v"},
        )
    )
    assert r.name == "legacy" and dict(r.attributes) == {"k": "v"}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (inbound(), "for security"),
        (inbound(allowed_addresses=["10.0.0.0/33"]), r"allowed_addresses\[0\]"),
        (inbound(allowed_addresses=["300.1.2.3"]), r"allowed_addresses\[0\]"),
        (inbound(numbers=["+1 555\n"]), r"numbers\[0\]"),
        (inbound(numbers=[CALLED], auth_username="only-user"), "auth_password"),
        (inbound(numbers=[CALLED], sip_trunk_id="ST_mine"), "sip_trunk_id"),
        (inbound(numbers=[CALLED], headers={"Bad Header": "x"}), "headers"),
    ],
)
async def test_create_trunk_validation(
    lk: api.LiveKitAPI, request_: api.CreateSIPInboundTrunkRequest, field: str
) -> None:
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.create_inbound_trunk(request_)
    assert exc.value.code == "invalid_argument" and exc.value.status == 400
    assert __import__("re").search(field, exc.value.message), exc.value.message


async def test_duplicate_numbers_across_trunks_rejected(lk: api.LiveKitAPI) -> None:
    await lk.sip.create_inbound_trunk(inbound(numbers=[CALLED]))
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.create_inbound_trunk(inbound(numbers=["1 555 987 0000"]))
    assert exc.value.code == "invalid_argument" and "conflicting" in exc.value.message
    # Same number but a disjoint caller allowlist is fine (LiveKit's rule).
    await lk.sip.create_inbound_trunk(inbound(numbers=[CALLED], allowed_numbers=["+15551112222"]))


async def test_dispatch_rule_validation(lk: api.LiveKitAPI) -> None:
    empty = api.CreateSIPDispatchRuleRequest(dispatch_rule=api.SIPDispatchRuleInfo(name="x"))
    with pytest.raises(api.TwirpError, match="rule type"):
        await lk.sip.create_dispatch_rule(empty)
    with pytest.raises(api.TwirpError, match="unknown trunk"):
        await lk.sip.create_dispatch_rule(direct_rule("lobby", trunk_ids=["ST_doesnotexist"]))
    with pytest.raises(api.TwirpError, match="pin"):
        bad_pin = api.SIPDispatchRule(
            dispatch_rule_direct=api.SIPDispatchRuleDirect(room_name="r", pin="12ab")
        )
        await lk.sip.create_dispatch_rule(
            api.CreateSIPDispatchRuleRequest(dispatch_rule=api.SIPDispatchRuleInfo(rule=bad_pin))
        )
    await lk.sip.create_dispatch_rule(direct_rule("lobby"))
    with pytest.raises(api.TwirpError, match="already exists"):
        await lk.sip.create_dispatch_rule(direct_rule("other"))


async def test_update_errors(lk: api.LiveKitAPI) -> None:
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.update_inbound_trunk_fields("ST_missing", name="x")
    assert exc.value.code == "not_found"
    t = await lk.sip.create_inbound_trunk(inbound(numbers=[CALLED]))
    with pytest.raises(api.TwirpError, match="for security"):
        await lk.sip.update_inbound_trunk_fields(
            t.sip_trunk_id, numbers=models_pb.ListUpdate(remove=[CALLED])
        )
    # livekit-api drops ListUpdate.clear, so an empty ListUpdate arrives: LiveKit rejects it.
    with pytest.raises(api.TwirpError, match="unsupported list update"):
        await lk.sip.update_inbound_trunk_fields(
            t.sip_trunk_id, numbers=models_pb.ListUpdate(clear=True)
        )
    with pytest.raises(api.TwirpError, match="cannot set and change"):
        await lk.sip.update_inbound_trunk_fields(
            t.sip_trunk_id, numbers=models_pb.ListUpdate(set=["+1"], add=["+2"])
        )


async def test_permissions(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        # A join-only token (no sip.admin) cannot manage trunks.
        tok = (
            api.AccessToken(KEY, SECRET)
            .with_identity("user")
            .with_grants(api.VideoGrants(room_join=True, room="r"))
            .to_jwt()
        )
        resp = await session.post(
            f"{server.url}/twirp/livekit.SIP/ListSIPInboundTrunk",
            data=b"",
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/protobuf"},
        )
        assert resp.status == 403
        assert (await resp.json())["code"] == "permission_denied"
        # sip.call is not sip.admin.
        tok = (
            api.AccessToken(KEY, SECRET)
            .with_identity("caller")
            .with_sip_grants(api.SIPGrants(call=True))
            .to_jwt()
        )
        resp = await session.post(
            f"{server.url}/twirp/livekit.SIP/CreateSIPInboundTrunk",
            data=b"",
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/protobuf"},
        )
        assert resp.status == 403


async def test_outbound_calls_without_bridge(lk: api.LiveKitAPI) -> None:
    """Without bridge workers: validation still answers first, then ``unavailable``."""
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.create_sip_participant(
            api.CreateSIPParticipantRequest(
                sip_trunk_id="ST_x", sip_call_to="+15550001111", room_name="r"
            )
        )
    assert exc.value.code == "not_found" and exc.value.status == 404
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.create_sip_participant(
            api.CreateSIPParticipantRequest(
                trunk=api.SIPOutboundConfig(hostname="carrier.net"),
                sip_number="+15550002222",
                sip_call_to="+15550001111",
                room_name="r",
            )
        )
    assert exc.value.code == "unavailable"
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.transfer_sip_participant(
            api.TransferSIPParticipantRequest(
                participant_identity="sip_1", room_name="r", transfer_to="tel:+15550001111"
            )
        )
    assert exc.value.code == "unavailable"


async def admin_post(
    server: Server, method: str, body: bytes, ctype: str
) -> aiohttp.ClientResponse:
    tok = (
        api.AccessToken(KEY, SECRET)
        .with_identity("admin")
        .with_sip_grants(api.SIPGrants(admin=True))
        .to_jwt()
    )
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{server.url}/twirp/livekit.SIP/{method}",
            data=body,
            headers={"Authorization": f"Bearer {tok}", "Content-Type": ctype},
        )
        await resp.read()
        return resp


async def test_json_bodies_like_node_sdk(server: Server) -> None:
    body = json.dumps(
        {"trunk": {"name": "json", "numbers": [CALLED], "allowedAddresses": ["10.0.0.0/8"]}}
    ).encode()
    resp = await admin_post(server, "CreateSIPInboundTrunk", body, "application/json;charset=UTF-8")
    assert resp.status == 200 and resp.content_type == "application/json"
    created = json.loads(await resp.read())
    assert created["sipTrunkId"].startswith("ST_") and created["allowedAddresses"] == ["10.0.0.0/8"]
    # Unknown fields are ignored (newer SDKs), snake_case accepted too.
    body = json.dumps({"trunk_ids": [created["sipTrunkId"]], "futureField": 1}).encode()
    resp = await admin_post(server, "ListSIPInboundTrunk", body, "application/json")
    assert resp.status == 200
    assert [i["sipTrunkId"] for i in json.loads(await resp.read())["items"]] == [
        created["sipTrunkId"]
    ]


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"\xff\xff\xff\xff", "application/protobuf"),
        (b"\x0a\x05\x01", "application/protobuf"),  # truncated length-delimited field
        (b"{not json", "application/json"),
        (b'{"trunk": {"numbers": 5}}', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"[" * 10000 + b"]" * 10000, "application/json"),
    ],
)
async def test_malformed_bodies_and_server_keeps_serving(
    server: Server, lk: api.LiveKitAPI, body: bytes, ctype: str
) -> None:
    resp = await admin_post(server, "CreateSIPInboundTrunk", body, ctype)
    assert resp.status == 400
    assert (await resp.json())["code"] == "malformed"
    t = await lk.sip.create_inbound_trunk(inbound(numbers=[CALLED]))
    assert t.sip_trunk_id.startswith("ST_")


async def test_unknown_rule_type_in_json(server: Server) -> None:
    body = json.dumps({"dispatchRule": {"rule": {"dispatchRuleTeleport": {"room": "x"}}}}).encode()
    resp = await admin_post(server, "CreateSIPDispatchRule", body, "application/json")
    assert resp.status == 400
    assert "rule type" in (await resp.json())["msg"]


async def test_config_trunks_listed_read_only(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    await srv.start(
        config_trunks=[{"sipTrunkId": "ST_config", "numbers": [CALLED]}],
        config_rules=[{"rule": {"dispatchRuleDirect": {"roomName": "lobby"}}}],
        config_outbound_trunks=[
            {"sipTrunkId": "ST_out_config", "address": "carrier.example", "numbers": ["+1555"]}
        ],
    )
    lk = api.LiveKitAPI(srv.url, KEY, SECRET)
    try:
        items = (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items
        assert [t.sip_trunk_id for t in items] == ["ST_config"]
        with pytest.raises(api.TwirpError, match="config"):
            await lk.sip.update_inbound_trunk_fields("ST_config", name="x")
        # Config outbound trunks are read-only the same way (one check for every object type).
        with pytest.raises(api.TwirpError, match="ST_out_config comes from the config file"):
            await lk.sip.update_outbound_trunk_fields("ST_out_config", name="x")
        [rule_id] = [
            r.sip_dispatch_rule_id
            for r in (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items
        ]
        with pytest.raises(api.TwirpError, match="comes from the config file"):
            await lk.sip.update_dispatch_rule_fields(rule_id, name="x")
        with pytest.raises(api.TwirpError, match="read-only"):
            await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id="ST_config"))
        # API trunks cannot claim a config trunk's number either.
        with pytest.raises(api.TwirpError, match="conflicting"):
            await lk.sip.create_inbound_trunk(inbound(numbers=[CALLED]))
        # Rules may reference config trunks.
        rule = await lk.sip.create_dispatch_rule(direct_rule("vip", trunk_ids=["ST_config"]))
        assert list(rule.trunk_ids) == ["ST_config"]
    finally:
        await lk.aclose()
        await srv.stop()


async def test_get_inbound_trunk(server: Server, lk: api.LiveKitAPI) -> None:
    # livekit-api 1.2.2 has no get_inbound_trunk helper; call the RPC through its Twirp client.
    t = await lk.sip.create_inbound_trunk(inbound(numbers=[CALLED], name="g"))
    got = await lk.sip._client.request(
        "SIP",
        "GetSIPInboundTrunk",
        sip_pb.GetSIPInboundTrunkRequest(sip_trunk_id=t.sip_trunk_id),
        lk.sip._admin_headers(),
        sip_pb.GetSIPInboundTrunkResponse,
    )
    assert got.trunk.name == "g"

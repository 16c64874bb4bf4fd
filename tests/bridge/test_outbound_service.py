"""Outbound trunks and CreateSIPParticipant validation over the real ``livekit-api`` client.

The SIP Twirp service runs on the production Twirp edge without the rest of the appliance (as in
tests/test_sip_service.py); nothing here dials, so no bridge worker is needed: every request
below must fail validation before a call would be placed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from livekit import api

from bridge.service.outbound import (
    disconnect_reason_for,
    plan_call,
    sip_status_error,
    twirp_code_for,
)
from bridge.service.outbound_trunks import REDACTED
from bridge.service.sip_service import SERVICE, SIPService
from bridge.service.store import SIPStore
from roomline.errors import ConfigError
from sfu.service.twirp import TwirpRouter

KEY, SECRET = "APItestkey", "a-test-secret-that-is-long-enough-0123"
MAX_BODY = 1024 * 1024


class Server:
    """The SIP Twirp service alone on the production Twirp edge, on a loopback HTTP port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.store: SIPStore | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, **config: Any) -> None:
        self.store = SIPStore.open(self.data_dir, **config)
        router = TwirpRouter({KEY: SECRET}, MAX_BODY)
        router.register(SERVICE, SIPService(self.store).methods())
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_routes(router.routes())
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
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
    await srv.start(
        config_outbound_trunks=[
            {
                "sip_trunk_id": "ST_cfgout",
                "name": "config carrier",
                "address": "sip.example.net:5080",
                "numbers": ["+15550009999"],
                "auth_username": "u",
                "auth_password": "config-secret",
            }
        ]
    )
    yield srv
    await srv.stop()


@pytest.fixture
async def lk(server: Server) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(server.url, KEY, SECRET)
    yield client
    await client.aclose()


def outbound(**kw: object) -> api.CreateSIPOutboundTrunkRequest:
    return api.CreateSIPOutboundTrunkRequest(trunk=api.SIPOutboundTrunkInfo(**kw))  # type: ignore[arg-type]


async def test_outbound_trunk_crud_and_password_redacted(lk: api.LiveKitAPI) -> None:
    t = await lk.sip.create_outbound_trunk(
        outbound(
            name="carrier",
            metadata="m",
            address="127.0.0.1:5099",
            transport=api.SIPTransport.SIP_TRANSPORT_TCP,
            numbers=["+15550001000"],
            auth_username="alice",
            auth_password="s3cret-pass",
            headers={"X-Carrier": "yes"},
            headers_to_attributes={"X-Answer": "answer"},
            attributes_to_headers={"tenant": "X-Tenant"},
            include_headers=api.SIPHeaderOptions.SIP_X_HEADERS,
            media_encryption=api.SIPMediaEncryption.SIP_MEDIA_ENCRYPT_ALLOW,
            from_host="pbx.example.org",
        )
    )
    assert t.sip_trunk_id.startswith("ST_") and t.address == "127.0.0.1:5099"
    listed = await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
    by_id = {x.sip_trunk_id: x for x in listed.items}
    assert set(by_id) == {t.sip_trunk_id, "ST_cfgout"}
    mine = by_id[t.sip_trunk_id]
    assert mine.auth_username == "alice" and mine.auth_password == REDACTED
    assert mine.headers["X-Carrier"] == "yes" and mine.from_host == "pbx.example.org"
    assert mine.transport == api.SIPTransport.SIP_TRANSPORT_TCP
    assert by_id["ST_cfgout"].auth_password == REDACTED
    upd = await lk.sip.update_outbound_trunk_fields(
        t.sip_trunk_id, address="sip.carrier.example:5070", name="renamed"
    )
    assert upd.address == "sip.carrier.example:5070" and upd.name == "renamed"
    deleted = await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=t.sip_trunk_id))
    assert deleted.sip_trunk_id == t.sip_trunk_id
    listed = await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
    assert [x.sip_trunk_id for x in listed.items] == ["ST_cfgout"]
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=t.sip_trunk_id))
    assert exc.value.code == "not_found"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"address": "sip:carrier.net", "numbers": ["+1555"]}, "not SIP URI"),
        ({"address": "carrier.net;transport=tcp", "numbers": ["+1555"]}, "transport"),
        ({"address": "user@carrier.net", "numbers": ["+1555"]}, "not SIP URI"),
        ({"address": "carrier.net", "numbers": []}, "no trunk numbers"),
        ({"address": "", "numbers": ["+1555"]}, "no outbound address"),
        ({"address": "carrier.net:99999", "numbers": ["+1555"]}, "invalid port"),
        ({"address": "carrier.net", "numbers": ["+1555"], "auth_username": "x"}, "go together"),
        ({"address": "carrier.net", "numbers": ["+1555"], "headers": {"X Bad": "1"}}, "header"),
    ],
)
async def test_outbound_trunk_validation(
    lk: api.LiveKitAPI, fields: dict[str, object], needle: str
) -> None:
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.create_outbound_trunk(outbound(**fields))
    assert exc.value.code == "invalid_argument"
    assert needle in exc.value.message


def test_config_outbound_trunk_validated(tmp_path: Path) -> None:
    from bridge.service.store import SIPStore

    with pytest.raises(ConfigError, match=r"sip.outbound_trunks\[0\].*not SIP URI"):
        SIPStore.open(
            tmp_path, config_outbound_trunks=[{"address": "sip:x.net", "numbers": ["+1"]}]
        )


def test_config_section_parses_and_redacts(tmp_path: Path) -> None:
    from roomline.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(
        "sip:\n  outbound_trunks:\n"
        "    - {address: carrier.net, numbers: ['+1555'], auth_username: a,"
        " auth_password: hunter2-secret}\n"
    )
    cfg = load_config(str(path))
    assert cfg.sip.outbound_trunks[0]["address"] == "carrier.net"
    assert "hunter2-secret" not in repr(cfg.redacted())
    path.write_text("sip:\n  outbound_trunks:\n    - {adress: carrier.net}\n")
    with pytest.raises(ConfigError, match="outbound_trunks"):
        load_config(str(path))


def participant(**kw: object) -> api.CreateSIPParticipantRequest:
    base: dict[str, object] = {
        "sip_trunk_id": "ST_cfgout",
        "sip_call_to": "+15551234",
        "room_name": "r",
    }
    base.update(kw)
    return api.CreateSIPParticipantRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "code", "needle"),
    [
        ({"sip_trunk_id": "ST_nosuch"}, "not_found", "ST_nosuch"),
        ({"sip_call_to": "bob@example.com"}, "invalid_argument", "sip_call_to"),
        ({"sip_call_to": ""}, "invalid_argument", "sip_call_to"),
        ({"room_name": ""}, "invalid_argument", "room_name"),
        ({"sip_trunk_id": "", "trunk": None}, "invalid_argument", "sip_trunk_id"),
        (
            {"sip_trunk_id": "", "trunk": api.SIPOutboundConfig(hostname="carrier.net")},
            "failed_precondition",
            "no numbers on outbound trunk",
        ),
        (
            {"sip_trunk_id": "", "trunk": api.SIPOutboundConfig(hostname="sip:carrier.net")},
            "invalid_argument",
            "hostname",
        ),
        ({"dtmf": "12x"}, "invalid_argument", "dtmf"),
        ({"headers": {"Via": "x"}}, "invalid_argument", "headers"),
    ],
)
async def test_create_participant_validation(
    lk: api.LiveKitAPI, kw: dict[str, object], code: str, needle: str
) -> None:
    kw = {k: v for k, v in kw.items() if v is not None}
    with pytest.raises(api.TwirpError) as exc:
        await lk.sip.create_sip_participant(participant(**kw))
    assert exc.value.code == code, exc.value.message
    assert needle in exc.value.message


async def test_create_participant_needs_call_grant(server: Server) -> None:
    client = api.LiveKitAPI(server.url, KEY, SECRET)
    try:
        # A token with only sip.admin: the call grant is missing.
        tok = (
            api.AccessToken(KEY, SECRET)
            .with_identity("ops")
            .with_sip_grants(api.SIPGrants(admin=True))
            .to_jwt()
        )
        import aiohttp

        async with aiohttp.ClientSession() as s:
            resp = await s.post(
                f"{server.url}/twirp/livekit.SIP/CreateSIPParticipant",
                data=participant().SerializeToString(),
                headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/protobuf"},
            )
            assert resp.status == 403
            assert (await resp.json())["code"] == "permission_denied"
    finally:
        await client.aclose()


async def test_transfer_needs_room_admin(server: Server) -> None:
    import aiohttp

    tok = (
        api.AccessToken(KEY, SECRET)
        .with_identity("ops")
        .with_sip_grants(api.SIPGrants(call=True))
        .to_jwt()
    )
    req = api.TransferSIPParticipantRequest(
        participant_identity="sip_1", room_name="r", transfer_to="tel:+15550001111"
    )
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            f"{server.url}/twirp/livekit.SIP/TransferSIPParticipant",
            data=req.SerializeToString(),
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/protobuf"},
        )
        assert resp.status == 403


def test_error_table() -> None:
    assert twirp_code_for(486) == "resource_exhausted"
    assert twirp_code_for(600) == "resource_exhausted"
    assert twirp_code_for(480) == "resource_exhausted"
    assert twirp_code_for(603) == "permission_denied"
    assert twirp_code_for(404) == "not_found"
    assert twirp_code_for(408) == "deadline_exceeded"
    assert twirp_code_for(487) == "aborted"
    assert twirp_code_for(488) == "invalid_argument"
    assert twirp_code_for(500) == "failed_precondition"
    assert twirp_code_for(503) == "failed_precondition"
    assert twirp_code_for(504) == "deadline_exceeded"
    assert twirp_code_for(599) == "failed_precondition"
    err = sip_status_error(486, "Busy Here")
    assert err.twirp_code == "resource_exhausted"
    assert err.meta == {"sip_status_code": "486", "sip_status": "Busy Here"}
    assert disconnect_reason_for(486) == "USER_REJECTED"
    assert disconnect_reason_for(603) == "USER_REJECTED"
    assert disconnect_reason_for(480) == "USER_UNAVAILABLE"
    assert disconnect_reason_for(404) == "USER_UNAVAILABLE"


def test_control_messages_round_trip() -> None:
    import bridge.control as control

    dial = control.Dial(
        id=7,
        call_id="SCL_abc",
        to_uri="sip:+15551234@carrier.example:5080;transport=tcp",
        from_user="+15550001",
        token="t",
        room="r",
        identity="sip_+15551234",
        socket="/tmp/s.sock",
        display_name=None,
        headers={"X-A": "1"},
        auth_username="u",
        auth_password="p",
        dtmf="1w2",
        outbound_proxy="sip:127.0.0.1:5060;lr",
    )
    assert "auth_password" not in repr(dial)  # never in a log line
    for msg in (
        dial,
        control.DialProgress(id=7, call_id="SCL_abc", state="ringing", status=180),
        control.Transfer(id=8, call_id="SCL_abc", transfer_to="<sip:a@b>", headers={"X-B": "2"}),
        control.TransferResult(id=8, call_id="SCL_abc", ok=False, status=486, reason="Busy"),
    ):
        assert control.decode(control.encode(msg)) == msg
    bad: list[dict[str, object]] = [
        {"from_user": "a@b"},
        {"to_uri": "sip:<x>"},
        {"headers": {"Bad Name": "x"}},
        {"display_name": 'a"b'},
        {"ringing_timeout": 0},
        {"outbound_proxy": "http://x"},
        {"media_encryption": "maybe"},
    ]
    for kw in bad:
        with pytest.raises(control.ControlError):
            control.Dial(**{**dial.__dict__, **kw})  # type: ignore[arg-type]
    with pytest.raises(control.ControlError):
        control.DialProgress(id=1, call_id="x", state="bogus")


def test_plan_media_encryption_trunk_and_request(tmp_path: Path) -> None:
    """The trunk's SRTP policy reaches the plan; a non-zero request value overrides it."""
    from livekit.protocol import sip as sip_pb

    from bridge.service.outbound import plan_call

    store = SIPStore.open(tmp_path)
    try:
        trunk = sip_pb.SIPOutboundTrunkInfo(
            sip_trunk_id="ST_require",
            address="carrier.example",
            numbers=["+15550001000"],
            media=sip_pb.SIPMediaConfig(encryption=sip_pb.SIP_MEDIA_ENCRYPT_REQUIRE),
        )
        plain = sip_pb.SIPOutboundTrunkInfo(
            sip_trunk_id="ST_plain", address="carrier.example", numbers=["+15550001000"]
        )
        store.put_outbound_trunk(trunk)
        store.put_outbound_trunk(plain)

        def plan(trunk_id: str, **kw: Any) -> str:
            req = sip_pb.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id, sip_call_to="+15557770001", room_name="r", **kw
            )
            return plan_call(req, store).media_encryption

        assert plan(trunk.sip_trunk_id) == "require"
        assert plan(plain.sip_trunk_id) == "disable"
        assert plan(plain.sip_trunk_id, media_encryption=sip_pb.SIP_MEDIA_ENCRYPT_ALLOW) == "allow"
        allow = sip_pb.SIPMediaConfig(encryption=sip_pb.SIP_MEDIA_ENCRYPT_ALLOW)
        assert plan(trunk.sip_trunk_id, media=allow) == "allow"
    finally:
        store.close()


async def test_tls_trunk_refused_without_a_tls_front(tmp_path: Path) -> None:
    """A TLS trunk where no TLS can be opened (direct mode, or a front without its TLS files):
    failed_precondition naming why, before any worker is asked (never dialled over UDP)."""
    from livekit.protocol import sip as sip_pb

    from bridge.service.outbound import FailedPrecondition, OutboundCalls
    from bridge.service.sip_bridge import tls_trunks_unavailable

    class NoWorkers:
        on_outbound: object = None
        picked = 0

        def pick_worker(self) -> None:
            self.picked += 1

    store = SIPStore.open(tmp_path)
    try:
        store.put_outbound_trunk(
            sip_pb.SIPOutboundTrunkInfo(
                sip_trunk_id="ST_tls",
                address="carrier.example",
                numbers=["+15550001000"],
                transport=sip_pb.SIP_TRANSPORT_TLS,
            )
        )
        req = sip_pb.CreateSIPParticipantRequest(
            sip_trunk_id="ST_tls", sip_call_to="+15557770001", room_name="r"
        )
        assert "sip.tls_cert_file" in tls_trunks_unavailable(False)
        assert "SIP front" in tls_trunks_unavailable(None)
        assert tls_trunks_unavailable(True) == ""
        for front_tls in (None, False):
            sup = NoWorkers()
            calls = OutboundCalls(
                store,
                sup,  # type: ignore[arg-type]
                object(),  # type: ignore[arg-type]
                {},
                "/nonexistent.sock",
                tls_unavailable=tls_trunks_unavailable(front_tls),
            )
            with pytest.raises(FailedPrecondition, match="TLS trunks need") as err:
                await calls.create(req)
            assert err.value.twirp_code == "failed_precondition"
            assert sup.picked == 0
        # With a TLS front the same request gets past the check (to the worker pick).
        sup = NoWorkers()
        calls = OutboundCalls(store, sup, object(), {}, "/x.sock")  # type: ignore[arg-type]
        with pytest.raises(Exception, match="no bridge worker"):
            await calls.create(req)
        assert sup.picked == 1
        plan = plan_call(req, store)
        assert plan.to_uri == "sip:+15557770001@carrier.example;transport=tls"
    finally:
        store.close()


def test_ringing_tone_cadence() -> None:
    import numpy as np

    from bridge.worker.endpoint import BRIDGE_CLOCK_RATE as SAMPLE_RATE
    from bridge.worker.outbound import _ToneCache
    from roomline.wire import FRAME_MS
    from roomline_harness.audio import dominant_frequency

    frames_per_s = 1000 // FRAME_MS  # frames at the bridge port's rate (16 kHz)
    assert len(_ToneCache.get(0)) == 2 * SAMPLE_RATE * FRAME_MS // 1000
    on = np.frombuffer(b"".join(_ToneCache.get(i) for i in range(frames_per_s)), dtype=np.int16)
    off = np.frombuffer(
        b"".join(_ToneCache.get(i) for i in range(frames_per_s, 4 * frames_per_s)), dtype=np.int16
    )
    assert abs(dominant_frequency(on, SAMPLE_RATE) - 425.0) < 2
    assert not off.any()
    assert _ToneCache.get(5 * frames_per_s) == _ToneCache.get(0)  # 5 s period


def test_transfer_tone_replaces_room_mix() -> None:
    """While a play_dialtone transfer runs, the phone's frame (produced on the bridge clock
    thread) is the ringing tone at the port's rate; the room's audio is drained, not queued."""
    from bridge.worker.endpoint import BRIDGE_CLOCK_RATE
    from bridge.worker.outbound import OutboundLeg, _ToneCache
    from bridge.worker.room_leg import RoomLegEvents
    from roomline.wire import FRAME_MS

    events = RoomLegEvents(
        joined=lambda: None, audio=lambda: None, left=lambda r: None, dtmf=lambda d: None
    )
    leg = OutboundLeg(events, identity="x", request_id=1)
    assert leg.rate == BRIDGE_CLOCK_RATE
    silence = bytes(2 * BRIDGE_CLOCK_RATE * FRAME_MS // 1000)
    assert leg.produce() == silence
    n = iter(range(100))
    leg.tone = lambda: _ToneCache.get(next(n))
    before = leg.mixer.frames_out
    assert leg.produce() == _ToneCache.get(0)
    assert leg.produce() == _ToneCache.get(1)
    assert leg.mixer.frames_out == before + 2  # the room mix still advanced (muted)
    leg.tone = None
    assert leg.produce() == silence

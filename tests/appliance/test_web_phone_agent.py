"""The built-in page in a room with a real phone caller and an in-appliance agent.

Headless Chromium joins ``lobby`` first; then a pjsua2 test phone dials a number whose direct
dispatch rule names the ``ivr`` agent, so the agent is started in the (already existing) room. The
page must show a phone badge with the caller's number and a bot badge with ``lk.agent.state``, and
must hear the agent's greeting. The screenshot is kept in ``artifacts/web-phone-agent.png``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roomline_harness.net import free_port, free_udp_range
from roomline_harness.paths import ROOT
from roomline_harness.server import start_server, stop_server
from roomline_harness.sip.peers import run_phone
from roomline_harness.sip.sipp import SIPP
from roomline_harness.web.browser import Browser, missing_requirements

NUMBER = "+15550900"
CALLER = "+15551112222"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.skipif(SIPP is None, reason="SIP test tools not installed (run .ci/setup --test)"),
]


@pytest.mark.timeout(240)
async def test_page_shows_phone_and_bot_and_hears_the_agent(tmp_path: Path) -> None:
    sip_port = free_port()
    rtp_start, rtp_end = free_udp_range(40)
    (tmp_path / "srv").mkdir()
    server = start_server(
        tmp_path / "srv",
        sip={
            "enabled": True,
            "bind_address": "127.0.0.1",
            "workers": [
                {"sip_port": sip_port, "rtp_port_start": rtp_start, "rtp_port_end": rtp_end}
            ],
            "trunks": [{"name": "lan", "allowed_addresses": ["127.0.0.1"], "numbers": [NUMBER]}],
            "dispatch_rules": [
                {
                    "name": "lobby",
                    "rule": {"dispatch_rule_direct": {"room_name": "lobby"}},
                    "room_config": {"agents": [{"agent_name": "ivr"}]},
                }
            ],
        },
        agents={"workers": 1},
    )
    browser = await Browser.launch(tmp_path / "chromium-profile")
    phone: asyncio.Task[list[dict[str, object]]] | None = None
    try:
        assert await browser.goto(server.http_url + "/") == 200
        await browser.fill("#room", "lobby")
        await browser.fill("#identity", "web-visitor")
        await browser.click("#join")
        await browser.wait("window.roomline.connected || window.roomline.error", 30)
        assert await browser.eval("window.roomline.error") is None

        phone_rtp, _ = free_udp_range(20)
        phone = asyncio.create_task(
            run_phone(
                [
                    "--dest",
                    f"sip:{NUMBER}@127.0.0.1:{sip_port}",
                    "--port",
                    str(free_port()),
                    "--rtp-start",
                    str(phone_rtp),
                    "--caller",
                    CALLER,
                    "--duration",
                    "25",
                    "--workdir",
                    str(tmp_path),
                ],
                timeout=60,
            )
        )
        # Both badges, with the caller's number and the agent's state.
        await browser.wait(
            "window.roomline.participants.some(p => p.kind === 'sip') &&"
            " window.roomline.participants.some(p => p.kind === 'agent')",
            40,
        )
        people = await browser.eval("window.roomline.participants")
        sip = next(p for p in people if p["kind"] == "sip")
        agent = next(p for p in people if p["kind"] == "agent")
        assert sip["identity"] == f"sip_{CALLER}"
        assert sip["attributes"]["sip.phoneNumber"] == CALLER
        assert agent["attributes"].get("lk.agent.state") in (
            "initializing",
            "listening",
            "thinking",
            "speaking",
        )
        badges = await browser.eval(
            "[...document.querySelectorAll('.badge')].map(b => b.dataset.kind)"
        )
        assert "sip" in badges and "agent" in badges
        # The browser hears the agent (its spoken greeting or tone prompts): audio level > 0.
        level = await browser.wait(
            "window.roomline.remoteAudioLevel() > 0.01 && window.roomline.remoteAudioLevel()", 40
        )
        assert level > 0.01
        # The IVR serves the phone caller, not the web user who was in the room first.
        await browser.wait(
            "window.roomline.participants.find(p => p.kind === 'agent')"
            f".attributes['ivr.caller'] === 'sip_{CALLER}'",
            15,
        )
        artifacts = ROOT / "artifacts"
        artifacts.mkdir(exist_ok=True)
        await browser.screenshot(artifacts / "web-phone-agent.png")
        assert (artifacts / "web-phone-agent.png").stat().st_size > 10_000
    finally:
        await browser.close()
        if phone is not None:
            phone.cancel()
        stop_server(server)

"""livekit-client's ``isSpeaking`` on the built-in page turns true for a talking phone caller.

The bridge worker sends each frame's RFC 6464 level with the caller's Opus packets; the SFU's
speaker detection turns them into ``speakers_changed`` for every subscriber. Headless Chromium on
the built-in page must see it through livekit-client itself (``participant.isSpeaking``, exposed
as ``serverSpeaking``, not the page's own WebAudio level), while a pjsua2 phone plays a tone, and
must see it end after the tone stops (the phone stays in the call, silent).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import start_server, stop_server
from roomline_harness.sip.peers import run_phone
from roomline_harness.web.browser import Browser, missing_requirements

NUMBER = "+15550901"
CALLER = "+15551113333"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]

SIP_SPEAKING = (
    "window.roomline.participants.some(p => p.kind === 'sip' && p.identity === 'sip_{caller}'"
    " && p.serverSpeaking)"
)


@pytest.mark.timeout(180)
async def test_phone_caller_is_speaking_on_the_page(tmp_path: Path) -> None:
    sip_port = free_port()
    rtp_start, rtp_end = free_udp_range(20)
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
                {"name": "talk", "rule": {"dispatch_rule_direct": {"room_name": "talk"}}}
            ],
        },
    )
    browser = await Browser.launch(tmp_path / "chromium-profile")
    phone: asyncio.Task[list[dict[str, object]]] | None = None
    try:
        assert await browser.goto(server.http_url + "/") == 200
        await browser.fill("#room", "talk")
        await browser.fill("#identity", "web-listener")
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
                    "--tone",
                    "1000",
                    "--tone-seconds",
                    "8",
                    "--duration",
                    "40",
                    "--workdir",
                    str(tmp_path),
                ],
                timeout=90,
            )
        )
        # The caller joins, talks (the tone), and livekit-client marks it as speaking.
        assert await browser.wait(SIP_SPEAKING.format(caller=CALLER), 40)
        # After the tone the phone is silent: the server's speaker update clears isSpeaking.
        await browser.wait(
            "window.roomline.participants.some(p => p.kind === 'sip' && !p.serverSpeaking)", 40
        )
        sip = next(
            p for p in await browser.eval("window.roomline.participants") if p["kind"] == "sip"
        )
        assert sip["identity"] == f"sip_{CALLER}" and sip["serverSpeaking"] is False
    finally:
        await browser.close()
        if phone is not None:
            phone.cancel()
        stop_server(server)

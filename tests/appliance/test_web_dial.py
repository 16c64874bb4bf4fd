"""The built-in page's "Dial out" field (dev mode): headless Chromium joins a room, picks an
outbound trunk, dials a number, and the call reaches a SIPp callee.

The page lists the trunks and places the call through the SIP Twirp API with the ``sip_token``
that ``/dev/token`` hands out in dev mode. The SIPp callee answers with a 1 kHz PCMU tone, which
the page must hear (its analyser's peak); the callee shows up with a phone badge and
``sip.callStatus=active``. A second dial, through the other trunk to a callee that answers 486,
reaches that callee and leaves nobody in the room.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest
from livekit import api

from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import API_KEY, API_SECRET, start_server, stop_server
from roomline_harness.sip.pcap import write_tone_pcap
from roomline_harness.sip.sipp import SIPP
from roomline_harness.sip.sipp_uas import uas_cmd, uas_scenario
from roomline_harness.web.browser import Browser, missing_requirements

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.skipif(SIPP is None, reason="SIP test tools not installed (run .ci/setup --test)"),
]

NUMBER = "+15557774001"


async def _sipp(scenario: Path, port: int) -> asyncio.subprocess.Process:
    media, _ = free_udp_range(4)
    proc = await asyncio.create_subprocess_exec(
        *uas_cmd(scenario, local_port=port, media_port=media, timeout_s=60),
        cwd=str(scenario.parent),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    await asyncio.sleep(0.3)
    return proc


@pytest.mark.timeout(120)
async def test_page_dials_a_number_into_the_room(tmp_path: Path) -> None:
    rtp_start, rtp_end = free_udp_range(40)
    (tmp_path / "srv").mkdir()
    server = start_server(
        tmp_path / "srv",
        sip={
            "enabled": True,
            "bind_address": "127.0.0.1",
            "workers": [
                {"sip_port": free_port(), "rtp_port_start": rtp_start, "rtp_port_end": rtp_end}
            ],
        },
    )
    ok_dir, busy_dir = tmp_path / "ok", tmp_path / "busy"
    ok_dir.mkdir()
    busy_dir.mkdir()
    write_tone_pcap(ok_dir / "tone.pcap", 1000.0, 20.0)
    ok_port, busy_port = free_port(), free_port()
    ok = await _sipp(
        uas_scenario(ok_dir / "uas.xml", provisional=180, ring_ms=300, pcap="tone.pcap"), ok_port
    )
    busy = await _sipp(uas_scenario(busy_dir / "uas.xml", provisional=None, final=486), busy_port)
    browser: Browser | None = None
    try:
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            trunk = await lk.sip.create_outbound_trunk(
                api.CreateSIPOutboundTrunkRequest(
                    trunk=api.SIPOutboundTrunkInfo(
                        name="sipp", address=f"127.0.0.1:{ok_port}", numbers=["+15550005000"]
                    )
                )
            )
            busy_trunk = await lk.sip.create_outbound_trunk(
                api.CreateSIPOutboundTrunkRequest(
                    trunk=api.SIPOutboundTrunkInfo(
                        name="busy", address=f"127.0.0.1:{busy_port}", numbers=["+15550005001"]
                    )
                )
            )
        browser = await Browser.launch(tmp_path / "chromium-profile")
        assert await browser.goto(server.http_url + "/") == 200
        await browser.fill("#room", "dialroom")
        await browser.fill("#identity", "web-dialer")
        await browser.click("#join")
        await browser.wait("window.roomline.connected || window.roomline.error", 30)
        assert await browser.eval("window.roomline.error") is None
        await browser.wait("window.roomline.trunks.length === 2", 15)
        assert not await browser.eval("document.getElementById('dial-form').hidden")

        await browser.call(
            "eval",
            expression=(
                f"(document.getElementById('dial-trunk').value = '{trunk.sip_trunk_id}', true)"
            ),
        )
        await browser.fill("#dial-number", NUMBER)
        await browser.click("#dial")
        dial = await browser.wait(
            "window.roomline.dial && window.roomline.dial.status !== 'calling'"
            " && window.roomline.dial",
            20,
        )
        assert dial["status"] == "ok" and dial["identity"] == f"sip_{NUMBER}", dial
        await browser.wait(
            "window.roomline.participants.some(p => p.kind === 'sip'"
            " && p.attributes['sip.callStatus'] === 'active')",
            20,
        )
        # The page hears the callee's 1 kHz tone.
        await browser.wait(
            "window.roomline.remoteAudioLevel() > 0.01 && window.roomline.remoteAudioPeakHz()", 20
        )
        # The median of five readings 0.2 s apart: the first reading can fall on the tone's
        # onset, whose smeared spectrum once put the analyser's peak at 979 Hz.
        readings = []
        for _ in range(5):
            await asyncio.sleep(0.2)
            readings.append(float(await browser.eval("window.roomline.remoteAudioPeakHz()")))
        peak = statistics.median(readings)
        print(f"page hears the callee at {peak:.1f} Hz (readings {readings})")
        assert abs(peak - 1000.0) < 15, peak
        badges = await browser.eval(
            "[...document.querySelectorAll('.badge')].map(b => b.dataset.kind)"
        )
        assert "sip" in badges

        # A busy callee through the other trunk: the RPC returns once the callee is in the
        # room ("dialing"); the 486 then takes it out of the room again.
        await browser.call(
            "eval",
            expression=(
                f"(document.getElementById('dial-trunk').value = '{busy_trunk.sip_trunk_id}', true)"
            ),
        )
        await browser.fill("#dial-number", "+15557774002")
        await browser.click("#dial")
        dial = await browser.wait(
            "window.roomline.dial && window.roomline.dial.status !== 'calling'"
            " && window.roomline.dial.text.includes('4002') && window.roomline.dial",
            20,
        )
        assert dial["status"] == "ok", dial
        out, _ = await asyncio.wait_for(busy.communicate(), 20)
        assert busy.returncode == 0, out.decode(errors="replace")[-3000:]
        await browser.wait(
            "!window.roomline.participants.some(p => p.identity === 'sip_+15557774002')", 20
        )
        # Hang up the first call through the API: roomline sends the BYE SIPp waits for.
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room="dialroom", identity=f"sip_{NUMBER}")
            )
        out, _ = await asyncio.wait_for(ok.communicate(), 20)
        assert ok.returncode == 0, out.decode(errors="replace")[-3000:]
        msgs = (ok_dir / "msgs.log").read_text(errors="replace")
        assert f"INVITE sip:{NUMBER}@127.0.0.1:{ok_port}" in msgs
    finally:
        if browser is not None:
            await browser.close()
        for proc in (ok, busy):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stop_server(server)

"""The built-in web page: headless Chromium joins with livekit-client next to a Python SDK client.

Real parts only: a ``roomline serve`` process, Debian's Chromium driven by playwright-core
(``roomline_harness/web/driver.js``) with Chromium's fake microphone and camera, and the ``livekit`` Python SDK.
Audio is checked by content: the SDK's FFT of the browser's fake-microphone beep, and the page's own
WebAudio analyser (level and spectral peak) on the SDK's 440 Hz tone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from aiohttp import web
from livekit import api, rtc

from roomline.auth import verify_token
from roomline.config import DEV_KEYS, Config
from roomline_harness.lk import record, tone_publisher
from roomline_harness.paths import ROOT
from roomline_harness.server import API_KEY, API_SECRET, Server, start_server, stop_server
from roomline_harness.web.browser import Browser, missing_requirements
from sfu.service.web import WebService

RATE = 48000
#: Chromium's fake microphone (--use-fake-device-for-media-stream) beeps: ~50 ms bursts of a 400 Hz
#: square wave every 500 ms. Measured through Opus and the SFU: peak 398-400 Hz, ~70 dB above the
#: spectral median, odd harmonics (1200, 2000 Hz) strong, even ones (800 Hz) ~20 dB below them.
FAKE_MIC_HZ = 400.0
TONE_HZ = 440.0
SCREENSHOT = ROOT / "artifacts" / "web-join.png"

browser_required = pytest.mark.skipif(
    missing_requirements() is not None, reason=missing_requirements() or ""
)


# ------------------------------------------------------------------------------------------ helpers


def http_get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def dev_token_url(server: Server, **params: str) -> str:
    return f"{server.http_url}/dev/token?{urllib.parse.urlencode(params)}"


def sdk_token(
    identity: str,
    room: str,
    kind: Literal["standard", "sip", "agent"] = "agent",
    name: str = "Py Bot",
    attributes: dict[str, str] | None = None,
) -> str:
    """A token for a Python SDK client: publish, subscribe, update own attributes."""
    token = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(name)
        .with_kind(kind)
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room,
                can_publish=True,
                can_subscribe=True,
                can_update_own_metadata=True,
            )
        )
    )
    if attributes:
        token = token.with_attributes(attributes)
    return token.to_jwt()


def remote_track(room: rtc.Room, identity: str, kind: rtc.TrackKind.ValueType) -> rtc.Track | None:
    participant = room.remote_participants.get(identity)
    if participant is None:
        return None
    for pub in participant.track_publications.values():
        if pub.kind == kind and pub.track is not None:
            return pub.track
    return None


async def first_video_frame(track: rtc.Track, skip: int = 5) -> rtc.VideoFrame:
    """An RGBA frame from ``track`` (the first few are skipped: the decoder may start grey)."""
    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA)
    try:
        n = 0
        async for ev in stream:
            n += 1
            if n > skip:
                return ev.frame
    finally:
        await stream.aclose()
    raise AssertionError("video stream ended")


def beep_spectrum(pcm: np.ndarray) -> tuple[float, float, float]:
    """(beep Hz, peak over median spectral floor in dB, fundamental over 2nd harmonic in dB).

    Only the loudest beeps are analysed: once the page plays remote audio, Chromium's echo canceller
    and noise suppressor attenuate later beeps and tilt them towards their odd harmonics, and the
    silence between beeps carries no information. The frequency is the median over single beeps, each
    zero-padded to a 1 Hz grid (a concatenation of ~50 ms bursts has phase jumps that smear the peak).
    """
    frames = pcm[: len(pcm) // 480 * 480].astype(np.float64).reshape(-1, 480)
    env = np.sqrt(np.mean(frames**2, axis=1))
    assert env.max() > 300, f"no beep in the browser's audio (max 10 ms RMS {env.max():.0f})"
    loud = env > 0.1 * env.max()
    edges = np.flatnonzero(np.diff(np.concatenate(([0], loud.astype(int), [0]))))
    bursts = [
        frames[first:last].reshape(-1)
        for first, last in zip(edges[::2], edges[1::2], strict=True)
        if last - first >= 2 and env[first:last].max() >= 0.7 * env.max()
    ]
    assert bursts, "no beep long enough to analyse"

    peaks = []
    for burst in bursts:
        spectrum = np.abs(np.fft.rfft((burst - burst.mean()) * np.hanning(len(burst)), n=RATE))
        spectrum[:150] = 0.0  # 1 Hz bins: nothing of interest below 150 Hz (DC, onset thump)
        peaks.append(float(np.argmax(spectrum)))
    peak = float(np.median(peaks))

    x = np.concatenate(bursts)
    x = x - x.mean()
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / RATE)
    power[freqs < 150] = 0.0
    floor_db = 10 * np.log10(power.max() / np.median(power[freqs >= 150]))

    def band(f: float) -> float:
        return float(power[np.abs(freqs - f) <= 30].sum())

    harmonic_db = 10 * np.log10(band(peak) / max(band(2 * peak), 1e-30))
    return peak, float(floor_db), float(harmonic_db)


async def until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def remote_audio(room: rtc.Room, identity: str) -> rtc.Track | None:
    return remote_track(room, identity, rtc.TrackKind.KIND_AUDIO)


@contextlib.asynccontextmanager
async def sip_caller(server: Server, room_name: str) -> AsyncIterator[rtc.Room]:
    """A participant of kind SIP (as the SIP bridge creates them), here simply an SDK client."""
    room = rtc.Room()
    token = sdk_token(
        "sip-caller",
        room_name,
        kind="sip",
        name="Caller",
        attributes={"sip.phoneNumber": "+15550100"},
    )
    await asyncio.wait_for(room.connect(server.ws_url, token), 20)
    try:
        yield room
    finally:
        await room.disconnect()


async def diagnostics(browser: Browser, server: Server | None) -> str:
    """Browser console and server log tail, for failure messages."""
    parts = []
    with contextlib.suppress(Exception):
        parts.append("--- browser console ---\n" + "\n".join(await browser.console()))
    if server is not None:
        parts.append("--- roomline.log (tail) ---\n" + server.log_text()[-8000:])
    return "\n".join(parts)


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv")
    yield srv
    stop_server(srv)


# ------------------------------------------------------------------------------------------ browser


@browser_required
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_browser_joins_hears_and_lists_python_agent(
    dev_server: Server, tmp_path: Path
) -> None:
    room_name = "web-test"
    browser = await Browser.launch(tmp_path / "chromium-profile")
    sdk = rtc.Room()
    try:
        try:
            assert await browser.goto(dev_server.http_url + "/") == 200
            # The URL field defaults to the page's own origin.
            assert await browser.eval("document.getElementById('url').value") == dev_server.ws_url
            await browser.fill("#room", room_name)
            await browser.fill("#identity", "web-alice")
            await browser.fill("#name", "Alice")
            await browser.click("#join")
            await browser.wait("window.roomline.connected || window.roomline.error", 30)
            assert await browser.eval("window.roomline.error") is None
            # Microphone and camera are published.
            await browser.wait(
                "window.roomline.participants.find(p => p.local).tracks.length === 2", 20
            )

            await asyncio.wait_for(
                sdk.connect(dev_server.ws_url, sdk_token("py-bot", room_name)), 20
            )
            async with tone_publisher(sdk, TONE_HZ):
                # (a) The SDK client hears the browser's fake microphone: a clear beep tone.
                await until(
                    lambda: remote_audio(sdk, "web-alice") is not None, 20, "browser audio track"
                )
                track = remote_audio(sdk, "web-alice")
                assert track is not None
                pcm = await asyncio.wait_for(record(track, 3.0, skip=1.0), 30)
                peak_hz, floor_db, harmonic_db = beep_spectrum(pcm)
                print(
                    f"browser mic at the SDK: peak {peak_hz:.1f} Hz, {floor_db:.1f} dB over the"
                    f" floor, {harmonic_db:.1f} dB over the 2nd harmonic"
                )
                assert abs(peak_hz - FAKE_MIC_HZ) < 10, peak_hz
                assert floor_db > 40, floor_db
                assert harmonic_db > 10, harmonic_db

                # The SDK also receives the browser's fake camera: a green test pattern.
                await until(
                    lambda: remote_track(sdk, "web-alice", rtc.TrackKind.KIND_VIDEO) is not None,
                    20,
                    "browser video track",
                )
                video = remote_track(sdk, "web-alice", rtc.TrackKind.KIND_VIDEO)
                assert video is not None
                frame = await asyncio.wait_for(first_video_frame(video), 30)
                rgba = np.frombuffer(frame.data, dtype=np.uint8).reshape(-1, 4).astype(float)
                r, g, b = rgba[:, :3].mean(axis=0)
                print(
                    f"browser camera at the SDK: {frame.width}x{frame.height}, mean RGB {r:.0f} {g:.0f} {b:.0f}"
                )
                assert frame.width >= 160 and frame.height >= 120
                assert g > 2 * r and g > 2 * b and g > 60, (r, g, b)

                # (b) The browser hears the SDK's 440 Hz tone (WebAudio analyser and getStats).
                level = await browser.wait(
                    "window.roomline.remoteAudioLevel() > 0.01 && window.roomline.remoteAudioLevel()",
                    20,
                )
                browser_hz = await browser.eval("window.roomline.remoteAudioPeakHz()")
                stats = await browser.eval("window.roomline.inboundAudioStats()")
                print(
                    f"SDK tone in the browser: RMS {level:.3f}, peak {browser_hz:.1f} Hz, {stats}"
                )
                assert abs(browser_hz - TONE_HZ) < 15, browser_hz
                assert stats["packetsReceived"] > 0
                assert stats["audioLevel"] > 0

                # (c) The participant list shows the SDK client with a bot badge ...
                badge = "document.querySelector('li[data-identity=\"py-bot\"] .badge')"
                await browser.wait(f"{badge} && {badge}.textContent === 'bot'", 15)
                entry = await browser.eval(
                    "window.roomline.participants.find(p => p.identity === 'py-bot')"
                )
                assert entry["kind"] == "agent"
                assert entry["name"] == "Py Bot"
                # ... and attributes set by it appear live (twice, to see an update, not a snapshot).
                item = "document.querySelector('li[data-identity=\"py-bot\"]')"
                for state in ("listening", "speaking"):
                    await sdk.local_participant.set_attributes(
                        {"lk.agent.state": state, "color": f"blue-{state}"}
                    )
                    await browser.wait(
                        f"{item}.querySelector('.agent-state').textContent"
                        f" === 'agent state: {state}'",
                        15,
                    )
                    await browser.wait(f"{item}.textContent.includes('blue-{state}')", 15)
                entry = await browser.eval(
                    "window.roomline.participants.find(p => p.identity === 'py-bot')"
                )
                assert entry["attributes"] == {
                    "lk.agent.state": "speaking",
                    "color": "blue-speaking",
                }
                # A SIP caller gets a phone badge and its number.
                async with sip_caller(dev_server, room_name) as _:
                    phone = "document.querySelector('li[data-identity=\"sip-caller\"]')"
                    await browser.wait(
                        f"{phone} && {phone}.querySelector('.badge').textContent === 'phone'", 15
                    )
                    assert (
                        await browser.eval(f"{phone}.querySelector('.sip-number').textContent")
                        == "phone: +15550100"
                    )
                # The browser's own entry is a person.
                assert (
                    await browser.eval(
                        "document.querySelector('li[data-identity=\"web-alice\"] .badge').textContent"
                    )
                    == "person"
                )

                await browser.screenshot(SCREENSHOT)

                # The mute button mutes the published microphone, and the SDK client sees it.
                await browser.click("#toggle-mic")
                await browser.wait(
                    "window.roomline.participants.find(p => p.local).tracks"
                    ".find(t => t.kind === 'audio').muted",
                    10,
                )
                alice = sdk.remote_participants["web-alice"]
                await until(
                    lambda: any(
                        p.muted
                        for p in alice.track_publications.values()
                        if p.kind == rtc.TrackKind.KIND_AUDIO
                    ),
                    10,
                    "mute seen by the SDK",
                )
                assert await browser.eval("document.getElementById('toggle-mic').textContent") == (
                    "Unmute microphone"
                )
        except BaseException:
            print(await diagnostics(browser, dev_server))
            raise
        assert dev_server.alive()
    finally:
        await sdk.disconnect()
        await browser.close()


@browser_required
@pytest.mark.timeout(60)
async def test_page_without_vendor_bundle_says_run_setup(tmp_path: Path) -> None:
    """Without sfu/web/vendor the page still loads and tells the operator what to run."""
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    for name in ("index.html", "app.js", "style.css"):
        (web_dir / name).write_bytes((ROOT / "sfu" / "web" / name).read_bytes())
    app = web.Application()
    app.router.add_routes(WebService(Config(), web_dir=web_dir).routes())
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    browser = await Browser.launch(tmp_path / "chromium-profile")
    try:
        assert await browser.goto(f"http://127.0.0.1:{port}/") == 200
        message = await browser.wait("document.getElementById('error').textContent", 10)
        assert message == "livekit-client is not installed: run .ci/setup"
        assert await browser.eval("document.getElementById('join').disabled") is True
    finally:
        await browser.close()
        await runner.cleanup()


# ------------------------------------------------------------------------------------------ HTTP


def test_page_and_static_files(server: Server) -> None:
    status, body, headers = http_get(server.http_url + "/")
    assert status == 200
    assert b"/vendor/livekit-client.umd.js" in body
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        status, _, headers = http_get(f"{server.http_url}/static/{name}")
        assert status == 200 and ctype in headers["Content-Type"], name
    # Only the page's own files are served; nothing else from the package directory.
    for path in (
        "/static/copy-vendor.js",
        "/static/index.html",
        "/static/..%2Fweb.py",
        "/vendor/x",
    ):
        assert http_get(server.http_url + path)[0] == 404, path


def test_dev_token_mints_a_join_token(server: Server) -> None:
    status, body, headers = http_get(
        dev_token_url(server, room="r-1", identity="alice@example.com", name="Alice A.")
    )
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    claims = verify_token(json.loads(body)["token"], DEV_KEYS)
    assert claims.identity == "alice@example.com"
    assert claims.name == "Alice A."
    video = claims.video
    assert (video.room_join, video.room) == (True, "r-1")
    assert video.can_publish and video.can_subscribe and video.can_publish_data
    assert video.can_update_own_metadata
    assert not video.room_admin
    assert not (claims.sip and (claims.sip.admin or claims.sip.call))
    # The page's dial-out field: an API token with the SIP grants and no room.
    sip = verify_token(json.loads(body)["sip_token"], DEV_KEYS)
    assert sip.sip is not None and sip.sip.admin and sip.sip.call
    assert not sip.video.room_join and not sip.video.room_admin


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"identity": "alice"}, "room is required"),
        ({"room": "r", "identity": ""}, "identity is required"),
        (
            {"room": "r", "identity": "a" * 5000},
            "identity is too long (5000 characters, at most 256)",
        ),
        ({"room": "r" * 300, "identity": "a"}, "room is too long (300 characters, at most 256)"),
        ({"room": "r 1", "identity": "a"}, "room may only contain letters, digits"),
        ({"room": "r", "identity": "<script>"}, "identity may only contain letters, digits"),
        ({"room": "r", "identity": "a", "name": "x\x00y"}, "name must not contain control"),
        ({"room": "r", "identity": "a", "name": "n" * 300}, "name is too long"),
    ],
)
def test_dev_token_invalid(server: Server, params: dict[str, str], message: str) -> None:
    status, body, _ = http_get(dev_token_url(server, **params))
    assert status == 400
    assert json.loads(body)["error"].startswith(message)
    # The server keeps serving others.
    assert http_get(dev_token_url(server, room="ok", identity="ok"))[0] == 200


def test_dev_token_is_404_with_real_keys(tmp_path: Path) -> None:
    srv = start_server(tmp_path, keys={"prodkey": "a-long-secret-value-123"})
    try:
        status, body, _ = http_get(dev_token_url(srv, room="r", identity="alice"))
        assert status == 404
        assert b"token" not in body.lower()
        # The page itself is still there (it asks for a pasted token instead).
        assert http_get(srv.http_url + "/")[0] == 200
    finally:
        stop_server(srv)
    assert "dev token issued" not in srv.log_text()

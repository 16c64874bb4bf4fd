"""The real ``roomline`` console script, run as a subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from roomline.auth import verify_token
from roomline.config import DEV_KEYS

ROOMLINE = Path(sys.executable).parent / "roomline"
pytestmark = pytest.mark.skipif(
    not ROOMLINE.exists(), reason="roomline console script not installed (pip install -e .)"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMLINE_")}
    env.update(extra)
    return env


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOMLINE), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=cwd,
        timeout=60,
    )


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("roomline ")


def test_token_verifies_with_dev_key() -> None:
    proc = run(
        "token",
        "--room",
        "demo",
        "--identity",
        "bot",
        "--name",
        "Bot",
        "--kind",
        "agent",
        "--ttl",
        "30m",
        "--metadata",
        "m",
        "--attribute",
        "lang=fr",
        "--attribute",
        "x=a=b",
    )
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    claims = verify_token(token, DEV_KEYS)
    assert claims.identity == "bot" and claims.name == "Bot" and claims.kind_name == "agent"
    assert claims.video.room == "demo" and claims.video.room_join and not claims.video.room_admin
    assert claims.attributes == {"lang": "fr", "x": "a=b"} and claims.metadata == "m"
    assert 1700 < claims.expires_at - time.time() <= 1800


def test_token_admin_uses_first_configured_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("keys:\n  first: first-secret-0123\n  second: second-secret-0123\n")
    proc = run("token", "--identity", "ops", "--admin", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    claims = verify_token(proc.stdout.strip(), {"first": "first-secret-0123"})
    assert claims.api_key == "first" and claims.video.room_admin and claims.sip.admin
    # Environment keys replace the file's.
    proc = run(
        "token",
        "--identity",
        "a",
        "--room",
        "r",
        env=clean_env(ROOMLINE_KEYS="envkey=env-secret-0123"),
    )
    assert verify_token(proc.stdout.strip(), {"envkey": "env-secret-0123"}).api_key == "envkey"


def test_token_usage_errors() -> None:
    proc = run("token", "--identity", "x")
    assert proc.returncode == 2 and "--room is required" in proc.stderr
    proc = run("token", "--identity", "x", "--room", "r", "--ttl", "forever")
    assert proc.returncode == 2 and "--ttl" in proc.stderr
    proc = run("token", "--identity", "x", "--room", "r", "--attribute", "novalue")
    assert proc.returncode == 2 and "key=value" in proc.stderr


def test_config_check_prints_redacted(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("keys: {prod: super-secret-value-42}\nserver: {port: 7999}\n")
    proc = run("config", "check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "super-secret-value-42" not in proc.stdout
    assert proc.stdout.startswith(f"# {cfg}: OK")
    assert "port: 7999" in proc.stdout and "prod: '***'" in proc.stdout


@pytest.mark.parametrize(
    "command", [["serve"], ["config", "check"], ["token", "--identity", "i", "--room", "r"]]
)
def test_bad_config_exits_2_naming_key_and_file(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 7880\n  listen_backlog: 5\n")
    proc = run(*command, "--config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"roomline: error: {bad}: server.listen_backlog: unknown key")
    assert "Traceback" not in proc.stderr


def test_bad_env_and_missing_file() -> None:
    proc = run("serve", env=clean_env(ROOMLINE_RTC_PORT_RANGE_START="abc"))
    assert proc.returncode == 2
    assert "ROOMLINE_RTC_PORT_RANGE_START: rtc.port_range_start: expected int" in proc.stderr
    proc = run("serve", env=clean_env(ROOMLINE_CONFIG="/nonexistent/roomline.yaml"))
    assert proc.returncode == 2 and "/nonexistent/roomline.yaml: cannot read" in proc.stderr


def read_event(proc: subprocess.Popen[str], event: str, timeout: float) -> tuple[dict, list[str]]:
    """Read stderr lines until the JSON log event ``event``; returns it and the lines read."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if not ready:
            continue
        line = proc.stderr.readline()
        if not line:  # the process exited
            break
        lines.append(line)
        if line.startswith("{") and json.loads(line).get("event") == event:
            return json.loads(line), lines
    raise AssertionError(f"no {event!r} event within {timeout} s:\n{''.join(lines)}")


def test_serve_on_port_0_reports_the_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    port_file = tmp_path / "port"
    cfg.write_text("sip: {enabled: false}\nagents: {workers: 0}\n")
    proc = subprocess.Popen(
        [
            str(ROOMLINE),
            "serve",
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--data-dir",
            str(tmp_path / "data"),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        listening, lines = read_event(proc, "roomline listening", 30)
        port = listening["port"]
        assert isinstance(port, int) and port > 0, listening
        deadline = time.monotonic() + 10  # written right after start-up completes
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_file.read_text() == f"{port}\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.read().startswith(b"ok")
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    loaded = next(e for e in events if e["event"] == "config loaded")
    assert loaded["listen"] == "127.0.0.1:0" and loaded["source"] == str(cfg)
    assert not port_file.exists()  # removed on the way out
    assert any(e["level"] == "warning" and "dev mode" in e["event"] for e in events)
    assert ': "secret"' not in err  # the dev secret's value is never printed

"""structlog setup: JSON lines, bound context, stdlib routing and secret redaction."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from roomline.auth import mint_token
from roomline.config import LoggingConfig
from roomline.log import (
    REDACTED,
    configure_logging,
    configure_worker_logging,
    get_logger,
    redact_secrets,
)

TOKEN = mint_token("devkey", "secret", identity="alice", room="r")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_with_context_when_not_a_tty() -> None:
    out = io.StringIO()
    configure_logging(LoggingConfig(level="info", format="auto"), stream=out)
    log = get_logger("sfu.room")
    structlog.contextvars.bind_contextvars(room="demo", participant="alice", call_id="SCL_1")
    log.info("participant joined", tracks=2)
    log.debug("not shown at info")
    (entry,) = lines(out)
    assert entry["event"] == "participant joined" and entry["tracks"] == 2
    assert entry["room"] == "demo" and entry["participant"] == "alice"
    assert entry["call_id"] == "SCL_1"
    assert entry["level"] == "info" and entry["logger"] == "sfu.room" and "timestamp" in entry


def test_logger_fetched_before_configure_follows_configuration() -> None:
    log = get_logger("early")
    out = io.StringIO()
    configure_logging(LoggingConfig(level="debug", format="json"), stream=out)
    log.debug("now visible")
    assert lines(out)[0]["event"] == "now visible"


def test_console_renderer_on_tty_and_forced_formats() -> None:
    tty = FakeTTY()
    configure_logging(LoggingConfig(format="auto"), stream=tty)
    get_logger("x").info("hello console", a=1)
    text = tty.getvalue()
    assert "hello console" in text and not text.lstrip().startswith("{")

    forced = FakeTTY()
    configure_logging(LoggingConfig(format="json"), stream=forced)
    get_logger("x").info("forced json")
    assert lines(forced)[0]["event"] == "forced json"

    plain = io.StringIO()
    configure_logging(LoggingConfig(format="console"), stream=plain)
    get_logger("x").info("forced console")
    assert "forced console" in plain.getvalue() and not plain.getvalue().startswith("{")


def test_stdlib_loggers_routed_at_warning() -> None:
    out = io.StringIO()
    configure_logging(LoggingConfig(level="debug", format="json"), stream=out)
    structlog.contextvars.bind_contextvars(room="demo")
    logging.getLogger("aiortc.rtcpeerconnection").info("per-packet noise")
    logging.getLogger("aiohttp.access").debug("noise")
    logging.getLogger("aiortc").warning("ice failed for %s", "pc-1")
    logging.getLogger("sfu.legacy").debug("stdlib debug from our code")
    entries = lines(out)
    assert [e["event"] for e in entries] == ["ice failed for pc-1", "stdlib debug from our code"]
    assert entries[0]["logger"] == "aiortc" and entries[0]["level"] == "warning"
    assert entries[0]["room"] == "demo"


def test_reconfigure_does_not_duplicate_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=first)
    configure_logging(LoggingConfig(format="json"), stream=second)
    logging.getLogger("aiohttp").error("once")
    assert first.getvalue() == "" and len(lines(second)) == 1


def test_redaction_of_secret_fields_and_tokens() -> None:
    out = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=out)
    log = get_logger("sfu.service")
    log.info(
        "request",
        api_secret="s3cr3t-value",
        password="sip-pass-123",
        sip_password="sip-pass-456",
        token=TOKEN,
        authorization=f"Bearer {TOKEN}",
        Authorization="Basic abcdef",
        credential="turn-cred",
        config={"keys": {"devkey": "x"}, "trunk": {"auth_password": "nested-pass"}},
        url=f"/rtc?access_token={TOKEN}&auto_subscribe=1",
        identity="alice",
        empty_secret="",
    )
    logging.getLogger("aiohttp").warning("bad request with %s", TOKEN)
    text = out.getvalue()
    for secret in (
        "s3cr3t-value",
        "sip-pass-123",
        "sip-pass-456",
        TOKEN,
        "abcdef",
        "turn-cred",
        "nested-pass",
        TOKEN.split(".")[2],
    ):
        assert secret not in text
    entry, foreign = lines(out)
    assert entry["api_secret"] == REDACTED and entry["token"] == REDACTED
    assert entry["authorization"] == REDACTED and entry["Authorization"] == REDACTED
    assert entry["config"]["trunk"]["auth_password"] == REDACTED
    assert entry["url"] == "/rtc?access_token=<token redacted>&auto_subscribe=1"
    assert entry["identity"] == "alice" and entry["empty_secret"] == ""
    assert foreign["event"] == "bad request with <token redacted>"


def test_tracebacks_carry_no_locals_or_tokens() -> None:
    for fmt in ("json", "console"):
        out = io.StringIO()
        configure_logging(LoggingConfig(format=fmt), stream=out)

        def fail(secret: str = "hunter2-local") -> None:
            raise ValueError(f"bad token {TOKEN}")

        try:
            fail()
        except ValueError:
            get_logger("x").exception("boom")
        text = out.getvalue()
        assert "ValueError" in text and "boom" in text
        assert "hunter2-local" not in text and TOKEN not in text


def test_redact_processor_directly() -> None:
    event = {"event": "x", "my_token": "abc", "n": 5, "items": [{"password": "p"}], "ok": None}
    out = redact_secrets(None, "info", event)
    assert out == {
        "event": "x",
        "my_token": REDACTED,
        "n": 5,
        "items": [{"password": REDACTED}],
        "ok": None,
    }


def test_worker_logging_is_json_with_process_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMLINE_LOGGING_LEVEL", "warning")
    stream = io.StringIO()
    configure_worker_logging("bridge.worker", stream=stream)
    get_logger("w").info("below the level from the environment")
    get_logger("w").warning("call failed", call_id="c1", token=TOKEN)
    logging.getLogger("pjsua2").error("pj said %s", "no")
    structured, stdlib = lines(stream)
    assert structured["event"] == "call failed" and structured["call_id"] == "c1"
    assert structured["token"] == REDACTED
    assert stdlib["event"] == "pj said no" and stdlib["logger"] == "pjsua2"
    for event in (structured, stdlib):
        assert event["process"] == "bridge.worker" and event["pid"] == os.getpid()

"""Logging: structlog key-value events, one renderer for our events and for stdlib loggers.

Style: ``log = get_logger(__name__)`` then ``log.info("call answered", call_id=..., room=...)``; a
short constant event name and the variable parts as fields, never ``%``-formatted into the text.

Main process (:func:`configure_logging`): JSON lines when stderr is not a terminal (or
``logging.format: json``), a console renderer otherwise. Worker processes (bridge workers, agent
jobs; :func:`configure_worker_logging`) always write JSON lines to stderr, tagged with the process
name and pid; :class:`roomline.process.ProcessSupervisor` reads them and re-emits them through the
main process's setup, so ``roomline serve`` writes one stream in one format.
Context bound with ``structlog.contextvars.bind_contextvars(room=..., participant=..., call_id=...)``
appears on every line. Third-party stdlib loggers (aiohttp, aiortc, aioice, pjsua) are routed through
the same renderer at WARNING so their chatter cannot drown ours. A redaction processor masks any field
named like a secret and any string that looks like a JWT, because secrets must never reach a log.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from roomline.config import LoggingConfig

__all__ = [
    "REDACTED",
    "THIRD_PARTY_LOGGERS",
    "configure_logging",
    "configure_worker_logging",
    "get_logger",
    "redact_secrets",
]

REDACTED = "***"

#: Field names that carry secrets (API secrets, SIP passwords, tokens, HTTP auth headers).
SECRET_FIELD_RE = re.compile(r"secret|passw(or)?d|token|authorization|credential", re.IGNORECASE)
#: A compact JWS (header.payload.signature, base64url, header starting '{"' = "eyJ").
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_JWT_REDACTED = "<token redacted>"
#: How deep nested dicts/lists are searched; log fields are shallow, this bounds the work.
_MAX_DEPTH = 4

#: Libraries whose stdlib loggers are capped at WARNING (debug/info from them is per-packet noise).
THIRD_PARTY_LOGGERS = (
    "aiohttp",
    "aiortc",
    "aioice",
    "pjsua",
    "pjsua2",
    "av",
    "websockets",
    "asyncio",
)

_HANDLER_MARK = "_roomline_handler"


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that remembers the name given to ``structlog.get_logger(name)``."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args else "roomline")


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _JWT_RE.sub(_JWT_REDACTED, value) if "eyJ" in value else value
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and SECRET_FIELD_RE.search(k) and v
                else _redact_value(v, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v, depth + 1) for v in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask fields named like secrets and JWT-looking strings, recursively."""
    for key in list(event_dict):
        value = event_dict[key]
        if SECRET_FIELD_RE.search(key) and value not in (None, "", b""):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value, 0)
    return event_dict


def _scrub_rendered(renderer: Processor) -> Processor:
    """Wrap the final renderer so a JWT is masked even inside rendered tracebacks."""

    def render(logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        line = renderer(logger, method, event_dict)
        if isinstance(line, str) and "eyJ" in line:
            return _JWT_RE.sub(_JWT_REDACTED, line)
        return line

    return render


def _level_number(level: str) -> int:
    return int(logging.getLevelName(level.upper()))


def _use_json(cfg: LoggingConfig, stream: TextIO) -> bool:
    if cfg.format == "json":
        return True
    if cfg.format == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def _add_fields(fields: Mapping[str, Any]) -> Processor:
    """A processor adding constant fields (a worker's process name and pid) unless already set."""
    constant = dict(fields)

    def add(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        for key, value in constant.items():
            event_dict.setdefault(key, value)
        return event_dict

    return add


def configure_logging(
    cfg: LoggingConfig, *, stream: TextIO | None = None, fields: Mapping[str, Any] | None = None
) -> None:
    """Configure structlog and the stdlib root logger. Safe to call again (replaces the setup).

    ``fields`` are added to every event (used by :func:`configure_worker_logging`).
    """
    stream = sys.stderr if stream is None else stream
    level = _level_number(cfg.level)
    as_json = _use_json(cfg, stream)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        *([_add_fields(fields)] if fields else []),
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secrets,
    ]
    renderer: Processor
    if as_json:
        # Tracebacks as JSON, without frame locals: locals routinely hold secrets and tokens.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        # plain_traceback: rich's default formatter would print frame locals (secrets).
        renderer = structlog.dev.ConsoleRenderer(
            colors=bool(getattr(stream, "isatty", lambda: False)()),
            exception_formatter=structlog.dev.plain_traceback,
        )

    renderer = _scrub_rendered(renderer)

    # Our own loggers: the filtering bound logger makes disabled levels a no-op method call.
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_NamedPrintLoggerFactory(stream),
        context_class=dict,
        # Not cached: tests and `roomline serve` may reconfigure after modules fetched loggers.
        cache_logger_on_first_use=False,
    )

    # Foreign (stdlib) loggers: same processors and renderer through a ProcessorFormatter.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def configure_worker_logging(
    process_name: str, *, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Logging for a worker process: JSON lines on stderr, every event tagged ``process`` and
    ``pid``; stdlib ``logging`` calls (including third-party libraries) go the same way.

    ``level`` defaults to ``$ROOMLINE_LOGGING_LEVEL`` (set by the supervisor to the main process's
    level), else ``info``. The supervisor parses these lines and re-emits them in the main log.
    """
    if level is None:
        level = os.environ.get("ROOMLINE_LOGGING_LEVEL") or "info"
    if level.lower() not in ("debug", "info", "warning", "error", "critical"):
        level = "info"
    configure_logging(
        LoggingConfig(level=level.lower(), format="json"),
        stream=stream,
        fields={"process": process_name, "pid": os.getpid()},
    )


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """``structlog.get_logger(name, **initial)``: ``name`` appears as the ``logger`` field.

    Safe to call at import time; the logger follows the configuration active when it logs.
    """
    if name is None:
        return structlog.get_logger(**initial)
    return structlog.get_logger(name, **initial)

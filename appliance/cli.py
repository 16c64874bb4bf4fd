"""The ``roomline`` command: ``serve``, ``token``, ``config check``.

Configuration errors are user errors: they print ``roomline: error: <message>`` and exit 2, with no
traceback, so the message naming the bad key and file is the first thing an operator sees.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import yaml

from roomline.auth import mint_token, parse_duration
from roomline.config import LOG_FORMATS, LOG_LEVELS, Config, ConfigError, load_config
from roomline.errors import RoomlineError

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's code for bad usage; bad configuration is the same kind of mistake
EXIT_INTERRUPTED = 130

_KINDS = ("standard", "agent", "sip", "ingress", "egress", "connector", "bridge")


def _version() -> str:
    try:
        return metadata.version("roomline")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _port(text: str) -> int:
    """A listen port; 0 asks the kernel for a free one (logged in ``roomline listening``)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


_port.__name__ = "port"  # argparse names the type in "invalid port value"


def _duration(text: str) -> float:
    return parse_duration(text)


_duration.__name__ = "duration"


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and shell completion generators)."""
    parser = argparse.ArgumentParser(
        prog="roomline",
        description="SIP/PSTN bridge + LiveKit-compatible SFU appliance.",
    )
    parser.add_argument("--version", action="version", version=f"roomline {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config_help = "YAML config file (default: $ROOMLINE_CONFIG, else the embedded default)"

    serve = sub.add_parser("serve", help="run the appliance until SIGINT/SIGTERM")
    serve.add_argument("--config", metavar="FILE", help=config_help)
    serve.add_argument("--host", help="HTTP listen address (server.host)")
    serve.add_argument(
        "--port",
        type=_port,
        help="HTTP listen port (server.port); 0 = any free port, logged by 'roomline listening'",
    )
    serve.add_argument(
        "--port-file",
        metavar="FILE",
        help="once listening, write the bound HTTP port to FILE (useful with --port 0)",
    )
    serve.add_argument("--data-dir", metavar="DIR", help="runtime directory (server.data_dir)")
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="logging.format")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="logging.level")
    serve.set_defaults(func=_cmd_serve)

    token = sub.add_parser("token", help="print an access token signed with the first API key")
    token.add_argument("--config", metavar="FILE", help=config_help)
    token.add_argument("--room", help="room the token may join (required unless --admin)")
    token.add_argument("--identity", required=True, help="participant identity (sub)")
    token.add_argument("--name", default="", help="display name")
    token.add_argument("--kind", choices=_KINDS, default="standard", help="participant kind")
    token.add_argument("--ttl", type=_duration, default="6h", help="lifetime, e.g. 6h, 30m, 1d")
    token.add_argument("--admin", action="store_true", help="room admin/create/list + SIP admin")
    token.add_argument("--metadata", default="", help="participant metadata")
    token.add_argument(
        "--attribute",
        type=_attribute,
        action="append",
        default=[],
        metavar="K=V",
        help="participant attribute (repeatable)",
    )
    token.add_argument("--api-key", help="API key to sign with (default: the first configured)")
    token.set_defaults(func=_cmd_token)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = config_sub.add_parser("check", help="validate and print the config, secrets masked")
    check.add_argument("--config", metavar="FILE", help=config_help)
    check.set_defaults(func=_cmd_config_check)
    return parser


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    return load_config(args.config, overrides=overrides, overrides_source="command line")


def _cmd_serve(args: argparse.Namespace) -> int:
    flags = {
        "server.host": args.host,
        "server.port": args.port,
        "server.data_dir": args.data_dir,
        "logging.format": args.log_format,
        "logging.level": args.log_level,
    }
    cfg = _load(args, {k: v for k, v in flags.items() if v is not None})

    from roomline.log import configure_logging, get_logger

    configure_logging(cfg.logging)
    log = get_logger("appliance.cli")
    log.info(
        "config loaded",
        version=_version(),
        source=cfg.source,
        listen=f"{cfg.server.host}:{cfg.server.port}",
        data_dir=cfg.server.data_dir,
        api_keys=sorted(cfg.keys),
        rtc_ports=f"{cfg.rtc.port_range_start}-{cfg.rtc.port_range_end}",
        sip_enabled=cfg.sip.enabled,
        sip_ports=_sip_ports(cfg),
        sip_workers=cfg.sip.worker_count() if cfg.sip.enabled else 0,
        trunks=len(cfg.sip.trunks),
        dispatch_rules=len(cfg.sip.dispatch_rules),
    )
    log.debug("config", config=cfg.redacted())
    if cfg.dev_mode:
        log.warning(
            "dev mode: the public API key 'devkey' is configured; anyone can mint tokens. "
            "Set keys in the config file or ROOMLINE_KEYS before exposing this server."
        )

    # Imported lazily: the app pulls in aiohttp, aiortc and the whole media stack.
    from appliance import app

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep serving without it
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(app.serve(cfg, port_file=args.port_file))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        # Typically "address already in use" on the HTTP, SIP or RTP ports.
        log.error("cannot start", error=str(exc))
        print(f"roomline: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _sip_ports(cfg: Config) -> list[int]:
    """Public SIP ports: the front's (UDP/TCP, TLS), or each worker's in the older direct mode."""
    sip = cfg.sip
    if not sip.enabled:
        return []
    if isinstance(sip.workers, list):
        return [w.sip_port for w in sip.workers]
    return [sip.port, *([sip.tls_port] if sip.tls_cert_file and sip.tls_key_file else [])]


def _cmd_token(args: argparse.Namespace) -> int:
    if args.room is None and not args.admin:
        raise _UsageError("token: --room is required (or --admin for a server API token)")
    cfg = _load(args)
    api_key = args.api_key or next(iter(cfg.keys))
    if api_key not in cfg.keys:
        raise _UsageError(f"token: API key {api_key!r} is not configured in {cfg.source}")
    token = mint_token(
        api_key,
        cfg.keys[api_key],
        identity=args.identity,
        room=args.room,
        name=args.name,
        kind=args.kind,
        ttl=args.ttl,
        admin=args.admin,
        metadata=args.metadata,
        attributes=dict(args.attribute),
    )
    print(token)
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    cfg = _load(args)
    data = cfg.redacted()
    dev = data.pop("dev_mode")
    data.pop("source", None)
    print(f"# {cfg.source}: OK{' (dev mode: public devkey configured)' if dev else ''}")
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")
    return EXIT_OK


class _UsageError(Exception):
    """A command-line mistake found after parsing (reported like argparse errors)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomline`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, _UsageError) as exc:
        print(f"roomline: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RoomlineError as exc:
        print(f"roomline: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

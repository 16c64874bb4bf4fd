"""Generic Twirp edge: ``POST /twirp/<package.Service>/<Method>`` with protobuf or JSON bodies.

Services register typed handlers; this module does the wire work once: body size limit, content type,
decoding (protobuf, or protobuf-JSON with either field naming), Bearer token verification, and mapping
every :class:`~roomline.errors.RoomlineError` to Twirp's JSON error shape and HTTP status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from roomline.auth import Claims, verify_token
from roomline.errors import RoomlineError

log = structlog.get_logger(__name__)

#: Twirp error code → HTTP status (twirp errors.go).
TWIRP_STATUS: dict[str, int] = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
}

Handler = Callable[[Any, Claims], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: its request message type and the coroutine serving it."""

    request_type: type[Message]
    handler: Handler


class TwirpError(RoomlineError):
    """An error raised at the edge itself with an explicit Twirp code."""

    def __init__(self, code: str, message: str, meta: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.twirp_code = code
        self.meta = dict(meta or {})


def error_response(code: str, message: str, meta: Mapping[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "msg": message}
    if meta:
        body["meta"] = dict(meta)
    return web.Response(
        status=TWIRP_STATUS.get(code, 500),
        text=json.dumps(body),
        content_type="application/json",
    )


class TwirpRouter:
    """All Twirp services of the appliance, behind one aiohttp route."""

    def __init__(
        self,
        keys: Mapping[str, str],
        max_body_size: int,
        on_request: Callable[[str, str], None] | None = None,
    ) -> None:
        self.keys = keys
        self.max_body_size = max_body_size
        self.services: dict[str, dict[str, Method]] = {}
        #: Observer called with (``Service/Method``, twirp code or "ok") for metrics.
        self.on_request = on_request

    def register(self, service: str, methods: Mapping[str, Method]) -> None:
        self.services[service] = dict(methods)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/twirp/{service}/{method}", self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        service_name = request.match_info["service"]
        method_name = request.match_info["method"]
        label = f"{service_name.removeprefix('livekit.')}/{method_name}"
        started = time.perf_counter()
        try:
            response = await self._serve(request, service_name, method_name)
            code = "ok"
        except RoomlineError as exc:
            code = exc.twirp_code
            response = error_response(code, exc.message, getattr(exc, "meta", None))
        except Exception:
            log.exception("twirp handler failed", method=label)
            code = "internal"
            response = error_response(code, "internal server error")
        if self.on_request:
            self.on_request(label, code)
        log.debug(
            "twirp", method=label, code=code, ms=round((time.perf_counter() - started) * 1e3, 2)
        )
        return response

    async def _serve(
        self, request: web.Request, service_name: str, method_name: str
    ) -> web.Response:
        service = self.services.get(service_name)
        method = service.get(method_name) if service else None
        if method is None:
            raise TwirpError("bad_route", f"no handler for {service_name}/{method_name}")
        claims = self._authenticate(request)
        body = await self._read_body(request)
        content_type = request.content_type.lower()
        message = method.request_type()
        if content_type in ("application/protobuf", "application/x-protobuf"):
            try:
                message.ParseFromString(body)
            except (DecodeError, RuntimeWarning, ValueError, RecursionError) as exc:
                raise TwirpError(
                    "malformed", f"the protobuf body could not be parsed: {exc}"
                ) from None
            as_json = False
        elif content_type == "application/json":
            try:
                json_format.Parse(body.decode("utf-8") or "{}", message, ignore_unknown_fields=True)
            except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise TwirpError("malformed", f"the JSON body could not be parsed: {exc}") from None
            as_json = True
        else:
            raise TwirpError(
                "bad_route",
                f"unexpected Content-Type {content_type!r}: use application/protobuf or application/json",
            )
        reply = await method.handler(message, claims)
        if as_json:
            text = json_format.MessageToJson(reply, preserving_proto_field_name=False)
            return web.Response(text=text, content_type="application/json")
        return web.Response(body=reply.SerializeToString(), content_type="application/protobuf")

    def _authenticate(self, request: web.Request) -> Claims:
        header = request.headers.get("Authorization", "")
        if not header:
            raise TwirpError("unauthenticated", "missing Authorization header")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TwirpError("unauthenticated", "Authorization header must be 'Bearer <token>'")
        return verify_token(token.strip(), self.keys)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_size:
            raise TwirpError(
                "invalid_argument", f"request body larger than {self.max_body_size} bytes"
            )
        body = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            body += chunk
            if len(body) > self.max_body_size:
                raise TwirpError(
                    "invalid_argument", f"request body larger than {self.max_body_size} bytes"
                )
        return bytes(body)

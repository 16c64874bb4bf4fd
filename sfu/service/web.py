"""The built-in web page: a small livekit-client app served at ``/``, plus a dev-only token endpoint.

Routes:

* ``GET /`` — ``sfu/web/index.html``.
* ``GET /static/{name}`` — the page's own files (``app.js``, ``style.css``), nothing else.
* ``GET /vendor/{name}`` — the livekit-client bundle that ``npm install`` copies to ``sfu/web/vendor/``
  (not in git). When it is missing the page still loads and says "run .ci/setup".
* ``GET /dev/token?room=R&identity=I&name=N`` — mints a join token, but only while the public development
  key pair is configured (:attr:`~roomline.config.Config.dev_mode`); with real keys it is 404, so a production
  appliance never hands out tokens to anonymous visitors. The answer also carries ``sip_token``, an API
  token with the SIP admin and call grants, which the page's "Dial out" field uses against the SIP
  Twirp API (``ListSIPOutboundTrunk``, ``CreateSIPParticipant``) — dev mode only, like the join token.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from roomline.auth import SIPGrant, mint_token
from roomline.config import Config
from roomline.lifecycle import Service

if TYPE_CHECKING:
    from sfu.server import SFUServer

log = structlog.get_logger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
VENDOR_DIR = WEB_DIR / "vendor"

#: Files under /static/: an allowlist, so nothing else in sfu/web/ (the copy script) is served.
STATIC_FILES = frozenset({"app.js", "style.css"})
#: Files under /vendor/ (the source map only helps browser dev tools).
VENDOR_FILES = frozenset({"livekit-client.umd.js", "livekit-client.umd.js.map"})

#: Dev tokens are short-lived: they are handed out without authentication.
DEV_TOKEN_TTL = "6h"

#: Room names and identities the dev endpoint accepts: URL- and log-safe, no spaces. Real tokens (CLI,
#: API) may use any characters the limits allow; this only restricts what anonymous visitors can ask for.
_ID_RE = re.compile(r"[A-Za-z0-9_.@:+\-]+")
#: Display names may be any printable text; control characters would corrupt logs and the UI.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# The page is revalidated on every load (small files; FileResponse answers 304 from Last-Modified),
# so an upgrade of the appliance or of livekit-client is picked up without a hard refresh.
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The LiveKit URL field may point at another server, hence ws:/wss:/http(s): in connect-src.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss: http: https:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class WebError(ValueError):
    """A bad query parameter for /dev/token (answered with 400 and this message)."""


def _identifier(value: str | None, what: str, max_length: int) -> str:
    if value is None or value == "":
        raise WebError(f"{what} is required")
    if len(value) > max_length:
        raise WebError(f"{what} is too long ({len(value)} characters, at most {max_length})")
    if not _ID_RE.fullmatch(value):
        raise WebError(f"{what} may only contain letters, digits and _ . @ : + -")
    return value


def _display_name(value: str | None, max_length: int) -> str:
    if value is None:
        return ""
    if len(value) > max_length:
        raise WebError(f"name is too long ({len(value)} characters, at most {max_length})")
    if _CONTROL_RE.search(value):
        raise WebError("name must not contain control characters")
    return value.strip()


class WebService:
    """aiohttp handlers for the page and the dev token endpoint."""

    def __init__(self, cfg: Config, web_dir: Path = WEB_DIR) -> None:
        self.cfg = cfg
        self.web_dir = web_dir
        self.vendor_dir = web_dir / "vendor"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/static/{name}", self.static),
            web.get("/vendor/{name}", self.vendor),
            web.get("/dev/token", self.dev_token),
        ]

    def _file(self, path: Path) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{path.name} not found")
        return web.FileResponse(path, headers=_PAGE_HEADERS)

    async def index(self, request: web.Request) -> web.StreamResponse:
        response = self._file(self.web_dir / "index.html")
        response.headers["Content-Security-Policy"] = _CSP
        return response

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound(text="not found")
        return self._file(self.web_dir / name)

    async def vendor(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in VENDOR_FILES:
            raise web.HTTPNotFound(text="not found")
        path = self.vendor_dir / name
        if not path.is_file():
            raise web.HTTPNotFound(text="livekit-client is not installed: run .ci/setup")
        return self._file(path)

    async def dev_token(self, request: web.Request) -> web.Response:
        # Checked per request, not at install time, so the answer always matches the running config.
        if not self.cfg.dev_mode:
            raise web.HTTPNotFound(text="not found")
        lim = self.cfg.limits
        query = request.query
        try:
            room = _identifier(query.get("room"), "room", lim.max_room_name_length)
            identity = _identifier(query.get("identity"), "identity", lim.max_identity_length)
            name = _display_name(query.get("name"), lim.max_name_length)
        except WebError as exc:
            return web.json_response(
                {"error": str(exc)}, status=400, headers={"Cache-Control": "no-store"}
            )
        ((api_key, secret),) = self.cfg.keys.items()
        token = mint_token(
            api_key,
            secret,
            identity=identity,
            room=room,
            name=name,
            ttl=DEV_TOKEN_TTL,
            can_publish=True,
            can_subscribe=True,
            can_publish_data=True,
            can_update_own_metadata=True,
        )
        # The page's dial-out field calls the SIP API with this one (no room join).
        sip_token = mint_token(
            api_key,
            secret,
            identity=identity,
            ttl=DEV_TOKEN_TTL,
            sip=SIPGrant(admin=True, call=True),
        )
        log.info("dev token issued", room=room, identity=identity)
        return web.json_response(
            {"token": token, "room": room, "identity": identity, "sip_token": sip_token},
            headers={"Cache-Control": "no-store"},
        )


def install(server: SFUServer) -> Service:
    """Add the page routes to the server's HTTP app."""
    service = WebService(server.cfg)
    server.app.router.add_routes(service.routes())
    if server.cfg.dev_mode:
        log.warning("dev mode: GET /dev/token mints join tokens for anyone who asks")
    if not (service.vendor_dir / "livekit-client.umd.js").is_file():
        log.warning("livekit-client is not installed: the web page cannot join; run .ci/setup")
    return Service()

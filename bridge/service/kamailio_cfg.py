"""Kamailio as roomline's SIP edge: typed options in, a complete ``kamailio.cfg`` out.

One public SIP address sits in front of N pjsua2 bridge workers (each capped at 4 calls by the
compiled ``PJSUA_MAX_CALLS``). Everything here is pure: :func:`render_kamailio_cfg`,
:func:`render_dispatcher_list` and :func:`render_tls_cfg` turn a :class:`FrontOptions` into file
text; :class:`bridge.service.front.KamailioFront` writes and runs them. See docs/sip-front.md.

What the rendered script does with a request, in order:

1. oversized (``$ml`` over ``max_message_size``) → dropped, no reply;
2. User-Agent containing a blocked string (case-insensitive) → dropped, any method, no reply;
3. unless the source is trusted or a worker: a banned source (htable ``ipban``) → dropped; over
   the pike rate → banned for ``ban_seconds`` and dropped;
4. ``maxfwd`` and ``sanity_check`` (malformed → 400 or dropped; the core drops what it cannot
   parse at all, e.g. a bad Via or binary garbage);
5. OPTIONS from outside the trusted list → dropped (the front is not advertised); trusted → 200;
6. CANCEL/retransmissions go to their transaction; in-dialog requests follow ``loose_route``, or
   for simple UAs without Route headers the worker recorded for that Call-ID (htable ``dlg``);
7. requests from a worker (``ds_is_from_list``) are record-routed to their R-URI (outbound);
8. new INVITEs from outside: ``X-Roomline-Source`` replaced by the true ``ip:port;proto=``,
   ``record_route``, dispatcher alg 10 (call load, ``maxload`` per worker) over two pools: the
   16 kHz workers (set :data:`DISPATCHER_SET_WIDEBAND`) first for an offer carrying G.722 (or no
   offer at all), the 8 kHz workers (set :data:`DISPATCHER_SET_NARROWBAND`) first for any other
   offer; 486/503/408/timeout from a worker → next worker of that pool, then the other pool; no
   free slot in either → 486 at once (503 if no worker is up); other out-of-dialog methods →
   dropped (405 for trusted sources).

Every call (inbound, and a worker's outbound INVITE) is also a dialog of the dialog module, with
its worker in ``$dlg_var(rl_worker)``, so the main process can end a dead worker's calls with a
BYE to each caller (:mod:`bridge.service.front_dialogs`); BYEs the front sends itself free the
worker's dispatcher slot in ``event_route[tm:local-request]``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_BLOCKED_USER_AGENTS",
    "DISPATCHER_SET_NARROWBAND",
    "DISPATCHER_SET_WIDEBAND",
    "FrontConfigError",
    "FrontOptions",
    "FrontWorker",
    "SOURCE_HEADER",
    "SYSTEM_CA_DIR",
    "dispatcher_set",
    "render_dispatcher_list",
    "render_kamailio_cfg",
    "render_tls_cfg",
]

#: The header that carries the caller's real source to the workers (incoming copies are removed).
SOURCE_HEADER = "X-Roomline-Source"
#: The loopback address of the socket that faces the workers when ``advertise`` is set.
INTERNAL_ADDRESS = "127.0.0.1"
#: The system CA store (Debian's ca-certificates: hashed links) the front verifies TLS trunks
#: against. A directory, not the bundle file: OpenSSL looks a CA up there when it verifies, while
#: a ``ca_list`` bundle of ~150 CAs is parsed by every Kamailio process at start (seconds of
#: startup on a small host, during which TLS is not served).
SYSTEM_CA_DIR = "/etc/ssl/certs"
#: Dispatcher set of the 16 kHz bridge workers (G.722 offered first, G.711 resampled).
DISPATCHER_SET_WIDEBAND = 1
#: Dispatcher set of the 8 kHz bridge workers (G.711 only).
DISPATCHER_SET_NARROWBAND = 2
#: An SDP offer carrying G.722: static payload type 9 on the ``m=audio`` line, or an rtpmap for
#: it (POSIX ERE; Kamailio's ``=~`` is case-insensitive; the string escapes are Kamailio's).
_G722_MLINE_RE = r"m=audio [0-9]+(/[0-9]+)? [^ \r\n]+( [0-9]+)* 9[ \r\n]"
_G722_RTPMAP_RE = r"a=rtpmap:[0-9]+ G722/8000"
DEFAULT_BLOCKED_USER_AGENTS: tuple[str, ...] = ("friendly-scanner", "sipvicious", "sipcli")

_DUID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
# Printable ASCII minus the characters that would need escaping inside a Kamailio string.
_UA_RE = re.compile(r"^[\x20-\x7e]{1,128}$")
_PATH_RE = re.compile(r'^[^"\\\x00-\x1f]{1,4000}$')
# "^" cannot be bracketed ("[^]" negates) and is refused by validation instead.
_REGEX_SPECIAL = set(".[]()*+?{}|$")


class FrontConfigError(ValueError):
    """An impossible front option; the message names the option."""


def dispatcher_set(wideband: bool) -> int:
    """The dispatcher set of a 16 kHz (``wideband``) or an 8 kHz worker."""
    return DISPATCHER_SET_WIDEBAND if wideband else DISPATCHER_SET_NARROWBAND


@dataclass(frozen=True, slots=True)
class FrontWorker:
    """One bridge worker as a dispatcher destination (normally on loopback)."""

    port: int
    host: str = "127.0.0.1"
    maxload: int = 4
    #: Unique id for the call-load table; defaults to ``w<port>``.
    duid: str = ""
    transport: str = "udp"
    #: A 16 kHz worker (G.722 offered first); False for an 8 kHz (G.711-only) worker.
    wideband: bool = True

    @property
    def set_id(self) -> int:
        """The dispatcher set (pool) the worker is in."""
        return dispatcher_set(self.wideband)

    @property
    def uid(self) -> str:
        return self.duid or f"w{self.port}"

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{host}:{self.port}{suffix}"


@dataclass(frozen=True, slots=True)
class FrontOptions:
    """Everything the rendered ``kamailio.cfg`` depends on. Times are seconds unless named ``_ms``."""

    workers: tuple[FrontWorker, ...]
    #: Public SIP: UDP and TCP on ``port``.
    bind_address: str = "0.0.0.0"
    port: int = 5060
    #: TLS on ``tls_port`` when both files are given (needs Debian ``kamailio-tls-modules``).
    tls_port: int = 5061
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    #: Outbound TLS (a TLS trunk): the front is the TLS client. With ``tls_client_verify`` the
    #: carrier's certificate chain must verify against ``tls_client_ca_file`` ("" = the system CA
    #: store, :data:`SYSTEM_CA_DIR`); off accepts any certificate (self-signed carriers, tests).
    tls_client_verify: bool = True
    tls_client_ca_file: str = ""
    #: Public address put in Via/Record-Route when the host is behind 1:1 NAT ("" = none). The
    #: workers are then reached from a separate loopback socket on ``internal_port`` (required),
    #: so what they see in Via/Record-Route is an address they can actually reply to.
    advertise: str = ""
    internal_port: int = 0
    #: Extra host names that mean "this proxy" in a Request-URI.
    aliases: tuple[str, ...] = ()
    #: Case-insensitive substrings of User-Agent whose requests get no response at all.
    blocked_user_agents: tuple[str, ...] = DEFAULT_BLOCKED_USER_AGENTS
    #: IPs or CIDR networks exempt from pike and allowed to OPTIONS the front (carriers, monitors).
    trusted_addresses: tuple[str, ...] = ()
    #: pike: more than ``pike_reqs_density`` requests per ``pike_sampling_time`` seconds from one
    #: source IP bans that IP for ``ban_seconds``.
    pike_sampling_time: int = 2
    pike_reqs_density: int = 30
    pike_remove_latency: int = 4
    ban_seconds: int = 300
    #: Larger messages are dropped unanswered.
    max_message_size: int = 16384
    #: OPTIONS keepalive to the workers; a worker failing ``probing_threshold`` probes is marked
    #: down until it answers again.
    ping_interval: int = 10
    probing_threshold: int = 2
    inactive_threshold: int = 1
    #: No provisional reply from a worker within ``fr_timer_ms`` → next worker.
    fr_timer_ms: int = 2000
    #: Missed ``fr_timer_ms`` in a row (no reply of any kind from the worker in between) before a
    #: worker is marked down. One miss is a live worker briefly starved of CPU more often than a
    #: hung one; marking it down at once took its slots away from every other call for a probe
    #: interval (486 "all workers full" in a loaded soak). A worker that died is marked down at
    #: once by the supervisor anyway.
    missed_replies_before_down: int = 3
    #: After a provisional reply, how long a worker may ring before the call is given up.
    fr_inv_timer_ms: int = 60000
    #: How long an in-dialog request (BYE, re-INVITE, INFO...) may wait for its answer. Longer
    #: than ``fr_timer_ms``: that one is short to find a dead worker for a new call fast, but a
    #: live worker briefly starved of CPU must not turn a caller's BYE into a 408 (a worker that
    #: died is handled by ending its dialogs, see bridge/service/front_dialogs.py).
    dialog_fr_timer_ms: int = 8000
    #: How long a Call-ID → worker entry lives (covers the longest call).
    dialog_ttl: int = 14400
    #: UDP receiver processes per socket and TCP workers.
    children: int = 2
    tcp_children: int = 2
    #: Kamailio core log level (-5..3; 2 = info, 3 = debug).
    log_level: int = 2
    #: Module directory ("" = Kamailio's built-in default, right for Debian).
    module_path: str = ""
    #: Where the ctl (``kamcmd``) socket lives; "" = no ctl module.
    ctl_socket: str = ""
    source_header: str = SOURCE_HEADER
    extra_listen: tuple[str, ...] = field(default=())
    #: Rewrite the Contact of the workers' replies to ``<sip:rlw-<worker port>@<front>>``, the
    #: front's own address as the caller reached it (the advertised one behind NAT). In-dialog
    #: requests to such a URI are sent to that worker statelessly, with or without Route headers.
    contact_via_front: bool = False

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    def validate(self) -> None:
        """Raise :class:`FrontConfigError` naming the first impossible option."""
        if not self.workers:
            raise FrontConfigError("workers: at least one worker is required")
        _check_ip(self.bind_address, "bind_address")
        if self.advertise:
            _check_ip(self.advertise, "advertise")
            if ipaddress.ip_address(self.bind_address).is_unspecified:
                raise FrontConfigError(
                    "advertise: needs a specific bind_address (the private address that the "
                    "public one maps to), not a wildcard"
                )
            _check_port(self.internal_port, "internal_port (required with advertise)")
            if self.internal_port in (self.port, self.tls_port if self.tls_enabled else -1):
                raise FrontConfigError(f"internal_port: {self.internal_port} is already in use")
        _check_port(self.port, "port")
        if self.tls_cert_file or self.tls_key_file:
            if not (self.tls_cert_file and self.tls_key_file):
                raise FrontConfigError("tls_cert_file and tls_key_file must be given together")
            _check_port(self.tls_port, "tls_port")
            if self.tls_port == self.port:
                raise FrontConfigError(f"tls_port: {self.tls_port} is already the SIP port")
            for name in ("tls_cert_file", "tls_key_file", "tls_ca_file", "tls_client_ca_file"):
                value = getattr(self, name)
                if value and not _PATH_RE.match(value):
                    raise FrontConfigError(f"{name}: unusable path {value!r}")
        seen_ports: dict[tuple[str, int], int] = {}
        seen_uids: set[str] = set()
        for i, w in enumerate(self.workers):
            where = f"workers[{i}]"
            _check_ip(w.host, f"{where}.host")
            _check_port(w.port, f"{where}.port")
            if w.maxload < 1:
                raise FrontConfigError(f"{where}.maxload: must be at least 1, got {w.maxload}")
            if not _DUID_RE.match(w.uid):
                raise FrontConfigError(f"{where}.duid: expected [A-Za-z0-9_.-]{{1,32}}")
            if w.uid in seen_uids:
                raise FrontConfigError(f"{where}.duid: {w.uid!r} is used twice")
            seen_uids.add(w.uid)
            if self.advertise and not ipaddress.ip_address(w.host).is_loopback:
                raise FrontConfigError(f"{where}.host: with advertise, workers must be on loopback")
            if w.transport not in ("udp", "tcp"):
                raise FrontConfigError(f"{where}.transport: expected udp or tcp")
            key = (w.host, w.port)
            if key in seen_ports:
                raise FrontConfigError(f"{where}.port: same address as workers[{seen_ports[key]}]")
            seen_ports[key] = i
            if w.port in (self.port, self.tls_port if self.tls_enabled else -1) and (
                _same_host(w.host, self.bind_address)
            ):
                raise FrontConfigError(f"{where}.port: {w.port} is the front's own port")
        for i, ua in enumerate(self.blocked_user_agents):
            if not _UA_RE.match(ua) or any(c in ua for c in '"\\^'):
                raise FrontConfigError(
                    f"blocked_user_agents[{i}]: printable ASCII without quote, backslash or ^"
                )
        for i, addr in enumerate(self.trusted_addresses):
            try:
                ipaddress.ip_network(addr, strict=False)
            except ValueError:
                raise FrontConfigError(
                    f"trusted_addresses[{i}]: not an IP address or network: {addr!r}"
                ) from None
        for i, alias in enumerate(self.aliases):
            if not _HOST_RE.match(alias):
                raise FrontConfigError(f"aliases[{i}]: not a host name: {alias!r}")
        for name in (
            "pike_sampling_time",
            "pike_reqs_density",
            "pike_remove_latency",
            "ban_seconds",
            "ping_interval",
            "probing_threshold",
            "inactive_threshold",
            "fr_timer_ms",
            "fr_inv_timer_ms",
            "missed_replies_before_down",
            "dialog_fr_timer_ms",
            "dialog_ttl",
            "children",
            "tcp_children",
        ):
            if getattr(self, name) < 1:
                raise FrontConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 512 <= self.max_message_size <= 65535:
            raise FrontConfigError("max_message_size: expected 512..65535")
        if not -5 <= self.log_level <= 3:
            raise FrontConfigError("log_level: expected -5..3")
        if not re.match(r"^X-[A-Za-z0-9-]{1,60}$", self.source_header):
            raise FrontConfigError("source_header: expected an X- header name")
        for name in ("module_path", "ctl_socket"):
            value = getattr(self, name)
            if value and not _PATH_RE.match(value):
                raise FrontConfigError(f"{name}: unusable path {value!r}")
        if self.extra_listen and ipaddress.ip_address(self.bind_address).is_unspecified:
            raise FrontConfigError("extra_listen: needs a specific bind_address")
        for i, sock in enumerate(self.extra_listen):
            if not re.match(r"^(udp|tcp|tls):[0-9A-Fa-f.:\[\]]+:\d{1,5}$", sock):
                raise FrontConfigError(f"extra_listen[{i}]: expected proto:ip:port")


def _check_port(port: int, name: str) -> None:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise FrontConfigError(f"{name}: expected a port 1..65535, got {port!r}")


def _check_ip(addr: str, name: str) -> None:
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise FrontConfigError(f"{name}: not an IP address: {addr!r}") from None


def _same_host(a: str, b: str) -> bool:
    return a == b or ipaddress.ip_address(b).is_unspecified


def _sock(proto: str, addr: str, port: int) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"{proto}:{host}:{port}"


def _str(value: str) -> str:
    """A Kamailio double-quoted string literal (inputs are validated to need no escapes)."""
    if '"' in value or "\\" in value or "\n" in value:
        raise FrontConfigError(f"cannot quote {value!r}")
    return f'"{value}"'


def _ua_regex(agents: Iterable[str]) -> str:
    """POSIX ERE matching any of the (lower-cased) substrings; specials go in brackets."""
    parts = []
    for ua in agents:
        out = []
        for ch in ua.lower():
            if ch in _REGEX_SPECIAL:
                out.append(f"[{ch}]")
            else:
                out.append(ch)
        parts.append("".join(out))
    return "|".join(parts)


def _trusted_condition(addrs: Sequence[str]) -> str:
    conds = []
    for a in addrs:
        net = ipaddress.ip_network(a, strict=False)
        if net.num_addresses == 1:
            conds.append(f"src_ip=={net.network_address}")
        else:
            conds.append(f"src_ip=={net.network_address}/{net.prefixlen}")
    return " || ".join(conds)


def render_dispatcher_list(opts: FrontOptions) -> str:
    """The dispatcher ``list_file``: one worker per line, set 1 for the 16 kHz workers and set 2
    for the 8 kHz ones, call-load attributes."""
    opts.validate()
    lines = [
        "# roomline bridge workers (generated; set uri flags priority attrs)",
        f"# set {DISPATCHER_SET_WIDEBAND}: 16 kHz workers (G.722 first); "
        f"set {DISPATCHER_SET_NARROWBAND}: 8 kHz workers (G.711 only)",
    ]
    for w in opts.workers:
        attrs = f"duid={w.uid};maxload={w.maxload}"
        if opts.advertise:
            attrs += f";socket={_sock(w.transport, INTERNAL_ADDRESS, opts.internal_port)}"
        lines.append(f"{w.set_id} {w.uri} 0 0 {attrs}")
    return "\n".join(lines) + "\n"


def render_tls_cfg(opts: FrontOptions) -> str:
    """The tls module's own config file: the server side for callers, the client side for
    outbound calls over TLS trunks (the carrier's certificate verified unless turned off)."""
    opts.validate()
    if not opts.tls_enabled:
        raise FrontConfigError("TLS is not configured (tls_cert_file and tls_key_file)")
    ca = f"ca_list = {opts.tls_ca_file}\n" if opts.tls_ca_file else ""
    if opts.tls_client_verify:
        client = "verify_certificate = yes\nrequire_certificate = yes\n" + (
            f"ca_list = {opts.tls_client_ca_file}\n"
            if opts.tls_client_ca_file
            else f"ca_path = {SYSTEM_CA_DIR}\n"
        )
    else:
        client = "verify_certificate = no\nrequire_certificate = no\n"
    return (
        "# roomline front TLS (generated)\n"
        "[server:default]\n"
        "method = TLSv1.2+\n"
        "verify_certificate = no\n"
        "require_certificate = no\n"
        f"private_key = {opts.tls_key_file}\n"
        f"certificate = {opts.tls_cert_file}\n"
        f"{ca}"
        "\n# Outbound calls to TLS trunks.\n"
        "[client:default]\n"
        "method = TLSv1.2+\n"
        f"{client}"
    )


def _dispatch_blocks(opts: FrontOptions) -> tuple[str, str]:
    """The start of ``route[DISPATCH]`` (the first worker for a new call) and the overflow into
    the other pool for ``failure_route[DS_NEXT]`` ("" with one pool).

    Call-load accounting stays within a set (``ds_next_dst`` moves a call's load only between
    workers of one set), so the overflow frees the load in the exhausted pool and selects anew
    in the other one, instead of one ``ds_select_routes`` list over both sets.
    """
    sets = sorted({w.set_id for w in opts.workers})
    active = " || ".join(f'ds_is_active("{s}")' for s in sets)

    def busy(depth: int) -> str:
        """No free slot anywhere: 486 at once while a worker is up, else 503."""
        t = "\t" * depth
        return (
            f"{t}if ({active}) {{\n"
            f'{t}\txlog("L_INFO", "front: all workers full, 486 to $si:$sp\\n");\n'
            f'{t}\tsl_send_reply("486", "Busy Here");\n'
            f"{t}}} else {{\n"
            f'{t}\txlog("L_WARN", "front: no worker up, 503 to $si:$sp\\n");\n'
            f'{t}\tsl_send_reply("503", "Service Unavailable");\n'
            f"{t}}}\n"
            f"{t}exit;\n"
        )

    if len(sets) == 1:
        return f'\tif (!ds_select_dst("{sets[0]}", "10")) {{\n{busy(2)}\t}}\n', ""
    wide, narrow = DISPATCHER_SET_WIDEBAND, DISPATCHER_SET_NARROWBAND
    dispatch = (
        "\t# Which pool first: an offer carrying G.722, or none (a late offer: the worker's own\n"
        "\t# offer then carries G.722), goes to the 16 kHz workers; any other offer (G.711 only,\n"
        "\t# as from most PSTN trunks) to the 8 kHz workers. Each pool takes the other's overflow.\n"
        f'\tif (!has_body() || $rb =~ "{_G722_MLINE_RE}" || $rb =~ "{_G722_RTPMAP_RE}") {{\n'
        f"\t\t$avp(rl_ds) = {wide};\n\t\t$avp(rl_ds2) = {narrow};\n"
        "\t} else {\n"
        f"\t\t$avp(rl_ds) = {narrow};\n\t\t$avp(rl_ds2) = {wide};\n"
        "\t}\n"
        '\tif (!ds_select_dst("$avp(rl_ds)", "10")) {\n'
        "\t\t# No free slot in that pool: the other one.\n"
        "\t\t$avp(rl_ds) = $avp(rl_ds2);\n"
        "\t\t$avp(rl_ds2) = $null;\n"
        '\t\tif (!ds_select_dst("$avp(rl_ds)", "10")) {\n'
        f"{busy(3)}"
        "\t\t}\n"
        "\t}\n"
    )
    overflow = (
        "\t\t# This pool is exhausted: the other pool takes the call. The load leaves this pool\n"
        "\t\t# (ds_next_dst cannot move it across sets) and is taken anew in the other one.\n"
        "\t\tif ($avp(rl_ds2) != $null) {\n"
        "\t\t\tds_load_unset();\n"
        "\t\t\t$xavp(_dsdst_[*]) = $null;\n"
        "\t\t\t$avp(rl_ds) = $avp(rl_ds2);\n"
        "\t\t\t$avp(rl_ds2) = $null;\n"
        '\t\t\tif (ds_select_dst("$avp(rl_ds)", "10")) {\n'
        '\t\t\t\txlog("L_INFO", "front: $T_reply_code from a worker, trying the other pool: '
        '$du\\n");\n'
        '\t\t\t\tt_on_branch("DS_BRANCH");\n'
        '\t\t\t\tt_on_reply("DS_REPLY");\n'
        '\t\t\t\tt_on_failure("DS_NEXT");\n'
        "\t\t\t\tif (t_relay()) exit;\n"
        "\t\t\t\tds_load_unset();\n"
        "\t\t\t}\n"
        "\t\t\t$sht(dlg=>$ci) = $null;\n"
        "\t\t\texit;\n"
        "\t\t}\n"
    )
    return dispatch, overflow


def render_kamailio_cfg(
    opts: FrontOptions, dispatcher_list_path: str, tls_cfg_path: str = ""
) -> str:
    """A complete ``kamailio.cfg`` for ``opts``; the list (and TLS) files live at the given paths."""
    opts.validate()
    if not _PATH_RE.match(dispatcher_list_path):
        raise FrontConfigError(f"dispatcher list path unusable: {dispatcher_list_path!r}")
    if opts.tls_enabled and not (tls_cfg_path and _PATH_RE.match(tls_cfg_path)):
        raise FrontConfigError("TLS is configured: tls_cfg_path is required")
    hdr = opts.source_header
    listens = []
    adv = ""
    if opts.advertise:
        adv_host = f"[{opts.advertise}]" if ":" in opts.advertise else opts.advertise
        adv = f" advertise {adv_host}:{{port}}"
    if ipaddress.ip_address(opts.bind_address).is_unspecified:
        # "listen=udp:0.0.0.0:5060" would put 0.0.0.0 into Via and Record-Route. Without any
        # listen line Kamailio binds every interface address on these ports instead, and mhomed
        # picks the right one per destination (loopback for the workers).
        listens.append(f"port={opts.port}\nmhomed=1")
        if opts.tls_enabled:
            listens.append(f"tls_port_no={opts.tls_port}")
    else:
        for proto in ("udp", "tcp"):
            listens.append(
                f"listen={_sock(proto, opts.bind_address, opts.port)}{adv.format(port=opts.port)}"
            )
        if opts.tls_enabled:
            listens.append(
                f"listen={_sock('tls', opts.bind_address, opts.tls_port)}"
                f"{adv.format(port=opts.tls_port)}"
            )
    if opts.advertise:
        for proto in sorted({"udp", "tcp"} | {w.transport for w in opts.workers}):
            listens.append(f"listen={_sock(proto, INTERNAL_ADDRESS, opts.internal_port)}")
    for extra in opts.extra_listen:
        listens.append(f"listen={extra}")
    aliases = "".join(f"alias={_str(a)}\n" for a in opts.aliases)
    trusted = _trusted_condition(opts.trusted_addresses)
    trusted_block = f"\tif ({trusted}) {{\n\t\tsetflag(FLT_TRUSTED);\n\t}}\n" if trusted else ""
    ua_block = ""
    if opts.blocked_user_agents:
        ua_block = (
            "\t# Scanners: no response at all, whatever the method.\n"
            f'\tif (is_present_hf("User-Agent") && $(ua{{s.tolower}}) =~ '
            f"{_str(_ua_regex(opts.blocked_user_agents))}) {{\n"
            '\t\txlog("L_INFO", "front: blocked user-agent from $si:$sp\\n");\n'
            "\t\tdrop;\n\t}\n"
        )
    mpath = f"mpath={_str(opts.module_path)}\n" if opts.module_path else ""
    tls_globals = "enable_tls=yes\n" if opts.tls_enabled else ""
    tls_module = tls_sni = ""
    if opts.tls_enabled:
        tls_module = (
            f'loadmodule "tls.so"\nmodparam("tls", "config", {_str(tls_cfg_path)})\n'
            # $xavp(tls=>server_name): the SNI of an outbound TLS connection (route[FROM_WORKER]).
            'modparam("tls", "xavp_cfg", "tls")\n'
        )
        tls_sni = (
            "\t# A TLS trunk named by host name: send it as SNI (carriers that host several\n"
            "\t# names on one address pick their certificate by it).\n"
            '\tif ($(ru{uri.transport}) == "tls" && !($rd =~ "^[0-9.]+$") && !($rd =~ ":")) {\n'
            "\t\t$xavp(tls=>server_name) = $rd;\n\t}\n"
        )
    ctl = ""
    if opts.ctl_socket:
        # A larger reply buffer (KB) than the default 32: dlg.list lists every call (~0.7 KB each).
        ctl = (
            f'loadmodule "ctl.so"\nmodparam("ctl", "binrpc", {_str("unix:" + opts.ctl_socket)})\n'
            'modparam("ctl", "binrpc_max_body_size", 1024)\n'
        )
    fr_inv = opts.fr_inv_timer_ms
    # A worker of either pool: ds_is_from_list() without a set matches every set.
    from_worker = "ds_is_from_list()"
    dispatch, overflow = _dispatch_blocks(opts)
    contact_save = contact_reply = contact_route = dlg_reply = ""
    arm_dlg = arm_dlg_outside = ""
    if opts.contact_via_front:
        if opts.advertise:
            host = f"[{opts.advertise}]" if ":" in opts.advertise else opts.advertise
            front_host = f'\t$avp(rl_fh) = "{host}";\n'
        else:
            front_host = (
                '\tif (af==INET6) {\n\t\t$avp(rl_fh) = "[" + $Ri + "]";\n\t} else {\n'
                "\t\t$avp(rl_fh) = $Ri;\n\t}\n"
            )
        contact_save = f"{front_host}\t$avp(rl_fp) = $Rp;\n\t$avp(rl_pr) = $pr;\n"
        contact_reply = (
            '\tif (is_present_hf("Contact") && $avp(rl_fh) != $null) {\n'
            '\t\tremove_hf("Contact");\n'
            '\t\tif ($avp(rl_pr) == "udp") {\n'
            '\t\t\tappend_hf("Contact: <sip:rlw-$sp@$avp(rl_fh):$avp(rl_fp)>\\r\\n");\n'
            "\t\t} else {\n"
            '\t\t\tappend_hf("Contact: <sip:rlw-$sp@$avp(rl_fh):$avp(rl_fp);transport=$avp(rl_pr)>\\r\\n");\n'
            "\t\t}\n\t}\n"
        )
        # In-dialog requests from the caller (a re-INVITE, UPDATE): the worker's 200 is a target
        # refresh (RFC 3261 12.2.1.2), so its Contact is rewritten like the first 200's, or the
        # caller would learn the worker's loopback address and send later requests there.
        arm_dlg = "\t\troute(DLG_CONTACT);\n"
        arm_dlg_outside = f"\t\tif (!{from_worker}) {{\n\t{arm_dlg}\t\t}}\n"
        dlg_reply = (
            f'\nroute[DLG_CONTACT] {{\n{contact_save}\tt_on_reply("DLG_REPLY");\n}}\n'
            f"\nonreply_route[DLG_REPLY] {{\n{contact_reply}}}\n"
        )
        force = (
            f"\t\tforce_send_socket(udp:{INTERNAL_ADDRESS}:{opts.internal_port});\n"
            if opts.advertise
            else ""
        )
        contact_route = (
            "\t# Contact rewritten by the front: rlw-<port> names the worker (stateless).\n"
            f'\tif (!{from_worker} && uri==myself && $rU =~ "^rlw-[0-9]{{1,5}}$") {{\n'
            '\t\tremove_hf("Route");\n'
            '\t\t$du = "sip:127.0.0.1:" + $(rU{s.substr,4,0});\n'
            f"{force}"
            '\t\tif (is_method("BYE")) {\n\t\t\tds_load_update();\n'
            "\t\t\t$sht(dlg=>$ci) = $null;\n\t\t}\n"
            f"{arm_dlg}"
            "\t\tdlg_manage();\n"
            "\t\troute(RELAY);\n\t}\n"
        )
    return f"""#!KAMAILIO
# roomline SIP front (generated by bridge/service/kamailio_cfg.py; do not edit by hand)

####### Global parameters #########
debug={opts.log_level}
log_stderror=yes
log_facility=LOG_LOCAL0
log_prefix="{{$mt $hdr(CSeq) $ci}} "
memdbg=5
memlog=5
children={opts.children}
tcp_children={opts.tcp_children}
auto_aliases=no
dns=no
rev_dns=no
dns_try_ipv6=no
use_dns_cache=off
server_signature=no
server_header="Server: roomline"
user_agent_header="User-Agent: roomline"
sip_warning=0
disable_tcp=no
tcp_connection_lifetime=3605
tcp_accept_no_cl=no
tcp_max_connections=2048
{tls_globals}{mpath}{chr(10).join(listens)}
{aliases}
####### Flags #########
#!define FLT_TRUSTED 1

####### Modules #########
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "htable.so"
loadmodule "pike.so"
loadmodule "dispatcher.so"
loadmodule "dialog.so"
{tls_module}{ctl}
# tm: give up on a silent worker quickly (failover), let a worker ring for a while.
modparam("tm", "fr_timer", {opts.fr_timer_ms})
modparam("tm", "fr_inv_timer", {fr_inv})
modparam("tm", "restart_fr_on_each_reply", 0)
modparam("tm", "auto_inv_100", 1)

# rr: two Record-Route headers when the in and out sockets differ.
modparam("rr", "enable_full_lr", 0)
modparam("rr", "append_fromtag", 0)

# sanity: malformed requests are answered 400 (or dropped) and never relayed.
modparam("sanity", "autodrop", 1)

# pike: per-source-IP request density; offenders go to the ipban table.
modparam("pike", "sampling_time_unit", {opts.pike_sampling_time})
modparam("pike", "reqs_density_per_unit", {opts.pike_reqs_density})
modparam("pike", "remove_latency", {opts.pike_remove_latency})

# htable: bans, and Call-ID -> worker for in-dialog requests without Route headers.
modparam("htable", "htable", "ipban=>size=8;autoexpire={opts.ban_seconds};")
modparam("htable", "htable", "dlg=>size=10;autoexpire={opts.dialog_ttl};")
modparam("htable", "htable", "dsmiss=>size=4;autoexpire=60;")

# dialog: every call through the front is a dialog, so the front can end the calls of a worker
# that died (dlg.end_dlg: BYE to the caller, and towards the dead worker). In-dialog requests
# routed without Route headers (rlw-<port> Contact, simple UAs) are matched by Call-ID and tags.
modparam("dialog", "dlg_match_mode", 1)
modparam("dialog", "default_timeout", {opts.dialog_ttl})
modparam("dialog", "enable_stats", 0)

# dispatcher: call-load (alg 10) over the workers, failover list in xavps, OPTIONS probing.
modparam("dispatcher", "list_file", {_str(dispatcher_list_path)})
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_hash_size", 9)
# A call whose BYE never came frees its worker slot after ds_hash_expire; one never answered
# after ds_hash_initexpire.
modparam("dispatcher", "ds_hash_expire", {opts.dialog_ttl})
modparam("dispatcher", "ds_hash_initexpire", {fr_inv // 1000 + 60})
modparam("dispatcher", "ds_hash_check_interval", 30)
modparam("dispatcher", "xavp_dst", "_dsdst_")
modparam("dispatcher", "xavp_ctx", "_dsctx_")
modparam("dispatcher", "ds_ping_method", "OPTIONS")
modparam("dispatcher", "ds_ping_from", "sip:front@roomline.invalid")
modparam("dispatcher", "ds_ping_interval", {opts.ping_interval})
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", {opts.probing_threshold})
modparam("dispatcher", "ds_inactive_threshold", {opts.inactive_threshold})
modparam("dispatcher", "ds_ping_reply_codes", "class=2")

####### Routing logic ########

request_route {{
	route(REQINIT);

	if (is_method("CANCEL")) {{
		if (t_check_trans()) {{
			ds_load_update();
			route(RELAY);
		}}
		exit;
	}}

	# Retransmissions are absorbed by their transaction.
	if (!is_method("ACK")) {{
		if (t_precheck_trans()) {{
			t_check_trans();
			exit;
		}}
		t_check_trans();
	}}

	route(WITHINDLG);

	if ({from_worker}) {{
		route(FROM_WORKER);
		exit;
	}}

	route(SOURCE);

	if (!is_method("INVITE")) {{
		# roomline only takes calls; nothing else is advertised.
		if (isflagset(FLT_TRUSTED)) {{
			sl_send_reply("405", "Method Not Allowed");
		}}
		exit;
	}}

	remove_hf("Route");
	record_route();
	route(DISPATCH);
}}

route[REQINIT] {{
	if ($ml > {opts.max_message_size}) {{
		xlog("L_INFO", "front: dropped $ml-byte message from $si:$sp\\n");
		drop;
	}}
{ua_block}
	force_rport();
{trusted_block}
	if (!isflagset(FLT_TRUSTED) && !{from_worker} && !(src_ip==myself)) {{
		if ($sht(ipban=>$si) != $null) {{
			drop;
		}}
		if (!pike_check_req()) {{
			xlog("L_WARN", "front: flood from $si, banned for {opts.ban_seconds}s\\n");
			$sht(ipban=>$si) = 1;
			drop;
		}}
	}}

	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}

	if (!sanity_check("4095", "7")) {{
		xlog("L_INFO", "front: malformed request from $si:$sp\\n");
		exit;
	}}

	if (is_method("OPTIONS") && !has_totag()) {{
		if (isflagset(FLT_TRUSTED)) {{
			sl_send_reply("200", "OK");
			exit;
		}}
		if (!{from_worker}) {{
			drop;
		}}
	}}
}}

# The caller's real source address for the worker; an incoming copy is never trusted.
route[SOURCE] {{
	remove_hf("{hdr}");
	if (af==INET6) {{
		append_hf("{hdr}: [$si]:$sp;proto=$pr\\r\\n");
	}} else {{
		append_hf("{hdr}: $si:$sp;proto=$pr\\r\\n");
	}}
}}

route[RELAY] {{
	if (!t_relay()) {{
		sl_reply_error();
	}}
	exit;
}}

route[WITHINDLG] {{
	if (!has_totag()) return;
	t_set_fr(0, {opts.dialog_fr_timer_ms});

	if (!{from_worker}) {{
		route(SOURCE);
	}}
{contact_route}	if (loose_route()) {{
		if (is_method("BYE")) {{
			ds_load_update();
			$sht(dlg=>$ci) = $null;
		}}
{arm_dlg_outside}		route(RELAY);
	}}
	if (is_method("ACK") && t_check_trans()) {{
		route(RELAY);
	}}
	# A simple UA that ignores Record-Route: send it to the worker that owns the Call-ID.
	if (!{from_worker} && $sht(dlg=>$ci) != $null) {{
		$du = $sht(dlg=>$ci);
		if (is_method("BYE")) {{
			ds_load_update();
			$sht(dlg=>$ci) = $null;
		}}
{arm_dlg}		dlg_manage();
		route(RELAY);
	}}
	if (is_method("ACK")) {{
		exit;
	}}
	sl_send_reply("404", "Not Here");
	exit;
}}

# A worker dialling out (or a worker's own out-of-dialog request): out through the front.
route[FROM_WORKER] {{
	# An outbound INVITE routed through the front (the worker's outbound proxy): drop our own
	# Route entry so the request goes to its R-URI, the trunk.
	loose_route();
	record_route();
{tls_sni}	if (is_method("INVITE")) {{
		# An outbound call is a dialog of that worker too (ended by the front if it dies).
		dlg_manage();
		$dlg_var(rl_worker) = "sip:" + $si + ":" + $sp;
	}}
	route(RELAY);
}}

route[DISPATCH] {{
{dispatch}{contact_save}	# A dialog per call: the front can end it with a BYE if its worker dies.
	dlg_manage();
	t_on_branch("DS_BRANCH");
	t_on_reply("DS_REPLY");
	t_on_failure("DS_NEXT");
	if (!t_relay()) {{
		ds_load_unset();
		sl_reply_error();
	}}
	exit;
}}

branch_route[DS_BRANCH] {{
	$sht(dlg=>$ci) = $du;
	# Which worker carries the dialog (dlg.list shows it): the one this branch goes to.
	$dlg_var(rl_worker) = $du;
}}

onreply_route[DS_REPLY] {{
	# Any reply from a worker: it is alive, forget its missed timers.
	$sht(dsmiss=>sip:$si:$sp) = $null;
{contact_reply}	if (is_method("INVITE") && status=~"^2[0-9][0-9]$") {{
		ds_load_update();
	}}
}}

# BYEs the front sends itself (dlg.end_dlg after a worker died) pass no request_route: free the
# call's worker slot here. The htable entry says the slot is still held (only the first of the
# two BYEs frees it).
event_route[tm:local-request] {{
	if (is_method("BYE") && $sht(dlg=>$ci) != $null) {{
		ds_load_update();
		$sht(dlg=>$ci) = $null;
	}}
}}

failure_route[DS_NEXT] {{
	if (t_is_canceled()) {{
		$sht(dlg=>$ci) = $null;
		exit;
	}}
	if (t_check_status("486|503|408") || (t_branch_timeout() && !t_branch_replied())) {{
		if (t_branch_timeout() && !t_branch_replied()) {{
			if ($sht(dsmiss=>$du) == $null) {{
				$sht(dsmiss=>$du) = 0;
			}}
			if ($shtinc(dsmiss=>$du) >= {opts.missed_replies_before_down}) {{
				xlog("L_WARN", "front: worker $du did not answer, marked down\\n");
				ds_mark_dst("ip");
				$sht(dsmiss=>$du) = $null;
			}} else {{
				xlog("L_WARN", "front: worker $du did not answer in time\\n");
			}}
		}}
		# ds_next_dst() moves the call's load to the next worker. With no next worker left it
		# would drop the current record, and ds_load_unset() could no longer find the load.
		if ($xavp(_dsdst_[1]=>uri) != $null && ds_next_dst()) {{
			xlog("L_INFO", "front: $T_reply_code from a worker, trying $du\\n");
			t_on_branch("DS_BRANCH");
			t_on_reply("DS_REPLY");
			t_on_failure("DS_NEXT");
			if (t_relay()) exit;
		}}
{overflow}	}}
	ds_load_unset();
	$sht(dlg=>$ci) = $null;
}}
{dlg_reply}"""

"""The front's rendered config (checked by the real ``kamailio -c``), its validation, TLS, and the
supervised process: log forwarding, restart with backoff, SIGTERM then SIGKILL, clear errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.service.front import (
    DEBIAN_MODULE_DIRS,
    FrontConfigError,
    FrontError,
    FrontOptions,
    FrontUnavailable,
    FrontWorker,
    KamailioFront,
    find_kamailio,
    front_options_from_sip,
)
from bridge.service.kamailio_cfg import (
    SYSTEM_CA_DIR,
    render_dispatcher_list,
    render_kamailio_cfg,
    render_tls_cfg,
)
from roomline_harness.front_sip import UAC, free_ports, header, request, start_worker, status_of

HAVE_KAMAILIO = shutil.which("kamailio") is not None or os.path.exists("/usr/sbin/kamailio")
needs_kamailio = pytest.mark.skipif(not HAVE_KAMAILIO, reason="kamailio not installed")

pytestmark = pytest.mark.timeout(120)


def _opts(**kw: object) -> FrontOptions:
    base: dict[str, object] = {
        "workers": (FrontWorker(28501), FrontWorker(28502, maxload=2, duid="b")),
        "bind_address": "127.0.0.1",
        "port": 28500,
    }
    base.update(kw)
    return FrontOptions(**base)  # type: ignore[arg-type]


@pytest.fixture
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = Path(f"/tmp/front-cfg-{os.getpid()}-{time.monotonic_ns()}")
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --- pure rendering ---------------------------------------------------------------------------


def test_dispatcher_list_has_call_load_attributes() -> None:
    text = render_dispatcher_list(_opts())
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == [
        "1 sip:127.0.0.1:28501 0 0 duid=w28501;maxload=4",
        "1 sip:127.0.0.1:28502 0 0 duid=b;maxload=2",
    ]


def test_dispatcher_list_has_a_set_per_pool() -> None:
    """16 kHz workers in set 1, 8 kHz workers in set 2, each with its own port."""
    opts = _opts(
        workers=(
            FrontWorker(28501),
            FrontWorker(28502, wideband=False),
            FrontWorker(28503, wideband=False, maxload=2),
        )
    )
    lines = [ln for ln in render_dispatcher_list(opts).splitlines() if not ln.startswith("#")]
    assert lines == [
        "1 sip:127.0.0.1:28501 0 0 duid=w28501;maxload=4",
        "2 sip:127.0.0.1:28502 0 0 duid=w28502;maxload=4",
        "2 sip:127.0.0.1:28503 0 0 duid=w28503;maxload=2",
    ]
    cfg = render_kamailio_cfg(opts, "/tmp/x/d.list")
    # Every "is this a worker" check covers both sets; none names one set.
    assert "ds_is_from_list()" in cfg and 'ds_is_from_list("' not in cfg
    assert 'ds_select_dst("$avp(rl_ds)", "10")' in cfg and "$avp(rl_ds2)" in cfg
    assert 'ds_is_active("1") || ds_is_active("2")' in cfg
    assert "a=rtpmap:[0-9]+ G722/8000" in cfg and "has_body()" in cfg


@pytest.mark.parametrize("wideband", [True, False], ids=["all-16k", "all-8k"])
def test_one_pool_renders_no_codec_routing(wideband: bool) -> None:
    opts = _opts(
        workers=(FrontWorker(28501, wideband=wideband), FrontWorker(28502, wideband=wideband))
    )
    cfg = render_kamailio_cfg(opts, "/tmp/x/d.list")
    only = "1" if wideband else "2"
    assert f'ds_select_dst("{only}", "10")' in cfg and f'ds_is_active("{only}")' in cfg
    assert "rl_ds2" not in cfg and "G722" not in cfg
    other = "2" if wideband else "1"
    assert f'"{other}"' not in cfg.split("route[DISPATCH]")[1].split("branch_route")[0]


def test_cfg_contents() -> None:
    cfg = render_kamailio_cfg(
        _opts(
            trusted_addresses=("192.0.2.7", "198.51.100.0/24"),
            blocked_user_agents=("friendly-scanner", "Bad.UA(1)"),
            max_message_size=8000,
        ),
        "/tmp/x/dispatcher.list",
    )
    assert "listen=udp:127.0.0.1:28500" in cfg and "listen=tcp:127.0.0.1:28500" in cfg
    assert "tls" not in cfg.split("####### Routing logic")[0].replace("tls_", "")
    assert 'ds_select_dst("1", "10")' in cfg
    assert "src_ip==192.0.2.7 || src_ip==198.51.100.0/24" in cfg
    assert '"friendly-scanner|bad[.]ua[(]1[)]"' in cfg
    assert "$ml > 8000" in cfg
    assert 'remove_hf("X-Roomline-Source")' in cfg
    assert "ds_next_dst()" in cfg and 't_check_status("486|503|408")' in cfg
    assert "loose_route()" in cfg and "$sht(dlg=>$ci)" in cfg
    assert '"ds_ping_interval", 10' in cfg


def test_contact_via_front_covers_in_dialog_replies() -> None:
    """The Contact of a worker's 200 to a caller's re-INVITE (a target refresh) is rewritten too,
    on every in-dialog path from outside, never for a worker's own requests."""
    cfg = render_kamailio_cfg(_opts(contact_via_front=True), "/tmp/x/d.list")
    withindlg = cfg.split("route[WITHINDLG] {")[1].split("\n}\n")[0]
    # the rlw-<port> path, loose routing from outside, and the Call-ID table
    assert withindlg.count("route(DLG_CONTACT);") == 3
    assert "\t\tif (!ds_is_from_list()) {\n\t\t\troute(DLG_CONTACT);" in withindlg
    assert "onreply_route[DLG_REPLY] {" in cfg and 't_on_reply("DLG_REPLY");' in cfg
    assert "DLG_CONTACT" not in render_kamailio_cfg(_opts(), "/tmp/x/d.list")


def test_wildcard_bind_uses_no_listen_lines() -> None:
    cfg = render_kamailio_cfg(_opts(bind_address="0.0.0.0"), "/tmp/x/d.list")
    assert "listen=" not in cfg and "port=28500\nmhomed=1" in cfg


def test_render_is_pure_and_deterministic() -> None:
    a = render_kamailio_cfg(_opts(), "/tmp/x/d.list")
    b = render_kamailio_cfg(_opts(), "/tmp/x/d.list")
    assert a == b


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"workers": ()}, "workers"),
        ({"workers": (FrontWorker(28501), FrontWorker(28501))}, r"workers\[1\]"),
        ({"workers": (FrontWorker(28501, maxload=0),)}, "maxload"),
        ({"workers": (FrontWorker(28500),)}, "front's own port"),
        ({"workers": (FrontWorker(28501, duid="x"), FrontWorker(28502, duid="x"))}, "duid"),
        ({"trusted_addresses": ("10.0.0.300",)}, "trusted_addresses"),
        ({"tls_cert_file": "/tmp/c.pem"}, "together"),
        ({"blocked_user_agents": ('evil"ua',)}, "blocked_user_agents"),
        ({"blocked_user_agents": ("^start",)}, "blocked_user_agents"),
        ({"port": 70000}, "port"),
        ({"bind_address": "example.com"}, "bind_address"),
        ({"max_message_size": 100}, "max_message_size"),
        ({"source_header": "Via"}, "source_header"),
        ({"bind_address": "0.0.0.0", "advertise": "192.0.2.1", "internal_port": 28509}, "wildcard"),
        ({"advertise": "192.0.2.1"}, "internal_port"),
        (
            {
                "advertise": "192.0.2.1",
                "internal_port": 1,
                "workers": (FrontWorker(5070, "10.1.1.1"),),
            },
            "loopback",
        ),
    ],
)
def test_validation_names_the_option(changes: dict[str, object], match: str) -> None:
    with pytest.raises(FrontConfigError, match=match):
        render_kamailio_cfg(_opts(**changes), "/tmp/x/d.list")


def test_tls_needs_its_config_path() -> None:
    opts = _opts(tls_cert_file="/tmp/c.pem", tls_key_file="/tmp/k.pem", tls_port=28503)
    with pytest.raises(FrontConfigError, match="tls_cfg_path"):
        render_kamailio_cfg(opts, "/tmp/x/d.list")
    assert "listen=tls:127.0.0.1:28503" in render_kamailio_cfg(opts, "/tmp/d.list", "/tmp/t.cfg")
    tls = render_tls_cfg(opts)
    assert "certificate = /tmp/c.pem" in tls and "private_key = /tmp/k.pem" in tls


def _client_section(tls: str) -> str:
    return tls[tls.index("[client:default]") :]


def test_tls_client_verifies_carriers() -> None:
    """Outbound TLS: by default the carrier's certificate must verify against the system CA
    store; a CA file replaces the store; verification can be turned off."""
    base = {"tls_cert_file": "/tmp/c.pem", "tls_key_file": "/tmp/k.pem", "tls_port": 28503}
    default = _client_section(render_tls_cfg(_opts(**base)))
    assert "verify_certificate = yes" in default and "require_certificate = yes" in default
    assert f"ca_path = {SYSTEM_CA_DIR}" in default
    own = _client_section(render_tls_cfg(_opts(**base, tls_client_ca_file="/etc/rl/ca.pem")))
    assert "ca_list = /etc/rl/ca.pem" in own and "verify_certificate = yes" in own
    off = _client_section(render_tls_cfg(_opts(**base, tls_client_verify=False)))
    assert "verify_certificate = no" in off and "ca_list" not in off
    with pytest.raises(FrontConfigError, match="tls_client_ca_file"):
        render_tls_cfg(_opts(**base, tls_client_ca_file='/tmp/"x'))


def test_tls_client_options_from_sip_config() -> None:
    from roomline.config import SIPConfig

    sip = SIPConfig(
        workers=2,
        bind_address="127.0.0.1",
        tls_cert_file="/tmp/c.pem",
        tls_key_file="/tmp/k.pem",
        outbound_tls_verify=False,
        outbound_tls_ca_file="/tmp/ca.pem",
    )
    opts = front_options_from_sip(sip)
    assert opts.tls_client_verify is False and opts.tls_client_ca_file == "/tmp/ca.pem"
    assert front_options_from_sip(SIPConfig(workers=2)).tls_client_verify is True


def test_options_from_sip_config() -> None:
    from roomline.config import SIPConfig, SIPWorkerConfig

    sip = SIPConfig(
        workers=[SIPWorkerConfig(sip_port=5070), SIPWorkerConfig(sip_port=5071)],
        bind_address="0.0.0.0",
        blocked_user_agents=["scanner"],
    )
    opts = front_options_from_sip(sip, port=5060, trusted_addresses=("192.0.2.1",))
    assert [w.uri for w in opts.workers] == ["sip:127.0.0.1:5070", "sip:127.0.0.1:5071"]
    assert opts.blocked_user_agents == ("scanner",)
    assert opts.workers[0].maxload == 4
    opts.validate()


# --- kamailio -c ------------------------------------------------------------------------------


@needs_kamailio
@pytest.mark.parametrize(
    "split",
    [(True, True), (False, False), (True, False, False)],
    ids=["all-16k", "all-8k", "mixed"],
)
async def test_kamailio_accepts_every_pool_split(run_dir: Path, split: tuple[bool, ...]) -> None:
    workers = tuple(FrontWorker(28501 + i, wideband=w) for i, w in enumerate(split))
    await KamailioFront(_opts(workers=workers, contact_via_front=True), run_dir).check()


@needs_kamailio
async def test_kamailio_accepts_udp_only_config(run_dir: Path) -> None:
    front = KamailioFront(_opts(trusted_addresses=("127.0.0.9", "10.0.0.0/8")), run_dir)
    await front.check()
    assert (run_dir / "kamailio.cfg").exists() and (run_dir / "dispatcher.list").exists()
    assert not (run_dir / "tls.cfg").exists()


def _self_signed(run_dir: Path) -> tuple[Path, Path]:
    cert, key = run_dir / "cert.pem", run_dir / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=front.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@needs_kamailio
async def test_kamailio_accepts_tls_config_and_tls_call_gets_true_source(run_dir: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    if not any(os.path.exists(f"{d}/tls.so") for d in DEBIAN_MODULE_DIRS):
        pytest.skip("kamailio-tls-modules not installed")
    cert, key = _self_signed(run_dir)
    worker_port, port, tls_port = free_ports(3)
    worker = await start_worker(worker_port)
    opts = FrontOptions(
        workers=(FrontWorker(worker_port),),
        bind_address="127.0.0.1",
        port=port,
        tls_port=tls_port,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        ping_interval=1,
    )
    lines: list[str] = []
    front = KamailioFront(opts, run_dir, on_line=lines.append, stop_timeout=3.0)
    try:
        await front.check()
        assert "listen=tls:127.0.0.1:" in (run_dir / "kamailio.cfg").read_text()
        await front.start()
        await front.wait_ready()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", tls_port, ssl=ctx), 5
        )
        local = writer.get_extra_info("sockname")[:2]
        from roomline_harness.front_sip import request

        inv = request("INVITE", ("127.0.0.1", tls_port), local).replace(
            "SIP/2.0/UDP", "SIP/2.0/TLS"
        )
        inv = inv.replace(
            f"sip:+15550100@127.0.0.1:{tls_port}",
            f"sip:+15550100@127.0.0.1:{tls_port};transport=tls",
        )
        writer.write(inv.encode())
        await writer.drain()
        data = b""
        deadline = time.monotonic() + 5
        while b"SIP/2.0 200" not in data and time.monotonic() < deadline:
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            if not chunk:
                break
            data += chunk
        assert b"SIP/2.0 200" in data, data[:300]
        (seen,) = worker.requests("INVITE")
        assert header(seen, "X-Roomline-Source") == f"{local[0]}:{local[1]};proto=tls"
        writer.close()
    finally:
        await front.stop()
        worker.close()


@needs_kamailio
async def test_worker_invite_to_tls_trunk_verified_with_sni(run_dir: Path) -> None:
    """A worker's INVITE to a ``;transport=tls`` R-URI named by host: the front opens TLS to it,
    sends the host name as SNI, verifies the carrier's certificate against the CA file, and the
    INVITE arrives over TLS with the front's TLS Via."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    if not any(os.path.exists(f"{d}/tls.so") for d in DEBIAN_MODULE_DIRS):
        pytest.skip("kamailio-tls-modules not installed")
    cert, key = _self_signed(run_dir)
    carrier = run_dir / "carrier"
    carrier.mkdir()
    carrier_cert, carrier_key = _self_signed(carrier)
    worker_port, port, tls_port, carrier_port = free_ports(4)
    sni: list[str | None] = []
    got: asyncio.Queue[str] = asyncio.Queue()

    def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        sni.append(name)

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(carrier_cert, carrier_key)
    sctx.sni_callback = on_sni  # type: ignore[assignment]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await reader.read(4096)
            if not chunk:
                return
            data += chunk
        got.put_nowait(data.decode(errors="replace"))
        writer.close()

    carrier_srv = await asyncio.start_server(serve, "127.0.0.1", carrier_port, ssl=sctx)
    opts = FrontOptions(
        workers=(FrontWorker(worker_port),),
        bind_address="127.0.0.1",
        port=port,
        tls_port=tls_port,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        tls_client_ca_file=str(carrier_cert),
        ping_interval=1,
    )
    front = KamailioFront(opts, run_dir, on_line=lambda _line: None, stop_timeout=3.0)
    loop = asyncio.get_running_loop()
    uac = UAC()  # plays the worker: the front knows it by its UDP source
    await loop.create_datagram_endpoint(lambda: uac, local_addr=("127.0.0.1", worker_port))
    try:
        await front.start()
        await front.wait_ready()
        inv = request("INVITE", ("localhost", carrier_port), uac.addr).replace(
            f"sip:+15550100@localhost:{carrier_port} SIP/2.0",
            f"sip:+15550100@localhost:{carrier_port};transport=tls SIP/2.0",
        )
        inv = inv.replace(
            "Max-Forwards: 70", f"Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:{port};lr>"
        )
        uac.send(inv, ("127.0.0.1", port))
        seen = await asyncio.wait_for(got.get(), 10)
    finally:
        await front.stop()
        uac.close()
        carrier_srv.close()
    assert seen.startswith("INVITE sip:+15550100@localhost:"), seen[:200]
    assert f"Via: SIP/2.0/TLS 127.0.0.1:{tls_port}" in seen, seen
    assert sni == ["localhost"], sni


async def test_unreadable_tls_trunk_ca_file_is_named(run_dir: Path) -> None:
    """kamailio -c does not read tls.cfg: the front's own check names a missing CA file."""
    if not any(os.path.exists(f"{d}/tls.so") for d in DEBIAN_MODULE_DIRS):
        pytest.skip("kamailio-tls-modules not installed")
    opts = _opts(
        tls_cert_file="/tmp/c.pem",
        tls_key_file="/tmp/k.pem",
        tls_port=28503,
        tls_client_ca_file=str(run_dir / "missing-ca.pem"),
    )
    with pytest.raises(FrontError, match="sip.outbound_tls_ca_file: cannot read"):
        await KamailioFront(opts, run_dir).check()


@needs_kamailio
async def test_check_failure_carries_kamailios_error(run_dir: Path) -> None:
    empty = run_dir / "nomodules"
    empty.mkdir()
    front = KamailioFront(_opts(module_path=str(empty)), run_dir)
    with pytest.raises(FrontError, match=r"could not find module <tm>") as info:
        await front.check()
    assert "kamailio refused" in str(info.value)


def test_missing_binary_names_the_debian_package(run_dir: Path) -> None:
    with pytest.raises(FrontUnavailable, match="Debian package 'kamailio'"):
        find_kamailio("kamailio-not-installed-here")


async def test_missing_tls_module_names_the_debian_package(run_dir: Path) -> None:
    mods = run_dir / "mods"
    mods.mkdir()
    (mods / "tm.so").write_bytes(b"")
    opts = _opts(
        tls_cert_file="/tmp/c.pem",
        tls_key_file="/tmp/k.pem",
        tls_port=28503,
        module_path=str(mods),
    )
    fake = _fake_kamailio(run_dir, "exit 0")
    front = KamailioFront(opts, run_dir, binary=str(fake))
    with pytest.raises(FrontUnavailable, match="kamailio-tls-modules"):
        await front.check()


# --- supervision (fake binaries for the exits; the real one for a crash) ----------------------


def _fake_kamailio(run_dir: Path, run_body: str) -> Path:
    """A stand-in binary: ``-c`` succeeds, otherwise runs ``run_body`` (POSIX sh)."""
    path = run_dir / "fake-kamailio"
    path.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = "-c" ] && { echo "config file ok, exiting..."; exit 0; }; done\n'
        f"{run_body}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_lines_forwarded_and_restart_backs_off(run_dir: Path) -> None:
    fake = _fake_kamailio(
        run_dir, 'echo " 0(1) ERROR: <core> boom $$" >&2; echo "out line"; exit 3'
    )
    lines: list[str] = []
    front = KamailioFront(
        _opts(module_path=str(run_dir)),
        run_dir,
        binary=str(fake),
        on_line=lines.append,
        backoff_initial=0.1,
        backoff_max=0.4,
        stable_after=60,
    )
    await front.start()
    await asyncio.sleep(1.3)
    await front.stop()
    # Delays 0.1, 0.2, 0.4, 0.4 ...: about 4-5 restarts in 1.3 s, not dozens.
    assert 3 <= front.restarts <= 7, front.restarts
    assert front.last_exit == 3
    assert any("ERROR: <core> boom" in ln for ln in lines)
    assert any(ln == "out line" for ln in lines)


async def test_stop_escalates_to_sigkill(run_dir: Path) -> None:
    fake = _fake_kamailio(run_dir, "trap '' TERM; echo started >&2; while :; do sleep 0.1; done")
    lines: list[str] = []
    front = KamailioFront(
        _opts(module_path=str(run_dir)),
        run_dir,
        binary=str(fake),
        on_line=lines.append,
        stop_timeout=0.5,
    )
    await front.start()
    deadline = time.monotonic() + 5
    while "started" not in lines and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    pid = front.pid
    assert pid is not None
    t0 = time.monotonic()
    await front.stop()
    assert 0.4 <= time.monotonic() - t0 < 3.0
    assert front.last_exit == -signal.SIGKILL
    assert front.restarts == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@needs_kamailio
async def test_real_kamailio_restarted_after_crash(run_dir: Path) -> None:
    worker_port, port = free_ports(2)
    worker = await start_worker(worker_port)
    lines: list[str] = []
    opts = FrontOptions(
        workers=(FrontWorker(worker_port),), bind_address="127.0.0.1", port=port, ping_interval=1
    )
    front = KamailioFront(
        opts, run_dir, on_line=lines.append, backoff_initial=0.2, stop_timeout=3.0
    )
    try:
        await front.start()
        await front.wait_ready()
        first = front.pid
        assert first is not None
        assert any("kamailio" in ln.lower() or "INFO" in ln for ln in lines)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (front.pid in (None, first)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert front.pid not in (None, first), "\n".join(lines[-20:])
        assert front.restarts == 1
        await front.wait_ready()
        from roomline_harness.front_sip import open_uac, request

        uac = await open_uac()
        dest = ("127.0.0.1", port)
        uac.send(request("INVITE", dest, uac.addr), dest)
        final = await uac.final(5.0)
        assert final is not None and status_of(final) == 200
        uac.close()
    finally:
        await front.stop()
        worker.close()
    assert front.pid is None


@needs_kamailio
async def test_reload_config_restarts_on_new_files(run_dir: Path) -> None:
    worker_port, port = free_ports(2)
    worker = await start_worker(worker_port)
    opts = FrontOptions(
        workers=(FrontWorker(worker_port),), bind_address="127.0.0.1", port=port, ping_interval=1
    )
    front = KamailioFront(opts, run_dir, on_line=lambda _line: None, backoff_initial=0.1)
    try:
        await front.start()
        await front.wait_ready()
        first = front.pid
        front.options = FrontOptions(
            workers=(FrontWorker(worker_port, maxload=1),),
            bind_address="127.0.0.1",
            port=port,
            ping_interval=1,
        )
        await front.reload_config()
        deadline = time.monotonic() + 10
        while front.pid in (None, first) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await front.wait_ready()
        assert front.pid not in (None, first)
        assert "maxload=1" in (run_dir / "dispatcher.list").read_text()
    finally:
        await front.stop()
        worker.close()

"""Units of the front integration: sip.* front config, worker planning, X-Roomline-Source trust,
front options from the config, and the clear error when Kamailio is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.service.front import front_options_from_sip
from bridge.service.sip_front import SIPFront, SIPFrontError
from bridge.service.supervisor import WorkerSpec, WorkerSupervisor, pools
from bridge.service.workers import front_sources, plan_workers, rtp_slices
from bridge.worker.__main__ import parse_args
from bridge.worker.source import SOURCE_HEADER, parse_source_header, true_source
from roomline.config import ConfigError, SIPWorkerConfig, load_config


def _cfg(**sip: object):  # type: ignore[no-untyped-def]
    return load_config(None, env={}, overrides={f"sip.{k}": v for k, v in sip.items()})


# --- config -------------------------------------------------------------------------------------
def test_default_is_front_with_eight_workers_of_four_calls() -> None:
    sip = _cfg().sip
    assert sip.front_enabled and sip.workers == "auto" and sip.worker_count() == 8
    assert (sip.port, sip.tls_port, sip.worker_base_port) == (5060, 5061, 5070)
    assert (sip.rtp_port_start, sip.rtp_port_end) == (10000, 10999)


@pytest.mark.parametrize(("value", "count"), [(3, 3), ("auto", 8), ("5", 5), (1, 1), (64, 64)])
def test_workers_count_or_auto(value: object, count: int) -> None:
    assert _cfg(workers=value).sip.worker_count() == count


def test_auto_follows_target_calls() -> None:
    assert _cfg(target_calls=24).sip.worker_count() == 6
    assert _cfg(target_calls=25).sip.worker_count() == 7
    assert _cfg(target_calls=1).sip.worker_count() == 1


def test_older_worker_list_keeps_working_in_direct_mode() -> None:
    sip = _cfg(workers=[{"sip_port": 5080, "rtp_port_start": 20000, "rtp_port_end": 20099}]).sip
    assert not sip.front_enabled
    assert sip.workers == [SIPWorkerConfig(5080, 20000, 20099)]
    (spec,) = plan_workers(sip)
    assert (spec.sip_port, spec.rtp_start, spec.rtp_end, spec.sip_host) == (
        5080,
        20000,
        20099,
        "0.0.0.0",
    )


@pytest.mark.parametrize(
    ("sip", "needle"),
    [
        ({"workers": "many"}, "sip.workers: expected a worker count"),
        ({"workers": 0}, "sip.workers: expected 1..64"),
        ({"workers": 65}, "sip.workers: expected 1..64"),
        ({"workers": True}, "sip.workers: expected a worker count"),
        ({"workers": []}, "sip.workers: at least one worker"),
        ({"workers": [{"sip_prot": 1}]}, "sip.workers[0].sip_prot: unknown key"),
        ({"target_calls": 0}, "sip.target_calls"),
        ({"target_calls": 1000}, "sip.target_calls"),
        ({"tls_cert_file": "/c.pem"}, "sip.tls_key_file"),
        ({"tls_key_file": "/k.pem"}, "sip.tls_cert_file"),
        (
            {"tls_cert_file": "/c.pem", "tls_key_file": "/k.pem", "tls_port": 5060},
            "sip.tls_port",
        ),
        ({"worker_base_port": 5058}, "include sip.port 5060"),
        ({"worker_base_port": 65530}, "past port 65535"),
        ({"rtp_port_end": 10050}, "at least 10 are needed"),
        ({"rtp_port_start": 50500, "rtp_port_end": 51500}, "overlaps rtc"),
        ({"port": 10010}, "sip.port: port 10010 lies inside"),
        ({"trusted_addresses": ["carrier.example"]}, "sip.trusted_addresses[0]"),
        ({"pike_reqs_density": 0}, "sip.pike_reqs_density"),
        ({"port": 0}, "sip.port"),
    ],
)
def test_front_config_errors(sip: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as exc:
        _cfg(**sip)
    assert needle in str(exc.value), str(exc.value)


def test_workers_from_environment() -> None:
    cfg = load_config(None, env={"ROOMLINE_SIP_WORKERS": "3", "ROOMLINE_SIP_PORT": "5062"})
    assert cfg.sip.worker_count() == 3 and cfg.sip.port == 5062
    cfg = load_config(None, env={"ROOMLINE_SIP_WORKERS": "auto"})
    assert cfg.sip.worker_count() == 8


# --- worker planning ----------------------------------------------------------------------------
def test_rtp_slices_are_disjoint_even_and_inside() -> None:
    sl = rtp_slices(10000, 10999, 8)
    assert len(sl) == 8
    assert all(s.start % 2 == 0 and s.end - s.start + 1 >= 10 for s in sl)
    assert sl[0].start == 10000 and sl[-1].end <= 10999
    assert all(a.end < b.start for a, b in zip(sl, sl[1:], strict=False))
    odd = rtp_slices(10001, 10100, 3)
    assert odd[0].start == 10002 and odd[-1].end <= 10100
    with pytest.raises(ValueError):
        rtp_slices(10000, 10002, 4)


def test_plan_binds_sip_to_loopback_and_rtp_to_bind_address() -> None:
    specs = plan_workers(_cfg().sip)
    assert [s.sip_port for s in specs] == list(range(5070, 5078))
    assert all(s.sip_host == "127.0.0.1" and s.public_ip == "" for s in specs)
    args = list(specs[0].extra_args)
    assert args[args.index("--rtp-host") + 1] == "0.0.0.0"
    assert args[args.index("--front-source") + 1] == "127.0.0.1:5060"
    assert "--rtp-public-ip" not in args  # pjsua advertises the host's own address


def test_plan_narrowband_workers() -> None:
    """``sip.wideband: false`` puts every worker on the 8 kHz bridge clock, in both modes."""
    assert all(s.bridge_rate == 8000 for s in plan_workers(_cfg(wideband=False).sip))
    direct = [{"sip_port": 5080, "rtp_port_start": 20000, "rtp_port_end": 20099}]
    (spec,) = plan_workers(_cfg(wideband=False, workers=direct).sip)
    assert spec.bridge_rate == 8000 and not spec.wideband
    (spec,) = plan_workers(_cfg(workers=direct).sip)
    assert spec.bridge_rate == 16000 and spec.wideband
    # The rate is a field; the supervisor turns it into the worker's --bridge-rate.
    assert all("--bridge-rate" not in s.extra_args for s in plan_workers(_cfg().sip))
    assert parse_args(["--bridge-rate", "8000"]).bridge_rate == 8000
    assert parse_args([]).bridge_rate == 16000
    with pytest.raises(SystemExit):  # argparse: a rate the bridge does not run
        parse_args(["--bridge-rate", "44100"])
    with pytest.raises(ConfigError, match="wideband"):
        _cfg(wideband="no")
    with pytest.raises(ValueError, match="bridge_rate"):
        WorkerSpec(5070, 10000, 10099, bridge_rate=44100)
    with pytest.raises(ValueError, match="extra_args"):
        WorkerSpec(5070, 10000, 10099, extra_args=("--bridge-rate", "8000"))


def _rates(**sip: object) -> list[int]:
    return [s.bridge_rate for s in plan_workers(_cfg(**sip).sip)]


@pytest.mark.parametrize(
    ("workers", "wide"), [(1, 1), (2, 1), (3, 2), (8, 4), ("auto", 4)]
)  # fmt: skip
def test_plan_auto_splits_half_wideband_rounded_up(workers: object, wide: int) -> None:
    """``wideband_workers: auto``: the first half of the workers (rounded up) at 16 kHz."""
    rates = _rates(workers=workers)
    assert rates == [16000] * wide + [8000] * (len(rates) - wide)
    assert _cfg(workers=workers).sip.wideband_worker_count() == wide


def test_plan_explicit_wideband_workers() -> None:
    assert _rates(workers=4, wideband_workers=3) == [16000, 16000, 16000, 8000]
    assert _rates(workers=4, wideband_workers=0) == [8000] * 4
    assert _rates(workers=4, wideband_workers=4) == [16000] * 4
    assert _rates(workers=3, wideband_workers="1") == [16000, 8000, 8000]
    assert _rates(workers=3, wideband=False) == [8000] * 3
    assert _rates(workers=3, wideband=False, wideband_workers=0) == [8000] * 3
    cfg = load_config(None, env={"ROOMLINE_SIP_WORKERS": "4", "ROOMLINE_SIP_WIDEBAND_WORKERS": "1"})
    assert [s.bridge_rate for s in plan_workers(cfg.sip)] == [16000, 8000, 8000, 8000]
    # Direct mode: one clock for all, as before (auto).
    direct = [
        {"sip_port": 5080 + i, "rtp_port_start": 20000 + 100 * i, "rtp_port_end": 20099 + 100 * i}
        for i in range(3)
    ]
    assert _rates(workers=direct) == [16000] * 3
    assert _rates(workers=direct, wideband=False) == [8000] * 3


@pytest.mark.parametrize(
    ("sip", "needle"),
    [
        ({"wideband_workers": "half"}, "sip.wideband_workers: expected 'auto'"),
        ({"wideband_workers": True}, "sip.wideband_workers: expected 'auto'"),
        ({"wideband_workers": 1.5}, "sip.wideband_workers: expected 'auto'"),
        ({"wideband_workers": -1}, "sip.wideband_workers: expected 0..8"),
        (
            {"workers": 2, "wideband_workers": 3},
            "sip.wideband_workers: expected 0..2 (sip.workers)",
        ),
        ({"wideband": False, "wideband_workers": 2}, "contradicts sip.wideband: false"),
        (
            {
                "workers": [{"sip_port": 5080, "rtp_port_start": 20000, "rtp_port_end": 20099}],
                "wideband_workers": 1,
            },
            "sip.wideband_workers: needs the front",
        ),
        (
            {
                "workers": [{"sip_port": 5080, "rtp_port_start": 20000, "rtp_port_end": 20099}],
                "wideband_workers": 0,
            },
            "sip.wideband_workers: needs the front",
        ),
    ],
)
def test_wideband_workers_config_errors(sip: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _cfg(**sip)
    assert needle in str(exc.value), str(exc.value)


def test_front_options_put_each_worker_in_its_pool() -> None:
    opts = front_options_from_sip(_cfg(workers=3).sip)
    assert [(w.port, w.wideband, w.set_id) for w in opts.workers] == [
        (5070, True, 1),
        (5071, True, 1),
        (5072, False, 2),
    ]


def test_plan_advertises_public_ip_or_specific_bind_in_sdp() -> None:
    args = plan_workers(_cfg(public_ip="203.0.113.7").sip)[0].extra_args
    assert args[list(args).index("--rtp-public-ip") + 1] == "203.0.113.7"
    sip = _cfg(bind_address="192.0.2.10").sip
    args = plan_workers(sip)[0].extra_args
    assert args[list(args).index("--rtp-public-ip") + 1] == "192.0.2.10"
    assert front_sources(sip) == ("127.0.0.1:5060", "192.0.2.10:5060")
    # 1:1 NAT: private bind + public_ip → the front reaches workers from its own loopback port
    nat = _cfg(bind_address="192.0.2.10", public_ip="203.0.113.7").sip
    assert "127.0.0.1:5078" in front_sources(nat)
    opts = front_options_from_sip(nat)
    assert opts.advertise == "203.0.113.7" and opts.internal_port == 5078
    opts.validate()


def test_wildcard_bind_behind_nat_binds_the_routing_address_and_advertises() -> None:
    from bridge.service.workers import _route_source, front_bind_address

    sip = _cfg(public_ip="203.0.113.7").sip  # not an address of this host
    local = _route_source("203.0.113.7")
    if not local:
        pytest.skip("no route towards 203.0.113.7 here")
    assert front_bind_address(sip) == local
    opts = front_options_from_sip(sip)
    assert (opts.bind_address, opts.advertise, opts.internal_port) == (local, "203.0.113.7", 5078)
    assert "127.0.0.1:5078" in front_sources(sip)
    opts.validate()
    # A public address that is this host's own: bind as configured, advertise nothing.
    own = _cfg(public_ip="127.0.0.1").sip
    assert front_bind_address(own) == "0.0.0.0"
    assert front_options_from_sip(own).advertise == ""


def test_worker_parses_front_options() -> None:
    o = parse_args(
        [
            "--sip-host",
            "127.0.0.1",
            "--rtp-host",
            "0.0.0.0",
            "--rtp-public-ip",
            "203.0.113.7",
            "--front-source",
            "127.0.0.1:5060",
            "--front-source",
            "10.0.0.5:5060",
        ]
    )
    assert o.rtp_host == "0.0.0.0" and o.rtp_public_ip == "203.0.113.7"
    assert o.front_sources == ("127.0.0.1:5060", "10.0.0.5:5060")
    plain = parse_args([])
    assert plain.rtp_host is None and plain.rtp_public_ip is None and plain.front_sources == ()


# --- X-Roomline-Source --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("203.0.113.5:5060;proto=udp", ("203.0.113.5", 5060, "udp")),
        ("203.0.113.5:41234;proto=TLS", ("203.0.113.5", 41234, "tls")),
        ("[2001:db8::1]:5061;proto=tcp", ("2001:db8::1", 5061, "tcp")),
        ("198.51.100.1:5060", ("198.51.100.1", 5060, "")),
    ],
)
def test_source_header_parses(value: str, expected: tuple[str, int, str]) -> None:
    src = parse_source_header(value)
    assert src is not None and (src.ip, src.port, src.transport) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "evil",
        "1.2.3.4",
        "1.2.3.4:0",
        "1.2.3.4:70000",
        "2001:db8::1:5060",
        "[1.2.3.4]:5060",
        "999.1.1.1:5060",
        "1.2.3.4:5060;proto=carrier-pigeon",
        "10.0.0.1:5060, 127.0.0.1:5060",
    ],
)
def test_source_header_rejects(value: str) -> None:
    assert parse_source_header(value) is None


FRONT = ("127.0.0.1:5060",)


def test_header_trusted_only_from_the_front() -> None:
    headers = {"From": "<sip:a@b>", SOURCE_HEADER: "203.0.113.5:40000;proto=tcp"}
    src, clean = true_source("127.0.0.1:5060", headers, FRONT)
    assert (src.ip, src.port, src.transport, src.via_front) == ("203.0.113.5", 40000, "tcp", True)
    assert clean == {"From": "<sip:a@b>"}
    # Any other sender, even on loopback: its header is ignored and removed.
    for sender in ("127.0.0.1:40000", "10.0.0.1:5060", "127.0.0.2:5060"):
        src, clean = true_source(sender, headers, FRONT)
        assert (src.ip, src.via_front) == (sender.rsplit(":", 1)[0], False)
        assert SOURCE_HEADER not in clean
    # Not behind a front (direct mode): never trusted.
    src, _ = true_source("127.0.0.1:5060", headers, ())
    assert src.ip == "127.0.0.1" and not src.via_front


def test_header_case_and_garbage_from_the_front() -> None:
    src, clean = true_source("127.0.0.1:5060", {"x-roomline-source": "[::1]:5070"}, FRONT)
    assert (src.ip, src.port) == ("::1", 5070) and clean == {}
    src, _ = true_source("127.0.0.1:5060", {SOURCE_HEADER: "junk"}, FRONT)
    assert (src.ip, src.port, src.via_front) == ("127.0.0.1", 5060, False)
    src, _ = true_source("127.0.0.1:5060", {}, FRONT)
    assert (src.ip, src.via_front) == ("127.0.0.1", False)


# --- front options and the missing binary -------------------------------------------------------
def test_front_options_from_the_sip_config() -> None:
    sip = _cfg(
        port=5062,
        tls_cert_file="/etc/roomline/sip.crt",
        tls_key_file="/etc/roomline/sip.key",
        trusted_addresses=["192.0.2.0/24"],
        pike_reqs_density=50,
        workers=3,
    ).sip
    opts = front_options_from_sip(sip, [4, 2])
    assert (opts.port, opts.tls_port, opts.tls_enabled) == (5062, 5061, True)
    assert [(w.uri, w.maxload) for w in opts.workers] == [
        ("sip:127.0.0.1:5070", 4),
        ("sip:127.0.0.1:5071", 2),
        ("sip:127.0.0.1:5072", 4),
    ]
    assert opts.trusted_addresses == ("192.0.2.0/24",) and opts.pike_reqs_density == 50
    assert opts.advertise == ""
    opts.validate()
    # Contact of the workers' replies → the front (rlw-<port>), routed back statelessly.
    assert opts.contact_via_front
    from bridge.service.kamailio_cfg import render_kamailio_cfg

    text = render_kamailio_cfg(opts, "/tmp/d.list", "/tmp/t.cfg")
    assert 'append_hf("Contact: <sip:rlw-$sp@$avp(rl_fh):$avp(rl_fp)>' in text
    assert '$du = "sip:127.0.0.1:" + $(rU{s.substr,4,0});' in text


async def test_missing_kamailio_is_a_clear_error(tmp_path: Path) -> None:
    sip = _cfg(workers=2).sip
    sup = WorkerSupervisor(plan_workers(sip), lambda req: None)  # type: ignore[arg-type,return-value]
    front = SIPFront(sip, sup, str(tmp_path), binary="kamailio-not-installed")
    with pytest.raises(SIPFrontError) as exc:
        await front.preflight()
    msg = str(exc.value)
    assert "install the Debian package 'kamailio'" in msg and "apt-get install kamailio" in msg
    assert all(not w.ready and w.proc is None for w in sup.workers)


def test_health_and_metrics_before_start(tmp_path: Path) -> None:
    sip = _cfg(workers=2).sip
    sup = WorkerSupervisor(plan_workers(sip), lambda req: None)  # type: ignore[arg-type,return-value]
    front = SIPFront(sip, sup, str(tmp_path))
    name, ok, detail = front.health()
    assert (name, ok) == ("sip-front", False) and "not running" in detail
    fams = {f[0]: f for f in front.metrics()}
    assert fams["roomline_sip_front_up"][3] == [({}, 0)]
    front._on_line(" 3(42) INFO: <script>: front: all workers full, 486 to 1.2.3.4:5060")
    front._on_line("front: flood from 1.2.3.4, banned for 300s")
    fams = {f[0]: f for f in front.metrics()}
    got = dict((lbl["reason"], v) for lbl, v in fams["roomline_sip_front_rejections_total"][3])
    assert got["all_busy_486"] == 1 and got["flood_ban"] == 1 and got["malformed"] == 0


def test_pick_worker_prefers_a_free_16k_worker_then_most_free_slots() -> None:
    """Outbound calls: a 16 kHz worker while one has a free slot (a wideband callee stays
    wideband), else an 8 kHz one; within a pool the worker with the most free slots."""
    sup = WorkerSupervisor(plan_workers(_cfg(workers=4).sip), lambda req: None)  # type: ignore[arg-type,return-value]
    w16a, w16b, w8a, w8b = sup.workers
    assert [w.bridge_rate for w in sup.workers] == [16000, 16000, 8000, 8000]
    for w in sup.workers:
        w.ready, w.max_calls = True, 4

    def busy(n: int) -> dict[str, str]:
        return {f"c{i}": "active" for i in range(n)}

    w16a.calls, w8a.calls = busy(1), {}
    assert sup.pick_worker() is w16b
    w16b.calls = busy(2)
    assert sup.pick_worker() is w16a  # 3 free beat 2 free; the idle 8 kHz workers wait
    w16a.calls, w16b.calls, w8a.calls = busy(4), busy(4), {"r": "ringing"}
    assert sup.pick_worker() is w8b
    w16a.calls, w16a.ready = {}, False  # a worker that is not ready takes nothing
    assert sup.pick_worker() is w8b
    w8a.calls = w8b.calls = busy(4)
    assert sup.pick_worker() is None
    assert pools(sup.workers) == "2 at 16 kHz, 2 at 8 kHz"
    assert pools(w for w in sup.workers if w.ready) == "1 at 16 kHz, 2 at 8 kHz"
    assert pools([]) == "none"
    assert sup.metrics()["bridge_workers_wideband"] == 2


async def test_impossible_front_options_are_a_roomline_error(tmp_path: Path) -> None:
    # TLS files Kamailio cannot quote: refused while rendering, reported as SIPFrontError.
    sip = _cfg(workers=1, tls_cert_file='/c"rt.pem', tls_key_file="/k.pem").sip
    sup = WorkerSupervisor(plan_workers(sip), lambda req: None)  # type: ignore[arg-type,return-value]
    front = SIPFront(sip, sup, str(tmp_path))
    with pytest.raises(SIPFrontError, match="tls_cert_file"):
        await front.preflight()

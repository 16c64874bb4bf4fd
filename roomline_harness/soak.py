"""Bridge soak (issue 13): the whole appliance with its default configuration under steady SIP load.

:func:`run_soak` starts ``roomline serve`` with ``roomline/defaults/roomline.yaml`` (the LAN trunk and
the ``ivr`` agent for every caller; only ports, the data directory, loopback binding and JSON logs
are changed) and SIPp keeping ``concurrent`` PCMU calls of ``call_s`` seconds up (a 1 kHz tone
played from a pcap, BYE from SIPp) for ``duration`` seconds; then it stops placing calls, lets the
running ones finish and reads back:

* SIPp's successful and failed calls;
* worker exits: ``roomline_sip_worker_crashes_total`` / ``_restarts_total``, ``bridge worker died``
  and faulthandler lines in the log, the worker's pid at the start and the end;
* RSS, open fds and threads of every process of the appliance's tree (main, bridge worker, agent
  jobs) at the start (idle, before the first call), under load and at the end (idle again).

Used by ``tests/bridge/test_soak.py`` (which fails on any :meth:`SoakResult.problems`) and
``bench/soak_bridge.py`` (longer runs, prints the same report).

Ports: one block of :data:`BLOCK` consecutive ports, free for TCP and UDP, holds the appliance's
SIP port, RTP and WebRTC ranges and SIPp's SIP, control and media ports. It is searched in
``port_range`` (``ROOMLINE_TEST_PORTS=38000-38999`` when unset and the variable is set; else the
range of :func:`roomline_harness.net.free_udp_range`); the HTTP port is in the block too when a range
was given, else the kernel picks it (``--port-file``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from roomline_harness.net import free_block, parse_range
from roomline_harness.paths import ROOT
from roomline_harness.server import Server, start_server, stop_server
from roomline_harness.sip.fullstack import metrics, worker_pid
from roomline_harness.sip.pcap import write_tone_pcap
from roomline_harness.sip.sipp import SIPP, uac_scenario

DEFAULT_CONFIG = ROOT / "roomline" / "defaults" / "roomline.yaml"
PORTS_ENV = "ROOMLINE_TEST_PORTS"
#: Ports per run (see :class:`SoakPorts`).
#: Ports in a soak's block: fixed offsets below 100 (see :class:`SoakPorts`), RTP above.
BLOCK = 500
#: Most bridge workers a soak runs (their SIP ports are offsets 8..8+MAX_WORKERS-1).
MAX_WORKERS = 16
#: The number every caller dials (the default rule makes a room per caller, whatever the number).
NUMBER = "+15550100"
#: Seconds SIPp waits for an expected message before it fails the call.
RECV_TIMEOUT_S = 30

Progress = Callable[[str], None]


# --- ports -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoakPorts:
    """Offsets in the block: 0 HTTP, 1 SIP (the Kamailio front), 2 SIPp SIP, 3 SIPp control, 4/6
    SIPp media (audio, video), 8.. the bridge workers behind the front (one SIP port each), 24–87
    WebRTC, 100–499 the workers' RTP (split between them by the appliance)."""

    first: int
    fixed_http: bool
    workers: int = 1

    @property
    def http(self) -> int:
        return self.first if self.fixed_http else 0

    @property
    def sip(self) -> int:
        return self.first + 1

    @property
    def sipp(self) -> int:
        return self.first + 2

    @property
    def worker(self) -> int:
        """The first bridge worker behind the SIP front (loopback); the others follow it."""
        return self.first + 8

    @property
    def worker_ports(self) -> list[int]:
        return [self.worker + i for i in range(self.workers)]

    @property
    def sipp_control(self) -> int:
        return self.first + 3

    @property
    def sipp_media(self) -> int:
        return self.first + 4

    @property
    def rtc(self) -> tuple[int, int]:
        return self.first + 24, self.first + 87

    @property
    def rtp(self) -> tuple[int, int]:
        return self.first + 100, self.first + BLOCK - 1


def pick_ports(port_range: tuple[int, int] | None = None, workers: int = 1) -> SoakPorts:
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers: 1..{MAX_WORKERS}, got {workers}")
    if port_range is None and os.environ.get(PORTS_ENV):
        port_range = parse_range(os.environ[PORTS_ENV])
    if port_range is None:
        return SoakPorts(free_block(BLOCK), fixed_http=False, workers=workers)
    return SoakPorts(free_block(BLOCK, *port_range), fixed_http=True, workers=workers)


def default_config_sections(ports: SoakPorts) -> dict[str, dict[str, Any]]:
    """The embedded default config as sections for :func:`roomline_harness.server.start_server`.

    ``server`` and ``rtc`` keep the harness's loopback settings (its data dir, kernel-chosen or
    block HTTP port); the SIP worker gets the block's ports and binds loopback; logs are JSON.
    Everything else (trunk, dispatch rule, agents, limits) is the file's.
    """
    cfg: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    sections = {k: v for k, v in cfg.items() if k not in ("server", "rtc")}
    if ports.fixed_http:
        sections["server"] = {"port": ports.http}
    sections["rtc"] = {"port_range_start": ports.rtc[0], "port_range_end": ports.rtc[1]}
    sections["logging"] = {**cfg["logging"], "format": "json"}
    sip = sections["sip"]
    # The default front-door setup (Kamailio on sip.port, workers behind it), with as many
    # workers as the soak asks for (one at its full 4 calls, or the machine's full count).
    sip["bind_address"] = "127.0.0.1"
    sip["port"] = ports.sip
    sip["workers"] = ports.workers
    sip["worker_base_port"] = ports.worker
    sip["rtp_port_start"], sip["rtp_port_end"] = ports.rtp
    return sections


# --- processes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcStat:
    pid: int
    role: str
    rss_kb: int
    fds: int
    threads: int


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _role(pid: int, main: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    words = [a.decode(errors="replace") for a in argv if a]
    if pid == main:
        return "main (roomline serve)"
    if "bridge.worker" in words:
        port = words[words.index("--sip-port") + 1] if "--sip-port" in words else "?"
        return f"bridge worker :{port}"
    if "roomline_agents.sdk.worker" in words:
        return "agent job"
    return " ".join([Path(words[0]).name, *words[1:3]]) if words else "?"


def _stat(pid: int, main: int) -> ProcStat | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields.get("VmRSS", "0 kB").split()[0])
        threads = int(fields["Threads"])
        if fields.get("State", "").split()[:1] == ["Z"]:  # exited, its parent has not reaped it
            return ProcStat(pid, "exited (zombie)", 0, 0, threads)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return ProcStat(pid, _role(pid, main), rss, fds, threads)
    except (OSError, KeyError, ValueError):  # exited meanwhile
        return None


def descendants(root: int) -> list[int]:
    """``root`` and the pids of all its descendants, parents first (from /proc)."""
    kids = _children()
    order, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        order.append(pid)
        todo.extend(sorted(kids.get(pid, [])))
    return order


def process_tree(root: int) -> list[ProcStat]:
    """``root`` and all its descendants, parents first."""
    return [s for s in (_stat(p, root) for p in descendants(root)) if s is not None]


def format_tree(label: str, stats: list[ProcStat]) -> str:
    lines = [f"{label}:", f"  {'pid':>7}  {'role':<24} {'rss MB':>8} {'fds':>5} {'threads':>7}"]
    for s in stats:
        lines.append(
            f"  {s.pid:>7}  {s.role:<24} {s.rss_kb / 1024:>8.1f} {s.fds:>5} {s.threads:>7}"
        )
    return "\n".join(lines)


# --- SIPp --------------------------------------------------------------------------------------
def sipp_command(
    scenario: Path, ports: SoakPorts, concurrent: int, stat_file: Path, error_file: Path
) -> list[str]:
    """SIPp placing calls (1/s, at most ``concurrent`` at once) until SIGUSR1, with no global
    timeout; a call fails when an expected message is ``RECV_TIMEOUT_S`` late."""
    assert SIPP is not None
    return [
        SIPP,
        "-sf",
        str(scenario),
        f"127.0.0.1:{ports.sip}",
        "-s",
        NUMBER,
        "-i",
        "127.0.0.1",
        "-p",
        str(ports.sipp),
        "-cp",
        str(ports.sipp_control),
        "-mi",
        "127.0.0.1",
        "-mp",
        str(ports.sipp_media),
        "-l",
        str(concurrent),
        "-r",
        "1",
        "-nostdin",
        "-recv_timeout",
        f"{RECV_TIMEOUT_S}s",
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "5",
        "-trace_err",
        "-error_file",
        str(error_file),
    ]


def write_scenario(workdir: Path, call_s: float) -> Path:
    """A PCMU call playing a 1 kHz tone for ``call_s`` seconds, from caller +1555100<n>.

    The SDP offers SIPp's fixed media port (``[media_port]``) to every call instead of
    ``[auto_media_port]`` (media port + 4 × call number), which would walk over thousands of ports
    in a long run: the bridge sends each call's RTP to the same socket, which SIPp never reads.
    """
    write_tone_pcap(workdir / "tone.pcap", 1000.0, call_s + 1)
    path = uac_scenario(
        workdir / "uac.xml",
        pcap=workdir / "tone.pcap",
        play_ms=int(call_s * 1000),
        caller="+1555100[call_number]",
    )
    path.write_text(path.read_text().replace("[auto_media_port]", "[media_port]"))
    return path


_COUNT = re.compile(r"^\s*(Successful call|Failed call)\s*\|.*\|\s*(\d+)\s*$", re.M)


def sipp_counts(output: str) -> tuple[int, int]:
    """(successful, failed) calls, cumulative, from SIPp's last statistics screen."""
    found: dict[str, int] = {}
    for m in _COUNT.finditer(output):
        found[m.group(1)] = int(m.group(2))
    return found.get("Successful call", 0), found.get("Failed call", 0)


def sipp_stat_counts(path: Path) -> tuple[int, int]:
    """(successful, failed) calls, cumulative, from the last line of SIPp's ``-trace_stat`` CSV
    (written every 5 s while it runs; its screen reaches stdout only when it exits)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, 0
    if len(lines) < 2:
        return 0, 0
    row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
    try:
        return int(row.get("SuccessfulCall(C)", 0)), int(row.get("FailedCall(C)", 0))
    except ValueError:
        return 0, 0


# --- the run -----------------------------------------------------------------------------------
@dataclass
class SoakResult:
    duration: float
    concurrent: int
    call_s: float
    ports: SoakPorts
    workdir: Path
    log_path: Path
    calls_ok: int = 0
    calls_failed: int = 0
    sipp_rc: int | None = None
    sipp_tail: str = ""
    sipp_errors: str = ""
    crashes: float = 0.0
    restarts: float = 0.0
    died: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    #: Bridge worker pids by SIP port, when the calls start and when they have ended.
    worker_pids_start: dict[int, int | None] = field(default_factory=dict)
    worker_pids_end: dict[int, int | None] = field(default_factory=dict)
    server_alive: bool = True
    agent_jobs_started: float = 0.0
    agent_jobs_failed: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[ProcStat]] = field(default_factory=dict)
    #: Calls the worker reported ended, and those that played room audio (the agent) to the phone.
    bridged_calls: int = 0
    room_audio_calls: int = 0
    notes: list[str] = field(default_factory=list)
    #: Times /metrics did not answer within its timeout during the run (the host's load).
    metrics_stalls: int = 0

    @property
    def expected_calls(self) -> int:
        """Calls an unloaded host completes: ``concurrent`` lines, each a call per ~``call_s``+1 s."""
        return int(self.concurrent * self.duration / (self.call_s + 1))

    def worker_exits(self) -> int:
        return int(max(self.crashes, self.restarts, len(self.died)))

    def problems(self, min_calls: int = 1) -> list[str]:
        """Everything that fails a soak; empty when it passed."""
        out = list(self.notes)
        if self.calls_failed:
            out.append(f"{self.calls_failed} SIPp call(s) failed (see {self.workdir}/sipp_err.log)")
        if self.calls_ok < min_calls:
            out.append(f"only {self.calls_ok} successful calls (want >= {min_calls})")
        if self.crashes or self.restarts:
            out.append(f"bridge worker crashes={self.crashes:g} restarts={self.restarts:g}")
        if self.died:
            out.append(f"'bridge worker died' in the log: {self.died}")
        if self.fatal:
            out.append(f"fatal errors in the log: {self.fatal[:5]}")
        if (
            None in self.worker_pids_start.values()
            or self.worker_pids_end != self.worker_pids_start
        ):
            out.append(f"bridge worker pids {self.worker_pids_start} -> {self.worker_pids_end}")
        if not self.server_alive:
            out.append("roomline serve exited")
        return out

    def report(self) -> str:
        lines = [
            f"soak: {self.duration:.0f} s, {self.concurrent} concurrent calls of {self.call_s:g} s"
            f" (default config, `ivr` agent per caller), SIP port {self.ports.sip},"
            f" {self.ports.workers} bridge worker(s)",
            f"calls ok: {self.calls_ok}  failed: {self.calls_failed}"
            f"  (unloaded-host estimate {self.expected_calls}; SIPp exit code {self.sipp_rc})",
            f"calls ended by the worker: {self.bridged_calls}, with room (agent) audio played to"
            f" the phone: {self.room_audio_calls}",
            f"agent jobs started: {self.agent_jobs_started:g}  failed: "
            + (", ".join(f"{k}={v:g}" for k, v in self.agent_jobs_failed.items()) or "0"),
            f"worker exits: {self.worker_exits()} (crashes_total {self.crashes:g},"
            f" restarts_total {self.restarts:g}, 'bridge worker died' lines {len(self.died)},"
            f" fatal lines {len(self.fatal)}); worker pids {self.worker_pids_start}"
            f" -> {self.worker_pids_end}",
            f"/metrics unanswered within 5 s during the run: {self.metrics_stalls} time(s)",
        ]
        for label, stats in self.samples.items():
            lines.append(format_tree(label, stats))
        start = {s.pid: s for s in self.samples.get("start", [])}
        end = {s.pid: s for s in self.samples.get("end", [])}
        deltas = [
            f"  {s.role:<24} pid {s.pid}: rss {start[s.pid].rss_kb / 1024:.1f} ->"
            f" {s.rss_kb / 1024:.1f} MB ({(s.rss_kb - start[s.pid].rss_kb) / 1024:+.1f}),"
            f" fds {start[s.pid].fds} -> {s.fds} ({s.fds - start[s.pid].fds:+d})"
            for s in end.values()
            if s.pid in start
        ]
        if deltas:
            lines += ["start -> end (processes alive at both):", *deltas]
        problems = self.problems()
        lines.append("result: " + ("OK" if not problems else "FAILED: " + "; ".join(problems)))
        return "\n".join(lines)


_ENDED = re.compile(r"call \S+ ended: port rx=\d+ tx=\d+[^\n]*")
_PLAYED = re.compile(r"'played': (\d+)")


def _room_audio(log_text: str) -> tuple[int, int]:
    """(calls whose room inputs played any audio to the phone, calls ended) from the worker's
    end-of-call summaries."""
    ended = _ENDED.findall(log_text)
    return sum(1 for e in ended if sum(map(int, _PLAYED.findall(e))) > 0), len(ended)


def _metric_sum(m: dict[tuple[str, str], float], name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


def _wait(pred: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(step)
    return True


def _start(
    workdir: Path, port_range: tuple[int, int] | None, workers: int
) -> tuple[Server, SoakPorts]:
    for attempt in range(3):  # the block is free when picked, not necessarily when bound
        ports = pick_ports(port_range, workers)
        try:
            return start_server(workdir, **default_config_sections(ports)), ports
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def run_soak(
    workdir: Path,
    duration: float = 120.0,
    concurrent: int = 4,
    call_s: float = 9.0,
    port_range: tuple[int, int] | None = None,
    progress: Progress = print,
    sample_every: float = 30.0,
    workers: int = 1,
) -> SoakResult:
    """Run one soak in ``workdir`` (keep its path short: SIPp and Unix sockets need that), with
    ``workers`` bridge workers behind the front (4 calls each)."""
    assert SIPP is not None, "sipp not installed"
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = write_scenario(workdir, call_s)
    server, ports = _start(workdir, port_range, workers)
    res = SoakResult(duration, concurrent, call_s, ports, workdir, server.log_path)
    sipp: subprocess.Popen[bytes] | None = None
    try:
        ready = _wait(
            lambda: (
                _metric_sum(metrics(server), "roomline_sip_worker_max_calls") >= 4 * workers
                and _metric_sum(metrics(server), "roomline_agent_idle_processes") > 0
            ),
            60,
        )
        if not ready:
            res.notes.append("appliance not ready (bridge worker or warm agent process) in 60 s")
            return res
        res.worker_pids_start = {p: worker_pid(server, p) for p in ports.worker_ports}
        res.samples["start"] = process_tree(server.process.pid)
        progress(f"appliance ready (HTTP {server.port}, SIP {ports.sip}); placing calls")
        sipp_out = workdir / "sipp.out"
        with open(sipp_out, "wb") as out:
            sipp = subprocess.Popen(
                sipp_command(
                    scenario,
                    ports,
                    concurrent,
                    workdir / "sipp_stat.csv",
                    workdir / "sipp_err.log",
                ),
                cwd=str(workdir),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        t0 = time.monotonic()
        next_sample = t0 + min(sample_every, duration / 2)
        while (now := time.monotonic()) - t0 < duration:
            try:
                m = metrics(server)
            except OSError as exc:  # includes timeouts: an overloaded host, not a failed call
                res.metrics_stalls += 1
                progress(f"{now - t0:.0f} s: /metrics did not answer ({exc!r})")
                time.sleep(2)
                continue
            crashes = _metric_sum(m, "roomline_sip_worker_crashes_total")
            restarts = _metric_sum(m, "roomline_sip_worker_restarts_total")
            if crashes or restarts or not server.alive() or sipp.poll() is not None:
                progress(f"stopping early at {now - t0:.0f} s: crashes={crashes:g}"
                         f" restarts={restarts:g} server alive={server.alive()}"
                         f" sipp rc={sipp.poll()}")  # fmt: skip
                break
            if now >= next_sample:
                ok, failed = sipp_stat_counts(workdir / "sipp_stat.csv")
                tree = process_tree(server.process.pid)
                res.samples[f"load ({now - t0:.0f} s)"] = tree
                progress(f"{now - t0:.0f} s: calls ok {ok} failed {failed}, active"
                         f" {_metric_sum(m, 'roomline_sip_active_calls'):g}\n"
                         + format_tree("  process tree", tree))  # fmt: skip
                next_sample += sample_every
            time.sleep(2)
        res.duration = time.monotonic() - t0
        # SIGUSR1: SIPp stops placing calls, lets the running ones end (BYE) and exits.
        if sipp.poll() is None:
            sipp.send_signal(signal.SIGUSR1)
        try:
            sipp.wait(call_s + RECV_TIMEOUT_S + 15)
        except subprocess.TimeoutExpired:
            res.notes.append("SIPp did not finish its calls after SIGUSR1; killed")
            sipp.kill()
            sipp.wait(5)
        res.sipp_rc = sipp.returncode
        text = sipp_out.read_text(errors="replace")
        res.calls_ok, res.calls_failed = sipp_counts(text)
        if "Successful call" not in text:  # killed before its last screen: the CSV's last line
            res.calls_ok, res.calls_failed = sipp_stat_counts(workdir / "sipp_stat.csv")
        res.sipp_tail = text[-3000:]
        err = workdir / "sipp_err.log"
        res.sipp_errors = err.read_text(errors="replace")[-3000:] if err.exists() else ""
        # idle again: no call on the worker, no agent job left (jobs end with their rooms)
        drained = _wait(
            lambda: (
                _metric_sum(metrics(server), "roomline_sip_active_calls") == 0
                and _metric_sum(metrics(server), "roomline_agent_jobs") == 0
            ),
            60,
        )
        if not drained:
            res.notes.append("calls or agent jobs still running 60 s after the last call")
        time.sleep(2)  # let finished agent job processes exit and the warm pool refill
        res.samples["end"] = process_tree(server.process.pid)
        progress(f"SIPp done ({res.calls_ok} ok, {res.calls_failed} failed); idle again")
        m = metrics(server)
        res.crashes = _metric_sum(m, "roomline_sip_worker_crashes_total")
        res.restarts = _metric_sum(m, "roomline_sip_worker_restarts_total")
        res.agent_jobs_started = _metric_sum(m, "roomline_agent_jobs_started_total")
        res.agent_jobs_failed = {
            labels: v for (n, labels), v in m.items() if n == "roomline_agent_jobs_failed_total"
        }
        res.worker_pids_end = {p: worker_pid(server, p) for p in ports.worker_ports}
        res.server_alive = server.alive()
    finally:
        if sipp is not None and sipp.poll() is None:
            sipp.kill()
            sipp.wait(5)
        log_text = server.log_text()  # before the shutdown: its exits are planned
        stop_server(server)
    res.died = [ln[:300] for ln in log_text.splitlines() if "bridge worker died" in ln]
    res.room_audio_calls, res.bridged_calls = _room_audio(log_text)
    res.fatal = [
        ln[:300]
        for ln in log_text.splitlines()
        if "Fatal Python error" in ln or "Segmentation fault" in ln
    ]
    return res


def keep_or_remove(result: SoakResult, keep: bool) -> None:
    if not keep and not result.problems():
        shutil.rmtree(result.workdir, ignore_errors=True)

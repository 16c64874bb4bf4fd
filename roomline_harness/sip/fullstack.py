"""Helpers for SIP tests against the whole appliance (``roomline serve`` with bridge workers).

* :func:`sip_section` builds the ``sip`` config section: workers on free ports, a few trunks and
  one callee dispatch rule (room ``call_<dialled number>``, so each test gets its own room by
  dialling its own number).
* :func:`phone_args`: arguments for the pjsua2 test phone (:mod:`roomline_harness.sip.peers`) calling
  a number on the appliance.
* SIPp scenarios that ``uac_scenario`` does not cover: digest authentication and a session-timer
  refresh (re-INVITE with ``Session-Expires``).
* ``/metrics`` parsing and worker process discovery (for ``kill -9``).
"""

from __future__ import annotations

import os
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roomline_harness.audio import dominant_frequency, snr_db
from roomline_harness.net import free_port, free_udp_range
from roomline_harness.server import Server

#: Digest credentials of the ``ST_pbx`` trunk (test-only values).
PBX_USER = "pbx"
PBX_PASSWORD = "right-horse-battery"
#: Room prefix of the callee rule: dialling +1555... lands in ``call_+1555...``.
ROOM_PREFIX = "call"


@dataclass
class Workers:
    """SIP ports of the appliance's bridge workers (one RTP range each)."""

    sip_ports: list[int] = field(default_factory=list)


def sip_section(numbers: list[str], workers: int = 2) -> tuple[dict[str, Any], Workers]:
    """The ``sip`` config section and the workers' SIP ports.

    Trunks: ``ST_local`` (127.0.0.1, ``numbers``, X- headers as attributes, headers added to the
    200 OK), ``ST_pbx`` (digest,
    +15550200), ``ST_remote`` (only 10.0.0.1, +15550300), ``ST_norule`` (127.0.0.1, +15550400, no
    dispatch rule). One callee rule for ``ST_local`` and ``ST_pbx``.
    """
    ws = Workers()
    specs = []
    for _ in range(workers):
        port = free_port()
        start, end = free_udp_range(40)
        ws.sip_ports.append(port)
        specs.append({"sip_port": port, "rtp_port_start": start, "rtp_port_end": end})
    section: dict[str, Any] = {
        "enabled": True,
        "bind_address": "127.0.0.1",
        "workers": specs,
        "trunks": [
            {
                "sip_trunk_id": "ST_local",
                "name": "local",
                "allowed_addresses": ["127.0.0.1"],
                "numbers": numbers,
                "include_headers": "SIP_X_HEADERS",
                "headers_to_attributes": {"X-Test-Id": "test_id"},
                # Added to every 200 OK: a fixed header and one taken from an attribute.
                "headers": {"X-Roomline-Trunk": "local"},
                "attributes_to_headers": {
                    "sip.trunkPhoneNumber": "X-Called-Number",
                    "no.such.attribute": "X-Never-Sent",
                },
            },
            {
                "sip_trunk_id": "ST_pbx",
                "name": "pbx",
                "auth_username": PBX_USER,
                "auth_password": PBX_PASSWORD,
                "numbers": ["+15550200"],
            },
            {
                "sip_trunk_id": "ST_remote",
                "name": "remote",
                "allowed_addresses": ["10.0.0.1"],
                "numbers": ["+15550300"],
            },
            {
                "sip_trunk_id": "ST_norule",
                "name": "norule",
                "allowed_addresses": ["127.0.0.1"],
                "numbers": ["+15550400"],
            },
        ],
        "dispatch_rules": [
            {
                "sip_dispatch_rule_id": "SDR_calls",
                "name": "calls",
                "trunk_ids": ["ST_local", "ST_pbx"],
                "rule": {"dispatch_rule_callee": {"room_prefix": ROOM_PREFIX}},
            }
        ],
    }
    return section, ws


def room_for(number: str) -> str:
    return f"{ROOM_PREFIX}_{number}"


# --- /metrics and worker processes -------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def metrics(server: Server) -> dict[tuple[str, str], float]:
    """``{(name, labels): value}`` from ``/metrics`` (labels as the raw ``{...}`` text)."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def worker_metric(server: Server, name: str, sip_port: int) -> float:
    return metrics(server).get((name, f'{{sip_port="{sip_port}"}}'), -1.0)


def worker_pid(server: Server, sip_port: int) -> int | None:
    """Pid of the bridge worker child of ``server`` listening on ``sip_port`` (from /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if b"bridge.worker" not in argv or b"--sip-port" not in argv:
            continue
        port = argv[argv.index(b"--sip-port") + 1]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if port == str(sip_port).encode() and ppid == server.process.pid:
            return int(entry)
    return None


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of ``pid`` (and its reaped children) from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def phone_args(
    sip_port: int, number: str, workdir: Path, caller: str = "+15551234567", *extra: str
) -> list[str]:
    rtp_start, _ = free_udp_range(40)
    return [
        "--dest",
        f"sip:{number}@127.0.0.1:{sip_port}",
        "--port",
        str(free_port()),
        "--rtp-start",
        str(rtp_start),
        "--caller",
        caller,
        "--workdir",
        str(workdir),
        *extra,
    ]


# --- audio checks ------------------------------------------------------------------------------
def window_snrs(pcm: np.ndarray, rate: int, freq: float, seconds: float = 0.5) -> list[float]:
    n = int(seconds * rate)
    return [snr_db(pcm[i : i + n], rate, freq) for i in range(0, len(pcm) - n + 1, n)]


def band_level_db(pcm: np.ndarray, rate: int, freq: float, ref: float) -> float:
    """Power within ±10 Hz of ``freq`` relative to the power around ``ref`` (dB)."""
    x = np.asarray(pcm, dtype=np.float64)
    power = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)

    def band(f: float) -> float:
        return float(power[np.abs(freqs - f) <= 10].sum()) + 1e-30

    return 10.0 * float(np.log10(band(freq) / band(ref)))


@dataclass
class ToneCheck:
    """Dominant frequency, whole-window SNR and 0.5 s window SNRs of a recording."""

    freq: float
    snr: float
    windows: list[float]

    @property
    def median_window(self) -> float:
        return float(np.median(self.windows)) if self.windows else float("-inf")

    def __str__(self) -> str:
        ws = " ".join(f"{w:.1f}" for w in self.windows)
        return f"{self.freq:.1f} Hz, SNR {self.snr:.1f} dB (0.5 s windows: {ws})"


def band_share(pcm: np.ndarray, rate: int, lo: float, hi: float) -> float:
    """Share of the signal's energy (above 50 Hz) between ``lo`` and ``hi`` Hz (FFT). A 6 kHz
    tone through a wideband path keeps most of it in 4-8 kHz; a narrowband path cuts it away."""
    spec = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1.0 / rate)
    return float(spec[(freqs > lo) & (freqs < hi)].sum()) / float(spec[freqs > 50].sum())


def check_tone(pcm: np.ndarray, rate: int, freq: float) -> ToneCheck:
    assert len(pcm) >= rate // 2, f"only {len(pcm)} samples"
    return ToneCheck(
        dominant_frequency(pcm, rate), snr_db(pcm, rate, freq), window_snrs(pcm, rate, freq)
    )


# --- SIPp scenarios ----------------------------------------------------------------------------
_HEADERS = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]fs[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: roomline-fullstack-test"""

_SDP = """v=0
      o=caller 1 {version} IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[local_ip_type] [local_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv"""


def _request(
    method: str, caller: str, cseq: str, to_tag: bool, body: str = "", extra: str = ""
) -> str:
    hdr = _HEADERS.format(caller=caller, to_tag="[peer_tag_param]" if to_tag else "", cseq=cseq)
    lines = [f"      {method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0", hdr]
    if extra:
        lines.append(extra)
    if body:
        lines += [
            "      Content-Type: application/sdp",
            "      Content-Length: [len]",
            "",
            f"      {body}",
        ]
    else:
        lines += ["      Content-Length: 0"]
    return "\n".join(lines)


def _send(msg: str, retrans: bool = True) -> str:
    r = ' retrans="500"' if retrans else ""
    return f"  <send{r}><![CDATA[\n\n{msg}\n\n    ]]></send>"


def auth_scenario(
    path: Path, password: str, caller: str = "+15557770001", hold_ms: int = 1500
) -> Path:
    """INVITE → 407 → INVITE with Proxy-Authorization → 200 (then BYE) or 401/403.

    With the right ``password`` the call is answered, held for ``hold_ms`` and hung up; with a
    wrong one the scenario expects 401 and ACKs it.
    """
    right = password == PBX_PASSWORD
    sdp = _SDP.format(version=1)
    auth = f"      [authentication username={PBX_USER} password={password}]"
    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>',
        '<scenario name="roomline digest">',
        _send(_request("INVITE", caller, "1 INVITE", False, sdp)),
        '  <recv response="100" optional="true"/>',
        '  <recv response="407" auth="true"/>',
        _send(_request("ACK", caller, "1 ACK", True), retrans=False),
        _send(_request("INVITE", caller, "2 INVITE", False, sdp, extra=auth)),
        '  <recv response="100" optional="true"/>',
        '  <recv response="180" optional="true"/>',
        f'  <recv response="{200 if right else 401}"/>',
        _send(_request("ACK", caller, "2 ACK", True), retrans=False),
    ]
    if right:
        parts += [
            f'  <pause milliseconds="{hold_ms}"/>',
            _send(_request("BYE", caller, "3 BYE", True)),
            '  <recv response="200"/>',
        ]
    parts.append("</scenario>\n")
    path.write_text("\n".join(parts))
    return path


def session_refresh_scenario(
    path: Path, pcap: Path, caller: str, before_ms: int, after_ms: int
) -> Path:
    """A call with RFC 4028 session timers that refreshes the session with a re-INVITE.

    INVITE (``Supported: timer``, ``Session-Expires: 90``) → 200 → ACK, play ``pcap``, after
    ``before_ms`` a re-INVITE carrying ``Session-Expires: 90;refresher=uac`` → 200 → ACK, then
    ``after_ms`` more of audio and BYE → 200.
    """
    timer = "      Supported: timer\n      Session-Expires: 90"
    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>',
        '<scenario name="roomline session refresh">',
        _send(_request("INVITE", caller, "1 INVITE", False, _SDP.format(version=1), extra=timer)),
        '  <recv response="100" optional="true"/>',
        '  <recv response="180" optional="true"/>',
        '  <recv response="200"/>',
        _send(_request("ACK", caller, "1 ACK", True), retrans=False),
        f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>',
        f'  <pause milliseconds="{before_ms}"/>',
        _send(
            _request(
                "INVITE",
                caller,
                "2 INVITE",
                True,
                _SDP.format(version=1),
                extra="      Supported: timer\n      Session-Expires: 90;refresher=uac",
            )
        ),
        '  <recv response="100" optional="true"/>',
        '  <recv response="200"/>',
        _send(_request("ACK", caller, "2 ACK", True), retrans=False),
        f'  <pause milliseconds="{after_ms}"/>',
        _send(_request("BYE", caller, "3 BYE", True)),
        '  <recv response="200"/>',
        "</scenario>\n",
    ]
    path.write_text("\n".join(parts))
    return path

"""SIPp scenarios (written for roomline, shaped like SIPp's built-in ``uac_pcap``) and a runner.

``uac_scenario`` produces a UAC that INVITEs ``[service]``, plays a pcap of G.711 RTP, optionally a
second pcap of RFC 4733 DTMF, and hangs up with BYE; or, with ``expect`` != 200, expects that
final status and ACKs it. ``broken_sdp`` sends an unparsable SDP body. ``answer_headers`` (header
name → regular expression) makes the call fail unless the 200 OK carries each header with a
matching value.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import quoteattr

SIPP = shutil.which("sipp")

_HDR = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]rl[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: roomline-sipp-test
      X-Test-Id: sipp-[call_number]"""

_SDP_OK = """v=0
      o=caller 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[local_ip_type] [local_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP {pt} 101
      a=rtpmap:{pt} {codec}/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv"""

_SDP_BROKEN = """v=0
      o=broken
      c=IN IP4
      m=audio notaport RTP/AVP
      a=rtpmap:garbage"""


def uac_scenario(
    path: str | Path,
    *,
    pcap: str | Path | None = None,
    play_ms: int = 4000,
    dtmf_pcap: str | Path | None = None,
    dtmf_ms: int = 3000,
    pt: int = 0,
    caller: str = "+15550001111",
    expect: int = 200,
    broken_sdp: bool = False,
    answer_headers: Mapping[str, str] | None = None,
) -> Path:
    codec = "PCMU" if pt == 0 else "PCMA"
    sdp = _SDP_BROKEN if broken_sdp else _SDP_OK.format(pt=pt, codec=codec)
    inv_hdr = _HDR.format(caller=caller, to_tag="", cseq="1 INVITE")
    ack_hdr = _HDR.format(caller=caller, to_tag="[peer_tag_param]", cseq="1 ACK")
    bye_hdr = _HDR.format(caller=caller, to_tag="[peer_tag_param]", cseq="2 BYE")
    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>',
        '<scenario name="roomline uac">',
        f"""  <send retrans="500"><![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
{inv_hdr}
      Content-Type: application/sdp
      Content-Length: [len]

      {sdp}

    ]]></send>""",
        '  <recv response="100" optional="true"/>',
        '  <recv response="180" optional="true"/>',
    ]
    if expect != 200:
        parts += [
            f'  <recv response="{expect}"/>',
            f"""  <send><![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
{ack_hdr}
      Content-Length: 0

    ]]></send>""",
        ]
    else:
        parts.append(_recv_200(answer_headers or {}))
        parts += [
            f"""  <send><![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
{ack_hdr}
      Content-Length: 0

    ]]></send>""",
        ]
        if pcap is not None:
            parts.append(
                f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
                f'  <pause milliseconds="{play_ms}"/>'
            )
        else:
            parts.append(f'  <pause milliseconds="{play_ms}"/>')
        if dtmf_pcap is not None:
            parts.append(
                f'  <nop><action><exec play_pcap_audio="{dtmf_pcap}"/></action></nop>\n'
                f'  <pause milliseconds="{dtmf_ms}"/>'
            )
        parts += [
            f"""  <send retrans="500"><![CDATA[

      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
{bye_hdr}
      Content-Length: 0

    ]]></send>""",
            '  <recv response="200"/>',
        ]
    parts.append("</scenario>\n")
    p = Path(path)
    p.write_text("\n".join(parts))
    return p


def _recv_200(headers: Mapping[str, str]) -> str:
    """``<recv response="200">``, failing the call unless each header's value matches."""
    if not headers:
        return '  <recv response="200" rtd="true"/>'
    checks = [
        f'      <ereg regexp={quoteattr(regexp)} search_in="hdr" header={quoteattr(name + ":")}'
        f' check_it="true" assign_to="answer_hdr{i}"/>'
        for i, (name, regexp) in enumerate(headers.items())
    ]
    # SIPp refuses a scenario whose variables are never used: log them.
    used = " ".join(f"{name}=[$answer_hdr{i}]" for i, name in enumerate(headers))
    return "\n".join(
        ['  <recv response="200" rtd="true">', "    <action>", *checks,
         f"      <log message={quoteattr(used)}/>", "    </action>", "  </recv>"]
    )  # fmt: skip


def sipp_cmd(
    scenario: str | Path,
    target: str,
    *,
    service: str = "room",
    local_port: int,
    media_port: int,
    calls: int = 1,
    concurrent: int = 1,
    rate: float = 10,
    trace_dir: str | Path | None = None,
) -> list[str]:
    assert SIPP is not None
    cmd = [
        SIPP,
        "-sf",
        str(scenario),
        target,
        "-s",
        service,
        "-i",
        "127.0.0.1",
        "-p",
        str(local_port),
        "-mi",
        "127.0.0.1",
        "-mp",
        str(media_port),
        "-m",
        str(calls),
        "-l",
        str(concurrent),
        "-r",
        str(rate),
        "-nostdin",
        "-timeout",
        "40s",
        "-timeout_error",
    ]
    if trace_dir is not None:
        cmd += ["-trace_err", "-trace_msg"]
    return cmd


async def run_sipp(cmd: list[str], cwd: str | Path, timeout: float = 60) -> tuple[int, str]:
    """Run SIPp to completion; returns (exit code, combined output). 0 = all calls succeeded."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")

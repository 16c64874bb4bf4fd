"""SIPp callee (UAS) scenarios for outbound-call tests (roomline dials SIPp).

:func:`uas_scenario` builds one scenario from a few knobs:

* ``provisional``: 180 (no SDP) or 183 (with SDP, then ``early_pcap`` plays as early media),
  or None for no provisional response before the final one.
* ``final``: 200 answers (then ``pcap`` plays for ``play_ms`` and SIPp waits for roomline's BYE,
  or with ``refer`` set handles a REFER first); any other code rejects the INVITE.
* ``no_answer``: ring and wait for roomline's CANCEL (200 to the CANCEL, 487 to the INVITE).
* ``challenge``: answer the first INVITE 401 and require valid digest credentials on the
  second (a wrong password gets 403).
* ``answer_headers``: extra headers on the 200 OK.
* ``sdp_port``: advertise this RTP port in the 200 OK instead of SIPp's (a test socket then
  receives roomline's RTP, e.g. to decode RFC 4733 DTMF).
* ``refer``: after the answer, expect a REFER and answer it with ``refer["status"]``; with 202
  send NOTIFY sipfrags ``refer["notify"]`` (e.g. ``[100, 200]``), then wait for BYE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_RESP_HDR = """      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]rluas[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port];transport=[transport]>"""

_SDP = """v=0
      o=callee 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv"""


def _response(
    code: int,
    reason: str,
    sdp: bool = False,
    extra: str = "",
    retrans: bool = False,
    sdp_port: int = 0,
) -> str:
    body_sdp = _SDP.replace("[media_port]", str(sdp_port)) if sdp_port else _SDP
    body = (
        f"Content-Type: application/sdp\n      Content-Length: [len]\n\n      {body_sdp}"
        if sdp
        else "Content-Length: 0"
    )
    attr = ' retrans="500"' if retrans else ""
    extra_lines = f"\n      {extra}" if extra else ""
    return f"""  <send{attr}><![CDATA[

      SIP/2.0 {code} {reason}
{_RESP_HDR}{extra_lines}
      {body}

    ]]></send>"""


_REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    480: "Temporarily Unavailable", 486: "Busy Here", 487: "Request Terminated",
    500: "Server Internal Error", 503: "Service Unavailable", 600: "Busy Everywhere",
    603: "Decline",
}  # fmt: skip


def _wait_bye() -> str:
    return '  <recv request="BYE"/>\n' + _response(200, "OK")


def _notify(code: int, final: bool, cseq: int) -> str:
    state = "terminated;reason=noresource" if final else "active;expires=60"
    frag = f"SIP/2.0 {code} {_REASONS.get(code, 'Status')}"
    return f"""  <send retrans="500"><![CDATA[

      NOTIFY [$contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: [$to_hdr]
      To: [$from_hdr]
      Call-ID: [call_id]
      CSeq: {cseq} NOTIFY
      Contact: <sip:callee@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Event: refer
      Subscription-State: {state}
      Content-Type: message/sipfrag;version=2.0
      Content-Length: [len]

      {frag}
    ]]></send>
  <recv response="200"/>"""


_DIALOG = """      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from_hdr"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to_plain"/>
      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" assign_to="junk,contact"/>
      <assignstr assign_to="to_hdr" value="[$to_plain];tag=[pid]rluas[call_number]"/>
      <log message="dialog from=[$from_hdr] to=[$to_hdr] contact=[$contact] [$junk]"/>"""

# The INVITE's From (roomline) and our To with tag: for in-dialog requests we send (NOTIFY).
_RECV_INVITE = f"""  <recv request="INVITE" crlf="true">
    <action>
{_DIALOG}
    </action>
  </recv>"""


def uas_scenario(
    path: str | Path,
    *,
    provisional: int | None = 180,
    ring_ms: int = 500,
    final: int = 200,
    early_pcap: str | Path | None = None,
    early_ms: int = 2500,
    pcap: str | Path | None = None,
    play_ms: int = 3000,
    no_answer: bool = False,
    challenge: tuple[str, str] | None = None,
    refer: dict[str, Any] | None = None,
    wait_bye: bool = True,
    sdp_port: int = 0,
    answer_headers: dict[str, str] | None = None,
) -> Path:
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>', '<scenario name="roomline uas">']
    if challenge is not None:
        user, password = challenge
        parts += [
            '  <recv request="INVITE" crlf="true"/>',
            _response(
                401,
                "Unauthorized",
                extra='WWW-Authenticate: Digest realm="roomline-test", nonce="n0nce[call_number]", '
                "algorithm=MD5",
            ),
            '  <recv request="ACK"/>',
            f"""  <recv request="INVITE" crlf="true">
    <action>
      <verifyauth assign_to="authvalid" username="{user}" password="{password}"/>
{_DIALOG}
    </action>
  </recv>
  <nop hide="true" test="authvalid" next="authok">
    <action><log message="auth [$authvalid]"/></action>
  </nop>""",
            _response(403, "Forbidden"),
            '  <recv request="ACK" next="end"/>',
            '  <label id="authok"/>',
        ]
    else:
        parts.append(_RECV_INVITE)
    # Remember the dialog: the INVITE's From (roomline) and our To with tag, for in-dialog
    # requests we send (NOTIFY).
    if provisional is not None:
        parts.append(_response(provisional, _REASONS[provisional], sdp=provisional == 183))
        if provisional == 183 and early_pcap is not None:
            parts.append(
                f'  <nop><action><exec play_pcap_audio="{early_pcap}"/></action></nop>\n'
                f'  <pause milliseconds="{early_ms}"/>'
            )
        elif not no_answer:
            parts.append(f'  <pause milliseconds="{ring_ms}"/>')
    if no_answer:
        parts += [
            """  <recv request="CANCEL">
    <action>
      <ereg regexp="([0-9]+) CANCEL" search_in="hdr" header="CSeq:" assign_to="junk2,cseqn"/>
      <log message="cancel [$junk2]"/>
    </action>
  </recv>""",
            _response(200, "OK"),
            """  <send><![CDATA[

      SIP/2.0 487 Request Terminated
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]rluas[call_number]
      [last_Call-ID:]
      CSeq: [$cseqn] INVITE
      Content-Length: 0

    ]]></send>""",
            '  <recv request="ACK"/>',
        ]
    elif final != 200:
        parts += [_response(final, _REASONS.get(final, "Failed")), '  <recv request="ACK"/>']
    else:
        parts += [
            _response(
                200,
                "OK",
                sdp=True,
                retrans=True,
                sdp_port=sdp_port,
                extra="\n      ".join(f"{k}: {v}" for k, v in (answer_headers or {}).items()),
            ),
            '  <recv request="ACK" crlf="true"/>',
        ]
        if pcap is not None:
            parts.append(f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>')
        if not wait_bye and refer is None:
            # Otherwise no pause: the pcap plays on while SIPp waits for the next request.
            parts.append(f'  <pause milliseconds="{play_ms}"/>')
        if refer is not None:
            status = int(refer.get("status", 202))
            parts += [
                """  <recv request="REFER">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Refer-To:" assign_to="refer_to"/>
      <log message="REFER-TO [$refer_to]"/>
    </action>
  </recv>""",
                _response(status, _REASONS.get(status, "Failed")),
            ]
            if 200 <= status < 300:
                notifies = list(refer.get("notify", [100, 200]))
                for i, code in enumerate(notifies):
                    parts.append(_notify(code, i == len(notifies) - 1, 10 + i))
                    parts.append('  <pause milliseconds="300"/>')
        if wait_bye:
            parts.append(_wait_bye())
    parts += ['  <label id="end"/>', "</scenario>\n"]
    p = Path(path)
    p.write_text("\n".join(parts))
    return p


def uas_cmd(
    scenario: str | Path, *, local_port: int, media_port: int, timeout_s: int = 40
) -> list[str]:
    from roomline_harness.sip.sipp import SIPP

    assert SIPP is not None
    return [
        SIPP, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(local_port),
        "-mi", "127.0.0.1", "-mp", str(media_port), "-m", "1", "-nostdin",
        "-timeout", f"{timeout_s}s", "-timeout_error", "-trace_msg", "-trace_err",
        "-message_file", "msgs.log", "-error_file", "errors.log",
    ]  # fmt: skip


def uac_refer_scenario(
    path: str | Path,
    *,
    caller: str = "+15550007777",
    refer_status: int = 202,
    notify: tuple[int, ...] = (100, 200),
    pcap: str | Path | None = None,
) -> Path:
    """A caller (UAC) that calls ``[service]``, then expects roomline to REFER it away.

    After the answer it answers the REFER with ``refer_status`` and (2xx) sends NOTIFYs with the
    sipfrag statuses ``notify``, then waits for roomline's BYE.
    """
    hdr = f"""      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]rluac[call_number]
      Call-ID: [call_id]
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70"""
    sdp = _SDP.replace("callee", "caller")
    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>',
        '<scenario name="roomline uac refer">',
        f"""  <send retrans="500"><![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
{hdr}
      To: <sip:[service]@[remote_ip]:[remote_port]>
      CSeq: 1 INVITE
      Content-Type: application/sdp
      Content-Length: [len]

      {sdp}

    ]]></send>""",
        '  <recv response="100" optional="true"/>',
        '  <recv response="180" optional="true"/>',
        """  <recv response="200" rtd="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to_hdr"/>
      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" assign_to="junk,contact"/>
      <log message="dialog to=[$to_hdr] contact=[$contact] [$junk]"/>
    </action>
  </recv>""",
        f"""  <send><![CDATA[

      ACK [$contact] SIP/2.0
{hdr}
      To: [$to_hdr]
      CSeq: 1 ACK
      Content-Length: 0

    ]]></send>""",
    ]
    if pcap is not None:
        parts.append(f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>')
    parts += [
        """  <recv request="REFER">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Refer-To:" assign_to="refer_to"/>
      <log message="REFER-TO [$refer_to]"/>
    </action>
  </recv>""",
        _response(refer_status, _REASONS.get(refer_status, "Failed")),
    ]
    if 200 <= refer_status < 300:
        for i, code in enumerate(notify):
            state = "terminated;reason=noresource" if i == len(notify) - 1 else "active;expires=60"
            parts.append(f"""  <send retrans="500"><![CDATA[

      NOTIFY [$contact] SIP/2.0
{hdr}
      To: [$to_hdr]
      CSeq: {2 + i} NOTIFY
      Event: refer
      Subscription-State: {state}
      Content-Type: message/sipfrag;version=2.0
      Content-Length: [len]

      SIP/2.0 {code} {_REASONS.get(code, "Status")}
    ]]></send>
  <recv response="200"/>""")
    parts += [_wait_bye(), "</scenario>\n"]
    p = Path(path)
    p.write_text("\n".join(parts))
    return p

"""Helpers shared by the tests (and bench) that run the whole appliance behind the Kamailio front."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HAVE_KAMAILIO = shutil.which("kamailio") is not None or os.path.exists("/usr/sbin/kamailio")


def _scenario(
    path: Path,
    *,
    pcap: Path | None,
    play_ms: int,
    expect: int = 200,
    extra: str = "",
    caller: str = "[field0]",
    callee: str = "[field1]",
    answer_bye: bool = False,
) -> Path:
    """A UAC: INVITE ``callee`` from ``caller`` (injection fields by default), PCMU, BYE.

    With ``answer_bye`` the call also succeeds if a BYE comes in during the ``play_ms`` hold (it
    is answered 200); otherwise the caller hangs up itself after ``play_ms``, as without it.
    """
    hdr = f"""      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]fa[call_number]
      To: <sip:{callee}@[remote_ip]:[remote_port]>{{to_tag}}
      Call-ID: [call_id]
      CSeq: {{cseq}}
      Contact: <sip:{caller}@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      User-Agent: roomline-front-test"""
    sdp = """v=0
      o=caller 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[local_ip_type] [local_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=ptime:20
      a=sendrecv"""
    ruri = f"sip:{callee}@[remote_ip]:[remote_port]"
    extra_lines = f"\n{extra}" if extra else ""

    def send(
        method: str,
        cseq: str,
        to_tag: bool,
        body: str = "",
        retrans: bool = True,
        in_dialog: bool = False,
    ) -> str:
        h = hdr.format(to_tag="[peer_tag_param]" if to_tag else "", cseq=cseq)
        uri = ruri
        if in_dialog:
            # An RFC 3261 UA: the R-URI is the remote target (the 200's Contact, which the front
            # rewrote to itself) and the route set comes from Record-Route.
            uri = "[next_url]"
            h += "\n      [routes]"
        if body:
            tail = f"{extra_lines}\n      Content-Type: application/sdp\n      Content-Length: [len]\n\n      {body}"
        else:
            tail = "\n      Content-Length: 0"
        r = ' retrans="500"' if retrans else ""
        return f"  <send{r}><![CDATA[\n\n      {method} {uri} SIP/2.0\n{h}{tail}\n\n    ]]></send>"

    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>',
        '<scenario name="roomline front">',
        send("INVITE", "1 INVITE", False, sdp),
        '  <recv response="100" optional="true"/>',
        '  <recv response="180" optional="true"/>',
        '  <recv response="183" optional="true"/>',
    ]
    if expect != 200:
        parts += [
            f'  <recv response="{expect}" rtd="true"/>',
            send("ACK", "1 ACK", True, retrans=False),
        ]
    else:
        parts += [
            '  <recv response="200" rtd="true" rrs="true"/>',
            send("ACK", "1 ACK", True, retrans=False, in_dialog=True),
        ]
        if pcap is not None:
            parts.append(f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>')
        if answer_bye:
            parts += [
                f'  <recv request="BYE" timeout="{play_ms}" ontimeout="own_bye"/>',
                "  <send><![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]"
                "\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]"
                "\n      Content-Length: 0\n\n    ]]></send>",
                '  <nop next="done"/>',
                '  <label id="own_bye"/>',
                send("BYE", "2 BYE", True, in_dialog=True),
                '  <recv response="200"/>',
                '  <label id="done"/>',
            ]
        else:
            parts += [
                f'  <pause milliseconds="{play_ms}"/>',
                send("BYE", "2 BYE", True, in_dialog=True),
                '  <recv response="200"/>',
            ]
    parts.append("</scenario>\n")
    path.write_text("\n".join(parts))
    return path


def simple_dialog_scenario(path: Path, *, caller: str, callee: str, front_port: int) -> Path:
    """A simple UA that ignores Record-Route: every in-dialog request goes to the address it
    dialled (the front) with the dialled R-URI and no Route header.

    INVITE (sendrecv) → 200 → ACK; re-INVITE ``a=sendonly`` (hold) → 200 that must answer
    ``a=recvonly``; re-INVITE ``a=sendrecv`` (resume) → 200 ``a=sendrecv``; SIP INFO
    ``application/dtmf-relay`` "5" then "#"; BYE. Every 200 to an INVITE must carry the front's
    Contact (``rlw-<worker port>@127.0.0.1:<front_port>``), never a worker's.
    """
    hdr = f"""      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]su[call_number]
      To: <sip:{callee}@[remote_ip]:[remote_port]>{{to_tag}}
      Call-ID: [call_id]
      CSeq: {{cseq}}
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: roomline-simple-ua"""

    def sdp(version: int, direction: str) -> str:
        return f"""v=0
      o=caller 1 {version} IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[local_ip_type] [local_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=ptime:20
      a={direction}"""

    def send(method: str, cseq: int, body: str = "", ctype: str = "", retrans: bool = True) -> str:
        h = hdr.format(
            to_tag="" if cseq == 1 and method == "INVITE" else "[peer_tag_param]",
            cseq=f"{cseq} {method}",
        )
        tail = "\n      Content-Length: 0"
        if body:
            tail = f"\n      Content-Type: {ctype}\n      Content-Length: [len]\n\n      {body}"
        r = ' retrans="500"' if retrans else ""
        return (
            f"  <send{r}><![CDATA[\n\n      {method} sip:{callee}@[remote_ip]:[remote_port]"
            f" SIP/2.0\n{h}{tail}\n\n    ]]></send>"
        )

    contact = f"rlw-[0-9]+@127[.]0[.]0[.]1:{front_port}>"

    def answer(n: int, direction: str) -> str:
        return f"""  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200">
    <action>
      <ereg regexp="{contact}" search_in="hdr" header="Contact:" check_it="true" assign_to="ct{n}"/>
      <ereg regexp="a={direction}" search_in="body" check_it="true" assign_to="dir{n}"/>
      <log message="answer {n}: [$ct{n}] [$dir{n}]"/>
    </action>
  </recv>"""

    relay = "application/dtmf-relay"
    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>',
        '<scenario name="roomline simple UA through the front">',
        send("INVITE", 1, sdp(1, "sendrecv"), "application/sdp"),
        answer(1, "sendrecv"),
        send("ACK", 1, retrans=False),
        '  <pause milliseconds="1000"/>',
        send("INVITE", 2, sdp(2, "sendonly"), "application/sdp"),
        answer(2, "recvonly"),
        send("ACK", 2, retrans=False),
        '  <pause milliseconds="1000"/>',
        send("INVITE", 3, sdp(3, "sendrecv"), "application/sdp"),
        answer(3, "sendrecv"),
        send("ACK", 3, retrans=False),
        '  <pause milliseconds="500"/>',
        send("INFO", 4, "Signal=5\n      Duration=160", relay),
        '  <recv response="200"/>',
        send("INFO", 5, "Signal=#\n      Duration=160", relay),
        '  <recv response="200"/>',
        '  <pause milliseconds="1000"/>',
        send("BYE", 6),
        '  <recv response="200"/>',
        "</scenario>\n",
    ]
    path.write_text("\n".join(parts))
    return path


def received_requests(message_file: Path, method: str) -> list[str]:
    """Call-IDs of the ``method`` requests SIPp received, from its ``-trace_msg`` file."""
    try:
        text = message_file.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for block in text.split("message received")[1:]:
        body = block.split("\n", 1)[1].lstrip("\r\n") if "\n" in block else ""
        if not body.startswith(f"{method} "):
            continue
        for line in body.splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() in ("call-id", "i"):
                out.append(value.strip())
                break
    return out

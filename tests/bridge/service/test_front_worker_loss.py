"""A dead worker's calls end for the callers: the front BYEs its dialogs (real Kamailio, SIPp).

Workers are SIPp UAS processes behind a real :class:`KamailioFront`; the callers a SIPp UAC whose
calls accept a BYE while they hold (and hang up themselves otherwise). One worker is killed with
SIGKILL, then :func:`end_worker_dialogs` must BYE exactly its callers, leave the other worker's
calls alone and give the dead worker's dispatcher slots back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.service.front import FrontOptions, FrontWorker, KamailioFront
from bridge.service.front_dialogs import (
    CONFIRMED,
    FrontDialog,
    FrontRPCError,
    end_worker_dialogs,
    end_worker_dialogs_waiting,
    find_kamcmd,
    kamcmd,
    list_dialogs,
    parse_dialog_list,
    worker_key,
)
from roomline_harness.front_appliance import _scenario, received_requests
from roomline_harness.front_sip import free_ports
from roomline_harness.net import free_port, free_udp_range

SCENARIOS = Path(__file__).resolve().parent / "sipp"

# One dialog as kamcmd 5.6 prints it (trimmed), for the parser.
DLG_LIST = """{
\th_entry: 547
\th_id: 3055
\tref: 2
\tcall-id: 1-9377@127.0.0.1
\tfrom_uri: sip:caller@127.0.0.1:28762
\tstate: 4
\tcaller: {
\t\ttag: 9377c1
\t\tcontact: sip:caller@127.0.0.1:28762
\t}
\tvariables: {
\t\t{
\t\t\trl_worker: sip:127.0.0.1:28005
\t\t}
\t}
}
{
\th_entry: 12
\th_id: 7
\tcall-id: abc
\tstate: 2
\tvariables: {
\t}
}
"""


def test_parse_dialog_list_and_worker_key() -> None:
    assert parse_dialog_list(DLG_LIST) == [
        FrontDialog(547, 3055, "1-9377@127.0.0.1", CONFIRMED, "127.0.0.1:28005"),
        FrontDialog(12, 7, "abc", 2, ""),
    ]
    assert parse_dialog_list("") == []
    assert worker_key("sip:127.0.0.1:5070;transport=tcp") == "127.0.0.1:5070"
    assert worker_key("sip:rlw-1@127.0.0.1:5070") == "127.0.0.1:5070"
    assert worker_key("sip:[::1]:5070") == "[::1]:5070"


async def _spawn(*args: str, cwd: str) -> asyncio.subprocess.Process:
    """Start SIPp in its own session; its stderr (why it exited, e.g. a port that would not bind)
    goes to ``sipp-<pid>.err`` in ``cwd`` for :func:`_why`."""
    err = tempfile.NamedTemporaryFile(dir=cwd, prefix="sipp-", suffix=".err", delete=False)
    with err:
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    os.replace(err.name, Path(cwd) / f"sipp-{proc.pid}.err")
    return proc


def _why(proc: asyncio.subprocess.Process, msg: Path, cwd: str) -> str:
    """SIPp's stderr and the tail of its message trace, for an assertion message."""
    err = Path(cwd) / f"sipp-{proc.pid}.err"
    trace = msg.read_text(errors="replace")[-3000:] if msg.exists() else "(no message trace)"
    return f"stderr: {err.read_text(errors='replace')[-1000:] if err.exists() else ''}\n{trace}"


def _media_base(avoid: Iterable[int] = ()) -> int:
    """A ``-mp`` for SIPp: it binds that port and the one two above (audio and video RTP), and
    exits 254 if either is taken. The block of four is free now and holds none of ``avoid``
    (ports chosen but not bound yet, such as the front's)."""
    taken = set(avoid)
    while True:
        base = free_udp_range(4)[0]
        if taken.isdisjoint(range(base, base + 4)):
            return base


def _caller_ports() -> tuple[int, int]:
    """A SIP port (from the kernel's ephemeral range, so outside every media block) and a media
    base for a SIPp caller."""
    return free_port(), _media_base()


def _killpg(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


async def _dispatcher_loads(binary: str, socket: str) -> dict[str, int]:
    """``uri → DLGLOAD`` from ``dispatcher.list``."""
    text = await kamcmd(binary, socket, "dispatcher.list")
    uris = re.findall(r"URI: (\S+)", text)
    loads = [int(x) for x in re.findall(r"DLGLOAD: (\d+)", text)]
    return dict(zip(uris, loads, strict=True))


LIVE_MARKS = (
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed"),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed"),
    pytest.mark.skipif(find_kamcmd() is None, reason="kamcmd not installed"),
    pytest.mark.timeout(120),
)


def _live(fn):  # type: ignore[no-untyped-def]
    for mark in LIVE_MARKS:
        fn = mark(fn)
    return fn


@dataclass
class Setup:
    binary: str
    sock: str
    run_dir: str
    front_port: int
    #: worker port → (SIPp process, its -trace_msg file)
    workers: dict[int, tuple[asyncio.subprocess.Process, Path]]
    procs: list[asyncio.subprocess.Process]

    async def caller(self, calls: int, hold_ms: int) -> tuple[asyncio.subprocess.Process, Path]:
        """SIPp placing ``calls`` calls that hold ``hold_ms`` (a BYE meanwhile is answered)."""
        uac_port, media = _caller_ports()
        sc = _scenario(
            Path(self.run_dir) / "uac.xml",
            pcap=None,
            play_ms=hold_ms,
            caller="+15550001111",
            callee="+15550002222",
            answer_bye=True,
        )
        msg = Path(self.run_dir) / "uac.msg"
        uac = await _spawn(
            "sipp", "-sf", str(sc), f"127.0.0.1:{self.front_port}", "-i", "127.0.0.1",
            "-p", str(uac_port), "-mp", str(media), "-m", str(calls), "-l", str(calls),
            "-r", "20", "-nostdin", "-timeout", "40", "-trace_msg", "-message_file", str(msg),
            cwd=self.run_dir,
        )  # fmt: skip
        self.procs.append(uac)
        return uac, msg


@contextlib.asynccontextmanager
async def _front(scenario: str, n_workers: int = 2) -> AsyncIterator[Setup]:
    """A real front (Contact via the front, as in the appliance) over SIPp worker processes."""
    binary = find_kamcmd()
    assert binary is not None
    run_dir = tempfile.mkdtemp(prefix="dwl-", dir="/tmp")
    *ports, front_port = free_ports(n_workers + 1)
    setup = Setup(binary, "", run_dir, front_port, {}, [])
    for port in ports:
        msg = Path(run_dir) / f"worker-{port}.msg"
        proc = await _spawn(
            "sipp", "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port),
            "-mp", str(_media_base((*ports, front_port))), "-nostdin", "-timeout", "60",
            "-trace_msg", "-message_file", str(msg),
            cwd=run_dir,
        )  # fmt: skip
        setup.procs.append(proc)
        setup.workers[port] = (proc, msg)
    opts = FrontOptions(
        workers=tuple(FrontWorker(p, maxload=2) for p in ports),
        bind_address="127.0.0.1",
        port=front_port,
        ping_interval=1,
        fr_timer_ms=1000,
        contact_via_front=True,
    )
    front = KamailioFront(opts, run_dir, on_line=lambda _line: None, stop_timeout=3.0)
    setup.sock = front.ctl_socket
    try:
        await front.start()
        await front.wait_ready()
        deadline = time.monotonic() + 10
        while (
            re.findall(r"FLAGS: (\S+)", await kamcmd(binary, setup.sock, "dispatcher.list"))
            != ["AP"] * n_workers
        ):
            assert time.monotonic() < deadline, "workers never probed up"
            await asyncio.sleep(0.2)
        yield setup
    finally:
        await front.stop()
        for p in setup.procs:
            _killpg(p, signal.SIGKILL)
            await p.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


@_live
async def test_dead_worker_callers_get_bye_others_untouched() -> None:
    async with _front("worker_ok.xml") as st:
        binary, sock = st.binary, st.sock
        (a, (proc_a, msg_a)), (b, (_, msg_b)) = st.workers.items()
        # Four calls that hold 12 s: two on each worker (call load, maxload 2).
        uac, uac_msg = await st.caller(4, 12000)
        deadline = time.monotonic() + 15
        while True:
            dialogs = await list_dialogs(binary, sock)
            if len([d for d in dialogs if d.state == CONFIRMED]) == 4:
                break
            assert time.monotonic() < deadline, dialogs
            await asyncio.sleep(0.1)
        on_a = set(received_requests(msg_a, "INVITE"))
        on_b = set(received_requests(msg_b, "INVITE"))
        assert len(on_a) == 2 and len(on_b) == 2, (on_a, on_b)
        assert {d.call_id for d in dialogs if d.worker == f"127.0.0.1:{a}"} == on_a
        assert (await _dispatcher_loads(binary, sock))[f"sip:127.0.0.1:{a}"] == 2

        # Worker A dies; the front ends its dialogs.
        _killpg(proc_a, signal.SIGKILL)
        await proc_a.wait()
        t0 = time.monotonic()
        ended, early = await end_worker_dialogs(binary, sock, f"sip:127.0.0.1:{a}")
        assert {d.call_id for d in ended} == on_a and early == []

        # Each of A's callers gets a BYE (and answers it); B's callers do not.
        deadline = t0 + 10
        while set(received_requests(uac_msg, "BYE")) != on_a:
            assert time.monotonic() < deadline, received_requests(uac_msg, "BYE")
            await asyncio.sleep(0.05)
        print(f"BYE at both callers {time.monotonic() - t0:.2f}s after end_worker_dialogs")
        text = uac_msg.read_text(errors="replace")
        assert 'Reason: Q.850;cause=41;text="roomline bridge worker failed"' in text

        # B's calls run to their end (the callers hang up, B answers): every SIPp call succeeds.
        rc = await asyncio.wait_for(uac.wait(), 30)
        assert rc == 0, _why(uac, uac_msg, st.run_dir)
        assert set(received_requests(uac_msg, "BYE")) == on_a
        assert len(received_requests(msg_b, "BYE")) == 2

        # The dead worker's dispatcher slots were given back by the front's own BYE, and no
        # dialog is left (the ones on B ended with their callers' BYEs).
        loads = await _dispatcher_loads(binary, sock)
        assert loads == {f"sip:127.0.0.1:{a}": 0, f"sip:127.0.0.1:{b}": 0}, loads
        deadline = time.monotonic() + 10
        while await list_dialogs(binary, sock):
            assert time.monotonic() < deadline, await list_dialogs(binary, sock)
            await asyncio.sleep(0.2)
        assert await end_worker_dialogs(binary, sock, f"sip:127.0.0.1:{b}") == ([], [])
        with pytest.raises(FrontRPCError):  # an RPC fault is an error, not silence
            await kamcmd(binary, sock, "dlg.end_dlg", "1", "1")


@_live
async def test_calls_the_worker_hung_up_are_not_ended_again() -> None:
    """A worker's own BYE (through loose_route) ends the dialog: a later death BYEs nobody."""
    async with _front("worker_hangs_up.xml", n_workers=1) as st:
        ((port, (proc, msg)),) = st.workers.items()
        uac, uac_msg = await st.caller(2, 15000)
        rc = await asyncio.wait_for(uac.wait(), 30)  # the worker hangs up after 1 s
        assert rc == 0, _why(uac, uac_msg, st.run_dir)
        assert len(set(received_requests(uac_msg, "BYE"))) == 2
        assert len(received_requests(msg, "INVITE")) == 2
        ended, early = await end_worker_dialogs(st.binary, st.sock, f"sip:127.0.0.1:{port}")
        assert (ended, early) == ([], [])
        assert (await _dispatcher_loads(st.binary, st.sock)) == {f"sip:127.0.0.1:{port}": 0}
        assert proc.returncode is None  # alive: nothing here came from a death


def test_rendered_script_tracks_dialogs_per_worker() -> None:
    from bridge.service.kamailio_cfg import render_kamailio_cfg

    opts = FrontOptions(workers=(FrontWorker(5070),), ctl_socket="/tmp/x_ctl")
    text = render_kamailio_cfg(opts, "/tmp/dispatcher.list")
    assert 'loadmodule "dialog.so"' in text
    assert 'modparam("dialog", "dlg_match_mode", 1)' in text
    assert 'modparam("ctl", "binrpc_max_body_size", 1024)' in text
    dispatch = text[text.index("route[DISPATCH]") :]
    # The dialog is created before the INVITE is relayed, the worker stored per branch.
    assert dispatch.index("dlg_manage();") < dispatch.index("t_relay()")
    branch = text[text.index("branch_route[DS_BRANCH]") :]
    assert "$dlg_var(rl_worker) = $du;" in branch.split("}")[0]
    local = text[text.index("event_route[tm:local-request]") :]
    assert "ds_load_update();" in local.split("\n}\n")[0]


#: A caller that ACKs the 200 only after 1.5 s, then waits for a BYE and answers it.
LATE_ACK_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="late ACK">
  <send retrans="500"><![CDATA[

      INVITE sip:+15550002222@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:+15550001111@[local_ip]:[local_port]>;tag=[pid]la[call_number]
      To: <sip:+15550002222@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:+15550001111@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
  <pause milliseconds="1500"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:+15550001111@[local_ip]:[local_port]>;tag=[pid]la[call_number]
      To: <sip:+15550002222@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      [routes]
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv request="BYE" timeout="15000"/>
  <send><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

  ]]></send>
</scenario>
"""


@_live
async def test_dialog_answered_before_death_is_ended_once_acked() -> None:
    """The worker dies between its 200 and the caller's ACK: the first look finds the dialog
    unconfirmed; once the ACK passes the front it is ended (caller gets the BYE)."""
    async with _front("worker_ok.xml", n_workers=1) as st:
        ((port, (proc, _)),) = st.workers.items()
        sc = Path(st.run_dir) / "late_ack.xml"
        sc.write_text(LATE_ACK_UAC)
        uac_port, media = _caller_ports()
        msg = Path(st.run_dir) / "late.msg"
        uac = await _spawn(
            "sipp", "-sf", str(sc), f"127.0.0.1:{st.front_port}", "-i", "127.0.0.1",
            "-p", str(uac_port), "-mp", str(media), "-m", "1", "-nostdin", "-timeout", "30",
            "-trace_msg", "-message_file", str(msg), cwd=st.run_dir,
        )  # fmt: skip
        st.procs.append(uac)
        deadline = time.monotonic() + 10
        while [d.state for d in await list_dialogs(st.binary, st.sock)] != [3]:
            assert time.monotonic() < deadline, await list_dialogs(st.binary, st.sock)
            await asyncio.sleep(0.05)
        _killpg(proc, signal.SIGKILL)
        await proc.wait()
        first = await end_worker_dialogs(st.binary, st.sock, f"sip:127.0.0.1:{port}")
        assert first[0] == [] and [d.state for d in first[1]] == [3]  # not endable yet
        batches: list[list[FrontDialog]] = []
        ended, early = await end_worker_dialogs_waiting(
            st.binary, st.sock, f"sip:127.0.0.1:{port}", wait=5, poll=0.2, on_ended=batches.append
        )
        assert [d.call_id for d in ended] == [d.call_id for d in first[1]] and early == []
        assert batches == [ended]
        rc = await asyncio.wait_for(uac.wait(), 20)
        assert rc == 0, _why(uac, msg, st.run_dir)
        assert received_requests(msg, "BYE") == [ended[0].call_id]


CANCELLING_CALLER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="caller that gives up while the worker rings">
  <send retrans="500"><![CDATA[
      INVITE sip:+15550002222@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:+15550001111@[local_ip]:[local_port]>;tag=[pid]C[call_number]
      To: <sip:+15550002222@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:+15550001111@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180"/>
  <send retrans="500"><![CDATA[
      CANCEL sip:+15550002222@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
      From: <sip:+15550001111@[local_ip]:[local_port]>;tag=[pid]C[call_number]
      To: <sip:+15550002222@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
  <recv response="487"/>
  <send><![CDATA[
      ACK sip:+15550002222@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-6]
      From: <sip:+15550001111@[local_ip]:[local_port]>;tag=[pid]C[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
</scenario>
"""


@_live
async def test_a_cancelled_call_frees_its_worker_slot() -> None:
    """A caller that gives up while the worker rings (CANCEL → 487): the worker's call-load slot
    is freed at once, not when the dispatcher's entry expires minutes later (under load, cancels
    that kept their slots made the front answer 486 "all workers full" to new calls)."""
    async with _front("worker_rings.xml", n_workers=1) as st:
        ((port, (proc, msg)),) = st.workers.items()
        sc = Path(st.run_dir) / "cancel.xml"
        sc.write_text(CANCELLING_CALLER)
        uac_port, media = _caller_ports()
        uac_msg = Path(st.run_dir) / "cancel.msg"
        uac = await _spawn(
            "sipp", "-sf", str(sc), f"127.0.0.1:{st.front_port}", "-i", "127.0.0.1",
            "-p", str(uac_port), "-mp", str(media), "-m", "3", "-l", "1", "-r", "5",
            "-nostdin", "-timeout", "30", "-trace_msg", "-message_file", str(uac_msg),
            cwd=st.run_dir,
        )  # fmt: skip
        st.procs.append(uac)
        rc = await asyncio.wait_for(uac.wait(), 40)
        assert rc == 0, _why(uac, uac_msg, st.run_dir)
        assert len(received_requests(msg, "CANCEL")) == 3  # each reached the ringing worker
        assert (await _dispatcher_loads(st.binary, st.sock)) == {f"sip:127.0.0.1:{port}": 0}


@_live
async def test_a_slow_bye_answer_is_waited_for() -> None:
    """The front's 2 s ``fr_timer`` finds a dead worker for a new call quickly; an in-dialog
    request to a live but briefly starved worker waits longer (``dialog_fr_timer_ms``), so the
    caller's BYE gets the worker's 200, not the front's 408."""
    async with _front("worker_slow_bye.xml", n_workers=1) as st:
        ((_port, (_proc, msg)),) = st.workers.items()
        uac, uac_msg = await st.caller(1, 500)
        rc = await asyncio.wait_for(uac.wait(), 30)
        assert rc == 0, _why(uac, uac_msg, st.run_dir)
        assert len(set(received_requests(msg, "BYE"))) == 1  # (retransmitted while it waits)
        assert "408 Request Timeout" not in uac_msg.read_text(errors="replace")


def test_rendered_script_waits_longer_for_in_dialog_answers() -> None:
    from bridge.service.kamailio_cfg import render_kamailio_cfg

    text = render_kamailio_cfg(FrontOptions(workers=(FrontWorker(5070),)), "/tmp/d.list")
    within = text[text.index("route[WITHINDLG]") :]
    assert within.index("t_set_fr(0, 8000);") < within.index("route(RELAY)")
    assert 'modparam("tm", "fr_timer", 2000)' in text

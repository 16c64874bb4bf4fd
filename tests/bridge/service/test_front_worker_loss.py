"""A dead worker's calls end for the callers: the front BYEs its dialogs (real Kamailio, SIPp).

Workers are SIPp UAS processes behind a real :class:`KamailioFront`; the callers a SIPp UAC whose
calls accept a BYE while they hold (and hang up themselves otherwise). One worker is killed with
SIGKILL, then :func:`end_worker_dialogs` must BYE exactly its callers, leave the other worker's
calls alone and give the dead worker's dispatcher slots back.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from bridge.service.front import FrontOptions, FrontWorker, KamailioFront
from bridge.service.front_dialogs import (
    CONFIRMED,
    FrontDialog,
    end_worker_dialogs,
    find_kamcmd,
    kamcmd,
    list_dialogs,
    parse_dialog_list,
    worker_key,
)
from roomline_harness.front_appliance import _scenario, received_requests
from roomline_harness.front_sip import free_ports

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
    return await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )


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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed")
@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")
@pytest.mark.skipif(find_kamcmd() is None, reason="kamcmd not installed")
@pytest.mark.timeout(120)
async def test_dead_worker_callers_get_bye_others_untouched() -> None:
    binary = find_kamcmd()
    assert binary is not None
    run_dir = tempfile.mkdtemp(prefix="dwl-", dir="/tmp")
    a, b, front_port, uac_port, media = free_ports(5)
    procs: list[asyncio.subprocess.Process] = []
    workers = {}
    for port in (a, b):
        msg = Path(run_dir) / f"worker-{port}.msg"
        proc = await _spawn(
            "sipp",
            "-sf",
            str(SCENARIOS / "worker_ok.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-nostdin",
            "-timeout",
            "60",
            "-trace_msg",
            "-message_file",
            str(msg),
            cwd=run_dir,
        )
        procs.append(proc)
        workers[port] = (proc, msg)
    opts = FrontOptions(
        workers=(FrontWorker(a, maxload=2), FrontWorker(b, maxload=2)),
        bind_address="127.0.0.1",
        port=front_port,
        ping_interval=1,
        fr_timer_ms=1000,
        contact_via_front=True,
    )
    front = KamailioFront(opts, run_dir, on_line=lambda _line: None, stop_timeout=3.0)
    sock = front.ctl_socket
    try:
        await front.start()
        await front.wait_ready()
        deadline = time.monotonic() + 10
        while re.findall(r"FLAGS: (\S+)", await kamcmd(binary, sock, "dispatcher.list")) != [
            "AP",
            "AP",
        ]:
            assert time.monotonic() < deadline, "workers never probed up"
            await asyncio.sleep(0.2)

        # Four calls that hold 12 s: two on each worker (call load, maxload 2).
        sc = _scenario(
            Path(run_dir) / "uac.xml",
            pcap=None,
            play_ms=12000,
            caller="+15550001111",
            callee="+15550002222",
            answer_bye=True,
        )
        uac_msg = Path(run_dir) / "uac.msg"
        uac = await _spawn(
            "sipp",
            "-sf",
            str(sc),
            f"127.0.0.1:{front_port}",
            "-i",
            "127.0.0.1",
            "-p",
            str(uac_port),
            "-mp",
            str(media),
            "-m",
            "4",
            "-l",
            "4",
            "-r",
            "20",
            "-nostdin",
            "-timeout",
            "40",
            "-trace_msg",
            "-message_file",
            str(uac_msg),
            cwd=run_dir,
        )
        procs.append(uac)
        deadline = time.monotonic() + 15
        while True:
            dialogs = await list_dialogs(binary, sock)
            if len([d for d in dialogs if d.state == CONFIRMED]) == 4:
                break
            assert time.monotonic() < deadline, dialogs
            await asyncio.sleep(0.1)
        on_a = set(received_requests(workers[a][1], "INVITE"))
        on_b = set(received_requests(workers[b][1], "INVITE"))
        assert len(on_a) == 2 and len(on_b) == 2, (on_a, on_b)
        assert {d.call_id for d in dialogs if d.worker == f"127.0.0.1:{a}"} == on_a
        assert (await _dispatcher_loads(binary, sock))[f"sip:127.0.0.1:{a}"] == 2

        # Worker A dies; the front ends its dialogs.
        _killpg(workers[a][0], signal.SIGKILL)
        await workers[a][0].wait()
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
        assert rc == 0, uac_msg.read_text(errors="replace")[-3000:]
        assert set(received_requests(uac_msg, "BYE")) == on_a
        assert len(received_requests(workers[b][1], "BYE")) == 2

        # The dead worker's dispatcher slots were given back by the front's own BYE, and no
        # dialog is left (the ones on B ended with their callers' BYEs).
        loads = await _dispatcher_loads(binary, sock)
        assert loads == {f"sip:127.0.0.1:{a}": 0, f"sip:127.0.0.1:{b}": 0}, loads
        deadline = time.monotonic() + 10
        while await list_dialogs(binary, sock):
            assert time.monotonic() < deadline, await list_dialogs(binary, sock)
            await asyncio.sleep(0.2)
        assert await end_worker_dialogs(binary, sock, f"sip:127.0.0.1:{b}") == ([], [])
    finally:
        await front.stop()
        for p in procs:
            _killpg(p, signal.SIGKILL)
            await p.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


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

"""The front's dialogs over Kamailio's ctl socket: list them, end those of a dead worker.

The rendered ``kamailio.cfg`` makes every call through the front a dialog of Kamailio's dialog
module and stores the worker that carries it in the dialog variable ``rl_worker`` (the dispatcher
destination an inbound call went to; the source of an outbound INVITE). When a worker process
dies, :func:`end_worker_dialogs` lists the dialogs (``dlg.list``), keeps those whose worker has
the dead worker's ``host:port`` and ends each confirmed one with ``dlg.end_dlg``: Kamailio sends
a BYE to the caller (with a ``Reason`` header) and one towards the dead worker, which nobody
answers. The RPCs run through ``kamcmd`` as asyncio subprocesses, so the main loop never blocks.

``dlg.end_dlg`` only ends confirmed dialogs. :func:`end_worker_dialogs_waiting` therefore looks
again for a few seconds at dialogs the worker answered but whose ACK had not passed yet (the
caller's ACK still confirms them); dialogs still ringing are left to the front's INVITE timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CONFIRMED",
    "ENDED",
    "REASON_HEADER",
    "FrontDialog",
    "FrontRPCError",
    "end_worker_dialogs",
    "end_worker_dialogs_waiting",
    "find_kamcmd",
    "kamcmd",
    "list_dialogs",
    "parse_dialog_list",
    "worker_key",
]

#: ``state`` of a dialog the caller has ACKed (dialog module numbering: 1 unconfirmed, 2 early,
#: 3 answered without ACK yet, 4 confirmed, 5 ended and about to be removed).
CONFIRMED = 4
ENDED = 5
#: Added to the front's BYEs: Q.850 cause 41 (temporary failure) with a plain explanation.
REASON_HEADER = 'Reason: Q.850;cause=41;text="roomline bridge worker failed"\r\n'

_FIELD_RE = re.compile(r"^\t(h_entry|h_id|call-id|state): (.*)$", re.M)
_WORKER_RE = re.compile(r"^\t+rl_worker: (.*)$", re.M)


class FrontRPCError(RuntimeError):
    """``kamcmd`` is missing, timed out or reported an error."""


@dataclass(frozen=True, slots=True)
class FrontDialog:
    """One dialog as ``dlg.list`` shows it (only what ending it needs)."""

    h_entry: int
    h_id: int
    call_id: str
    state: int
    #: The worker that carries it, ``host:port`` (see :func:`worker_key`); "" if not recorded.
    worker: str


def find_kamcmd() -> str | None:
    """Path of ``kamcmd`` (Debian package ``kamailio``), or None."""
    return shutil.which("kamcmd") or shutil.which("kamcmd", path="/usr/sbin:/sbin")


def worker_key(uri: str) -> str:
    """``host:port`` of a SIP URI such as ``sip:127.0.0.1:5070;transport=tcp``."""
    rest = uri.strip()
    if rest.lower().startswith(("sip:", "sips:")):
        rest = rest.split(":", 1)[1]
    rest = rest.split(";", 1)[0]
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
    return rest.lower()


def parse_dialog_list(text: str) -> list[FrontDialog]:
    """The dialogs in ``kamcmd dlg.list`` output: one ``{ ... }`` block per dialog at column 0."""
    out = []
    for block in re.split(r"^\{$", text, flags=re.M)[1:]:
        fields = dict(_FIELD_RE.findall(block))
        if not {"h_entry", "h_id", "call-id", "state"} <= fields.keys():
            continue
        m = _WORKER_RE.search(block)
        out.append(
            FrontDialog(
                h_entry=int(fields["h_entry"]),
                h_id=int(fields["h_id"]),
                call_id=fields["call-id"].strip(),
                state=int(fields["state"]),
                worker=worker_key(m.group(1)) if m else "",
            )
        )
    return out


async def kamcmd(binary: str, socket: str, *args: str, timeout: float = 5.0) -> str:
    """Run one RPC through ``kamcmd -s unix:<socket>``; its stdout, or :class:`FrontRPCError`."""
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-s",
        f"unix:{socket}",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise FrontRPCError(f"kamcmd {args[0]} timed out after {timeout:.0f}s") from None
    text = out.decode("utf-8", "replace")
    # kamcmd prints an RPC fault ("error: 500 - ...") and may still exit 0.
    if proc.returncode != 0 or text.startswith("error:"):
        detail = (err.decode("utf-8", "replace") + text).strip()[:300]
        raise FrontRPCError(f"kamcmd {args[0]} failed (exit {proc.returncode}): {detail}")
    return text


async def list_dialogs(binary: str, socket: str) -> list[FrontDialog]:
    """Every dialog Kamailio holds."""
    return parse_dialog_list(await kamcmd(binary, socket, "dlg.list"))


async def end_worker_dialogs(
    binary: str, socket: str, worker_uri: str
) -> tuple[list[FrontDialog], list[FrontDialog]]:
    """End the confirmed dialogs carried by ``worker_uri``: (ended, left alone because early).

    Dialogs already ended (state 5, kept a moment after their BYE) are neither, nor is one that
    ends meanwhile (its BYE crossed ours: ``dlg.end_dlg`` fails for it).
    """
    key = worker_key(worker_uri)
    ended: list[FrontDialog] = []
    early: list[FrontDialog] = []
    for d in await list_dialogs(binary, socket):
        if d.worker != key or d.state >= ENDED:
            continue
        if d.state != CONFIRMED:
            early.append(d)
            continue
        try:
            await kamcmd(binary, socket, "dlg.end_dlg", str(d.h_entry), str(d.h_id), REASON_HEADER)
        except FrontRPCError:
            continue
        ended.append(d)
    return ended, early


async def end_worker_dialogs_waiting(
    binary: str,
    socket: str,
    worker_uri: str,
    *,
    wait: float = 5.0,
    poll: float = 0.5,
    on_ended: Callable[[list[FrontDialog]], None] | None = None,
) -> tuple[list[FrontDialog], list[FrontDialog]]:
    """:func:`end_worker_dialogs`, repeated every ``poll`` s for up to ``wait`` s while some of
    the worker's dialogs are not confirmed yet; ``on_ended`` gets each batch as it is ended.
    Returns (all ended, still unconfirmed at the end)."""
    deadline = time.monotonic() + wait
    ended: list[FrontDialog] = []
    while True:
        now_ended, early = await end_worker_dialogs(binary, socket, worker_uri)
        ended += now_ended
        if now_ended and on_ended is not None:
            on_ended(now_ended)
        if not early or time.monotonic() >= deadline:
            return ended, early
        await asyncio.sleep(poll)

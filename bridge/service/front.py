"""roomline's SIP front: Kamailio supervised as a child process, in front of the bridge workers.

:class:`KamailioFront` writes ``kamailio.cfg`` (rendered by :mod:`bridge.service.kamailio_cfg`),
the dispatcher list and, with TLS, ``tls.cfg`` into a run directory; checks them with
``kamailio -c`` (a failure raises :class:`FrontError` carrying Kamailio's own error lines); then
runs ``kamailio -DD -E`` in the foreground with every stderr/stdout line handed to a callback
(default: the ``bridge.front`` logger, so structlog's stdlib bridge renders it). A Kamailio that
exits is restarted with exponential backoff (reset once it has run ``stable_after`` seconds).
:meth:`KamailioFront.stop` sends SIGTERM, then SIGKILL after ``stop_timeout``.

Kamailio comes from Debian: ``apt-get install kamailio`` (plus ``kamailio-tls-modules`` for TLS).
A missing binary or TLS module raises :class:`FrontUnavailable` saying exactly that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge.service.kamailio_cfg import (
    DEFAULT_BLOCKED_USER_AGENTS,
    SOURCE_HEADER,
    SYSTEM_CA_DIR,
    FrontConfigError,
    FrontOptions,
    FrontWorker,
    render_dispatcher_list,
    render_kamailio_cfg,
    render_tls_cfg,
)

__all__ = [
    "DEBIAN_MODULE_DIRS",
    "DEFAULT_BLOCKED_USER_AGENTS",
    "SOURCE_HEADER",
    "FrontConfigError",
    "FrontError",
    "FrontOptions",
    "FrontUnavailable",
    "FrontWorker",
    "KamailioFront",
    "find_kamailio",
    "front_options_from_sip",
]

log = logging.getLogger("bridge.front")

#: Where Debian's kamailio package puts its modules.
DEBIAN_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
)

OnLine = Callable[[str], None]

_LEVEL_RE = re.compile(r"\b(CRITICAL|ALERT|BUG|ERROR|WARNING|NOTICE|INFO|DEBUG)\b")


class FrontError(RuntimeError):
    """The front cannot run: its config was refused, or Kamailio would not start."""


class FrontUnavailable(FrontError):
    """Kamailio (or its TLS module) is not installed."""


def find_kamailio(binary: str = "kamailio") -> str:
    """Absolute path of the Kamailio binary, or :class:`FrontUnavailable` naming the package."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin:/usr/local/sbin")
    if found is None:
        raise FrontUnavailable(
            f"kamailio binary {binary!r} not found: install the Debian package 'kamailio' "
            "(apt-get install kamailio; add kamailio-tls-modules for TLS)"
        )
    return found


def _module_dir(opts: FrontOptions) -> str | None:
    if opts.module_path:
        return opts.module_path
    for d in DEBIAN_MODULE_DIRS:
        if os.path.isfile(os.path.join(d, "tm.so")):
            return d
    return None


def front_options_from_sip(
    sip: object, maxloads: Sequence[int] = (), **overrides: object
) -> FrontOptions:
    """:class:`FrontOptions` from ``roomline.config.SIPConfig``.

    With ``sip.workers`` a count or ``auto`` (front mode) everything comes from the config: the
    public ``port``/``tls_port`` and TLS files, the loopback workers of
    :func:`bridge.service.workers.plan_workers`, trusted addresses and flood limits.
    ``maxloads`` gives each worker's call cap (default 4, the wheel's ``PJSUA_MAX_CALLS``).
    Each worker is in the dispatcher set of its bridge clock (``sip.wideband_workers``): the
    front sends G.722 offers to the 16 kHz pool first and other offers to the 8 kHz pool.
    With the older list form the listed ``sip_port`` values are taken as loopback workers.
    ``overrides`` replace any option.
    """
    from bridge.service.workers import front_bind_address, front_internal_port, plan_workers

    workers_cfg = getattr(sip, "workers", ())
    # Each worker goes into the pool of its bridge clock (16 kHz or 8 kHz dispatcher set).
    specs = plan_workers(sip)  # type: ignore[arg-type]
    workers = tuple(
        FrontWorker(
            port=spec.sip_port,
            host="127.0.0.1",
            maxload=maxloads[i] if i < len(maxloads) else 4,
            wideband=spec.wideband,
        )
        for i, spec in enumerate(specs)
    )
    values: dict[str, object] = {
        "workers": workers,
        "bind_address": getattr(sip, "bind_address", "0.0.0.0"),
        "blocked_user_agents": tuple(getattr(sip, "blocked_user_agents", ())),
    }
    if not isinstance(workers_cfg, list):
        values.update(
            bind_address=front_bind_address(sip),  # type: ignore[arg-type]
            port=sip.port,  # type: ignore[attr-defined]
            tls_port=sip.tls_port,  # type: ignore[attr-defined]
            tls_cert_file=sip.tls_cert_file,  # type: ignore[attr-defined]
            tls_key_file=sip.tls_key_file,  # type: ignore[attr-defined]
            tls_client_verify=sip.outbound_tls_verify,  # type: ignore[attr-defined]
            tls_client_ca_file=sip.outbound_tls_ca_file,  # type: ignore[attr-defined]
            trusted_addresses=tuple(sip.trusted_addresses),  # type: ignore[attr-defined]
            pike_sampling_time=sip.pike_sampling_time,  # type: ignore[attr-defined]
            pike_reqs_density=sip.pike_reqs_density,  # type: ignore[attr-defined]
            ban_seconds=sip.ban_seconds,  # type: ignore[attr-defined]
            contact_via_front=True,
        )
    internal = front_internal_port(sip) if not isinstance(workers_cfg, list) else 0  # type: ignore[arg-type]
    if internal:
        # Behind 1:1 NAT: the public address in Via/Record-Route, the workers reached from a
        # loopback socket of their own.
        values["advertise"] = sip.public_ip  # type: ignore[attr-defined]
        values["internal_port"] = internal
    values.update(overrides)
    return FrontOptions(**values)  # type: ignore[arg-type]


class KamailioFront:
    """One supervised Kamailio serving ``options`` from ``run_dir``.

    ``on_line`` receives every line Kamailio writes (stderr and stdout); the default logs it on
    ``bridge.front`` at a level guessed from Kamailio's own (ERROR, WARNING, ...).
    """

    def __init__(
        self,
        options: FrontOptions,
        run_dir: str | os.PathLike[str],
        *,
        binary: str = "kamailio",
        on_line: OnLine | None = None,
        shm_mb: int = 64,
        pkg_mb: int = 8,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        stop_timeout: float = 5.0,
        check_timeout: float = 30.0,
    ) -> None:
        self.options = options
        # Absolute: kamailio resolves the dispatcher list and tls.cfg paths from its own cwd, and
        # data_dir may be relative (the default is ./data).
        self.run_dir = Path(run_dir).resolve()
        self._binary = binary
        self._on_line = on_line or _log_line
        self._shm_mb = shm_mb
        self._pkg_mb = pkg_mb
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._stop_timeout = stop_timeout
        self._check_timeout = check_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = asyncio.Event()
        self.restarts = 0
        self.last_exit: int | None = None

    # --- files ---------------------------------------------------------------------------------
    @property
    def cfg_path(self) -> Path:
        return self.run_dir / "kamailio.cfg"

    @property
    def dispatcher_list_path(self) -> Path:
        return self.run_dir / "dispatcher.list"

    @property
    def tls_cfg_path(self) -> Path:
        return self.run_dir / "tls.cfg"

    @property
    def ctl_socket(self) -> str:
        """The ``kamcmd -s unix:<path>`` socket (``ctl_socket`` option, else in the run dir)."""
        return self.options.ctl_socket or str(self.run_dir / "kamailio_ctl")

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.returncode is None else None

    def write_files(self) -> Path:
        """Render and write the config files into ``run_dir``; returns the ``kamailio.cfg`` path."""
        opts = self.options
        if not opts.ctl_socket:
            opts = _replace(opts, ctl_socket=self.ctl_socket)
        if not opts.module_path:
            mdir = _module_dir(opts)
            if mdir:
                opts = _replace(opts, module_path=mdir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write(self.dispatcher_list_path, render_dispatcher_list(opts))
        tls_path = ""
        if opts.tls_enabled:
            _write(self.tls_cfg_path, render_tls_cfg(opts))
            tls_path = str(self.tls_cfg_path)
        _write(
            self.cfg_path,
            render_kamailio_cfg(opts, str(self.dispatcher_list_path), tls_path),
        )
        return self.cfg_path

    def _preflight(self) -> str:
        binary = find_kamailio(self._binary)
        if self.options.tls_enabled:
            mdir = _module_dir(self.options)
            if mdir is not None and not os.path.isfile(os.path.join(mdir, "tls.so")):
                raise FrontUnavailable(
                    f"TLS is configured but {mdir}/tls.so is missing: install the Debian "
                    "package 'kamailio-tls-modules'"
                )
            self._check_client_ca()
        return binary

    def _check_client_ca(self) -> None:
        """The CA file or store for TLS trunks must be there: ``kamailio -c`` does not read
        ``tls.cfg``, and a missing ``ca_list`` would only stop Kamailio at start."""
        opts = self.options
        if not opts.tls_client_verify:
            return
        if opts.tls_client_ca_file:
            if not os.access(opts.tls_client_ca_file, os.R_OK):
                raise FrontError(
                    f"sip.outbound_tls_ca_file: cannot read {opts.tls_client_ca_file!r} (the CA "
                    "that TLS trunks' certificates are checked against)"
                )
        elif not os.path.isdir(SYSTEM_CA_DIR):
            raise FrontUnavailable(
                f"TLS trunks' certificates are checked against the system CA store {SYSTEM_CA_DIR}, "
                "which is missing: install the Debian package 'ca-certificates', or set "
                "sip.outbound_tls_ca_file (or sip.outbound_tls_verify: false)"
            )

    def _base_args(self) -> list[str]:
        return [
            "-f",
            str(self.cfg_path),
            "-Y",
            str(self.run_dir),
            "-m",
            str(self._shm_mb),
            "-M",
            str(self._pkg_mb),
        ]

    async def check(self) -> None:
        """Write the files and run ``kamailio -c``; :class:`FrontError` with its output if refused."""
        binary = self._preflight()
        self.write_files()
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            *self._base_args(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self._check_timeout)
        except TimeoutError:
            _kill_group(proc, signal.SIGKILL)
            await proc.wait()
            raise FrontError(f"kamailio -c timed out after {self._check_timeout:.0f}s") from None
        text = out.decode("utf-8", "replace")
        if proc.returncode != 0:
            errors = [ln.strip() for ln in text.splitlines() if _is_error_line(ln)]
            # The first errors are the cause (later ones follow from it); the last is the summary.
            shown = errors[:4] + errors[-1:] if len(errors) > 5 else errors
            detail = "; ".join(shown) or text.strip()[-1500:]
            raise FrontError(f"kamailio refused {self.cfg_path} (exit {proc.returncode}): {detail}")

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the config, then run Kamailio under supervision (returns once it is spawned)."""
        if self._task is not None:
            raise FrontError("front already started")
        await self.check()
        self._stopping = False
        self._started.clear()
        self._task = asyncio.get_running_loop().create_task(self._keep_running())
        await self._started.wait()
        if self._proc is None:
            raise FrontError("kamailio could not be started")

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until the TCP listener accepts connections (the UDP socket is bound before it)."""
        host = self.options.bind_address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.returncode is None:
                try:
                    _, w = await asyncio.wait_for(
                        asyncio.open_connection(host, self.options.port), 1.0
                    )
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()
                    return
                except (OSError, TimeoutError):
                    pass
            if time.monotonic() > deadline:
                raise FrontError(f"kamailio not listening on {host}:{self.options.port}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; stops restarting."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            _kill_group(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(_exited(proc), self._stop_timeout)
            except TimeoutError:
                log.warning("kamailio did not stop on SIGTERM; killing")
            _kill_group(proc, signal.SIGKILL)  # and any child left behind
            await _exited(proc)
            self.last_exit = proc.returncode
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def reload_config(self) -> None:
        """Re-render and check the files, then restart Kamailio on them (calls in setup are lost)."""
        await self.check()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            _kill_group(proc, signal.SIGTERM)  # the supervisor loop restarts it at once

    # --- internals -----------------------------------------------------------------------------
    async def _keep_running(self) -> None:
        delay = self._backoff_initial
        binary = self._preflight()
        while not self._stopping:
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    binary,
                    "-DD",
                    "-E",
                    *self._base_args(),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                self._on_line(f"front: cannot start kamailio: {exc}")
                self._started.set()
                proc = None
            if proc is not None:
                self._proc = proc
                self._started.set()
                assert proc.stdout is not None and proc.stderr is not None
                pumps = [
                    asyncio.get_running_loop().create_task(self._pump(proc.stdout)),
                    asyncio.get_running_loop().create_task(self._pump(proc.stderr)),
                ]
                try:
                    rc = await _exited(proc)
                finally:
                    # Kamailio's children share the pipes (and the sockets): none may outlive
                    # the main process, or the restarted one could not bind.
                    _kill_group(proc, signal.SIGKILL)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.gather(*pumps, return_exceptions=True), 5)
                    for p in pumps:
                        p.cancel()
                self.last_exit = rc
                if self._stopping:
                    return
                log.warning("kamailio exited with %s; restart in %.1fs", rc, delay)
            if self._stopping:
                return
            if time.monotonic() - started >= self._stable_after:
                delay = self._backoff_initial
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # a line over 64 KiB: skip it
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                try:
                    self._on_line(text)
                except Exception:  # a broken callback must not stop the pump
                    log.exception("front log callback failed")


def _replace(opts: FrontOptions, **changes: object) -> FrontOptions:
    import dataclasses

    return dataclasses.replace(opts, **changes)  # type: ignore[arg-type]


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The main process's exit status. ``proc.wait()`` would also wait for every process holding
    its stdout/stderr pipes (Kamailio's children), so poll ``returncode`` instead."""
    while proc.returncode is None:
        await asyncio.sleep(0.05)
    return proc.returncode


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _is_error_line(line: str) -> bool:
    return bool(re.search(r"\b(ERROR|CRITICAL|ALERT|BUG)\b|error in config|parse error", line))


def _log_line(line: str) -> None:
    m = _LEVEL_RE.search(line)
    level = {
        "CRITICAL": logging.CRITICAL,
        "ALERT": logging.CRITICAL,
        "BUG": logging.ERROR,
        "ERROR": logging.ERROR,
        "WARNING": logging.WARNING,
        "NOTICE": logging.INFO,
        "INFO": logging.INFO,
        "DEBUG": logging.DEBUG,
    }.get(m.group(1) if m else "INFO", logging.INFO)
    log.log(level, "kamailio: %s", line)

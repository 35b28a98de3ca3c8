"""The secondary side of replication: ``qemu-storage-daemon`` NBD exports of replicas.

One detached daemon per *key* (an instance name) exports all of that instance's replica
disks on one ``address:port``, each under its own export name (the disk uuid), writable.
The primary's QEMU connects to it (:mod:`.replication`) and mirrors every guest write
into it.  Files in the run dir::

    <key>.qsd.pid    pid of the daemon (written by spawn_detached)
    <key>.qsd.json   what it exports (disks, address, port, a hash of the PSK): what
                     ``ensure()`` compares to decide whether to restart it, and ``list()``
    <key>.qsd.qmp    its QMP monitor (``quit``, ``query-block-exports``)
    <key>.qsd.log    its stdout/stderr, truncated at every start
    <key>.qsd.tls/   keys.psk when the export requires TLS with a pre-shared key

Access control: with ``psk`` the NBD server accepts only TLS clients that know the
per-export key (``tls-creds-psk``; the client side is :func:`write_psk_dir` plus
:class:`~.replication.NbdTarget`'s ``psk_dir``).  It is optional because it costs ~30%
of 1 MiB write throughput (in-guest dd, TCG: 211-225 vs 311-333 MiB/s; nothing on 4 KiB
IOPS), whatever the cipher, even NULL: QEMU 7.2's TLS channel itself is the cost.
Without it anybody who reaches ``address:port`` can write the replica: bind it to the
replication network only.

Like the VMs, a daemon outlives the node daemon that started it and is found again
through its pid file; ``stop()`` returns only once the process has exited, so its image
locks are released (a VM may then open the replica: failover, migration).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from haven.daemon.procs import pid_alive, read_pid, running_pid, spawn_detached
from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu.cmdline import check_name, supports_direct_io
from haven.hypervisor.qemu.qmp import QmpError, qmp_call

log = logging.getLogger(__name__)

PSK_USER = "haven"  # the TLS-PSK identity; the key itself is per export
# GnuTLS's default negotiation was 30% slower than AES-128-GCM here (in-guest dd, 157
# vs 225 MiB/s); both ends are our own QEMU, so nothing else needs to be offered.
TLS_PRIORITY = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM"
START_TIMEOUT = 10.0
_MAX_SUN_PATH = 107
# Export names go into QEMU's key=value option syntax and the NBD protocol: keep them
# to what a uuid or a simple name needs.
_EXPORT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ExportDisk:
    """One replica to export: ``name`` is the NBD export name (the disk uuid)."""

    name: str
    path: str
    format: Literal["raw", "qcow2"] = "raw"


@dataclass(frozen=True)
class ExportInfo:
    """A running export daemon.  ``tls``: clients must use the PSK."""

    key: str
    pid: int
    address: str
    port: int
    disks: tuple[ExportDisk, ...]
    tls: bool
    qmp_path: Path


def new_psk() -> str:
    """A fresh random pre-shared key (256 bits, hex), for one export."""
    return secrets.token_hex(32)


def write_psk_dir(directory: Path, psk: str, user: str = PSK_USER) -> Path:
    """Write ``keys.psk`` (``user:hexkey``, mode 0600) into ``directory``, the layout
    QEMU's ``tls-creds-psk`` reads on both ends; returns ``directory``."""
    if not re.fullmatch(r"[0-9a-fA-F]{32,}", psk):
        raise HypervisorError("A replication pre-shared key must be at least 16 bytes, "
                              "hex-encoded (use new_psk()).")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / "keys.psk"
    tmp = directory / "keys.psk.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{user}:{psk}\n")
    tmp.replace(target)
    return directory


def _opt(value: str) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas are doubled."""
    return value.replace(",", ",,")


def qsd_argv(binary: str, disks: Sequence[ExportDisk], address: str, port: int,
             qmp_socket: str, tls_dir: str | None, direct_io: Sequence[bool] = (),
             writethrough: bool = True) -> list[str]:
    """The daemon's argv (pure).  The monitor comes last: qemu-storage-daemon handles its
    options in order, so once the monitor answers every export exists.

    ``writethrough``: flush after every write before acknowledging it.  The mirror never
    forwards the guest's flushes to its target (strace: 200 guest O_DSYNC writes, 400
    flushes on the primary, 0 on the replica), so without it an acknowledged write can
    sit in the secondary's volatile disk cache, be lost with its power, and -- written
    before the peer failed -- not be in the resync bitmap either.  Measured cost under
    TCG (bench/replication.py): -4% for 1 MiB writes, -14% for 4 KiB O_DSYNC IOPS."""
    argv = [binary]
    if tls_dir is not None:
        argv += ["--object", f"tls-creds-psk,id=tls0,endpoint=server,dir={_opt(tls_dir)},"
                              f"priority={TLS_PRIORITY}"]
    for i, disk in enumerate(disks):
        direct = direct_io[i] if i < len(direct_io) else True
        argv += [
            "--blockdev", f"driver=file,filename={_opt(disk.path)},node-name=file{i},"
                          f"cache.direct={'on' if direct else 'off'},aio=threads",
            "--blockdev", f"driver={disk.format},file=file{i},node-name=disk{i}",
        ]
    server = f"addr.type=inet,addr.host={_opt(address)},addr.port={port}"
    if tls_dir is not None:
        server += ",tls-creds=tls0"
    argv += ["--nbd-server", server]
    for i, disk in enumerate(disks):
        argv += ["--export",
                 f"type=nbd,id=exp{i},node-name=disk{i},name={disk.name},writable=on,"
                 f"writethrough={'on' if writethrough else 'off'}"]
    argv += ["--chardev", f"socket,id=haven-mon,path={_opt(qmp_socket)},server=on,wait=off",
             "--monitor", "chardev=haven-mon"]
    return argv


def check_disks(key: str, disks: Sequence[ExportDisk]) -> None:
    """Raise unless ``disks`` can be exported (names usable and unique, formats known)."""
    if not disks:
        raise HypervisorError(f"Cannot export the disks of instance '{key}': no disk given.")
    seen: set[str] = set()
    for disk in disks:
        if not _EXPORT_RE.match(disk.name) or disk.name in seen:
            raise HypervisorError(f"Cannot export the disks of instance '{key}': export name "
                                  f"{disk.name!r} is not a unique simple name (use the disk "
                                  "uuid).")
        if disk.format not in ("raw", "qcow2"):
            raise HypervisorError(f"Cannot export disk {disk.name} of instance '{key}': "
                                  f"format {disk.format!r} is not raw or qcow2.")
        seen.add(disk.name)


def port_in_use(address: str, port: int) -> bool:
    """True if ``address:port`` cannot be bound (another listener has it).  Uses
    SO_REUSEADDR like QEMU, so connections in TIME_WAIT do not count."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise HypervisorError(f"Cannot listen on {address}:{port}: {exc.strerror} "
                                  "(is the address configured on this node?).") from exc
    return False


def exited(pid: int) -> bool:
    """True once *every* thread of ``pid`` is gone, i.e. its files (image locks, the
    listening socket) are closed.  A zombie thread-group leader is not enough: the
    other threads of qemu-storage-daemon outlive it for a few ms up to a second, and
    until the last one exits the port stays bound and the image locked."""
    if not Path(f"/proc/{pid}").exists():
        return True
    if not _zombie(pid):
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].startswith("Z")


def wait_exited(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for :func:`exited`, reaping our own child; True if so."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if exited(pid):
            return True
        waited = time.monotonic() - start
        if waited >= timeout:
            return False
        # 1 ms at first: a migration onto the replica waits here with the guest paused
        # (a daemon that quits takes ~5-10 ms); then 5 ms, to spare the CPU.
        time.sleep(0.001 if waited < 0.05 else 0.005)


class ExportManager:
    """The replica exports of one node (thread-safe per key only if callers serialise
    calls for the same key, as the agent does: one object is handled serially)."""

    def __init__(self, run_dir: Path, binary: str = "qemu-storage-daemon",
                 writethrough: bool = True) -> None:
        self.run_dir = run_dir
        self.binary = binary
        self.writethrough = writethrough  # see qsd_argv

    # -- files ----------------------------------------------------------------------

    def path(self, key: str, suffix: str) -> Path:
        """``<run_dir>/<key>.qsd<suffix>``."""
        return self.run_dir / f"{key}.qsd{suffix}"

    def _socket_arg(self, key: str) -> str:
        # The daemon runs in the run dir, so a path too long for sun_path is relative.
        full = str(self.path(key, ".qmp"))
        return full if len(os.fsencode(full)) <= _MAX_SUN_PATH else f"{key}.qsd.qmp"

    def _marker(self, key: str) -> str:
        return f"path={_opt(self._socket_arg(key))},"

    def _pid(self, key: str) -> int | None:
        return running_pid(self.path(key, ".pid"), self._marker(key))

    def _meta(self, key: str) -> dict[str, Any]:
        try:
            data = json.loads(self.path(key, ".json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _info(self, key: str, pid: int, meta: dict[str, Any]) -> ExportInfo:
        return ExportInfo(key=key, pid=pid, address=meta.get("address", ""),
                          port=int(meta.get("port", 0)),
                          disks=tuple(ExportDisk(**d) for d in meta.get("disks", ())),
                          tls=bool(meta.get("psk_sha256")), qmp_path=self.path(key, ".qmp"))

    def _settle(self, key: str) -> None:
        """If the daemon of ``key`` died (crash, SIGKILL) but some of its threads still
        exit, wait for them: until then its port and image locks are still held.  Only a
        zombie is waited for, never a live process that reuses the pid."""
        pid = read_pid(self.path(key, ".pid"))
        if pid is not None and _zombie(pid):
            wait_exited(pid, 5.0)

    # -- the interface --------------------------------------------------------------

    def alive(self, key: str) -> bool:
        """True if the export daemon of ``key`` runs."""
        return self._pid(key) is not None

    def list(self) -> dict[str, ExportInfo]:
        """Every running export daemon of this run dir, by key."""
        found: dict[str, ExportInfo] = {}
        for pid_file in sorted(self.run_dir.glob("*.qsd.pid")):
            key = pid_file.name[: -len(".qsd.pid")]
            pid = self._pid(key)
            if pid is not None:
                found[key] = self._info(key, pid, self._meta(key))
        return found

    def ensure(self, key: str, disks: Sequence[ExportDisk], address: str, port: int,
               psk: str | None = None) -> ExportInfo:
        """Export ``disks`` on ``address:port`` (TLS-PSK with ``psk`` if given).

        Idempotent: a daemon already running with exactly this configuration is
        returned untouched (its clients stay connected); one with another configuration
        is stopped and started again (its clients see the export vanish: their mirror
        jobs fail and need a resync).  Raises :class:`HypervisorError` when the port is
        taken by someone else, an image cannot be opened or locked (a VM runs on it),
        or the daemon does not come up within :data:`START_TIMEOUT`.
        """
        check_name(key)
        check_disks(key, disks)
        want = {"disks": [dataclasses.asdict(d) for d in disks], "address": address,
                "port": port, "writethrough": self.writethrough,
                "psk_sha256": hashlib.sha256(psk.encode()).hexdigest() if psk else ""}
        pid = self._pid(key)
        if pid is not None:
            meta = self._meta(key)
            if {k: meta.get(k) for k in want} == want:
                return self._info(key, pid, meta)
            log.info("Export of %s changed; restarting its storage daemon", key)
            self.stop(key)
        self._settle(key)
        if port_in_use(address, port):
            raise HypervisorError(f"Cannot export the disks of instance '{key}' on "
                                  f"{address}:{port}: the port is already in use by another "
                                  "process; choose another network port for the instance.")
        return self._start(key, disks, address, port, psk, want)

    def _start(self, key: str, disks: Sequence[ExportDisk], address: str, port: int,
               psk: str | None, meta: dict[str, Any]) -> ExportInfo:
        found = shutil.which(self.binary)
        if found is None:
            raise HypervisorError(f"Cannot export the disks of instance '{key}': "
                                  f"{self.binary!r} was not found; install qemu-system-x86.")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._remove_files(key)
        tls_dir = None
        if psk:
            tls_dir = str(write_psk_dir(self.path(key, ".tls"), psk))
        argv = qsd_argv(found, disks, address, port, self._socket_arg(key), tls_dir,
                        [supports_direct_io(d.path) for d in disks], self.writethrough)
        tmp = self.path(key, ".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        tmp.replace(self.path(key, ".json"))
        logf = self.path(key, ".log")
        logf.write_bytes(b"")
        pid = spawn_detached(argv, logf, self.path(key, ".pid"), cwd=self.run_dir)
        try:
            self._wait_up(key, pid, len(disks))
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_exited(pid, 5.0)
            self._remove_files(key)
            raise
        log.info("Exporting %d disk(s) of %s on %s:%d%s (pid %d)", len(disks), key,
                 address, port, " with TLS-PSK" if psk else "", pid)
        return self._info(key, pid, meta)

    def _wait_up(self, key: str, pid: int, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        sock = self.path(key, ".qmp")
        while True:
            if not pid_alive(pid):
                wait_exited(pid, 1.0)  # reaps it
                raise HypervisorError(f"Could not export the disks of instance '{key}': "
                                      f"qemu-storage-daemon exited: {self._log_tail(key)}")
            if sock.exists():
                with contextlib.suppress(QmpError):
                    if len(qmp_call(sock, "query-block-exports", timeout=1.0,
                                    label=key)) == count:
                        return
            if time.monotonic() > deadline:
                raise HypervisorError(f"Could not export the disks of instance '{key}': "
                                      f"qemu-storage-daemon (pid {pid}) did not answer within "
                                      f"{START_TIMEOUT:g} s: {self._log_tail(key)}")
            time.sleep(0.01)

    def stop(self, key: str, timeout: float = 5.0) -> None:
        """Stop the export daemon of ``key`` and return once it has exited (its image
        locks are released then): QMP ``quit``, after ``timeout`` SIGKILL.  No-op when
        it does not run."""
        pid = self._pid(key)
        if pid is not None:
            with contextlib.suppress(QmpError):
                qmp_call(self.path(key, ".qmp"), "quit", timeout=min(timeout, 2.0), label=key)
            if not wait_exited(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not wait_exited(pid, 10.0):
                    raise HypervisorError(f"Could not stop the export of instance '{key}': "
                                          f"qemu-storage-daemon (pid {pid}) survived SIGKILL.")
            log.info("Stopped the export of %s (pid %d)", key, pid)
        self._settle(key)
        self._remove_files(key)

    # -- helpers ----------------------------------------------------------------------

    def _log_tail(self, key: str, lines: int = 3) -> str:
        try:
            text = self.path(key, ".log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) if tail else "(it printed nothing)"

    def _remove_files(self, key: str) -> None:
        for suffix in (".pid", ".json", ".json.tmp", ".qmp"):
            with contextlib.suppress(FileNotFoundError):
                self.path(key, suffix).unlink()
        shutil.rmtree(self.path(key, ".tls"), ignore_errors=True)

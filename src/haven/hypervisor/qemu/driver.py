"""The ``kvm`` hypervisor: QEMU processes detached from the node daemon, driven by QMP.

Files of VM ``<name>`` in the run dir (the sockets are listed in :mod:`.cmdline`)::

    <name>.pid     pid of its QEMU (written by spawn_detached)
    <name>.json    the spec, the resolved accelerator, argv and start time: rediscovery
                   after a daemon restart and ``list()``'s memory/vcpus/uuid come from it
    <name>.log     QEMU's stdout and stderr, truncated at every start, kept after the end
                   (until the instance is removed or renamed: :meth:`forget`)
    .accel.json    what ``auto`` resolved to (see :mod:`.accel`); hidden so that it cannot
                   collide with a VM called "accel"

A VM is "ours and alive" when its pid file names a live process whose command line has
``guest=<name>,`` (a recycled pid is not mistaken for it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from haven.daemon.procs import pid_alive, running_pid, spawn_detached, terminate
from haven.hypervisor.base import (
    DiskSpec,
    Hypervisor,
    HypervisorError,
    NicSpec,
    VmInfo,
    VmSpec,
    VmStatus,
)
from haven.hypervisor.qemu.accel import AccelChoice, resolve_accel
from haven.hypervisor.qemu.cmdline import (
    CONSOLE_LOG_SUFFIX,
    CONSOLE_SUFFIX,
    QMP_SUFFIX,
    SOCKET_SUFFIXES,
    STATUS_QMP_SUFFIX,
    build_argv,
    check_name,
    pid_marker,
    supports_direct_io,
)
from haven.hypervisor.qemu.qmp import QmpError, qmp_call, qmp_call_many

log = logging.getLogger(__name__)

# QEMU run states (QAPI RunState) that need a name of their own; every other state
# (paused, postmigrate, io-error, guest-panicked, ...) is a stopped VM: "paused".
_STATUS: dict[str, VmStatus] = {
    "running": "running",
    "shutdown": "shutdown",
    "inmigrate": "incoming",
}
LIST_QMP_TIMEOUT = 1.0  # per monitor; a VM that does not answer is "unknown"
QUIT_GRACE = 5.0  # after ``quit``, before SIGKILL
# A power-button press made before the guest listens for it (its kernel still booting,
# acpid not started) is lost; like Ganeti's shutdown retry loop, press again until the
# timeout.  3 s keeps a shutdown soon after a start to a few seconds.
PRESS_INTERVAL = 3.0


class QemuHypervisor(Hypervisor):
    """QEMU/KVM (Ganeti's hypervisor name ``kvm``), TCG where KVM does not really work.

    Thread-safe: the agent and job threads may call it concurrently; starting the same
    name twice concurrently is serialised (the second one fails as "already running").
    """

    NAME: ClassVar[str] = "kvm"
    CAN_MIGRATE: ClassVar[bool] = False  # live migration is not implemented yet
    CAN_CONSOLE: ClassVar[bool] = True

    def __init__(self, run_dir: Path, qemu_binary: str = "qemu-system-x86_64") -> None:
        super().__init__(run_dir)
        self.qemu_binary = qemu_binary
        self._accel: AccelChoice | None = None
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}

    # -- files --------------------------------------------------------------------------

    def path(self, name: str, suffix: str) -> Path:
        """``<run_dir>/<name><suffix>`` (suffix with its dot)."""
        return self.run_dir / f"{name}{suffix}"

    def qmp_path(self, name: str) -> Path:
        """The command monitor (one client at a time: keep sessions short)."""
        return self.path(name, QMP_SUFFIX)

    def load_spec(self, name: str) -> VmSpec | None:
        """The spec the VM was started with (from ``<name>.json``), if known."""
        meta = self._meta(name)
        if not meta:
            return None
        data = dict(meta["spec"])
        data["disks"] = tuple(DiskSpec(**d) for d in data.get("disks", ()))
        data["nics"] = tuple(NicSpec(**n) for n in data.get("nics", ()))
        return VmSpec(**data)

    def _meta(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads(self.path(name, ".json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def alive(self, name: str) -> bool:
        """Whether the QEMU process of ``name`` exists (no monitor query: cheap)."""
        return self._pid(name) is not None

    def _pid(self, name: str) -> int | None:
        return running_pid(self.path(name, ".pid"), pid_marker(name))

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _binary(self, name: str) -> str:
        found = shutil.which(self.qemu_binary)
        if found is None:
            raise HypervisorError(f"Cannot start instance '{name}': the QEMU binary "
                                  f"{self.qemu_binary!r} was not found; install the package "
                                  "qemu-system-x86.")
        return found

    # -- the interface ------------------------------------------------------------------

    def start(self, spec: VmSpec, timeout: float = 30.0) -> VmInfo:
        """Spawn QEMU detached and return once its monitor reports ``running`` (or
        ``inmigrate`` for ``spec.incoming``).  On any failure QEMU is killed, its files
        except the log are removed, and the error carries the tail of QEMU's stderr."""
        name = spec.name
        check_name(name)
        with self._name_lock(name):
            pid = self._pid(name)
            if pid is not None:
                raise HypervisorError(f"Cannot start instance '{name}': it is already "
                                      f"running (pid {pid}).")
            binary = self._binary(name)
            accel = spec.accel if spec.accel != "auto" else self.accel()
            direct = {d.path: supports_direct_io(d.path) for d in spec.disks if not d.uri}
            argv = build_argv(spec, self.run_dir, accel, binary, direct_io=direct)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._remove_files(name)
            self.path(name, ".log").write_bytes(b"")
            started = time.time()
            meta = {"spec": dataclasses.asdict(spec), "accel": accel, "started": started,
                    "argv": argv}
            tmp = self.path(name, ".json.tmp")
            tmp.write_text(json.dumps(meta, indent=1) + "\n")
            tmp.replace(self.path(name, ".json"))
            pid = spawn_detached(argv, self.path(name, ".log"), self.path(name, ".pid"),
                                 cwd=self.run_dir)
            log.info("Started QEMU for instance %s: pid %d, accel %s", name, pid, accel)
            try:
                status = self._wait_ready(name, pid, timeout)
            except BaseException:
                self._abort(name, pid)
                raise
        return VmInfo(name=name, pid=pid, status=status, uuid=spec.uuid, started=started,
                      memory=spec.memory, vcpus=spec.vcpus, accel=accel)

    def _wait_ready(self, name: str, pid: int, timeout: float) -> VmStatus:
        deadline = time.monotonic() + timeout
        sock = self.path(name, STATUS_QMP_SUFFIX)
        while True:
            if not pid_alive(pid):
                code = _reap(pid)
                how = f" with status {code}" if code is not None else ""
                raise HypervisorError(f"Could not start instance '{name}': QEMU exited"
                                      f"{how}: {self._log_tail(name)}")
            remaining = deadline - time.monotonic()
            if sock.exists():
                try:
                    state = qmp_call(sock, "query-status", timeout=max(0.2, min(1.0, remaining)))
                except QmpError:
                    pass  # not listening yet, or exiting: the next round tells
                else:
                    status = _STATUS.get(state.get("status", ""), "paused")
                    if status in ("running", "incoming"):
                        return status
            if remaining <= 0:
                raise HypervisorError(f"Could not start instance '{name}': QEMU (pid {pid}) "
                                      f"did not report running within {timeout:g} s: "
                                      f"{self._log_tail(name)}")
            time.sleep(0.01)

    def _log_tail(self, name: str, lines: int = 3) -> str:
        try:
            text = self.path(name, ".log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) if tail else "(QEMU printed nothing)"

    def _abort(self, name: str, pid: int) -> None:
        if pid_alive(pid):
            terminate(pid, timeout=QUIT_GRACE, sig=signal.SIGKILL)
        _reap(pid)
        self._remove_files(name)

    def list(self) -> dict[str, VmInfo]:
        """Alive VMs of the run dir, with their QEMU run state from the status monitor
        (all queried concurrently, ``unknown`` for one that does not answer within
        :data:`LIST_QMP_TIMEOUT`).  Costs about 3 ms for 3 VMs (TCG, 2 cores)."""
        pids: dict[str, int] = {}
        for pid_file in self.run_dir.glob("*.pid"):
            name = pid_file.name[: -len(".pid")]
            pid = running_pid(pid_file, pid_marker(name))
            if pid is not None:
                pids[name] = pid
        names = sorted(pids)
        replies = qmp_call_many([self.path(n, STATUS_QMP_SUFFIX) for n in names],
                                "query-status", timeout=LIST_QMP_TIMEOUT)
        found: dict[str, VmInfo] = {}
        for name, reply in zip(names, replies, strict=True):
            status: VmStatus = "unknown"
            if isinstance(reply, dict):
                status = _STATUS.get(str(reply.get("status", "")), "paused")
            meta = self._meta(name)
            spec = meta.get("spec", {})
            found[name] = VmInfo(
                name=name, pid=pids[name], status=status, uuid=spec.get("uuid", ""),
                started=meta.get("started", 0.0), memory=spec.get("memory", 0),
                vcpus=spec.get("vcpus", 0), accel=meta.get("accel", ""))
        return found

    def stop(self, name: str, timeout: float = 120.0, force: bool = False) -> None:
        """ACPI power-down, pressed again every :data:`PRESS_INTERVAL` s, wait up to
        ``timeout`` for the guest to power off (QEMU status ``shutdown``) or QEMU to exit,
        then ``quit`` and, 5 s later, SIGKILL.  A VM that is not ``running`` (paused,
        incoming) is quit at once.  ``force``: SIGKILL at once.  No-op when the VM does
        not run."""
        pid = self._pid(name)
        if pid is None:
            return
        if force:
            self.kill(name)
            return
        deadline = time.monotonic() + timeout
        presses = 0
        while True:
            outcome = self.press_power_button(
                name, max(0.0, min(PRESS_INTERVAL, deadline - time.monotonic())))
            if outcome != "on" or time.monotonic() >= deadline:
                break
            presses += 1
            log.info("Instance %s: pressed the power button again (%d)", name, presses)
        if outcome == "off":
            log.info("Instance %s powered off", name)
        elif outcome == "on":
            log.warning("Instance %s did not power off within %g s; stopping QEMU",
                        name, timeout)
        else:
            log.warning("Instance %s: no ACPI power-down (%s); stopping QEMU", name, outcome)
        self._quit(name, pid)
        self.cleanup(name)

    def press_power_button(self, name: str, wait: float) -> str:
        """Press the guest's ACPI power button once and wait up to ``wait`` s for it to
        power off.  ``"off"``: powered off (QEMU ``shutdown``) or QEMU gone; ``"on"``:
        still running (it may not have heard it: a guest that has not yet started
        listening loses the press, so callers press again); anything else says why the
        guest cannot hear it (paused, incoming, no monitor): stop it instead.  Leaves
        QEMU running either way (:meth:`stop` quits it)."""
        pid = self._pid(name)
        if pid is None:
            return "off"
        try:
            status = qmp_call(self.path(name, STATUS_QMP_SUFFIX), "query-status")["status"]
            if status == "shutdown":
                return "off"
            # A paused or incoming guest cannot react to the power button: no waiting.
            if status != "running":
                return f"it is {status}"
            qmp_call(self.qmp_path(name), "system_powerdown")
        except HypervisorError as exc:
            return str(exc)
        return "off" if self._wait_powered_off(name, pid, wait) else "on"

    def resume_after_io_error(self, name: str) -> bool:
        """Continue a guest that its disks' ``werror/rerror=stop`` paused (QEMU status
        ``io-error``: the storage did not answer); its failed requests are resent.
        True if it was continued; a storage still down pauses it again at once.  A
        guest paused for any other reason (migration, freeze) is left alone."""
        try:
            status = qmp_call(self.path(name, STATUS_QMP_SUFFIX), "query-status")["status"]
            if status != "io-error":
                return False
            qmp_call(self.qmp_path(name), "cont")
        except HypervisorError:
            return False
        return True

    def _wait_powered_off(self, name: str, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        sock = self.path(name, STATUS_QMP_SUFFIX)
        while True:
            if not pid_alive(pid):
                return True
            with contextlib.suppress(QmpError):
                if qmp_call(sock, "query-status", timeout=1.0).get("status") == "shutdown":
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _quit(self, name: str, pid: int) -> None:
        if pid_alive(pid):
            with contextlib.suppress(QmpError):
                qmp_call(self.qmp_path(name), "quit", timeout=2.0)
        # SIGTERM is QEMU's own "quit"; terminate() escalates to SIGKILL after the grace.
        if not terminate(pid, timeout=QUIT_GRACE, sig=signal.SIGTERM):
            raise HypervisorError(f"Could not stop instance '{name}': QEMU (pid {pid}) "
                                  "survived SIGKILL.")

    def kill(self, name: str) -> None:
        """SIGKILL the VM's QEMU and wait until it is gone; no-op when it does not run."""
        pid = self._pid(name)
        if pid is None:
            return
        if not terminate(pid, timeout=10.0, sig=signal.SIGKILL):
            raise HypervisorError(f"Could not kill instance '{name}': QEMU (pid {pid}) "
                                  "survived SIGKILL.")
        log.info("Killed QEMU of instance %s (pid %d)", name, pid)
        self.cleanup(name)

    def reboot(self, name: str) -> None:
        """Hard reset (``system_reset``); the VM keeps running."""
        if self._pid(name) is None:
            raise HypervisorError(f"Cannot reboot instance '{name}': it is not running.")
        qmp_call(self.qmp_path(name), "system_reset")

    def console_path(self, name: str) -> Path:
        """The serial console socket (ttyS0).  A run dir path longer than 107 bytes
        cannot be connected to directly (see :mod:`.cmdline`)."""
        return self.path(name, CONSOLE_SUFFIX)

    def accel(self) -> str:
        """``kvm`` if the probe found KVM really working on this node, else ``tcg``."""
        return self.accel_choice().accel

    def accel_choice(self) -> AccelChoice:
        """The probe's verdict and reason (probed once, cached in the run dir)."""
        with self._lock:
            if self._accel is None:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._accel = resolve_accel(self.run_dir, self.qemu_binary)
            return self._accel

    def cleanup(self, name: str) -> None:
        """Remove the pid file, sockets and spec of a VM that no longer runs (the log
        stays).  Does nothing while the VM runs."""
        if self._pid(name) is not None:
            log.warning("Not cleaning up instance %s: it is running", name)
            return
        self._remove_files(name)

    def forget(self, name: str) -> None:
        """:meth:`cleanup`, and the QEMU and console logs."""
        if self._pid(name) is not None:
            log.warning("Not forgetting instance %s: it is running", name)
            return
        self._remove_files(name)
        for suffix in (".log", CONSOLE_LOG_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                self.path(name, suffix).unlink()

    def _remove_files(self, name: str) -> None:
        for suffix in (".pid", ".json", ".json.tmp", *SOCKET_SUFFIXES):
            with contextlib.suppress(FileNotFoundError):
                self.path(name, suffix).unlink()


def _reap(pid: int) -> int | None:
    """Collect our exited child's status (QEMU is our child until a daemon restart);
    its exit code or None if it is not our child or still runs."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return None
    return os.waitstatus_to_exitcode(status) if got == pid else None

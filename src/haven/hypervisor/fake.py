"""A fake hypervisor for fast tests: every "VM" is a real, idle, detached process.

Same layout as the QEMU driver, so that ``kill -9``, a daemon restart (a second
instance finding the VMs again) and recycled pids behave as with QEMU::

    <name>.pid       pid of a sleeping Python process whose argv has ``guest=<name>,``
    <name>.json      the spec and the VM's status (``running``, ``shutdown`` ...)
    <name>.console   a plain file standing in for the console socket

Test hooks: :meth:`FakeHypervisor.set_status` (a guest powering itself off is
``set_status(name, "shutdown")``), ``spec.extra["fake_start_error"]`` (start fails with
that text) and the ``reboots`` counter in :meth:`FakeHypervisor.meta`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, cast

from haven.daemon.procs import running_pid, spawn_detached, terminate
from haven.hypervisor.base import Hypervisor, HypervisorError, VmInfo, VmSpec, VmStatus

_SLEEPER = "import time\nwhile True:\n    time.sleep(3600)\n"
_STATUSES = ("running", "paused", "shutdown", "incoming", "unknown")


def _marker(name: str) -> str:
    return f"guest={name},"


class FakeHypervisor(Hypervisor):
    """VMs that are sleeping processes; ``accel()`` is ``fake``."""

    NAME: ClassVar[str] = "fake"
    CAN_MIGRATE: ClassVar[bool] = False
    CAN_CONSOLE: ClassVar[bool] = True

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self._lock = threading.Lock()

    def _path(self, name: str, suffix: str) -> Path:
        return self.run_dir / f"{name}{suffix}"

    def _pid(self, name: str) -> int | None:
        return running_pid(self._path(name, ".pid"), _marker(name))

    def meta(self, name: str) -> dict[str, Any]:
        """The VM's json (``spec``, ``status``, ``started``, ``reboots``), {} if none."""
        try:
            data = json.loads(self._path(name, ".json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_meta(self, name: str, meta: dict[str, Any]) -> None:
        tmp = self._path(name, ".json.tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(self._path(name, ".json"))

    def start(self, spec: VmSpec, timeout: float = 30.0) -> VmInfo:
        """Spawn the sleeper; fails like QEMU would for a name already running or
        ``spec.extra["fake_start_error"]`` (then nothing is left behind)."""
        name = spec.name
        if not name or "/" in name or name.startswith("."):
            raise HypervisorError(f"Instance name {name!r} is not usable.")
        with self._lock:
            pid = self._pid(name)
            if pid is not None:
                raise HypervisorError(f"Cannot start instance '{name}': it is already "
                                      f"running (pid {pid}).")
            if spec.extra.get("fake_start_error"):
                raise HypervisorError(f"Could not start instance '{name}': "
                                      f"{spec.extra['fake_start_error']}")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            status: VmStatus = "incoming" if spec.incoming else "running"
            started = time.time()
            self._write_meta(name, {"spec": dataclasses.asdict(spec), "status": status,
                                    "started": started, "reboots": 0})
            self._path(name, ".console").write_text("")
            log_path = self._path(name, ".log")
            log_path.write_bytes(b"")
            pid = spawn_detached([sys.executable, "-S", "-c", _SLEEPER, "haven-fake-vm",
                                  _marker(name)], log_path, self._path(name, ".pid"))
        return VmInfo(name=name, pid=pid, status=status, uuid=spec.uuid, started=started,
                      memory=spec.memory, vcpus=spec.vcpus, accel="fake")

    def list(self) -> dict[str, VmInfo]:
        found: dict[str, VmInfo] = {}
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            name = pid_file.name[: -len(".pid")]
            pid = running_pid(pid_file, _marker(name))
            if pid is None:
                continue
            meta = self.meta(name)
            spec = meta.get("spec", {})
            status = meta.get("status", "unknown")
            found[name] = VmInfo(
                name=name, pid=pid,
                status=cast(VmStatus, status) if status in _STATUSES else "unknown",
                uuid=spec.get("uuid", ""), started=meta.get("started", 0.0),
                memory=spec.get("memory", 0), vcpus=spec.get("vcpus", 0), accel="fake")
        return found

    def set_status(self, name: str, status: VmStatus) -> None:
        """Test hook: what QEMU's run state would say (e.g. the guest powered off)."""
        meta = self.meta(name)
        if not meta:
            raise HypervisorError(f"Instance '{name}' is not known to the fake hypervisor.")
        meta["status"] = status
        self._write_meta(name, meta)

    def stop(self, name: str, timeout: float = 120.0, force: bool = False) -> None:
        """The fake guest always powers off at once: SIGTERM (SIGKILL if ``force``)."""
        pid = self._pid(name)
        if pid is None:
            return
        terminate(pid, timeout=min(timeout, 5.0), sig=signal.SIGKILL if force else signal.SIGTERM)
        self.cleanup(name)

    def kill(self, name: str) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        terminate(pid, timeout=5.0, sig=signal.SIGKILL)
        self.cleanup(name)

    def reboot(self, name: str) -> None:
        """Counts the reboot and makes the VM ``running`` again."""
        if self._pid(name) is None:
            raise HypervisorError(f"Cannot reboot instance '{name}': it is not running.")
        meta = self.meta(name)
        meta["reboots"] = int(meta.get("reboots", 0)) + 1
        meta["status"] = "running"
        self._write_meta(name, meta)

    def console_path(self, name: str) -> Path:
        return self._path(name, ".console")

    def accel(self) -> str:
        return "fake"

    def cleanup(self, name: str) -> None:
        """Remove the files of a VM that no longer runs (the log stays)."""
        self._remove(name, (".pid", ".json", ".json.tmp", ".console"))

    def forget(self, name: str) -> None:
        """:meth:`cleanup`, and the log."""
        self._remove(name, (".pid", ".json", ".json.tmp", ".console", ".log"))

    def _remove(self, name: str, suffixes: tuple[str, ...]) -> None:
        if self._pid(name) is not None:
            return
        for suffix in suffixes:
            with contextlib.suppress(FileNotFoundError):
                self._path(name, suffix).unlink()

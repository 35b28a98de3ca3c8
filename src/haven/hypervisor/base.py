"""The hypervisor interface every driver implements.

A driver manages the VM processes of *one node*.  Processes are detached from the
node daemon (own session, pid file, QMP and console sockets in the node's run
directory), so a daemon restart never stops a VM: a new driver instance finds them
again with :meth:`Hypervisor.list`.  Every method is idempotent where it can be
(stopping a stopped VM is a no-op) and raises :class:`HypervisorError` with one
sentence naming the instance and the cause (including QEMU's own stderr on a failed
start).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from haven.errors import OpExecError


class HypervisorError(OpExecError):
    """A VM could not be started, stopped or reached."""


@dataclass(frozen=True)
class DiskSpec:
    """One disk as the guest sees it (``index`` 0 is ``/dev/vda``)."""

    index: int
    path: str
    format: Literal["raw", "qcow2"] = "raw"
    read_only: bool = False
    #: Reached in user space instead of ``path`` (an ExtStorage provider's URI, such as
    #: ``iscsi://user@portal/target/lun``); ``secret_file`` holds the password of the
    #: URI's user, ``initiator`` is this node's iSCSI initiator name.
    uri: str = ""
    secret_file: str = ""
    initiator: str = ""
    #: A ``drbd`` disk: the guest writes through a quorum of this image and its replica
    #: (``haven.hypervisor.qemu.quorum``), which needs the image's size in bytes.
    replicated: bool = False
    size: int = 0


@dataclass(frozen=True)
class NicSpec:
    """One NIC.  ``mode``: ``user`` (QEMU user networking) or ``bridged`` (a tap device
    named ``tap`` on bridge ``link``)."""

    index: int
    mac: str
    mode: Literal["user", "bridged"] = "user"
    link: str = ""
    ip: str = ""
    tap: str = ""


@dataclass(frozen=True)
class VmSpec:
    """Everything needed to start one VM.

    ``accel``: ``kvm``, ``tcg`` or ``auto`` (the driver's probe decides).
    ``kernel_args`` is the full command line (the OS definition adds its own).
    ``incoming``: start paused waiting for a migration (``-incoming defer``).
    """

    name: str
    uuid: str
    memory: int  # MiB
    vcpus: int = 1
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    kernel_path: str = ""
    initrd_path: str = ""
    kernel_args: str = ""
    serial_console: bool = True
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    machine: str = "pc"
    cpu_model: str = "qemu64"
    incoming: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


VmStatus = Literal["running", "paused", "shutdown", "incoming", "unknown"]


@dataclass(frozen=True)
class VmInfo:
    """A VM process found on this node.  ``status`` is QEMU's run state;
    ``shutdown`` means the guest powered itself off (Ganeti's ``USER_down``)."""

    name: str
    pid: int
    status: VmStatus
    uuid: str = ""
    started: float = 0.0
    memory: int = 0
    vcpus: int = 0
    accel: str = ""


class Hypervisor(abc.ABC):
    """One node's VMs."""

    NAME: ClassVar[str]
    CAN_MIGRATE: ClassVar[bool] = False
    CAN_CONSOLE: ClassVar[bool] = True

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @abc.abstractmethod
    def start(self, spec: VmSpec, timeout: float = 30.0) -> VmInfo:
        """Start the VM; returns once it answers its monitor and runs (or waits for
        an incoming migration).  A VM of that name already running is an error."""

    @abc.abstractmethod
    def list(self) -> dict[str, VmInfo]:
        """Every VM process of this node that is alive (found through the run dir)."""

    @abc.abstractmethod
    def stop(self, name: str, timeout: float = 120.0, force: bool = False) -> None:
        """Clean shutdown: ACPI power-down, wait up to ``timeout`` for the guest, then
        kill.  ``force`` kills at once.  No-op if the VM does not run."""

    @abc.abstractmethod
    def kill(self, name: str) -> None:
        """SIGKILL the VM process now (fencing); no-op if it does not run."""

    @abc.abstractmethod
    def reboot(self, name: str) -> None:
        """Reset the VM (Ganeti's hard reboot)."""

    @abc.abstractmethod
    def console_path(self, name: str) -> Path:
        """The unix socket of the VM's serial console."""

    @abc.abstractmethod
    def accel(self) -> str:
        """The accelerator ``auto`` resolves to on this node (``kvm`` or ``tcg``)."""

    def cleanup(self, name: str) -> None:  # noqa: B027 - optional hook
        """Remove what a VM that no longer runs left in the run dir."""

    def forget(self, name: str) -> None:
        """Remove everything of a VM that no longer runs, its logs included: the
        instance was removed or renamed.  Does nothing while it runs."""
        self.cleanup(name)

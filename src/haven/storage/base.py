"""The disk-template interface, run on the node that holds the disks.

A template creates, assembles (makes usable by QEMU), grows and removes an instance's
disks.  Assembling twice is safe.  ``drbd`` (replicated) slots in beside ``file``,
``sharedfile`` and ``diskless`` with the same methods plus replication ones.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from haven.errors import InvalidInput, OpExecError
from haven.hypervisor.base import DiskSpec
from haven.model.instance import Disk, Instance


class StorageError(OpExecError):
    """A disk could not be created, found or changed."""


@dataclass(frozen=True)
class StoragePaths:
    """This node's storage roots: ``file`` is private to the node, ``shared`` is the
    directory every node sees (on one machine, a shared folder)."""

    file: Path
    shared: Path
    #: For ``ext``: the node running the scripts, its iSCSI initiator name, its data
    #: directory (where providers keep their configuration).
    node: str = ""
    initiator: str = ""
    data_dir: Path | None = None


class DiskTemplate(abc.ABC):
    NAME: ClassVar[str]
    #: The disks are reachable from every node: the instance may run anywhere.
    SHARED: ClassVar[bool] = False
    #: The template needs no disks at all.
    DISKLESS: ClassVar[bool] = False
    #: Two replicas on two nodes, kept in sync by the node agents.
    REPLICATED: ClassVar[bool] = False

    def __init__(self, paths: StoragePaths) -> None:
        self.paths = paths

    @abc.abstractmethod
    def create(self, inst: Instance, disk: Disk) -> Disk:
        """Create one disk (sparse); returns it with its ``path`` set."""

    @abc.abstractmethod
    def remove(self, inst: Instance, disk: Disk) -> None:
        """Remove one disk; a missing disk is not an error."""

    @abc.abstractmethod
    def assemble(self, inst: Instance) -> tuple[DiskSpec, ...]:
        """What QEMU opens, checking that every disk exists."""

    @abc.abstractmethod
    def grow(self, inst: Instance, disk: Disk, new_size: int) -> None:
        """Grow one disk to ``new_size`` MiB."""

    def detach(self, inst: Instance) -> None:  # noqa: B027 - optional hook
        """Release the instance's disks on this node once its VM is gone here (``ext``:
        the provider's ``detach``); nothing for local files."""

    def fence(self, inst: Instance, node: str, initiator: str) -> str:
        """Cut ``node`` (dead or cut off) off the instance's disks at the storage, so
        that a frozen QEMU there can never write again; one line saying what was
        done, or "" when the template has no such means (the node's own fencing is
        then what keeps it from writing)."""
        return ""

    def free_mib(self) -> int:
        import shutil

        root = self.root()
        root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(root).free // 2**20

    def root(self) -> Path:
        return self.paths.file


def template(name: str, paths: StoragePaths) -> DiskTemplate:
    from haven.storage.drbd import DrbdTemplate
    from haven.storage.ext import ExtTemplate
    from haven.storage.file import DisklessTemplate, FileTemplate, SharedFileTemplate

    table: dict[str, type[DiskTemplate]] = {
        "file": FileTemplate, "sharedfile": SharedFileTemplate,
        "diskless": DisklessTemplate, "drbd": DrbdTemplate, "ext": ExtTemplate}
    cls = table.get(name)
    if cls is None:
        raise InvalidInput(f"Disk template {name!r} is not supported; use one of "
                           f"{', '.join(sorted(table))}.")
    return cls(paths)

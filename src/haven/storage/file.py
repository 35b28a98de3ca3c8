"""``file`` (a sparse image in the node's own storage directory), ``sharedfile`` (the
same in a directory every node sees) and ``diskless``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from haven.hypervisor.base import DiskSpec
from haven.model.instance import Disk, Instance
from haven.storage.base import DiskTemplate, StorageError


class FileTemplate(DiskTemplate):
    NAME = "file"

    def root(self) -> Path:
        return self.paths.file

    def _dir(self, inst: Instance) -> Path:
        # By uuid, not name: a rename must not move files, and a name reused after a
        # remove must never see the old disks.
        return self.root() / inst.uuid

    def create(self, inst: Instance, disk: Disk) -> Disk:
        d = self._dir(inst)
        d.mkdir(parents=True, exist_ok=True)
        name = f"disk{disk.index}-{disk.uuid[:8]}.{disk.format}"
        path = d / name
        if path.exists():
            raise StorageError(f"Disk {disk.index} of instance {inst.name} already exists "
                               f"at {path}.")
        if self.free_mib() < disk.size and disk.format == "raw":
            # Sparse files would let this succeed, and the guest fail later.
            raise StorageError(f"Not enough space for disk {disk.index} of {inst.name} "
                               f"({disk.size} MiB) in {self.root()}; free some space or "
                               f"pick another node.")
        if disk.format == "qcow2":
            _run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{disk.size}M"],
                 f"create disk {disk.index} of {inst.name}")
        else:
            with open(path, "wb") as f:
                f.truncate(disk.size * 2**20)
        return Disk(disk.uuid, disk.index, disk.size, str(path.relative_to(self.root())),
                    disk.format, disk.mode)

    def remove(self, inst: Instance, disk: Disk) -> None:
        if disk.path:
            (self.root() / disk.path).unlink(missing_ok=True)
        d = self._dir(inst)
        if d.exists() and not any(d.iterdir()):
            d.rmdir()

    def path(self, disk: Disk) -> Path:
        return self.root() / disk.path

    def assemble(self, inst: Instance) -> tuple[DiskSpec, ...]:
        specs = []
        for disk in inst.disks:
            p = self.path(disk)
            if not p.exists():
                raise StorageError(f"Disk {disk.index} of instance {inst.name} is missing "
                                   f"({p}); is this the node that holds it?")
            specs.append(DiskSpec(disk.index, str(p), "qcow2" if disk.format == "qcow2"
                                  else "raw", disk.mode == "ro"))
        return tuple(specs)

    def grow(self, inst: Instance, disk: Disk, new_size: int) -> None:
        p = self.path(disk)
        if disk.format == "qcow2":
            _run(["qemu-img", "resize", "-q", str(p), f"{new_size}M"],
                 f"grow disk {disk.index} of {inst.name}")
        else:
            os.truncate(p, new_size * 2**20)


class SharedFileTemplate(FileTemplate):
    NAME = "sharedfile"
    SHARED = True

    def root(self) -> Path:
        return self.paths.shared


class DisklessTemplate(DiskTemplate):
    NAME = "diskless"
    SHARED = True
    DISKLESS = True

    def create(self, inst: Instance, disk: Disk) -> Disk:
        raise StorageError(f"Instance {inst.name} uses the diskless template; it has no "
                           f"disks to create.")

    def remove(self, inst: Instance, disk: Disk) -> None:
        return None

    def assemble(self, inst: Instance) -> tuple[DiskSpec, ...]:
        return ()

    def grow(self, inst: Instance, disk: Disk, new_size: int) -> None:
        raise StorageError(f"Instance {inst.name} is diskless.")


def _run(argv: list[str], what: str) -> None:
    if shutil.which(argv[0]) is None:
        raise StorageError(f"Cannot {what}: {argv[0]} is missing; install qemu-utils.")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise StorageError(f"Cannot {what}: {proc.stderr.strip() or proc.stdout.strip()}")

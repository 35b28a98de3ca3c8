"""``drbd``: two replicas of every disk, kept identical by QEMU itself.

On each of the two nodes the replica is a sparse raw file in the node's storage
directory.  The secondary exports its replica over NBD with ``qemu-storage-daemon``;
the primary's QEMU writes every guest write to both through a ``quorum`` node that
needs both to succeed (``haven.hypervisor.qemu.quorum``; the initial sync and resyncs
copy with a mirror job), so a write completes only when both nodes have it (DRBD's
protocol C) — without the DRBD kernel module.  This class only
manages the local file; the export and the mirror are run by the node agent
(``haven.daemon.replication``) through ``haven.hypervisor.qemu``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from haven.hypervisor.base import DiskSpec
from haven.model.instance import Instance
from haven.storage.file import FileTemplate


class DrbdTemplate(FileTemplate):
    NAME = "drbd"
    REPLICATED = True

    def root(self) -> Path:
        return self.paths.file.parent / "drbd"

    def assemble(self, inst: Instance) -> tuple[DiskSpec, ...]:
        """The files' disks, marked replicated, with the size the quorum needs: a raw
        file's own size, a qcow2 image's virtual size (its size in the record)."""
        sizes = {d.index: d.size * 2**20 for d in inst.disks}
        return tuple(dataclasses.replace(
            spec, replicated=True,
            size=os.stat(spec.path).st_size if spec.format == "raw" else sizes[spec.index])
            for spec in super().assemble(inst))


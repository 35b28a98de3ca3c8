"""``drbd``: two replicas of every disk, kept identical by QEMU itself.

On each of the two nodes the replica is a sparse raw file in the node's storage
directory.  The secondary exports its replica over NBD with ``qemu-storage-daemon``;
the primary's QEMU mirrors every guest write into it synchronously
(``blockdev-mirror copy-mode=write-blocking``), so a write completes only when both
nodes have it (DRBD's protocol C) — without the DRBD kernel module.  This class only
manages the local file; the export and the mirror are run by the node agent
(``haven.daemon.replication``) through ``haven.hypervisor.qemu``.
"""

from __future__ import annotations

from pathlib import Path

from haven.storage.file import FileTemplate


class DrbdTemplate(FileTemplate):
    NAME = "drbd"
    REPLICATED = True

    def root(self) -> Path:
        return self.paths.file.parent / "drbd"

"""Give OS scripts a path for every disk, even for volumes reached in user space only.

Ganeti's OS scripts write to ``DISK_<i>_PATH``.  A disk that an ExtStorage provider
gives as a URI (iSCSI through QEMU's libiscsi: no kernel initiator here) has no path on
the node, so the script gets a sparse local file of the disk's size instead: read from
the volume first unless the script installs from scratch (``create``, ``import``), and
written back into it when the script succeeded.  Nothing is written back after a failure.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from haven.hypervisor.base import DiskSpec
from haven.model.instance import Instance

log = logging.getLogger(__name__)

# These scripts write a whole new disk: nothing to read from the volume first.
FROM_SCRATCH = ("create", "import")


@contextlib.contextmanager
def staged_disks(inst: Instance, specs: Sequence[DiskSpec], script: str,
                 staging: Path) -> Iterator[list[str]]:
    """The paths the script gets, one per disk, in order."""
    if not any(s.uri for s in specs):
        yield [s.path for s in specs]
        return
    from haven.hypervisor.qemu.imgcopy import copy_into, copy_out

    staging.mkdir(parents=True, exist_ok=True)
    temps: dict[int, Path] = {}
    try:
        paths = []
        for spec, disk in zip(specs, inst.disks, strict=True):
            if not spec.uri:
                paths.append(spec.path)
                continue
            tmp = staging / f"{inst.name}-disk{disk.index}-{uuid.uuid4().hex[:8]}.img"
            temps[disk.index] = tmp
            if script in FROM_SCRATCH:
                with open(tmp, "wb") as f:
                    f.truncate(disk.size * 2**20)
            else:
                copy_out(spec, tmp, f"read disk {disk.index} of {inst.name} for its OS "
                                    f"{script} script")
            paths.append(str(tmp))
        yield paths
        for spec, disk in zip(specs, inst.disks, strict=True):
            tmp_path = temps.get(disk.index)
            if tmp_path is None:
                continue
            log.info("writing the result of the OS %s script into disk %d of %s", script,
                     disk.index, inst.name)
            copy_into(tmp_path, spec, f"write disk {disk.index} of {inst.name} after its "
                                      f"OS {script} script",
                      zeroed=script in FROM_SCRATCH)
    finally:
        for tmp_path in temps.values():
            tmp_path.unlink(missing_ok=True)

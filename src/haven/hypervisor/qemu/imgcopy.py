"""Copy between a local image file and a disk QEMU reaches itself (an ``iscsi://`` LUN).

OS scripts (Ganeti's OS API) write to a path: a volume reached only in user space has
none on the node (no kernel iSCSI initiator here).  The OS is therefore installed into
a sparse local file of the disk's size, then copied into the volume with ``qemu-img``,
which opens the URI with the same options and secret object as the VM (never the
password on its command line).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from haven.hypervisor.base import DiskSpec, HypervisorError
from haven.hypervisor.qemu.cmdline import uri_node


def _target(disk: DiskSpec) -> tuple[list[str], str]:
    objects, node = uri_node(disk)
    node["cache"] = {"direct": True}
    spec = {"driver": "raw", "file": node}
    argv = [a for obj in objects for a in ("--object", obj)]
    return argv, "json:" + json.dumps(spec, separators=(",", ":"))


def _run(argv: list[str], what: str, timeout: float, uri: str = "") -> None:
    if shutil.which("qemu-img") is None:
        raise HypervisorError(f"Cannot {what}: qemu-img is missing; install qemu-utils.")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise HypervisorError(f"Cannot {what}: qemu-img took more than {timeout:.0f} s.") \
            from exc
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        line = said[-1] if said else "qemu-img failed"
        # qemu-img names the volume by its whole JSON description: name it by its URI.
        line = re.sub(r"'json:\{.*\}'", repr(uri) if uri else "the volume", line)
        raise HypervisorError(f"Cannot {what}: {line}")


def copy_into(src: Path, disk: DiskSpec, what: str, zeroed: bool = False,
              timeout: float = 3600) -> None:
    """Write the raw image ``src`` into ``disk``; ``zeroed``: the volume is new and
    reads as zeros, so zero ranges are skipped."""
    objects, target = _target(disk)
    skip = ["--target-is-zero"] if zeroed else []
    _run(["qemu-img", "convert", "-n", *skip, "-f", "raw", "-O", "raw", *objects,
          str(src), target], what, timeout, disk.uri)


def copy_out(disk: DiskSpec, dst: Path, what: str, timeout: float = 3600) -> None:
    """Read ``disk`` into the raw image file ``dst`` (created or overwritten)."""
    objects, source = _target(disk)
    _run(["qemu-img", "convert", "-O", "raw", *objects, source, str(dst)], what, timeout,
         disk.uri)

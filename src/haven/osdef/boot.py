"""Which kernel a KVM instance boots, and with which command line (Ganeti's KVM
``kernel_path``, ``initrd_path``, ``root_path``, ``kernel_args``, ``serial_console``).

In the order tried (the first that applies wins)::

    -H kernel_path=FILE   that kernel (a file on the node), -H initrd_path if given;
                          "root=<root_path> <kernel_args> console=ttyS0" as in Ganeti
                          (kernel_args default "ro"; root_path default /dev/vda when
                          disk 0 holds a file system itself, else Ganeti's /dev/vda1)
    the OS's haven.json   its kernel and initrd (busybox: Haven's test guest); its
                          kernel_args unless -H kernel_args, root= only if -H root_path
    disk 0's own kernel   the newest /boot/vmlinuz-* (and its initrd.img-*) of the ext2/3/4
                          file system on a raw disk 0, copied out as a boot loader would:
                          what ganeti-instance-debootstrap with PARTITION_STYLE=none and
                          EXTRA_PKGS=linux-image-cloud-amd64 makes.  root=/dev/vda
    the disk's boot loader no -kernel at all (an image with a partition table and GRUB)

The copy is made at every start, so a kernel upgraded inside the guest is the one booted
after the next restart, on whichever node the instance starts (the disk travels with it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from haven.errors import InvalidInput, OpPrereqError
from haven.osdef.api import BootHints

__all__ = ["BootPlan", "check_boot_files", "disk_kernel", "forget_boot", "plan_boot",
           "root_device"]

DEBUGFS = "debugfs"
#: Ganeti's KVM defaults (``constants.HVC_DEFAULTS[HT_KVM]``).
GANETI_ROOT_PATH = "/dev/vda1"
GANETI_KERNEL_ARGS = "ro"
#: The root of a disk that is one file system (PARTITION_STYLE=none).
WHOLE_DISK_ROOT = "/dev/vda"
_EXT_MAGIC_OFFSET = 1024 + 0x38
_EXT_MAGIC = b"\x53\xef"
_DEBUGFS_TIMEOUT = 60.0
_DEBUGFS_TRIES = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootPlan:
    """What QEMU is given: ``kernel_path`` empty means "boot from the disk".
    ``source``: ``hvparams``, ``os``, ``disk`` or ``bootloader`` (for logs and tests)."""

    kernel_path: str
    initrd_path: str
    kernel_args: str
    source: str


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """``6.1.0-9`` < ``6.1.0-10``: digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", text) if part]


def is_ext_filesystem(path: str) -> bool:
    """Whether ``path`` (a raw disk) starts with an ext2/3/4 superblock, i.e. holds one
    file system and no partition table."""
    try:
        with open(path, "rb") as f:
            f.seek(_EXT_MAGIC_OFFSET)
            return f.read(2) == _EXT_MAGIC
    except OSError:
        return False


def root_device(disk0_path: str | None, disk0_raw: bool = True) -> str:
    """The default ``root=`` for disk 0: ``/dev/vda`` when it is one file system
    (PARTITION_STYLE=none), else Ganeti's ``/dev/vda1`` (the first partition)."""
    if disk0_path and disk0_raw and is_ext_filesystem(disk0_path):
        return WHOLE_DISK_ROOT
    return GANETI_ROOT_PATH


def _debugfs(disk: str, request: str) -> str:
    """One read-only debugfs request against ``disk``: its output.  debugfs exits 0
    even when it cannot open the file system: that is read from stderr, retried (the
    guest of a running instance may be writing its superblock: a migration's target
    reads a disk in use), and then raised as one sentence.

    ``-c`` (catastrophic mode: read-only, allocation bitmaps not read) because the disk
    may be mounted by its running guest, whose in-memory bitmaps are ahead of the ones on
    disk: without it debugfs refuses with "Block bitmap checksum does not match bitmap"
    (seen on a migration's target), and reading files never needs the bitmaps."""
    err = ""
    for attempt in range(_DEBUGFS_TRIES):
        if attempt:
            time.sleep(0.2 * attempt)
        try:
            proc = subprocess.run([DEBUGFS, "-c", "-R", request, disk], capture_output=True,
                                  text=True, timeout=_DEBUGFS_TIMEOUT,
                                  env={"PATH": "/sbin:/usr/sbin:/bin:/usr/bin",
                                       "LC_ALL": "C"})
        except FileNotFoundError as exc:
            raise OpPrereqError(f"Cannot look for a kernel in {disk}: debugfs is missing; "
                                f"install e2fsprogs, or boot with -H kernel_path.") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            err = str(exc)
            continue
        err = " ".join(line for line in proc.stderr.splitlines()
                       if line and not line.startswith("debugfs "))
        if "while trying to open" not in err and "not open" not in err:
            return proc.stdout
    raise OpPrereqError(f"Cannot read the file system of {disk} to find its kernel "
                        f"(debugfs: {err or 'no answer'}); check it with e2fsck -n, or boot "
                        f"with -H kernel_path.")


def disk_kernel(disk0_path: str) -> tuple[tuple[str, int], tuple[str, int] | None] | None:
    """The newest kernel in the file system of disk 0 and its initrd, each as (name under
    ``/boot``, size), or None if it has none (or is no ext file system)."""
    if not is_ext_filesystem(disk0_path):
        return None
    sizes: dict[str, int] = {}
    for line in _debugfs(disk0_path, "ls -p /boot").splitlines():
        # "/inode/mode/uid/gid/name/size/"; regular files have mode 100xxx
        fields = line.strip().split("/")
        if len(fields) >= 7 and fields[2].startswith("100") and fields[6].isdigit():
            sizes[fields[5]] = int(fields[6])
    kernels = sorted((n for n in sizes if n.startswith("vmlinuz-")),
                     key=lambda n: _natural_key(n[len("vmlinuz-"):]))
    if not kernels:
        return None
    best = kernels[-1]
    initrd = "initrd.img-" + best[len("vmlinuz-"):]
    return (best, sizes[best]), ((initrd, sizes[initrd]) if initrd in sizes else None)


def _dump(disk: str, name: str, size: int, dest: Path) -> None:
    """Copy ``/boot/<name>`` (``size`` bytes) out of the disk's file system to ``dest``,
    atomically; a short copy is retried, then refused."""
    for _ in range(_DEBUGFS_TRIES):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        os.close(fd)
        try:
            os.unlink(tmp)  # debugfs does not overwrite
            _debugfs(disk, f"dump /boot/{name} {tmp}")
            if os.path.isfile(tmp) and os.path.getsize(tmp) == size:
                os.replace(tmp, dest)
                return
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise OpPrereqError(f"Could not copy /boot/{name} out of {disk}; check the disk's "
                        f"file system with e2fsck -n, or boot with -H kernel_path.")


def _copy_disk_kernel(name: str, disk0_path: str, boot_dir: Path
                      ) -> tuple[str, str] | None:
    found = disk_kernel(disk0_path)
    if found is None:
        return None
    (vmlinuz, vsize), initrd = found
    boot_dir.mkdir(parents=True, exist_ok=True)
    _dump(disk0_path, vmlinuz, vsize, boot_dir / "vmlinuz")
    if initrd:
        _dump(disk0_path, initrd[0], initrd[1], boot_dir / "initrd.img")
    else:
        (boot_dir / "initrd.img").unlink(missing_ok=True)
    log.info("Instance %s boots the kernel in its disk: /boot/%s%s", name, vmlinuz,
             f" and /boot/{initrd[0]}" if initrd else " (no initrd)")
    return str(boot_dir / "vmlinuz"), str(boot_dir / "initrd.img") if initrd else ""


def _ganeti_args(root: str, args: str, serial: bool) -> str:
    """Ganeti's ``-append``: ``root=R <kernel_args> console=ttyS0`` (no root= if R is '')."""
    parts = [f"root={root}"] if root else []
    parts.append(args)
    if serial and "console=" not in args:
        parts.append("console=ttyS0")
    return " ".join(p for p in parts if p)


def _flag(value: object, default: bool) -> bool:
    if value is None or value == "":
        return default
    return str(value).lower() in ("true", "yes", "1")


def check_boot_files(name: str, hvparams: Mapping[str, object], node: str) -> None:
    """Raise :class:`InvalidInput` (one sentence) unless ``-H kernel_path`` and
    ``-H initrd_path``, when given, are absolute paths of files on this node."""
    for key, what in (("kernel_path", "kernel"), ("initrd_path", "initrd")):
        value = str(hvparams.get(key) or "")
        if not value:
            continue
        if not os.path.isabs(value):
            raise InvalidInput(f"Instance {name}: -H {key}={value} is not an absolute path; "
                               f"give the full path of the {what} file on the nodes.")
        if not os.path.isfile(value):
            hint = ("or leave kernel_path unset to boot the kernel in the instance's disk"
                    if key == "kernel_path" else "or leave initrd_path unset")
            raise InvalidInput(f"Instance {name}: the {what} {value} (-H {key}) does not "
                               f"exist on node {node}; install it there {hint}.")


def plan_boot(name: str, hvparams: Mapping[str, object], os_boot: BootHints | None,
              disk0_path: str | None, boot_dir: Path, *, node: str = "this node",
              disk0_raw: bool = True, inspect: bool = True) -> BootPlan:
    """The kernel, initrd and command line instance ``name`` boots (see the module doc).

    ``boot_dir``: where disk 0's kernel is copied (one directory per instance).
    ``inspect``: False skips every file check and the look into disk 0 (a hypervisor
    that boots nothing).  Raises :class:`InvalidInput` for a kernel or initrd given with
    ``-H`` that is not there, :class:`OpPrereqError` when the OS's kernel is missing.
    """
    hv = hvparams
    serial = _flag(hv.get("serial_console"), True)
    root_path = str(hv.get("root_path") or "")
    user_args = str(hv.get("kernel_args") or "")
    user_initrd = str(hv.get("initrd_path") or "")
    if inspect:
        check_boot_files(name, hv, node)
    kernel = str(hv.get("kernel_path") or "")
    if kernel:
        root = root_path or (root_device(disk0_path, disk0_raw) if inspect
                             else GANETI_ROOT_PATH)
        return BootPlan(kernel, user_initrd,
                        _ganeti_args(root, user_args or GANETI_KERNEL_ARGS, serial),
                        "hvparams")
    if os_boot is not None and os_boot.kernel_path:
        initrd = user_initrd or os_boot.initrd_path
        if inspect:
            for path, what in ((os_boot.kernel_path, "kernel"), (initrd, "initrd")):
                if path and not os.path.isfile(path):
                    raise OpPrereqError(
                        f"Instance {name}: its OS's {what} {path} does not exist on node "
                        f"{node}; build it there with `make setup` (guest/build-guest.sh).")
        args = user_args or os_boot.kernel_args or "console=ttyS0"
        if root_path:
            args = f"root={root_path} {args}"
        return BootPlan(os_boot.kernel_path, initrd, args, "os")
    if inspect and disk0_path and disk0_raw:
        copied = _copy_disk_kernel(name, disk0_path, boot_dir)
        if copied is not None:
            return BootPlan(copied[0], user_initrd or copied[1],
                            _ganeti_args(root_path or WHOLE_DISK_ROOT,
                                         user_args or GANETI_KERNEL_ARGS, serial),
                            "disk")
    return BootPlan("", "", user_args, "bootloader")


def forget_boot(boot_dir: Path) -> None:
    """Remove the kernel copies of an instance that is gone."""
    shutil.rmtree(boot_dir, ignore_errors=True)

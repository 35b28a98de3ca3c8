"""What a node observes about its own machine, published as ``facts/<node>``."""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path

from haven import __version__
from haven.model.node import NodeFacts


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in MiB."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[name] = int(parts[0]) // 1024
    return out


def kvm_usable() -> bool:
    """True if ``/dev/kvm`` opens and answers KVM_GET_API_VERSION (12).

    On this project's development machines the device exists but does not work, so the
    existence of the file proves nothing.
    """
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def cpu_model() -> str:
    """The host CPU's ``model name`` from ``/proc/cpuinfo`` ("" if unknown)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return ""


def collect(name: str, storage_dir: Path, hypervisors: tuple[str, ...],
            accel: str | None = None, hv_version: str = "") -> NodeFacts:
    """``accel``: the accelerator QEMU really uses here (the probe's verdict); without
    it, whether ``/dev/kvm`` answers."""
    mem = meminfo()
    total = mem.get("MemTotal", 0)
    free = mem.get("MemAvailable", mem.get("MemFree", 0))
    storage_dir.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(storage_dir)
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    try:
        os_release = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        os_release = ""
    return NodeFacts(
        name=name, memory_total=total, memory_free=free, memory_dom0=total - free,
        cpu_total=os.cpu_count() or 1, storage_size=disk.total // 2**20,
        storage_free=disk.free // 2**20, hypervisors=hypervisors,
        accel=accel or ("kvm" if kvm_usable() else "tcg"), version=__version__,
        architecture=platform.machine(), os_release=os_release, updated=time.time(),
        boot_id=boot_id, hv_version=hv_version, cpu_model=cpu_model())

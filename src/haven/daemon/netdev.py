"""Tap devices for bridged NICs: created on the node's bridge before QEMU opens them,
removed after the VM stops."""

from __future__ import annotations

import subprocess
from pathlib import Path

from haven.errors import OpPrereqError
from haven.hypervisor.base import HypervisorError


def tap_name(instance_uuid: str, index: int) -> str:
    # Interface names are at most 15 bytes; the uuid keeps them unique per instance.
    return f"hv{instance_uuid.replace('-', '')[:8]}-{index}"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def plug(tap: str, bridge: str, node: str) -> None:
    """Create ``tap`` (if needed) and attach it, up, to ``bridge``."""
    if not Path(f"/sys/class/net/{bridge}/bridge").exists():
        raise OpPrereqError(f"Bridge {bridge!r} does not exist on node {node}; create it "
                            f"(ip link add {bridge} type bridge) or use --net 0:mode=user.")
    if not Path(f"/sys/class/net/{tap}").exists():
        p = _ip("tuntap", "add", "dev", tap, "mode", "tap")
        if p.returncode != 0:
            raise HypervisorError(f"Could not create tap device {tap} on {node}: "
                                  f"{p.stderr.strip()}")
    p = _ip("link", "set", tap, "master", bridge, "up")
    if p.returncode != 0:
        raise HypervisorError(f"Could not attach {tap} to bridge {bridge} on {node}: "
                              f"{p.stderr.strip()}")


def unplug(tap: str) -> None:
    if Path(f"/sys/class/net/{tap}").exists():
        _ip("link", "del", tap)

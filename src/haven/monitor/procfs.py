"""Readers of the kernel's counters for metrics: memory, a process's CPU time and
resident memory, a network device's statistics.  Every reader takes its root
(``/proc``, ``/sys/class/net``) so that tests can hand it a fake tree, and answers None
when the thing is not there (a process that just exited, a tap already removed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SYS_NET = Path("/sys/class/net")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Memory:
    """``/proc/meminfo`` in bytes; ``available`` is ``MemAvailable`` (``MemFree`` on
    kernels without it), what Ganeti's ``mfree`` and ``gnt-node list`` show."""

    total: int
    available: int


@dataclass(frozen=True)
class ProcStat:
    """A process's user + system CPU time and resident set size."""

    cpu_seconds: float
    rss_bytes: int


@dataclass(frozen=True)
class NetCounters:
    """A network device's statistics, as the host sees the device."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_dropped: int
    tx_dropped: int
    rx_errors: int
    tx_errors: int


def memory(proc: Path = PROC) -> Memory:
    values: dict[str, int] = {}
    for line in (proc / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) * 1024  # the kernel writes kB (KiB)
    total = values.get("MemTotal", 0)
    return Memory(total, values.get("MemAvailable", values.get("MemFree", 0)))


def process(pid: int, proc: Path = PROC) -> ProcStat | None:
    """From ``/proc/<pid>/stat``: utime + stime (fields 14, 15) and rss (field 24)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = text[text.rfind(")") + 2:].split()
    if len(fields) < 22:
        return None
    return ProcStat((int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE)


def net_device(dev: str, sys_net: Path = SYS_NET) -> NetCounters | None:
    base = sys_net / dev / "statistics"

    def read(name: str) -> int:
        return int((base / name).read_text().strip() or 0)

    try:
        return NetCounters(read("rx_bytes"), read("tx_bytes"), read("rx_packets"),
                           read("tx_packets"), read("rx_dropped"), read("tx_dropped"),
                           read("rx_errors"), read("tx_errors"))
    except (OSError, ValueError):
        return None

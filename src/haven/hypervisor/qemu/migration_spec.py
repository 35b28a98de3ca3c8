"""What a migration is made of, without I/O: the parameters and capabilities given to
QEMU, the URI, and what QEMU's ``query-migrate`` replies say (progress, final numbers,
the cause of a failure).  :mod:`.migration` and :mod:`.migration_destination` act on
them."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from haven.hypervisor.base import HypervisorError
from haven.model.migration_progress import MigrationProgress

DEFAULT_DOWNTIME_MS = 30  # Ganeti's default migration_downtime; QEMU's own is 300 ms
DEFAULT_BANDWIDTH_MIB = 10000  # "unlimited": QEMU's default 128 MiB/s doubled total time
MIB = 1 << 20
# Statuses (QAPI MigrationStatus) in which a migration has ended without completing.
_ENDED_BADLY = frozenset({"failed", "cancelled"})


@dataclass(frozen=True)
class MigrationStats:
    """A completed migration, from the source's ``query-migrate`` (QEMU's own clocks).

    ``downtime_ms``: the source's vCPUs stopped until the last byte was sent (with a
    ``before_switchover`` callback it includes the callback's window);
    ``transferred``: RAM bytes sent; ``pre_switchover_ms``: host-measured time from the
    ``pre-switchover`` event to ``migrate-continue`` (0 without a callback).
    """

    total_ms: float
    downtime_ms: float
    setup_ms: float
    transferred: int
    pre_switchover_ms: float = 0.0


def migration_params(hvparams: Mapping[str, Any]) -> tuple[int, int]:
    """``(downtime_ms, bandwidth_bytes)`` from Ganeti's hypervisor parameters
    ``migration_downtime`` (ms, default 30) and ``migration_bandwidth`` (MiB/s, default
    10000: effectively unlimited).  Missing, None or empty means the default; anything
    else must be a positive integer."""

    def value(key: str, default: int) -> int:
        raw = hvparams.get(key)
        if raw is None or raw == "":
            return default
        with contextlib.suppress(TypeError, ValueError):
            if (number := int(raw)) > 0 and not (isinstance(raw, float) and raw != number):
                return number
        raise HypervisorError(f"Hypervisor parameter {key}={raw!r} is not valid; give a "
                              "positive integer.")

    return (value("migration_downtime", DEFAULT_DOWNTIME_MS),
            value("migration_bandwidth", DEFAULT_BANDWIDTH_MIB) * MIB)


def capabilities(pause_before_switchover: bool) -> list[dict[str, Any]]:
    """The source's ``migrate-set-capabilities`` list.  Every capability is set
    explicitly, so that a previous migration's settings never leak into this one."""
    return [{"capability": "events", "state": True},
            {"capability": "pause-before-switchover", "state": pause_before_switchover},
            {"capability": "return-path", "state": False}]


def tcp_uri(address: str, port: int) -> str:
    """``tcp:<address>:<port>`` (an IPv6 address in brackets)."""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"tcp:{host}:{port}"


def progress_of(info: Mapping[str, Any], previous: MigrationProgress | None = None,
                elapsed: float = 0.0) -> MigrationProgress:
    """A :class:`MigrationProgress` from a ``query-migrate`` reply; ``previous``, the
    sample taken ``elapsed`` seconds before, gives the rate at which guest memory goes
    through (zero pages included, which the wire rate hides: a mostly empty guest
    moves far faster than its bytes on the wire suggest)."""
    ram = info.get("ram", {})
    page = int(ram.get("page-size") or 4096)
    copied = int(ram.get("normal", 0)) * page + int(ram.get("duplicate", 0)) * page
    rate = 0.0
    if previous is not None and elapsed > 0 and copied >= previous.copied:
        rate = (copied - previous.copied) / elapsed
    return MigrationProgress(status=str(info.get("status", "")),
                             total=int(ram.get("total", 0)),
                             remaining=int(ram.get("remaining", 0)),
                             transferred=int(ram.get("transferred", 0)), copied=copied,
                             rate=rate, wire_rate=float(ram.get("mbps", 0.0)) * 1e6 / 8,
                             passes=max(1, int(ram.get("dirty-sync-count", 1))),
                             expected_downtime_ms=float(info.get("expected-downtime", 0)))


def stats_of(info: Mapping[str, Any], pre_switchover_ms: float = 0.0) -> MigrationStats:
    """:class:`MigrationStats` from a ``query-migrate`` reply."""
    return MigrationStats(total_ms=float(info.get("total-time", 0)),
                          downtime_ms=float(info.get("downtime", 0)),
                          setup_ms=float(info.get("setup-time", 0)),
                          transferred=int(info.get("ram", {}).get("transferred", 0)),
                          pre_switchover_ms=pre_switchover_ms)


def _cause(info: Mapping[str, Any]) -> str:
    """Why a ``query-migrate`` reply says failed or cancelled."""
    desc = info.get("error-desc")
    return f"QEMU reports it {info.get('status', 'failed')}" + (f": {desc}" if desc else "")

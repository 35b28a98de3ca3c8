"""The memory copy of a live migration, as the source reports it and the job log says it.

The source node's daemon publishes a :class:`MigrationProgress` under
``Keys.migration_progress(<instance>)`` while QEMU copies (attached to its alive lease,
deleted when the migration ends); the master's migrate job reads it and feeds
:func:`progress_line` into the job log, like Ganeti's ``* memory transfer progress``
but with the rate and the time left.

A precopy migration sends the whole memory once (pass 1: ``remaining`` falls from
``total`` to near zero), then resends what the guest dirtied meanwhile, pass after
pass, until what is left fits the downtime limit.  Only pass 1 has a meaningful
percentage and time left; later passes say how much is dirty again, never an estimate
that depends on how fast the guest writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MIB = 1 << 20
# QEMU's migration statuses once the memory copy is over (the source is paused).
COPY_DONE = frozenset({"pre-switchover", "device", "completed"})


@dataclass(frozen=True)
class MigrationProgress:
    """One sample of QEMU's ``query-migrate`` on the source.

    ``total``: guest RAM (bytes); ``remaining``: bytes still to send in this pass;
    ``transferred``: bytes sent on the wire so far (zero pages cost almost nothing);
    ``copied``: guest memory processed so far, all passes (zero pages included);
    ``rate``: guest memory processed per second since the previous sample (0 if
    unknown); ``wire_rate``: bytes per second on the wire (QEMU's ``mbps``);
    ``passes``: QEMU's ``dirty-sync-count`` (1 during the first full copy);
    ``uri``: the migration it belongs to (set by the publisher, so that a reader can
    tell a leftover of an earlier attempt from this one).
    """

    status: str
    total: int
    remaining: int
    transferred: int
    copied: int = 0
    rate: float = 0.0
    wire_rate: float = 0.0
    passes: int = 1
    expected_downtime_ms: float = 0.0
    uri: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MigrationProgress:
        return cls(status=str(d.get("status", "")), total=int(d.get("total", 0)),
                   remaining=int(d.get("remaining", 0)),
                   transferred=int(d.get("transferred", 0)), copied=int(d.get("copied", 0)),
                   rate=float(d.get("rate", 0.0)), wire_rate=float(d.get("wire_rate", 0.0)),
                   passes=int(d.get("passes", 1)),
                   expected_downtime_ms=float(d.get("expected_downtime_ms", 0.0)),
                   uri=str(d.get("uri", "")))

    @property
    def first_pass(self) -> bool:
        return self.passes <= 1

    @property
    def percent(self) -> float | None:
        """Share of the first full copy done; None once the dirty passes begin (the
        share of *those* would go back and forth) or while the size is unknown."""
        if not self.first_pass or self.total <= 0:
            return None
        return max(0.0, min(100.0, 100.0 * (self.total - self.remaining) / self.total))


def mib(n: float) -> str:
    """Bytes as MiB: whole above 10 MiB, one decimal below."""
    v = n / MIB
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def eta(left: float, rate: float) -> str:
    """``about N s left`` (or min), or "" when the rate says nothing."""
    if rate <= 0 or left < 0:
        return ""
    s = left / rate
    if s < 1:
        return "less than 1 s left"
    if s < 120:
        return f"about {s:.0f} s left"
    return f"about {s / 60:.0f} min left"


def progress_line(p: MigrationProgress) -> str | None:
    """The job-log line for a sample, or None when it has nothing to say yet (setup,
    size unknown)."""
    if p.status in COPY_DONE:
        return None  # see finished_line
    if p.total <= 0:
        return None
    rate = f" at {mib(p.rate)} MiB/s" if p.rate > 0 else ""
    if p.first_pass:
        done = p.total - p.remaining
        left = eta(p.remaining, p.rate)
        return (f"* memory: {p.percent:.0f}% ({mib(done)} of {mib(p.total)} MiB)"
                f"{rate}{', ' + left if left else ''}")
    downtime = (f", expected downtime {p.expected_downtime_ms:.0f} ms"
                if p.expected_downtime_ms > 0 else "")
    return (f"* memory: pass {p.passes}, resending {mib(p.remaining)} MiB the guest "
            f"dirtied meanwhile{rate}{downtime}")


def finished_line(last: MigrationProgress | None, sent: int, total_ms: float) -> str:
    """The line that ends the copy, before the switchover: from the last sample seen
    (may be None: a copy faster than one sample) and the source's final numbers."""
    parts = []
    if last is not None and last.total > 0:
        # No pass count: more passes may have run after the last sample seen.
        parts.append(f"{mib(last.total)} MiB")
    if sent:
        parts.append(f"{mib(sent)} MiB sent")
    if total_ms:
        parts.append(f"{total_ms / 1000:.1f} s")
    return "* memory: copy finished" + (f" ({', '.join(parts)})" if parts else "")

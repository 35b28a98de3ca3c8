"""Counters and histograms of finished things (jobs, HA recoveries) that the store keeps
only for a while: each one is counted once per daemon process, when a scrape first
sees it finished.

The store keeps jobs for 6 hours and one HA record per instance, so a daemon that
becomes master counts, at its first scrape, what the store still holds; from then on
each newly finished one.  Prometheus sees a new master's counters as a reset
(``rate()`` and ``increase()`` handle it).  What a daemon has counted is forgotten once
the store no longer holds it (it cannot come back), which bounds the memory used.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from haven.model.ha import InstanceHA
from haven.model.job import Job

JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
               1800.0, math.inf)
RECOVERY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0,
                    math.inf)


class Histogram:
    """A Prometheus histogram with labels, fed by :meth:`observe_once`."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self._seen: set[Hashable] = set()
        # labels -> (count per bucket, not cumulative; sum)
        self._data: dict[tuple[str, ...], tuple[list[int], float]] = {}

    def observe_once(self, key: Hashable, labels: tuple[str, ...], value: float) -> bool:
        """Count ``value`` unless ``key`` was counted before; True if it was counted."""
        if key in self._seen:
            return False
        self._seen.add(key)
        counts, total = self._data.get(labels, ([0] * len(self.buckets), 0.0))
        index = next(i for i, b in enumerate(self.buckets) if value <= b)
        counts[index] += 1
        self._data[labels] = (counts, total + value)
        return True

    def keep_only(self, keys: Iterable[Hashable]) -> None:
        """Forget the keys not in ``keys`` (their objects left the store)."""
        self._seen &= set(keys)

    def family(self, name: str, doc: str, labelnames: Sequence[str]
               ) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=list(labelnames))
        for labels in sorted(self._data):
            counts, total = self._data[labels]
            cumulative, running = [], 0
            for bound, n in zip(self.buckets, counts, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))
            fam.add_metric(list(labels), cumulative, total)
        return fam


def job_duration(job: Job) -> float:
    """Seconds from the job's start (its receipt, if it was canceled before it started)
    to its end."""
    begin = job.start_ts if job.start_ts is not None else job.received_ts
    return max((job.end_ts or begin) - begin, 0.0)


class JobHistory:
    """``haven_job_duration_seconds{op, status}``: finished jobs by their first opcode."""

    def __init__(self) -> None:
        self.hist = Histogram(JOB_BUCKETS)

    def update(self, jobs: Iterable[Job]) -> None:
        present = []
        for job in jobs:
            present.append(job.id)
            if job.status.finalized:
                op = str(job.ops[0].get("OP_ID", "OP_UNKNOWN")) if job.ops else "none"
                self.hist.observe_once(job.id, (op, str(job.status)), job_duration(job))
        self.hist.keep_only(present)

    def families(self) -> list[HistogramMetricFamily]:
        return [self.hist.family(
            "haven_job_duration_seconds",
            "Duration of finished jobs, from start (or receipt, if canceled before it "
            "started) to end, by first opcode and final status", ("op", "status"))]


class RecoveryHistory:
    """HA recoveries: ``haven_ha_recoveries_total{outcome}`` and
    ``haven_ha_recovery_duration_seconds`` (from the loss of the node to the instance
    running elsewhere).

    One incident of an instance is ``(name, lost_at)``.  Its record is rewritten as it
    goes (recovering, failed and retried, then recovered or refused), so a scrape may
    miss a state: failed attempts are counted from ``attempts`` (each retry adds one),
    the final outcome when it is seen."""

    OUTCOMES = ("recovered", "failed", "refused")

    def __init__(self) -> None:
        self.hist = Histogram(RECOVERY_BUCKETS)
        self.counts = dict.fromkeys(self.OUTCOMES, 0)
        self._final: set[tuple[str, float]] = set()
        self._failed: dict[tuple[str, float], int] = {}

    def update(self, records: Iterable[InstanceHA]) -> None:
        present = []
        for rec in records:
            incident = (rec.name, rec.lost_at)
            present.append(incident)
            failed = rec.attempts if rec.state == "failed" else max(rec.attempts - 1, 0)
            if rec.state == "refused":
                failed = 0
            seen = self._failed.get(incident, 0)
            if failed > seen:
                self.counts["failed"] += failed - seen
                self._failed[incident] = failed
            if rec.state in ("recovered", "refused") and incident not in self._final:
                self._final.add(incident)
                self.counts[rec.state] += 1
                if rec.state == "recovered" and rec.lost_at and rec.finished:
                    self.hist.observe_once(incident, (),
                                           max(rec.finished - rec.lost_at, 0.0))
        keep = set(present)
        self._final &= keep
        self._failed = {k: v for k, v in self._failed.items() if k in keep}
        self.hist.keep_only(keep)

    def families(self) -> list[CounterMetricFamily | HistogramMetricFamily]:
        total = CounterMetricFamily(
            "haven_ha_recoveries", "Automatic recoveries of instances of lost nodes, by "
            "outcome (failed: an attempt that failed, retried or not)", labels=["outcome"])
        for outcome in self.OUTCOMES:
            total.add_metric([outcome], self.counts[outcome])
        return [total, self.hist.family(
            "haven_ha_recovery_duration_seconds",
            "Seconds from the loss of an instance's node to the instance running on "
            "another node", ())]

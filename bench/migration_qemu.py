"""Live migration mechanics alone (no cluster): two run dirs on 127.0.0.1, QEMU under TCG.

For 256 and 512 MiB guests, idle and dirtying memory (``hog=`` MiB filled with random
data, re-dirtied at ``hograte=`` MB/s), with shared storage (both VMs open one raw
file) and onto the replica holder (``drbd``: write-blocking mirror into a
qemu-storage-daemon export, ended in the pre-switchover window), the guest migrates
back and forth between "node" a and b ``--runs`` times.  For ``drbd`` every return trip
first re-protects incrementally from the bitmap the destination recorded (``accept``
with ``bitmaps``).  Printed and written to ``bench/results/migration_qemu.json``: QEMU's
total time and downtime, the largest gap between the guest's 10 ms ticker lines as seen
on the host (the guest-visible pause), the pre-switchover window and the re-protection.

Usage: python bench/migration_qemu.py [--runs 3] [--only shared|drbd]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import summary, write_json
from haven.hypervisor.base import DiskSpec, VmSpec
from haven.hypervisor.qemu import QemuHypervisor, replication
from haven.hypervisor.qemu.exports import ExportDisk, ExportManager
from haven.hypervisor.qemu.migration import (
    drbd_switchover,
    finish_source,
    migrate,
)
from haven.hypervisor.qemu.migration_destination import accept, wait_destination

GUEST = Path(os.environ.get("HAVEN_GUEST_DIR", "/var/cache/haven/guest"))
NAME = "benchvm"
LO = "127.0.0.1"
DISK_MIB = 64
LOADS = {256: "hog=180 hograte=20", 512: "hog=400 hograte=20"}


class Lines:
    """A serial port's socket read in a thread: (host arrival time, line) until EOF."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while chunk := self._recv():
            now = time.monotonic()
            *done, buf = (buf + chunk).split(b"\n")
            self.lines += [(now, ln.decode(errors="replace").strip()) for ln in done]

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def wait(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, t) for _, t in list(self.lines)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {pattern!r} within {timeout} s: {self.lines[-3:]}")
            time.sleep(0.05)


def ticker_gap(t0: float, t1: float, *tickers: Lines) -> tuple[float, int]:
    """Largest host-time gap (ms) between consecutive ticker lines arriving in [t0, t1],
    and how many sequence numbers in that range never arrived."""
    first: dict[int, float] = {}
    for ticker in tickers:
        for when, text in list(ticker.lines):
            if t0 <= when <= t1 and (m := re.match(r"^T (\d+) ", text)):
                first.setdefault(int(m.group(1)), when)
    seqs = sorted(first)
    if len(seqs) < 2:
        return float("nan"), 0
    gap = max(first[b] - first[a] for a, b in itertools.pairwise(seqs))
    return gap * 1000, (seqs[-1] - seqs[0] + 1) - len(seqs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Node:
    hv: QemuHypervisor
    exports: ExportManager
    image: Path  # this node's copy of the disk (drbd); the shared file otherwise


class Case:
    """One guest migrating back and forth between two nodes."""

    def __init__(self, tmp: Path, memory: int, load: bool, storage: str) -> None:
        self.storage = storage
        shared = tmp / "shared.raw"
        self.nodes = []
        for n in ("a", "b"):
            image = shared if storage == "shared" else tmp / f"{n}.raw"
            image.touch()
            os.truncate(image, DISK_MIB << 20)
            self.nodes.append(Node(QemuHypervisor(tmp / n), ExportManager(tmp / n / "ex"),
                                   image))
        args = "console=ttyS0 quiet haven.nomount tick=10"
        self.spec = VmSpec(name=NAME, uuid=str(uuid.uuid4()), memory=memory, accel="tcg",
                           kernel_path=str(GUEST / "vmlinuz"),
                           initrd_path=str(GUEST / "initrd.gz"),
                           kernel_args=f"{args} {LOADS[memory]}" if load else args)
        self.load = load
        self.tickers: list[Lines] = []

    def spec_on(self, node: Node, incoming: bool = False) -> VmSpec:
        return dataclasses.replace(self.spec, disks=(DiskSpec(0, str(node.image)),),
                                   incoming=incoming)

    def boot(self) -> None:
        a = self.nodes[0]
        a.hv.start(self.spec_on(a))
        console = Lines(a.hv.console_path(NAME))
        console.wait("GUEST-READY", 120)
        if self.load:
            console.wait("MEMHOG READY", 300)
        self.tickers.append(Lines(a.hv.path(NAME, ".ticker")))
        time.sleep(1.0)

    def protect(self, src: Node, dst: Node, first: bool) -> dict[str, Any]:
        """Mirror src's disk into dst's image: a full sync the first time, afterwards a
        resync from the bitmap accept() put on this VM when it arrived."""
        port = free_port()
        dst.exports.ensure(NAME, [ExportDisk("d0", str(dst.image))], LO, port)
        target = replication.NbdTarget(LO, port, "d0")
        qmp = src.hv.qmp_path(NAME)
        t = time.perf_counter()
        if first:
            replication.protect(qmp, 0, target)
            replication.wait_ready(qmp, 0, 300)
            replication.checkpoint(qmp, 0)
            return {"mode": "initial", "seconds": time.perf_counter() - t}
        res = replication.resync(qmp, 0, target, trust_bitmap=True)
        return {"mode": res.mode, "bytes_copied": res.bytes_copied, "seconds": res.seconds,
                "pause_ms": res.pause_ms}

    def migrate_once(self, src: Node, dst: Node, first: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.storage == "drbd":
            out["protect"] = self.protect(src, dst, first)
        dst.hv.start(self.spec_on(dst, incoming=True))
        uri = accept(dst.hv.qmp_path(NAME), LO, free_port(),
                     bitmaps=(0,) if self.storage == "drbd" else ())
        self.tickers.append(Lines(dst.hv.path(NAME, ".ticker")))
        switch = None
        if self.storage == "drbd":
            switch = drbd_switchover(src.hv.qmp_path(NAME), [0],
                                     lambda: dst.exports.stop(NAME))
        t0 = time.monotonic()
        stats = migrate(src.hv.qmp_path(NAME), uri, before_switchover=switch)
        wait_destination(dst.hv, NAME)
        t1 = time.monotonic()
        finish_source(src.hv.qmp_path(NAME))
        src.hv.stop(NAME, timeout=10)
        time.sleep(1.0)  # ticks after the switchover
        gap, lost = ticker_gap(t0 - 0.2, t1 + 0.5, *self.tickers[-2:])
        out.update(dataclasses.asdict(stats), gap_ms=gap, lost_ticks=lost,
                   wall_ms=(t1 - t0) * 1000)
        if switch is not None:
            out.update(mirror_end_ms=switch.unprotect_ms, stop_export_ms=switch.stop_export_ms)
        return out

    def close(self) -> None:
        for node in self.nodes:
            for name in list(node.hv.list()):
                node.hv.kill(name)
            for key in list(node.exports.list()):
                node.exports.stop(key)


def run_case(memory: int, load: bool, storage: str, runs: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="haven-bench-mig-") as tmp:
        case = Case(Path(tmp), memory, load, storage)
        try:
            case.boot()
            results = []
            for i in range(runs):
                src, dst = (case.nodes[0], case.nodes[1]) if i % 2 == 0 else \
                    (case.nodes[1], case.nodes[0])
                results.append(case.migrate_once(src, dst, first=i == 0))
                time.sleep(0.5)
            return results
        finally:
            case.close()


def line(label: str, r: dict[str, Any]) -> str:
    text = (f"{label:<28} total {r['total_ms']:6.0f} ms  downtime {r['downtime_ms']:4.0f} ms"
            f"  gap {r['gap_ms']:5.0f} ms  lost {r['lost_ticks']}  "
            f"{r['transferred'] / 2**20:6.1f} MiB")
    if "mirror_end_ms" in r:
        text += (f"  window {r['pre_switchover_ms']:5.1f} ms (mirror end "
                 f"{r['mirror_end_ms']:.1f}, export stop {r['stop_export_ms']:.1f})")
    if (p := r.get("protect")) and p["mode"] != "initial":
        text += (f"  re-protect {p['mode']} {p['bytes_copied'] / 1024:.0f} KiB "
                 f"pause {p['pause_ms']:.0f} ms")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("shared", "drbd"))
    args = ap.parse_args()
    data: dict[str, Any] = {"runs": args.runs, "accel": "tcg", "cases": {}}
    for storage in ("shared", "drbd"):
        if args.only and storage != args.only:
            continue
        for memory in (256, 512):
            for load in (False, True):
                label = f"{storage} {memory} MiB {'dirtying' if load else 'idle'}"
                results = run_case(memory, load, storage, args.runs)
                for r in results:
                    print(line(label, r), flush=True)
                data["cases"][label] = {
                    "memory_mib": memory, "storage": storage,
                    "load": LOADS[memory] if load else "idle", "runs": results,
                    **{k: summary([r[k] for r in results])
                       for k in ("total_ms", "downtime_ms", "gap_ms")}}
    print(f"-> {write_json('migration_qemu', data)}")


if __name__ == "__main__":
    main()

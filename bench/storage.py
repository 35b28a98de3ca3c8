"""Guest write throughput per disk template, side by side in one run, as ratios to local.

One busybox VM under TCG per kind; ``/dev/vda`` is a 1 MiB placeholder and the second
disk ``/dev/vdb`` (256 MiB raw) is what is measured, exactly as Haven opens it:

* ``local``: a raw file in a local directory (``driver=file,cache.direct=on,aio=threads``,
  as ``cmdline.disk_args`` builds it),
* ``sharedfile``: the same in the directory all nodes would share (here: another
  directory of the same file system, so it can only differ by noise),
* ``drbd``: Haven's replication, a write-blocking mirror into a qemu-storage-daemon NBD
  export on 127.0.0.1 (as ``bench/replication.py``'s ``plain`` kind),
* ``iscsi``: a LUN of a real tgtd exactly as Haven's ``iscsi`` provider makes it
  (``haven.storage.tgt`` defaults: backing store rdwr through the page cache, which
  fdatasyncs on every flush/FUA, and the target keys ``TARGET_KEYS``: 256 KiB PDUs and
  bursts), CHAP and an initiator ACL, opened by QEMU's libiscsi from an ``iscsi://`` URI
  with the password in a secret file,
* ``iscsi-direct``: the same with ``bsoflags direct`` (O_DIRECT on the storage server).
  tgt's ``aio`` is not measured: it acknowledges flushes without fdatasync (see tgt.py).

Per kind: ``dd bs=1M count=128 oflag=direct`` MiB/s and 4 KiB O_DIRECT|O_DSYNC write
IOPS (guest tool ``diskw``), in rounds that alternate the kinds (the first kind rotates
per round); the VMs not being measured are paused so that their idle CPU does not count.
Goal (issue 13): iSCSI >= 0.8 of local for both.  The machine's other load is not
controlled: on 2 cores, ``local`` vs ``sharedfile`` (the same thing) shows the noise.
Usage: python bench/storage.py [--rounds 3] [--fsync]   (~35 s a round after ~40 s set-up)
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_json
from haven.hypervisor.base import DiskSpec, VmSpec
from haven.hypervisor.qemu import QemuHypervisor
from haven.hypervisor.qemu import replication as repl
from haven.hypervisor.qemu.exports import ExportDisk, ExportManager
from haven.hypervisor.qemu.qmp import qmp_call
from haven.storage.tgt import (
    DEFAULT_BSOFLAGS,
    DEFAULT_BSTYPE,
    TARGET_KEYS,
    free_control,
)
from haven.storage.tgt_server import ServerInfo, start_server, stop_server
from replication import GUEST, Console

DISK_MIB = 256
DD_MIB = 128
DISKW_COUNT = 1500
KINDS = ("local", "sharedfile", "drbd", "iscsi", "iscsi-direct")
# tgt backing store (bstype, bsoflags) and target keys per iSCSI kind; tid = position + 1.
ISCSI: dict[str, tuple[str, str, dict[str, str]]] = {
    "iscsi": (DEFAULT_BSTYPE, DEFAULT_BSOFLAGS, TARGET_KEYS),
    "iscsi-direct": ("rdwr", "direct", TARGET_KEYS),
}
CHAP_USER = "bench"
INITIATOR = "iqn.2026-12.org.haven:bench.node01"
TARGET_PREFIX = "iqn.2026-12.org.haven:bench"
GOAL = 0.8


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




def sparse(path: Path, mib: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    return str(path)


class Bench:
    """The VMs, the NBD export and the tgtd of one run; :meth:`close` ends them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hv = QemuHypervisor(tmp / "run")
        self.exports = ExportManager(tmp / "exports")
        self.tgt: ServerInfo | None = None
        self.secret_file = tmp / "chap.secret"
        self.consoles: dict[str, Console] = {}
        self.notes: list[str] = []

    def name(self, kind: str) -> str:
        return f"st-{kind}"

    def qmp(self, kind: str) -> Path:
        return self.hv.qmp_path(self.name(kind))

    def start_tgt(self) -> None:
        secret = secrets.token_hex(16)
        # The password is only ever in this 0600 file (QEMU reads it as a secret object).
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        self.tgt = start_server(self.tmp / "tgt", "127.0.0.1", free_port(), free_control(),
                                CHAP_USER, secret)
        adm = self.tgt.tgtadm
        for tid, (kind, (bstype, bsoflags, keys)) in enumerate(ISCSI.items(), start=1):
            adm.new_target(tid, f"{TARGET_PREFIX}.{kind}", keys)
            # tgtadm cannot show a session's negotiated keys; at least check the offer.
            shown = adm.run("--op", "show", "--mode", "target", "--tid", str(tid),
                            what=f"show the keys of target {tid}").split()
            missing = [k for k, v in keys.items() if f"{k}={v}" not in shown]
            if missing:
                raise RuntimeError(f"tgtd did not take {missing} on target {tid}")
            adm.new_lun(tid, 1, sparse(self.tmp / "pool" / f"{kind}.raw", DISK_MIB),
                        bstype, bsoflags)
            adm.bind_account(tid, CHAP_USER)
            adm.bind_initiator(tid, INITIATOR)
        self.notes.append(f"tgtd {self.tgt.portal}: iscsi = bstype {DEFAULT_BSTYPE} "
                          f"bsoflags {DEFAULT_BSOFLAGS or '-'}, iscsi-direct = bsoflags "
                          f"direct; both with the target keys {TARGET_KEYS}")

    def disk(self, kind: str) -> DiskSpec:
        """The measured disk (index 1) of ``kind``, as Haven's templates open it."""
        if kind in ISCSI:
            assert self.tgt is not None
            uri = f"iscsi://{CHAP_USER}@{self.tgt.portal}/{TARGET_PREFIX}.{kind}/1"
            return DiskSpec(1, "", uri=uri, secret_file=str(self.secret_file),
                            initiator=INITIATOR)
        folder = "shared" if kind == "sharedfile" else "local"
        return DiskSpec(1, sparse(self.tmp / folder / f"{kind}.raw", DISK_MIB))

    def boot(self, kind: str) -> None:
        name = self.name(kind)
        spec = VmSpec(name=name, uuid=str(uuid.uuid4()), memory=256, accel="tcg",
                      disks=(DiskSpec(0, sparse(self.tmp / "local" / f"{kind}-vda.raw", 1)),
                             self.disk(kind)),
                      kernel_path=str(GUEST / "vmlinuz"), initrd_path=str(GUEST / "initrd.gz"),
                      kernel_args="console=ttyS0 quiet haven.nomount")
        self.hv.start(spec)
        console = Console(self.hv.console_path(name))
        console.read_until(b"GUEST-READY", 120)
        console.read_until(b"\n", 5)
        self.consoles[kind] = console

    def protect_drbd(self) -> float:
        """Mirror the drbd VM's vdb into a fresh export; seconds to ready (full sync)."""
        port = free_port()
        replica = sparse(self.tmp / "peer" / "drbd-replica.raw", DISK_MIB)
        self.exports.ensure("bench-drbd", [ExportDisk("d0", replica)], "127.0.0.1", port)
        t = time.perf_counter()
        repl.protect(self.qmp("drbd"), 1, repl.NbdTarget("127.0.0.1", port, "d0", None))
        repl.wait_ready(self.qmp("drbd"), 1, 600)
        seconds = time.perf_counter() - t
        repl.checkpoint(self.qmp("drbd"), 1)
        return seconds

    def pause(self, kind: str, paused: bool) -> None:
        qmp_call(self.qmp(kind), "stop" if paused else "cont")

    def close(self) -> None:
        # VMs first (they hold iSCSI sessions and the NBD connection), then the servers.
        for kind in KINDS:
            try:
                self.hv.kill(self.name(kind))
            except Exception as exc:  # go on: every other process must still end
                print(f"warning: could not kill {self.name(kind)}: {exc}", file=sys.stderr)
        if self.tgt is not None:
            stop_server(self.tgt)
        for key in list(self.exports.list()):
            self.exports.stop(key)


def dd_mib_s(console: Console, dev: str = "/dev/vdb", fsync: bool = False) -> float:
    """``fsync``: dd's time includes the final flush that makes the data durable (else a
    backing store that lands writes in a page cache, tgt's plain rdwr, defers that)."""
    sync = " conv=fsync" if fsync else ""
    out, seconds = console.run(f"dd if=/dev/zero of={dev} bs=1M count={DD_MIB} "
                               f"oflag=direct{sync} 2>&1")
    if f"{DD_MIB}+0 records out" not in out:
        raise RuntimeError(f"dd on {dev} failed: {out!r}")
    return DD_MIB / seconds


def diskw_iops(console: Console, dev: str = "/dev/vdb", count: int = DISKW_COUNT) -> float:
    # Blocks 0..16383 = the first 64 MiB, which the warm-up dd already allocated.
    out, seconds = console.run(f"diskw {dev} 0 16384 {count} | tail -1", timeout=600)
    if "DISKW DONE" not in out:
        raise RuntimeError(f"diskw on {dev} failed: {out!r}")
    return count / seconds


def measure(b: Bench, rounds: int, fsync: bool) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {
        k: {"dd_mib_s": [], "iops": []} for k in KINDS}
    for r in range(rounds):
        order = KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]
        for kind in order:
            b.pause(kind, False)
            console = b.consoles[kind]
            samples[kind]["dd_mib_s"].append(dd_mib_s(console, fsync=fsync))
            samples[kind]["iops"].append(diskw_iops(console))
            if kind == "drbd" and repl.status(b.qmp("drbd"))[1].phase != "ready":
                raise RuntimeError("the drbd mirror is no longer ready: figures void")
            b.pause(kind, True)
            print(f"round {r + 1} {kind:>16}: {samples[kind]['dd_mib_s'][-1]:7.1f} MiB/s "
                  f"{samples[kind]['iops'][-1]:6.0f} IOPS", flush=True)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fsync", action="store_true",
                    help="dd conv=fsync: 1 MiB figures include the final flush")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="haven-storagebench-") as tmp:
        b = Bench(Path(tmp))
        try:
            b.start_tgt()
            for kind in KINDS:
                b.boot(kind)
            sync_seconds = b.protect_drbd()
            # Warm-up: allocate the measured 128 MiB in every backing file (replica
            # included), so that no kind pays first-write block allocation in a sample.
            for kind in KINDS:
                dd_mib_s(b.consoles[kind])
                b.pause(kind, True)
            samples = measure(b, args.rounds, args.fsync)
        finally:
            b.close()
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in samples.items()}
    ratio = {k: {m: med[k][m] / med["local"][m] for m in ("dd_mib_s", "iops")} for k in KINDS}
    notes = [
        "local and sharedfile are two directories of the same file system here: they "
        "differ only by noise (on a cluster sharedfile is a network file system).",
        "drbd's replica is on the same machine and disk, over NBD on 127.0.0.1.",
        "iSCSI runs over 127.0.0.1: no network latency is included.",
        *b.notes,
        *([] if args.fsync else [
            "without --fsync, tgt's plain rdwr leaves the 1 MiB writes in tgtd's page cache "
            "(no flush is asked for), so it can beat local O_DIRECT; --fsync counts the "
            "flush that makes them durable."]),
        f"load average (1/5/15 min) before {load_before}, after {os.getloadavg()}; the "
        "machine's load was not controlled.",
    ]
    data = {"disk_mib": DISK_MIB, "dd_mib": DD_MIB, "dd_fsync": args.fsync,
            "diskw_count": DISKW_COUNT,
            "rounds": args.rounds, "kinds": list(KINDS), "samples": samples, "median": med,
            "ratio_to_local": ratio, "drbd_initial_sync_seconds": sync_seconds,
            "goal": {"iscsi_vs_local": GOAL}, "notes": notes}
    path = write_json("storage-fsync" if args.fsync else "storage", data)
    print(f"\n{'kind':>16}  {'1 MiB MiB/s':>11}  {'ratio':>5}  {'4 KiB IOPS':>10}  "
          f"{'ratio':>5}   (medians of {args.rounds} rounds{', dd conv=fsync' * args.fsync})")
    for kind in KINDS:
        print(f"{kind:>16}  {med[kind]['dd_mib_s']:11.1f}  {ratio[kind]['dd_mib_s']:5.2f}  "
              f"{med[kind]['iops']:10.0f}  {ratio[kind]['iops']:5.2f}")
    best = max(ISCSI, key=lambda k: min(ratio[k].values()))
    met = all(v >= GOAL for v in ratio[best].values())
    print(f"goal iSCSI >= {GOAL} of local on both: {'met' if met else 'NOT met'} "
          f"(best safe backing store: {best})")
    for note in notes:
        print(f"note: {note}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()

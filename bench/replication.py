"""Replication into a qemu-storage-daemon NBD export, one VM under TCG with a 256 MiB raw
disk filled with random data, everything on 127.0.0.1.  ``--mode quorum`` (the default,
what ``drbd`` instances run: the disk is a quorum of the image and the replica, see
``haven.hypervisor.qemu.quorum``) or ``--mode mirror`` (the write-blocking mirror alone,
what Haven ran before):

* initial full sync time of the 256 MiB,
* guest write throughput (``dd bs=1M count=64 oflag=direct``) and 4 KiB O_DSYNC write
  IOPS (``diskw``), in alternating rounds of the same run (medians), printed as ratios:
  ``local`` (no mirror), ``plain`` (the default export: flush after every replica
  write), ``volatile`` (no such flush: the replica may lag in the peer's disk cache),
  ``tls`` (the default export over TLS-PSK),
* the guest pause of a ``checkpoint()`` (bitmap clear),
* resync after the export was SIGKILLed while the guest changed 1% of the disk:
  bitmap resync (R2, new port), resume (R1, same port; mirror mode only: a quorum keeps
  no job to resume) and full resync; bytes copied, seconds and the guest pause of R2.

Goal (issue 4): replicated throughput >= 80% of local; incremental resync bytes within
2x of what changed.  Usage: python bench/replication.py [--rounds 4] [--mode quorum]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_json
from haven.hypervisor.base import DiskSpec, VmSpec
from haven.hypervisor.qemu import QemuHypervisor
from haven.hypervisor.qemu import replication as repl
from haven.hypervisor.qemu.exports import ExportDisk, ExportManager, new_psk, write_psk_dir

GUEST = Path(os.environ.get("HAVEN_GUEST_DIR", "/var/cache/haven/guest"))
DISK_MIB = 256
PORTS = {"plain": 21801, "tls": 21802, "volatile": 21804, "new": 21803}
KINDS = ("local", "plain", "volatile", "tls")


class Console:
    """The guest's serial shell (no echo, no prompt): a command ends with a marker."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.buf = b""
        self.n = 0

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {marker!r} on the console: {self.buf[-300:]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the console closed")
            self.buf += chunk
        out, _, self.buf = self.buf.partition(marker)
        return out

    def run(self, command: str, timeout: float = 120) -> tuple[str, float]:
        """Output and host-measured seconds of one command line."""
        self.n += 1
        end = f"__END{self.n}__"
        t = time.perf_counter()
        self.sock.sendall(f"{command}; echo {end}\n".encode())
        out = self.read_until(end.encode() + b"\r\n", timeout)
        return out.decode(errors="replace"), time.perf_counter() - t


class Bench:
    def __init__(self, tmp: Path, quorum: bool) -> None:
        self.tmp = tmp
        self.quorum = quorum
        self.hv = QemuHypervisor(tmp / "run")
        self.exports = ExportManager(tmp / "exports")
        self.volatile = ExportManager(tmp / "exports-volatile", writethrough=False)
        self.checkpoint_ms: list[float] = []
        self.prim = tmp / "prim.raw"
        with open(self.prim, "wb") as f:  # random data: a full sync really copies it
            for _ in range(DISK_MIB):
                f.write(os.urandom(1 << 20))
        self.replicas = {k: tmp / f"sec-{k}.raw" for k in KINDS[1:]}
        for path in self.replicas.values():
            with open(path, "wb") as f:
                f.truncate(DISK_MIB << 20)
        self.psk = new_psk()
        self.psk_dir = str(write_psk_dir(tmp / "client-tls", self.psk))
        self.qmp = self.hv.qmp_path("bench")
        self.console: Console | None = None

    def boot(self) -> Console:
        spec = VmSpec(name="bench", uuid=str(uuid.uuid4()), memory=256, accel="tcg",
                      disks=(DiskSpec(0, str(self.prim), replicated=self.quorum,
                                      size=DISK_MIB << 20),),
                      kernel_path=str(GUEST / "vmlinuz"), initrd_path=str(GUEST / "initrd.gz"),
                      kernel_args="console=ttyS0 quiet haven.nomount")
        self.hv.start(spec)
        self.console = Console(self.hv.console_path("bench"))
        self.console.read_until(b"GUEST-READY", 60)
        self.console.read_until(b"\n", 5)
        return self.console

    def export(self, kind: str, port: int | None = None) -> repl.NbdTarget:
        port = port or PORTS[kind]
        tls = kind == "tls"
        manager = self.volatile if kind == "volatile" else self.exports
        manager.ensure(f"bench-{kind}", [ExportDisk("d0", str(self.replicas[kind]))],
                            "127.0.0.1", port, self.psk if tls else None)
        return repl.NbdTarget("127.0.0.1", port, "d0", self.psk_dir if tls else None)

    def protect(self, kind: str) -> float:
        """Mirror into ``kind``'s export, wait until ready; seconds to ready."""
        t = time.perf_counter()
        repl.protect(self.qmp, 0, self.export(kind))
        repl.wait_ready(self.qmp, 0, 300)
        repl.promote(self.qmp, 0)  # a quorum disk: the replica takes the slot
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        repl.checkpoint(self.qmp, 0)
        self.checkpoint_ms.append((time.perf_counter() - t) * 1000)
        return seconds

    def close(self) -> None:
        self.hv.kill("bench")
        for manager in (self.exports, self.volatile):
            for key in list(manager.list()):
                manager.stop(key)


def dd_mib_s(console: Console) -> float:
    out, seconds = console.run("dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct 2>&1")
    if "64+0 records out" not in out:
        raise RuntimeError(f"dd failed: {out!r}")
    return 64 / seconds


def diskw_iops(console: Console, count: int = 1500) -> float:
    out, seconds = console.run(f"diskw /dev/vda 0 16384 {count} | tail -1")
    if "DISKW DONE" not in out:
        raise RuntimeError(f"diskw failed: {out!r}")
    return count / seconds


def throughput(b: Bench, console: Console, rounds: int) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {
        k: {"dd_mib_s": [], "iops": []} for k in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            if kind != "local":
                b.protect(kind)
            results[kind]["dd_mib_s"].append(dd_mib_s(console))
            results[kind]["iops"].append(diskw_iops(console))
            if kind != "local":
                assert repl.status(b.qmp)[0].phase == "ready"
                repl.unprotect(b.qmp, 0)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in results.items()}
    return {
        "samples": results, "median": med,
        "ratio_replicated_vs_local": {m: med["plain"][m] / med["local"][m]
                                      for m in ("dd_mib_s", "iops")},
        "ratio_volatile_vs_local": {m: med["volatile"][m] / med["local"][m]
                                    for m in ("dd_mib_s", "iops")},
        "ratio_tls_vs_plain": {m: med["tls"][m] / med["plain"][m]
                               for m in ("dd_mib_s", "iops")},
    }


def change_one_percent(console: Console) -> int:
    """Scattered 64 KiB random writes over 1% of the disk; bytes written."""
    n = (DISK_MIB << 20) // 100 // 65536
    out, _ = console.run(f"for i in $(seq 0 {n - 1}); do dd if=/dev/urandom of=/dev/vda "
                         "bs=64k count=1 seek=$((i*97)) oflag=direct 2>/dev/null; done; "
                         "echo changed")
    assert "changed" in out, out
    return n * 65536


def outage(b: Bench, console: Console, resync: Callable[[], repl.ResyncResult]
           ) -> dict[str, Any]:
    """Protect into the plain export, kill it, change 1%, bring it back, resync."""
    b.protect("plain")
    info = b.exports.list()["bench-plain"]
    os.kill(info.pid, signal.SIGKILL)
    if b.quorum:
        # What the node daemon does once the guest's next write fails on the replica
        # (here the guest is idle): take the replica out, resume once it is Outdated.
        repl.sever(b.qmp, 0)
        repl.thaw(b.qmp)
    changed = change_one_percent(console)
    deadline = time.monotonic() + 5
    while repl.status(b.qmp)[0].phase != "failed" and time.monotonic() < deadline:
        time.sleep(0.01)
    result = resync()
    assert repl.status(b.qmp)[0].phase == "ready"
    repl.unprotect(b.qmp, 0)
    return {"mode": result.mode, "changed_bytes": changed, "bytes_copied": result.bytes_copied,
            "seconds": result.seconds, "pause_ms": result.pause_ms,
            "copied_vs_changed": result.bytes_copied / changed}


def resyncs(b: Bench, console: Console) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def bitmap() -> repl.ResyncResult:
        b.exports.stop("bench-plain")
        return repl.resync(b.qmp, 0, b.export("plain", PORTS["new"]))

    def resume() -> repl.ResyncResult:
        return repl.resync(b.qmp, 0, b.export("plain"))

    def full() -> repl.ResyncResult:
        target = b.export("plain", PORTS["new"])
        repl.unprotect(b.qmp, 0)
        t = time.perf_counter()
        repl.protect(b.qmp, 0, target)
        state = repl.wait_ready(b.qmp, 0, 300)
        repl.promote(b.qmp, 0)
        return repl.ResyncResult("full", state.offset, time.perf_counter() - t)

    out["bitmap"] = outage(b, console, bitmap)
    b.exports.stop("bench-plain")
    if not b.quorum:
        out["resume"] = outage(b, console, resume)
        b.exports.stop("bench-plain")
    out["full"] = outage(b, console, full)
    b.exports.stop("bench-plain")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--mode", choices=("quorum", "mirror"), default="quorum")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="haven-replbench-") as tmp:
        b = Bench(Path(tmp), args.mode == "quorum")
        try:
            console = b.boot()
            initial = b.protect("plain")
            repl.unprotect(b.qmp, 0)
            tput = throughput(b, console, args.rounds)
            res = resyncs(b, console)
        finally:
            b.close()
    data = {"mode": args.mode, "disk_mib": DISK_MIB, "initial_sync_seconds": initial,
            "throughput": tput,
            "checkpoint_pause_ms": statistics.median(b.checkpoint_ms),
            "resync": res, "goal": {"replicated_vs_local": 0.8, "copied_vs_changed": 2.0}}
    path = write_json(f"replication-{args.mode}", data)
    med, ratio = tput["median"], tput["ratio_replicated_vs_local"]
    print(f"mode {args.mode}")
    print(f"initial full sync of {DISK_MIB} MiB random data: {initial:.2f} s")
    for kind in KINDS:
        print(f"{kind:>8}: dd 1 MiB O_DIRECT {med[kind]['dd_mib_s']:7.1f} MiB/s   "
              f"4 KiB O_DSYNC {med[kind]['iops']:6.0f} IOPS")
    print(f"replicated/local: throughput {ratio['dd_mib_s']:.2f}, IOPS {ratio['iops']:.2f} "
          "(goal 0.80)")
    vol = tput["ratio_volatile_vs_local"]
    print(f"volatile/local: throughput {vol['dd_mib_s']:.2f}, IOPS {vol['iops']:.2f}")
    tls = tput["ratio_tls_vs_plain"]
    print(f"TLS-PSK/plain: throughput {tls['dd_mib_s']:.2f}, IOPS {tls['iops']:.2f}")
    for name, r in res.items():
        print(f"resync {name:>6}: {r['bytes_copied'] / 2**20:7.2f} MiB copied for "
              f"{r['changed_bytes'] / 2**20:.2f} MiB changed ({r['copied_vs_changed']:.2f}x) "
              f"in {r['seconds']:.2f} s, guest pause {r['pause_ms']:.1f} ms")
    print(f"checkpoint (bitmap clear) guest pause: median {data['checkpoint_pause_ms']:.1f} ms")
    print(f"-> {path}")


if __name__ == "__main__":
    main()

"""Does a busy guest survive a migration under TCG?  Live against non-live, QEMU alone.

A 256 MiB guest re-dirties 128 MiB of random data at 20 MB/s (``hog=128 hograte=20``);
it migrates back and forth between two run dirs on 127.0.0.1.
About a second after the fill, it migrates; the destination must then answer on its
console twice, 2 s apart, without an oops.  Printed per mode: how many migrations left
a broken guest, and the median pause.  With QEMU 7.2 (Debian 12) live migration broke
the guest nearly every time (stale kernel data: writes made during the copy were not
sent), non-live never; QEMU 10.0.2 (bookworm-backports) kept it intact live too.  Hence
Haven's default of non-live under TCG with QEMU < 10.  A likely cause:
QEMU 7.2 clears the migration dirty bits without re-arming the TCG TLB entries that
skip dirty tracking, so writes through a long-lived TLB entry go unrecorded (KVM
tracks dirty pages itself and is not concerned).  Writes bench/results/migration_integrity.json.

Usage: python bench/migration_integrity.py [--runs 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import migration_qemu as mq
from common import write_json
from haven.hypervisor.qemu.migration import finish_source, migrate
from haven.hypervisor.qemu.migration_destination import accept, wait_destination

BROKEN = ("BUG", "Oops", "panic", "general protection")


def healthy(console: mq.Lines) -> bool:
    for tag in ("first", "second"):
        console.sock.sendall(f"echo {tag}-$((6*7))\n".encode())
        deadline = time.monotonic() + 5
        while not any(t == f"{tag}-42" for _, t in list(console.lines)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        time.sleep(2)
    return not any(word in t for _, t in list(console.lines) for word in BROKEN)


def run_mode(live: bool, runs: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="haven-bench-integrity-") as tmp:
        case = mq.Case(Path(tmp), 256, True, "shared")
        case.spec = dataclasses.replace(case.spec, kernel_args="console=ttyS0 quiet "
                                        "haven.nomount hog=128 hograte=20")
        try:
            while len(out) < runs:
                a, b = case.nodes
                a.hv.start(case.spec_on(a))
                console = mq.Lines(a.hv.console_path(mq.NAME))
                console.wait("MEMHOG READY", 120)
                time.sleep(1)
                src, dst = a, b
                for _ in range(2):  # there and back, while the guest survives
                    dst.hv.start(case.spec_on(dst, incoming=True))
                    uri = accept(dst.hv.qmp_path(mq.NAME), mq.LO, mq.free_port())
                    console = mq.Lines(dst.hv.console_path(mq.NAME))
                    stats = migrate(src.hv.qmp_path(mq.NAME), uri, live=live)
                    wait_destination(dst.hv, mq.NAME, resume=not live)
                    finish_source(src.hv.qmp_path(mq.NAME))
                    src.hv.stop(mq.NAME, timeout=10)
                    ok = healthy(console)
                    pause = stats.total_ms if not live else stats.downtime_ms
                    out.append({"live": live, "intact": ok, "pause_ms": pause,
                                "total_ms": stats.total_ms})
                    print(f"{'live' if live else 'non-live':8s} run {len(out)}: "
                          f"{'intact' if ok else 'BROKEN'}, pause {pause:.0f} ms "
                          f"(QEMU's {'downtime' if live else 'total'})", flush=True)
                    src, dst = dst, src
                    if not ok or len(out) >= runs:
                        break
                for node in case.nodes:
                    for name in list(node.hv.list()):
                        node.hv.kill(name)
        finally:
            case.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()
    results = run_mode(True, args.runs) + run_mode(False, args.runs)
    for live in (True, False):
        rs = [r for r in results if r["live"] is live]
        broken = sum(not r["intact"] for r in rs)
        print(f"{'live' if live else 'non-live':8s}: {broken}/{len(rs)} migrations broke "
              f"the guest; median pause {statistics.median(r['pause_ms'] for r in rs):.0f} ms")
    print(f"JSON: {write_json('migration_integrity', {'runs': results})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

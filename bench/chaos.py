"""A randomized, seeded fault campaign against a real local cluster (issue 14).

``haven up --nodes 3 --storage iscsi``: one ``drbd`` instance (``d1``, node01:node02)
and one shared-storage instance (``s1``, ``-t ext`` on the local iSCSI target), each
guest running ``diskw``: sequence-numbered 4 KiB writes with O_DIRECT|O_DSYNC on its
second disk, ``A <seq>`` on the console after each acknowledged one.

Rounds of one to three faults, everything drawn from ``--seed`` (kinds, targets,
moments, hold times), so a seed replays the same campaign; each fault is injected at a
random moment of a round (in its own thread) and healed by itself:

* SIGKILL or SIGSTOP/SIGCONT of a whole node, of ``haven-noded`` alone, of one QEMU, of
  a ``qemu-storage-daemon`` (replication export), of an etcd member, of ``tgtd``;
* a network partition of a node (cut off from the other nodes, the storage network
  kept) and of the storage network alone (one node cut off from the target);
* the master killed during a migration, or during a recovery;
* a user's ``gnt-instance migrate`` or ``failover`` racing another fault.

Checked: every 50 ms, that no instance has two running QEMUs (a frozen QEMU cannot
write and does not count; two live ones are asked over QMP whether they run); after a
round: every instance runs again with one QEMU on its primary and its console answers
(time from the round's first fault: the recovery time, bound ``--bound``), the last
write its writer saw acknowledged is on the disk it now runs on (read through that
QEMU's own block layer, ``qemu-io`` over QMP), no job stays running or queued,
``gnt-cluster verify`` is clean or explains (its errors are recorded).  A QEMU that
stopped reading its console's input (QEMU 10.0.2 does, now and then, under TCG) counts
as running when its guest's kernel answers SysRq typed over QMP; the round records it
(``console_stalled``), and that guest's writer cannot be started again, so its later
writes go unchecked (``unchecked``) until its QEMU is replaced.

Partitions (``bench/chaos_net.py``): with ``--netns`` each node is in its own network
namespace on a bridged LAN with the iSCSI target on it (``haven up --netns --storage
iscsi``), and iptables in the node's namespace drops its traffic.  On the loopback (the
default, and ``make test``'s short campaign) the node's processes are moved into their
own cgroup, iptables drops what that cgroup sends to other nodes and what anyone else
sends to the node's address.  Either way the connections already open are cut silently
(``partition``, ``storage-partition``: a pulled cable) or reset with ``ss -K``
(``partition-rst``: a peer or firewall answering RST, both ends see the failure at once).

Its parts: ``chaos_cluster.py`` (commands, the QEMUs in ``/proc``, SysRq over QMP),
``chaos_faults.py`` (the kinds, a round's draw, injecting and healing), ``chaos_checks.py``
(the sampler, the writers and their read-back, recovery and quiet), ``chaos_net.py``
(partitions); this module runs the rounds and makes the table.

Recovery time: from the round's first fault until every instance runs and answers; a
fault held for a while (a frozen node) is part of it.  Output: a table per fault kind
(runs, recovered, recovery time min/median/max, split brains, lost acknowledged writes,
stuck jobs, ``verify`` errors, writers with nothing acknowledged to check), the JSON
``bench/results/NAME.json`` (``--name``; table, every round with its timeline), and on
any violation the seed, the round's timeline, and the cluster's logs copied to
``<base>.logs/round-N``.  Usage (root; under the shared cluster lock; a long campaign in
chunks of different seeds, merged afterwards)::

    flock /tmp/haven-cluster.lock python bench/chaos.py --seed 1001 --faults 50 \
        --name chaos-1001
    python bench/chaos.py --merge bench/results/chaos-10*.json
    python bench/chaos.py --seed 1 --faults 8 --kinds partition-rst   # one kind only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_checks import (
    Sampler,
    diagnose,
    healthy,
    healthy_or_why,
    quiet,
    start_writer_acked,
    wait_until,
    write_kept,
)
from chaos_cluster import INSTANCES, Cluster, qemus
from chaos_faults import KINDS, Fault, Injector, draw_round
from chaos_net import NetnsPartitions, Partitions
from common import write_json

__all__ = ["KINDS", "campaign", "format_table", "merge", "summarize"]


def campaign(base: Path, subnet: str, seed: int, faults: int, bound: float = 120.0,
             keep: bool = False, name: str = "chaos", log: Callable[[str], None] = print,
             allowed: tuple[str, ...] = KINDS, create: bool = True, netns: bool = False
             ) -> dict[str, Any]:
    """Run a campaign of ``faults`` faults drawn from ``allowed``; its result (what goes
    into the JSON).  With ``create`` the cluster is made at ``base`` and destroyed
    afterwards unless ``keep``; without, a fresh ``haven up --nodes 3 --storage iscsi``
    at ``base`` on ``subnet`` is used and left to its owner.  A violation's logs are
    copied to ``<base>.logs/round-N``."""
    rng = random.Random(seed)
    c = Cluster(base, subnet, netns)
    parts: Partitions | NetnsPartitions = NetnsPartitions(c) if netns else Partitions(c)
    t_setup = time.monotonic()
    if create:
        c.run("haven", "down", "--destroy", timeout=180)
        where = ["--netns"] if netns else ["--subnet", subnet]
        c.run("haven", "up", "--nodes", "3", *where, "--storage", "iscsi", check=True,
              timeout=300)
    for inst, argv in INSTANCES.items():
        c.run("gnt-instance", "add", *argv, "-B", "memory=128", "-o", "busybox", inst,
              check=True, timeout=300)
    sampler = Sampler(c)
    sampler.start()
    t0 = time.monotonic()
    inj = Injector(c, parts, t0)
    rounds: list[dict[str, Any]] = []
    run = 0
    done = 0
    violations = 0
    log(f"cluster {'up ' if create else ''}with d1 and s1 in {t0 - t_setup:.1f} s; seed "
        f"{seed}, {faults} faults")
    try:
        for inst in INSTANCES:
            if why_not := start_writer_acked(c, sampler, inst, run):
                inj.note(why_not)
        while done < faults:
            kinds = draw_round(rng, faults - done, allowed)
            frs = [random.Random(rng.getrandbits(64)) for _ in kinds]
            delays = [0.0] + [rng.uniform(0.0, 3.0) for _ in kinds[1:]]
            time.sleep(rng.uniform(0.5, 2.5))  # writes pile up; the fault lands anywhere
            split_before = len(sampler.episodes)
            mark = len(inj.log)
            fl = [Fault(k) for k in kinds]
            threads = [threading.Thread(target=inj.fault, args=(f, r, d))
                       for f, r, d in zip(fl, frs, delays, strict=True)]
            start = time.monotonic()
            for t in threads:
                t.start()
            time.sleep(0.5)
            # Recovered while a fault still holds (a node down for long, the instance
            # already restarted elsewhere): the recovery time ends there, provided all
            # is still well once every fault is healed.
            first_ok: float | None = None
            while any(t.is_alive() for t in threads):
                if first_ok is None and not healthy(c):
                    first_ok = time.monotonic()
                time.sleep(0.3)
            for t in threads:
                t.join()
            began = min(f.injected or start for f in fl)
            why = healthy_or_why(c)
            if why:
                first_ok = None
                why = wait_until(lambda: healthy(c), bound, every=0.3)
            took = None if why else (first_ok or time.monotonic()) - began
            t_recovered = time.monotonic()
            inj.note(f"recovered after {took:.1f} s" if took is not None
                     else f"NOT recovered: {why}")
            lost = {}
            acked = {}
            with sampler.lock:  # an unchecked writer: did its run begin at all?
                began_on = {i: sampler.marks.get((i, run), "no marker seen")
                            for i in INSTANCES}
            if took is not None:
                time.sleep(0.2)  # the sampler's last read of the console logs
                for inst in INSTANCES:
                    acked[inst] = sampler.last_acked(inst, run)
                    if acked[inst] >= 0:
                        try:
                            ok, text = write_kept(c, inst, run, acked[inst])
                        except RuntimeError as exc:
                            ok, text = False, f"could not be read back: {exc}"
                        if not ok:
                            lost[inst] = text
            t_checked = time.monotonic()
            calm = wait_until(lambda: quiet(c), 90, every=1.0)
            t_quiet = time.monotonic()
            verify = c.run("gnt-cluster", "verify", timeout=120)
            t_verified = time.monotonic()
            with sampler.lock:
                splits = sampler.episodes[split_before:]
            errors = [e for f in fl for e in f.errors]
            bad = bool(splits or lost or took is None or calm or
                       any("traceback" in e for e in errors))
            row = {"round": len(rounds), "kinds": kinds,
                   "what": [f.what for f in fl], "recovered": took is not None,
                   "seconds": None if took is None else round(took, 2),
                   "not_recovered": why, "acked": acked, "writer_began_on": began_on,
                   "lost_writes": lost,
                   "console_stalled": sorted(n for n, pid in c.stalled.items()
                                             if pid in qemus(c.base, n)),
                   "split_brain": splits, "stuck": calm, "errors": errors,
                   "verify_ok": verify.returncode == 0,
                   "verify": [ln.strip() for ln in verify.stdout.splitlines()
                              if "ERROR" in ln or "WARNING" in ln],
                   "timeline": inj.log[mark:],
                   "diagnosis": diagnose(c, why) if took is None else {},
                   "phases": {"faults_and_recovery": round(t_recovered - start, 1),
                              "write_check": round(t_checked - t_recovered, 1),
                              "quiet": round(t_quiet - t_checked, 1),
                              "verify": round(t_verified - t_quiet, 1)}}
            rounds.append(row)
            done += len(kinds)
            shown = f"{took:5.1f} s" if took is not None else "NOT RECOVERED"
            log(f"r{row['round']:<3d} {'+'.join(kinds):34s} {shown:>13s} "
                f"acked={acked} lost={lost or '-'} split={len(splits)} "
                f"stuck={'yes' if calm else '-'} "
                f"verify={'ok' if row['verify_ok'] else row['verify'][:2]} "
                f"phases={row['phases']}"
                f"{' ERR ' + str(errors) if errors else ''}\n      "
                + "; ".join(f.what for f in fl))
            if bad:
                violations += 1
                dest = Path(f"{base}.logs") / f"round-{row['round']}"
                c.copy_logs(dest)
                log(f"VIOLATION in round {row['round']} (seed {seed}); logs in {dest}; "
                    f"timeline: {json.dumps(row['timeline'])}")
                if took is None:
                    break  # nothing more can be learnt from a cluster that did not heal
            run += 1
            for inst in INSTANCES:
                try:
                    if why_not := start_writer_acked(c, sampler, inst, run):
                        inj.note(why_not)
                except RuntimeError as exc:  # the next round says it: nothing acked
                    inj.note(f"writer run {run} of {inst} did not start: {exc}")
    except KeyboardInterrupt:  # SIGINT: stop early, keep what was measured
        log(f"interrupted after {done} faults: the table covers the rounds completed")
    finally:
        sampler.halt.set()
        parts.heal_all()
        if create and not keep:  # a violation's logs were copied next to it
            c.run("haven", "down", "--destroy", timeout=180)
    table = summarize(rounds)
    result = {"seed": seed, "faults_asked": faults, "faults": done, "kinds": list(allowed),
              "rounds": len(rounds), "seconds": round(time.monotonic() - t0, 1),
              "sampler": {"ticks": sampler.ticks, "max_gap_s": round(sampler.max_gap, 3),
                          "errors": sampler.errors},
              "table": table, "violations": violations, "round_details": rounds,
              "split_brain": sampler.episodes}
    if name:
        write_json(name, result)
    return result


def summarize(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fault kind, and in ``total`` over all rounds (a round with several faults
    counts once there): runs, recovered, recovery time min/median/max, violations."""
    table: dict[str, dict[str, Any]] = {}
    for kind in (*KINDS, "total"):
        rows = [r for r in rounds if kind in r["kinds"] or kind == "total"]

        def count(r: dict[str, Any], kind: str = kind) -> int:
            return len(r["kinds"]) if kind == "total" else int(r["kinds"].count(kind))

        times = [r["seconds"] for r in rows if r["seconds"] is not None]
        table[kind] = {
            "runs": sum(count(r) for r in rows),
            "recovered": sum(count(r) for r in rows if r["recovered"]),
            "min": min(times, default=None), "max": max(times, default=None),
            "median": statistics.median(times) if times else None,
            "split_brain": sum(len(r["split_brain"]) for r in rows),
            "lost_writes": sum(len(r["lost_writes"]) for r in rows),
            "stuck": sum(bool(r["stuck"]) for r in rows),
            "verify_errors": sum(not r["verify_ok"] for r in rows),
            # Writers that saw nothing acknowledged before the round's faults (a guest
            # still frozen from the round before): nothing of theirs to check.
            "unchecked": sum(v < 0 for r in rows for v in r["acked"].values()),
            # Rounds whose check found a QEMU that stopped reading its console's input
            # (the guest answers SysRq; its writer cannot be started again there).
            "console_stalled": sum(bool(r.get("console_stalled")) for r in rows)}
    return table


def format_table(table: dict[str, dict[str, Any]]) -> str:
    """The table as text: a line per fault kind that ran, then the total."""
    def f(v: float | None) -> str:
        return f"{v:6.1f}" if v is not None else "     -"

    lines = [f"{'fault kind':18s} runs recov    min median    max split lost stuck "
             f"verify-err unchecked console-stall"]
    for kind, t in table.items():
        if t["runs"]:
            lines.append(f"{kind:18s} {t['runs']:4d} {t['recovered']:5d} {f(t['min'])} "
                         f"{f(t['median'])} {f(t['max'])} {t['split_brain']:5d} "
                         f"{t['lost_writes']:4d} {t['stuck']:5d} {t['verify_errors']:10d} "
                         f"{t['unchecked']:9d} {t.get('console_stalled', 0):13d}")
    return "\n".join(lines)


def merge(paths: list[Path]) -> int:
    """One table for several campaigns (the chunks of a long one, each with its seed)."""
    rounds: list[dict[str, Any]] = []
    seconds = 0.0
    for path in paths:
        data = json.loads(path.read_text())
        rounds += data["round_details"]
        seconds += data["seconds"]
        print(f"{path}: seed {data['seed']}, {data['faults']} faults in {data['rounds']} "
              f"rounds, {data['seconds']:.0f} s, violations {data['violations']}, "
              f"sampler longest gap {data['sampler']['max_gap_s']} s")
    print()
    print(format_table(summarize(rounds)))
    bad = [r for r in rounds if r["split_brain"] or r["lost_writes"] or not r["recovered"]
           or r["stuck"]]
    print(f"{sum(len(r['kinds']) for r in rounds)} faults in {len(rounds)} rounds, "
          f"{seconds / 60:.0f} min; rounds with a violation: {len(bad)}")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--base", type=Path, default=Path("/tmp/haven-chaos/sim"))
    ap.add_argument("--subnet", default="127.0.88")
    ap.add_argument("--netns", action="store_true",
                    help="each node in its own network namespace on a bridged LAN, the "
                         "iSCSI target on it (haven up --netns); partitions by iptables "
                         "in the node's namespace")
    ap.add_argument("--bound", type=float, default=120.0,
                    help="recovery bound in seconds after the last fault is healed")
    ap.add_argument("--name", default="chaos", help="JSON file bench/results/NAME.json")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up at the end")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated fault kinds to draw from (default all: "
                         f"{', '.join(KINDS)})")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                    help="print the table of these campaigns' JSON files together (no "
                         "cluster is run)")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        print(f"--kinds {args.kinds}: unknown {', '.join(unknown) or 'empty'}; the kinds "
              f"are {', '.join(KINDS)}.", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench/chaos.py needs root (partitions use iptables and cgroups).",
              file=sys.stderr)
        return 2
    result = campaign(args.base, args.subnet, args.seed, args.faults, args.bound,
                      args.keep, args.name, allowed=kinds, netns=args.netns)
    print()
    print(format_table(result["table"]))
    print(f"seed {args.seed}: {result['faults']} faults in {result['rounds']} rounds, "
          f"{result['seconds']:.0f} s; sampler every 50 ms, longest gap "
          f"{result['sampler']['max_gap_s']} s; violations: {result['violations']}")
    if result["violations"]:
        print(f"VIOLATIONS: replay with --seed {args.seed} --faults {args.faults}; logs in "
              f"{args.base}.logs")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

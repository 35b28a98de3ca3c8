"""The fault campaign's faults (``bench/chaos.py``): the kinds, how a round draws them,
and how one is injected, held and healed."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_cluster import INSTANCES, NODES, Cluster, qemu_node, qemus
from chaos_net import NetnsPartitions, Partitions

# Faults on one node's control plane: at most one of them per round (two on different
# nodes would take the etcd quorum away, which the master kinds do on purpose).
NODE_KINDS = ("node-kill", "node-stop", "noded-kill", "noded-stop", "etcd-kill",
              "etcd-stop", "partition", "partition-rst", "master-migrate",
              "master-recovery")
OTHER_KINDS = ("qemu-kill", "qemu-stop", "qsd-kill", "qsd-stop", "tgtd-kill", "tgtd-stop",
               "storage-partition")
USER_KINDS = ("user-migrate", "user-failover")
KINDS = NODE_KINDS + OTHER_KINDS + USER_KINDS


def draw_round(rng: random.Random, left: int, allowed: tuple[str, ...] = KINDS
               ) -> list[str]:
    """One to three fault kinds: at most one on a node's control plane, a user's
    operation always races another fault."""
    kinds = [rng.choice(allowed)]
    extra = rng.choice((0, 0, 1, 1, 2)) if left > 1 else 0
    if kinds[0] in USER_KINDS and left > 1:
        extra = max(extra, 1)
    for _ in range(min(extra, left - 1)):
        pool = [k for k in allowed if not (k in NODE_KINDS and
                                           any(x in NODE_KINDS for x in kinds))]
        if pool:
            kinds.append(rng.choice(pool))
    return kinds


@dataclass
class Fault:
    kind: str
    what: str = ""
    injected: float = 0.0  # monotonic
    healed: float = 0.0
    errors: list[str] = field(default_factory=list)  # tracebacks, failed heals


class Injector:
    """Carries out one fault (inject, hold, heal); everything random comes from its own
    ``random.Random``, seeded from the campaign's generator."""

    def __init__(self, c: Cluster, parts: Partitions | NetnsPartitions, t0: float) -> None:
        self.c, self.parts, self.t0 = c, parts, t0
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def note(self, text: str) -> None:
        with self.lock:
            self.log.append({"t": round(time.monotonic() - self.t0, 2), "event": text})

    def haven(self, f: Fault, *argv: str) -> None:
        p = self.c.run("haven", *argv, timeout=150)
        self.note(f"haven {' '.join(argv)} -> {p.returncode}")
        if p.returncode != 0:
            f.errors.append(f"haven {' '.join(argv)}: {p.stderr.strip()[-300:]}")

    def signal_hold(self, f: Fault, pids: list[int], hold: float) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        f.injected = time.monotonic()
        time.sleep(hold)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def user_op(self, f: Fault, op: str, name: str, rng: random.Random) -> None:
        argv = ["gnt-instance", op, "-f"]
        if name == "s1":  # shared storage: any other node is a target
            where = self.c.placement().get(name, ("", ""))[1]
            argv += ["-n", rng.choice([n for n in NODES if n != where])]
        p = self.c.run(*argv, name, timeout=300)
        self.note(f"{' '.join(argv)} {name} -> {p.returncode} "
                  f"{(p.stdout + p.stderr).strip().splitlines()[-1:] or ''}")
        if "Traceback" in p.stderr:
            f.errors.append(f"{op} {name} printed a traceback: {p.stderr[-500:]}")

    def fault(self, f: Fault, rng: random.Random, delay: float) -> None:
        time.sleep(delay)
        f.injected = time.monotonic()
        try:
            self._fault(f, rng)
        except Exception as exc:  # recorded: a fault that could not be carried out
            f.errors.append(f"injecting: {exc!r}")
        f.healed = time.monotonic()
        self.note(f"{f.kind}: healed ({f.what})")

    def _fault(self, f: Fault, rng: random.Random) -> None:
        c, kind = self.c, f.kind
        node = rng.choice(NODES)
        hold = rng.uniform(1.0, 8.0)
        if kind in ("node-kill", "noded-kill", "etcd-kill"):
            what = {"node-kill": "node", "noded-kill": "noded", "etcd-kill": "etcd"}[kind]
            if what == "node":
                f.what = f"SIGKILL {node}, {hold:.1f} s down"
                self.note(f"{kind}: {f.what}")
                self.haven(f, "kill", node)
            else:
                pid = c.node_pids(node).get(what)
                f.what = f"SIGKILL {what} of {node} (pid {pid})"
                self.note(f"{kind}: {f.what}")
                if pid:
                    os.kill(pid, signal.SIGKILL)
            if what != "etcd":  # the node daemon restarts its etcd member itself
                time.sleep(hold)
                self.haven(f, "start", node)
            return
        if kind in ("node-stop", "noded-stop", "etcd-stop"):
            npids = c.node_pids(node)
            chosen = list(npids.values()) if kind == "node-stop" else \
                [npids[k] for k in (kind.split("-")[0],) if k in npids]
            f.what = f"SIGSTOP {kind.split('-')[0]} of {node} for {hold:.1f} s"
            self.note(f"{kind}: {f.what}")
            self.signal_hold(f, chosen, hold)
            return
        if kind in ("qemu-kill", "qemu-stop"):
            name = rng.choice(sorted(INSTANCES))
            pids = qemus(c.base, name)
            f.what = f"{kind.split('-')[1]} the QEMU of {name} on " \
                     f"{','.join(qemu_node(p) for p in pids) or 'none'}"
            self.note(f"{kind}: {f.what}")
            if kind == "qemu-kill":
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
            else:
                f.what += f" for {hold:.1f} s"
                self.signal_hold(f, pids, hold)
            return
        if kind in ("qsd-kill", "qsd-stop"):
            qsds = sorted(p for n in NODES for k, p in c.node_pids(n).items()
                          if _argv0(p).endswith("qemu-storage-daemon"))
            qsd = rng.choice(qsds) if qsds else None
            f.what = f"{kind.split('-')[1]} qemu-storage-daemon {qsd}"
            self.note(f"{kind}: {f.what}")
            if qsd is None:
                return
            if kind == "qsd-kill":
                os.kill(qsd, signal.SIGKILL)
            else:
                f.what += f" for {hold:.1f} s"
                self.signal_hold(f, [qsd], hold)
            return
        if kind == "tgtd-kill":
            f.what = f"SIGKILL tgtd, {hold:.1f} s down"
            self.note(f"{kind}: {f.what}")
            self.haven(f, "kill", "san")
            time.sleep(hold)
            self.haven(f, "start", "san")
            return
        if kind == "tgtd-stop":
            from haven.sim import san

            srv = san.load(c.base)
            tgtd = _tgtd_pid(c) if srv is not None else None
            f.what = f"SIGSTOP tgtd ({tgtd}) for {hold:.1f} s"
            self.note(f"{kind}: {f.what}")
            self.signal_hold(f, [tgtd] if tgtd else [], hold)
            return
        if kind in ("partition", "partition-rst", "storage-partition"):
            hold = rng.uniform(3.0, 12.0)
            storage = kind == "storage-partition"
            f.what = f"{'storage network of ' if storage else ''}{node} cut off for " \
                     f"{hold:.1f} s{', connections reset' if kind == 'partition-rst' else ''}"
            self.note(f"{kind}: {f.what}")
            try:
                self.parts.cut(node, storage_only=storage, reset=kind == "partition-rst")
                f.injected = time.monotonic()
                time.sleep(hold)
            finally:
                self.parts.heal(node)
            return
        if kind == "master-migrate":
            name = rng.choice(sorted(INSTANCES))
            master = c.master() or rng.choice(NODES)
            gap = rng.uniform(0.2, 3.0)
            f.what = f"migrate {name}, SIGKILL master {master} {gap:.1f} s later, " \
                     f"{hold:.1f} s down"
            self.note(f"{kind}: {f.what}")
            op = threading.Thread(target=self.user_op, args=(f, "migrate", name, rng))
            op.start()
            time.sleep(gap)
            self.haven(f, "kill", master)
            time.sleep(hold)
            self.haven(f, "start", master)
            op.join()
            return
        if kind == "master-recovery":
            master = c.master() or rng.choice(NODES)
            place = c.placement()
            homes = sorted({n for _, n in place.values() if n != master}) or \
                [n for n in NODES if n != master]
            victim = rng.choice(homes)
            gap = rng.uniform(4.0, 9.0)  # the lease (5 s) runs out, the recovery starts
            f.what = f"SIGKILL {victim}, then master {master} {gap:.1f} s later, " \
                     f"{hold:.1f} s down"
            self.note(f"{kind}: {f.what}")
            self.haven(f, "kill", victim)
            time.sleep(gap)
            self.haven(f, "kill", master)
            time.sleep(hold)
            starts = [threading.Thread(target=self.haven, args=(f, "start", n))
                      for n in (victim, master)]
            for t in starts:
                t.start()
            for t in starts:
                t.join()
            return
        if kind in USER_KINDS:
            name = rng.choice(sorted(INSTANCES))
            f.what = f"{kind.split('-')[1]} {name}"
            self.note(f"{kind}: {f.what}")
            self.user_op(f, kind.split("-")[1], name, rng)
            return
        raise ValueError(f"unknown fault kind {kind}")


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def _tgtd_pid(c: Cluster) -> int | None:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _argv0(int(entry.name)).endswith("tgtd"):
            with contextlib.suppress(OSError):
                if f"portal={c.san}:".encode() in Path(
                        f"/proc/{entry.name}/cmdline").read_bytes():
                    return int(entry.name)
    return None

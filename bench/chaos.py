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
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_net import NetnsPartitions, Partitions
from common import write_json

BIN = Path(sys.executable).parent
NODES = ("node01", "node02", "node03")
REGION = 512  # 4 KiB blocks per writer run; disk 1 (16 MiB) holds 8 regions
INSTANCES: dict[str, list[str]] = {
    "d1": ["-t", "drbd", "--disk", "0:size=32m", "--disk", "1:size=16m",
           "-n", "node01:node02"],
    "s1": ["-t", "ext", "--disk", "0:size=32m,provider=iscsi",
           "--disk", "1:size=16m,provider=iscsi", "-n", "node03"]}
# Faults on one node's control plane: at most one of them per round (two on different
# nodes would take the etcd quorum away, which the master kinds do on purpose).
NODE_KINDS = ("node-kill", "node-stop", "noded-kill", "noded-stop", "etcd-kill",
              "etcd-stop", "partition", "partition-rst", "master-migrate",
              "master-recovery")
OTHER_KINDS = ("qemu-kill", "qemu-stop", "qsd-kill", "qsd-stop", "tgtd-kill", "tgtd-stop",
               "storage-partition")
USER_KINDS = ("user-migrate", "user-failover")
KINDS = NODE_KINDS + OTHER_KINDS + USER_KINDS
RUN_LINE = re.compile(r"(?:^|\s)RUN-(\d+)\s*$")  # the marker's output, not its echo
ACK_LINE = re.compile(r"(?:^|\s)A (\d+)\s*$")


class Cluster:
    """Commands as a user types them, and the processes of the local cluster."""

    def __init__(self, base: Path, subnet: str, netns: bool = False) -> None:
        self.base, self.subnet, self.netns = base, subnet, netns
        self.env = dict(os.environ, HAVEN_CLIENT_CONFIG=str(base / "client.json"))
        self.env.pop("HAVEN_DATA_DIR", None)
        # A console with a writer printing never goes quiet: piped, it ends 3 x LINGER
        # after its input; the answers come within a fraction of a second (and are
        # asked again if not).
        self.env.setdefault("HAVEN_CONSOLE_LINGER", "0.4")
        self.san = f"{subnet}.250"
        # Instance -> the QEMU (pid) seen to no longer read its console's input.
        self.stalled: dict[str, int] = {}
        if netns:  # haven.sim.netns: the nodes on 10.77.0.NN, the target on the switch
            from haven.sim import netns as lan

            self.subnet, self.san = lan.PREFIX, lan.SWITCH_IP

    def run(self, *argv: str, timeout: float = 120, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / argv[0]), *argv[1:]]
        if argv[0] == "haven":
            cmd[1:1] = ["--base-dir", str(self.base)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               env=self.env)
        except subprocess.TimeoutExpired as exc:
            p = subprocess.CompletedProcess(cmd, 124, str(exc.stdout or ""),
                                            f"timed out after {timeout} s")
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {p.stdout}{p.stderr}")
        return p

    def address(self, node: str) -> str:
        return f"{self.subnet}.{int(node[-2:])}"

    def placement(self) -> dict[str, tuple[str, str]]:
        p = self.run("gnt-instance", "list", "--no-headers", "--separator=|", "-o",
                     "name,status,pnode", timeout=30)
        rows = [ln.split("|") for ln in p.stdout.splitlines() if ln.count("|") == 2]
        return {r[0]: (r[1], r[2]) for r in rows}

    def master(self) -> str:
        p = self.run("gnt-cluster", "getmaster", timeout=20)
        return p.stdout.strip() if p.returncode == 0 else ""

    def node_pids(self, node: str) -> dict[str, int]:
        from haven.fence import power

        return power.node_pids(self.base / node)

    def console(self, name: str, command: str, expect: str, timeout: float = 60) -> str:
        """The console's answer containing ``expect`` (printed only by running the
        command, never by its echo); typed again until it comes, and only into a guest
        that has booted (typing into a booting one loses characters)."""
        deadline = time.monotonic() + timeout
        out = ""
        while True:
            left = deadline - time.monotonic()
            if _alive_console(self, name):
                try:
                    p = subprocess.run([str(BIN / "gnt-instance"), "console", name],
                                       input=command + "\n", capture_output=True,
                                       text=True, env=self.env,
                                       timeout=max(5.0, min(30.0, left)))
                    out = p.stdout
                    if expect in out:
                        return out
                except subprocess.TimeoutExpired:
                    out = "(the console hung)"
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the console of {name} never answered {expect!r}: "
                                   f"{out[-300:]!r}")
            time.sleep(0.3)

    def copy_logs(self, dest: Path) -> None:
        for log in [*self.base.rglob("*.log"), *self.base.rglob("*.stderr")]:
            target = dest / log.relative_to(self.base)
            with contextlib.suppress(OSError):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, target)


def _alive_console(c: Cluster, name: str) -> bool:
    """Whether exactly one live, unfrozen QEMU of ``name`` runs and has booted (typing
    into a booting guest loses characters)."""
    pids = qemus(c.base, name)
    if len(pids) != 1:
        return False
    try:
        cwd = Path(os.readlink(f"/proc/{pids[0]}/cwd"))
        argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        text = (cwd / f"{name}.console.log").read_text(errors="replace")
    except OSError:
        return False
    return b"-incoming" in argv or "GUEST-READY" in text


# pid -> (its start time, the instance if it is a QEMU of this cluster, when first
# read).  Keyed by start time too: pids are reused (pid_max is 32768 here).  A "not a
# QEMU" is read again for its first seconds: between fork and exec a QEMU-to-be still
# shows its parent's command line (cached for good, it stayed invisible: a QEMU that
# ran was counted as missing).
_qemu_cache: dict[int, tuple[str, str | None, float]] = {}
_YOUNG = 3.0


def qemus(base: Path, name: str | None = None, frozen: bool = False
          ) -> list[int]:
    """Live QEMUs of this cluster (of instance ``name`` if given); frozen ones (SIGSTOP,
    state T) only with ``frozen``."""
    found = []
    seen = set()
    marker = str(base).encode()
    now = time.monotonic()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            st, started = fields[0], fields[19]
        except (OSError, IndexError):
            continue
        seen.add(pid)
        cached = _qemu_cache.get(pid)
        if cached is None or cached[0] != started or (
                cached[1] is None and now - cached[2] < _YOUNG):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            m = re.search(rb"guest=([^,\0]+),", argv)
            guest = m.group(1).decode() if (
                m and b"qemu-system" in argv.split(b"\0")[0] and marker in argv) else None
            first = cached[2] if cached is not None and cached[0] == started else now
            _qemu_cache[pid] = cached = (started, guest, first)
        guest = cached[1]
        if guest is None or (name is not None and guest != name):
            continue
        if st == "Z" or (st in ("T", "t") and not frozen):
            continue
        found.append(pid)
    for pid in set(_qemu_cache) - seen:
        _qemu_cache.pop(pid, None)
    return found


def qemu_node(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).parent.name
    except OSError:
        return "?"


def qmp_statuses(pids: list[int], name: str) -> list[str]:
    """Per QEMU: ``running``, ``paused``, ``inmigrate``, ``postmigrate``... or
    ``unanswered``; asked side by side, briefly (the sampler must not stall)."""
    from haven.hypervisor.qemu.qmp import qmp_call_many

    paths: list[str | Path] = []
    for pid in pids:
        try:
            paths.append(Path(os.readlink(f"/proc/{pid}/cwd")) / f"{name}.qmp-status")
        except OSError:
            paths.append(f"/nonexistent/{pid}")
    answers = qmp_call_many(paths, "query-status", timeout=0.2)
    return [str(a["status"]) if isinstance(a, dict) else "unanswered" for a in answers]


class Sampler(threading.Thread):
    """Every 50 ms: the QEMUs of each instance (two running = split brain), and the new
    lines of every console log (``RUN-<n>`` markers and ``A <seq>`` acknowledgements:
    the highest acknowledged write of each writer run)."""

    def __init__(self, c: Cluster) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[tuple[str, int], int] = {}
        self.marks: dict[tuple[str, int], str] = {}  # where each writer run began
        self.episodes: list[dict[str, Any]] = []  # two running QEMUs of one instance
        self._open: dict[str, dict[str, Any]] = {}
        self._logs: dict[Path, tuple[int, int, int | None]] = {}  # inode, offset, run
        self.ticks = 0
        self.errors = 0  # ticks that failed (counted: a blind sampler proves nothing)
        self.max_gap = 0.0

    def run(self) -> None:
        last = time.monotonic()
        while not self.halt.wait(0.05):
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            try:
                self._check_qemus()
                self._read_logs()
            except Exception as exc:  # the sampler must outlive any odd /proc state
                self.errors += 1
                print(f"sampler: {exc!r}", file=sys.stderr)
            self.ticks += 1

    def _check_qemus(self) -> None:
        for name in INSTANCES:
            pids = qemus(self.c.base, name)
            seen: list[list[str]] = []
            # Two QEMUs both running: asked again at once, in the same order, so that a
            # migration's switchover between the two answers (the source answered
            # "running" just before it stopped, the destination just after it
            # started) is not taken for an overlap; still both running the second
            # time, the first was running throughout the second's answer.
            while len(pids) > 1 and len(seen) < 2:
                states = qmp_statuses(pids, name)
                seen.append(states)
                if sum(st == "running" for st in states) < 2:
                    break
            split = len(seen) == 2 and all(sum(st == "running" for st in states) > 1
                                           for states in seen)
            ep = self._open.get(name)
            if split:
                if ep is None:
                    ep = {"instance": name, "start": time.time(), "end": time.time(),
                          "qemus": [(pid, qemu_node(pid)) for pid in pids],
                          "states": seen}
                    self._open[name] = ep
                    with self.lock:
                        self.episodes.append(ep)
                ep["end"] = time.time()
            elif ep is not None:
                del self._open[name]

    def _read_logs(self) -> None:
        for log in self.c.base.glob("node*/run/*.console.log"):
            name = log.name[:-len(".console.log")]
            try:
                st = log.stat()
                inode, offset, run = self._logs.get(log, (st.st_ino, 0, None))
                if inode != st.st_ino or st.st_size < offset:
                    inode, offset, run = st.st_ino, 0, None  # QEMU started anew
                if st.st_size == offset:
                    self._logs[log] = (inode, offset, run)
                    continue
                with open(log, "rb") as f:
                    f.seek(offset)
                    data = f.read(st.st_size - offset)
            except OSError:
                continue
            end = data.rfind(b"\n")
            if end < 0:
                continue
            for line in data[:end].decode(errors="replace").splitlines():
                # A line may begin with the shell's prompt ("/ # A 0").
                m = RUN_LINE.search(line)
                if m:
                    run = int(m.group(1)) - 1000
                    with self.lock:
                        self.marks[(name, run)] = log.parent.parent.name
                    continue
                m = ACK_LINE.search(line)
                if m and run is not None:
                    key = (name, run)
                    with self.lock:
                        self.acked[key] = max(self.acked.get(key, -1), int(m.group(1)))
            self._logs[log] = (inode, offset + end + 1, run)

    def last_acked(self, name: str, run: int) -> int:
        """The highest write of run ``run`` of ``name`` seen acknowledged so far."""
        with self.lock:
            return self.acked.get((name, run), -1)


# ----------------------------------------------------------------- writers and data


def start_writer(c: Cluster, name: str, run: int) -> None:
    """Writer run ``run`` of ``name``: region ``run % 8`` of disk 1, announced by the
    marker ``RUN-<1000+run>`` before its first write."""
    region = (run % 8) * REGION
    c.console(name, f"killall diskw 2>/dev/null; while [ ! -b /dev/vdb ]; do sleep 0.2; "
              f"done; echo RUN-$((1000+{run})); diskw /dev/vdb {region} {REGION} "
              f"100000000 20 &", f"RUN-{1000 + run}")


def start_writer_acked(c: Cluster, sampler: Sampler, name: str, run: int,
                       tries: int = 3) -> str:
    """Start writer run ``run`` and wait for its first acknowledged write; started again
    if none comes within 5 s.  The guest's console shell sometimes dies right after
    printing the run's marker (init starts a new one; its background writer dies with
    it): a round must not go unchecked for that.  Returns why not ('' once acked)."""
    for _ in range(tries):
        start_writer(c, name, run)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if sampler.last_acked(name, run) >= 0:
                return ""
            time.sleep(0.1)
    return f"writer run {run} of {name} acknowledged nothing after {tries} starts"


HEX_LINE = re.compile(r"^[0-9a-f]{8}:\s+((?:[0-9a-f]{2} ){1,16})", re.M)


class DiskReader:
    """Disk 1 of an instance read through its own QEMU (the HMP ``qemu-io`` command on
    the virtio device's block backend, over QMP): the disk it now runs on, whatever the
    storage (the ``drbd`` quorum reads the primary's image first, ``ext`` reads the
    LUN), and without typing on the guest's console, whose input QEMU 10.0.2 sometimes
    stops reading (README, the fault campaign)."""

    def __init__(self, c: Cluster, name: str) -> None:
        from haven.hypervisor.qemu.qmp import QmpSession

        pids = qemus(c.base, name)
        if len(pids) != 1:
            raise RuntimeError(f"{len(pids)} live QEMUs of {name}")
        run = Path(os.readlink(f"/proc/{pids[0]}/cwd"))
        self.session = QmpSession(run / f"{name}.qmp", timeout=10.0)
        # A running VM's qemu-io prints to QEMU's stderr, not into the monitor's reply
        # (QEMU 10.0: the read completes outside the monitor's context).
        self.stderr = run / f"{name}.log"

    def read(self, offset: int, length: int, tries: int = 3) -> bytes:
        """``length`` bytes at ``offset``; tried again on an error (the first command
        after a target restart gets a UNIT ATTENTION: the guest's I/O is retried by
        QEMU, and so is this read)."""
        for attempt in range(tries):
            try:
                return self._read(offset, length)
            except RuntimeError:
                if attempt == tries - 1:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def _read(self, offset: int, length: int) -> bytes:
        from haven.hypervisor.qemu.qmp import QmpError

        line = f'qemu-io -d vblk1/virtio-backend "read -v {offset} {length}"'
        done = f"read {length}/{length} bytes at offset {offset}"
        try:
            start = self.stderr.stat().st_size
            reply = str(self.session.execute("human-monitor-command",
                                             {"command-line": line}))
            out = reply
            # The reply may hold only QEMU's error reports (a retried iSCSI command);
            # the dump then comes on stderr.
            deadline = time.monotonic() + 5.0
            while done not in out and time.monotonic() < deadline:
                with open(self.stderr, "rb") as f:
                    f.seek(start)
                    text = f.read().decode(errors="replace")
                if done in text:
                    out = text[:text.index(done) + len(done)]
                else:
                    time.sleep(0.02)
        except (QmpError, OSError) as exc:
            raise RuntimeError(f"qemu-io: {exc}") from exc
        if done not in out:
            raise RuntimeError(f"qemu-io: {reply.strip()[-200:] or 'no answer'}")
        return bytes.fromhex("".join(m.group(1) for m in HEX_LINE.finditer(out))
                             .replace(" ", ""))

    def seq(self, block: int) -> int | None:
        """The write a block holds (``SEQ <n>`` at its start), None if none."""
        m = re.match(rb"SEQ (\d{12})", self.read(block * 4096, 32))
        return int(m.group(1)) if m else None

    def close(self) -> None:
        self.session.close()


def write_kept(c: Cluster, name: str, run: int, seq: int) -> tuple[bool, str]:
    """Whether the block of acknowledged write ``seq`` holds it (or a later write of the
    same block) on the disk the instance now runs on."""
    block = (run % 8) * REGION + seq % REGION
    disk = DiskReader(c, name)
    try:
        got = disk.seq(block)
        if got is not None and got >= seq and got % REGION == seq % REGION:
            return True, f"block {block} holds {got}"
        # Lost: how many?  The newest write of the run that the disk does hold.
        start = (run % 8) * REGION
        held = [n for n in (disk.seq(b) for b in range(start, start + REGION))
                if n is not None]
    finally:
        disk.close()
    return False, (f"acknowledged write {seq} is lost: block {block} holds "
                   f"{got if got is not None else 'no write'}; the newest write of the "
                   f"run on the disk is {max(held) if held else 'none'}")


# ----------------------------------------------------------------- faults


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


# ----------------------------------------------------------------- checks


def healthy(c: Cluster) -> dict[str, str]:
    """Why each instance is not yet recovered ({} when all are): one live QEMU, on the
    primary the configuration names, whose console answers, or, for a QEMU that stopped
    reading its console's input, whose guest kernel answers SysRq."""
    place = c.placement()
    why = {}
    for name in INSTANCES:
        st, pnode = place.get(name, ("?", "?"))
        pids = qemus(c.base, name)
        where = [qemu_node(p) for p in pids]
        if st != "running" or where != [pnode]:
            why[name] = f"status {st} on {pnode}, QEMUs on {where}"
            continue
        if c.stalled.get(name) == pids[0]:
            if not guest_alive(c, name):
                why[name] = ("its console's input stalled earlier and its kernel does not "
                             "answer SysRq")
            continue
        try:
            c.console(name, "echo up-$((40+2))", "up-42", timeout=4)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            why[name] = f"console: {exc}"
            if not _alive_console(c, name):
                continue  # still booting
            try:  # a slow guest, or QEMU no longer reads what is typed: which one?
                c.console(name, "echo up-$((40+2))", "up-42", timeout=12)
                del why[name]
            except (RuntimeError, subprocess.TimeoutExpired):
                if guest_alive(c, name):
                    c.stalled[name] = pids[0]
                    del why[name]
    return why


def guest_alive(c: Cluster, name: str) -> bool:
    """Whether the guest's kernel answers: SysRq-h typed on its keyboard prints its help
    on the console.  Output only: QEMU 10.0.2 sometimes stops reading a console's input
    while it keeps passing the guest's output on (seen live: the guest's UART empty
    with its receive interrupt on, bytes written to QEMU's socket never reaching it).
    Such a guest runs; only its console cannot take the campaign's commands, and the
    round says so."""
    out = sysrq(c, name, "h", "HELP :", 3.0)
    return out is not None and "HELP :" in out


def sysrq(c: Cluster, name: str, key: str, until: str | None, wait: float) -> str | None:
    """Type SysRq-``key`` on ``name``'s keyboard over QMP (the busybox OS boots with
    ``sysrq_always_enabled``); what its console printed after it, until ``until``
    appears or ``wait`` s have passed.  None without exactly one live QEMU, or when its
    monitor or console log cannot be read."""
    from haven.hypervisor.qemu.qmp import QmpError, qmp_call

    pids = qemus(c.base, name)
    if len(pids) != 1:
        return None
    try:
        run = Path(os.readlink(f"/proc/{pids[0]}/cwd"))
        log = run / f"{name}.console.log"
        start = log.stat().st_size
        qmp_call(run / f"{name}.qmp", "human-monitor-command",
                 {"command-line": f"sendkey alt-sysrq-{key}"})
        deadline = time.monotonic() + wait
        while True:
            with open(log, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
            if (until is not None and until in text) or time.monotonic() >= deadline:
                return text
            time.sleep(0.1)
    except (OSError, QmpError):
        return None


def quiet(c: Cluster) -> list[str]:
    """What keeps the cluster from being back to normal ([] when it is): jobs running
    or queued, a node not online, a replica not up to date."""
    out = []
    jobs = c.run("gnt-job", "list", "--running", "--pending", "--no-headers", timeout=30)
    if jobs.returncode != 0 or jobs.stdout.strip():
        out.append(f"jobs: {(jobs.stdout + jobs.stderr).strip()[-300:]}")
    ha = c.run("haven", "ha", "status", timeout=30)
    for line in ha.stdout.splitlines():
        f = line.split()
        if f and f[0] in NODES and (len(f) < 3 or f[1] != "Y" or f[2] != "online"):
            out.append(f"node: {line.strip()}")
    if ha.returncode != 0:
        out.append(f"ha status: {ha.stderr.strip()[-200:]}")
    info = c.run("gnt-instance", "info", "d1", timeout=30).stdout
    states = re.findall(r"^\s+(?:primary|secondary) (node\d+): (.*)$", info, re.M)
    bad = [f"{n}: {s}" for n, s in states if not s.startswith("UpToDate")]
    if bad or not states:
        out.append(f"d1 replicas: {bad or 'none shown'}")
    return out


def diagnose(c: Cluster, why: dict[str, str]) -> dict[str, Any]:
    """What the cluster says about instances that did not recover, kept in the JSON
    (the logs copied with it may not outlive the machine): the HA manager's view, and
    each one's recent events (restarts, give-ups, failed starts)."""
    out: dict[str, Any] = {"ha_status": c.run("haven", "ha", "status", timeout=30).stdout}
    for inst in why:
        out[inst] = c.run("haven", "events", "-n", "40", "--object", f"instance/{inst}",
                          timeout=30).stdout.splitlines()
        out[f"{inst} tasks"] = _guest_tasks(c, inst)
    return out


def _guest_tasks(c: Cluster, name: str) -> list[str]:
    """The guest kernel's task list with stacks (SysRq-t), from the console log: what
    a guest whose shell stopped answering is blocked on."""
    pids = qemus(c.base, name)
    if len(pids) != 1:
        return [f"{len(pids)} live QEMUs"]
    text = sysrq(c, name, "t", None, 5.0)  # a few hundred lines at 115200 baud
    if text is None:
        return ["no task list: its monitor or console log could not be read"]
    return [ln for ln in text.splitlines() if not ACK_LINE.search(ln)][-400:]


def healthy_or_why(c: Cluster) -> dict[str, str]:
    try:
        return healthy(c)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        return {"check": repr(exc)}


def wait_until(cond: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """``cond()`` until it returns something empty; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = cond()
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            got = [repr(exc)]
        if not got or time.monotonic() > deadline:
            return got
        time.sleep(every)


# ----------------------------------------------------------------- the campaign


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

"""The fault campaign's checks (``bench/chaos.py``): the 50 ms sampler (two running
QEMUs of one instance; the writers' acknowledged writes read off the console logs), the
guest writers, the read-back of acknowledged writes through the instance's own QEMU, and
whether the cluster has recovered and gone quiet."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_cluster import (
    ACK_LINE,
    INSTANCES,
    NODES,
    REGION,
    RUN_LINE,
    Cluster,
    _alive_console,
    guest_alive,
    one_qemu,
    qemu_node,
    qemus,
    qmp_statuses,
    sysrq,
)


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

        found = one_qemu(c, name)
        if found is None:
            raise RuntimeError(f"{len(qemus(c.base, name))} live QEMUs of {name}, or "
                               f"its run directory cannot be read")
        run = found[1]
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


# ----------------------------------------------------------------- recovery


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

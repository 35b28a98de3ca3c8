"""Network partitions for the fault campaign (``bench/chaos.py``).

:class:`Partitions` cuts a node of a loopback cluster (``haven up --storage iscsi``):
its processes move into a cgroup of their own and iptables in the one namespace drops
by cgroup.  :class:`NetnsPartitions` cuts a node of a ``haven up --netns --storage
iscsi`` cluster inside its own network namespace, as a firewall on the node would (the
LAN and the storage network are one link there, so a partition that keeps the storage
reachable accepts the storage server's address).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Protocol

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
RULE_TAG = "haven-chaos"
NODES = ("node01", "node02", "node03")


class ClusterView(Protocol):
    """What the partitions need of the campaign's cluster."""

    san: str

    def address(self, node: str) -> str: ...

    def node_pids(self, node: str) -> dict[str, int]: ...


# ----------------------------------------------------------------- partitions


class Partitions:
    """Network partitions on the loopback.

    The node's processes move into a cgroup of their own: iptables drops what that
    cgroup sends to any other address (its own and, unless the storage network is the
    one cut, the target's stay reachable) and what anyone else sends to the node's
    address.  A socket keeps the cgroup it was made in, so the connections already open
    are cut too: silently, by a rule per connection (as a pulled cable: nothing tells
    either end), or with ``reset`` by ``ss -K`` (as a peer or firewall answering RST:
    both ends see the connection fail at once)."""

    def __init__(self, c: ClusterView) -> None:
        self.c = c
        self.root = CGROUP_ROOT / f"{RULE_TAG}-{os.getpid()}"

    def cut(self, node: str, storage_only: bool, reset: bool) -> None:
        cg = self.root / node
        cg.mkdir(parents=True, exist_ok=True)
        pids = list(self.c.node_pids(node).values())
        for pid in pids:
            with contextlib.suppress(OSError):
                (cg / "cgroup.procs").write_text(str(pid))
        me = ["-m", "cgroup", "--path", str(cg.relative_to(CGROUP_ROOT))]
        addr, san = self.c.address(node), self.c.san
        rules: list[list[str]] = []
        if storage_only:
            rules.append([*me, "-d", san])
        else:
            rules += [[*me, "-d", addr, "ACCEPT"], [*me, "-d", san, "ACCEPT"], me,
                      ["-d", addr]]
        conns = _connections(pids)
        # The open ones: every connection of the node's processes with a peer that is
        # not the node itself (nor the target, unless the storage network is cut).
        cut = [(lo, re) for lo, re, peer_is_mine in conns if not peer_is_mine and (
            (re[0] == san) if storage_only else (re[0] != san and lo[0] != san))]
        if not reset:
            for (la, lp), (ra, rp) in cut:
                rules.append(["-p", "tcp", "-s", la, "--sport", str(lp), "-d", ra,
                              "--dport", str(rp)])
                rules.append(["-p", "tcp", "-s", ra, "--sport", str(rp), "-d", la,
                              "--dport", str(lp)])
        for rule in rules:
            verdict = "ACCEPT" if rule and rule[-1] == "ACCEPT" else "DROP"
            body = rule[:-1] if verdict == "ACCEPT" else rule
            subprocess.run(["iptables", "-A", "OUTPUT", *body, "-m", "comment",
                            "--comment", f"{RULE_TAG} {node}", "-j", verdict],
                           check=True, timeout=10)
        if reset:
            filters = [f"( src {la} and sport = :{lp} and dst {ra} and dport = :{rp} )"
                       for (la, lp), (ra, rp) in cut]
            filters += [f"( src {ra} and sport = :{rp} and dst {la} and dport = :{lp} )"
                        for (la, lp), (ra, rp) in cut]
            for i in range(0, len(filters), 16):
                subprocess.run(["ss", "-K", "-t", " or ".join(filters[i:i + 16])],
                               capture_output=True, timeout=10)

    def heal(self, node: str) -> None:
        p = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True,
                           timeout=10)
        for line in p.stdout.splitlines():
            if f'"{RULE_TAG} {node}"' in line:
                subprocess.run(["iptables", "-D", *_unquote(line.split()[1:])],
                               capture_output=True, timeout=10)
        cg = self.root / node
        with contextlib.suppress(OSError):
            for pid in (cg / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (CGROUP_ROOT / "cgroup.procs").write_text(pid)
            cg.rmdir()

    def heal_all(self) -> None:
        for node in NODES:
            self.heal(node)
        with contextlib.suppress(OSError):
            self.root.rmdir()


def _unquote(args: list[str]) -> list[str]:
    """``iptables -S`` quotes a comment with spaces: join it back into one argument."""
    out: list[str] = []
    buf: list[str] | None = None
    for a in args:
        if buf is not None:
            buf.append(a)
            if a.endswith('"'):
                out.append(" ".join(buf).strip('"'))
                buf = None
        elif a.startswith('"') and not (a.endswith('"') and len(a) > 1):
            buf = [a]
        else:
            out.append(a.strip('"'))
    return out


Endpoint = tuple[str, int]


def _hex_endpoint(text: str) -> Endpoint:
    ip, port = text.split(":")
    return ".".join(str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0)), int(port, 16)


def _connections(pids: list[int]) -> list[tuple[Endpoint, Endpoint, bool]]:
    """The TCP connections of ``pids``: (local, remote, whether the remote end is a
    socket of ``pids`` too)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    rows = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # not a listener
                rows.append((_hex_endpoint(f[1]), _hex_endpoint(f[2]), f[9]))
    mine = {lo for lo, _, ino in rows if ino in inodes}
    return [(lo, re, re in mine) for lo, re, ino in rows if ino in inodes]


class NetnsPartitions:
    """Network partitions of a ``--netns`` cluster, in the node's namespace
    (``havenNN``): iptables there drops what the node sends to, and receives from,
    anyone but itself (and the storage server, unless the storage network is the one
    cut).  Rules are in place before the open connections are dealt with, so those are
    cut silently (``partition``, ``storage-partition``: a pulled cable); with ``reset``
    ``ss -K`` destroys them at both ends (the node's namespace, the other nodes' and the
    root namespace, where the client and the storage server live)."""

    def __init__(self, c: ClusterView) -> None:
        self.c = c

    @staticmethod
    def _ns(node: str) -> list[str]:
        return ["ip", "netns", "exec", f"haven{int(node[-2:]):02d}"]

    def cut(self, node: str, storage_only: bool, reset: bool) -> None:
        ns, addr, san = self._ns(node), self.c.address(node), self.c.san
        tag = ["-m", "comment", "--comment", f"{RULE_TAG} {node}"]
        rules: list[list[str]] = []
        if storage_only:
            rules += [["OUTPUT", "-d", san, *tag, "-j", "DROP"],
                      ["INPUT", "-s", san, *tag, "-j", "DROP"]]
        else:
            for chain, way, lo in (("OUTPUT", "-d", "-o"), ("INPUT", "-s", "-i")):
                rules += [[chain, lo, "lo", *tag, "-j", "ACCEPT"],
                          [chain, way, san, *tag, "-j", "ACCEPT"],
                          [chain, *tag, "-j", "DROP"]]
        for rule in rules:
            subprocess.run([*ns, "iptables", "-A", *rule], check=True, timeout=10)
        if not reset:
            return
        # The node's own ends first, then the other ends: in the other nodes'
        # namespaces and in the root one (the client, the storage server).
        if storage_only:
            _kill_connections(ns, f"dst {san}")
            _kill_connections([], f"src {san} and dst {addr}")
            return
        _kill_connections(ns, f"not dst {san} and not dst {addr} and not dst 127.0.0.0/8")
        for n in NODES:
            if n != node:
                _kill_connections(self._ns(n), f"dst {addr}")
        _kill_connections([], f"dst {addr} and not src {san}")

    def heal(self, node: str) -> None:
        ns = self._ns(node)
        for chain in ("OUTPUT", "INPUT"):
            p = subprocess.run([*ns, "iptables", "-S", chain], capture_output=True,
                               text=True, timeout=10)
            for line in p.stdout.splitlines():
                if f'"{RULE_TAG} {node}"' in line:
                    subprocess.run([*ns, "iptables", "-D", *_unquote(line.split()[1:])],
                                   capture_output=True, timeout=10)

    def heal_all(self) -> None:
        for node in NODES:
            self.heal(node)



def _kill_connections(prefix: list[str], filt: str) -> None:
    """``ss -K``: destroy the TCP sockets matching ``filt`` (in the namespace ``prefix``
    enters, the root one if empty); their owners see the connection fail at once."""
    subprocess.run([*prefix, "ss", "-K", "-t", filt], capture_output=True, timeout=10)

"""Parsing of ``tgtadm --op show`` output into typed records: the targets with their
LUNs, CHAP accounts, ACL and sessions (``--mode target``), and the connections of one
target (``--mode conn``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Lun:
    """One logical unit of a target; ``size_mb`` is tgt's rounded decimal MB."""

    lun: int
    size_mb: int
    backing_path: str
    bstype: str


@dataclass(frozen=True)
class Nexus:
    """An I_T nexus (an iSCSI session): its id and the initiator name logged in."""

    nexus_id: int
    initiator: str


@dataclass(frozen=True)
class Target:
    """One target as ``--op show --mode target`` reports it."""

    tid: int
    name: str
    luns: tuple[Lun, ...] = ()
    accounts: tuple[str, ...] = ()
    acl: tuple[str, ...] = ()
    sessions: tuple[Nexus, ...] = ()

    def lun(self, number: int) -> Lun | None:
        """The LUN with that number, if the target has it."""
        return next((x for x in self.luns if x.lun == number), None)


@dataclass(frozen=True)
class Connection:
    """One connection of a session, from ``--op show --mode conn --tid N``."""

    sid: int
    cid: int
    initiator: str
    address: str


@dataclass
class _TargetBuilder:
    tid: int
    name: str
    luns: list[Lun] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)
    acl: list[str] = field(default_factory=list)
    sessions: list[Nexus] = field(default_factory=list)
    nexus: int | None = None
    lun: dict[str, str] | None = None

    def close_lun(self) -> None:
        if self.lun is not None:
            size = re.match(r"(\d+) MB", self.lun.get("Size", "0 MB"))
            self.luns.append(Lun(int(self.lun["LUN"]), int(size.group(1)) if size else 0,
                                 self.lun.get("Backing store path", ""),
                                 self.lun.get("Backing store type", "")))
        self.lun = None

    def build(self) -> Target:
        self.close_lun()
        return Target(self.tid, self.name, tuple(self.luns), tuple(self.accounts),
                      tuple(self.acl), tuple(self.sessions))


def parse_targets(text: str) -> list[Target]:
    """Parse ``tgtadm --op show --mode target``; unknown lines are skipped."""
    targets: list[Target] = []
    cur: _TargetBuilder | None = None
    section = ""
    for raw in text.splitlines():
        m = re.match(r"^Target (\d+): (\S+)", raw)
        if m:
            if cur is not None:
                targets.append(cur.build())
            cur, section = _TargetBuilder(int(m.group(1)), m.group(2)), ""
            continue
        if cur is None:
            continue
        line = raw.strip()
        if len(raw) - len(raw.lstrip()) == 4 and line.endswith(":"):
            cur.close_lun()
            section = line[:-1]
        elif section == "I_T nexus information":
            if nm := re.match(r"I_T nexus: (\d+)", line):
                cur.nexus = int(nm.group(1))
            elif (im := re.match(r"Initiator: (\S+)", line)) and cur.nexus is not None:
                cur.sessions.append(Nexus(cur.nexus, im.group(1)))
                cur.nexus = None
        elif section == "LUN information":
            if lm := re.match(r"LUN: (\d+)$", line):
                cur.close_lun()
                cur.lun = {"LUN": lm.group(1)}
            elif cur.lun is not None and ":" in line:
                # "Size: 67 MB, Block size: 512" holds two keys on one line.
                for part in line.split(", "):
                    key, _, value = part.partition(":")
                    cur.lun.setdefault(key.strip(), value.strip())
        elif section == "Account information" and line:
            cur.accounts.append(line.split()[0])
        elif section == "ACL information" and line:
            cur.acl.append(line)
    if cur is not None:
        targets.append(cur.build())
    return targets


def parse_connections(text: str) -> list[Connection]:
    """Parse ``tgtadm --op show --mode conn --tid N``."""
    conns: list[Connection] = []
    sid = cid = -1
    initiator = ""
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.match(r"Session: (\d+)", line):
            sid = int(m.group(1))
        elif m := re.match(r"Connection: (\d+)", line):
            cid = int(m.group(1))
        elif m := re.match(r"Initiator: (\S+)", line):
            initiator = m.group(1)
        elif m := re.match(r"IP Address: (\S+)", line):
            conns.append(Connection(sid, cid, initiator, m.group(1)))
    return conns

"""HA simulator scenarios: the data a scenario file holds, and the result of a run.

A scenario (``tests/ha_scenarios/*.json``) is one JSON object::

    {"description": "one sentence",
     "nodes": [{"name": "node01", "memory": 4096, "candidate": true, "vm": true}, ...],
     "instances": [{"name": "vm1", "template": "drbd", "primary": "node02",
                    "secondary": "node03", "memory": 512, "ha": "", "priority": 0,
                    "max_restart": 0, "max_relocate": 0, "admin": "up"}, ...],
     "settings": {"recovery_time": 1.5, "duration": 40},  # default: last fault + 20 s
     "timeline": [{"at": 5, "kill": "node02"}, {"at": 30, "boot": "node02"}, ...],
     "expect": ["node02 unreachable", "node02 fenced", "vm1 recovered on node03"],
     "never": ["vm1 started on node02"],
     "by": {"vm1 recovered on node03": 15},
     "final": {"vm1": "node03"},
     "why_down": {"vm2": "its replica was stale"}}

The first node that is a master candidate is the master at the start.  ``expect`` is
matched as an ordered subsequence of the run's event log, each expected line being a
prefix of the log line it matches (so a refusal can be named by its first words);
``never`` lines may not prefix any log line (a started VM logs ``"vm1 started on
node03"``, and ``"vm1 answering on node03"`` once its guest booted, ``boot_time``
later); ``by`` gives the virtual second by which
a line (a prefix, as in ``expect``) must have appeared.  The initial placement is not
logged: the log starts with the first change.  ``final`` maps each instance to the node
it runs on at the end, or ``"down"`` (then ``why_down`` must say why, for the reader).

Timeline entries (``at`` in virtual seconds; one action key each), see
:meth:`haven.sim.hasim.Simulation.apply`: ``kill``, ``boot``, ``freeze``, ``resume``
(node names); ``partition`` (a list of node groups; nodes left out form one more group);
``heal``; ``clock`` (``{"node", "jump"}``: a step of that node's wall clock);
``user_job`` (``{"instance", "duration"}``: a user job holding the instance's lock);
``set_instance`` (``{"name", ...Instance fields}``, e.g. ``"ha": "off"``,
``"admin_state": "down"``); ``set_node`` (``{"name", "offline"|"drained": bool}``);
``replica`` (``{"instance", "node", "state"}``); ``crash`` (an instance: its VM dies
once); ``poweroff`` (an instance: its guest powers itself off, ``USER_down``);
``break`` (``{"instance", "node"}``: every start there dies after a second);
``rpc_fail`` / ``rpc_ok`` (a node whose daemon's API fails every call);
``during_recovery`` (``{"instance": "vm1", "kill": "node01"}``: that entry, here a
kill of ``node01``, is injected halfway through the instance's next recovery job;
``"target"`` names the job's target node);
``fence_fail`` (a node: its fence agent fails); ``no_voting`` (a node:
``gnt-cluster master-failover --no-voting`` run there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haven.master import ha_loop

ACTIONS = frozenset({"kill", "boot", "freeze", "resume", "partition", "heal", "clock",
                     "user_job", "set_instance", "set_node", "replica", "crash", "poweroff",
                     "break", "rpc_fail", "rpc_ok", "fence_fail", "during_recovery", "no_voting"})


@dataclass(frozen=True)
class NodeSpec:
    name: str
    memory: int = 4096  # MiB the node can give to VMs
    candidate: bool = True  # master candidate (an etcd member)
    vm: bool = True  # vm_capable (a witness is a candidate that is not)
    offline: bool = False
    drained: bool = False
    clock: float = 0.0  # wall clock offset, seconds
    fence_agent: str = ""  # e.g. "haven-local": the master may turn it off


@dataclass(frozen=True)
class InstSpec:
    name: str
    template: str
    primary: str
    secondary: str = ""
    memory: int = 512
    ha: str = ""
    priority: int = 0
    max_restart: int = 0
    max_relocate: int = 0
    admin: str = "up"
    disks: int = 1


@dataclass(frozen=True)
class Fault:
    at: float
    action: str
    arg: Any


@dataclass(frozen=True)
class Settings:
    """Timings in seconds (issue 11's): lease TTL and margin, HA grace and cycle (the
    HA loop's own), agent cycle, recovery job and VM boot, replication's outdate and
    resync delays."""

    duration: float = 40.0
    ttl: int = 5
    margin: float = 1.0
    renew: float = 1.0
    grace: float = ha_loop.GRACE
    ha_period: float = ha_loop.PERIOD
    agent_period: float = 2.0
    role_period: float = 1.0
    recovery_time: float = 1.5
    boot_time: float = 3.0
    outdate_delay: float = 0.5
    resync_time: float = 2.0
    wake_latency: float = 0.01
    fence_time: float = 1.0  # a fence agent's run


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    nodes: tuple[NodeSpec, ...]
    instances: tuple[InstSpec, ...]
    timeline: tuple[Fault, ...]
    settings: Settings = field(default_factory=Settings)
    expect: tuple[str, ...] = ()
    never: tuple[str, ...] = ()
    final: dict[str, str] = field(default_factory=dict)
    why_down: dict[str, str] = field(default_factory=dict)
    by: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> Scenario:
        nodes = tuple(NodeSpec(**n) for n in data["nodes"])
        insts = tuple(InstSpec(**i) for i in data.get("instances", ()))
        faults = []
        for entry in data.get("timeline", ()):
            keys = [k for k in entry if k != "at"]
            if len(keys) != 1 or keys[0] not in ACTIONS:
                raise ValueError(f"scenario {name}: timeline entry {entry} needs exactly one "
                                 f"action among {', '.join(sorted(ACTIONS))}")
            faults.append(Fault(float(entry["at"]), keys[0], entry[keys[0]]))
        names = {n.name for n in nodes}
        for i in insts:
            for n in (i.primary, i.secondary):
                if n and n not in names:
                    raise ValueError(f"scenario {name}: instance {i.name} names unknown "
                                     f"node {n}")
        settings = dict(data.get("settings", {}))
        # By default a run lasts until things settle: 20 s after the last fault.
        settings.setdefault("duration", max([30.0, *(f.at + 20.0 for f in faults)]))
        return cls(name, str(data.get("description", "")), nodes, insts,
                   tuple(sorted(faults, key=lambda f: f.at)), Settings(**settings),
                   tuple(data.get("expect", ())),
                   tuple(data.get("never", ())), dict(data.get("final", {})),
                   dict(data.get("why_down", {})),
                   {k: float(v) for k, v in data.get("by", {}).items()})


def load(path: Path) -> Scenario:
    return Scenario.from_json(path.stem, json.loads(path.read_text()))


@dataclass
class Result:
    """What a run produced: the event log (``"t=12.3 line"`` in :attr:`timed`), the
    invariant violations, and where each instance runs at the end."""

    log: list[str] = field(default_factory=list)
    timed: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    placement: dict[str, str] = field(default_factory=dict)

    def missing(self, expect: tuple[str, ...]) -> list[str]:
        """The expected lines not found, in order, as a subsequence of the log."""
        pos = 0
        for i, want in enumerate(expect):
            while pos < len(self.log) and not self.log[pos].startswith(want):
                pos += 1
            if pos == len(self.log):
                return list(expect[i:])
            pos += 1
        return []

    def forbidden(self, never: tuple[str, ...]) -> list[str]:
        return [line for line in self.log if any(line.startswith(n) for n in never)]

    def late(self, by: dict[str, float]) -> list[str]:
        """The ``by`` lines that did not appear by their time."""
        times: dict[str, float] = {}
        for entry in self.timed:
            t, _, line = entry.strip().partition(" ")
            for want in by:
                if want not in times and line.startswith(want):
                    times[want] = float(t)
        return [f"{want!r} by {t:g} s (seen at {times[want]:g} s)" if want in times
                else f"{want!r} by {t:g} s (never seen)"
                for want, t in sorted(by.items()) if times.get(want, float("inf")) > t]

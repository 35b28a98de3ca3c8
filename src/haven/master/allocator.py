"""Where an instance runs: a pure placement model with Ganeti's N+1 rule.

No I/O here: callers build a :class:`Model` (``iallocator.read_model`` from the store,
``ha._target`` from its view) and ask it.

The N+1 rule (Ganeti's ``gnt-cluster verify`` ENODEN1, hail's global N+1 check): for
every node, the instances that would have to move if it failed must fit in the free
memory of the others.

- A ``drbd`` instance can only go to its secondary, so each (secondary, primary) pair
  is checked on its own, as Ganeti's ``_VerifyNPlusOneMemory`` does.
- A shared-storage instance (``sharedfile``, ``diskless``, ``ext``) can go to any other
  live, online, undrained vm-capable node; they are packed largest first onto the node
  with the most room left, as the HA manager would place them one by one.
- Instances on node-local storage cannot move and only take memory.

Two deliberate differences from Ganeti: only instances whose admin state is ``up``
count (Haven's HA manager recovers nothing else, and a node's free memory already
leaves room for an ``up`` instance that is not running yet; Ganeti's verify counts
down ones too), and the check covers shared storage (Ganeti's verify has a FIXME for
it; hail's global N+1 check covers it).

Allocation (:func:`place`): hail 3.0 with its default capacity checks only returns a
placement that keeps the cluster globally N+1 redundant and fails (``FailN1``)
otherwise (``Cluster.tryAlloc`` -> ``collectionToSolution FailN1 allocGlobalN1``).
Haven's built-in allocator prefers such a node too but, when none exists, falls back
to the best node that fits and returns a warning: refusing every new instance of a
small or full cluster would be worse than saying it loses its N+1 margin (which
``gnt-cluster verify`` then reports as an error).  ``-I hail`` keeps Ganeti's refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from haven.errors import InsufficientResources
from haven.model.ha import SHARED_TEMPLATES

#: Ganeti's ENODEN1 text (lib/cmdlib/cluster/verify.py, _VerifyNPlusOneMemory), its
#: spelling included: monitoring checks match on it.
N1_TEXT = "not enough memory to accomodate instance failovers should node {lost} fail"


@dataclass(frozen=True)
class NodeCap:
    """What placement knows about a node (memory in MiB).

    ``memory_free``: what it can still give (its facts' free memory, minus instances
    that should run there but do not yet).  ``alive``: its daemon holds its lease (the
    HA manager: and it is ``online``).
    """

    name: str
    memory_total: int = 0
    memory_free: int = 0
    vm_capable: bool = True
    offline: bool = False
    drained: bool = False
    alive: bool = True

    @property
    def usable(self) -> bool:
        """It can run an instance now (a drained node still takes failovers)."""
        return self.alive and self.vm_capable and not self.offline

    @property
    def allocatable(self) -> bool:
        """It can take a new or moved instance of its own choosing (not drained)."""
        return self.usable and not self.drained


@dataclass(frozen=True)
class InstLoad:
    """An instance as placement sees it: where it runs and what it takes."""

    name: str
    primary: str
    memory: int
    up: bool = True
    disk_template: str = "sharedfile"
    secondary: str = ""


@dataclass(frozen=True)
class Model:
    """The nodes and the instances on them; immutable (:meth:`placed` copies)."""

    nodes: Mapping[str, NodeCap]
    instances: tuple[InstLoad, ...] = ()

    @classmethod
    def of(cls, nodes: Iterable[NodeCap], instances: Iterable[InstLoad] = ()) -> Model:
        return cls({n.name: n for n in nodes}, tuple(instances))

    @cached_property
    def _up_on(self) -> dict[str, list[InstLoad]]:
        out: dict[str, list[InstLoad]] = {}
        for i in self.instances:
            if i.up:
                out.setdefault(i.primary, []).append(i)
        return out

    def up_on(self, node: str) -> list[InstLoad]:
        """The instances meant to run on ``node`` (admin state ``up``)."""
        return self._up_on.get(node, [])

    def count(self, node: str) -> int:
        """Instances meant to run on ``node``."""
        return len(self.up_on(node))

    def placed(self, inst: InstLoad) -> Model:
        """This model with ``inst`` started on its primary (whose free memory shrinks)."""
        nodes = dict(self.nodes)
        n = nodes[inst.primary]
        nodes[inst.primary] = NodeCap(n.name, n.memory_total, n.memory_free - inst.memory,
                                      n.vm_capable, n.offline, n.drained, n.alive)
        return Model(nodes, (*self.instances, inst))

    def free(self) -> dict[str, int]:
        return {name: n.memory_free for name, n in self.nodes.items()}


@dataclass(frozen=True)
class Placement:
    """:func:`place`'s answer: the node, and a warning when it breaks N+1 ("" if not)."""

    node: str
    warning: str = ""


def lost_failures(model: Model, lost: str) -> list[str]:
    """What could not be restarted elsewhere should ``lost`` fail, one sentence each."""
    moving = model.up_on(lost)
    if not moving:
        return []
    room = {n.name: n.memory_free for n in model.nodes.values()
            if n.name != lost and n.usable}
    out = []
    need: dict[str, int] = {}
    for inst in moving:
        if inst.disk_template == "drbd" and inst.secondary:
            need[inst.secondary] = need.get(inst.secondary, 0) + inst.memory
    for sec, mib in sorted(need.items()):
        if sec not in room:
            continue  # an unusable secondary: its own alarm and verify error, not N+1
        if room[sec] < mib:
            out.append(f"node {sec}: {N1_TEXT.format(lost=lost)} ({mib}MiB needed, "
                       f"{room[sec]}MiB available)")
        room[sec] = max(0, room[sec] - mib)
    hosts = {n: mib for n, mib in room.items() if model.nodes[n].allocatable}
    unplaced: list[InstLoad] = []
    for inst in sorted((i for i in moving if i.disk_template in SHARED_TEMPLATES),
                       key=lambda i: (-i.memory, i.name)):
        best = max(sorted(hosts), key=lambda n: hosts[n], default="")
        if best and hosts[best] >= inst.memory:
            hosts[best] -= inst.memory
        else:
            unplaced.append(inst)
    if unplaced:
        mib = sum(i.memory for i in unplaced)
        names = ", ".join(i.name for i in unplaced)
        most = max(hosts.values(), default=0)
        out.append(f"cluster: {N1_TEXT.format(lost=lost)} ({mib}MiB needed by {names}, "
                   f"{most}MiB available on the roomiest other node)")
    return out


def n1_failures(model: Model) -> list[str]:
    """Ganeti-worded sentences, one per failure the cluster could not absorb: per
    (secondary, primary) pair for ``drbd``, per lost node for shared storage.  Offline
    nodes are skipped, as Ganeti does (their facts are not trusted)."""
    out: list[str] = []
    for name in sorted(model.nodes):
        if not model.nodes[name].offline:
            out.extend(lost_failures(model, name))
    return out


def _failing_nodes(model: Model) -> set[str]:
    return {n for n in model.nodes if not model.nodes[n].offline and lost_failures(model, n)}


def place(model: Model, memory: int, *, name: str = "the new instance",
          disk_template: str = "sharedfile", exclude: Iterable[str] = (),
          prefer: str | None = None) -> Placement:
    """The node for an instance of ``memory`` MiB (a new one, or one moving off the
    nodes in ``exclude``).

    Candidates: live, online, undrained, vm-capable nodes not excluded, with the memory
    free.  Order: adds no N+1 failure (a node whose loss the cluster could absorb before
    stays absorbable), then ``prefer``, then the most memory left, the fewest
    instances, the name.  Raises :class:`InsufficientResources` when nothing fits.
    """
    skip = set(exclude)
    usable = [n for n in model.nodes.values() if n.allocatable and n.name not in skip]
    if not usable:
        raise InsufficientResources(f"No node can take instance {name}: every node is "
                                    f"down, offline, drained or not vm_capable.")
    fits = [n for n in usable if n.memory_free >= memory]
    if not fits:
        best = max(usable, key=lambda n: (n.memory_free, n.name))
        raise InsufficientResources(
            f"Instance {name} needs {memory} MiB of memory; the most any node has free "
            f"is {best.memory_free} MiB (on {best.name}); lower -B memory.")
    before = _failing_nodes(model)

    def score(n: NodeCap) -> tuple[int, bool, int, int, str]:
        after = model.placed(InstLoad(name, n.name, memory, True, disk_template))
        added = len(_failing_nodes(after) - before)
        return (added, n.name != prefer, -(n.memory_free - memory), model.count(n.name),
                n.name)

    best = min(fits, key=score)
    if score(best)[0] == 0:
        return Placement(best.name)
    after = model.placed(InstLoad(name, best.name, memory, True, disk_template))
    old = set(n1_failures(model))
    new = [s for s in n1_failures(after) if s not in old]
    return Placement(best.name, f"no node keeps the cluster N+1 redundant with {name} "
                                f"({memory} MiB) on it; placed on {best.name}, the best "
                                f"that fits: {'; '.join(new)}")


def pick_node(model: Model, memory: int, exclude: Iterable[str] = (),
              prefer: str | None = None, *, name: str = "the new instance",
              disk_template: str = "sharedfile") -> str:
    """:func:`place`'s node, dropping its warning (use :func:`place` to report it)."""
    return place(model, memory, name=name, disk_template=disk_template, exclude=exclude,
                 prefer=prefer).node


def recovery_target(model: Model, inst_name: str, memory: int, dead_node: str,
                    planned: Mapping[str, int]) -> str:
    """Where the HA manager restarts shared-storage instance ``inst_name`` of
    ``dead_node``: the live, online, undrained vm-capable node other than the dead one
    with the most room (free memory minus ``planned``, MiB already promised to other
    recoveries), ties to the fewest instances, then the name; "" if none has
    ``memory`` MiB of room.  No N+1 preference: a node is already lost."""
    def room(n: NodeCap) -> int:
        return n.memory_free - planned.get(n.name, 0)

    options = [n for n in model.nodes.values()
               if n.allocatable and n.name != dead_node and room(n) >= memory]
    if not options:
        return ""
    return min(options, key=lambda n: (-room(n), model.count(n.name), n.name)).name

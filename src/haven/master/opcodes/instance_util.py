"""What instance opcodes share: reading and writing instances, node calls, checks."""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from haven.errors import (
    ExistsError,
    HavenError,
    InsufficientResources,
    InvalidInput,
    NotFoundError,
    OpPrereqError,
)
from haven.master import state
from haven.master.lu import LogicalUnit
from haven.model.instance import Instance
from haven.model.keys import INSTANCES, Keys
from haven.model.node import Node

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9-]+)*$")
UNITS = {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024}
HYPERVISORS = ("kvm", "fake")


def parse_size(value: Any, what: str) -> int:
    """Ganeti's sizes: a number of MiB, or with a suffix m, g, t (``10g``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mgtMGT]?)[bB]?\s*", str(value))
        if m is None:
            raise InvalidInput(f"Invalid size {value!r} for {what}; use a number of MiB or "
                               f"a number with a suffix m, g or t (e.g. 1g).")
        size = int(float(m.group(1)) * UNITS[m.group(2).lower()])
    if size <= 0:
        raise InvalidInput(f"Size {value!r} for {what} must be positive.")
    return size


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(f"Instance name {name!r} is not valid; use a host name (lower "
                           f"case letters, digits and dashes).")


def read(lu: LogicalUnit, name: str) -> tuple[Instance, int]:
    kv = lu.c.store.get(Keys.instance(name))
    if kv is None:
        raise NotFoundError(f"Instance {name!r} does not exist; see gnt-instance list.")
    return Instance.from_json(json.loads(kv.value)), kv.mod_revision


def all_instances(lu: LogicalUnit) -> list[Instance]:
    kvs, _ = lu.c.store.list(INSTANCES)
    return [Instance.from_json(json.loads(kv.value)) for kv in kvs]


def write(lu: LogicalUnit, inst: Instance, rev: int) -> int:
    new_rev = lu.c.store.cas(Keys.instance(inst.name), state.dumps(inst.to_json()), rev,
                             guard=lu.require_guard())
    if new_rev is None:
        raise OpPrereqError(f"Instance {inst.name} changed while this job ran; retry.")
    return new_rev


def refuse_if_migrating(lu: LogicalUnit, name: str, what: str) -> None:
    """An interrupted migration (its record still in the store) may have a copy on
    each side; only its cleanup, which the master queues by itself, may decide which
    one lives.  Moving the instance first would leave the cleanup acting on a record
    that no longer describes it (found by the fault campaign: a failover raced by the
    cleanup of the migration a killed master left, two running copies for 5.8 s)."""
    kv = lu.c.store.get(Keys.migration(name))
    if kv is None:
        return
    step = json.loads(kv.value).get("step", "")
    raise OpPrereqError(f"A migration of {name} was interrupted ({step}) and is not "
                        f"settled yet; the master finishes or rolls it back by itself "
                        f"(or run gnt-instance migrate --cleanup {name}), then retry "
                        f"{what}.")


MIGRATION_CLEANUP_WAIT = 60.0  # seconds an opcode waits for a cleanup to settle it


def wait_for_migration_cleanup(lu: LogicalUnit, name: str) -> None:
    """Before taking the instance's lock: wait (bounded) for the cleanup of an
    interrupted migration, which the master queues by itself after a master change, so
    that a user's failover typed right after it runs on a settled instance rather than
    being refused (:func:`refuse_if_migrating` still refuses if it did not settle)."""
    deadline = time.monotonic() + MIGRATION_CLEANUP_WAIT
    told = False
    while lu.c.store.get(Keys.migration(name)) is not None and time.monotonic() < deadline:
        if not told:
            lu.feedback(f"- INFO: waiting for the master to finish or roll back the "
                        f"interrupted migration of {name}")
            told = True
        time.sleep(0.5)


def node_call(lu: LogicalUnit, node: str, action: str, name: str,
              body: dict[str, Any] | None = None, timeout: float = 120.0) -> Any:
    n = state.node(lu.c.store, node)
    return lu.c.rpc.call(n.primary_ip, n.api_port, "POST",
                         f"/haven/node/instance/{name}/{action}", body or {}, timeout=timeout)


def forget_on(lu: LogicalUnit, name: str, nodes: tuple[str, ...]) -> None:
    """Remove the logs and keys instance ``name`` left on ``nodes`` (it was removed or
    renamed); a node that cannot is only warned about: what stays there is clutter."""
    for node in nodes:
        try:
            node_call(lu, node, "forget", name)
        except HavenError as exc:
            lu.feedback(f"Warning: {node} kept the logs of {name}: {exc.message}")


def usable_node(lu: LogicalUnit, name: str, for_what: str) -> Node:
    node = lu.node(name)
    if node.offline:
        raise OpPrereqError(f"Node {name} is offline; {for_what} needs an online node "
                            f"(gnt-node modify -O no {name}).")
    if not node.vm_capable:
        raise OpPrereqError(f"Node {name} is not vm_capable; pick another node.")
    if name not in state.alive(lu.c.store):
        raise OpPrereqError(f"Node {name} is down (its daemon holds no lease); start it or "
                            f"pick another node.")
    return node


def free_memory(lu: LogicalUnit, exclude: str | None = None) -> dict[str, int]:
    """MiB each node with facts can still give: what it reports free, minus instances
    placed on it that should run but do not yet (the placement model's figure)."""
    from haven.master import iallocator

    facts = state.facts(lu.c.store)
    free = iallocator.read_model(lu.c.store, exclude).free()
    return {name: mib for name, mib in free.items() if name in facts}


def check_memory(lu: LogicalUnit, node: str, memory: int, name: str) -> None:
    free = free_memory(lu, exclude=name)
    if free.get(node, 0) < memory:
        best = max(free.items(), key=lambda kv: kv[1], default=(None, 0))
        raise InsufficientResources(
            f"Node {node} has {free.get(node, 0)} MiB of free memory, instance {name} needs "
            f"{memory} MiB; lower -B memory or pick another node (most free: {best[0]}, "
            f"{best[1]} MiB).")


def allocate(lu: LogicalUnit, memory: int, name: str,
             disk_template: str = "sharedfile") -> str:
    """Without ``-n``: the built-in allocator's node (haven.master.allocator.place):
    live, online, undrained and vm-capable with the memory free, one that keeps the
    cluster N+1 redundant first, then the most free memory and fewest instances; a
    placement that breaks N+1 because nothing else fits is made with a warning."""
    from haven.master import allocator, iallocator

    where = allocator.place(iallocator.read_model(lu.c.store, exclude=name), memory,
                            name=name, disk_template=disk_template)
    if where.warning:
        lu.feedback(f"Warning: {where.warning}")
    return where.node


def new_mac(lu: LogicalUnit, prefix: str, taken: set[str]) -> str:
    for _ in range(100):
        mac = prefix + ":" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken:
            return mac
    raise InsufficientResources("Could not find a free MAC address; change the cluster's "
                                "mac prefix.")


def macs_in_use(lu: LogicalUnit, exclude: str | None = None) -> set[str]:
    return {n.mac for i in all_instances(lu) if i.name != exclude for n in i.nics}


def check_unique_name(lu: LogicalUnit, name: str) -> None:
    if lu.c.store.get(Keys.instance(name)) is not None:
        raise ExistsError(f"Instance name {name} is already in use; pick another name or "
                          f"remove the existing instance first.")


def secondary_for(lu: LogicalUnit, pnode: str, snode: str, name: str, size: int) -> str:
    """The secondary node of a new ``drbd`` instance: the one given, checked, or the
    live node other than ``pnode`` with the most free storage."""
    if snode:
        if snode == pnode:
            raise OpPrereqError(f"The primary and secondary node of {name} are both "
                                f"{pnode}; give two different nodes (-n {pnode}:OTHER).")
        iu_node = usable_node(lu, snode, f"the replica of {name}")
        sfacts = state.facts(lu.c.store).get(iu_node.name)
        if sfacts is not None and sfacts.storage_free < size:
            raise InsufficientResources(
                f"Node {snode} has {sfacts.storage_free} MiB of free storage; the replica of "
                f"{name} needs {size} MiB. Free space there or pick another secondary.")
        return snode
    alive = set(state.alive(lu.c.store))
    facts = state.facts(lu.c.store)
    options = [n.name for n in state.nodes(lu.c.store)
               if n.name != pnode and n.vm_capable and not n.offline and not n.drained
               and n.name in alive and facts.get(n.name) is not None
               and facts[n.name].storage_free >= size]
    if not options:
        raise OpPrereqError(f"Instance {name} uses the drbd template, which needs a second "
                            f"node for its replica, and no other node can take it; add one "
                            f"with gnt-node add.")
    return max(options, key=lambda n: (facts[n].storage_free, n))


def replication_port(lu: LogicalUnit) -> int:
    """A cluster-unique TCP port for a new instance's replication export."""
    from haven.master import jobqueue

    return 11000 + jobqueue.next_id(lu.c.store, "replication-port") % 20000


def init_replicas(lu: LogicalUnit, inst: Instance) -> None:
    """A new replicated instance: the primary's copy is the truth, the secondary has
    nothing yet (its initial sync starts with the VM)."""
    from haven.model.replica import INCONSISTENT, UP_TO_DATE, DiskReplica, Replicas

    n = range(len(inst.disks))
    reps = Replicas(inst.name, inst.generation, {
        inst.primary_node: {i: DiskReplica(UP_TO_DATE) for i in n},
        inst.secondary_nodes[0]: {i: DiskReplica(INCONSISTENT, 0.0) for i in n}})
    lu.c.store.put(Keys.replicas(inst.name), state.dumps(reps.to_json()),
                   guard=lu.require_guard())


def other_node(lu: LogicalUnit, inst: Instance) -> str:
    """The live, online, undrained vm-capable node other than the instance's primary with
    the most free memory (a migration or move target when none is named)."""
    alive = set(state.alive(lu.c.store))
    free = free_memory(lu, exclude=inst.name)
    options = [n.name for n in state.nodes(lu.c.store)
               if n.name != inst.primary_node and n.vm_capable and not n.offline
               and not n.drained and n.name in alive]
    if not options:
        raise OpPrereqError(f"No other node can take {inst.name}: every other node is "
                            f"down, offline, drained or not vm_capable.")
    return max(options, key=lambda n: (free.get(n, 0), n))

"""The HA simulator's faults: what each timeline entry does to the simulated cluster
(the entries are listed in :mod:`haven.sim.hasim_model`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from haven.model.instance import Instance
from haven.model.keys import ALIVE, HANDOVER, MASTER, Keys
from haven.model.node import Node
from haven.model.replica import UP_TO_DATE, DiskReplica, Replicas
from haven.sim.hasim_model import Fault
from haven.sim.hasim_world import FROZEN, UP, SimNode

if TYPE_CHECKING:
    from haven.sim.hasim import Simulation


def apply(sim: Simulation, f: Fault) -> None:
    """Carry out one timeline entry on ``sim``."""
    arg = f.arg
    sim.log(f"! {f.action} {_describe(arg)}".rstrip())
    node = sim.nodes.get(arg) if isinstance(arg, str) else None
    if f.action == "kill" and node is not None:
        sim.kill(node)
    elif f.action == "boot" and node is not None and not node.running:
        sim.boot(node)
    elif f.action == "freeze" and node is not None and node.state == UP:
        node.state = FROZEN
        sim.update_reachability()
    elif f.action == "resume" and node is not None and node.state == FROZEN:
        node.state = UP
        sim.update_reachability()
        sim.fence_tick(node, node.fencer)  # the fencer's recv times out first
        sim.supervise(node)
        sim.wake(f"agent/{node.name}", lambda: sim.agent_cycle(node))
    elif f.action == "partition":
        groups = [frozenset(g) for g in arg]
        rest = frozenset(sim.nodes) - frozenset().union(*groups)
        sim.groups = groups + ([rest] if rest else [])
        sim.update_reachability()
    elif f.action == "heal":
        sim.groups = [frozenset(sim.nodes)]
        sim.update_reachability()
    elif f.action == "clock":
        sim.nodes[arg["node"]].wall += float(arg["jump"])
    elif f.action == "user_job":
        sim.master.user_job(arg["instance"], float(arg.get("duration", 100)))
    elif f.action == "set_instance":
        _modify(sim, Keys.instance(arg["name"]), Instance, arg)
    elif f.action == "set_node":
        _modify(sim, Keys.node(arg["name"]), Node, arg)
    elif f.action == "replica":
        _set_replica(sim, arg["instance"], arg["node"], arg["state"])
    elif f.action == "crash":
        for n in sim.nodes.values():
            if arg in n.vms:
                sim.crash(n, arg, n.vms[arg].pid)
    elif f.action == "poweroff":
        for n in sim.nodes.values():
            if arg in n.vms and n.running:
                n.vms[arg].status = "shutdown"
                sim.log(f"{arg} powered off on {n.name}")
    elif f.action == "break":
        sim.broken.add((arg["instance"], arg["node"]))
    elif f.action in ("rpc_fail", "rpc_ok") and node is not None:
        node.rpc_fail = f.action == "rpc_fail"
    elif f.action == "fence_fail" and node is not None:
        sim.fence_fail.add(node.name)
    elif f.action == "during_recovery":
        action = next(k for k in arg if k != "instance")
        sim.during[arg["instance"]] = (action, arg[action])
    elif f.action == "no_voting" and node is not None:
        _no_voting(sim, node)


def _modify(sim: Simulation, key: str, cls: type[Instance] | type[Node], arg: dict[str, object]
            ) -> None:
    kv = sim.truth.get(key)
    assert kv is not None, key
    obj = cls.from_json(json.loads(kv.value))
    changes = {k: v for k, v in arg.items() if k != "name"}
    sim.truth.put(key, json.dumps(obj.modified(sim.clock(), **changes).to_json())
                   .encode())

def _set_replica(sim: Simulation, name: str, node: str, state: str) -> None:
    ikv = sim.truth.get(Keys.instance(name))
    rkv = sim.truth.get(Keys.replicas(name))
    assert ikv is not None and rkv is not None
    inst = Instance.from_json(json.loads(ikv.value))
    reps = Replicas.from_json(json.loads(rkv.value))
    new = reps.with_node(node, {i: DiskReplica(state, 0.0) for i in
                                range(len(inst.disks))})
    sim.current[(name, node)] = state == UP_TO_DATE
    sim.truth.put(Keys.replicas(name), json.dumps(new.to_json()).encode())

def _no_voting(sim: Simulation, node: SimNode) -> None:
    """``gnt-cluster master-failover --no-voting --yes-do-it`` on ``node``
    (``daemon/membership.py``): its member alone votes, the others' leases end,
    they are ``manual`` for the HA manager, the old master key goes."""
    from haven.model import ha as H

    sim.voters = frozenset({node.name})
    sim.update_reachability()
    st = sim.truth
    for kv in st.list(ALIVE)[0]:
        if kv.key != Keys.alive(node.name) and kv.lease:
            st.lease_revoke(kv.lease)
    now = sim.wall(node.name)
    for other in sim.nodes:
        if other != node.name:
            rec = H.NodeHA(other, H.MANUAL, now, now, "declared gone by --no-voting")
            st.put(H.node_key(other), json.dumps(rec.to_json()).encode())
    st.delete(MASTER)
    st.delete(HANDOVER)


def _describe(arg: object) -> str:
    if arg is True:
        return ""
    if isinstance(arg, list):
        return " | ".join(",".join(g) for g in arg)
    if isinstance(arg, dict):
        return " ".join(f"{k}={v}" for k, v in arg.items())
    return str(arg)

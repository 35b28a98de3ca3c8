"""Node-wide moves: ``gnt-node migrate``, ``gnt-node failover``, ``gnt-node evacuate``
and ``haven node maintenance`` (everything off, the master role away, offline).

Each instance moves in its own job; its log (steps, memory copy progress, resync)
prints as it runs, each line after the instance's name, then one summary line each."""

from __future__ import annotations

from typing import Any

from haven.cli.client import Client
from haven.cli.common import submit_and_wait
from haven.errors import HavenError, NotFoundError


def primaries(c: Client, node: str) -> list[dict[str, Any]]:
    names = {n["id"] for n in c.get("/2/nodes")}
    if node not in names:
        raise NotFoundError(f"Node {node!r} is not part of the cluster; see gnt-node list.")
    return [i for i in c.get("/2/instances?bulk=1") if i["pnode"] == node]


# Templates whose disks other nodes reach (shared) or hold (replicated).
MOVABLE = ("drbd", "sharedfile", "diskless", "ext")


def move_off(c: Client, inst: dict[str, Any], target: str = "",
             ignore_consistency: bool = False) -> str:
    """One instance off its primary, the least disruptive way its disks allow."""
    name, tmpl = inst["name"], inst["disk_template"]
    running = inst["status"] == "running"
    if running and tmpl in MOVABLE and inst["hypervisor"] == "kvm":
        op = {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": name, "target_node": target}
        how = "migrated"
    elif tmpl in MOVABLE:
        op = {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": name, "target_node": target,
              "ignore_consistency": ignore_consistency}
        how = "failed over"
    else:
        op = {"OP_ID": "OP_INSTANCE_MOVE", "instance_name": name, "target_node": target}
        how = "moved (copied)"
    res = submit_and_wait(c, [op], prefix=f"{name}: ") or {}
    if how == "migrated":
        how = f"migrated {res.get('mode', 'live')}"
    return f"{name}: {how} to {res.get('to', target or '?')}"


def migrate_node(node: str, target: str = "") -> list[str]:
    c = Client.from_config()
    done = []
    for inst in primaries(c, node):
        if inst["status"] != "running":
            continue
        res = submit_and_wait(c, [{"OP_ID": "OP_INSTANCE_MIGRATE",
                                   "instance_name": inst["name"], "target_node": target}],
                              prefix=f"{inst['name']}: ")
        done.append(f"{inst['name']}: migrated {res.get('mode', 'live')} to {res['to']} (downtime "
                    f"{res.get('downtime_ms')} ms)")
    return done


def failover_node(node: str, ignore_consistency: bool = False) -> list[str]:
    c = Client.from_config()
    done = []
    for inst in primaries(c, node):
        res = submit_and_wait(c, [{"OP_ID": "OP_INSTANCE_FAILOVER",
                                   "instance_name": inst["name"],
                                   "ignore_consistency": ignore_consistency}],
                              prefix=f"{inst['name']}: ")
        done.append(f"{inst['name']}: failed over to {res['to']}")
    return done


def evacuate(node: str, primary: bool, secondary: bool, target: str = "") -> list[str]:
    c = Client.from_config()
    done = []
    if primary:
        for inst in primaries(c, node):
            done.append(move_off(c, inst, target))
    if secondary:
        for inst in c.get("/2/instances?bulk=1"):
            if node in inst["snodes"]:
                new = target or _other(c, inst)
                submit_and_wait(c, [{"OP_ID": "OP_INSTANCE_REPLACE_DISKS",
                                     "instance_name": inst["name"],
                                     "mode": "replace_new_secondary",
                                     "remote_node": new}], prefix=f"{inst['name']}: ")
                done.append(f"{inst['name']}: secondary moved to {new}")
    return done


def _other(c: Client, inst: dict[str, Any]) -> str:
    nodes = [n for n in c.get("/2/nodes?bulk=1") if n["alive"] and not n["offline"]
             and not n["drained"] and n["vm_capable"]
             and n["name"] not in (inst["pnode"], *inst["snodes"])]
    if not nodes:
        raise HavenError(f"No node can take the replica of {inst['name']}; add a node.")
    return str(max(nodes, key=lambda n: (n.get("dfree") or 0))["name"])


def maintenance(node: str, end: bool = False) -> list[str]:
    """Start (or end) planned maintenance of ``node``."""
    from haven.cli.client import Client as C

    c = C.from_config()
    steps = []
    if end:
        submit_and_wait(c, [{"OP_ID": "OP_NODE_SET_PARAMS", "node_name": node,
                             "offline": False, "drained": False}], quiet=True)
        info = c.get(f"/2/nodes/{node}")
        if info["master_capable"] and info.get("etcd_member_id"):
            submit_and_wait(c, [{"OP_ID": "OP_NODE_SET_PARAMS", "node_name": node,
                                 "master_candidate": True}], quiet=True)
        steps.append(f"{node}: back online" + (", master candidate again"
                                                if info["master_capable"] else ""))
        return steps
    # The master role first: a master cannot be drained or taken offline.
    if c.get("/haven/master") == node:
        cands = [n for n in c.get("/2/nodes?bulk=1") if n["name"] != node and n["alive"]
                 and n["master_candidate"] and not n["offline"]]
        if not cands:
            raise HavenError(f"Node {node} is the master and no other master candidate is "
                             f"alive; cannot hand the role over.")
        target = cands[0]
        t = Client.for_address(target["pip"], target.get("api_port") or 5080)
        t.post("/haven/master-failover", {"no_voting": False}, timeout=120)
        c = C.from_config()
        c.endpoints = [e for e in c.endpoints if not e.startswith(target["pip"] + ":")]
        c.endpoints.insert(0, f"{target['pip']}:{target.get('api_port') or 5080}")
        steps.append(f"master role handed to {target['name']}")
    submit_and_wait(c, [{"OP_ID": "OP_NODE_SET_PARAMS", "node_name": node,
                         "drained": True}], quiet=True)
    steps.append(f"{node}: drained (nothing new lands there)")
    for inst in primaries(c, node):
        steps.append(move_off(c, inst))
    submit_and_wait(c, [{"OP_ID": "OP_NODE_SET_PARAMS", "node_name": node,
                         "offline": True}], quiet=True)
    steps.append(f"{node}: offline; it can be shut down")
    return steps

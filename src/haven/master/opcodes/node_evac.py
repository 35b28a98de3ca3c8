"""Node-wide moves as Ganeti's LUs do them: ``OP_NODE_MIGRATE`` and
``OP_NODE_EVACUATE`` decide the moves and submit one job per instance; their result is
``{"jobs": [[true, job_id], ...]}`` (Ganeti's ``ResultWithJobs``), which RAPI clients
follow (``node-migrate-reqv1``, ``node-evac-res1``).

The choice of move per instance is the one ``gnt-node evacuate`` makes on the client
(haven.cli.evacuate): live migration when the disks allow it and the instance runs,
failover when they allow it but it is stopped, a copy (``OP_INSTANCE_MOVE``) otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from haven.errors import InsufficientResources, InvalidInput, OpPrereqError
from haven.master import jobqueue, state
from haven.master.lu import REQUIRED, LogicalUnit, register
from haven.model.instance import Instance
from haven.model.keys import INSTANCES
from haven.store.base import Store

SHARED_OR_REPLICATED = ("drbd", "sharedfile", "diskless", "ext")
EVAC_PRI = "primary-only"  # Ganeti's constants.NODE_EVAC_*
EVAC_SEC = "secondary-only"
EVAC_ALL = "all"


def _instances(store: Store) -> list[Instance]:
    kvs, _ = store.list(INSTANCES)
    return [Instance.from_json(json.loads(kv.value)) for kv in kvs]


def _running(store: Store, inst: Instance) -> bool:
    obs = state.observed(store, inst.name)
    return obs is not None and obs.state == "running" and obs.node == inst.primary_node


def move_op(inst: Instance, running: bool, target: str) -> dict[str, Any]:
    """The opcode that takes ``inst`` off its primary node, least disruptive first."""
    name = inst.name
    if running and inst.disk_template in SHARED_OR_REPLICATED and inst.hypervisor == "kvm":
        return {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": name,
                "target_node": target}
    if inst.disk_template in SHARED_OR_REPLICATED:
        return {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": name,
                "target_node": target}
    return {"OP_ID": "OP_INSTANCE_MOVE", "instance_name": name, "target_node": target}


class _NodeJobsLU(LogicalUnit):
    def lock_names(self) -> list[str]:
        return [f"node/{self.op['node_name']}"]

    def check_prereq(self) -> None:
        self.target = self.node(self.op["node_name"])
        want = self.op.get("target_node") or self.op.get("remote_node")
        if want:
            if want == self.target.name:
                raise OpPrereqError(f"Node {want} is the node being emptied; choose "
                                    f"another target.")
            self.node(want)

    def submit_each(self, ops: list[dict[str, Any]]) -> dict[str, Any]:
        if self.op.get("dry_run"):
            return {"jobs": []}
        jobs = []
        for op in ops:
            job_id = jobqueue.submit(self.c.store, [op], self.c.clock())
            self.feedback(f"* submitted job {job_id}: {op['OP_ID']} {op['instance_name']}")
            jobs.append([True, job_id])
        return {"jobs": jobs}


@register
class NodeMigrate(_NodeJobsLU):
    """``gnt-node migrate``: every running primary instance, live unless told."""

    OP_ID = "OP_NODE_MIGRATE"
    PARAMS = {"node_name": (str, REQUIRED), "mode": (str, ""),
              "live": ((bool, type(None)), None), "target_node": (str, ""),
              "iallocator": (str, ""), "allow_runtime_changes": (bool, True),
              "ignore_ipolicy": (bool, False)}

    def check_arguments(self) -> None:
        super().check_arguments()
        if self.op["mode"] not in ("", "live", "non-live"):
            raise InvalidInput(f"Migration mode {self.op['mode']!r} is not valid; use live "
                               f"or non-live.")

    def exec(self) -> Any:
        store = self.c.store
        ops = []
        for inst in _instances(store):
            if inst.primary_node != self.target.name or not _running(store, inst):
                continue
            op: dict[str, Any] = {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": inst.name,
                                  "target_node": self.op["target_node"]}
            if self.op["mode"]:
                op["mode"] = self.op["mode"]
            if self.op["live"] is not None:
                op["live"] = self.op["live"]
            ops.append(op)
        return self.submit_each(ops)


@register
class NodeEvacuate(_NodeJobsLU):
    """``gnt-node evacuate``: primaries moved off (``primary-only``), replicas moved to
    another node (``secondary-only``), or both (``all``)."""

    OP_ID = "OP_NODE_EVACUATE"
    PARAMS = {"node_name": (str, REQUIRED), "mode": (str, EVAC_ALL),
              "remote_node": ((str, type(None)), ""), "iallocator": ((str, type(None)), ""),
              "early_release": (bool, False), "ignore_soft_errors": (bool, False)}

    def check_arguments(self) -> None:
        super().check_arguments()
        if self.op["mode"] not in (EVAC_PRI, EVAC_SEC, EVAC_ALL):
            raise InvalidInput(f"Evacuation mode {self.op['mode']!r} is not valid; use "
                               f"{EVAC_PRI}, {EVAC_SEC} or {EVAC_ALL}.")
        self.op["remote_node"] = self.op["remote_node"] or ""
        self.op["iallocator"] = self.op["iallocator"] or ""

    def exec(self) -> Any:
        store = self.c.store
        node = self.target.name
        remote = self.op["remote_node"]
        ops = []
        for inst in _instances(store):
            if inst.primary_node == node and self.op["mode"] in (EVAC_PRI, EVAC_ALL):
                ops.append(move_op(inst, _running(store, inst), remote))
            elif node in inst.secondary_nodes and self.op["mode"] in (EVAC_SEC, EVAC_ALL):
                ops.append({"OP_ID": "OP_INSTANCE_REPLACE_DISKS", "instance_name": inst.name,
                            "mode": "replace_new_secondary",
                            "remote_node": remote or self._new_secondary(inst),
                            "early_release": self.op["early_release"]})
        return self.submit_each(ops)

    def _new_secondary(self, inst: Instance) -> str:
        store = self.c.store
        alive = state.alive(store)
        facts = state.facts(store)
        cands = [n for n in state.nodes(store) if n.name in alive and not n.offline
                 and not n.drained and n.vm_capable
                 and n.name not in (inst.primary_node, *inst.secondary_nodes)]
        if not cands:
            raise InsufficientResources(f"No node can take the replica of {inst.name}; add "
                                        f"a node or give remote_node.")
        best = max(cands, key=lambda n: facts[n.name].storage_free
                   if n.name in facts else 0)
        return best.name


__all__ = ["NodeEvacuate", "NodeMigrate", "move_op"]

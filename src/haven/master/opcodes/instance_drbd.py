"""Opcodes for replicated (``drbd``) and shared disks: failover, activate-disks,
deactivate-disks, replace-disks, and the cluster's verify-disks."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from haven.errors import HavenError, InvalidInput, OpPrereqError
from haven.master import state
from haven.master.lu import REQUIRED, LogicalUnit, register
from haven.master.opcodes import instance_util as iu
from haven.master.opcodes.instance import InstanceLU, emit
from haven.model.ha import SHARED_TEMPLATES
from haven.model.instance import Instance
from haven.model.keys import REPLICAS, Keys
from haven.model.replica import INCONSISTENT, OUTDATED, UP_TO_DATE, DiskReplica, Replicas

NAME = (str, REQUIRED)


def read_replicas(lu: LogicalUnit, name: str) -> tuple[Replicas | None, int]:
    kv = lu.c.store.get(Keys.replicas(name))
    if kv is None:
        return None, 0
    return Replicas.from_json(json.loads(kv.value)), kv.mod_revision


@register
class InstanceFailover(InstanceLU):
    """Stop on the primary if it answers, start on the secondary (drbd: only if its
    replica is UpToDate at the current generation, unless forced), swap the roles."""

    OP_ID = "OP_INSTANCE_FAILOVER"
    PARAMS = {"instance_name": NAME, "ignore_consistency": (bool, False),
              "shutdown_timeout": (float, 120.0), "target_node": (str, ""),
              "iallocator": (str, ""), "cleanup": (bool, False),
              # Set by the HA manager: the node it recovers from was fenced (its VMs
              # killed); the job takes the instance's lock even from a stuck user job.
              "ha_recovery": (bool, False), "from_node": (str, "")}

    @property
    def steals_locks(self) -> bool:
        return bool(self.op["ha_recovery"])

    def before_lock(self) -> None:
        if not self.op["ha_recovery"]:  # the HA manager waits for the cleanup itself
            iu.wait_for_migration_cleanup(self, self.op["instance_name"])

    def check_prereq(self) -> None:
        self.load()
        inst = self.inst
        if self.op["from_node"] and inst.primary_node != self.op["from_node"]:
            raise OpPrereqError(f"Instance {inst.name} is no longer on "
                                f"{self.op['from_node']} (its primary node is "
                                f"{inst.primary_node}); nothing to recover.")
        iu.refuse_if_migrating(self, inst.name, "the failover")
        if inst.disk_template == "drbd":
            self.target = inst.secondary_nodes[0]
            if self.op["target_node"] and self.op["target_node"] != self.target:
                raise OpPrereqError(f"Instance {inst.name} can only fail over to its "
                                    f"secondary {self.target}, which holds its replica.")
        elif inst.disk_template in SHARED_TEMPLATES:
            from haven.master import iallocator as ia

            self.target = self.op["target_node"] or ia.move_target(self, inst,
                                                                   self.op["iallocator"])
            if self.target == inst.primary_node:
                raise OpPrereqError(f"Node {self.target} already is the primary node of "
                                    f"{inst.name}; name another with -n.")
        else:
            raise OpPrereqError(f"Instance {inst.name} has {inst.disk_template} disks, "
                                f"which live on {inst.primary_node} only; use gnt-instance "
                                f"move.")
        iu.usable_node(self, self.target, f"failing {inst.name} over")
        self.alive = set(state.alive(self.c.store))
        if inst.disk_template == "drbd":
            reps, _ = read_replicas(self, inst.name)
            self.consistent = reps is not None and reps.node_up_to_date(
                self.target, len(inst.disks), inst.generation)
            if not self.consistent and not self.op["ignore_consistency"]:
                what = ", ".join(reps.degraded(len(inst.disks))) if reps else "unknown"
                raise OpPrereqError(
                    f"The replica of {inst.name} on {self.target} is not UpToDate ({what}); "
                    f"failing over to it could lose acknowledged writes. Wait for the "
                    f"resync (gnt-cluster verify-disks) or force it with "
                    f"--ignore-consistency.")
        if inst.admin_state == "up":
            iu.check_memory(self, self.target, inst.memory, inst.name)

    def exec(self) -> Any:
        inst, old, new = self.inst, self.inst.primary_node, self.target
        if self.op["ha_recovery"]:
            self.feedback(f"* {old} was fenced (its lease expired, its fencer killed its "
                          f"VMs): recovering {inst.name} on {new}")
        elif old in self.alive:
            self.feedback(f"* shutting down {inst.name} on {old}")
            iu.node_call(self, old, "stop", inst.name,
                         {"timeout": self.op["shutdown_timeout"]},
                         timeout=self.op["shutdown_timeout"] + 30)
        else:
            self.feedback(f"* {old} is down (its lease expired): not stopping there")
        if inst.disk_template == "drbd":
            self.feedback(f"* releasing the replica on {new}")
            iu.node_call(self, new, "unexport", inst.name)
        if inst.disk_template == "ext" and (self.op["ha_recovery"] or old not in self.alive):
            self._fence_storage(inst, old, new)
        moved = inst.modified(self.c.clock(), primary_node=new,
                              secondary_nodes=(old,) if inst.disk_template == "drbd" else (),
                              generation=inst.generation + 1)
        self.save(moved)
        self.c.store.delete(Keys.observed(inst.name), guard=self.require_guard())
        if inst.disk_template == "drbd":
            self._swap_replicas(moved, old, new)
        if self.op["ignore_consistency"] and inst.disk_template == "drbd" and \
                not self.consistent:
            emit(self, "forced", inst.name, f"failed over to {new} with "
                 f"--ignore-consistency although its replica was not UpToDate", "warning")
        if moved.admin_state == "up":
            self.feedback(f"* starting {inst.name} on {new}")
            iu.node_call(self, new, "start", inst.name,
                         {"generation": moved.generation,
                          "force": self.op["ignore_consistency"]})
        emit(self, "failed-over", inst.name, f"failed over from {old} to {new}")
        return {"instance": inst.name, "from": old, "to": new,
                "generation": moved.generation}

    def _fence_storage(self, inst: Instance, old: str, new: str) -> None:
        """One writer, always: a node that was not stopped cleanly (dead, frozen, cut
        off) is refused by the storage itself before the VM starts on ``new``; a frozen
        QEMU that wakes up there then gets I/O errors, never a second write."""
        self.feedback(f"* fencing {old} off the disks of {inst.name} at the storage")
        res = iu.node_call(self, new, "fence-disks", inst.name, {"node": old}, timeout=120)
        done = str((res or {}).get("fenced") or "")
        self.feedback(f"  {done}" if done else
                      f"  the disks' provider has no fence script: {old}'s own fencing "
                      f"(its lease, its fence agent) keeps it from writing")

    def _swap_replicas(self, moved: Instance, old: str, new: str) -> None:
        n = range(len(moved.disks))
        reps, rev = read_replicas(self, moved.name)
        forced = self.op["ignore_consistency"] and not self.consistent
        states = {new: {i: DiskReplica(UP_TO_DATE, message="forced" if forced else "")
                        for i in n},
                  # The old primary resyncs from the new one when it can.
                  old: {i: DiskReplica(OUTDATED, 0.0, message="former primary") for i in n}}
        new_reps = Replicas(moved.name, moved.generation, states)
        if self.c.store.cas(Keys.replicas(moved.name), state.dumps(new_reps.to_json()), rev,
                            guard=self.require_guard()) is None:
            raise OpPrereqError(f"Replica states of {moved.name} changed meanwhile; retry.")
        _ = reps


@register
class InstanceActivateDisks(InstanceLU):
    OP_ID = "OP_INSTANCE_ACTIVATE_DISKS"
    RESUMABLE = True
    PARAMS = {"instance_name": NAME, "ignore_size": (bool, False),
              "wait_for_sync": (bool, False)}

    def check_prereq(self) -> None:
        self.load()
        iu.usable_node(self, self.inst.primary_node, f"activating the disks of "
                       f"{self.inst.name}")

    def exec(self) -> Any:
        inst = self.inst
        for snode in inst.secondary_nodes:
            iu.node_call(self, snode, "export", inst.name)
        node = state.node(self.c.store, inst.primary_node)
        vols = self.c.rpc.call(node.primary_ip, node.api_port, "GET", "/haven/node/volumes")
        paths = [v["phys"] for v in vols if v["instance"] == inst.name]
        return [[inst.primary_node, f"disk/{i}", p] for i, p in enumerate(sorted(paths))]


@register
class InstanceDeactivateDisks(InstanceLU):
    OP_ID = "OP_INSTANCE_DEACTIVATE_DISKS"
    RESUMABLE = True
    PARAMS = {"instance_name": NAME, "force": (bool, False)}

    def check_prereq(self) -> None:
        self.load()
        if not self.op["force"]:
            self.require_stopped("deactivating its disks")

    def exec(self) -> Any:
        for snode in self.inst.secondary_nodes:
            if snode in state.alive(self.c.store):
                iu.node_call(self, snode, "unexport", self.inst.name)
        return {"instance": self.inst.name, "deactivated": True}


@register
class InstanceReplaceDisks(InstanceLU):
    """``-s``: resync the secondary from scratch; ``-n NODE``: a new secondary, synced
    while the instance runs; ``-a``: whatever is degraded.  ``-p`` is refused: fail
    over, then replace the (new) secondary."""

    OP_ID = "OP_INSTANCE_REPLACE_DISKS"
    PARAMS = {"instance_name": NAME, "mode": (str, REQUIRED), "remote_node": (str, ""),
              "disks": (list, []), "early_release": (bool, False),
              "ignore_ipolicy": (bool, False), "iallocator": (str, "")}

    def check_arguments(self) -> None:
        super().check_arguments()
        if self.op["mode"] not in ("replace_on_secondary", "replace_on_primary",
                                   "replace_new_secondary", "replace_auto"):
            raise InvalidInput(f"Replace mode {self.op['mode']!r} is not valid.")
        if self.op["mode"] == "replace_new_secondary" and not self.op["remote_node"]:
            raise InvalidInput("A new secondary needs -n NODE.")

    def check_prereq(self) -> None:
        self.load()
        inst = self.inst
        if inst.disk_template != "drbd":
            raise OpPrereqError(f"Instance {inst.name} has {inst.disk_template} disks; only "
                                f"drbd instances have replicas to replace.")
        if self.op["mode"] == "replace_on_primary":
            raise OpPrereqError(f"Replacing the primary's replica of {inst.name} in place is "
                                f"not supported; fail it over (gnt-instance failover) and "
                                f"replace the secondary (-s).")
        new = self.op["remote_node"]
        if new:
            if new in (inst.primary_node, *inst.secondary_nodes):
                raise OpPrereqError(f"Node {new} already holds a replica of {inst.name}.")
            iu.secondary_for(self, inst.primary_node, new, inst.name,
                             sum(d.size for d in inst.disks))

    def exec(self) -> Any:
        inst = self.inst
        old = inst.secondary_nodes[0]
        new = self.op["remote_node"] or old
        n = range(len(inst.disks))
        if self.op["mode"] == "replace_auto":
            reps, _ = read_replicas(self, inst.name)
            if reps is not None and reps.node_up_to_date(old, len(inst.disks),
                                                         inst.generation):
                return {"instance": inst.name, "replaced": False, "reason": "not degraded"}
        running = self.is_running()
        if running:
            self.feedback(f"* stopping the mirror of {inst.name}")
            iu.node_call(self, inst.primary_node, "unprotect", inst.name)
        if new != old:
            self.feedback(f"* creating the replica(s) on {new}")
            iu.node_call(self, new, "create-disks", inst.name)
            self.save(inst.modified(self.c.clock(), secondary_nodes=(new,)))
        reps = Replicas(inst.name, self.inst.generation, {
            inst.primary_node: {i: DiskReplica(UP_TO_DATE) for i in n},
            new: {i: DiskReplica(INCONSISTENT, 0.0, message="full resync") for i in n}})
        self.c.store.put(Keys.replicas(inst.name), state.dumps(reps.to_json()),
                         guard=self.require_guard())
        if new != old and old in state.alive(self.c.store):
            try:
                iu.node_call(self, old, "unexport", inst.name)
                iu.node_call(self, old, "remove-disks", inst.name,
                             {"disks": [d.__dict__ for d in inst.disks]})
            except HavenError as exc:
                self.feedback(f"Warning: could not clean the old replica on {old}: "
                              f"{exc.message}")
        emit(self, "replaced-disks", inst.name, f"secondary replica now on {new}"
             + (" (full resync started)" if running else ""))
        return {"instance": inst.name, "secondary": new, "replaced": True}


@register
class ClusterVerifyDisks(LogicalUnit):
    """``gnt-cluster verify-disks``: the degraded replicas; the agents resync them as
    soon as both nodes are up (this opcode only reports)."""

    OP_ID = "OP_CLUSTER_VERIFY_DISKS"
    RESUMABLE = True

    def exec(self) -> Any:
        kvs, _ = self.c.store.list(REPLICAS)
        insts = {i.name: i for i in iu.all_instances(self)}
        alive = set(state.alive(self.c.store))
        out = []
        for kv in kvs:
            reps = Replicas.from_json(json.loads(kv.value))
            inst = insts.get(reps.instance)
            if inst is None:
                continue
            problems = reps.degraded(len(inst.disks))
            if reps.generation != inst.generation:
                problems.append(f"states are from generation {reps.generation}, the "
                                f"instance is at {inst.generation}")
            if problems:
                down = [n for n in (inst.primary_node, *inst.secondary_nodes)
                        if n not in alive]
                out.append({"instance": inst.name, "problems": problems,
                            "nodes_down": down})
        return out


__all__ = ["ClusterVerifyDisks", "replace"]

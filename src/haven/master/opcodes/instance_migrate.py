"""``gnt-instance migrate``: move a running instance's memory to another node.

``drbd`` instances go to their secondary (RAM only: the destination already holds the
data; the mirror is ended and the export stopped inside QEMU's pre-switchover window,
so the destination's image never has two writers); ``sharedfile``/``diskless`` ones
to any node.  Every step is recorded in ``migrations/<instance>``; a failure leaves
exactly one running copy, and ``--cleanup`` (or ``gnt-cluster verify``'s advice)
finishes or rolls back what a dead master left.
"""

from __future__ import annotations

import json
from typing import Any

from haven.errors import HavenError, OpExecError, OpPrereqError
from haven.master import state
from haven.master.lu import REQUIRED, register
from haven.master.opcodes import instance_util as iu
from haven.master.opcodes.instance import InstanceLU, emit
from haven.master.opcodes.instance_drbd import read_replicas
from haven.model.instance import Instance
from haven.model.keys import Keys
from haven.model.replica import INCONSISTENT, UP_TO_DATE, DiskReplica, Replicas

NAME = (str, REQUIRED)
MIGRATIONS = "migrations/"


def migration_key(name: str) -> str:
    return MIGRATIONS + name


@register
class InstanceMigrate(InstanceLU):
    OP_ID = "OP_INSTANCE_MIGRATE"
    PARAMS = {"instance_name": NAME, "mode": (str, "live"), "live": ((bool, type(None)), None),
              "cleanup": (bool, False), "allow_failover": (bool, False),
              "target_node": (str, ""), "iallocator": (str, ""),
              "ignore_ipolicy": (bool, False), "ignore_hvversions": (bool, False)}

    def check_arguments(self) -> None:
        super().check_arguments()
        if self.op["live"] is False:
            self.op["mode"] = "non-live"
        if self.op["mode"] not in ("live", "non-live"):
            raise OpPrereqError(f"Migration mode {self.op['mode']!r} is not valid; use live "
                                f"or non-live.")

    def check_prereq(self) -> None:
        self.load()
        inst = self.inst
        self.record = self._record()
        if self.op["cleanup"]:
            return
        if self.record is not None:
            raise OpPrereqError(f"A migration of {inst.name} was interrupted "
                                f"({self.record.get('step')}); finish it first with "
                                f"gnt-instance migrate --cleanup {inst.name}.")
        if inst.disk_template == "file":
            raise OpPrereqError(f"The disks of {inst.name} are files on {inst.primary_node} "
                                f"only; a running instance cannot migrate, use gnt-instance "
                                f"move (it stops the instance).")
        if inst.admin_state != "up" or not self.is_running():
            raise OpPrereqError(f"Instance {inst.name} is not running; there is nothing to "
                                f"migrate (use gnt-instance failover or modify "
                                f"--new-primary).")
        if inst.hypervisor != "kvm":
            raise OpPrereqError(f"Instance {inst.name} uses hypervisor {inst.hypervisor}, "
                                f"which cannot migrate.")
        if inst.disk_template == "drbd":
            self.target = inst.secondary_nodes[0]
            if self.op["target_node"] and self.op["target_node"] != self.target:
                raise OpPrereqError(f"Instance {inst.name} can only migrate to its secondary "
                                    f"{self.target}, which holds its replica.")
        else:
            self.target = self.op["target_node"] or iu.other_node(self, inst)
        if self.target == inst.primary_node:
            raise OpPrereqError(f"Instance {inst.name} already runs on {self.target}; name "
                                f"another node with -n.")
        iu.usable_node(self, self.target, f"migrating {inst.name}")
        iu.check_memory(self, self.target, inst.memory, inst.name)
        self.failover = False
        if inst.disk_template == "drbd":
            reps, _ = read_replicas(self, inst.name)
            if reps is None or not reps.node_up_to_date(self.target, len(inst.disks),
                                                        inst.generation):
                if not self.op["allow_failover"]:
                    what = ", ".join(reps.degraded(len(inst.disks))) if reps else "unknown"
                    raise OpPrereqError(
                        f"The replica of {inst.name} on {self.target} is not UpToDate "
                        f"({what}); wait for the resync (gnt-cluster verify-disks), or use "
                        f"--allow-failover to fail over instead if it is safe.")
                self.failover = True

    def _record(self) -> dict[str, Any] | None:
        kv = self.c.store.get(migration_key(self.op["instance_name"]))
        return json.loads(kv.value) if kv else None

    def _save_record(self, **data: Any) -> None:
        self.c.store.put(migration_key(self.inst.name), state.dumps(data),
                         guard=self.require_guard())

    def exec(self) -> Any:
        if self.op["cleanup"]:
            return self._cleanup()
        if self.failover:
            raise OpExecError(f"The replica on {self.target} is not UpToDate: run "
                              f"gnt-instance failover --ignore-consistency {self.inst.name} "
                              f"if losing its latest writes is acceptable.")
        inst, source, target = self.inst, self.inst.primary_node, self.target
        self._save_record(step="accept", source=source, target=target,
                          generation=inst.generation)
        self.feedback(f"* starting the destination on {target}")
        uri = iu.node_call(self, target, "migrate-accept", inst.name)["uri"]
        self._save_record(step="migrate", source=source, target=target, uri=uri,
                          generation=inst.generation)
        if self.op["mode"] == "non-live":
            iu.node_call(self, source, "freeze", inst.name)
        self.feedback(f"* migrating {inst.name} from {source} to {target}")
        try:
            stats = iu.node_call(self, source, "migrate-send", inst.name,
                                 {"uri": uri, "target": target}, timeout=600)
        except HavenError as exc:
            self.feedback(f"* migration failed ({exc.message}); {inst.name} keeps running "
                          f"on {source}")
            try:
                iu.node_call(self, target, "migrate-abort", inst.name)
                self.c.store.delete(migration_key(inst.name), guard=self.require_guard())
            except HavenError as exc2:
                self.feedback(f"Could not clean up {target}: {exc2.message}; run gnt-instance "
                              f"migrate --cleanup {inst.name}")
            raise OpExecError(f"Migration of {inst.name} to {target} failed: {exc.message} "
                              f"It still runs on {source}.") from exc
        try:
            iu.node_call(self, target, "migrate-wait", inst.name, timeout=60)
        except HavenError as exc:
            # Everything was sent but the destination did not take over: it dies, the
            # source (paused, postmigrate) runs again; still exactly one copy.
            self.feedback(f"* the destination did not take over ({exc.message}); "
                          f"resuming {inst.name} on {source}")
            iu.node_call(self, target, "migrate-abort", inst.name)
            iu.node_call(self, source, "migrate-resume", inst.name)
            self.c.store.delete(migration_key(inst.name), guard=self.require_guard())
            raise OpExecError(f"Migration of {inst.name} to {target} failed at the "
                              f"switchover: {exc.message} It runs on {source} again.") \
                from exc
        self._switch(source, target)
        self.feedback(f"* migrated in {stats.get('total_ms')} ms, downtime "
                      f"{stats.get('downtime_ms')} ms")
        emit(self, "migrated", inst.name, f"migrated live from {source} to {target} "
             f"(total {stats.get('total_ms')} ms, downtime {stats.get('downtime_ms')} ms)")
        return {"instance": inst.name, "from": source, "to": target, **stats}

    def _switch(self, source: str, target: str) -> None:
        """The destination runs: make it the primary and end the source process."""
        inst = self.inst
        moved = inst.modified(self.c.clock(), primary_node=target,
                              secondary_nodes=(source,) if inst.disk_template == "drbd"
                              else (), generation=inst.generation + 1)
        self.save(moved)
        self.c.store.delete(Keys.observed(inst.name), guard=self.require_guard())
        if inst.disk_template == "drbd":
            n = range(len(inst.disks))
            reps = Replicas(inst.name, moved.generation, {
                target: {i: DiskReplica(UP_TO_DATE) for i in n},
                source: {i: DiskReplica(INCONSISTENT, 0.0, message="resync after migration")
                         for i in n}})
            self.c.store.put(Keys.replicas(inst.name), state.dumps(reps.to_json()),
                             guard=self.require_guard())
        self._save_record(step="finish", source=source, target=target,
                          generation=moved.generation)
        try:
            iu.node_call(self, source, "migrate-finish", inst.name)
        except HavenError as exc:
            self.feedback(f"Warning: could not end the source process on {source} "
                          f"({exc.message}); its agent stops it (wrong node)")
        self.c.store.delete(migration_key(inst.name), guard=self.require_guard())

    def _cleanup(self) -> Any:
        """Finish or roll back an interrupted migration from where the VMs really are."""
        rec = self.record
        inst = self.inst
        if rec is None:
            return {"instance": inst.name, "cleanup": "nothing to clean up"}
        source, target = str(rec["source"]), str(rec["target"])
        where = {}
        for node in (source, target):
            try:
                n = state.node(self.c.store, node)
                vms = self.c.rpc.call(n.primary_ip, n.api_port, "GET", "/haven/node/vms")
                where[node] = vms.get(inst.name, {}).get("status")
            except HavenError:
                where[node] = "node unreachable"
        if rec.get("step") == "finish" or (where.get(target) == "running"
                                           and where.get(source) != "running"):
            if inst.primary_node != target:
                self._switch(source, target)
            else:
                self.c.store.delete(migration_key(inst.name), guard=self.require_guard())
            outcome = f"finished: {inst.name} runs on {target}"
        else:
            if where.get(target) not in (None, "node unreachable"):
                iu.node_call(self, target, "migrate-abort", inst.name)
            self.c.store.delete(migration_key(inst.name), guard=self.require_guard())
            outcome = f"rolled back: {inst.name} stays on {source} ({where.get(source)})"
        emit(self, "migration-cleanup", inst.name, outcome)
        return {"instance": inst.name, "cleanup": outcome, "seen": where}


def migrations_in_progress(store: Any) -> dict[str, dict[str, Any]]:
    kvs, _ = store.list(MIGRATIONS)
    return {kv.key[len(MIGRATIONS):]: json.loads(kv.value) for kv in kvs}


__all__ = ["Instance", "InstanceMigrate", "migrations_in_progress"]


@register
class InstanceMove(InstanceLU):
    """``gnt-instance move``: a ``file`` instance to another node by copying its disks
    (the instance is stopped meanwhile and started again on the target)."""

    OP_ID = "OP_INSTANCE_MOVE"
    PARAMS = {"instance_name": NAME, "target_node": (str, ""),
              "shutdown_timeout": (float, 120.0), "ignore_consistency": (bool, False),
              "ignore_ipolicy": (bool, False)}

    def check_prereq(self) -> None:
        self.load()
        inst = self.inst
        if inst.disk_template != "file":
            raise OpPrereqError(f"Instance {inst.name} has {inst.disk_template} disks; move "
                                f"is for file disks (use migrate or failover).")
        self.target = self.op["target_node"] or iu.other_node(self, inst)
        if self.target == inst.primary_node:
            raise OpPrereqError(f"Instance {inst.name} already is on {self.target}.")
        iu.usable_node(self, self.target, f"moving {inst.name}")
        if inst.admin_state == "up":
            iu.check_memory(self, self.target, inst.memory, inst.name)

    def exec(self) -> Any:
        inst, source, target = self.inst, self.inst.primary_node, self.target
        was_up = inst.admin_state == "up"
        if source in state.alive(self.c.store):
            self.feedback(f"* shutting down {inst.name} on {source}")
            iu.node_call(self, source, "stop", inst.name,
                         {"timeout": self.op["shutdown_timeout"]},
                         timeout=self.op["shutdown_timeout"] + 30)
        try:
            self.feedback(f"* copying {len(inst.disks)} disk(s) from {source} to {target}")
            iu.node_call(self, target, "create-disks", inst.name)
            copied = iu.node_call(self, target, "pull-disks", inst.name, {"source": source},
                                  timeout=3600)
        except HavenError:
            try:
                iu.node_call(self, target, "remove-disks", inst.name)
            finally:
                if was_up:
                    iu.node_call(self, source, "start", inst.name,
                                 {"generation": inst.generation})
            raise
        moved = inst.modified(self.c.clock(), primary_node=target,
                              generation=inst.generation + 1)
        self.save(moved)
        self.c.store.delete(Keys.observed(inst.name), guard=self.require_guard())
        try:
            iu.node_call(self, source, "remove-disks", inst.name)
        except HavenError as exc:
            self.feedback(f"Warning: the old disks on {source} remain ({exc.message})")
        if was_up:
            self.feedback(f"* starting {inst.name} on {target}")
            iu.node_call(self, target, "start", inst.name, {"generation": moved.generation})
        emit(self, "moved", inst.name, f"moved from {source} to {target} ({copied} bytes)")
        return {"instance": inst.name, "from": source, "to": target, "bytes": copied}

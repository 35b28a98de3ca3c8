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
import re
import time
from typing import Any

from haven.errors import HavenError, OpExecError, OpPrereqError
from haven.master import state
from haven.master.lu import REQUIRED, register
from haven.master.opcodes import instance_util as iu
from haven.master.opcodes.instance import InstanceLU, emit
from haven.master.opcodes.instance_drbd import read_replicas
from haven.master.opcodes.migration_watch import call_watching
from haven.model.instance import Instance
from haven.model.keys import MIGRATIONS, Keys
from haven.model.node import NodeFacts
from haven.model.replica import INCONSISTENT, UP_TO_DATE, DiskReplica, Replicas

NAME = (str, REQUIRED)
SYNC_WAIT = 60.0  # seconds a migration waits for its target replica to be in sync


@register
class InstanceMigrate(InstanceLU):
    OP_ID = "OP_INSTANCE_MIGRATE"
    PARAMS = {"instance_name": NAME, "mode": (str, ""), "live": ((bool, type(None)), None),
              "cleanup": (bool, False), "allow_failover": (bool, False),
              "target_node": (str, ""), "iallocator": (str, ""),
              "ignore_ipolicy": (bool, False), "ignore_hvversions": (bool, False)}

    def check_arguments(self) -> None:
        super().check_arguments()
        if self.op["live"] is not None:
            self.op["mode"] = "live" if self.op["live"] else "non-live"
        if self.op["mode"] not in ("", "live", "non-live"):
            raise OpPrereqError(f"Migration mode {self.op['mode']!r} is not valid; use live "
                                f"or non-live.")

    def before_lock(self) -> None:
        """A secondary that has just come back is resynced by the primary's agent,
        which leaves a locked instance alone: wait for it here, before taking the
        lock, as Ganeti's migration waits for DRBD to sync (bounded; the prerequisite
        check then refuses with the state it finds)."""
        if self.op["cleanup"]:
            return
        name = self.op["instance_name"]
        # Real time, not the context's clock: this sleeps.
        deadline = last_line = time.monotonic()
        deadline += SYNC_WAIT
        while True:
            kv = self.c.store.get(Keys.instance(name))
            if kv is None:
                return
            inst = Instance.from_json(json.loads(kv.value))
            if inst.disk_template != "drbd" or not inst.secondary_nodes:
                return
            target = self.op["target_node"] or inst.secondary_nodes[0]
            if target != inst.secondary_nodes[0] or target not in state.alive(self.c.store):
                return  # refused at once by the prerequisite check, or nothing to wait for
            reps, _ = read_replicas(self, name)
            if reps is not None and reps.node_up_to_date(target, len(inst.disks),
                                                         inst.generation):
                return
            now = time.monotonic()
            if now > deadline:
                return
            if now >= last_line:
                what = ", ".join(reps.degraded(len(inst.disks))) if reps else "no state"
                self.feedback(f"- INFO: waiting for the replica on {target} to be in "
                              f"sync ({what})")
                last_line = now + 5.0
            time.sleep(0.5)

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
            from haven.master import iallocator as ia

            self.target = self.op["target_node"] or ia.move_target(self, inst,
                                                                   self.op["iallocator"])
        if self.target == inst.primary_node:
            raise OpPrereqError(f"Instance {inst.name} already runs on {self.target}; name "
                                f"another node with -n.")
        iu.usable_node(self, self.target, f"migrating {inst.name}")
        iu.check_memory(self, self.target, inst.memory, inst.name)
        # Read once for both decisions below: every node's facts, and the accelerator
        # the instance runs under now.
        facts = state.facts(self.c.store)
        obs = state.observed(self.c.store, inst.name)
        accel = obs.accel if obs else ""
        check_compatible(self, inst, self.target, facts, accel)
        self.mode, self.mode_note = migration_mode(self, inst, facts, accel)
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
        kv = self.c.store.get(Keys.migration(self.op["instance_name"]))
        return json.loads(kv.value) if kv else None

    def _save_record(self, **data: Any) -> None:
        self.c.store.put(Keys.migration(self.inst.name), state.dumps(data),
                         guard=self.require_guard())

    def exec(self) -> Any:
        if self.op["cleanup"]:
            return self._cleanup()
        if self.failover:
            raise OpExecError(f"The replica on {self.target} is not UpToDate: run "
                              f"gnt-instance failover --ignore-consistency {self.inst.name} "
                              f"if losing its latest writes is acceptable.")
        inst, source, target = self.inst, self.inst.primary_node, self.target
        if inst.disk_template == "drbd":
            # A secondary that has just come back exports its replica at its agent's
            # next cycle, but agents leave a locked instance alone: this job holds the
            # lock, so it starts the export itself (a no-op when it runs), and the
            # source reconnects its mirror to it before migrating.
            iu.node_call(self, target, "export", inst.name)
        self._save_record(step="accept", source=source, target=target,
                          generation=inst.generation)
        self.feedback(f"* starting the destination on {target}")
        uri = iu.node_call(self, target, "migrate-accept", inst.name)["uri"]
        self._save_record(step="migrate", source=source, target=target, uri=uri,
                          generation=inst.generation)
        live = self.mode == "live"
        if self.mode_note:
            self.feedback(f"* {self.mode_note}")
        self.feedback(f"* migrating {inst.name} from {source} to {target}"
                      + ("" if live else " (non-live: paused for the copy)"))
        try:
            stats = self._send(source, target, uri, live)
        except HavenError as exc:
            self.feedback(f"* migration failed ({exc.message}); {inst.name} stays "
                          f"on {source}")
            try:
                iu.node_call(self, target, "migrate-abort", inst.name)
                self.c.store.delete(Keys.migration(inst.name), guard=self.require_guard())
            except HavenError as exc2:
                self.feedback(f"Could not clean up {target}: {exc2.message}; run gnt-instance "
                              f"migrate --cleanup {inst.name}")
            raise OpExecError(f"Migration of {inst.name} to {target} failed: {exc.message} "
                              f"It stays on {source}.") from exc
        try:
            iu.node_call(self, target, "migrate-wait", inst.name, {"resume": not live},
                         timeout=60)
        except HavenError as exc:
            # Everything was sent but the destination did not take over: it dies, the
            # source (paused, postmigrate) runs again; still exactly one copy.
            self.feedback(f"* the destination did not take over ({exc.message}); "
                          f"resuming {inst.name} on {source}")
            iu.node_call(self, target, "migrate-abort", inst.name)
            iu.node_call(self, source, "migrate-resume", inst.name)
            self.c.store.delete(Keys.migration(inst.name), guard=self.require_guard())
            raise OpExecError(f"Migration of {inst.name} to {target} failed at the "
                              f"switchover: {exc.message} It runs on {source} again.") \
                from exc
        self._switch(source, target)
        if not live:  # QEMU counts from its own stop; the guest stood still throughout
            stats["downtime_ms"] = stats.get("total_ms")
        self.feedback(f"* migrated in {stats.get('total_ms')} ms, downtime "
                      f"{stats.get('downtime_ms')} ms")
        emit(self, "migrated", inst.name, f"migrated {self.mode} from {source} to {target} "
             f"(total {stats.get('total_ms')} ms, downtime {stats.get('downtime_ms')} ms)")
        return {"instance": inst.name, "from": source, "to": target, "mode": self.mode,
                **stats}

    def _send(self, source: str, target: str, uri: str, live: bool) -> dict[str, Any]:
        """The source's ``migrate-send``, with the memory copy's progress in the log."""
        name = self.inst.name

        def read() -> bytes | None:
            kv = self.c.store.get(Keys.migration_progress(name))
            return kv.value if kv else None

        return call_watching(
            lambda: iu.node_call(self, source, "migrate-send", name,
                                 {"uri": uri, "target": target, "live": live}, timeout=600),
            read, self.feedback, uri)

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
        self.c.store.delete(Keys.migration(inst.name), guard=self.require_guard())

    def _cleanup(self) -> Any:
        """Finish or roll back an interrupted migration from where the VMs really are."""
        rec = self.record
        inst = self.inst
        if rec is None:
            return {"instance": inst.name, "cleanup": "nothing to clean up"}
        source, target = str(rec["source"]), str(rec["target"])
        stale = _stale(rec, inst)
        if stale:
            # Another job moved it since (a failover, say): the copies are that job's
            # doing, and acting on this record would undo it.  The agents stop any copy
            # left off the primary.
            self.c.store.delete(Keys.migration(inst.name), guard=self.require_guard())
            outcome = f"nothing to do: {stale}"
            emit(self, "migration-cleanup", inst.name, outcome)
            return {"instance": inst.name, "cleanup": outcome}
        where = {}
        fenced = _fenced_nodes(self.c.store)
        for node in (source, target):
            if node in fenced:
                # The HA manager fenced it: its fencer (or agent) killed its VMs.
                where[node] = "fenced"
                continue
            try:
                n = state.node(self.c.store, node)
                vms = self.c.rpc.call(n.primary_ip, n.api_port, "GET", "/haven/node/vms")
                where[node] = vms.get(inst.name, {}).get("status")
            except HavenError:
                where[node] = "node unreachable"
        # The switchover was saved (the target is the primary): the target took over,
        # so the migration is finished whatever runs now; the source is never resumed
        # (a copy off the primary), the agents and the HA manager take it from there.
        if rec.get("step") == "finish" or inst.primary_node == target or (
                where.get(target) == "running" and where.get(source) != "running"):
            if inst.primary_node != target:
                self._switch(source, target)
            else:
                self.c.store.delete(Keys.migration(inst.name), guard=self.require_guard())
            outcome = f"finished: {inst.name} runs on {target}" \
                if where.get(target) == "running" else \
                f"finished: {target} is the primary of {inst.name} ({where.get(target)})"
        elif "node unreachable" in (where.get(target), where.get(source)) \
                and where.get(source) != "running":
            # The target may run it (resuming the source could make two copies), or the
            # source holds it paused: only a look at both can decide.
            down = target if where.get(target) == "node unreachable" else source
            raise OpExecError(f"Cannot finish or roll back the migration of {inst.name}: "
                              f"{down} does not answer and {inst.name} does not run on "
                              f"{source}; bring {down} back (the master retries by itself, "
                              f"or run gnt-instance migrate --cleanup {inst.name}).")
        else:
            if where.get(target) not in (None, "node unreachable", "fenced"):
                iu.node_call(self, target, "migrate-abort", inst.name)
            if where.get(source) == "paused":  # postmigrate, or stopped for a non-live copy
                iu.node_call(self, source, "migrate-resume", inst.name)
            self.c.store.delete(Keys.migration(inst.name), guard=self.require_guard())
            outcome = f"rolled back: {inst.name} stays on {source} ({where.get(source)})"
        emit(self, "migration-cleanup", inst.name, outcome)
        return {"instance": inst.name, "cleanup": outcome, "seen": where}


def _stale(rec: dict[str, Any], inst: Instance) -> str:
    """Why the migration record ``rec`` no longer describes ``inst`` ("" if it does).

    Only a change of primary node raises an instance's generation.  The migration
    recorded generation G with ``source`` primary; its switchover makes ``target`` the
    primary at G+1 and then records step ``finish`` at G+1.  Any other pair means a
    later job (a failover, a modify --new-primary) moved the instance."""
    gen, step = int(rec.get("generation", -1)), rec.get("step")
    source, target = rec.get("source"), rec.get("target")
    now = (inst.generation, inst.primary_node)
    if step == "finish":
        if now == (gen, target):
            return ""
    elif now in ((gen, source), (gen + 1, target)):
        return ""
    return (f"{inst.name} was moved since the migration from {source} to {target} was "
            f"interrupted (its primary node is {inst.primary_node}, generation "
            f"{inst.generation}); the record is dropped")


def _fenced_nodes(store: Any) -> set[str]:
    """Nodes the HA manager holds fenced (nothing of theirs runs)."""
    import json

    from haven.model import ha

    kvs, _ = store.list(ha.HA_NODES)
    return {r.node for r in (ha.NodeHA.from_json(json.loads(kv.value)) for kv in kvs)
            if r.state in (ha.FENCED, ha.RECOVERING)}


TCG_LIVE_RISK = ("QEMU before 10.0 under TCG loses memory writes of a busy guest in a "
                 "live migration (7.2 broke 6 of 6 in bench/migration_integrity.py; 10.0.2 "
                 "none of 8)")
TCG_LIVE_SAFE_FROM = (10, 0)  # the oldest QEMU seen to keep busy TCG guests intact


def qemu_version_tuple(text: str) -> tuple[int, int] | None:
    """``(major, minor)`` from ``QEMU emulator version 7.2.22 (...)``; None if unknown."""
    m = re.search(r"version (\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def migration_mode(lu: Any, inst: Any, facts: dict[str, NodeFacts], accel: str
                   ) -> tuple[str, str]:
    """``live`` or ``non-live``, and a note for the job log: the opcode's mode, else the
    instance's ``migration_mode`` hypervisor parameter, else ``live`` - except under TCG
    with a QEMU older than :data:`TCG_LIVE_SAFE_FROM` (or of unknown version) on the
    source, where it is ``non-live`` (see :data:`TCG_LIVE_RISK`).  ``facts``: every
    node's; ``accel``: what the instance runs under now."""
    src = facts.get(inst.primary_node)
    version = qemu_version_tuple(src.hv_version) if src else None
    risky = accel == "tcg" and (version is None or version < TCG_LIVE_SAFE_FROM)
    chosen = lu.op["mode"] or str(inst.hvparams.get("migration_mode") or "")
    if chosen == "live" and risky:
        return chosen, f"Warning: live under TCG: {TCG_LIVE_RISK}."
    if chosen:
        return chosen, ""
    if risky:
        return "non-live", (f"{inst.name} runs under TCG, and {TCG_LIVE_RISK}: it is paused "
                            f"for the copy (--migration-mode=live or -H migration_mode=live "
                            f"to take the risk)")
    return "live", ""


def check_compatible(lu: Any, inst: Any, target: str, facts: dict[str, NodeFacts],
                     accel: str) -> None:
    """Refuse a migration QEMU would fail or that would change the guest's CPU: a
    different QEMU on the target (unless ``ignore_hvversions``), or a different host CPU
    for a guest that sees the host's (``-cpu host``).  Accelerators (KVM/TCG) are
    compared by the destination itself, which knows its probe's verdict.  ``facts``:
    every node's; ``accel``: what the instance runs under now."""
    src, dst = facts.get(inst.primary_node), facts.get(target)
    if src is None or dst is None:
        return  # facts not published yet: the destination's own checks still apply
    if src.hv_version != dst.hv_version and not lu.op["ignore_hvversions"]:
        raise OpPrereqError(
            f"Cannot migrate {inst.name}: {inst.primary_node} runs {src.hv_version or '?'} "
            f"and {target} runs {dst.hv_version or '?'}; upgrade QEMU so that both match, "
            f"or give --ignore-hvversions if {target}'s QEMU is the newer one.")
    cpu = str(inst.hvparams.get("cpu_type") or "qemu64")
    host_cpu = cpu == "host" or (cpu == "qemu64" and accel == "kvm")  # see cmdline.cpu_model
    if host_cpu and src.cpu_model != dst.cpu_model:
        raise OpPrereqError(
            f"Instance {inst.name} sees the host CPU ({src.cpu_model}) and {target} has a "
            f"different one ({dst.cpu_model}); set a CPU model both have with gnt-instance "
            f"modify -H cpu_type=<model> {inst.name} and restart it, then migrate.")


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

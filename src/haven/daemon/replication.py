"""This node's part in keeping ``drbd`` replicas in sync: observe the exports and the
mirrors, and carry out what :mod:`haven.agent.replan` decides.

Reporting a peer ``Outdated`` follows DRBD's resource-and-stonith rule: the VM's I/O is
frozen, the new state is written by compare-and-swap (which needs etcd quorum), and
only then is the VM thawed.  A primary that cannot reach quorum stays frozen, and is
fenced by losing its lease.

Cutting off a hung peer is in :mod:`haven.daemon.replica_stall`, and copying only what
an incoming migration wrote in :mod:`haven.daemon.migration_bitmaps`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from haven.agent.replan import Mirror, RepAction
from haven.daemon import migration_bitmaps, replica_stall
from haven.daemon.mirror_watch import MirrorWatch
from haven.errors import HavenError, NodeSetupError, OpExecError
from haven.master import state
from haven.model.instance import Instance
from haven.model.keys import REPLICAS, Keys
from haven.model.replica import OUTDATED, UP_TO_DATE, Replicas
from haven.store.errors import StoreError

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon
    from haven.hypervisor.qemu import QemuHypervisor
    from haven.hypervisor.qemu.exports import ExportManager
    from haven.hypervisor.qemu.mirror_spec import MirrorState, NbdTarget

log = logging.getLogger(__name__)

# How long the new primary waits, right after a migration, for the old one to export
# its disks (its agent does so once it sees the switch).
EXPORT_WAIT = 3.0


class NodeReplication:
    def __init__(self, daemon: NodeDaemon) -> None:
        self.d = daemon
        self._exports: ExportManager | None = None
        # (instance, disk) -> (when, state) since which its mirror made no progress.
        self._still: dict[tuple[str, int], tuple[float, MirrorState]] = {}
        self._severed: set[tuple[str, int]] = set()  # resync those without resuming
        # (instance, disk) -> since when its quorum peer's export has not answered.
        self._unanswered: dict[tuple[str, int], float] = {}
        # VMs frozen by their mirror watcher on a replication error: thawed once the
        # peer is recorded not UpToDate (report), or the mirror is healthy again.
        self._frozen: dict[str, float] = {}
        self.watch = MirrorWatch(self._on_mirror_error)

    def _on_mirror_error(self, name: str, disks: list[int], frozen: bool) -> None:
        """A mirror of ``name`` failed and its watcher paused the guest at once (a few
        ms after the error, instead of at the agent's report later), so that writes the
        peer missed are not acknowledged before etcd says ``Outdated``: remember it and
        run the agent's cycle, whose report thaws it.  While a job holds the instance (a
        migration decides itself) the guest is thawed at once."""
        from haven.hypervisor.qemu import replication

        if frozen:
            try:
                locked = self.d.store().get(Keys.lock(f"instance/{name}")) is not None
                # A quorum disk whose replica was taken out stays paused whatever holds
                # the instance: every write from now on would reach this node alone.
                lost = any(m.slot == "lost" for m in
                           replication.status(self.qmp_path(name)).values())
            except (HavenError, StoreError):
                locked = False  # etcd unreachable: stay frozen, the report waits for it
                lost = True
            if locked and not lost:
                try:
                    replication.thaw(self.qmp_path(name))
                except HavenError as exc:
                    log.warning("%s: could not thaw the guest: %s", name, exc.message)
            else:
                self._frozen[name] = time.monotonic()
                log.info("%s: guest frozen on a replication error until its peer is "
                         "recorded Outdated", name)
        self._woken(name, disks)

    def release_frozen(self, instances: dict[str, Instance], running: frozenset[str],
                       mirrors: dict[str, dict[int, Mirror]]) -> list[str]:
        """Thaw the VMs frozen by :meth:`_on_mirror_error` whose peer is no longer
        ``UpToDate`` in etcd, whose mirrors are all ``ready`` again, or that are gone.
        Returns the names thawed."""
        from haven.hypervisor.qemu import replication

        if not self._frozen:
            return []
        reps = self.replicas()
        thawed = []
        for name in list(self._frozen):
            inst = instances.get(name)
            if inst is None or name not in running:
                self._frozen.pop(name, None)
                continue
            snode = inst.secondary_nodes[0] if inst.secondary_nodes else ""
            r = reps.get(name)
            peer_marked = not snode or r is None or not r.node_up_to_date(
                snode, len(inst.disks), inst.generation)
            healthy = bool(mirrors.get(name)) and all(
                m.phase == "ready" for m in mirrors[name].values())
            if healthy:
                self.watch.rearm(name)
            if peer_marked or healthy:
                try:
                    replication.thaw(self.qmp_path(name))
                except HavenError as exc:
                    log.warning("%s: could not thaw the guest: %s", name, exc.message)
                    continue
                self._frozen.pop(name, None)
                thawed.append(name)
        return thawed

    def holds_frozen(self, name: str) -> bool:
        """Whether ``name``'s guest is paused by its replication (until its peer is
        recorded ``Outdated``, or its mirrors are ready again)."""
        return name in self._frozen

    def _woken(self, name: str, disks: list[int]) -> None:
        """A mirror of ``name`` failed: run the agent's cycle now, not in up to 2 s."""
        joined = self.d.joined
        if joined is not None and joined.agent is not None:
            joined.agent.wake.set()

    @property
    def exports(self) -> ExportManager:
        if self._exports is None:
            from haven.hypervisor.qemu.exports import ExportManager

            self._exports = ExportManager(self.d.instances.run_dir / "exports")
        return self._exports

    # -- observation ---------------------------------------------------------------
    def exported(self) -> frozenset[str]:
        return frozenset(self.exports.list())

    def mirrors(self, instances: dict[str, Instance], running: frozenset[str]
                ) -> dict[str, dict[int, Mirror]]:
        from haven.hypervisor.qemu import replication
        from haven.hypervisor.qemu.cmdline import EVENTS_QMP_SUFFIX

        out: dict[str, dict[int, Mirror]] = {}
        for name in running:
            inst = instances.get(name)
            if inst is None or inst.disk_template != "drbd" or inst.hypervisor != "kvm":
                continue
            try:
                st = self._settled(inst, replication.status(self.qmp_path(name)))
            except HavenError as exc:
                log.debug("mirror status of %s: %s", name, exc.message)
                continue  # unknown this cycle: no decision is taken on it
            st = {i: replica_stall.unless_stalled(self, inst, m) for i, m in st.items()}
            out[name] = {i: Mirror(m.phase, 100.0 * m.offset / m.length if m.length else 0.0)
                         for i, m in st.items()}
        seen = {(n, i) for n, disks in out.items() for i in disks}
        for key in set(self._still) - seen:
            del self._still[key]
        for key in set(self._unanswered) - seen:
            del self._unanswered[key]
        self.watch.follow({name: self._hv().path(name, EVENTS_QMP_SUFFIX) for name in out})
        return out

    def _settled(self, inst: Instance, st: dict[int, MirrorState]) -> dict[int, MirrorState]:
        """``st`` after the steps a quorum disk (``hypervisor.qemu.quorum``) takes on
        its own: a sync mirror that became ready hands over to the quorum (the replica
        takes the slot), and a write error nobody heard (no event watcher then) takes
        the replica out, with the guest left paused until the peer is ``Outdated``."""
        from haven.hypervisor.qemu import replication
        from haven.hypervisor.qemu.mirror_spec import JOB

        qmp, changed = self.qmp_path(inst.name), False
        for i, m in st.items():
            if m.slot in ("unprotected", "lost") and m.job_id == JOB.format(i) \
                    and m.phase == "ready":
                changed = replication.promote(qmp, i) or changed
            elif m.slot == "replica" and m.io_status == "failed" \
                    and m.job_id != JOB.format(i) \
                    and replica_stall.sever(self, inst, i) is not False:
                self._frozen[inst.name] = time.monotonic()
                log.warning("%s: disk %d stopped on a replica write error; replica taken "
                            "out, guest paused until its peer is recorded Outdated",
                            inst.name, i)
                changed = True
        return replication.status(qmp) if changed else st

    def replicas(self) -> dict[str, Replicas]:
        kvs, _ = self.d.store().list(REPLICAS)
        out = {}
        for kv in kvs:
            r = Replicas.from_json(json.loads(kv.value))
            out[r.instance] = r
        return out

    # -- actions -------------------------------------------------------------------
    def execute(self, a: RepAction, inst: Instance | None) -> None:
        if a.kind == "unexport":
            self.unexport(a.name)
            return
        assert inst is not None
        if a.kind == "export":
            self.export(inst)
        elif a.kind in ("protect", "resync"):
            from haven.hypervisor.qemu.qmp import QmpTimeout

            try:
                self._for_disks(inst, a.disks, a.kind)
            except QmpTimeout:
                # Its brief pause (``stop``) may land after the timeout: held frozen,
                # the guest is resumed once its mirrors are ready or its peer Outdated.
                self._frozen[inst.name] = time.monotonic()
                raise
        elif a.kind == "report":
            self.report(inst, a)

    def export(self, inst: Instance) -> None:
        from haven.hypervisor.qemu.exports import ExportDisk

        me = state.node(self.d.store(), self.d.name)
        tmpl = self.d.instances.disk_template(inst)
        disks = [ExportDisk(d.uuid, str(spec.path), spec.format)
                 for d, spec in zip(inst.disks, tmpl.assemble(inst), strict=True)]
        self.exports.ensure(inst.name, disks, me.secondary_ip, inst.network_port,
                            psk=self.psk(inst))
        log.info("exporting the replicas of %s on %s:%s", inst.name, me.secondary_ip,
                 inst.network_port)

    def unexport(self, name: str) -> None:
        """Stop the export and wait for its process to exit: its image lock is free."""
        self.exports.stop(name)

    def targets(self, inst: Instance) -> dict[int, NbdTarget]:
        """Disk index -> the export of its replica on the instance's secondary."""
        from haven.hypervisor.qemu.mirror_spec import NbdTarget

        snode = state.node(self.d.store(), inst.secondary_nodes[0])
        psk_dir = self._psk_dir(inst)
        return {d.index: NbdTarget(snode.secondary_ip, inst.network_port, d.uuid, psk_dir)
                for d in inst.disks}

    # -- the bitmaps of an incoming migration --------------------------------------
    def note_migration(self, inst: Instance, pid: int) -> None:
        """This node accepts the migration of ``inst`` into VM process ``pid``: remember
        it for the mirror to the old primary (:func:`migration_bitmaps.note_migration`)."""
        migration_bitmaps.note_migration(self.d, inst, pid)

    def _for_disks(self, inst: Instance, disks: tuple[int, ...], what: str) -> None:
        from haven.hypervisor.qemu import replication

        snode = state.node(self.d.store(), inst.secondary_nodes[0])
        targets = self.targets(inst)
        # After a migration here the old primary holds what this VM had at activation:
        # copy only what it wrote since, not the whole disks.
        migrated = what == "protect" and migration_bitmaps.migrated_bitmaps(self, inst)
        for i in disks:
            target = targets[i]
            if migrated and replication.has_bitmap(self.qmp_path(inst.name), i):
                # The old primary exports as soon as its agent sees the switch: wait for
                # it briefly rather than a whole agent period.
                deadline = time.monotonic() + EXPORT_WAIT
                while True:
                    try:
                        replication.probe(target, timeout=1.0)
                        break
                    except HavenError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                res = replication.resync(self.qmp_path(inst.name), i, target,
                                         trust_bitmap=True, resume_timeout=0)
                log.info("protecting disk %d of %s to %s from its migration bitmap: %s",
                         i, inst.name, snode.name, res)
                self.d.instances.emit("resynced", inst, f"disk/{i} synced to {snode.name} "
                                      f"after the migration ({res.mode}, "
                                      f"{res.bytes_copied} bytes)")
            elif what == "protect":
                replication.protect(self.qmp_path(inst.name), i, target)
                log.info("protecting disk %d of %s to %s", i, inst.name, snode.name)
            else:
                # A cut connection never comes back: no resume attempt for it.
                severed = (inst.name, i) in self._severed
                res = replication.resync(self.qmp_path(inst.name), i, target,
                                         resume_timeout=0 if severed else 5.0)
                self._severed.discard((inst.name, i))
                log.info("resynced disk %d of %s to %s: %s", i, inst.name, snode.name, res)
                self.d.instances.emit("resynced", inst, f"disk/{i} resynced to {snode.name} "
                                      f"({res.mode}, {res.bytes_copied} bytes)")
        if migrated:  # used: from now on the mirrors' own state says what to copy
            migration_bitmaps.migration_path(self.d, inst.name).unlink(missing_ok=True)
        self.watch.rearm(inst.name)  # a new mirror: its first error freezes the guest
        if what == "resync" or migrated:  # in sync now: report it without waiting
            self._woken(inst.name, list(disks))

    def report(self, inst: Instance, a: RepAction) -> None:
        store = self.d.store()
        key = Keys.replicas(inst.name)
        kv = store.get(key)
        current = Replicas.from_json(json.loads(kv.value)) if kv else None
        base = current if current and current.generation == inst.generation else \
            Replicas(inst.name, inst.generation)
        new = base
        for node, disks in a.states.items():
            new = new.with_node(node, {i: r.__class__(r.state, r.percent, time.time(),
                                                      r.message) for i, r in disks.items()})
        outdating = current is not None and any(
            current.state(n, i).state == UP_TO_DATE and r.state == OUTDATED
            for n, disks in a.states.items() for i, r in disks.items())
        frozen = False
        if outdating and inst.hypervisor == "kvm":
            from haven.hypervisor.qemu import replication

            replication.freeze(self.qmp_path(inst.name))
            frozen = True
        if store.cas(key, state.dumps(new.to_json()), kv.mod_revision if kv else 0) is None:
            # Someone else wrote: plan again from what is there.  A frozen VM stays
            # frozen until the next cycle manages the write.
            raise OpExecError(f"Replica states of {inst.name} changed concurrently.")
        if frozen:
            from haven.hypervisor.qemu import replication

            replication.thaw(self.qmp_path(inst.name))
            self._frozen.pop(inst.name, None)
        if outdating:
            self.d.instances.emit("degraded", inst, "its secondary stopped answering; "
                                  "replica marked Outdated, running degraded", "warning")

    def forget(self, name: str) -> None:
        """Remove the replication files instance ``name`` left here (removed or renamed):
        its TLS pre-shared key, secret material, and the log of an export that ended."""
        shutil.rmtree(self._psk_path(name), ignore_errors=True)
        migration_bitmaps.migration_path(self.d, name).unlink(missing_ok=True)
        if not self.exports.alive(name):
            self.exports.path(name, ".log").unlink(missing_ok=True)

    def _psk_path(self, name: str) -> Path:
        return self.d.instances.run_dir / f"{name}.psk"

    def psk(self, inst: Instance) -> str | None:
        """The instance's NBD pre-shared key: HMAC-SHA256 of its key id under the
        cluster secret, so both nodes derive the same key and etcd holds none."""
        if inst.replication_secret:
            return inst.replication_secret  # a record made before key ids
        if not inst.replication_key_id:
            return None
        secret = self.d.cluster_secret()
        if not secret:
            raise NodeSetupError(f"Node {self.d.name} has no cluster secret "
                                 f"({self.d.local.secrets_file}); it cannot open the "
                                 f"replication link of {inst.name}.")
        return hmac.new(secret.encode(), b"haven-replication:" +
                        inst.replication_key_id.encode(), hashlib.sha256).hexdigest()

    def _psk_dir(self, inst: Instance) -> str | None:
        """The client side of the export's TLS-PSK, for the primary's QEMU."""
        psk = self.psk(inst)
        if not psk:
            return None
        from haven.hypervisor.qemu.exports import write_psk_dir

        directory = self._psk_path(inst.name)
        directory.mkdir(mode=0o700, exist_ok=True)
        return str(write_psk_dir(directory, psk))

    def qmp_path(self, name: str) -> str:
        """The QMP socket of instance ``name`` on this node."""
        return str(self._hv().qmp_path(name))

    def _hv(self) -> QemuHypervisor:
        from haven.hypervisor.qemu import QemuHypervisor

        hv = self.d.instances.hypervisor("kvm")
        assert isinstance(hv, QemuHypervisor)
        return hv

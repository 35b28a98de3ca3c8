"""This node's half of a live migration: accept one (destination) or send one (source).

The job on the master drives the steps; each is a node API call.  The source's
pre-switchover window for ``drbd`` instances calls the destination's node API to stop
its replication export, so the destination activates its image only after the last
writer of that image is gone.
"""

from __future__ import annotations

import logging
import socket
import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from haven.daemon import netdev
from haven.daemon.migration_progress import ProgressPublisher
from haven.errors import HavenError, OpPrereqError
from haven.hypervisor.base import HypervisorError
from haven.master import state
from haven.model.keys import Keys

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon

log = logging.getLogger(__name__)

PORTS = range(12000, 13000)
EXPORT_WAIT = 10.0  # seconds a migration waits for the secondary's export to answer


def free_port(address: str) -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return port
    raise OpPrereqError(f"No free migration port on {address} ({PORTS.start}-{PORTS.stop}).")


class NodeMigration:
    def __init__(self, daemon: NodeDaemon) -> None:
        self.d = daemon

    def accept(self, name: str) -> dict[str, Any]:
        """Start the instance here paused, waiting for its memory; returns the URI."""
        from dataclasses import replace

        from haven.hypervisor.qemu import QemuHypervisor, migration_destination

        m = self.d.instances
        inst, _ = m.instance(name)
        hv = m.hypervisor(inst.hypervisor)
        if not isinstance(hv, QemuHypervisor):
            raise OpPrereqError(f"Instance {name} runs on hypervisor {inst.hypervisor}, "
                                f"which cannot migrate.")
        if name in hv.list():
            raise OpPrereqError(f"Instance {name} already has a process on {self.d.name}; "
                                f"clean up with gnt-instance migrate --cleanup {name}.")
        me = state.node(self.d.store(), self.d.name)
        spec = replace(m.vm_spec(inst), incoming=True)
        self._check_accel(name, spec.accel, hv)
        for nic in spec.nics:
            if nic.mode == "bridged":
                netdev.plug(nic.tap, nic.link, self.d.name)
        with self.d.vm_start_gate(name):
            vm = hv.start(spec)
        port = free_port(me.secondary_ip)
        bitmaps = [d.index for d in inst.disks] if inst.disk_template == "drbd" else []
        try:
            uri = migration_destination.accept(str(hv.qmp_path(name)), me.secondary_ip,
                                               port, bitmaps)
            if bitmaps:
                self.d.replication.note_migration(inst, vm.pid)
        except Exception:
            hv.kill(name)
            hv.cleanup(name)
            raise
        log.info("accepting %s on %s", name, uri)
        return {"uri": uri}

    def _check_accel(self, name: str, wanted: str, hv: Any) -> None:
        """QEMU cannot carry a guest between KVM and TCG: refuse before starting."""
        obs = state.observed(self.d.store(), name)
        running = obs.accel if obs else ""
        here = hv.accel() if wanted == "auto" else wanted
        if running and running != here:
            raise OpPrereqError(
                f"Instance {name} runs under {running} and {self.d.name} would run it "
                f"under {here}; QEMU cannot migrate between the two. Use gnt-instance "
                f"failover {name} (a restart) or fix KVM on the node that lacks it.")

    def send(self, name: str, uri: str, target: str, live: bool = True) -> dict[str, Any]:
        """Migrate the running instance to ``uri`` (the ``target`` node); ``live=False``
        pauses it for the whole copy."""
        from dataclasses import asdict

        from haven.hypervisor.qemu import QemuHypervisor, migration, migration_spec, replication

        m = self.d.instances
        inst, _ = m.instance(name)
        hv = m.hypervisor(inst.hypervisor)
        assert isinstance(hv, QemuHypervisor)
        qmp = str(hv.qmp_path(name))
        downtime, bandwidth = migration_spec.migration_params(inst.hvparams)
        callback = None
        if inst.disk_template == "drbd":
            # A mirror left on a dead connection (the secondary restarted while the
            # guest wrote nothing) would fail the completion's flush: reconnect first.
            vm = hv.list().get(name)
            targets = self.d.replication.targets(inst)
            deadline = time.monotonic() + EXPORT_WAIT
            while True:
                try:
                    replication.refresh(qmp, targets, vm.pid if vm else None)
                    break
                except HypervisorError:
                    # An export just (re)started may not listen yet.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            node = state.node(self.d.store(), target)
            rpc = self.d.rpc()

            def stop_export() -> None:
                rpc.call(node.primary_ip, node.api_port, "POST",
                         f"/haven/node/instance/{name}/unexport", {}, timeout=10)

            callback = migration.drbd_switchover(qmp, [d.index for d in inst.disks],
                                                 stop_export)
        with self._publisher(name, uri) as publish:
            stats = migration.migrate(qmp, uri, downtime, bandwidth, callback, live=live,
                                      on_progress=publish)
        return asdict(stats)

    def _publisher(self, name: str, uri: str
                   ) -> AbstractContextManager[ProgressPublisher | None]:
        """Where the memory copy's progress goes: etcd, under this node's alive lease
        (read from its key: the lease the cluster judges this node by).  Without that
        lease nothing is published: a key left by a node that died would stay."""
        try:
            store = self.d.store()
            alive = store.get(Keys.alive(self.d.name))
        except HavenError as exc:
            log.warning("Not publishing the progress of %s's migration: %s", name, exc)
            return nullcontext()
        if alive is None or not alive.lease:
            log.warning("Not publishing the progress of %s's migration: %s holds no "
                        "alive lease", name, self.d.name)
            return nullcontext()
        return ProgressPublisher(store, name, uri, alive.lease)

    def wait_running(self, name: str, resume: bool = False) -> dict[str, Any]:
        """After the source reported completion: the destination has taken over
        (``resume``: continue the paused guest of a non-live migration)."""
        from haven.hypervisor.qemu import migration_destination

        hv = self._qemu(name)
        state_now = migration_destination.wait_destination(hv, name, resume=resume)
        if state_now != "running":
            raise OpPrereqError(f"The destination of {name} on {self.d.name} is "
                                f"{state_now}, not running.")
        return {"status": state_now}

    def abort_incoming(self, name: str) -> dict[str, Any]:
        """Kill a destination process that never became the instance (refused if it
        runs: then it *is* the instance)."""
        from haven.hypervisor.qemu import migration_destination

        killed = migration_destination.abort_incoming(self._qemu(name), name)
        if killed:
            self._unplug(name)
        return {"killed": killed}

    def resume(self, name: str) -> dict[str, Any]:
        """Roll a completed-but-not-taken-over migration back: the source runs again,
        only where the configuration still names this node the primary (a copy resumed
        anywhere else would be a second running one)."""
        from haven.hypervisor.qemu import migration

        inst, _ = self.d.instances.instance(name)
        if inst.primary_node != self.d.name:
            raise OpPrereqError(f"Instance {name} has primary node {inst.primary_node}, "
                                f"not {self.d.name}; its copy here is not resumed.")
        if self.d.replication.holds_frozen(name):
            # Paused by its replication (a write failed on the peer) until the peer is
            # recorded Outdated: resuming it here would acknowledge writes the peer
            # missed.  The agent thaws it once the migration's record is gone.
            log.info("Instance %s: not resumed for the migration's rollback; its "
                     "replication holds it until its peer is recorded Outdated", name)
            return {"resumed": False}
        return {"resumed": migration.resume_source(self._qemu(name).qmp_path(name))}

    def finish_source(self, name: str) -> dict[str, Any]:
        """The destination runs: end the ``postmigrate`` source (refused in any other
        state: a running source is the only copy)."""
        from haven.hypervisor.qemu import migration

        hv = self._qemu(name)
        if name not in hv.list():
            return {"stopped": False}
        migration.finish_source(hv.qmp_path(name))
        hv.stop(name, timeout=10)  # waits for the exit of the quitting process
        hv.cleanup(name)
        self._unplug(name)
        return {"stopped": True}

    def _unplug(self, name: str) -> None:
        try:
            inst, _ = self.d.instances.instance(name)
        except HavenError:
            return
        for nic in inst.nics:
            if nic.mode == "bridged":
                netdev.unplug(netdev.tap_name(inst.uuid, nic.index))
        # Shared disks: the storage admits only the node that now runs the VM.
        self.d.instances.detach_if_gone(inst)

    def _qemu(self, name: str) -> Any:
        from haven.hypervisor.qemu import QemuHypervisor

        hv = self.d.instances.hypervisor("kvm")
        assert isinstance(hv, QemuHypervisor)
        return hv

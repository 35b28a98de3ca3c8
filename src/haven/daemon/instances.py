"""This node's side of instance operations: disks, OS scripts, VM processes.

Jobs on the master call these through the node API while they hold the instance's
lock; the agent calls ``start``/``stop`` for what it reconciles.  Every successful
start or stop is published as the instance's observed state (``observed/<name>``),
written only by the node that runs the instance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haven.daemon import netdev
from haven.daemon.staging import staged_disks
from haven.errors import HavenError, InvalidInput, NotFoundError, OpPrereqError
from haven.hypervisor.base import Hypervisor, HypervisorError, NicSpec, VmInfo, VmSpec
from haven.master import state
from haven.model import event
from haven.model.instance import Instance, Observed
from haven.model.keys import OBSERVED, Keys
from haven.storage.base import DiskTemplate, StoragePaths, template

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon

log = logging.getLogger(__name__)


class NodeInstances:
    def __init__(self, daemon: NodeDaemon) -> None:
        self.d = daemon
        self.run_dir = daemon.settings.data_dir / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._hypervisors: dict[str, Hypervisor] = {}
        self._qemu_version: str | None = None

    # -- drivers -------------------------------------------------------------------
    def hypervisor(self, name: str) -> Hypervisor:
        hv = self._hypervisors.get(name)
        if hv is None:
            if name == "kvm":
                from haven.hypervisor.qemu import QemuHypervisor

                hv = QemuHypervisor(self.run_dir)
            elif name == "fake":
                from haven.hypervisor.fake import FakeHypervisor

                hv = FakeHypervisor(self.run_dir / "fake")
            else:
                raise InvalidInput(f"Hypervisor {name!r} is not supported; use kvm.")
            self._hypervisors[name] = hv
        return hv

    def qemu_version(self) -> str:
        """``qemu-system-x86_64 --version``'s first line, asked once per daemon."""
        if self._qemu_version is None:
            from haven.hypervisor.qemu import QemuHypervisor
            from haven.hypervisor.qemu.accel import qemu_version

            hv = self.hypervisor("kvm")
            assert isinstance(hv, QemuHypervisor)
            self._qemu_version = qemu_version(hv.qemu_binary)
        return self._qemu_version

    def all_vms(self) -> dict[str, tuple[str, VmInfo]]:
        """Every VM process on this node: name -> (hypervisor, info)."""
        out: dict[str, tuple[str, VmInfo]] = {}
        for hv_name in ("kvm", "fake"):
            try:
                hv = self.hypervisor(hv_name)
            except Exception:  # a driver that cannot load has no VMs here
                continue
            for name, info in hv.list().items():
                out[name] = (hv_name, info)
        return out

    def storage_paths(self) -> StoragePaths:
        cluster = state.cluster(self.d.store())
        shared = Path(cluster.shared_file_storage_dir)
        from haven.storage.extstorage import initiator_name

        return StoragePaths(self.d.settings.storage_dir / "file", shared, node=self.d.name,
                            initiator=initiator_name(cluster.name, self.d.name),
                            data_dir=self.d.settings.data_dir)

    def disk_template(self, inst: Instance) -> DiskTemplate:
        return template(inst.disk_template, self.storage_paths())

    def instance(self, name: str) -> tuple[Instance, int]:
        kv = self.d.store().get(Keys.instance(name))
        if kv is None:
            raise NotFoundError(f"Instance {name!r} does not exist; see gnt-instance list.")
        return Instance.from_json(json.loads(kv.value)), kv.mod_revision

    # -- disks and OS ------------------------------------------------------------------
    def create_disks(self, name: str, indices: list[int] | None = None
                     ) -> list[dict[str, Any]]:
        """Create the instance's disks (or only those with ``indices``); all or none."""
        inst, _ = self.instance(name)
        tmpl = self.disk_template(inst)
        created = []
        try:
            for disk in inst.disks:
                if indices is not None and disk.index not in indices:
                    continue
                created.append(tmpl.create(inst, disk))
        except Exception:
            for disk in created:
                tmpl.remove(inst, disk)
            raise
        return [d.__dict__ for d in created]

    def remove_disks(self, name: str, disks: list[dict[str, Any]] | None = None) -> int:
        from haven.model.instance import Disk

        inst, _ = self.instance(name)
        tmpl = self.disk_template(inst)
        todo = [Disk.from_json(d) for d in disks] if disks is not None else list(inst.disks)
        for disk in todo:
            tmpl.remove(inst, disk)
        return len(todo)

    def forget(self, name: str) -> dict[str, Any]:
        """Remove what instance ``name`` left on this node once it is removed or renamed:
        its hypervisor's files and logs and its replication key.  Refused while a VM of
        that name runs here."""
        running = self.all_vms()
        if name in running:
            raise OpPrereqError(f"Instance {name} still runs on {self.d.name}; stop it "
                                "before removing what it left here.")
        for hv_name in ("kvm", "fake"):
            with contextlib.suppress(InvalidInput):
                self.hypervisor(hv_name).forget(name)
        self.d.replication.forget(name)
        from haven.osdef.boot import forget_boot

        forget_boot(self.boot_dir(name))
        return {"forgotten": name}

    def boot_dir(self, name: str) -> Path:
        """Where the kernel and initrd found in the instance's disk are copied to boot."""
        return self.d.settings.data_dir / "boot" / name

    def grow_disk(self, name: str, index: int, size: int) -> None:
        inst, _ = self.instance(name)
        disk = next((d for d in inst.disks if d.index == index), None)
        if disk is None:
            raise NotFoundError(f"Instance {name} has no disk {index}.")
        self.disk_template(inst).grow(inst, disk, size)

    def run_os(self, name: str, script: str, variant_os: str | None = None,
               extra: dict[str, str] | None = None, timeout: float = 1800) -> str:
        """Run an OS script for the instance; returns the log path (kept either way)."""
        from haven import osdef

        inst, _ = self.instance(name)
        os_def, variant = osdef.find_os(variant_os or inst.os)
        if script == "create" and inst.hypervisor == "kvm":
            from haven.osdef.boot import check_boot_files

            # A kernel -H names that is not here fails the start: say so before the
            # (possibly minutes long) install rather than after it.
            check_boot_files(inst.name, inst.hvparams, self.d.name)
        extra = dict(extra or {})
        specs = self.disk_template(inst).assemble(inst)
        try:
            with staged_disks(inst, specs, script,
                              self.d.settings.data_dir / "staging") as paths:
                return self._run_os_script(inst, script, os_def, variant, paths, extra,
                                           timeout)
        finally:
            # Attached for the script (and the copy into the volume) only.
            self.detach_if_gone(inst)

    def _run_os_script(self, inst: Instance, script: str, os_def: Any, variant: Any,
                       paths: list[str], extra: dict[str, str], timeout: float) -> str:
        from haven import osdef

        old_name = extra.pop("OLD_INSTANCE_NAME", None)
        disks = [osdef.DiskEnv(p, "ro" if d.mode == "ro" else "rw", size_mib=d.size,
                               uuid=d.uuid) for p, d in zip(paths, inst.disks, strict=True)]
        nics = [osdef.NicEnv(n.mac, n.ip, n.mode, n.link, name=n.name) for n in inst.nics]
        env = osdef.os_environment(
            os_def, variant, inst.name, disks, inst.hypervisor, extra, nics=nics,
            osparams={k: str(v) for k, v in inst.osparams.items()},
            beparams=inst.beparams, hvparams=inst.hvparams, instance_uuid=inst.uuid,
            primary_node=inst.primary_node, secondary_nodes=inst.secondary_nodes,
            old_name=old_name)
        logs = self.d.settings.data_dir / "logs" / "os"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{script}-{inst.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        osdef.run_os_script(os_def, script, env, path, timeout)  # type: ignore[arg-type]
        return str(path)

    # -- VM processes ------------------------------------------------------------------
    def vm_spec(self, inst: Instance) -> VmSpec:
        from haven import osdef
        from haven.osdef.boot import plan_boot

        hv = inst.hvparams
        hints = None
        with contextlib.suppress(InvalidInput):
            hints = osdef.find_os(inst.os)[0].boot
        disks = self.disk_template(inst).assemble(inst)
        disk0 = next((d for d in disks if d.index == 0), None)
        boot = plan_boot(inst.name, hv, hints, disk0.path if disk0 and disk0.path else None,
                         self.boot_dir(inst.name), node=self.d.name,
                         disk0_raw=disk0 is not None and disk0.format == "raw",
                         inspect=inst.hypervisor == "kvm")
        args = f"{boot.kernel_args} haven.hostname={inst.name}".strip()
        for nic in inst.nics[:1]:
            if nic.ip:
                ip = nic.ip if "/" in nic.ip else f"{nic.ip}/24"
                args += f" haven.ip={ip}"
        return VmSpec(
            name=inst.name, uuid=inst.uuid, memory=inst.memory, vcpus=inst.vcpus,
            disks=disks,
            nics=tuple(NicSpec(n.index, n.mac, "bridged" if n.mode == "bridged" else "user",
                               n.link, n.ip, netdev.tap_name(inst.uuid, n.index)
                               if n.mode == "bridged" else "") for n in inst.nics),
            kernel_path=boot.kernel_path, initrd_path=boot.initrd_path, kernel_args=args,
            serial_console=bool(hv.get("serial_console", True)),
            accel=hv.get("accel") or "auto",
            machine=str(hv.get("machine_version") or "pc"),
            cpu_model=str(hv.get("cpu_type") or "qemu64"))

    def start(self, name: str, generation: int | None = None, reason: str = "started",
              restarts: int = 0, force: bool = False) -> dict[str, Any]:
        inst, _ = self.instance(name)
        if inst.primary_node != self.d.name:
            raise OpPrereqError(f"Instance {name} has primary node {inst.primary_node}, "
                                f"not {self.d.name}; it is not started here.")
        if generation is not None and inst.generation != generation:
            raise OpPrereqError(f"Instance {name} changed (generation {inst.generation}, "
                                f"expected {generation}); not starting a stale copy.")
        if inst.disk_template == "drbd":
            self._check_promotable(inst, force)
        hv = self.hypervisor(inst.hypervisor)
        vms = hv.list()
        current = vms.get(name)
        if current is not None and current.status in ("running", "paused"):
            self.publish(inst, "running", current, restarts=restarts)
            return {"pid": current.pid, "already": True}
        if current is not None:  # powered off from inside: clear it first
            hv.stop(name, timeout=5)
        spec = self.vm_spec(inst)
        for nic in spec.nics:
            if nic.mode == "bridged":
                netdev.plug(nic.tap, nic.link, self.d.name)
        with self.d.vm_start_gate(name):
            info = hv.start(spec)
        self.publish(inst, "running", info, restarts=restarts)
        self.emit(reason, inst, f"{reason} on {self.d.name} (pid {info.pid})")
        return {"pid": info.pid, "accel": info.accel}

    def stop(self, name: str, timeout: float = 120.0, force: bool = False,
             reason: str = "stopped") -> dict[str, Any]:
        inst: Instance | None
        hv_name: str | None
        try:
            inst, _ = self.instance(name)
            hv_name = inst.hypervisor
        except NotFoundError:
            inst, hv_name = None, self._running_hypervisor(name)
        if hv_name is None:
            return {"stopped": False}
        hv = self.hypervisor(hv_name)
        running = name in hv.list()
        hv.stop(name, timeout=timeout, force=force)
        hv.cleanup(name)
        if inst is not None:
            for nic in inst.nics:
                if nic.mode == "bridged":
                    netdev.unplug(netdev.tap_name(inst.uuid, nic.index))
            if inst.primary_node == self.d.name or self._observed_here(name):
                # A stray copy elsewhere must not overwrite what the primary published.
                self.publish(inst, "stopped", None)
            if running:
                self.emit(reason, inst, f"{reason} on {self.d.name}",
                          "info" if inst.primary_node == self.d.name else "warning")
            self.detach_if_gone(inst)
        return {"stopped": running}

    def _observed_here(self, name: str) -> bool:
        obs = state.observed(self.d.store(), name)
        return obs is not None and obs.node == self.d.name

    def detach_if_gone(self, inst: Instance) -> None:
        """Release shared disks here once no VM of ``inst`` runs here (``ext``: the
        storage stops admitting this node).  A failure is reported, not raised: the VM
        is gone either way, and the next detach or a storage fence repeats it."""
        if inst.disk_template != "ext" or inst.name in self.all_vms():
            return
        try:
            self.disk_template(inst).detach(inst)
        except HavenError as exc:
            log.warning("%s", exc.message)
            self.emit("detach-failed", inst, f"its disks could not be detached from "
                      f"{self.d.name}: {exc.message}", "warning")

    def fence_disks(self, name: str, node: str) -> dict[str, Any]:
        """Run by the node that takes ``name`` over from ``node`` (dead or cut off):
        have the storage refuse ``node`` before the VM starts here."""
        from haven.storage.extstorage import initiator_name

        inst, _ = self.instance(name)
        if node == self.d.name:
            raise InvalidInput(f"Node {node} cannot fence itself off {name}'s disks.")
        cluster = state.cluster(self.d.store())
        done = self.disk_template(inst).fence(inst, node, initiator_name(cluster.name, node))
        if done:
            self.emit("storage-fenced", inst, done, "warning")
        return {"fenced": done}

    def power_button(self, name: str, wait: float) -> dict[str, Any]:
        """Press the VM's power button once and wait up to ``wait`` s (a shutdown job
        presses again between calls and logs each press); ``state`` is ``off``, ``on``
        or why the guest cannot hear it.  The VM is left for :meth:`stop` to end."""
        hv_name = self._running_hypervisor(name)
        if hv_name is None:
            return {"state": "off"}
        hv = self.hypervisor(hv_name)
        from haven.hypervisor.qemu import QemuHypervisor

        if not isinstance(hv, QemuHypervisor):
            return {"state": f"the {hv_name} hypervisor has no power button"}
        return {"state": hv.press_power_button(name, max(0.0, min(wait, 60.0)))}

    def _check_promotable(self, inst: Instance, force: bool) -> None:
        """The data rule: run on a replica only if the store says it is UpToDate at the
        instance's current generation (or the administrator forced it)."""
        import json as _json

        from haven.model.replica import Replicas

        kv = self.d.store().get(Keys.replicas(inst.name))
        reps = Replicas.from_json(_json.loads(kv.value)) if kv else None
        if reps is None or not reps.node_up_to_date(self.d.name, len(inst.disks),
                                                    inst.generation):
            what = ", ".join(reps.degraded(len(inst.disks))) if reps else "no replica states"
            if not force:
                raise OpPrereqError(
                    f"The replica of {inst.name} on {self.d.name} is not known UpToDate at "
                    f"generation {inst.generation} ({what}); starting it could lose "
                    f"acknowledged writes. Use --ignore-consistency to force it.")
            self.emit("forced", inst, f"started on {self.d.name} although its replica is "
                      f"not known UpToDate ({what})", "warning")
        # This node may have exported the replica as a secondary until now.
        self.d.replication.unexport(inst.name)

    def reboot(self, name: str) -> None:
        inst, _ = self.instance(name)
        hv = self.hypervisor(inst.hypervisor)
        if name not in hv.list():
            raise OpPrereqError(f"Instance {name} is not running on {self.d.name}; start it "
                                f"with gnt-instance startup.")
        hv.reboot(name)
        self.emit("rebooted", inst, f"rebooted on {self.d.name}")

    def kill(self, name: str) -> None:
        hv_name = self._running_hypervisor(name)
        if hv_name is not None:
            self.hypervisor(hv_name).kill(name)

    def _running_hypervisor(self, name: str) -> str | None:
        entry = self.all_vms().get(name)
        return entry[0] if entry else None

    def console_path(self, name: str) -> Path:
        inst, _ = self.instance(name)
        hv = self.hypervisor(inst.hypervisor)
        if name not in hv.list():
            raise OpPrereqError(f"Instance {name} is not running; start it with "
                                f"gnt-instance startup {name}.")
        return hv.console_path(name)

    # -- reporting ---------------------------------------------------------------------
    def publish(self, inst: Instance, st: str, info: VmInfo | None, restarts: int = 0,
                message: str = "") -> None:
        now = time.time()
        obs = Observed(name=inst.name, node=self.d.name, state=st,
                       pid=info.pid if info else 0, generation=inst.generation,
                       restarts=restarts, since=now, updated=now, message=message,
                       accel=info.accel if info else "")
        self.d.store().put(Keys.observed(inst.name), state.dumps(obs.to_json()))

    def retract_stale(self) -> list[str]:
        """Before this node says it is alive again, take back every "running" it
        published that is no longer true: after a crash or a fence its old records
        would otherwise show instances ``running`` here until the agent's next pass, and
        a console or migration sent on that word would fail.  Only records unchanged
        since read are rewritten (compare-and-swap), so a newer word from another node
        is never overwritten.  Returns the instances retracted."""
        store = self.d.store()
        kvs, _rev = store.list(OBSERVED)
        local = self.all_vms()
        done: list[str] = []
        for kv in kvs:
            obs = Observed.from_json(json.loads(kv.value))
            if obs.node != self.d.name or obs.state != "running" or obs.name in local:
                continue
            now = time.time()
            # Its node went down or fenced itself: the restart that follows is not the
            # VM's failure and is not counted against its crash-loop budget.
            new = replace(obs, state="stopped", pid=0, since=now, updated=now,
                          message=f"not running on {self.d.name} since its daemon returned",
                          with_node=True)
            if store.cas(kv.key, state.dumps(new.to_json()), kv.mod_revision) is not None:
                done.append(obs.name)
        if done:
            log.info("%s no longer runs %s (it was down); their state now says so",
                     self.d.name, ", ".join(done))
        return done

    def emit(self, kind: str, inst: Instance, message: str, severity: str = "info") -> None:
        ev = event.new(kind, f"instance/{inst.name}", self.d.name,
                       f"Instance {inst.name}: {message}", severity)
        try:
            self.d.store().put(ev.key(), ev.encode())
        except Exception as exc:  # an event lost must not fail the operation itself
            log.warning("could not record event %s: %s", kind, exc)


__all__ = ["HypervisorError", "NodeInstances"]

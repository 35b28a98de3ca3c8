"""``ext``: disks on external shared storage, through an ExtStorage provider.

Every node reaches every volume, so the instance may run, migrate or be recovered
anywhere.  ``create``/``remove``/``grow`` act on the storage; ``assemble`` attaches the
volume on the node that starts the VM (for the built-in ``iscsi`` provider: that
node's initiator is admitted to the volume's ACL) and ``detach`` undoes it when the VM
is gone from that node.  ``fence`` runs the provider's ``fence`` script, when it has
one, for a node that is dead or cut off: the storage itself then refuses that node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from haven.hypervisor.base import DiskSpec
from haven.model.instance import Disk, Instance
from haven.storage import extstorage as es
from haven.storage.base import DiskTemplate, StorageError


class ExtTemplate(DiskTemplate):
    NAME = "ext"
    SHARED = True

    def _ctx(self, node: str = "", initiator: str = "") -> es.Context:
        return es.Context(node or self.paths.node, initiator or self.paths.initiator,
                          self.paths.data_dir or Path("/var/lib/haven"))

    def _provider(self, inst: Instance, disk: Disk) -> es.Provider:
        if not disk.provider:
            raise StorageError(f"Disk {disk.index} of {inst.name} names no ExtStorage "
                               f"provider; give --disk {disk.index}:size=...,provider=NAME.")
        return es.find(disk.provider, self.paths.node)

    def _vol(self, disk: Disk) -> str:
        return disk.path or es.vol_name(disk.uuid, disk.index)

    def create(self, inst: Instance, disk: Disk) -> Disk:
        prov = self._provider(inst, disk)
        es.check_params(prov, disk.params, f"disk {disk.index} of {inst.name}")
        vol = es.vol_name(disk.uuid, disk.index)
        ctx = self._ctx()
        es.run(prov, "create", es.environment(ctx, vol, disk.params, size=disk.size,
                                              disk_uuid=disk.uuid),
               f"create volume {vol} ({disk.size} MiB) for disk {disk.index} of "
               f"{inst.name}")
        try:
            es.run(prov, "setinfo", es.environment(ctx, vol, disk.params,
                                                   metadata=f"originstname+{inst.name}",
                                                   disk_uuid=disk.uuid),
                   f"record the owner of volume {vol} ({inst.name})")
        except StorageError:
            self._remove(inst, disk, vol)
            raise
        return Disk(disk.uuid, disk.index, disk.size, vol, disk.format, disk.mode,
                    disk.provider, dict(disk.params))

    def remove(self, inst: Instance, disk: Disk) -> None:
        self._remove(inst, disk, self._vol(disk))

    def _remove(self, inst: Instance, disk: Disk, vol: str) -> None:
        prov = self._provider(inst, disk)
        env = es.environment(self._ctx(), vol, disk.params, disk_uuid=disk.uuid)
        es.run(prov, "detach", env, f"detach volume {vol} of {inst.name} before removing it")
        es.run(prov, "remove", env, f"remove volume {vol} of {inst.name}")

    def assemble(self, inst: Instance) -> tuple[DiskSpec, ...]:
        specs = []
        for disk in inst.disks:
            prov = self._provider(inst, disk)
            vol = self._vol(disk)
            what = f"attach volume {vol} (disk {disk.index} of {inst.name}) on " \
                   f"{self.paths.node or 'this node'}"
            out = es.run(prov, "attach", es.environment(self._ctx(), vol, disk.params,
                                                        disk_uuid=disk.uuid), what)
            got = es.parse_attach(prov, out, what)
            fmt: Literal["raw", "qcow2"] = "qcow2" if disk.format == "qcow2" else "raw"
            specs.append(DiskSpec(disk.index, got.dev_path, fmt, disk.mode == "ro",
                                  uri=got.uri, secret_file=got.secret_file,
                                  initiator=self.paths.initiator))
        return tuple(specs)

    def detach(self, inst: Instance) -> None:
        for disk in inst.disks:
            prov = self._provider(inst, disk)
            vol = self._vol(disk)
            es.run(prov, "detach", es.environment(self._ctx(), vol, disk.params,
                                                  disk_uuid=disk.uuid),
                   f"detach volume {vol} of {inst.name} from {self.paths.node or 'this node'}")

    def grow(self, inst: Instance, disk: Disk, new_size: int) -> None:
        prov = self._provider(inst, disk)
        vol = self._vol(disk)
        es.run(prov, "grow", es.environment(self._ctx(), vol, disk.params, size=disk.size,
                                            new_size=new_size, disk_uuid=disk.uuid),
               f"grow volume {vol} (disk {disk.index} of {inst.name}) to {new_size} MiB")

    def fence(self, inst: Instance, node: str, initiator: str) -> str:
        done = []
        for disk in inst.disks:
            prov = self._provider(inst, disk)
            if not prov.has("fence"):
                continue
            vol = self._vol(disk)
            es.run(prov, "fence", es.environment(self._ctx(node, initiator), vol,
                                                 disk.params, disk_uuid=disk.uuid),
                   f"fence node {node} off volume {vol} of {inst.name}", timeout=60)
            done.append(vol)
        if not done:
            return ""
        return f"the storage now refuses {node} on {', '.join(done)}"

    def free_mib(self) -> int:
        # The provider's storage, not this node's: its create refuses when it is full.
        return 2**40

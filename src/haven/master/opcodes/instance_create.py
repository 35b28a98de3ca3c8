"""The instance creation opcode (``gnt-instance add``): checks the disks, NICs and
parameters, places the instance, then creates its disks (and replicas), runs the OS
create script and starts it.  A failure removes what was created."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace
from typing import Any

from haven.errors import HavenError, InvalidInput, OpPrereqError
from haven.master import state
from haven.master.lu import REQUIRED, register
from haven.master.opcodes import instance_sync as sync
from haven.master.opcodes import instance_util as iu
from haven.master.opcodes.instance import (
    NAME,
    InstanceLU,
    check_beparams,
    check_hvparams,
    emit,
)
from haven.model.instance import Disk, Instance, Nic
from haven.model.keys import Keys

NIC_MODES = ("user", "bridged", "routed")


# Disk keys that are Haven's or Ganeti's own, never a provider's parameter.
_DISK_OWN_KEYS = frozenset({"size", "mode", "provider", "name", "uuid", "vg", "metavg",
                            "spindles", "adopt", "params"})


def ext_disk_params(d: dict[str, Any], i: int, name: str) -> dict[str, Any]:
    """An ``ext`` disk's provider and its parameters (every other ``key=value``, as
    Ganeti passes them to the provider as ``EXTP_KEY``)."""
    provider = str(d.get("provider") or "")
    if not provider:
        raise InvalidInput(f"Disk {i} of {name} uses the ext template and needs a "
                           f"provider (--disk {i}:size=1g,provider=NAME).")
    # Checked again when the job runs: the parameters already gathered come back in
    # "params".
    given = d.get("params")
    params = {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {}
    params.update({str(k): str(v) for k, v in d.items() if k not in _DISK_OWN_KEYS})
    return {"provider": provider, "params": params}


@register
class InstanceCreate(InstanceLU):
    OP_ID = "OP_INSTANCE_CREATE"
    PARAMS = {"instance_name": NAME, "os_type": (str, ""), "disk_template": (str, REQUIRED),
              "disks": (list, []), "nics": (list, []), "beparams": (dict, {}),
              "hvparams": (dict, {}), "osparams": (dict, {}), "pnode": (str, ""),
              "snode": (str, ""), "start": (bool, True), "no_install": (bool, False),
              "hypervisor": (str, "kvm"), "iallocator": (str, ""),
              "wait_for_sync": (bool, True), "name_check": (bool, False),
              "ip_check": (bool, False), "conflicts_check": (bool, True),
              "file_storage_dir": (str, ""), "file_driver": (str, ""),
              "disk_format": (str, "raw"), "os_variant": (str, "")}

    def check_arguments(self) -> None:
        super().check_arguments()
        name = self.op["instance_name"]
        iu.check_name(name)
        if self.op["hypervisor"] not in iu.HYPERVISORS:
            raise InvalidInput(f"Hypervisor {self.op['hypervisor']!r} is not supported; use "
                               f"kvm.")
        if not self.op["os_type"] and not self.op["no_install"]:
            raise InvalidInput(f"Instance {name} needs an OS (-o busybox) unless "
                               f"--no-install is given.")
        tmpl = self.op["disk_template"]
        if tmpl == "diskless":
            if self.op["disks"]:
                raise InvalidInput(f"Instance {name} uses the diskless template; drop "
                                   f"--disk.")
        elif not self.op["disks"]:
            raise InvalidInput(f"Instance {name} needs at least one disk (--disk 0:size=1g) "
                               f"with the {tmpl} template.")
        disks = []
        for i, d in enumerate(self.op["disks"]):
            if not isinstance(d, dict) or "size" not in d:
                raise InvalidInput(f"Disk {i} of {name} needs a size (--disk {i}:size=1g).")
            disk = {"size": iu.parse_size(d["size"], f"disk {i} of {name}"),
                    "mode": d.get("mode", "rw")}
            if tmpl == "ext":
                disk.update(ext_disk_params(d, i, name))
            elif d.get("provider"):
                raise InvalidInput(f"Disk {i} of {name}: provider= applies to the ext "
                                   f"template only (-t ext).")
            disks.append(disk)
        self.op["disks"] = disks
        if self.op["disk_format"] not in ("raw", "qcow2"):
            raise InvalidInput(f"Disk format {self.op['disk_format']!r} is not supported; "
                               f"use raw or qcow2.")
        self.op["beparams"] = check_beparams(self.op["beparams"], name)
        self.op["hvparams"] = check_hvparams(self.op["hvparams"], name)
        for i, n in enumerate(self.op["nics"]):
            if not isinstance(n, dict):
                raise InvalidInput(f"NIC {i} of {name} must be a set of parameters.")
            mode = n.get("mode", "user")
            if mode not in NIC_MODES:
                raise InvalidInput(f"NIC {i} of {name} has mode {mode!r}; use user or "
                                   f"bridged.")
            if mode == "bridged" and not n.get("link"):
                raise InvalidInput(f"NIC {i} of {name} is bridged: name its bridge with "
                                   f"link=BRIDGE.")

    def check_prereq(self) -> None:
        name = self.op["instance_name"]
        iu.check_unique_name(self, name)
        cluster = self.cluster()
        if self.op["hypervisor"] not in cluster.enabled_hypervisors:
            raise OpPrereqError(f"Hypervisor {self.op['hypervisor']} is not enabled in this "
                                f"cluster (enabled: {', '.join(cluster.enabled_hypervisors)}).")
        tmpl = self.op["disk_template"]
        if tmpl not in cluster.enabled_disk_templates:
            raise OpPrereqError(f"Disk template {tmpl} is not enabled in this cluster (enabled: "
                                f"{', '.join(cluster.enabled_disk_templates)}).")
        if self.op["os_type"]:
            from haven import osdef

            osdef.find_os(self.op["os_type"])
        if tmpl == "ext":
            from haven.storage import extstorage

            for i, d in enumerate(self.op["disks"]):
                prov = extstorage.find(d["provider"], state.master(self.c.store) or "")
                extstorage.check_params(prov, d["params"], f"disk {i} of {name}")
        memory = int(self.op["beparams"].get("maxmem") or self.op["beparams"].get("memory")
                     or 128)
        self.memory = memory
        from haven.master import iallocator as ia

        ialloc, snode = self.op["iallocator"], self.op["snode"]
        if self.op["pnode"] and ia.external(ialloc):
            raise InvalidInput(f"Do not specify both, iallocator and node: give instance "
                               f"{name} either -n or -I {ialloc}.")
        if self.op["pnode"]:
            iu.usable_node(self, self.op["pnode"], f"creating {name}")
            iu.check_memory(self, self.op["pnode"], memory, name)
            self.pnode = self.op["pnode"]
        elif ia.external(ialloc):
            chosen = ia.nodes_for_new(self, ialloc, ia.allocate_request(
                name, memory, tmpl, self.op["disks"],
                int(self.op["beparams"].get("vcpus") or 1), self.op["nics"],
                os_name=self.op["os_type"], hypervisor=self.op["hypervisor"]))
            self.pnode = chosen[0]
            iu.usable_node(self, self.pnode, f"creating {name}")
            snode = snode or (chosen[1] if len(chosen) > 1 else "")
        else:
            self.pnode = iu.allocate(self, memory, name, tmpl)
        self.snode = ""
        if tmpl == "drbd":
            self.snode = iu.secondary_for(self, self.pnode, snode, name,
                                          sum(d["size"] for d in self.op["disks"]))
        elif self.op["snode"]:
            raise InvalidInput(f"A secondary node applies to the drbd template only; "
                               f"drop ':{self.op['snode']}' from -n.")
        taken = iu.macs_in_use(self)
        self.nics = []
        for i, n in enumerate(self.op["nics"] or [{}]):
            mac = str(n.get("mac") or "").lower()
            if mac in ("", "auto", "generate"):
                mac = iu.new_mac(self, cluster.mac_prefix, taken)
            elif mac in taken:
                raise OpPrereqError(f"MAC address {mac} of NIC {i} is already used by another "
                                    f"instance; use mac=auto.")
            taken.add(mac)
            self.nics.append(Nic(i, mac, str(n.get("mode", "user")), str(n.get("link", "")),
                                 str(n.get("ip", "") or ""), str(n.get("name", ""))))

    def exec(self) -> Any:
        name = self.op["instance_name"]
        now = self.c.clock()
        be = dict(self.op["beparams"])
        be.setdefault("memory", self.memory)
        be.setdefault("maxmem", self.memory)
        be.setdefault("minmem", self.memory)
        be.setdefault("vcpus", 1)
        be.setdefault("auto_balance", True)
        inst = Instance(
            name=name, uuid=str(uuid.uuid4()), os=self.op["os_type"] or "none",
            hypervisor=self.op["hypervisor"], disk_template=self.op["disk_template"],
            primary_node=self.pnode,
            secondary_nodes=(self.snode,) if self.snode else (),
            network_port=iu.replication_port(self) if self.snode else 0,
            replication_key_id=secrets.token_hex(16) if self.snode else "",
            disks=tuple(Disk(str(uuid.uuid4()), i, d["size"], "", self.op["disk_format"],
                             d["mode"], str(d.get("provider", "")),
                             dict(d.get("params", {})))
                        for i, d in enumerate(self.op["disks"])),
            nics=tuple(self.nics), beparams=be, hvparams=self.op["hvparams"],
            osparams=self.op["osparams"], admin_state="down", ctime=now, mtime=now)
        if self.c.store.create(Keys.instance(name), state.dumps(inst.to_json()),
                               guard=self.require_guard()) is None:
            raise OpPrereqError(f"Instance name {name} was taken concurrently.")
        self.inst, self.rev = iu.read(self, name)
        done: list[str] = []
        try:
            if inst.disks:
                self.feedback(f"* creating {len(inst.disks)} disk(s) on {self.pnode}")
                created = iu.node_call(self, self.pnode, "create-disks", name)
                done.append("disks")
                self.save(replace(self.inst, disks=tuple(Disk.from_json(d) for d in created)))
            if self.snode:
                self.feedback(f"* creating the replica(s) on {self.snode}")
                iu.node_call(self, self.snode, "create-disks", name)
                done.append("replicas")
                iu.init_replicas(self, self.inst)
                # Export now, so the initial sync starts as soon as the VM runs.
                iu.node_call(self, self.snode, "export", name)
            if not self.op["no_install"]:
                self.feedback(f"* running the instance OS create script ({inst.os})")
                iu.node_call(self, self.pnode, "os", name, {"script": "create"},
                             timeout=1800)
            if self.op["start"]:
                self.feedback(f"* starting instance {name} on {self.pnode}")
                self.set_admin("up")
                done.append("started")
                iu.node_call(self, self.pnode, "start", name,
                             {"generation": self.inst.generation})
        except HavenError:
            self._rollback(done)
            raise
        emit(self, "created", name, f"created on {self.pnode} ({inst.disk_template}, "
             f"{self.memory} MiB)")
        if self.snode:
            self._wait_for_sync()
        return {"instance": name, "pnode": self.pnode}

    def _wait_for_sync(self) -> None:
        name = self.op["instance_name"]
        if not self.op["wait_for_sync"]:
            self.feedback(f"* not waiting for the disks of {name} to sync "
                          f"(--no-wait-for-sync): it cannot migrate until they are")
        elif not self.op["start"]:
            # Only the running VM's mirror copies a replica (see instance_sync).
            self.feedback(f"* not waiting for the disks of {name} to sync: the replica "
                          f"of a stopped instance is copied once it runs (gnt-instance "
                          f"startup {name})")
        else:
            sync.release_lock(self, f"instance/{name}")
            sync.wait_for_sync(self, self.inst)

    def _rollback(self, done: list[str]) -> None:
        name = self.op["instance_name"]
        self.feedback(f"Creating {name} failed; removing what was created")
        if "started" in done:
            try:
                iu.node_call(self, self.pnode, "stop", name, {"force": True})
            except HavenError as exc:
                self.feedback(f"Could not stop {name}: {exc.message}")
        if "disks" in done:
            try:
                iu.node_call(self, self.pnode, "remove-disks", name)
            except HavenError as exc:
                self.feedback(f"Could not remove the disks of {name}: {exc.message}")
        if "replicas" in done:
            try:
                iu.node_call(self, self.snode, "unexport", name)
                iu.node_call(self, self.snode, "remove-disks", name)
            except HavenError as exc:
                self.feedback(f"Could not remove the replicas of {name}: {exc.message}")
        guard = self.c.guard()
        if guard is not None:
            self.c.store.delete(Keys.instance(name), guard=guard)
            self.c.store.delete(Keys.observed(name), guard=guard)
            self.c.store.delete(Keys.replicas(name), guard=guard)


__all__ = ["InstanceCreate"]

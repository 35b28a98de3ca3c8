"""Instance opcodes: create, remove, startup, shutdown, reboot, modify, reinstall,
rename, grow-disk.  Each holds ``instance/<name>`` while it works, so the node agents
leave the instance alone; each failure undoes what the opcode did."""

from __future__ import annotations

import contextlib
import secrets
import time
import uuid
from dataclasses import replace
from typing import Any

from haven.errors import HavenError, InvalidInput, OpPrereqError
from haven.master import state
from haven.master.lu import REQUIRED, LogicalUnit, register
from haven.master.opcodes import instance_sync as sync
from haven.master.opcodes import instance_util as iu
from haven.master.opcodes.instance_power import shut_down
from haven.model import event
from haven.model.instance import Disk, Instance, Nic
from haven.model.keys import Keys

NAME = (str, REQUIRED)
BE_KEYS = {"memory", "minmem", "maxmem", "vcpus", "auto_balance", "always_failover",
           "spindle_use"}
HV_KEYS = {"kernel_path", "initrd_path", "kernel_args", "serial_console",
           "migration_downtime", "migration_bandwidth", "accel", "cpu_type",
           "machine_version", "root_path", "migration_mode"}
NIC_MODES = ("user", "bridged", "routed")


def check_beparams(be: dict[str, Any], name: str) -> dict[str, Any]:
    unknown = sorted(set(be) - BE_KEYS)
    if unknown:
        raise InvalidInput(f"Unknown backend parameter(s) {', '.join(unknown)} for {name}; "
                           f"known are {', '.join(sorted(BE_KEYS))}.")
    out = dict(be)
    for k in ("memory", "minmem", "maxmem"):
        if k in out and out[k] is not None:
            out[k] = iu.parse_size(out[k], f"-B {k} of {name}")
    if "memory" in out:
        out.setdefault("maxmem", out["memory"])
        out.setdefault("minmem", out["memory"])
    if "vcpus" in out:
        try:
            out["vcpus"] = int(out["vcpus"])
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"-B vcpus={out['vcpus']!r} of {name} is not a number.") \
                from exc
        if not 1 <= out["vcpus"] <= 64:
            raise InvalidInput(f"-B vcpus={out['vcpus']} of {name} is out of range (1-64).")
    if "auto_balance" in out:
        out["auto_balance"] = str(out["auto_balance"]).lower() in ("true", "yes", "1")
    return out


def check_hvparams(hv: dict[str, Any], name: str) -> dict[str, Any]:
    unknown = sorted(set(hv) - HV_KEYS)
    if unknown:
        raise InvalidInput(f"Unknown hypervisor parameter(s) {', '.join(unknown)} for "
                           f"{name}; known are {', '.join(sorted(HV_KEYS))}.")
    if hv.get("accel") not in (None, "auto", "kvm", "tcg"):
        raise InvalidInput(f"-H accel={hv['accel']} of {name} is not valid; use auto, kvm "
                           f"or tcg.")
    if hv.get("migration_mode") not in (None, "", "live", "non-live"):
        raise InvalidInput(f"-H migration_mode={hv['migration_mode']} of {name} is not "
                           f"valid; use live or non-live.")
    out = dict(hv)
    for k in ("migration_downtime", "migration_bandwidth"):
        if k in out:
            try:
                out[k] = int(out[k])
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"-H {k}={out[k]!r} of {name} is not a number.") from exc
    if "serial_console" in out:
        out["serial_console"] = str(out["serial_console"]).lower() in ("true", "yes", "1")
    return out


def emit(lu: LogicalUnit, kind: str, name: str, message: str, severity: str = "info") -> None:
    ev = event.new(kind, f"instance/{name}", lu.c.master_node, f"Instance {name}: {message}",
                   severity)
    # The event is a record of the change, never a reason to fail it.
    with contextlib.suppress(HavenError):
        lu.c.store.put(ev.key(), ev.encode())


class InstanceLU(LogicalUnit):
    def lock_names(self) -> list[str]:
        return [f"instance/{self.op['instance_name']}"]

    def load(self) -> None:
        self.inst, self.rev = iu.read(self, self.op["instance_name"])

    def save(self, inst: Instance) -> None:
        self.rev = iu.write(self, inst, self.rev)
        self.inst = inst

    def set_admin(self, admin_state: str) -> None:
        if self.inst.admin_state != admin_state:
            self.save(self.inst.modified(self.c.clock(), admin_state=admin_state))

    def is_running(self) -> bool:
        obs = state.observed(self.c.store, self.inst.name)
        return obs is not None and obs.state in ("running", "user_down") \
            and obs.node == self.inst.primary_node

    def require_stopped(self, what: str) -> None:
        if self.inst.admin_state == "up" or self.is_running():
            raise OpPrereqError(f"Instance {self.inst.name} is running; {what} needs it "
                                f"stopped (gnt-instance shutdown {self.inst.name}).")


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


@register
class InstanceRemove(InstanceLU):
    OP_ID = "OP_INSTANCE_REMOVE"
    PARAMS = {"instance_name": NAME, "shutdown_timeout": (float, 120.0),
              "ignore_failures": (bool, False)}

    def check_prereq(self) -> None:
        self.load()

    def exec(self) -> Any:
        name, node = self.inst.name, self.inst.primary_node
        self.set_admin("down")
        try:
            shut_down(self, node, name, self.op["shutdown_timeout"])
            iu.node_call(self, node, "remove-disks", name)
            for snode in self.inst.secondary_nodes:
                iu.node_call(self, snode, "unexport", name)
                iu.node_call(self, snode, "remove-disks", name)
        except HavenError as exc:
            if not self.op["ignore_failures"]:
                raise OpPrereqError(f"Could not remove instance {name} from node {node}: "
                                    f"{exc.message} Retry, or use --ignore-failures to drop "
                                    f"it from the configuration anyway.") from exc
            self.feedback(f"Warning: {exc.message}; removing {name} from the configuration")
        iu.forget_on(self, name, (node, *self.inst.secondary_nodes))
        guard = self.require_guard()
        self.c.store.delete(Keys.instance(name), guard=guard)
        self.c.store.delete(Keys.observed(name), guard=guard)
        self.c.store.delete(Keys.replicas(name), guard=guard)
        emit(self, "removed", name, f"removed from {node}")
        return {"instance": name, "removed": True}


@register
class InstanceStartup(InstanceLU):
    OP_ID = "OP_INSTANCE_STARTUP"
    RESUMABLE = True
    PARAMS = {"instance_name": NAME, "force": (bool, False), "ignore_offline_nodes":
              (bool, False), "no_remember": (bool, False), "startup_paused": (bool, False),
              "beparams": (dict, {}), "hvparams": (dict, {})}

    def check_prereq(self) -> None:
        self.load()
        iu.usable_node(self, self.inst.primary_node, f"starting {self.inst.name}")
        if not self.is_running():
            iu.check_memory(self, self.inst.primary_node, self.inst.memory, self.inst.name)

    def exec(self) -> Any:
        self.set_admin("up")
        res = iu.node_call(self, self.inst.primary_node, "start", self.inst.name,
                           {"generation": self.inst.generation})
        return {"instance": self.inst.name, "pid": res.get("pid")}


@register
class InstanceShutdown(InstanceLU):
    OP_ID = "OP_INSTANCE_SHUTDOWN"
    RESUMABLE = True
    PARAMS = {"instance_name": NAME, "timeout": (float, 120.0), "force": (bool, False),
              "ignore_offline_nodes": (bool, False), "no_remember": (bool, False)}

    def check_prereq(self) -> None:
        self.load()
        if self.op["timeout"] < 0:
            raise InvalidInput("The shutdown timeout must not be negative.")

    def exec(self) -> Any:
        self.set_admin("down")
        node = self.inst.primary_node
        if node not in state.alive(self.c.store):
            self.feedback(f"Warning: node {node} is down; {self.inst.name} is marked down "
                          f"and will not be restarted there")
            return {"instance": self.inst.name, "stopped": False}
        res = shut_down(self, node, self.inst.name, self.op["timeout"])
        return {"instance": self.inst.name, "stopped": res.get("stopped")}


@register
class InstanceReboot(InstanceLU):
    OP_ID = "OP_INSTANCE_REBOOT"
    PARAMS = {"instance_name": NAME, "reboot_type": (str, "hard"),
              "shutdown_timeout": (float, 120.0), "ignore_secondaries": (bool, False)}

    def check_arguments(self) -> None:
        super().check_arguments()
        if self.op["reboot_type"] not in ("soft", "hard", "full"):
            raise InvalidInput(f"Reboot type {self.op['reboot_type']!r} is not valid; use "
                               f"soft, hard or full.")

    def check_prereq(self) -> None:
        self.load()
        if self.inst.admin_state != "up" or not self.is_running():
            raise OpPrereqError(f"Instance {self.inst.name} is not running; start it with "
                                f"gnt-instance startup {self.inst.name}.")

    def exec(self) -> Any:
        node, name = self.inst.primary_node, self.inst.name
        if self.op["reboot_type"] == "full":
            shut_down(self, node, name, self.op["shutdown_timeout"])
            iu.node_call(self, node, "start", name, {"generation": self.inst.generation})
        else:
            iu.node_call(self, node, "reboot", name)
        return {"instance": name, "rebooted": self.op["reboot_type"]}


@register
class InstanceReinstall(InstanceLU):
    OP_ID = "OP_INSTANCE_REINSTALL"
    PARAMS = {"instance_name": NAME, "os_type": (str, ""), "osparams": (dict, {}),
              "force_variant": (bool, False)}

    def check_prereq(self) -> None:
        self.load()
        self.require_stopped("reinstalling")
        if self.op["os_type"]:
            from haven import osdef

            osdef.find_os(self.op["os_type"])

    def exec(self) -> Any:
        if self.op["os_type"] and self.op["os_type"] != self.inst.os:
            self.save(self.inst.modified(self.c.clock(), os=self.op["os_type"]))
        log = iu.node_call(self, self.inst.primary_node, "os", self.inst.name,
                           {"script": "create"}, timeout=1800)
        emit(self, "reinstalled", self.inst.name, f"reinstalled with {self.inst.os}")
        return {"instance": self.inst.name, "log": log}


@register
class InstanceRename(InstanceLU):
    OP_ID = "OP_INSTANCE_RENAME"
    PARAMS = {"instance_name": NAME, "new_name": (str, REQUIRED), "ip_check": (bool, False),
              "name_check": (bool, False)}

    def check_arguments(self) -> None:
        super().check_arguments()
        iu.check_name(self.op["new_name"])

    def lock_names(self) -> list[str]:
        return [f"instance/{self.op['instance_name']}", f"instance/{self.op['new_name']}"]

    def check_prereq(self) -> None:
        self.load()
        self.require_stopped("renaming")
        iu.check_unique_name(self, self.op["new_name"])

    def exec(self) -> Any:
        from haven.store.base import Compare, Delete, Put

        old, new = self.inst.name, self.op["new_name"]
        renamed = self.inst.modified(self.c.clock(), name=new)
        guard = self.require_guard()
        res = self.c.store.txn(
            [Compare(Keys.instance(old), "mod", "=", self.rev),
             Compare(Keys.instance(new), "create", "=", 0),
             Compare(guard.key, "create", "=", guard.create_revision)],
            [Put(Keys.instance(new), state.dumps(renamed.to_json())),
             Delete(Keys.instance(old)), Delete(Keys.observed(old))])
        if not res.succeeded:
            raise OpPrereqError(f"Instance {old} or the name {new} changed meanwhile; retry.")
        if self.inst.os != "none":
            try:
                iu.node_call(self, self.inst.primary_node, "os", new,
                             {"script": "rename", "env": {"OLD_INSTANCE_NAME": old}})
            except HavenError as exc:
                self.feedback(f"Warning: the OS rename script failed: {exc.message}")
        iu.forget_on(self, old, (self.inst.primary_node, *self.inst.secondary_nodes))
        emit(self, "renamed", new, f"renamed from {old}")
        return {"instance": new, "old_name": old}


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
class InstanceGrowDisk(InstanceLU):
    OP_ID = "OP_INSTANCE_GROW_DISK"
    PARAMS = {"instance_name": NAME, "disk": (int, REQUIRED), "amount": ((int, str), REQUIRED),
              "absolute": (bool, False), "wait_for_sync": (bool, True)}

    def check_prereq(self) -> None:
        self.load()
        disk = next((d for d in self.inst.disks if d.index == self.op["disk"]), None)
        if disk is None:
            raise OpPrereqError(f"Instance {self.inst.name} has no disk {self.op['disk']}.")
        amount = iu.parse_size(self.op["amount"], f"growing disk {disk.index}")
        self.new_size = amount if self.op["absolute"] else disk.size + amount
        if self.new_size <= disk.size:
            raise OpPrereqError(f"Disk {disk.index} of {self.inst.name} is {disk.size} MiB; "
                                f"it can only grow, not shrink to {self.new_size} MiB.")
        if self.inst.disk_template == "drbd":
            # Both replicas must grow together; with a live mirror QEMU 7.2 cannot.
            self.require_stopped("growing a replicated disk")
        elif self.inst.disk_template == "ext":
            # tgt sees a new size only when the LUN is added again, which fails the I/O
            # in flight: done while no initiator has a session.
            self.require_stopped("growing a disk on external storage")
        self.disk = disk

    def exec(self) -> Any:
        for node in (self.inst.primary_node, *self.inst.secondary_nodes):
            iu.node_call(self, node, "grow-disk", self.inst.name,
                         {"index": self.disk.index, "size": self.new_size})
        disks = tuple(replace(d, size=self.new_size) if d.index == self.disk.index else d
                      for d in self.inst.disks)
        self.save(self.inst.modified(self.c.clock(), disks=disks))
        return {"instance": self.inst.name, "disk": self.disk.index, "size": self.new_size}


__all__ = ["InstanceCreate", "time"]

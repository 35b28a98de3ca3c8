"""Instance opcodes: remove, startup, shutdown, reboot, reinstall, rename, grow-disk,
and what every instance opcode builds on (:class:`InstanceLU`, the ``-B``/``-H``
parameter checks, :func:`emit`).  Each holds ``instance/<name>`` while it works, so the
node agents leave the instance alone; each failure undoes what the opcode did.
Creation is in ``instance_create``, modify in ``instance_modify``."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from haven.errors import HavenError, InvalidInput, OpPrereqError
from haven.master import state
from haven.master.lu import REQUIRED, LogicalUnit, register
from haven.master.opcodes import instance_util as iu
from haven.master.opcodes.instance_power import shut_down
from haven.model import event
from haven.model.instance import Instance
from haven.model.keys import Keys

NAME = (str, REQUIRED)
BE_KEYS = {"memory", "minmem", "maxmem", "vcpus", "auto_balance", "always_failover",
           "spindle_use"}
HV_KEYS = {"kernel_path", "initrd_path", "kernel_args", "serial_console",
           "migration_downtime", "migration_bandwidth", "accel", "cpu_type",
           "machine_version", "root_path", "migration_mode"}


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

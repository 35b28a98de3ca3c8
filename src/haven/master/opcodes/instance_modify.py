"""``gnt-instance modify``: backend and hypervisor parameters, disks, new primary."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from haven.errors import HavenError, InvalidInput, OpPrereqError
from haven.master import state
from haven.master.lu import REQUIRED, register
from haven.master.opcodes import instance_util as iu
from haven.master.opcodes.instance import InstanceLU, check_beparams, check_hvparams, emit
from haven.model.ha import HA_VALUES
from haven.model.instance import Disk
from haven.model.keys import Keys

# gnt-instance modify's numeric HA settings and their ranges (0: the default).
_HA_NUMBERS = {"ha_priority": (-1000, 1000), "ha_max_restart": (0, 100),
               "ha_max_relocate": (0, 100)}


@register
class InstanceSetParams(InstanceLU):
    """Ganeti's ``disks`` is a list of ``[op, index, params]`` with op ``add`` or
    ``remove``."""

    OP_ID = "OP_INSTANCE_SET_PARAMS"
    PARAMS = {"instance_name": (str, REQUIRED), "beparams": (dict, {}),
              "hvparams": (dict, {}), "osparams": (dict, {}), "disks": (list, []),
              "nics": (list, []), "pnode": (str, ""), "os_name": (str, ""),
              "force": (bool, False), "offline": ((bool, type(None)), None),
              "wait_for_sync": (bool, True), "ha": (str, ""),
              "ha_priority": ((int, type(None)), None),
              "ha_max_restart": ((int, type(None)), None),
              "ha_max_relocate": ((int, type(None)), None)}

    def check_arguments(self) -> None:
        super().check_arguments()
        name = self.op["instance_name"]
        self.op["beparams"] = check_beparams(self.op["beparams"], name)
        self.op["hvparams"] = check_hvparams(self.op["hvparams"], name)
        for mod in self.op["disks"]:
            if not (isinstance(mod, list) and len(mod) == 3 and mod[0] in ("add", "remove")):
                raise InvalidInput(f"Disk change {mod!r} for {name} is not valid; use "
                                   f"--disk add:size=1g or --disk N:remove.")
            if mod[0] == "add":
                mod[2] = {"size": iu.parse_size((mod[2] or {}).get("size"),
                                                f"the new disk of {name}")}
        if self.op["nics"]:
            raise InvalidInput("Changing NICs of an existing instance is not supported yet; "
                               "recreate the instance.")
        self._check_ha(name)
        if not any(self.op[k] for k in ("beparams", "hvparams", "osparams", "disks", "pnode",
                                        "os_name", "ha")) and self.op["offline"] is None \
                and all(self.op[k] is None for k in _HA_NUMBERS):
            raise InvalidInput(f"Nothing to change for {name}; give -B, -H, --disk, "
                               f"--new-primary, -O or --ha.")

    def _check_ha(self, name: str) -> None:
        if self.op["ha"] and self.op["ha"] not in HA_VALUES:
            raise InvalidInput(f"--ha {self.op['ha']} for {name} is not valid; use --ha on "
                               f"or --ha off.")
        for key, (low, high) in _HA_NUMBERS.items():
            value = self.op[key]
            if value is not None and not low <= value <= high:
                flag = "--" + key.replace("_", "-")
                raise InvalidInput(f"{flag} {value} for {name} is out of range; give a "
                                   f"whole number from {low} to {high}.")

    def check_prereq(self) -> None:
        self.load()
        inst = self.inst
        if self.op["disks"]:
            if inst.disk_template == "diskless":
                raise OpPrereqError(f"Instance {inst.name} is diskless; it cannot have "
                                    f"disks.")
            for op, idx, _params in self.op["disks"]:
                if op == "remove":
                    self.require_stopped("removing a disk")
                    if not any(d.index == int(idx) for d in inst.disks):
                        raise OpPrereqError(f"Instance {inst.name} has no disk {idx}.")
                    if len(inst.disks) == 1:
                        raise OpPrereqError(f"Disk {idx} is the last disk of {inst.name}; "
                                            f"an instance keeps at least one.")
                else:
                    self.require_stopped("adding a disk")
        if self.op["pnode"]:
            self.require_stopped("changing the primary node")
            iu.refuse_if_migrating(self, inst.name, "gnt-instance modify --new-primary")
            if self.op["pnode"] == inst.primary_node:
                raise OpPrereqError(f"Node {self.op['pnode']} already is the primary node of "
                                    f"{inst.name}.")
            if inst.disk_template == "file":
                raise OpPrereqError(f"The disks of {inst.name} are files on "
                                    f"{inst.primary_node}; move it with gnt-instance move.")
            if inst.disk_template not in ("sharedfile", "diskless", "ext"):
                raise OpPrereqError(f"--new-primary does not apply to the "
                                    f"{inst.disk_template} template; use failover.")
            iu.usable_node(self, self.op["pnode"], f"moving {inst.name}")
        if "memory" in self.op["beparams"] or "maxmem" in self.op["beparams"]:
            mem = int(self.op["beparams"].get("maxmem") or self.op["beparams"]["memory"])
            if mem > inst.memory and self.is_running():
                iu.check_memory(self, inst.primary_node, mem, inst.name)

    def exec(self) -> Any:
        inst = self.inst
        changes: list[list[Any]] = []
        now = self.c.clock()
        if self.op["beparams"]:
            be = {**inst.beparams, **self.op["beparams"]}
            if "memory" in self.op["beparams"]:
                be["maxmem"] = be["minmem"] = self.op["beparams"]["memory"]
            inst = inst.modified(now, beparams=be)
            changes += [[f"be/{k}", v] for k, v in self.op["beparams"].items()]
        if self.op["hvparams"]:
            inst = inst.modified(now, hvparams={**inst.hvparams, **self.op["hvparams"]})
            changes += [[f"hv/{k}", v] for k, v in self.op["hvparams"].items()]
        if self.op["osparams"]:
            inst = inst.modified(now, osparams={**inst.osparams, **self.op["osparams"]})
            changes += [[f"os/{k}", v] for k, v in self.op["osparams"].items()]
        if self.op["os_name"]:
            inst = inst.modified(now, os=self.op["os_name"])
            changes.append(["os", self.op["os_name"]])
        if self.op["offline"] is not None:
            inst = inst.modified(now, admin_state="offline" if self.op["offline"] else "down")
            changes.append(["admin_state", inst.admin_state])
        ha_changes = {k: self.op[k] for k in ("ha", *_HA_NUMBERS)
                      if self.op[k] not in ("", None)}
        if ha_changes:
            inst = inst.modified(now, **ha_changes)
            changes += [[k, v] for k, v in ha_changes.items()]
        if self.op["pnode"]:
            inst = inst.modified(now, primary_node=self.op["pnode"],
                                 generation=inst.generation + 1)
            changes.append(["pnode", self.op["pnode"]])
        self.save(inst)
        for op, idx, params in self.op["disks"]:
            if op == "add":
                changes.append(self._add_disk(int(params["size"])))
            else:
                changes.append(self._remove_disk(int(idx)))
        if self.op["pnode"]:
            self.c.store.delete(Keys.observed(inst.name), guard=self.require_guard())
        emit(self, "modified", inst.name, ", ".join(f"{k}={v}" for k, v in changes))
        return changes

    def _add_disk(self, size: int) -> list[Any]:
        index = max((d.index for d in self.inst.disks), default=-1) + 1
        fmt = self.inst.disks[0].format if self.inst.disks else "raw"
        disk = Disk(str(uuid.uuid4()), index, size, "", fmt)
        self.save(self.inst.modified(self.c.clock(), disks=(*self.inst.disks, disk)))
        try:
            created = iu.node_call(self, self.inst.primary_node, "create-disks",
                                   self.inst.name, {"indices": [index]})
        except HavenError:
            self.save(self.inst.modified(self.c.clock(), disks=self.inst.disks[:-1]))
            raise
        new = Disk.from_json(created[0])
        self.save(self.inst.modified(self.c.clock(), disks=tuple(
            new if d.index == index else d for d in self.inst.disks)))
        return [f"disk/{index}", f"add:size={size}"]

    def _remove_disk(self, index: int) -> list[Any]:
        disk = next(d for d in self.inst.disks if d.index == index)
        iu.node_call(self, self.inst.primary_node, "remove-disks", self.inst.name,
                     {"disks": [disk.__dict__]})
        self.save(self.inst.modified(self.c.clock(), disks=tuple(
            d for d in self.inst.disks if d.index != index)))
        return [f"disk/{index}", "remove"]


__all__ = ["InstanceSetParams", "replace", "state"]

"""``OP_INSTANCE_QUERY_DATA``: Ganeti's detailed instance information (what RAPI's
``/2/instances/NAME/info`` job returns and ``gnt-instance info`` prints).

Read-only and lock-free: it reads the configuration and what the agents observed from
the store.  The result maps each instance name to Ganeti's ``LUInstanceQueryData`` dict.
"""

from __future__ import annotations

import json
from typing import Any

from haven.errors import InvalidInput, NotFoundError
from haven.master import state
from haven.master.lu import LogicalUnit, register
from haven.model.instance import Instance
from haven.model.keys import INSTANCES, Keys
from haven.model.replica import Replicas
from haven.store.base import Store

GROUP_NAME = "default"


def group_uuid(cluster_uuid: str) -> str:
    """The default node group's uuid: derived from the cluster's, so it never changes
    and needs no record of its own."""
    import uuid

    try:
        base = uuid.UUID(cluster_uuid)
    except ValueError:
        base = uuid.uuid5(uuid.NAMESPACE_DNS, cluster_uuid or "haven")
    return str(uuid.uuid5(base, "nodegroup/default"))


def _disk(inst: Instance, idx: int, reps: Replicas | None, static: bool) -> dict[str, Any]:
    d = inst.disks[idx]
    snode = inst.secondary_nodes[0] if inst.secondary_nodes else None
    drbd_info = None
    if inst.disk_template == "drbd" and snode:
        drbd_info = {"primary_node": inst.primary_node, "primary_minor": idx,
                     "secondary_node": snode, "secondary_minor": idx,
                     "port": inst.network_port, "secret": "<hidden>"}
    sstatus = None
    if not static and reps is not None and snode:
        sstatus = reps.state(snode, idx).to_json()
    return {"iv_name": f"disk/{idx}", "dev_type": inst.disk_template,
            "logical_id": [inst.disk_template, d.path] if d.path else None,
            "drbd_info": drbd_info, "pstatus": None, "sstatus": sstatus,
            "children": [], "mode": d.mode, "size": d.size, "spindles": None,
            "name": None, "uuid": d.uuid}


def instance_data(store: Store, inst: Instance, static: bool) -> dict[str, Any]:
    """One instance in ``LUInstanceQueryData``'s shape."""
    cluster = state.cluster(store)
    guuid = group_uuid(cluster.uuid)
    run_state = None
    if not static:
        obs = state.observed(store, inst.name)
        running = obs is not None and obs.state == "running" and \
            obs.node == inst.primary_node
        run_state = "up" if running else "down"
    rkv = store.get(Keys.replicas(inst.name))
    reps = Replicas.from_json(json.loads(rkv.value)) if rkv else None
    return {
        "name": inst.name, "config_state": inst.admin_state, "run_state": run_state,
        "pnode": inst.primary_node, "pnode_group_uuid": guuid,
        "pnode_group_name": GROUP_NAME, "snodes": list(inst.secondary_nodes),
        "snodes_group_uuids": [guuid for _ in inst.secondary_nodes],
        "snodes_group_names": [GROUP_NAME for _ in inst.secondary_nodes],
        "os": inst.os,
        "nics": [[n.name or None, None, n.ip or None,
                  n.mac, {"mode": n.mode, "link": n.link}, None, None]
                 for n in inst.nics],
        "disk_template": inst.disk_template,
        "disks": [_disk(inst, i, reps, static) for i in range(len(inst.disks))],
        "hypervisor": inst.hypervisor, "network_port": inst.network_port or None,
        "hv_instance": dict(inst.hvparams), "hv_actual": dict(inst.hvparams),
        "be_instance": dict(inst.beparams), "be_actual": dict(inst.beparams),
        "os_instance": dict(inst.osparams), "os_actual": dict(inst.osparams),
        "serial_no": inst.serial_no, "mtime": inst.mtime, "ctime": inst.ctime,
        "uuid": inst.uuid, "tags": list(inst.tags),
    }


@register
class InstanceQueryData(LogicalUnit):
    """``instances``: names (all when empty); ``static``: configuration only, no
    observed state."""

    OP_ID = "OP_INSTANCE_QUERY_DATA"
    PARAMS = {"instances": (list, []), "static": (bool, False),
              "use_locking": (bool, False)}

    def check_arguments(self) -> None:
        super().check_arguments()
        if not all(isinstance(n, str) for n in self.op["instances"]):
            raise InvalidInput("OP_INSTANCE_QUERY_DATA takes a list of instance names.")

    def check_prereq(self) -> None:
        store = self.c.store
        for name in self.op["instances"]:
            if store.get(Keys.instance(name)) is None:
                raise NotFoundError(f"Instance {name!r} does not exist; see "
                                    f"gnt-instance list.")

    def exec(self) -> Any:
        store = self.c.store
        kvs, _ = store.list(INSTANCES)
        insts = [Instance.from_json(json.loads(kv.value)) for kv in kvs]
        wanted = set(self.op["instances"])
        return {i.name: instance_data(store, i, self.op["static"])
                for i in insts if not wanted or i.name in wanted}


__all__ = ["InstanceQueryData", "group_uuid", "instance_data"]

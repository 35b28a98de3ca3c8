"""``GET /haven/ha``: the HA manager's view for ``haven ha status`` and the dashboard:
every node's HA state and every instance's HA setting and last recovery."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from haven.api.http import Router
from haven.master import state
from haven.model import ha
from haven.model.instance import Instance
from haven.model.keys import INSTANCES

if TYPE_CHECKING:
    from haven.api.node import NodeContext


def install(r: Router, d: NodeContext) -> None:
    r.add("GET", "/haven/ha", lambda _q: ha_status(d))


def records(d: NodeContext) -> dict[str, ha.InstanceHA]:
    kvs, _ = d.store().list(ha.HA_INSTANCES)
    return {r.name: r for r in (ha.InstanceHA.from_json(json.loads(kv.value)) for kv in kvs)}


def instance_ha(inst: Instance, rec: ha.InstanceHA | None) -> dict[str, Any]:
    """The ``ha`` fields of an instance view: setting, priority, last recovery."""
    out: dict[str, Any] = {"ha": "on" if ha.ha_enabled(inst) else "off",
                           "ha_priority": inst.ha_priority,
                           "ha_max_restart": inst.ha_max_restart or 5,
                           "ha_max_relocate": ha.max_relocate(inst)}
    if rec is not None:
        out["ha_state"] = rec.state
        out["ha_reason"] = rec.reason
        out["ha_recovery"] = rec.to_json()
    else:
        out["ha_state"], out["ha_reason"] = "", ""
    return out


def ha_status(d: NodeContext) -> dict[str, Any]:
    store = d.store()
    alive = set(state.alive(store))
    kvs, _ = store.list(ha.HA_NODES)
    node_ha = {r.node: r for r in (ha.NodeHA.from_json(json.loads(kv.value)) for kv in kvs)}
    master = state.master(store)
    nodes = []
    for n in sorted(state.nodes(store), key=lambda n: n.name):
        rec = node_ha.get(n.name) or ha.NodeHA(n.name)
        nodes.append({"name": n.name, "alive": n.name in alive, "master": n.name == master,
                      "offline": n.offline, "vm_capable": n.vm_capable,
                      "state": rec.state, "since": rec.since, "lost_at": rec.lost_at,
                      "reason": rec.reason})
    kvs, _ = store.list(INSTANCES)
    recs = records(d)
    instances = []
    for kv in kvs:
        inst = Instance.from_json(json.loads(kv.value))
        instances.append({"name": inst.name, "pnode": inst.primary_node,
                          "disk_template": inst.disk_template,
                          **instance_ha(inst, recs.get(inst.name))})
    return {"master": master, "nodes": nodes, "instances": instances}

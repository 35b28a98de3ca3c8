"""RAPI ``/2/groups``: Haven's one node group, ``default``.

Every node belongs to it; its uuid is derived from the cluster's (stable, no record
of its own), its tags live in the cluster object.  What would need more than one group
(create, rename, remove, assign nodes) is answered with Ganeti's error shape and 501.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from haven.api.routing import HttpError, Router
from haven.api.views import GROUP_NAME, NDPARAMS, ipolicy
from haven.errors import NotFoundError
from haven.master import state
from haven.master.opcodes.query import group_uuid
from haven.model.keys import INSTANCES
from haven.store.base import Store

if TYPE_CHECKING:
    from haven.api.node import NodeContext

ALLOC_POLICY = "preferred"


def install(r: Router, d: NodeContext) -> None:
    r.add("GET", "/2/groups", lambda q: list_groups(d.store(), q.qbool("bulk")))
    r.add("GET", "/2/groups/{name}", lambda q: one_group(d.store(), q.params["name"]))
    r.add("POST", "/2/groups", lambda _q: _single_group("create node groups"), write=True)
    r.add("DELETE", "/2/groups/{name}", lambda _q: _single_group("remove node groups"),
          write=True)
    r.add("PUT", "/2/groups/{name}/modify", lambda _q: _single_group(
        "change node group parameters"), write=True)
    r.add("PUT", "/2/groups/{name}/rename", lambda _q: _single_group(
        "rename node groups"), write=True)
    r.add("PUT", "/2/groups/{name}/assign-nodes", lambda _q: _single_group(
        "move nodes between node groups"), write=True)


def group_view(store: Store) -> dict[str, Any]:
    """The default group in RAPI's bulk shape (rlib2.G_FIELDS)."""
    cluster = state.cluster(store)
    nodes = sorted(n.name for n in state.nodes(store))
    kvs, _ = store.list(INSTANCES)
    insts = sorted(str(json.loads(kv.value)["name"]) for kv in kvs)
    return {
        "name": GROUP_NAME, "uuid": group_uuid(cluster.uuid),
        "alloc_policy": ALLOC_POLICY, "node_cnt": len(nodes), "node_list": nodes,
        "pinst_cnt": len(insts), "pinst_list": insts,
        "ipolicy": ipolicy(cluster.enabled_disk_templates), "custom_ipolicy": {},
        "diskparams": {}, "custom_diskparams": {}, "ndparams": dict(NDPARAMS),
        "custom_ndparams": {}, "networks": [], "tags": list(cluster.group_tags),
        "ctime": cluster.ctime, "mtime": cluster.mtime, "serial_no": cluster.serial_no,
    }


def list_groups(store: Store, bulk: bool) -> list[dict[str, Any]]:
    if bulk:
        return [group_view(store)]
    return [{"name": GROUP_NAME, "uri": f"/2/groups/{GROUP_NAME}"}]


def one_group(store: Store, name: str) -> dict[str, Any]:
    if name != GROUP_NAME:
        raise NotFoundError(f"Node group {name!r} does not exist; Haven has one group, "
                            f"{GROUP_NAME!r}.")
    return group_view(store)


def _single_group(what: str) -> Any:
    raise HttpError(501, f"Haven has one node group ({GROUP_NAME!r}) and cannot {what}; "
                         f"nothing was queued.", "wrong_input")


__all__ = ["group_view", "install", "list_groups", "one_group"]

"""Node routes: RAPI ``/2/nodes`` and the node-to-node ``/haven/node/*`` calls."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from haven import pki
from haven.api.rapi_create import refuse_dry_run
from haven.api.routing import HttpError, Request, Router
from haven.api.views import ROLE_NAMES, instances_by_node, node_view
from haven.errors import InvalidInput
from haven.master import state
from haven.master.opcodes.query import group_uuid
from haven.model.cluster import Cluster
from haven.model.instance import Instance
from haven.model.keys import INSTANCES, Keys
from haven.store import Store
from haven.store.tls import reload_certificates

if TYPE_CHECKING:
    from haven.api.node import NodeContext

ROLE_FLAGS = {  # RAPI role -> OP_NODE_SET_PARAMS flags
    "master-candidate": {"master_candidate": True, "offline": False, "drained": False},
    "regular": {"master_candidate": False, "offline": False, "drained": False},
    "drained": {"drained": True, "master_candidate": False},
    "offline": {"offline": True, "master_candidate": False},
}


def install(r: Router, d: NodeContext) -> None:
    from haven.api.routes import submit

    r.add("GET", "/2/nodes", lambda q: list_nodes(d, q))
    r.add("GET", "/2/nodes/{name}", lambda q: one_node(d, q.params["name"]))
    r.add("GET", "/2/nodes/{name}/role", lambda q: ROLE_NAMES[
        one_node(d, q.params["name"])["role"]])
    r.add("PUT", "/2/nodes/{name}/role", lambda q: submit(d, [set_role_op(q)]), write=True)
    r.add("POST", "/2/nodes/{name}/modify", lambda q: submit(d, [{
        "OP_ID": "OP_NODE_SET_PARAMS", "node_name": q.params["name"],
        **q.obj()}]), write=True)
    r.add("POST", "/2/nodes/{name}/evacuate", lambda q: submit(d, [evacuate_op(d, q)]),
          write=True)
    r.add("POST", "/2/nodes/{name}/migrate", lambda q: submit(d, [migrate_op(d, q)]),
          write=True)
    # Node daemon calls
    r.add("GET", "/haven/node/info", lambda _q: node_info(d))
    r.add("POST", "/haven/node/init", lambda q: local_init(d, q))
    r.add("POST", "/haven/node/join", lambda q: d.join_cluster(q.obj()))
    r.add("POST", "/haven/node/leave", lambda _q: d.leave_cluster(), write=True)
    r.add("POST", "/haven/node/redist", lambda q: redist(d, q.obj()), write=True)
    r.add("GET", "/haven/node/rapi-users", lambda _q: rapi_users(d), write=True)
    r.add("GET", "/haven/client-config", lambda _q: d.write_client_config(), write=True)
    r.add("POST", "/haven/master-failover", lambda q: d.master_failover(
        bool(q.obj().get("no_voting"))), write=True)
    r.add("POST", "/haven/node/master-failover-local", lambda q: _local_only(
        d, q, lambda: d.master_failover(bool(q.obj().get("no_voting")))))
    r.add("POST", "/haven/cluster/destroy", lambda _q: d.destroy_cluster(), write=True)



def list_nodes(d: NodeContext, q: Request) -> list[dict[str, Any]]:
    store = d.store()
    nodes = state.nodes(store)
    if not q.qbool("bulk"):
        return [{"id": n.name, "uri": f"/2/nodes/{n.name}"} for n in nodes]
    facts = state.facts(store)
    alive = state.alive(store)
    master = state.master(store)
    guuid = _group_uuid(store)
    pinst, sinst = instances_by_node(_all_instances(store))
    return [node_view(n, facts.get(n.name), master, n.name in alive,
                      pinst.get(n.name), sinst.get(n.name), guuid) for n in nodes]


def one_node(d: NodeContext, name: str) -> dict[str, Any]:
    store = d.store()
    n = state.node(store, name)
    facts = state.facts(store)
    pinst, sinst = instances_by_node(_all_instances(store))
    return node_view(n, facts.get(name), state.master(store), name in state.alive(store),
                     pinst.get(name), sinst.get(name), _group_uuid(store))


def _group_uuid(store: Store) -> str | None:
    # Nodes are listed even while the cluster record is missing (a cluster being torn
    # down); their group is then unknown.
    kv = store.get(Keys.cluster)
    return group_uuid(Cluster.from_json(json.loads(kv.value)).uuid) if kv else None


def _body_or_query(q: Request, keys: tuple[str, ...]) -> dict[str, Any]:
    """RAPI's newer calls send a body; older clients the same keys as query arguments."""
    body = q.obj()
    out = {k: v for k, v in body.items() if v is not None}
    for k in keys:
        if k not in out and q.qstr(k):
            out[k] = q.qstr(k)
    return out


def evacuate_op(d: NodeContext, q: Request) -> dict[str, Any]:
    """``POST /2/nodes/NAME/evacuate`` (``node-evac-res1``): OP_NODE_EVACUATE, whose
    result lists the jobs that move each instance."""
    refuse_dry_run(q)
    name = q.params["name"]
    state.node(d.store(), name)  # an unknown node is refused here (404)
    args = _body_or_query(q, ("iallocator", "remote_node", "mode"))
    if "early_release" in q.query:
        args.setdefault("early_release", q.qbool("early_release"))
    unknown = sorted(set(args) - {"iallocator", "remote_node", "mode", "early_release"})
    if unknown:
        raise InvalidInput(f"Evacuating node {name} does not take {', '.join(unknown)}.")
    return {"OP_ID": "OP_NODE_EVACUATE", "node_name": name, **args}


def migrate_op(d: NodeContext, q: Request) -> dict[str, Any]:
    """``POST /2/nodes/NAME/migrate`` (``node-migrate-reqv1``): body ``{"mode",
    "iallocator", "target_node"}``, or the older ``?mode=``/``?live=``."""
    refuse_dry_run(q)
    name = q.params["name"]
    state.node(d.store(), name)
    args = _body_or_query(q, ("mode",))
    if "live" in q.query and "mode" not in args:
        args["mode"] = "live" if q.qbool("live") else "non-live"
    unknown = sorted(set(args) - {"mode", "iallocator", "target_node", "live",
                                  "allow_runtime_changes", "ignore_ipolicy"})
    if unknown:
        raise InvalidInput(f"Migrating node {name} does not take {', '.join(unknown)}.")
    return {"OP_ID": "OP_NODE_MIGRATE", "node_name": name, **args}


def _all_instances(store: Store) -> list[Instance]:
    kvs, _ = store.list(INSTANCES)
    return [Instance.from_json(json.loads(kv.value)) for kv in kvs]


def set_role_op(q: Request) -> dict[str, Any]:
    role = q.qstr("role") or (q.body if isinstance(q.body, str) else None)
    if role not in ROLE_FLAGS:
        raise InvalidInput(f"Role {role!r} is not valid; use one of "
                           f"{', '.join(ROLE_FLAGS)}.")
    return {"OP_ID": "OP_NODE_SET_PARAMS", "node_name": q.params["name"],
            **ROLE_FLAGS[role], "force": q.qbool("force")}


def node_info(d: NodeContext) -> dict[str, Any]:
    js = d.local.joined()
    return {"name": d.name, "address": d.settings.address, "port": d.settings.api_port,
            "cluster": js.cluster_name if js else None, "etcd_member": d.member.running(),
            "active": d.joined is not None, "data_dir": str(d.settings.data_dir),
            "pid": os.getpid()}


def _local_only(d: NodeContext, q: Request, fn: Any) -> Any:
    # Calls that make this node a cluster or its master without credentials are
    # accepted only from this machine (the admin's shell on the node itself).
    if q.peer not in (d.settings.address, "127.0.0.1", "::1"):
        raise HttpError(403, f"This call is only accepted from node {d.name} itself.",
                        "environment_error")
    return fn()


def local_init(d: NodeContext, q: Request) -> dict[str, Any]:
    body = q.obj()
    result: dict[str, Any] = _local_only(d, q, lambda: d.init_cluster(
        str(body.get("cluster_name", "")), list(body.get("etcd_endpoints") or []),
        int(body.get("lease_ttl", 5)), bool(body.get("vm_capable", True)),
        str(body.get("shared_file_storage_dir") or ""),
        tuple(body.get("enabled_hypervisors") or ("kvm",))))
    return result


def rapi_users(d: NodeContext) -> dict[str, Any]:
    """This node's RAPI users file, for redist-conf to copy (None: there is none)."""
    uf = d.api.auth.users_file if d.api is not None else None
    return {"text": uf.text() if uf is not None and uf.path.exists() else None}


def redist(d: NodeContext, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save what the master sent: the cluster's keys (from its files, never from
    etcd), its RAPI users file; then rewrite the client config."""
    keys = (body or {}).get("keys")
    old_cert = d.local.etcd_cert_file.read_text() if d.local.etcd_cert_file.exists() else ""
    written = d.local.save_key_bundle(keys) if isinstance(keys, dict) else []
    replaced = ""
    if str(d.local.etcd_cert_file) in written:
        # This daemon's connections opened from now on present the new certificate,
        # so that the old one can be revoked (haven.revocation) without locking it out.
        reload_certificates(d.local.etcd_files)
        replaced = f"{pki.serial(old_cert):x}" if old_cert else ""
    crl = (body or {}).get("crl_pem")
    if isinstance(crl, str):
        written += d.local.save_crl(crl)
    text = (body or {}).get("rapi_users")
    uf = d.api.auth.users_file if d.api is not None else None
    if isinstance(text, str) and uf is not None and uf.replace(text):
        written.append(str(uf.path))
    before = d.local.client_file.read_text() if d.local.client_file.exists() else ""
    d.write_client_config()
    if d.local.client_file.read_text() != before:
        written.append(str(d.local.client_file))
    d.use_certificate()
    return {"node": d.name, "written": written, "replaced": replaced}

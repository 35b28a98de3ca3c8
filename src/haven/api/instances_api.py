"""Instance routes: RAPI ``/2/instances`` and ``/2/os``, Haven's console stream and
events, and the node-to-node ``/haven/node/instance/*`` calls jobs make."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from haven.api import instance_list
from haven.api.ha_api import instance_ha
from haven.api.ha_api import records as ha_records
from haven.api.routing import Request, Response, Router, Stream
from haven.api.views import filled_beparams
from haven.errors import NotFoundError
from haven.master import state
from haven.model.event import Event
from haven.model.ha import InstanceHA
from haven.model.instance import Instance, Observed, ganeti_status
from haven.model.keys import EVENTS, INSTANCES, OBSERVED, Keys
from haven.model.replica import Replicas

if TYPE_CHECKING:
    from haven.api.node import NodeContext


def install(r: Router, d: NodeContext) -> None:
    from haven.api.routes import submit

    def isubmit(q: Request, ops: list[dict[str, Any]]) -> int:
        # A job for an instance that does not exist is refused (404), not queued.
        one_instance(d, q.params["name"])
        return submit(d, ops)

    r.add("GET", "/2/instances", lambda q: Response(instance_list.bulk_json(d))
          if q.qbool("bulk") else list_instances(d, q))
    r.add("GET", "/2/instances/{name}", lambda q: one_instance(d, q.params["name"]))
    r.add("POST", "/2/instances", lambda q: submit(d, create_ops(d, q)), write=True)
    r.add("GET", "/2/instances/{name}/info", lambda q: instance_info_job(d, q))
    r.add("DELETE", "/2/instances/{name}", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_REMOVE", "instance_name": q.params["name"],
        "shutdown_timeout": float(q.qstr("shutdown_timeout") or 120)}]), write=True)
    r.add("PUT", "/2/instances/{name}/startup", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_STARTUP", "instance_name": q.params["name"],
        "force": q.qbool("force")}]), write=True)
    r.add("PUT", "/2/instances/{name}/shutdown", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": q.params["name"],
        "timeout": float(q.obj().get("timeout", q.qstr("timeout") or 120))}]), write=True)
    r.add("POST", "/2/instances/{name}/reboot", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_REBOOT", "instance_name": q.params["name"],
        "reboot_type": q.qstr("type") or "hard"}]), write=True)
    r.add("PUT", "/2/instances/{name}/modify", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_SET_PARAMS", "instance_name": q.params["name"],
        **q.obj()}]), write=True)
    r.add("POST", "/2/instances/{name}/reinstall", lambda q: submit(
        d, reinstall_ops(d, q)), write=True)
    r.add("PUT", "/2/instances/{name}/rename", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_RENAME", "instance_name": q.params["name"],
        "new_name": q.obj().get("new_name", "")}]), write=True)
    r.add("PUT", "/2/instances/{name}/failover", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": q.params["name"],
        **q.obj()}]), write=True)
    r.add("PUT", "/2/instances/{name}/activate-disks", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_ACTIVATE_DISKS", "instance_name": q.params["name"]}]),
          write=True)
    r.add("PUT", "/2/instances/{name}/deactivate-disks", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_DEACTIVATE_DISKS", "instance_name": q.params["name"]}]),
          write=True)
    r.add("POST", "/2/instances/{name}/replace-disks", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_REPLACE_DISKS", "instance_name": q.params["name"],
        "mode": q.qstr("mode") or "replace_auto", "remote_node": q.qstr("remote_node") or ""}]),
          write=True)
    r.add("POST", "/2/instances/{name}/disk/{idx}/grow", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_GROW_DISK", "instance_name": q.params["name"],
        "disk": int(q.params["idx"]), **q.obj()}]), write=True)
    r.add("GET", "/2/instances/{name}/console", lambda q: console_info(d, q.params["name"]),
          write=True)
    r.add("GET", "/2/os", lambda _q: sorted({f"{o['name']}+{v}" if v else o["name"]
                                              for o in os_diagnose()
                                              if o["valid"] and not o["shadowed"]
                                              for v in (o["variants"] or [""])}))
    r.add("GET", "/haven/os", lambda _q: os_diagnose())
    r.add("GET", "/haven/events", lambda q: events(d, q))
    # node-to-node calls, made by jobs on the master
    base = "/haven/node/instance/{name}"
    m = d.instances
    r.add("POST", base + "/create-disks", lambda q: m.create_disks(
        q.params["name"], q.obj().get("indices")), write=True)
    r.add("POST", base + "/remove-disks", lambda q: m.remove_disks(
        q.params["name"], q.obj().get("disks")), write=True)
    r.add("POST", base + "/forget", lambda q: m.forget(q.params["name"]), write=True)
    r.add("POST", base + "/grow-disk", lambda q: m.grow_disk(
        q.params["name"], q.body_field("index", int), q.body_field("size", int)), write=True)
    r.add("POST", base + "/fence-disks", lambda q: m.fence_disks(
        q.params["name"], q.body_field("node", str)), write=True)
    r.add("POST", base + "/os", lambda q: m.run_os(
        q.params["name"], q.body_field("script", str), q.obj().get("os"),
        q.obj().get("env") or {}), write=True)
    r.add("POST", base + "/start", lambda q: m.start(
        q.params["name"], q.obj().get("generation"),
        force=bool(q.obj().get("force", False))), write=True)
    rep = d.replication
    r.add("POST", base + "/export", lambda q: rep.export(m.instance(q.params["name"])[0]),
          write=True)
    r.add("POST", base + "/unexport", lambda q: rep.unexport(q.params["name"]), write=True)
    r.add("POST", base + "/unprotect", lambda q: unprotect(d, q.params["name"]), write=True)
    r.add("GET", "/haven/node/volumes", lambda _q: volumes(d), write=True)
    mig = d.migration
    r.add("POST", base + "/migrate-accept", lambda q: mig.accept(q.params["name"]),
          write=True)
    r.add("POST", base + "/migrate-send", lambda q: mig.send(
        q.params["name"], q.body_field("uri", str), q.body_field("target", str),
        bool(q.obj().get("live", True))), write=True)
    r.add("POST", base + "/migrate-abort", lambda q: mig.abort_incoming(q.params["name"]),
          write=True)
    r.add("POST", base + "/migrate-finish", lambda q: mig.finish_source(q.params["name"]),
          write=True)
    r.add("POST", base + "/migrate-wait", lambda q: mig.wait_running(
        q.params["name"], bool(q.obj().get("resume", False))), write=True)
    r.add("POST", base + "/migrate-resume", lambda q: mig.resume(q.params["name"]),
          write=True)
    r.add("GET", base + "/disk/{idx}", lambda q: Stream(d.disk_stream(
        q.params["name"], int(q.params["idx"]))), write=True)
    r.add("POST", base + "/pull-disks", lambda q: pull_disks(
        d, q.params["name"], q.body_field("source", str)), write=True)
    r.add("PUT", "/2/instances/{name}/migrate", lambda q: isubmit(q, [{
        "OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": q.params["name"],
        **q.obj()}]), write=True)
    r.add("POST", base + "/stop", lambda q: m.stop(
        q.params["name"], float(q.obj().get("timeout", 120)),
        bool(q.obj().get("force", False))), write=True)
    r.add("POST", base + "/power-button", lambda q: m.power_button(
        q.params["name"], float(q.obj().get("wait", 0))), write=True)
    r.add("POST", base + "/reboot", lambda q: m.reboot(q.params["name"]), write=True)
    r.add("POST", base + "/kill", lambda q: m.kill(q.params["name"]), write=True)
    r.add("GET", base + "/console-path", lambda q: str(m.console_path(q.params["name"])),
          write=True)
    r.add("GET", "/haven/node/vms", lambda _q: {
        n: {"hypervisor": hv, **info.__dict__} for n, (hv, info) in m.all_vms().items()})



def create_ops(d: NodeContext, q: Request) -> list[dict[str, Any]]:
    """RAPI's instance-create body (``__version__`` 1) as Haven's job (see
    :mod:`haven.api.rapi_create`; ``wait_for_sync``: false returns before a drbd
    replica is in sync, as ``--no-wait-for-sync``)."""
    from haven.api import rapi_create

    rapi_create.refuse_dry_run(q)
    return rapi_create.create_ops(q.body, state.cluster(d.store()).enabled_disk_templates)


def create_op(body: dict[str, Any]) -> dict[str, Any]:
    """The OP_INSTANCE_CREATE of a creation body (version 1 if it names none)."""
    from haven.api import rapi_create

    return rapi_create.create_ops({rapi_create.REQ_VERSION: 1, **body})[0]


def reinstall_ops(d: NodeContext, q: Request) -> list[dict[str, Any]]:
    """Ganeti's reinstall: shut down, reinstall, start again unless told not to
    (body ``{"os", "osparams", "start"}``, or the older ``?os=&nostartup=1``)."""
    from haven.api import rapi_create

    rapi_create.refuse_dry_run(q)
    name = q.params["name"]
    one_instance(d, name)  # an unknown instance is refused here (404)
    return rapi_create.reinstall_ops(name, q.body, q.qstr("os"), q.qbool("nostartup"))


def instance_info_job(d: NodeContext, q: Request) -> int:
    """``/2/instances/NAME/info``: a job whose result is Ganeti's instance data."""
    from haven.api.routes import submit

    name = q.params["name"]
    one_instance(d, name)  # an unknown instance is refused here (404)
    return submit(d, [{"OP_ID": "OP_INSTANCE_QUERY_DATA", "instances": [name],
                       "static": q.qbool("static")}])


def _instances(d: NodeContext) -> tuple[list[Instance], dict[str, Observed]]:
    store = d.store()
    kvs, _ = store.list(INSTANCES)
    insts = [Instance.from_json(json.loads(kv.value)) for kv in kvs]
    okvs, _ = store.list(OBSERVED)
    obs = {}
    for kv in okvs:
        o = Observed.from_json(json.loads(kv.value))
        obs[o.name] = o
    return insts, obs


def instance_view(inst: Instance, obs: Observed | None, alive: set[str],
                  offline: set[str], reps: Replicas | None = None,
                  ha_rec: InstanceHA | None = None) -> dict[str, Any]:
    """An instance in RAPI's bulk shape (Ganeti's field names)."""
    elsewhere = obs.node if obs is not None and obs.state == "running" and \
        obs.node != inst.primary_node else None
    status = ganeti_status(inst, obs, inst.primary_node in alive,
                           inst.primary_node in offline, elsewhere)
    running = status in ("running", "ERROR_up")
    return {
        "name": inst.name, "uuid": inst.uuid, "os": inst.os, "hypervisor": inst.hypervisor,
        "pnode": inst.primary_node, "snodes": list(inst.secondary_nodes),
        "disk_template": inst.disk_template, "admin_state": inst.admin_state,
        "admin_up": inst.admin_state == "up", "status": status, "oper_state": running,
        "oper_ram": inst.memory if running else None,
        "oper_vcpus": inst.vcpus if running else None,
        "beparams": filled_beparams(inst), "hvparams": inst.hvparams,
        "osparams": inst.osparams, "custom_beparams": inst.beparams,
        "custom_hvparams": inst.hvparams, "custom_osparams": inst.osparams,
        "custom_nicparams": [{"mode": n.mode, "link": n.link} for n in inst.nics],
        "disk.sizes": [dk.size for dk in inst.disks],
        "disk_usage": sum(dk.size for dk in inst.disks),
        "disk.count": len(inst.disks),
        # No spindle accounting: Ganeti answers null per disk without exclusive storage.
        "disk.spindles": [None for _ in inst.disks],
        "disk.uuids": [dk.uuid for dk in inst.disks],
        "disk.names": [None for _ in inst.disks],
        "nic.macs": [n.mac for n in inst.nics], "nic.ips": [n.ip or None for n in inst.nics],
        "nic.modes": [n.mode for n in inst.nics], "nic.links": [n.link for n in inst.nics],
        "nic.count": len(inst.nics), "tags": list(inst.tags),
        "nic.names": [n.name or None for n in inst.nics],
        "nic.uuids": [None for _ in inst.nics],
        "nic.bridges": [n.link if n.mode == "bridged" else None for n in inst.nics],
        "nic.networks": [None for _ in inst.nics],
        "nic.networks.names": [None for _ in inst.nics],
        "ctime": inst.ctime, "mtime": inst.mtime, "serial_no": inst.serial_no,
        "generation": inst.generation,
        "restarts": obs.restarts if obs else 0, "pid": obs.pid if obs and running else None,
        "accel": obs.accel if obs and running else None,
        "observed": obs.message if obs else "",
        "disks": [dk.__dict__ for dk in inst.disks],
        "nics": [n.__dict__ for n in inst.nics],
        "network_port": inst.network_port or None,
        "replicas": reps.to_json()["nodes"] if reps else {},
        "replica_generation": reps.generation if reps else None,
        "degraded": _degraded(inst, reps),
        **instance_ha(inst, ha_rec),
    }


def _degraded(inst: Instance, reps: Replicas | None) -> list[str]:
    if inst.disk_template != "drbd":
        return []
    if reps is None:
        return ["no replica states yet"]
    out = reps.degraded(len(inst.disks))
    if reps.generation != inst.generation:
        out.append(f"states from generation {reps.generation}")
    return out


def list_instances(d: NodeContext, q: Request) -> list[dict[str, Any]]:
    if q.qbool("bulk"):
        return instance_list.bulk(d)
    kvs, _ = d.store().list(INSTANCES)
    names = [kv.key[len(INSTANCES):] for kv in kvs]
    return [{"id": n, "uri": f"/2/instances/{n}"} for n in names]


def one_instance(d: NodeContext, name: str) -> dict[str, Any]:
    store = d.store()
    kv = store.get(Keys.instance(name))
    if kv is None:
        raise NotFoundError(f"Instance {name!r} does not exist; see gnt-instance list.")
    inst = Instance.from_json(json.loads(kv.value))
    okv = store.get(Keys.observed(name))
    obs = Observed.from_json(json.loads(okv.value)) if okv else None
    alive = set(state.alive(store))
    offline = {n.name for n in state.nodes(store) if n.offline}
    rkv = store.get(Keys.replicas(name))
    reps = Replicas.from_json(json.loads(rkv.value)) if rkv else None
    return instance_view(inst, obs, alive, offline, reps, ha_records(d).get(name))


def console_info(d: NodeContext, name: str) -> dict[str, Any]:
    """RAPI's console description: the command to run on the primary node."""
    inst = one_instance(d, name)
    node = state.node(d.store(), inst["pnode"])
    path = d.rpc().call(node.primary_ip, node.api_port, "GET",
                        f"/haven/node/instance/{name}/console-path")
    return {"instance": name, "kind": "ssh", "host": node.primary_ip, "node": node.name,
            "command": ["socat", "STDIO,raw,echo=0,escape=0x1d", f"UNIX-CONNECT:{path}"],
            "message": f"Serial console of {name} on {node.name}"}


def os_diagnose() -> list[dict[str, Any]]:
    """Every OS directory in the search path, valid or not (``gnt-os diagnose``)."""
    from haven import osdef

    out = []
    for st in osdef.diagnose_os():
        d = st.definition
        out.append({"name": st.name, "path": str(st.path), "valid": st.valid,
                    "message": st.reason or ("shadowed by an earlier directory"
                                             if st.shadowed else ""),
                    "shadowed": st.shadowed,
                    "variants": list(d.variants) if d else [],
                    "api_versions": list(d.api_versions) if d else [],
                    "parameters": [list(p) for p in d.parameters] if d else []})
    return out


def events(d: NodeContext, q: Request) -> list[dict[str, Any]]:
    """Events after the key ``after`` (all if absent); with ``wait`` long-poll up to
    10 s for the next ones."""
    store = d.store()
    after = q.qstr("after") or ""
    limit = int(q.qstr("limit") or 1000)
    deadline = time.monotonic() + (10.0 if q.qbool("wait") else 0.0)
    while True:
        kvs, _ = store.list(EVENTS)
        out = [{"key": kv.key, **Event.from_json(json.loads(kv.value)).to_json()}
               for kv in kvs if kv.key > EVENTS + after.removeprefix(EVENTS)]
        if out or time.monotonic() >= deadline:
            return out[-limit:]
        joined = d.joined
        if joined is None:
            return out
        joined.hub.wait(min(1.0, deadline - time.monotonic()))


def unprotect(d: NodeContext, name: str) -> None:
    """Stop mirroring the instance's disks (the agent protects again, to the current
    secondary, once the job that asked for this releases the instance)."""
    from haven.hypervisor.qemu import replication

    inst, _ = d.instances.instance(name)
    if name not in d.instances.all_vms():
        return
    qmp = d.qmp_path(name)
    for disk in inst.disks:
        replication.unprotect(qmp, disk.index)


def volumes(d: NodeContext) -> list[dict[str, Any]]:
    """Every disk file this node holds, and the instance it belongs to."""
    insts, _ = _instances(d)
    by_uuid = {i.uuid: i for i in insts}
    paths = d.instances.storage_paths()
    out = []
    for kind, root in (("file", paths.file), ("drbd", paths.file.parent / "drbd")):
        if not root.exists():
            continue
        for f in sorted(root.glob("*/*")):
            inst = by_uuid.get(f.parent.name)
            out.append({"node": d.name, "phys": str(f), "vg": kind, "name": f.name,
                        "size": f.stat().st_size // 2**20,
                        "instance": inst.name if inst else "-"})
    return out


def pull_disks(d: NodeContext, name: str, source: str) -> int:
    """Copy every disk of ``name`` from ``source`` into this node's (created) files."""
    total = 0
    inst, _ = d.instances.instance(name)
    for disk in inst.disks:
        total += d.pull_disk(name, source, disk.index)
    return total

"""Placement from the store: the built-in allocator's model, and Ganeti's iallocators.

``-I NAME`` / ``--iallocator NAME`` runs Ganeti's iallocator protocol (doc/iallocator.rst,
lib/masterd/iallocator.py): the cluster and a request go to the script ``NAME`` in
:data:`SEARCH_PATH` as one JSON file; it prints ``{"success", "info", "result"}``.
``-I haven``, ``-I .`` or no ``-I`` is the built-in allocator (:mod:`haven.master.allocator`).

Requests, as Ganeti's:

- ``allocate`` (a new instance; ``required_nodes`` 2 for ``drbd``, else 1),
- ``relocate`` with ``relocate_from`` [primary] and ``required_nodes`` 1: the target of
  a failover or migration of a shared-storage instance (Ganeti's
  ``TLMigrateInstance._RunAllocator``, IAReqRelocate; hail answers it with a
  change-primary evacuation).

Where Haven's input differs from Ganeti's, and why:

- A node whose daemon holds no lease is sent as ``offline`` (Ganeti fails the whole
  request when a node does not answer; Haven knows the node is gone).
- ``reserved_memory`` is what the host itself uses (total - free - its running VMs), and
  hail runs with ``--static-kvm-node-memory=0`` so it uses that figure instead of its
  fixed 4 GiB guess for KVM hosts, which would leave small nodes no memory at all.
- Haven has no instance policy: the ``ipolicy`` sent limits nothing but the enabled
  disk templates.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haven.errors import ECODE_ENVIRON, InsufficientResources, OpPrereqError
from haven.master import state
from haven.master.allocator import InstLoad, Model, NodeCap, place
from haven.master.lu import LogicalUnit
from haven.model.instance import Instance
from haven.model.keys import INSTANCES, OBSERVED
from haven.store.base import Store

log = logging.getLogger(__name__)

#: Where iallocator scripts are looked for, first match wins (Ganeti's
#: IALLOCATOR_SEARCH_PATH on Debian).
SEARCH_PATH: tuple[str, ...] = ("/usr/local/lib/ganeti/iallocators",
                                "/usr/lib/ganeti/iallocators")
#: Names meaning the built-in allocator ("." is Ganeti's shortcut for the cluster's
#: default iallocator, which is Haven's own).
BUILTIN = frozenset({"", ".", "haven"})
TIMEOUT = 60.0  # seconds an iallocator may take
# Ganeti's size of a drbd disk's metadata (constants.DRBD_META_SIZE), in MiB.
DRBD_META_SIZE = 128
SPEC_MIN = {"memory-size": 1, "cpu-count": 1, "disk-count": 0, "disk-size": 1,
            "nic-count": 0, "spindle-use": 0}
SPEC_MAX = {"memory-size": 1 << 24, "cpu-count": 1024, "disk-count": 64,
            "disk-size": 1 << 30, "nic-count": 64, "spindle-use": 1024}
SPEC_STD = {"memory-size": 128, "cpu-count": 1, "disk-count": 1, "disk-size": 1024,
            "nic-count": 1, "spindle-use": 1}


class IAllocatorError(OpPrereqError):
    """The iallocator could not be run or its answer makes no sense."""

    ecode = ECODE_ENVIRON


def external(name: str) -> bool:
    """``name`` names an iallocator script, not the built-in allocator."""
    return name not in BUILTIN


# --- the model, from the store -------------------------------------------------------


def _running(store: Store) -> set[tuple[str, str]]:
    kvs, _ = store.list(OBSERVED)
    out = set()
    for kv in kvs:
        o = json.loads(kv.value)
        if o.get("state") == "running":
            out.add((str(o.get("name")), str(o.get("node"))))
    return out


def _instances(store: Store) -> list[Instance]:
    kvs, _ = store.list(INSTANCES)
    return [Instance.from_json(json.loads(kv.value)) for kv in kvs]


def read_model(store: Store, exclude: str | None = None) -> Model:
    """The placement model of the cluster now; instance ``exclude`` (the one being
    placed or moved) is left out.  A node's free memory is what its facts report minus
    the ``up`` instances placed on it that are not running yet; a node without facts
    has none."""
    facts = state.facts(store)
    alive = set(state.alive(store))
    running = _running(store)
    insts = [i for i in _instances(store) if i.name != exclude]
    free = {name: f.memory_free for name, f in facts.items()}
    for inst in insts:
        if inst.admin_state == "up" and (inst.name, inst.primary_node) not in running \
                and inst.primary_node in free:
            free[inst.primary_node] -= inst.memory
    nodes = [NodeCap(n.name, facts[n.name].memory_total if n.name in facts else 0,
                     free.get(n.name, 0), n.vm_capable, n.offline, n.drained,
                     n.name in alive and n.name in facts)
             for n in state.nodes(store)]
    loads = [InstLoad(i.name, i.primary_node, i.memory, i.admin_state == "up",
                      i.disk_template, i.secondary_nodes[0] if i.secondary_nodes else "")
             for i in insts]
    return Model.of(nodes, loads)


# --- Ganeti's iallocator input -------------------------------------------------------


def disk_space(template: str, sizes: Sequence[int]) -> int:
    """Ganeti's ComputeDiskSize: what the disks take on a node's storage."""
    if template == "diskless":
        return 0
    if template == "drbd":
        return sum(sizes) + DRBD_META_SIZE * len(sizes)
    return sum(sizes)


def _nic(mac: str, mode: str, link: str, ip: str) -> dict[str, Any]:
    nic: dict[str, Any] = {"mac": mac or None, "ip": ip or None, "link": link or None}
    if mode == "bridged":  # Haven's "user" networking has no Ganeti equivalent: no mode
        nic.update(mode="bridged", bridge=link)
    return nic


def _ipolicy(templates: Sequence[str]) -> dict[str, Any]:
    return {"minmax": [{"min": SPEC_MIN, "max": SPEC_MAX}], "std": SPEC_STD,
            "disk-templates": list(templates), "vcpu-ratio": 1024.0,
            "spindle-ratio": 1024.0}


def cluster_input(store: Store, exclude: str | None = None) -> dict[str, Any]:
    """Ganeti's iallocator input without its ``request``: cluster, group, nodes and
    instances as lib/masterd/iallocator.py's _ComputeClusterData builds them."""
    from haven.master.opcodes.query import GROUP_NAME, group_uuid

    cluster = state.cluster(store)
    guuid = group_uuid(cluster.uuid)
    model = read_model(store, exclude)
    facts = state.facts(store)
    running = _running(store)
    insts = _instances(store)
    ipolicy = _ipolicy(cluster.enabled_disk_templates)
    nodes: dict[str, Any] = {}
    for n in state.nodes(store):
        cap = model.nodes[n.name]
        entry: dict[str, Any] = {
            "tags": list(n.tags), "primary_ip": n.primary_ip,
            "secondary_ip": n.secondary_ip, "offline": n.offline or not cap.alive,
            "drained": n.drained, "master_candidate": n.master_candidate,
            "group": guuid, "master_capable": n.master_capable,
            "vm_capable": n.vm_capable,
            "ndparams": {"spindle_count": 1, "exclusive_storage": False,
                         "oob_program": None}}
        f = facts.get(n.name)
        if f is not None and cap.alive:
            mine = [i for i in insts if i.primary_node == n.name]
            in_use = sum(i.memory for i in mine if (i.name, n.name) in running)
            entry.update({
                "total_memory": f.memory_total, "free_memory": max(0, cap.memory_free),
                "reserved_memory": max(0, f.memory_total - f.memory_free - in_use),
                "total_disk": f.storage_size, "free_disk": f.storage_free,
                "total_spindles": 0, "free_spindles": 0,
                "total_cpus": f.cpu_total, "reserved_cpus": 0,
                "i_pri_memory": sum(i.memory for i in mine),
                "i_pri_up_memory": sum(i.memory for i in mine if i.admin_state == "up")})
        nodes[n.name] = entry
    instances = {}
    for i in insts:
        if i.name == exclude:
            continue
        sizes = [d.size for d in i.disks]
        instances[i.name] = {
            "tags": list(i.tags), "admin_state": i.admin_state if i.admin_state in
            ("up", "down", "offline") else "down", "vcpus": i.vcpus, "memory": i.memory,
            "spindle_use": 1, "os": i.os, "nodes": [i.primary_node, *i.secondary_nodes],
            "nics": [_nic(c.mac, c.mode, c.link, c.ip) for c in i.nics],
            "disks": [{"size": d.size, "mode": d.mode, "spindles": None} for d in i.disks],
            "disk_template": i.disk_template, "disks_active": i.admin_state == "up",
            "hypervisor": i.hypervisor,
            "disk_space_total": disk_space(i.disk_template, sizes)}
    return {
        "version": 2, "cluster_name": cluster.name, "cluster_tags": list(cluster.tags),
        "enabled_hypervisors": list(cluster.enabled_hypervisors), "ipolicy": ipolicy,
        "nodegroups": {guuid: {"name": GROUP_NAME, "alloc_policy": "preferred",
                               "networks": [], "ipolicy": ipolicy,
                               "tags": list(cluster.group_tags)}},
        "nodes": nodes, "instances": instances}


def allocate_request(name: str, memory: int, disk_template: str,
                     disks: Sequence[dict[str, Any]], vcpus: int = 1,
                     nics: Sequence[dict[str, Any]] = (), tags: Sequence[str] = (),
                     os_name: str = "", hypervisor: str = "kvm") -> dict[str, Any]:
    """Ganeti's IAReqInstanceAlloc.GetRequest (``disks``: ``{"size", "mode"}`` MiB)."""
    sizes = [int(d["size"]) for d in disks]
    return {"type": "allocate", "name": name, "memory": memory,
            "disks": [{"size": int(d["size"]), "mode": d.get("mode", "rw")}
                      for d in disks],
            "disk_space_total": disk_space(disk_template, sizes),
            "disk_template": disk_template, "vcpus": vcpus,
            "nics": [_nic(str(n.get("mac") or ""), str(n.get("mode", "")),
                          str(n.get("link", "")), str(n.get("ip", "") or ""))
                     for n in nics],
            "tags": list(tags), "os": os_name, "spindle_use": 1,
            "required_nodes": 2 if disk_template == "drbd" else 1,
            "hypervisor": hypervisor}


def relocate_request(inst: Instance) -> dict[str, Any]:
    """Ganeti's IAReqRelocate from the primary: a new primary for a shared-storage
    instance (failover or migration target)."""
    return {"type": "relocate", "name": inst.name, "required_nodes": 1,
            "relocate_from": [inst.primary_node],
            "disk_space_total": disk_space(inst.disk_template,
                                           [d.size for d in inst.disks])}


# --- running a script ----------------------------------------------------------------


def find_script(name: str, search_path: Sequence[str] = SEARCH_PATH) -> str:
    """The path of iallocator ``name`` (a bare name, looked up in ``search_path``)."""
    if "/" in name or name in (".", ".."):
        raise IAllocatorError(f"Iallocator name {name!r} must be a bare script name found "
                              f"in {' or '.join(search_path)}.")
    for d in search_path:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise IAllocatorError(f"Can't compute nodes using iallocator '{name}': no such "
                          f"script in {' or '.join(search_path)}; install it (hail is in "
                          f"Debian's ganeti-htools) or leave out -I for Haven's own.")


def parse_answer(name: str, text: str, required: int) -> list[str]:
    """The node names of an iallocator's answer, checked as Ganeti's _ValidateResult
    does; a refusal raises :class:`InsufficientResources` with Ganeti's sentence."""
    def bad(why: str) -> IAllocatorError:
        return IAllocatorError(f"Can't compute nodes using iallocator '{name}': its answer "
                               f"is not valid ({why}); check the script by hand with its "
                               f"input file.")
    try:
        answer = json.loads(text)
    except ValueError as exc:
        raise bad(f"not JSON: {exc}") from exc
    if not isinstance(answer, dict):
        raise bad("not a dict")
    if "nodes" in answer and "result" not in answer:  # Ganeti's backward compatibility
        answer["result"] = answer.pop("nodes")
    for key in ("success", "info", "result"):
        if key not in answer:
            raise bad(f"missing key '{key}'")
    if not answer["success"]:
        raise InsufficientResources(f"Can't compute nodes using iallocator '{name}': "
                                    f"{answer['info']}")
    result = answer["result"]
    if not isinstance(result, list) or not all(isinstance(n, str) for n in result):
        raise bad(f"expected a list of node names, got {result!r}")
    if len(result) != required:
        raise bad(f"iallocator returned invalid number of nodes ({len(result)}), "
                  f"required {required}")
    return result


def run(name: str, data: dict[str, Any], search_path: Sequence[str] = SEARCH_PATH,
        timeout: float = TIMEOUT) -> list[str]:
    """Run iallocator ``name`` on ``data`` (input with its ``request``); the nodes it
    chose, each one a node of ``data``."""
    script = find_script(name, search_path)
    args = [script]
    if Path(script).name == "hail":
        args.append("--static-kvm-node-memory=0")  # see the module docstring
    with tempfile.NamedTemporaryFile("w", prefix="haven-ialloc-", suffix=".json") as f:
        json.dump(data, f)
        f.flush()
        log.debug("running iallocator %s on %s", script, f.name)
        try:
            proc = subprocess.run([*args, f.name], capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise IAllocatorError(f"Can't compute nodes using iallocator '{name}': it did "
                                  f"not answer within {timeout:g} s.") from exc
        except OSError as exc:
            raise IAllocatorError(f"Can't compute nodes using iallocator '{name}': "
                                  f"{script} could not be run ({exc.strerror}).") from exc
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise IAllocatorError(f"Can't compute nodes using iallocator '{name}': it failed "
                              f"with exit status {proc.returncode} ({why}).")
    nodes = parse_answer(name, proc.stdout, int(data["request"]["required_nodes"]))
    unknown = [n for n in nodes if n not in data["nodes"]]
    if unknown:
        raise IAllocatorError(f"Can't compute nodes using iallocator '{name}': it chose "
                              f"{', '.join(unknown)}, not a node of this cluster.")
    return nodes


# --- what the opcodes call -----------------------------------------------------------


def nodes_for_new(lu: LogicalUnit, iallocator: str, request: dict[str, Any]) -> list[str]:
    """Nodes for a new instance from iallocator ``iallocator`` (``request``: from
    :func:`allocate_request`): [primary] or [primary, secondary]."""
    data = cluster_input(lu.c.store)
    data["request"] = request
    nodes = run(iallocator, data)
    lu.feedback(f"- INFO: Selected nodes for instance {request['name']} via iallocator "
                f"{iallocator}: {', '.join(nodes)}")
    return nodes


def move_target(lu: LogicalUnit, inst: Instance, iallocator: str) -> str:
    """Where a shared-storage instance fails over or migrates to when no node is named:
    iallocator ``iallocator``'s relocate answer, or the built-in allocator's choice (the
    best node other than its primary, N+1 first, see :func:`allocator.place`)."""
    if external(iallocator):
        data = cluster_input(lu.c.store)
        data["request"] = relocate_request(inst)
        node = run(iallocator, data)[0]
        if node == inst.primary_node:
            raise IAllocatorError(f"Can't compute nodes using iallocator '{iallocator}': "
                                  f"it chose {node}, the node {inst.name} already runs on.")
        lu.feedback(f"- INFO: Selected nodes for instance {inst.name} via iallocator "
                    f"{iallocator}: {node}")
        return node
    model = read_model(lu.c.store, exclude=inst.name)
    if not any(n.allocatable for n in model.nodes.values() if n.name != inst.primary_node):
        raise OpPrereqError(f"No other node can take {inst.name}: every other node is "
                            f"down, offline, drained or not vm_capable.")
    where = place(model, inst.memory, name=inst.name, disk_template=inst.disk_template,
                  exclude=(inst.primary_node,))
    if where.warning:
        lu.feedback(f"Warning: {where.warning}")
    return where.node

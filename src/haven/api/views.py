"""How objects look through the API: Ganeti RAPI's field names and shapes."""

from __future__ import annotations

import platform
from typing import Any

from haven import __version__
from haven.model.cluster import Cluster
from haven.model.instance import Instance
from haven.model.node import Node, NodeFacts

ROLE_NAMES = {"M": "master", "C": "master-candidate", "R": "regular", "D": "drained",
              "O": "offline"}


def instances_by_node(instances: list[Instance]
                      ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Ganeti's ``pinst_list``/``sinst_list``: node name -> sorted names of the instances
    it is primary for, and of those whose (drbd) secondary it is."""
    pinst: dict[str, list[str]] = {}
    sinst: dict[str, list[str]] = {}
    for inst in sorted(instances, key=lambda i: i.name):
        pinst.setdefault(inst.primary_node, []).append(inst.name)
        for node in inst.secondary_nodes:
            sinst.setdefault(node, []).append(inst.name)
    return pinst, sinst


def node_view(n: Node, f: NodeFacts | None, master: str | None, alive: bool,
              pinst: list[str] | None = None, sinst: list[str] | None = None
              ) -> dict[str, Any]:
    """A node as RAPI's bulk ``/2/nodes`` returns it (live fields None when unknown)."""
    live = f is not None and alive and not n.offline
    pinst = pinst or []
    sinst = sinst or []
    return {
        "name": n.name, "uuid": n.uuid, "pip": n.primary_ip, "sip": n.secondary_ip,
        "master": n.name == master, "master_candidate": n.master_candidate,
        "master_capable": n.master_capable, "vm_capable": n.vm_capable,
        "offline": n.offline, "drained": n.drained, "role": n.role(master),
        "group": "default", "ctime": n.ctime, "mtime": n.mtime, "serial_no": n.serial_no,
        "mtotal": f.memory_total if live and f else None,
        "mnode": f.memory_dom0 if live and f else None,
        "mfree": f.memory_free if live and f else None,
        "dtotal": f.storage_size if live and f else None,
        "dfree": f.storage_free if live and f else None,
        "ctotal": f.cpu_total if live and f else None,
        "cnodes": 1 if live else None,
        "pinst_cnt": len(pinst), "sinst_cnt": len(sinst),
        "pinst_list": pinst, "sinst_list": sinst, "tags": [],
        "ndparams": {}, "powered": True,
        # Haven's own fields
        "alive": alive,
        # The agent, never its parameters (they hold the BMC's password).
        "fence_agent": n.fence_agent or None,
        "accel": f.accel if f else None,
        "hypervisors": list(f.hypervisors) if f else [],
        "version": f.version if f else None,
        "os": f.os_release if f else None,
        "facts_updated": f.updated if f else None,
        "etcd_member_id": f"{n.etcd_member_id:x}" if n.etcd_member_id else None,
        "etcd_client_url": n.etcd_client_url or None,
        "api_port": n.api_port,
    }


def cluster_view(c: Cluster, master: str | None) -> dict[str, Any]:
    """``/2/info``: Ganeti's QueryClusterInfo keys that apply to Haven."""
    return {
        "name": c.name, "uuid": c.uuid, "master": master, "ctime": c.ctime,
        "mtime": c.mtime, "serial_no": c.serial_no,
        "software_version": __version__, "protocol_version": 2040000,
        "config_version": 3000000, "os_api_version": 20,
        "export_version": 0, "vcs_version": f"haven-{__version__}",
        "architecture": [platform.architecture()[0], platform.machine()],
        "default_hypervisor": c.enabled_hypervisors[0] if c.enabled_hypervisors else None,
        "enabled_hypervisors": list(c.enabled_hypervisors),
        "enabled_disk_templates": list(c.enabled_disk_templates),
        "hvparams": {}, "os_hvp": {}, "osparams": {}, "beparams": {}, "nicparams": {},
        "ndparams": {}, "diskparams": {}, "ipolicy": {},
        "candidate_pool_size": c.candidate_pool_size, "mac_prefix": c.mac_prefix,
        "master_netdev": None, "file_storage_dir": c.file_storage_dir,
        "shared_file_storage_dir": c.shared_file_storage_dir,
        "tags": [], "maintain_node_health": False, "uid_pool": [],
        "default_iallocator": "haven", "max_running_jobs": 25, "max_tracked_jobs": 25,
        "etcd_managed": c.etcd_managed, "etcd_endpoints": list(c.etcd_endpoints),
        "lease_ttl": c.lease_ttl,
    }

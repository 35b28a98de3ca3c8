"""How objects look through the API: Ganeti RAPI's field names and shapes."""

from __future__ import annotations

import platform
from typing import Any

from haven import __version__
from haven.model.cluster import Cluster
from haven.model.instance import Instance
from haven.model.node import Node, NodeFacts

GROUP_NAME = "default"  # Haven's one node group

# Ganeti's default node parameters (constants.NDC_DEFAULTS) for what Haven has.
NDPARAMS: dict[str, Any] = {"exclusive_storage": False, "spindle_count": 1,
                            "oob_program": "", "ovs": False, "ssh_port": 22,
                            "cpu_speed": 1.0}

# Ganeti's default instance policy (constants.IPOLICY_DEFAULTS), complete as htools
# require it, limited to the disk templates the cluster has enabled.
ISPEC_MIN = {"memory-size": 128, "cpu-count": 1, "disk-count": 1, "disk-size": 1024,
             "nic-count": 1, "spindle-use": 1}
ISPEC_MAX = {"memory-size": 32768, "cpu-count": 8, "disk-count": 16,
             "disk-size": 1024 * 1024, "nic-count": 8, "spindle-use": 12}
ISPEC_STD = dict(ISPEC_MIN)


def ipolicy(disk_templates: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """A complete ipolicy (``minmax``, ``std``, ``disk-templates``, ratios)."""
    return {"minmax": [{"min": dict(ISPEC_MIN, **{"disk-count": 0, "disk-size": 0,
                                                 "nic-count": 0, "spindle-use": 0}),
                        "max": dict(ISPEC_MAX)}],
            "std": dict(ISPEC_STD), "disk-templates": list(disk_templates),
            "vcpu-ratio": 4.0, "spindle-ratio": 32.0}


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
              pinst: list[str] | None = None, sinst: list[str] | None = None,
              group_uuid: str | None = None) -> dict[str, Any]:
    """A node as RAPI's bulk ``/2/nodes`` returns it (live fields None when unknown,
    as Ganeti's for a node it cannot reach).  ``group_uuid``: the default group's."""
    live = f is not None and alive and not n.offline
    pinst = pinst or []
    sinst = sinst or []
    return {
        "name": n.name, "uuid": n.uuid, "pip": n.primary_ip, "sip": n.secondary_ip,
        "master": n.name == master, "master_candidate": n.master_candidate,
        "master_capable": n.master_capable, "vm_capable": n.vm_capable,
        "offline": n.offline, "drained": n.drained, "role": n.role(master),
        "group": GROUP_NAME, "group.uuid": group_uuid, "ctime": n.ctime,
        "mtime": n.mtime, "serial_no": n.serial_no,
        "mtotal": f.memory_total if live and f else None,
        "mnode": f.memory_dom0 if live and f else None,
        "mfree": f.memory_free if live and f else None,
        "dtotal": f.storage_size if live and f else None,
        "dfree": f.storage_free if live and f else None,
        "ctotal": f.cpu_total if live and f else None,
        # KVM guests share the host's CPUs: Ganeti counts them all as the node OS's
        # (hv_base.GetLinuxNodeInfo's cpu_dom0).
        "cnos": f.cpu_total if live and f else None,
        "cnodes": 1 if live else None, "csockets": 1 if live else None,
        # No spindle accounting (exclusive_storage is off): htools then read
        # ndparams.spindle_count and these zeros.
        "sptotal": 0 if live else None, "spfree": 0 if live else None,
        "pinst_cnt": len(pinst), "sinst_cnt": len(sinst),
        "pinst_list": pinst, "sinst_list": sinst, "tags": list(n.tags),
        "ndparams": dict(NDPARAMS), "powered": True,
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
        "ndparams": dict(NDPARAMS), "diskparams": {},
        "ipolicy": ipolicy(c.enabled_disk_templates),
        "candidate_pool_size": c.candidate_pool_size, "mac_prefix": c.mac_prefix,
        "master_netdev": None, "file_storage_dir": c.file_storage_dir,
        "shared_file_storage_dir": c.shared_file_storage_dir,
        "tags": list(c.tags), "maintain_node_health": False, "uid_pool": [],
        "default_iallocator": "haven", "max_running_jobs": 25, "max_tracked_jobs": 25,
        "etcd_managed": c.etcd_managed, "etcd_endpoints": list(c.etcd_endpoints),
        "lease_ttl": c.lease_ttl,
    }


# Ganeti's backend parameter defaults (constants.BEC_DEFAULTS) for what Haven has.
BE_DEFAULTS: dict[str, Any] = {"always_failover": False, "auto_balance": True,
                               "spindle_use": 1, "vcpus": 1}


def filled_beparams(inst: Instance) -> dict[str, Any]:
    """An instance's backend parameters with the defaults filled in, ``memory`` being
    ``maxmem`` (rlib2._UpdateBeparams): htools read vcpus, auto_balance, spindle_use."""
    be = {**BE_DEFAULTS, "minmem": inst.memory, "maxmem": inst.memory, **inst.beparams}
    be["memory"] = be["maxmem"]
    return be

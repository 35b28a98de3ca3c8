"""Nodes (``nodes/<name>``: configuration) and their facts (``facts/<name>``: observed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from haven.model.fields import known

# Ganeti's node roles (constants.NR_*), as shown in the "Role" column.
ROLE_MASTER = "M"
ROLE_CANDIDATE = "C"
ROLE_REGULAR = "R"
ROLE_DRAINED = "D"
ROLE_OFFLINE = "O"


@dataclass(frozen=True)
class Node:
    """A node's configuration, changed only by jobs.

    ``master_candidate``: it votes in etcd (managed etcd) and campaigns for master.
    ``etcd_member_id``: its etcd member, 0 if it has none.
    """

    name: str
    uuid: str
    primary_ip: str
    secondary_ip: str
    api_port: int
    master_capable: bool = True
    master_candidate: bool = True
    vm_capable: bool = True
    offline: bool = False
    drained: bool = False
    etcd_member_id: int = 0
    etcd_client_url: str = ""
    etcd_peer_url: str = ""
    # The agent that turns it off from outside (haven.fence.agents): "" none,
    # "haven-local", or a fence-agents script name with its parameters.
    fence_agent: str = ""
    fence_params: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()  # Ganeti's tags (absent in older records: none)
    ctime: float = 0.0
    mtime: float = 0.0
    serial_no: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        kw = known(cls, data)
        kw["tags"] = tuple(kw.get("tags") or ())
        return cls(**kw)

    @property
    def api_url(self) -> str:
        return f"https://{self.primary_ip}:{self.api_port}"

    def role(self, master: str | None) -> str:
        """Ganeti's one-letter role, the master first (query.py's _GetNodeRole)."""
        if self.name == master:
            return ROLE_MASTER
        if self.master_candidate:
            return ROLE_CANDIDATE
        if self.drained:
            return ROLE_DRAINED
        if self.offline:
            return ROLE_OFFLINE
        return ROLE_REGULAR

    def modified(self, now: float, **changes: Any) -> Node:
        return replace(self, mtime=now, serial_no=self.serial_no + 1, **changes)


@dataclass(frozen=True)
class NodeFacts:
    """What a node daemon observed about its machine; sizes in MiB."""

    name: str
    memory_total: int
    memory_free: int
    memory_dom0: int
    cpu_total: int
    storage_size: int
    storage_free: int
    hypervisors: tuple[str, ...]
    accel: str
    version: str
    architecture: str
    os_release: str
    updated: float
    boot_id: str = ""
    hv_version: str = ""  # ``qemu-system-x86_64 --version``'s first line
    cpu_model: str = ""  # the host CPU's model name (what ``-cpu host`` exposes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeFacts:
        kw = known(cls, data)
        kw["hypervisors"] = tuple(kw.get("hypervisors", ()))
        return cls(**kw)

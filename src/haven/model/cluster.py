"""The cluster object (``cluster`` key)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from haven.model.fields import known


@dataclass(frozen=True)
class Cluster:
    """Cluster-wide configuration.

    ``etcd_managed``: Haven runs one etcd member per master candidate; otherwise
    ``etcd_endpoints`` names an external etcd the cluster only uses.
    ``cert_pem``/``key_pem``: the cluster's TLS identity, served by every node's API
    and pinned by every client (Ganeti's ``server.pem``).
    ``rapi_users``: user name -> {"password": <sha256 hex with salt>, "salt", "write"}.
    ``admin_password``: the CLI's own RAPI user, copied into every client config.
    Records written before tags existed read as untagged.
    """

    name: str
    uuid: str
    ctime: float
    mtime: float
    etcd_managed: bool
    etcd_endpoints: tuple[str, ...]
    cert_pem: str
    key_pem: str
    rapi_users: dict[str, dict[str, Any]] = field(default_factory=dict)
    admin_user: str = "haven-admin"
    admin_password: str = ""
    lease_ttl: int = 5
    api_port: int = 5080
    enabled_hypervisors: tuple[str, ...] = ("kvm",)
    enabled_disk_templates: tuple[str, ...] = ("file", "sharedfile", "diskless", "drbd", "ext")
    file_storage_dir: str = "/srv/ganeti/file-storage"
    shared_file_storage_dir: str = "/srv/ganeti/shared-file-storage"
    mac_prefix: str = "aa:00:00"
    candidate_pool_size: int = 10
    # Ganeti's tags: the cluster's own, and those of the one node group ("default").
    tags: tuple[str, ...] = ()
    group_tags: tuple[str, ...] = ()
    serial_no: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cluster:
        kw = known(cls, data)
        for k in ("etcd_endpoints", "enabled_hypervisors", "enabled_disk_templates", "tags",
                  "group_tags"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def touched(self, now: float) -> Cluster:
        return replace(self, mtime=now, serial_no=self.serial_no + 1)

"""Settings of one node daemon, validated once at start and passed explicitly."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from haven.errors import InvalidInput

DEFAULT_DATA_DIR = Path("/var/lib/haven")
DEFAULT_API_PORT = 5080


@dataclass(frozen=True)
class DaemonSettings:
    """``name``: the node's name in the cluster.  ``address``: the IP its API, etcd
    member and (later) replication listen on.  ``data_dir``: everything it keeps."""

    name: str
    address: str
    data_dir: Path = DEFAULT_DATA_DIR
    api_port: int = DEFAULT_API_PORT
    facts_period: float = 10.0
    supervise_period: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise InvalidInput(f"Node name {self.name!r} is not valid; use a host name.")
        try:
            ipaddress.ip_address(self.address)
        except ValueError as exc:
            raise InvalidInput(f"Address {self.address!r} of node {self.name} is not an "
                               f"IP address.") from exc
        if not 0 < self.api_port < 65536:
            raise InvalidInput(f"API port {self.api_port} is out of range.")

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def etcd_client_url(self) -> str:
        return f"https://{self.address}:2379"

    @property
    def etcd_peer_url(self) -> str:
        return f"https://{self.address}:2380"

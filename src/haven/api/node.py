"""What the API needs of the node it runs on: :class:`NodeContext`.

Every route module takes a ``NodeContext`` instead of the node daemon itself, so that
``haven.api`` never imports ``haven.daemon`` (the daemon composes the server and passes
itself in; mypy checks that it satisfies this protocol where it does).  The protocol
lists exactly what the routes use, typed with neutral packages (``haven.store``,
``haven.model``, ``haven.noderpc``, ``haven.hypervisor.base``, ``haven.storage``) or with
the narrower protocols below, which a unit test's fake can implement in a few lines.

Members are read-only properties: the daemon's attributes change as it joins and leaves
a cluster, so a route reads them at each request and never keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from haven.api.http import ApiServer
    from haven.hypervisor.base import Hypervisor, VmInfo
    from haven.model.cluster import Cluster
    from haven.model.instance import Instance
    from haven.noderpc import HttpsNodeRpc
    from haven.storage.base import StoragePaths
    from haven.store.base import Store
    from haven.store.etcd import EtcdStore
    from haven.store.tls import TlsFiles


class NodeSettings(Protocol):
    """The daemon's settings the API reports or checks callers against."""

    @property
    def address(self) -> str: ...

    @property
    def api_port(self) -> int: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def storage_dir(self) -> Path: ...

    @property
    def etcd_client_url(self) -> str: ...


class JoinedState(Protocol):
    """What the node remembers on disk about the cluster it belongs to."""

    @property
    def cluster_name(self) -> str: ...

    @property
    def etcd_member(self) -> bool: ...


class LocalFiles(Protocol):
    """The node's own files: its cluster membership, certificate and client config."""

    @property
    def client_file(self) -> Path: ...

    def joined(self) -> JoinedState | None:
        """The cluster this node belongs to, or None in standby."""
        ...

    def save_cert(self, cert_pem: str, key_pem: str) -> list[str]:
        """Write the cluster's certificate and key; the paths that changed."""
        ...

    def save_key_bundle(self, bundle: dict[str, object]) -> list[str]:
        """Write the cluster's keys as the master sent them; the paths that changed."""
        ...

    def save_crl(self, crl_pem: str) -> list[str]:
        """Write the cluster's revocation list if the CA signed it; the paths written."""
        ...

    @property
    def etcd_cert_file(self) -> Path:
        """This node's certificate for etcd."""
        ...

    @property
    def etcd_files(self) -> TlsFiles:
        """The CA, certificate and key this node connects to etcd with."""
        ...


class EtcdMember(Protocol):
    """The node's local etcd member process."""

    def running(self) -> bool: ...


class ChangeHub(Protocol):
    """The joined node's one watch on the store, shared by everything that waits."""

    def subscribe(self, prefix: str, fn: Callable[[str], None]) -> None:
        """Call ``fn(key)`` (in the watch thread) for every change under ``prefix``."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until the next change anywhere, or ``timeout`` seconds."""
        ...


class Lease(Protocol):
    """The node's lease on its ``alive`` key."""

    def valid(self) -> bool: ...


class MasterRole(Protocol):
    """The master role's loop on a master candidate."""

    @property
    def last_summary(self) -> str: ...

    def is_master(self) -> bool: ...


class Joined(Protocol):
    """What exists only while the node is part of a cluster (``NodeContext.joined``);
    a new object each time the node joins, so identity tells a rejoin apart."""

    @property
    def store(self) -> EtcdStore: ...

    @property
    def hub(self) -> ChangeHub: ...

    @property
    def lease(self) -> Lease: ...

    @property
    def cluster(self) -> Cluster: ...

    @property
    def role(self) -> MasterRole | None: ...


class NodeVms(Protocol):
    """This node's side of instance operations (jobs on the master call them through
    ``/haven/node/instance/*``) and what it sees of its VM processes."""

    def instance(self, name: str) -> tuple[Instance, int]:
        """The instance's record and its revision (404 if it does not exist)."""
        ...

    def all_vms(self) -> Mapping[str, tuple[str, VmInfo]]:
        """Every VM process on this node: name -> (hypervisor, info)."""
        ...

    def hypervisor(self, name: str) -> Hypervisor: ...

    def storage_paths(self) -> StoragePaths: ...

    def console_path(self, name: str) -> Path: ...

    def create_disks(self, name: str, indices: list[int] | None = None
                     ) -> list[dict[str, Any]]: ...

    def remove_disks(self, name: str, disks: list[dict[str, Any]] | None = None) -> int: ...

    def forget(self, name: str) -> dict[str, Any]: ...

    def grow_disk(self, name: str, index: int, size: int) -> None: ...

    def fence_disks(self, name: str, node: str) -> dict[str, Any]: ...

    def run_os(self, name: str, script: str, variant_os: str | None = None,
               extra: dict[str, str] | None = None) -> str: ...

    def start(self, name: str, generation: int | None = None, *,
              force: bool = False) -> dict[str, Any]: ...

    def stop(self, name: str, timeout: float = 120.0, force: bool = False
             ) -> dict[str, Any]: ...

    def power_button(self, name: str, wait: float) -> dict[str, Any]: ...

    def reboot(self, name: str) -> None: ...

    def kill(self, name: str) -> None: ...


class Replication(Protocol):
    """Exporting this node's replicas of an instance's disks to its primary."""

    def export(self, inst: Instance) -> None: ...

    def unexport(self, name: str) -> None: ...


class Migration(Protocol):
    """This node's side of a live migration, in the phases the master's job drives."""

    def accept(self, name: str) -> dict[str, Any]: ...

    def send(self, name: str, uri: str, target: str, live: bool = True
             ) -> dict[str, Any]: ...

    def wait_running(self, name: str, resume: bool = False) -> dict[str, Any]: ...

    def abort_incoming(self, name: str) -> dict[str, Any]: ...

    def resume(self, name: str) -> dict[str, Any]: ...

    def finish_source(self, name: str) -> dict[str, Any]: ...


class NodeContext(Protocol):
    """The node daemon as the API sees it (implemented by ``daemon.noded.NodeContext``)."""

    @property
    def name(self) -> str: ...

    @property
    def started(self) -> float:
        """When the daemon started (``time.time()``)."""
        ...

    @property
    def settings(self) -> NodeSettings: ...

    @property
    def local(self) -> LocalFiles: ...

    @property
    def member(self) -> EtcdMember: ...

    @property
    def joined(self) -> Joined | None:
        """The cluster side of the node, or None in standby (or while it reconnects)."""
        ...

    @property
    def api(self) -> ApiServer | None:
        """The server the routes run in (its authenticator), once it exists."""
        ...

    @property
    def instances(self) -> NodeVms: ...

    @property
    def replication(self) -> Replication: ...

    @property
    def migration(self) -> Migration: ...

    def store(self) -> Store:
        """The cluster's store; NodeSetupError if the node is not part of a cluster."""
        ...

    def rpc(self) -> HttpsNodeRpc:
        """A client for other nodes' APIs, authenticated as a node."""
        ...

    def use_certificate(self) -> None:
        """Serve the cluster's certificate if the node has joined, else its own
        provisional one (new TLS handshakes only)."""
        ...

    def qmp_path(self, name: str) -> str:
        """The QMP socket through which instance ``name``'s disks are mirrored."""
        ...

    # -- cluster membership (``daemon/membership.py``) --------------------------------
    def init_cluster(self, name: str, etcd_endpoints: list[str], lease_ttl: int,
                     vm_capable: bool = True, shared_dir: str = "",
                     hypervisors: tuple[str, ...] = ("kvm",)) -> dict[str, Any]:
        """Make this node a one-node cluster and its master (``gnt-cluster init``)."""
        ...

    def join_cluster(self, body: dict[str, Any]) -> dict[str, Any]:
        """Join the cluster a master's node-add job describes in ``body``."""
        ...

    def leave_cluster(self) -> dict[str, Any]:
        """Leave the cluster (a master's node-remove job)."""
        ...

    def destroy_cluster(self) -> dict[str, Any]:
        """Tear the cluster down, on its master (``gnt-cluster destroy``)."""
        ...

    def master_failover(self, no_voting: bool) -> dict[str, Any]:
        """Make this node the master; ``no_voting`` recovers a cluster without quorum."""
        ...

    def write_client_config(self) -> dict[str, Any]:
        """Write the CLI's client configuration on this node; what it holds."""
        ...

    # -- disk copies between nodes (``daemon/diskcopy.py``) -----------------------------
    def disk_stream(self, name: str, index: int) -> Iterator[bytes]:
        """Disk ``index`` of ``name`` as chunks; 404 at once if it has no such disk."""
        ...

    def pull_disk(self, name: str, source: str, index: int) -> int:
        """Copy disk ``index`` of ``name`` from node ``source`` into this node's file
        (sparse); the bytes received."""
        ...

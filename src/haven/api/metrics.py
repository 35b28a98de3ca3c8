"""Prometheus ``GET /metrics`` on every node, with the official client library.

The metrics and who exports which are listed in :mod:`haven.monitor.collect`; this
module only serves them and reads the node daemon for the collector
(:class:`DaemonView`, the collector's ``NodeView``).  No authentication, as for every
read of the API; Prometheus scrapes over HTTPS with the cluster certificate as its CA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from haven.api.routing import Request, Response, Router
from haven.hypervisor.base import VmInfo
from haven.monitor.collect import HavenCollector
from haven.store.base import Member, Store

if TYPE_CHECKING:
    from haven.api.node import NodeContext
    from haven.hypervisor.qemu import QemuHypervisor
    from haven.hypervisor.qemu.stats import VmIo
    from haven.store.etcd import EndpointStatus


class DaemonView:
    """The collector's view of a node daemon: attributes it already has, read at each
    call (the daemon joins, leaves and changes role while it serves)."""

    def __init__(self, d: NodeContext) -> None:
        self.d = d

    @property
    def name(self) -> str:
        return self.d.name

    @property
    def started(self) -> float:
        return self.d.started

    def store(self) -> Store | None:
        joined = self.d.joined
        return joined.store if joined is not None else None

    def is_master(self) -> bool:
        joined = self.d.joined
        return bool(joined is not None and joined.role is not None
                    and joined.role.is_master())

    def lease_valid(self) -> bool:
        joined = self.d.joined
        return joined is not None and joined.lease.valid()

    def storage_dir(self) -> Path:
        return self.d.settings.storage_dir

    def vms(self) -> Mapping[str, tuple[str, VmInfo]]:
        return self.d.instances.all_vms()

    def _kvm(self) -> QemuHypervisor:
        from haven.hypervisor.qemu import QemuHypervisor

        hv = self.d.instances.hypervisor("kvm")
        assert isinstance(hv, QemuHypervisor)
        return hv

    def vm_io(self, names: Sequence[str]) -> Mapping[str, VmIo]:
        from haven.hypervisor.qemu.cmdline import STATUS_QMP_SUFFIX
        from haven.hypervisor.qemu.stats import io_stats

        hv = self._kvm()
        return io_stats({n: hv.path(n, STATUS_QMP_SUFFIX) for n in names})

    def nic_taps(self, name: str) -> Mapping[int, str]:
        spec = self._kvm().load_spec(name)
        if spec is None:
            return {}
        return {nic.index: nic.tap for nic in spec.nics if nic.mode == "bridged" and nic.tap}

    def etcd_status(self) -> EndpointStatus | None:
        js = self.d.local.joined()
        joined = self.d.joined
        if js is None or not js.etcd_member or joined is None:
            return None
        return joined.store.status(self.d.settings.etcd_client_url)

    def etcd_members(self) -> Sequence[Member] | None:
        joined = self.d.joined
        if joined is None or not joined.cluster.etcd_managed:
            return None
        return joined.store.member_list()


def registry(d: NodeContext) -> CollectorRegistry:
    """A private registry: Haven's collector and the daemon process's own metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HavenCollector(DaemonView(d)))
    ProcessCollector(registry=reg)
    return reg


def install(r: Router, d: NodeContext) -> None:
    """Register ``GET /metrics``."""
    reg = registry(d)

    def metrics(_q: Request) -> Response:
        return Response(generate_latest(reg), 200, content_type=CONTENT_TYPE_LATEST)

    r.add("GET", "/metrics", metrics)

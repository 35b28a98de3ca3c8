"""A whole cluster on one machine: ``haven up/down/status/kill/start``.

Each node gets its own loopback address (``127.0.10.N``), data directory, etcd member
and ``haven-noded``, all started detached with logs in the node's directory; the
layout is recorded in ``<base>/sim.json`` so the other commands find it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from haven import clientconf
from haven.cli.client import Client
from haven.cli.local import start_daemon
from haven.daemon import procs
from haven.errors import HavenError, InvalidInput, NotFoundError
from haven.fence import power

DEFAULT_BASE = Path(os.environ.get("HAVEN_SIM_DIR", "/var/lib/haven/sim"))
API_PORT = 5080


@dataclass(frozen=True)
class SimNode:
    name: str
    address: str
    data_dir: str
    port: int = API_PORT
    netns: str = ""  # the node's network namespace (haven up --netns)

    @property
    def dir(self) -> Path:
        return Path(self.data_dir)


@dataclass(frozen=True)
class SimLayout:
    cluster: str
    nodes: tuple[SimNode, ...]

    def node(self, name: str) -> SimNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise NotFoundError(f"Node {name!r} is not part of this local cluster; its nodes "
                            f"are {', '.join(n.name for n in self.nodes)}.")


def layout_path(base: Path) -> Path:
    return base / "sim.json"


def load_layout(base: Path) -> SimLayout | None:
    try:
        data = json.loads(layout_path(base).read_text())
    except (OSError, ValueError):
        return None
    return SimLayout(data["cluster"], tuple(SimNode(**n) for n in data["nodes"]))


def save_layout(base: Path, layout: SimLayout) -> None:
    base.mkdir(parents=True, exist_ok=True)
    layout_path(base).write_text(json.dumps(
        {"cluster": layout.cluster, "nodes": [asdict(n) for n in layout.nodes]}, indent=1))


def up(base: Path = DEFAULT_BASE, nodes: int = 3, subnet: str = "127.0.10",
       cluster: str = "haven-local", lease_ttl: int = 5, log: Any = print,
       hypervisors: tuple[str, ...] = ("kvm",), use_netns: bool = False,
       witness: bool = False, storage: str = "") -> SimLayout:
    """Create (or restart) the local cluster; returns its layout.  ``witness``: the
    last node is a vote-only witness (master candidate, no VMs); ``storage="iscsi"``:
    a local iSCSI storage server for ``-t ext`` disks (:mod:`haven.sim.san`)."""
    from haven.sim import san

    existing = load_layout(base)
    if existing is not None:
        if san.load(base) is not None:
            san.start(base, [n.dir for n in existing.nodes])
        start_nodes(existing.nodes)
        wait_master(existing)
        _publish_client_config(base, existing)
        log(f"Local cluster {existing.cluster} is up ({len(existing.nodes)} nodes).")
        return existing
    if not 1 <= nodes <= 9:
        raise InvalidInput(f"--nodes {nodes} is out of range; use 1 to 9.")
    if witness and nodes < 3:
        raise InvalidInput("--witness needs --nodes 3 or more: two VM nodes and the "
                           "witness.")
    if storage not in ("", "iscsi"):
        raise InvalidInput(f"--storage {storage} is not known; use iscsi.")
    if use_netns:
        from haven.sim import netns

        netns.setup(nodes)
        layout = SimLayout(cluster, tuple(
            SimNode(f"node{i:02d}", netns.node_ip(i), str(base / f"node{i:02d}"),
                    netns=netns.ns_name(i)) for i in range(1, nodes + 1)))
    else:
        layout = SimLayout(cluster, tuple(
            SimNode(f"node{i:02d}", f"{subnet}.{i}", str(base / f"node{i:02d}"))
            for i in range(1, nodes + 1)))
    save_layout(base, layout)
    t0 = time.monotonic()
    if storage == "iscsi":
        san_ip = ""
        if use_netns:
            from haven.sim import netns

            san_ip = netns.SWITCH_IP
        srv = san.setup(base, subnet, cluster, [n.dir for n in layout.nodes],
                        address=san_ip)
        log(f"{time.monotonic() - t0:5.1f}s storage server tgtd on {srv.portal} (pool "
            f"{srv.pool})")
    start_nodes(layout.nodes)
    first = layout.nodes[0]
    # On one machine the "shared" storage every node sees is one folder.
    (base / "shared").mkdir(parents=True, exist_ok=True)
    body = {
        "cluster_name": cluster, "lease_ttl": lease_ttl,
        "shared_file_storage_dir": str(base / "shared"),
        "enabled_hypervisors": list(hypervisors)}
    conf = _init_on(first, body)
    clientconf.save(conf, base / "client.json")
    log(f"{time.monotonic() - t0:5.1f}s cluster {cluster} initialised on {first.name}")
    client = Client(conf["endpoints"], conf["cert"], conf["user"], conf["password"])
    from haven.cli.common import submit_and_wait
    from haven.daemon.localstate import LocalState

    for n in layout.nodes[1:]:
        vm_capable = not (witness and n is layout.nodes[-1])
        # The administrator's step on each new node: read its one-time join token.
        token = LocalState(n.dir).join_token()
        submit_and_wait(client, [{"OP_ID": "OP_NODE_ADD", "node_name": n.name,
                                  "primary_ip": n.address, "master_capable": True,
                                  "vm_capable": vm_capable, "join_token": token}],
                        quiet=True)
        log(f"{time.monotonic() - t0:5.1f}s added {n.name} ({n.address})"
            + ("" if vm_capable else ", a vote-only witness"))
    _publish_client_config(base, layout)
    return layout


def _init_on(n: SimNode, body: dict[str, Any]) -> dict[str, Any]:
    """``gnt-cluster init`` is accepted only from the node itself: in a namespace, the
    call is made from inside it."""
    if not n.netns:
        local = Client([f"{n.address}:{n.port}"], None, None, None)
        return dict(local.post("/haven/node/init", body, timeout=90))
    import subprocess
    import sys

    code = ("import json,sys; from haven.cli.client import Client; "
            f"c=Client(['{n.address}:{n.port}'],None,None,None); "
            "print(json.dumps(c.post('/haven/node/init', json.loads(sys.stdin.read()), "
            "timeout=90)))")
    p = subprocess.run(["ip", "netns", "exec", n.netns, sys.executable, "-c", code],
                       input=json.dumps(body), capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise InvalidInput(f"Initialising the cluster on {n.name} failed: "
                           f"{p.stderr.strip()[-300:]}")
    return dict(json.loads(p.stdout))


def _publish_client_config(base: Path, layout: SimLayout) -> None:
    conf = None
    for n in layout.nodes:
        conf = clientconf.load(n.dir / "client.json")
        if conf is not None:
            break
    if conf is None:
        return
    client = Client(conf["endpoints"], conf["cert"], conf["user"], conf["password"])
    with contextlib.suppress(HavenError):
        conf = client.get("/haven/client-config")
    clientconf.save(conf, base / "client.json")
    clientconf.save(conf)


def wait_master(layout: SimLayout, timeout: float = 60.0) -> str | None:
    conf = None
    for n in layout.nodes:
        conf = clientconf.load(n.dir / "client.json") or conf
    if conf is None:
        return None
    client = Client([f"{n.address}:{n.port}" for n in layout.nodes], conf["cert"],
                    conf["user"], conf["password"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            master = client.get("/haven/master", timeout=2)
            if master:
                return str(master)
        except HavenError:
            pass
        time.sleep(0.2)
    return None


def start_node(n: SimNode) -> None:
    prefix = ["ip", "netns", "exec", n.netns] if n.netns else None
    start_daemon(n.name, n.address, n.dir, n.port, prefix=prefix)


def start_nodes(nodes: Sequence[SimNode]) -> None:
    """Start the daemons of ``nodes`` side by side (each takes a second or two to import
    and listen), as the machines of a cluster boot."""
    with ThreadPoolExecutor(max_workers=len(nodes) or 1) as pool:
        list(pool.map(start_node, nodes))


def wait_active(n: SimNode, timeout: float) -> bool:
    """Wait until node ``n``'s daemon is back in its cluster (or was never in one)."""
    client = Client([f"{n.address}:{n.port}"], None, None, None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = client.get("/haven/node/info", timeout=2)
            if info.get("active") or not info.get("cluster"):
                return True
        except HavenError:
            pass
        time.sleep(0.2)
    return False


def node_pids(n: SimNode) -> dict[str, int]:
    """Every process that belongs to node ``n`` (see :mod:`haven.fence.power`)."""
    return power.node_pids(n.dir)


def kill_node(n: SimNode) -> list[int]:
    """SIGKILL every process of the node at once, as a power cut would."""
    return power.kill_node(n.dir)


def stop_node(n: SimNode, stop_etcd: bool = True) -> None:
    pid = procs.running_pid(n.dir / "noded.pid", "haven.daemon.main")
    if pid is not None:
        procs.terminate(pid, timeout=15)
    if stop_etcd:
        pid = procs.running_pid(n.dir / "etcd.pid", "etcd")
        if pid is not None:
            procs.terminate(pid, timeout=15)


def shutdown_node(n: SimNode) -> list[str]:
    """A clean shutdown of one node, as its machine's own shutdown would do it: the
    daemon stops (handing back its lease if no VM runs), the VMs shut down cleanly,
    then etcd and the fencer.  Returns the VMs that were stopped."""
    stop_node(n, stop_etcd=False)
    stopped = stop_vms(n)
    stop_node(n, stop_etcd=True)
    stop_fencer(n)
    return stopped


def stop_fencer(n: SimNode) -> None:
    """Stop the node's haven-fenced (after its VMs: stopped while armed, it kills them)."""
    pid = procs.running_pid(n.dir / "run" / "fenced.pid", "haven.fence.fenced")
    if pid is not None:
        procs.terminate(pid, timeout=5)


def down(base: Path = DEFAULT_BASE) -> SimLayout | None:
    """Stop everything the local cluster runs, keeping its data for the next ``up``.

    Daemons stop first (each hands back its lease, and no agent restarts a VM), then the
    VMs shut down cleanly, then the etcd members together.
    """
    layout = load_layout(base)
    if layout is None:
        return None
    for n in layout.nodes:
        stop_node(n, stop_etcd=False)
    for n in layout.nodes:
        stop_vms(n)
    for n in layout.nodes:
        stop_node(n, stop_etcd=True)
        stop_fencer(n)
    from haven.sim import san

    san.stop(base)
    return layout


def stop_vms(n: SimNode) -> list[str]:
    """Shut the node's VMs down cleanly (ACPI, then kill) and end its replication
    exports.  Their instances stay administratively up: the next ``up`` starts them."""
    from haven.hypervisor.fake import FakeHypervisor
    from haven.hypervisor.qemu import QemuHypervisor
    from haven.hypervisor.qemu.exports import ExportManager

    run = n.dir / "run"
    stopped = []
    for hv in (QemuHypervisor(run), FakeHypervisor(run / "fake")):
        for name in hv.list():
            hv.stop(name, timeout=30)
            hv.cleanup(name)
            stopped.append(name)
    exports = ExportManager(run / "exports")
    for key in exports.list():
        exports.stop(key)
    return stopped


def destroy(base: Path = DEFAULT_BASE) -> None:
    """Stop every process of the local cluster and delete its files.  No clean shutdown
    first: nothing of it is kept, so its guests need no chance to flush anything."""
    import shutil

    from haven.sim import san

    layout = load_layout(base)
    if layout is not None:
        for n in layout.nodes:
            kill_node(n)
        if any(n.netns for n in layout.nodes):
            from haven.sim import netns

            netns.teardown(len(layout.nodes))
    san.kill(base)
    if base.exists():
        shutil.rmtree(base)


def status(base: Path = DEFAULT_BASE) -> list[dict[str, Any]]:
    layout = load_layout(base)
    if layout is None:
        return []
    out = []
    for n in layout.nodes:
        pids = node_pids(n)
        row: dict[str, Any] = {"node": n.name, "address": n.address,
                               "noded": pids.get("noded"), "etcd": pids.get("etcd"),
                               "role": None, "master": False}
        if "noded" in pids:
            try:
                st = Client([f"{n.address}:{n.port}"], None, None, None).get(
                    "/haven/status", timeout=2)
                row["role"] = st.get("role")
                row["master"] = bool(st.get("is_master"))
            except HavenError:
                row["role"] = "not answering"
        out.append(row)
    return out

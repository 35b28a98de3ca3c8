"""Quorum loss on two nodes, destroy and re-init, and an external etcd."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Sim

pytestmark = pytest.mark.e2e


def test_two_node_cluster_recovers_with_no_voting_and_the_dead_node_rejoins(
        cluster2: Sim) -> None:
    assert cluster2.master() == "node01"
    cluster2.run("haven", "kill", "node01", check=True)
    # Without quorum nothing can be written: jobs cannot even be queued.
    p = cluster2.run("gnt-debug", "delay", "0", timeout=60)
    assert p.returncode != 0
    p = cluster2.run("gnt-cluster", "master-failover", "--no-voting", "--yes-do-it",
                     data_dir="node02", timeout=120)
    assert p.returncode == 0, p.stderr
    assert "after recovering etcd" in p.stdout
    assert cluster2.master() == "node02"
    cluster2.run("gnt-debug", "delay", "0", check=True)
    # The force flag was used for one start only.
    etcd_pid = (cluster2.base / "node02" / "etcd.pid").read_text().strip()
    cmdline = Path(f"/proc/{etcd_pid}/cmdline").read_bytes()
    assert b"--force-new-cluster" not in cmdline
    assert b"force" not in (cluster2.base / "node02" / "etcd.json").read_bytes()
    # node01 comes back as a fresh member of the recovered etcd.
    cluster2.run("haven", "start", "node01", check=True)
    # A fresh learner takes seconds to publish itself: verify warns meanwhile.
    deadline = time.monotonic() + 90
    while True:
        out = cluster2.wait_verify_ok(timeout=90)
        if "Verified etcd member node01: healthy" in out:
            break
        assert time.monotonic() < deadline, out
        time.sleep(1)
    assert cluster2.master() == "node02"


def test_destroy_removes_the_cluster_and_a_new_init_works(cluster1: Sim) -> None:
    p = cluster1.run("gnt-cluster", "destroy", "--yes-do-it", check=True)
    assert "destroyed" in p.stdout
    assert not (cluster1.base / "node01" / "node.json").exists()
    assert not (cluster1.base / "node01" / "etcd").exists()
    p = cluster1.run("gnt-cluster", "init", "--node-name", "node01", "--primary-ip",
                     cluster1.address("node01"), "again", data_dir="node01")
    assert p.returncode == 0, p.stderr
    # init wrote the default client config: point the CLI at the new node's copy.
    cluster1.env["HAVEN_CLIENT_CONFIG"] = str(cluster1.base / "node01" / "client.json")
    info = cluster1.run("gnt-cluster", "info", check=True).stdout
    assert "Cluster name: again" in info


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed")
def test_cluster_on_an_external_etcd(cluster1: Sim, tmp_path: Path) -> None:
    cport, pport = _free_port(), _free_port()
    url = f"http://127.0.0.1:{cport}"
    etcd = subprocess.Popen(
        ["etcd", "--name", "ext", "--data-dir", str(tmp_path / "ext"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"ext=http://127.0.0.1:{pport}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cluster1.run("gnt-cluster", "destroy", "--yes-do-it", check=True)
        deadline = time.monotonic() + 20
        while True:
            p = cluster1.run("gnt-cluster", "init", "--node-name", "node01",
                             "--primary-ip", cluster1.address("node01"),
                             "--etcd-endpoints", url, "external", data_dir="node01")
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert p.returncode == 0, p.stderr
        cluster1.env["HAVEN_CLIENT_CONFIG"] = str(cluster1.base / "node01" / "client.json")
        info = cluster1.run("gnt-cluster", "info", check=True).stdout
        assert "etcd: external" in info and url in info
        assert not (cluster1.base / "node01" / "etcd.json").exists()
        cluster1.run("gnt-debug", "delay", "0", check=True)
    finally:
        etcd.terminate()
        etcd.wait(10)


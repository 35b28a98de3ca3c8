"""``haven up --netns --storage iscsi``: nodes in their own network namespaces on a
bridged LAN with an iSCSI server on it, a guest with a bridged NIC and its own LAN
address, reached from a client namespace before, during and after live migrations (its
tap follows it); a node cut off the LAN, with an iSCSI guest.  Root only."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, Sim

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="--netns needs root")]

GUEST_IP = "10.77.0.100"


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    base = tmp_path_factory.mktemp("netns") / "sim"
    env = dict(os.environ, HAVEN_CLIENT_CONFIG=str(base / "client.json"))
    env.pop("HAVEN_DATA_DIR", None)
    sim = Sim(base, "10.77.0", env)
    try:
        sim.run("haven", "up", "--netns", "--nodes", "2", "--storage", "iscsi", check=True,
                timeout=240)
        yield sim
    finally:
        sim.run("haven", "down", "--destroy", timeout=180)
    assert not Path("/run/netns/havenc").exists(), "haven down left the client namespace"


def ping(count: int = 1, interval: str = "0.2") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", "havenc", "ping", "-n", "-c", str(count),
                           "-i", interval, "-W", "1", GUEST_IP], capture_output=True,
                          text=True, timeout=count + 30)


def wait_ping(timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while ping().returncode != 0:
        assert time.monotonic() < deadline, f"{GUEST_IP} never answered from the client"
        time.sleep(0.5)


def taps(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "master", "br0"],
                         capture_output=True, text=True, check=True).stdout
    return [m.group(1) for m in re.finditer(r"^\d+: (hv[^:@]+)", out, re.M)]


def test_a_bridged_guest_answers_on_the_lan_through_migrations(lan: Sim) -> None:
    p = lan.run("gnt-instance", "add", "-t", "sharedfile", "--disk", "0:size=32m", "-B",
                "memory=128", "-o", "busybox", "--net",
                f"0:mode=bridged,link=br0,ip={GUEST_IP}/24", "-n", "node01", "web1",
                timeout=180)
    assert p.returncode == 0, p.stderr
    wait_ping()
    assert taps("haven01") and not taps("haven02")
    for there, away in (("haven02", "haven01"), ("haven01", "haven02")):
        # 300 pings 10 ms apart span the whole migration (non-live under TCG: the guest
        # stands still for the copy, ~0.5 s): most must come back.
        pinger = subprocess.Popen(["ip", "netns", "exec", "havenc", "ping", "-n", "-c",
                                   "300", "-i", "0.01", "-W", "1", GUEST_IP],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        p = lan.run("gnt-instance", "migrate", "web1", timeout=180)
        assert p.returncode == 0, p.stderr
        out, _ = pinger.communicate(timeout=60)
        got = re.search(r"(\d+) received", out)
        assert got is not None and int(got.group(1)) >= 200, out
        assert taps(there) and not taps(away)
        assert ping(3).returncode == 0
    p = lan.run("gnt-instance", "remove", "-f", "web1", timeout=120)
    assert p.returncode == 0, p.stderr
    assert not taps("haven01") and not taps("haven02")


def test_the_client_namespace_reaches_every_node_daemon(lan: Sim) -> None:
    p = subprocess.run(["ip", "netns", "exec", "havenc", str(BIN / "gnt-node"), "list",
                        "--no-headers", "-o", "name"], env=lan.env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["node01", "node02"]


def test_a_cut_off_node_fences_itself_and_its_guest_moves_to_the_master_side(
        lan: Sim) -> None:
    """A real partition: the non-master's link to the LAN goes down.  Alive but cut off
    from the only etcd vote, it cannot renew its lease: its haven-fenced kills its VM
    before the master may start it elsewhere.  The guest answers again from the master
    side; when the link comes back, the node rejoins and no second copy ever runs."""
    from tests.e2e.test_two_node import qemus

    master = lan.master()
    cut = "node02" if master == "node01" else "node01"
    index = int(cut[-2:])
    # Its disk is on the iSCSI server, reached over the same LAN link that is cut.
    p = lan.run("gnt-instance", "add", "-t", "ext", "--disk", "0:size=32m,provider=iscsi",
                "-B", "memory=128", "-o", "busybox", "--net",
                f"0:mode=bridged,link=br0,ip={GUEST_IP}/24", "-n", cut, "web2",
                timeout=180)
    assert p.returncode == 0, p.stderr
    wait_ping()
    fenced_log = lan.base / cut / "fenced.log"
    subprocess.run(["ip", "link", "set", f"hvl{index:02d}", "down"], check=True)
    try:
        t0 = time.monotonic()
        while True:
            assert len(qemus(lan, "web2")) <= 1, "two copies of web2"
            rows = lan.run("gnt-instance", "list", "--no-headers", "--separator=|", "-o",
                           "status,pnode", "web2").stdout.strip()
            if rows == f"running|{master}":
                break
            assert time.monotonic() - t0 < 60, rows
            time.sleep(0.2)
        print(f"web2 running on {master} {time.monotonic() - t0:.1f} s after the cut")
        assert "was not renewed in time" in fenced_log.read_text()
        wait_ping(60)
    finally:
        subprocess.run(["ip", "link", "set", f"hvl{index:02d}", "up"], check=True)
    # Healed: the node comes back online, starts nothing; one copy, still answering.
    deadline = time.monotonic() + 60
    while True:
        assert len(qemus(lan, "web2")) == 1
        status = lan.run("haven", "ha", "status").stdout
        row = next((ln for ln in status.splitlines() if ln.startswith(cut)), "")
        if " online " in f" {row} ":
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert ping(3).returncode == 0
    p = lan.run("gnt-instance", "remove", "-f", "web2", timeout=120)
    assert p.returncode == 0, p.stderr

"""``haven up --netns``: nodes in their own network namespaces on a bridged LAN, a guest
with a bridged NIC and its own LAN address, reached from a client namespace before,
during and after live migrations (its tap follows it).  Root only."""

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
        sim.run("haven", "up", "--netns", "--nodes", "2", check=True, timeout=240)
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

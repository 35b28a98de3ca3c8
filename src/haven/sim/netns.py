"""``haven up --netns``: every node in its own network namespace, as on a real LAN.

    root namespace: bridge ``havenlan0`` (the LAN switch), 10.77.0.254/24; with
               ``--storage iscsi`` the storage server (tgtd) listens there too
    havenNN:   eth0 (veth to the switch) enslaved to bridge ``br0`` = 10.77.0.NN/24;
               the node's daemon, etcd member, QEMUs and guest taps (on br0) live here
    havenc:    the client, eth0 = 10.77.0.250/24: it pings the guests

Guests get LAN addresses with ``--net 0:mode=bridged,link=br0,ip=10.77.0.X/24``; a
migrated guest keeps its address, its tap moving with it to the other namespace.
Root only; ``teardown`` removes everything ``setup`` made.
"""

from __future__ import annotations

import subprocess
import time

from haven.errors import NodeSetupError

SWITCH = "havenlan0"
PREFIX = "10.77.0"
CLIENT_NS = "havenc"
CLIENT_IP = f"{PREFIX}.250"
SWITCH_IP = f"{PREFIX}.254"


def ns_name(index: int) -> str:
    return f"haven{index:02d}"


def node_ip(index: int) -> str:
    return f"{PREFIX}.{index}"


def _ip(*args: str, check: bool = True) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and p.returncode != 0:
        raise NodeSetupError(f"ip {' '.join(args)} failed: {p.stderr.strip()}; --netns "
                             f"needs root and iproute2.")


def setup(nodes: int) -> None:
    teardown(nodes)
    _ip("link", "add", SWITCH, "type", "bridge")
    _ip("addr", "add", f"{SWITCH_IP}/24", "dev", SWITCH)
    _ip("link", "set", SWITCH, "up")
    for i in range(1, nodes + 1):
        ns, peer = ns_name(i), f"hvl{i:02d}"
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", peer, "master", SWITCH, "up")
        _ip("-n", ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", ns, "link", "set", "eth0", "master", "br0", "up")
        _ip("-n", ns, "link", "set", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{node_ip(i)}/24", "dev", "br0")
    _ip("netns", "add", CLIENT_NS)
    _ip("-n", CLIENT_NS, "link", "set", "lo", "up")
    _ip("link", "add", "hvlc", "type", "veth", "peer", "name", "eth0", "netns", CLIENT_NS)
    _ip("link", "set", "hvlc", "master", SWITCH, "up")
    _ip("-n", CLIENT_NS, "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
    _ip("-n", CLIENT_NS, "link", "set", "eth0", "up")


def teardown(nodes: int = 9) -> None:
    """Remove every namespace and link ``setup`` makes, and wait until the kernel has:
    a namespace is destroyed asynchronously after ``ip netns del``, and its veth pair
    with it, so a ``setup`` right after a teardown met "hvl03: File exists" (found by
    the fault campaign, one campaign starting seconds after another ended)."""
    links = [f"hvl{i:02d}" for i in range(1, max(nodes, 9) + 1)] + ["hvlc", SWITCH]
    for link in links:  # deleting one end of a veth removes both
        _ip("link", "del", link, check=False)
    for i in range(1, max(nodes, 9) + 1):
        _ip("netns", "del", ns_name(i), check=False)
    _ip("netns", "del", CLIENT_NS, check=False)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        p = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           timeout=10)
        names = {ln.split(":")[1].strip().split("@")[0] for ln in p.stdout.splitlines()
                 if ln.count(":") >= 2}
        if not names & set(links):
            return
        time.sleep(0.1)


def exec_prefix(index: int) -> list[str]:
    """Run a command inside node ``index``'s namespace."""
    return ["ip", "netns", "exec", ns_name(index)]

"""Fence agents: turning a lost node off from outside, so the master need not wait for
the lease rule (ARCHITECTURE.md, "Fencing", step 6).

A node's agent is part of its configuration (``gnt-node modify --fence-agent AGENT
--fence-param KEY=VALUE ...``):

- ``fence_*``: one of Debian's ``fence-agents`` scripts (``fence_ipmilan``,
  ``fence_redfish``, ``fence_virsh``...), run on the master with its options on stdin
  (``action=off`` and the node's parameters, one ``key=value`` per line: the
  interface every fence-agents script reads), then ``action=status`` until it answers
  that the node is off.  Exit status 0 with "off" confirmed is success.
- ``haven-local``: the built-in agent of ``haven up``: every process of the node's
  directory (daemon, etcd, QEMUs, fencer) is SIGKILLed, as a power cut would.

An agent that fails or times out changes nothing: the master then waits for the lease
rule, and says so.  Agents run on the master in a thread of the HA manager.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from haven.errors import InvalidInput

log = logging.getLogger(__name__)

LOCAL = "haven-local"
TIMEOUT = 30.0  # seconds for one agent call (fence-agents' own default power timeout: 20)
_NAME = re.compile(r"^fence_[a-z0-9_]+$")
_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def validate(node: str, agent: str, params: dict[str, Any]) -> None:
    """Raise :class:`InvalidInput` (one sentence naming the fix) unless ``agent`` and
    ``params`` can work for ``node``."""
    if agent in ("", LOCAL):
        if params and agent == LOCAL:
            raise InvalidInput(f"The {LOCAL} fence agent of node {node} takes no "
                               f"--fence-param; remove them.")
        return
    if not _NAME.match(agent):
        raise InvalidInput(f"Fence agent {agent!r} for node {node} is not valid; give "
                           f"{LOCAL} or the name of a fence-agents script such as "
                           f"fence_ipmilan.")
    for key, value in params.items():
        if not _KEY.match(str(key)) or "\n" in str(value):
            raise InvalidInput(f"Fence parameter {key}={value!r} for node {node} is not "
                               f"valid; give key=value with a lower-case key (ip, "
                               f"username, password, ...) on one line.")
        if str(key) == "action":
            raise InvalidInput(f"Fence parameter action for node {node} is set by Haven "
                               f"(off, then status); remove it.")


def find(agent: str) -> str | None:
    """The path of a fence-agents script, or None if it is not installed here."""
    return shutil.which(agent, path=":".join(_SBIN))


def fence(node: str, agent: str, params: dict[str, Any], base: Path | None = None,
          timeout: float = TIMEOUT) -> tuple[bool, str]:
    """Turn ``node`` off with its agent: (True, what happened) once it is confirmed
    off, (False, why not) otherwise.  ``base``: the local cluster's directory, for
    :data:`LOCAL`."""
    if agent == LOCAL:
        return _local(node, base)
    path = find(agent)
    if path is None:
        return False, (f"fence agent {agent} is not installed on this node (apt install "
                       f"fence-agents)")
    for action in ("off", "status"):
        lines = [f"action={action}", *(f"{k}={v}" for k, v in sorted(params.items()))]
        try:
            proc = subprocess.run([path], input="\n".join(lines) + "\n", text=True,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"{agent} -o {action} did not answer within {timeout:.0f} s"
        except OSError as exc:
            return False, f"{agent} could not run: {exc}"
        out = (proc.stdout + proc.stderr).strip().splitlines()
        if action == "off" and proc.returncode != 0:
            return False, f"{agent} -o off failed ({proc.returncode}): " + \
                (out[-1] if out else "no output")
        if action == "status":
            # fence-agents: status exit 2 = off, 0 = on; the text says "Status: OFF".
            text = " ".join(out).lower()
            if proc.returncode == 2 or "status: off" in text:
                return True, f"{agent} turned {node} off"
            return False, f"{agent} reports {node} still on after -o off"
    return False, "unreachable"  # pragma: no cover


def local_base(daemon: Any) -> Path | None:
    """The local cluster's directory (``haven up``: its ``sim.json``) a node daemon
    runs in, or None."""
    data_dir = getattr(getattr(daemon, "settings", None), "data_dir", None)
    if data_dir is None:
        return None
    base = Path(data_dir).parent
    return base if (base / "sim.json").is_file() else None


def _local(node: str, base: Path | None) -> tuple[bool, str]:
    from haven.fence import power

    if base is None:
        return False, f"the {LOCAL} fence agent works only in a local cluster (haven up)"
    node_dir = base / node
    if not (node_dir / "node.json").exists() and not (node_dir / "noded.pid").exists():
        return False, f"no node {node} in the local cluster {base}"
    killed = power.kill_node(node_dir)
    if power.node_pids(node_dir):
        return False, f"processes of {node} survived SIGKILL"
    return True, f"killed every process of {node} ({len(killed)})"

"""The node daemon's side of fencing: the lease it holds, the alive key under it, and
``haven-fenced``'s deadline fed from every renewal; whether the node may start a VM.

A daemon restarted under running VMs takes its predecessor's lease over (``run/lease.json``)
so that the fencer never sees the lease lapse; a fencer that fired is reported here as an
event (ARCHITECTURE.md, "Fencing").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haven.daemon.localstate import write_private
from haven.errors import OpPrereqError
from haven.model import ha
from haven.model.keys import Keys
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon

log = logging.getLogger(__name__)


def ensure_fencer(d: NodeDaemon) -> None:
    if d.fencer.ensure_running():
        deadline = time.monotonic() + 5
        while not (d.instances.run_dir / "fenced.sock").exists():
            if time.monotonic() > deadline:
                log.warning("haven-fenced did not open its socket within 5 s")
                return
            time.sleep(0.02)
        joined = d.joined
        if joined is not None and joined.lease.valid():
            d.fencer.feed(joined.lease.deadline, joined.lease.lease_id)


def lease_path(d: NodeDaemon) -> Path:
    return d.instances.run_dir / "lease.json"


def saved_lease(d: NodeDaemon) -> int:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads(lease_path(d).read_text())["lease"])
    return 0


def lease_renewed(d: NodeDaemon, deadline: float, lease_id: int) -> None:
    d.fencer.feed(deadline, lease_id)
    # Every second: the file is written when the lease changes, never read here.
    if lease_id != d._recorded_lease:
        write_private(lease_path(d), json.dumps({"lease": lease_id}))
        d._recorded_lease = lease_id


def start_blocked(d: NodeDaemon) -> str:
    """Why this node may not start a VM now, or "" if it may: it needs a valid
    lease that holds its alive key, a fed fencer, and the HA manager not to have
    fenced it (ARCHITECTURE.md, "Fencing")."""
    joined = d.joined
    if joined is None:
        return f"node {d.name} is not connected to the cluster"
    if not joined.lease.valid():
        return f"node {d.name} holds no valid lease"
    if d.fencer.fed_until() <= time.monotonic():
        return f"haven-fenced of node {d.name} is not running or not fed"
    kv = joined.store.get(Keys.alive(d.name))
    if kv is None or kv.lease != joined.lease.lease_id:
        return f"node {d.name}'s alive key is not held by its lease"
    kv = joined.store.get(ha.node_key(d.name))
    if kv is not None:
        rec = ha.NodeHA.from_json(json.loads(kv.value))
        if rec.state in ha.BLOCKED:
            return (f"the HA manager has node {d.name} {rec.state} ({rec.reason}); "
                    f"its instances are being recovered elsewhere")
    return ""


@contextlib.contextmanager
def vm_start_gate(d: NodeDaemon, name: str) -> Iterator[None]:
    """Hold while starting VM ``name``: refuses (one sentence) unless this node may
    start VMs, and keeps a new lease from being granted meanwhile."""
    with d.vm_start_lock:
        why = start_blocked(d)
        if why:
            raise OpPrereqError(f"Not starting {name} on {d.name}: {why}.")
        yield


def report_fenced(d: NodeDaemon, fired: dict[str, Any]) -> None:
    from haven.model import event

    killed = ", ".join(fired.get("killed") or []) or "no VM"
    ev = event.new("self-fenced", f"node/{d.name}", d.name,
                   f"Node {d.name} fenced itself: its lease {fired.get('lease')} was "
                   f"not renewed in time; haven-fenced killed {killed}", "warning")
    with contextlib.suppress(StoreError):
        d.store().put(ev.key(), ev.encode())


def heartbeat(d: NodeDaemon, store: EtcdStore, lease_id: int) -> None:
    """Re-write the alive key at every renewal: the master's HA manager times this
    node's silence from these writes (``master/ha.py``)."""
    if d._alive_lease != lease_id:
        return  # not ours yet: supervise() writes it first
    store.put(Keys.alive(d.name), alive_value(d), lease=lease_id)


def alive_value(d: NodeDaemon) -> bytes:
    return json.dumps({"node": d.name, "pid": os.getpid(), "since": d.started,
                       "api": f"{d.settings.address}:{d.settings.api_port}"}
                      ).encode()


def put_alive(d: NodeDaemon) -> None:
    joined = d.joined
    if joined is None or not joined.lease.valid():
        return
    if d._alive_lease != joined.lease.lease_id:
        try:
            d.instances.retract_stale()
        except (StoreError, OSError) as exc:  # the agent's pass corrects it later
            log.warning("could not correct %s's stale instance states: %s",
                        d.name, exc)
    joined.store.put(Keys.alive(d.name), alive_value(d),
                     lease=joined.lease.lease_id)
    d._alive_lease = joined.lease.lease_id

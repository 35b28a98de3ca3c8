"""High availability records, written by the master's HA manager only.

``ha/nodes/<node>``: a node's HA state.  ``online`` (holds its lease), ``unreachable``
(its lease expired, since ``since``), ``fenced`` (unreachable for the grace period after
the expiry: its fencer has killed its VMs), ``recovering`` (its instances are being
restarted elsewhere), ``back`` (it holds a lease again; recoveries from it are still
running), ``manual`` (declared gone by ``master-failover --no-voting``: nothing is
recovered from it automatically, the administrator fails it over by hand).  An agent
starts no VM while its own node is ``fenced``, ``recovering`` or ``back``.

``ha/instances/<name>``: the recovery of one instance: its job, target, attempts, the
outcome or the reason it is refused.

An instance's HA settings are in its configuration (``Instance.ha``...): see
:func:`ha_enabled`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from haven.model.fields import known
from haven.model.instance import Instance

HA_NODES = "ha/nodes/"
HA_INSTANCES = "ha/instances/"

ONLINE = "online"
UNREACHABLE = "unreachable"
FENCED = "fenced"
RECOVERING = "recovering"
BACK = "back"
MANUAL = "manual"
#: States in which the node's agent must not start any VM.
BLOCKED = frozenset({FENCED, RECOVERING, BACK})

#: Templates whose instances can run on another node after their node died.
RECOVERABLE_TEMPLATES = frozenset({"drbd", "sharedfile", "diskless", "ext"})
SHARED_TEMPLATES = frozenset({"sharedfile", "diskless", "ext"})
DEFAULT_MAX_RELOCATE = 2
#: Seconds the node daemons' lease deadline keeps before the TTL (their fencer fires
#: then); the master's silence limit is TTL minus this.
LEASE_MARGIN = 1.0
HA_VALUES = ("on", "off")


def node_key(node: str) -> str:
    return HA_NODES + node


def instance_key(name: str) -> str:
    return HA_INSTANCES + name


@dataclass(frozen=True)
class NodeHA:
    node: str
    state: str = ONLINE
    since: float = 0.0  # when it entered this state (the master's clock)
    lost_at: float = 0.0  # when its lease was first seen gone (this incident)
    reason: str = ""
    # Its fence agent, while unreachable: "" (not run), "running", "confirmed" (it
    # turned the node off: fenced at once) or "failed" (the lease rule decides).
    fence: str = ""
    fence_msg: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeHA:
        return cls(**known(cls, data))


@dataclass(frozen=True)
class InstanceHA:
    """``state``: ``recovering`` (job ``job`` runs), ``recovered``, ``failed`` (the last
    attempt failed; retried while ``attempts`` < max_relocate), ``refused`` (``reason``
    says why it stays down)."""

    name: str
    state: str
    node: str = ""  # the node it was lost with
    target: str = ""
    job: int = 0
    attempts: int = 0
    lost_at: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceHA:
        return cls(**known(cls, data))


def ha_enabled(inst: Instance) -> bool:
    """``--ha on|off`` if set, else on for replicated and shared-storage instances."""
    if inst.ha in HA_VALUES:
        return inst.ha == "on"
    return inst.disk_template in RECOVERABLE_TEMPLATES


def max_relocate(inst: Instance) -> int:
    return inst.ha_max_relocate if inst.ha_max_relocate > 0 else DEFAULT_MAX_RELOCATE

"""Instances (``instances/<name>``: configuration, changed only by jobs) and what the
agents observe of them (``observed/<name>``: written by the primary node's agent).

The Ganeti state an administrator sees (``running``, ``ADMIN_down``, ``ERROR_down``...)
is derived from both by :func:`ganeti_status`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from haven.model.fields import known

# Ganeti's instance states (query.py's _GetInstStatus), exactly as it shows them.
RUNNING = "running"
ADMIN_DOWN = "ADMIN_down"
ADMIN_OFFLINE = "ADMIN_offline"
ERROR_DOWN = "ERROR_down"
ERROR_UP = "ERROR_up"
ERROR_NODEDOWN = "ERROR_nodedown"
ERROR_NODEOFFLINE = "ERROR_nodeoffline"
ERROR_WRONGNODE = "ERROR_wrongnode"
USER_DOWN = "USER_down"

MAX_RESTARTS = 5  # Ganeti's watcher gives up after 5 restarts


@dataclass(frozen=True)
class Disk:
    """``size`` in MiB.  ``path`` is relative to the template's storage root, set at
    creation by the disk template (``ext``: the volume's name at its provider)."""

    uuid: str
    index: int
    size: int
    path: str = ""
    format: str = "raw"
    mode: str = "rw"
    #: ``ext`` only: the ExtStorage provider and the parameters given to it.
    provider: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Disk:
        return cls(**known(cls, data))


@dataclass(frozen=True)
class Nic:
    """Ganeti's nicparams: ``mode`` is ``user`` or ``bridged`` (``link``: the bridge)."""

    index: int
    mac: str
    mode: str = "user"
    link: str = ""
    ip: str = ""
    name: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Nic:
        return cls(**known(cls, data))


@dataclass(frozen=True)
class Instance:
    """One instance.  ``admin_state`` is what the administrator asked for (``up``,
    ``down``, ``offline``); ``generation`` is bumped by every change of primary node,
    and a node starts an instance only at the generation it read."""

    name: str
    uuid: str
    os: str
    hypervisor: str
    disk_template: str
    primary_node: str
    secondary_nodes: tuple[str, ...] = ()
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    beparams: dict[str, Any] = field(default_factory=dict)
    hvparams: dict[str, Any] = field(default_factory=dict)
    osparams: dict[str, Any] = field(default_factory=dict)
    admin_state: str = "down"
    generation: int = 1
    network_port: int = 0  # drbd: the port the secondary's replication export listens on
    # drbd: the NBD link is TLS with a pre-shared key only the cluster's nodes can
    # derive, from their cluster secret and this public id (never the key itself in
    # etcd; see NodeReplication.psk).  ``replication_secret`` is the key as records
    # made before the id kept it, still honoured for them.
    replication_key_id: str = ""
    replication_secret: str = ""
    # High availability (see haven.model.ha): "" = the template's default, "on", "off";
    # recoveries run in priority order (higher first); ha_max_restart bounds the
    # agent's restarts in place (0: Ganeti's 5), ha_max_relocate the recovery attempts
    # to another node per failure (0: the default, 2).
    ha: str = ""
    ha_priority: int = 0
    ha_max_restart: int = 0
    ha_max_relocate: int = 0
    tags: tuple[str, ...] = ()  # Ganeti's tags (absent in older records: none)
    ctime: float = 0.0
    mtime: float = 0.0
    serial_no: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        kw = known(cls, data)
        kw["secondary_nodes"] = tuple(kw.get("secondary_nodes", ()))
        kw["disks"] = tuple(Disk.from_json(d) for d in kw.get("disks", ()))
        kw["nics"] = tuple(Nic.from_json(n) for n in kw.get("nics", ()))
        kw["tags"] = tuple(kw.get("tags") or ())
        return cls(**kw)

    def modified(self, now: float, **changes: Any) -> Instance:
        return replace(self, mtime=now, serial_no=self.serial_no + 1, **changes)

    @property
    def memory(self) -> int:
        return int(self.beparams.get("maxmem") or self.beparams.get("memory") or 128)

    @property
    def vcpus(self) -> int:
        return int(self.beparams.get("vcpus") or 1)


@dataclass(frozen=True)
class Observed:
    """What the node that runs (or should run) an instance sees, written by its agent.

    ``state``: ``running``, ``stopped`` (not running), ``user_down`` (the guest powered
    off), ``failed`` (gave up after ``MAX_RESTARTS``).  ``restarts`` counts automatic
    restarts since the administrator last started it.  ``with_node``: stopped because
    its node went down or fenced itself (lease lost), not by itself: its next restart
    is not counted.
    """

    name: str
    node: str
    state: str
    pid: int = 0
    generation: int = 0
    restarts: int = 0
    since: float = 0.0
    updated: float = 0.0
    message: str = ""
    accel: str = ""
    with_node: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observed:
        return cls(**known(cls, data))


def ganeti_status(inst: Instance, obs: Observed | None, node_alive: bool,
                  node_offline: bool, running_elsewhere: str | None = None) -> str:
    """Ganeti's status column for an instance.

    ``running_elsewhere``: a node other than the primary reports it running.
    """
    if node_offline:
        return ERROR_NODEOFFLINE
    if not node_alive:
        return ERROR_NODEDOWN
    if running_elsewhere:
        return ERROR_WRONGNODE
    running = obs is not None and obs.node == inst.primary_node and obs.state == "running"
    if inst.admin_state == "up":
        if running:
            return RUNNING
        if obs is not None and obs.state == "user_down":
            return USER_DOWN
        return ERROR_DOWN
    if inst.admin_state == "offline":
        return ERROR_UP if running else ADMIN_OFFLINE
    return ERROR_UP if running else ADMIN_DOWN

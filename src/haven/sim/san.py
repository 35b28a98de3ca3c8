"""``haven up --storage iscsi``: a storage server for the local cluster.

On one machine the SAN is Debian's userspace iSCSI target (``tgtd``) on its own
loopback address (``<subnet>.250:3260``), or with ``--netns`` on the LAN switch's
address in the root namespace (``10.77.0.254:3260``), its LUNs files under
``<base>/san/pool``.
Every node gets the built-in ``iscsi`` provider's configuration
(``<node>/extstorage/iscsi.conf``) and the cluster's CHAP secret in a root-only file
(``<node>/extstorage/iscsi-chap``): the secret is in no command line, log or etcd key.

On real machines the storage server is any host running ``tgtd``; each node gets the
same two files by hand (``mgmt`` then names how the provider reaches tgtadm there,
for instance ``["ssh", "root@san"]``), as Ganeti's providers are configured.

tgtd keeps its targets in memory only: when it is started again (``haven up``,
``haven start san``) every volume of the pool is served again, with the initiators
that were admitted to it (:func:`haven.storage.iscsi_provider.restore`).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from haven.errors import InvalidInput

CHAP_USER = "haven"
PORT = 3260


@dataclass(frozen=True)
class San:
    """The local storage server of a ``haven up`` cluster (``<base>/san.json``)."""

    address: str
    port: int
    control: int
    pool: str
    run_dir: str
    target_prefix: str

    @property
    def portal(self) -> str:
        return f"{self.address}:{self.port}"


def _path(base: Path) -> Path:
    return base / "san.json"


def load(base: Path) -> San | None:
    try:
        return San(**json.loads(_path(base).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _secret_of(base: Path) -> str:
    return (base / "san" / "chap").read_text().strip()



def setup(base: Path, subnet: str, cluster: str, data_dirs: list[Path],
          address: str = "") -> San:
    """Start the storage server of a new local cluster and configure every node.
    It listens on ``address``, by default ``<subnet>.250`` (a loopback address); a
    ``--netns`` cluster gives its LAN switch's address, which every node's namespace
    reaches over its own link."""
    from haven.storage.tgt import free_control

    if load(base) is not None:
        return start(base, data_dirs)
    run_dir = base / "san"
    (run_dir / "pool").mkdir(parents=True, exist_ok=True)
    secret_file = run_dir / "chap"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(18))
    last = subnet.rsplit(".", 1)[-1]
    san = San(address=address or f"{subnet}.250", port=PORT,
              control=free_control(100 + (int(last) if last.isdigit() else 0) % 100),
              pool=str(run_dir / "pool"), run_dir=str(run_dir),
              target_prefix=f"iqn.2026-12.org.haven:{cluster.lower()}")
    _path(base).write_text(json.dumps(asdict(san), indent=1))
    return start(base, data_dirs)


def configure_node(san: San, secret: str, data_dir: Path) -> None:
    """Write the provider's configuration and the CHAP secret into a node's data dir."""
    conf_dir = data_dir / "extstorage"
    conf_dir.mkdir(parents=True, exist_ok=True)
    secret_file = conf_dir / "iscsi-chap"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    conf: dict[str, Any] = {"portal": san.portal, "control": san.control, "mgmt": [],
                            "pool": san.pool, "target_prefix": san.target_prefix,
                            "chap_user": CHAP_USER, "chap_secret_file": str(secret_file)}
    (conf_dir / "iscsi.conf").write_text(json.dumps(conf, indent=1) + "\n")


def start(base: Path, data_dirs: list[Path] | None = None) -> San:
    """Start the storage server if it does not run, serving every volume of its pool
    again; (re)write the nodes' configuration when ``data_dirs`` is given."""
    from haven.storage import iscsi_provider, tgt, tgt_server

    san = load(base)
    if san is None:
        raise InvalidInput(f"The local cluster in {base} has no storage server; create "
                           f"it with 'haven up --storage iscsi'.")
    secret = _secret_of(base)
    for d in data_dirs or []:
        configure_node(san, secret, d)
    if not tgt.Tgtadm(control=san.control).answers():
        tgt_server.start_server(Path(san.run_dir), san.address, san.port, san.control,
                                CHAP_USER, secret)
        iscsi_provider.restore(_conf_file(data_dirs, base))
    return san


def _conf_file(data_dirs: list[Path] | None, base: Path) -> Path:
    for d in data_dirs or sorted(base.glob("node*")):
        conf = d / "extstorage" / "iscsi.conf"
        if conf.exists():
            return conf
    raise InvalidInput(f"No node of the local cluster in {base} has an iscsi.conf.")


def stop(base: Path) -> bool:
    """Stop the storage server (its volumes stay in the pool).  False if none ran."""
    from haven.storage import tgt_server

    san = load(base)
    if san is None:
        return False
    pid_file = Path(san.run_dir) / f"tgtd-{san.control}.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    info = tgt_server.ServerInfo(pid, san.address, san.port, san.control, Path(san.run_dir),
                                 Path(san.run_dir) / f"tgtd-{san.control}.log")
    tgt_server.stop_server(info)
    return True


def kill(base: Path) -> list[int]:
    """SIGKILL the storage server (a SAN that dies under its initiators)."""
    import signal

    san = load(base)
    if san is None:
        return []
    pid_file = Path(san.run_dir) / f"tgtd-{san.control}.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.killpg(pid, signal.SIGKILL)
    except (OSError, ValueError):
        return []
    return [pid]

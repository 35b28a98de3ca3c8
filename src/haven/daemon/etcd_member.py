"""A managed etcd member: one per master candidate, supervised by its node daemon.

The member runs detached (own session, pid file ``etcd.pid``, log ``logs/etcd.log``) so a
daemon restart does not touch it.  Its normal arguments are saved in ``etcd.json``; the
one-time ``--force-new-cluster`` recovery is never saved there, and the member is
restarted without it as soon as it is healthy, so the flag never outlives one start.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from haven.daemon import procs
from haven.errors import NodeSetupError

log = logging.getLogger(__name__)

ETCD_BINARY = "etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380


@dataclass(frozen=True)
class MemberConfig:
    """The arguments a member is (re)started with."""

    name: str
    client_url: str
    peer_url: str
    initial_cluster: str
    initial_state: str  # "new" or "existing"
    cluster_token: str


class EtcdMember:
    """The etcd member that lives in ``<data_dir>/etcd``."""

    def __init__(self, data_dir: Path) -> None:
        self.base = data_dir
        self.data = data_dir / "etcd"
        self.pid_path = data_dir / "etcd.pid"
        self.conf_path = data_dir / "etcd.json"
        self.log_path = data_dir / "logs" / "etcd.log"

    # -- configuration -------------------------------------------------------------
    def config(self) -> MemberConfig | None:
        try:
            return MemberConfig(**json.loads(self.conf_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def configure(self, conf: MemberConfig, wipe: bool = False) -> None:
        """Record the member's arguments; ``wipe`` drops old data (joining afresh)."""
        if wipe and self.data.exists():
            shutil.rmtree(self.data)
        self.conf_path.write_text(json.dumps(asdict(conf), indent=1))

    def unconfigure(self) -> None:
        """Stop the member and forget it (node removed or cluster destroyed)."""
        self.stop()
        self.conf_path.unlink(missing_ok=True)
        if self.data.exists():
            shutil.rmtree(self.data)

    # -- process -------------------------------------------------------------------
    def pid(self) -> int | None:
        return procs.running_pid(self.pid_path, ETCD_BINARY)

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, force_new_cluster: bool = False) -> int:
        """Start the member detached (no-op if it runs); returns its pid."""
        pid = self.pid()
        if pid is not None:
            return pid
        conf = self.config()
        if conf is None:
            raise NodeSetupError(f"No etcd member is configured in {self.base}.")
        if shutil.which(ETCD_BINARY) is None:
            raise NodeSetupError("etcd is not installed; install Debian's etcd-server.")
        argv = self._argv(conf)
        if force_new_cluster:
            argv.append("--force-new-cluster")
        log.info("starting etcd member %s%s", conf.name,
                 " with --force-new-cluster" if force_new_cluster else "")
        return procs.spawn_detached(argv, self.log_path, self.pid_path)

    def _argv(self, conf: MemberConfig) -> list[str]:
        self.data.mkdir(parents=True, exist_ok=True)
        return [
            ETCD_BINARY,
            "--name", conf.name,
            "--data-dir", str(self.data),
            "--listen-client-urls", conf.client_url,
            "--advertise-client-urls", conf.client_url,
            "--listen-peer-urls", conf.peer_url,
            "--initial-advertise-peer-urls", conf.peer_url,
            "--initial-cluster", conf.initial_cluster,
            "--initial-cluster-state", conf.initial_state,
            "--initial-cluster-token", conf.cluster_token,
            # History is compacted hourly and the database defragmented by the master,
            # so the 2 GiB quota is never reached; watchers re-list after compaction.
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", "1h",
            "--quota-backend-bytes", str(2 * 1024**3),
            # Pre-vote keeps a lone, partitioned member from inflating the raft term.
            "--pre-vote",
            "--enable-v2=false",
            "--logger", "zap",
            "--log-level", "warn",
        ]

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is not None:
            procs.terminate(pid, timeout)
        self.pid_path.unlink(missing_ok=True)

    def wait_healthy(self, timeout: float = 20.0) -> bool:
        """Wait until the member answers ``/health`` with a leader."""
        conf = self.config()
        if conf is None:
            return False
        return wait_healthy(conf.client_url, timeout)

    def recover_alone(self) -> None:
        """Make this member a cluster of one (``--force-new-cluster``), then restart it
        with its normal arguments so that the flag is never left in place."""
        conf = self.config()
        if conf is None:
            raise NodeSetupError(f"No etcd member is configured in {self.base}.")
        self.stop()
        self.start(force_new_cluster=True)
        if not self.wait_healthy(30):
            raise NodeSetupError(
                f"etcd member {conf.name} did not come up with --force-new-cluster; "
                f"see {self.log_path}.")
        self.stop()
        own = f"{conf.name}={conf.peer_url}"
        self.configure(MemberConfig(conf.name, conf.client_url, conf.peer_url, own,
                                    "existing", conf.cluster_token))
        self.start()
        if not self.wait_healthy(30):
            raise NodeSetupError(
                f"etcd member {conf.name} did not restart after recovery; "
                f"see {self.log_path}.")


def wait_healthy(client_url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(client_url):
            return True
        time.sleep(0.1)
    return False


def healthy(client_url: str) -> bool:
    try:
        with urllib.request.urlopen(client_url + "/health", timeout=1.0) as resp:
            body = json.loads(resp.read())
            return str(body.get("health")) == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False

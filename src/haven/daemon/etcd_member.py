"""A managed etcd member: one per master candidate, supervised by its node daemon.

The member runs detached (own session, pid file ``etcd.pid``, log ``logs/etcd.log``) so a
daemon restart does not touch it.  Its normal arguments are saved in ``etcd.json``; the
one-time ``--force-new-cluster`` recovery is never saved there, and the member is
restarted without it as soon as it is healthy, so the flag never outlives one start.

The etcd cluster id the member last served in is kept in ``etcd.cluster``: a node that
returns after the others recovered without it (``--no-voting``) finds its peers serving
another cluster id and must rejoin them instead of starting its stale copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from haven.daemon import procs
from haven.daemon.localstate import etcd_crl_file, etcd_tls_files
from haven.errors import NodeSetupError
from haven.logtail import tail_lines
from haven.store.tls import TlsFiles, client_context

log = logging.getLogger(__name__)

ETCD_BINARY = "etcd"
ETCDCTL_BINARY = "etcdctl"
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
        self.cluster_id_path = data_dir / "etcd.cluster"
        # The node's certificate from the cluster CA (haven.daemon.localstate).
        self.tls = etcd_tls_files(data_dir)
        # The certificates the cluster revoked (haven.revocation); etcd reads it again
        # for every new connection, so it is given only once it exists.
        self.crl = etcd_crl_file(data_dir)

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

    def known_cluster_id(self) -> int:
        """The etcd cluster id this member last served in (0: never seen)."""
        try:
            return int(self.cluster_id_path.read_text().strip(), 16)
        except (OSError, ValueError):
            return 0

    def remember_cluster_id(self, cluster_id: int) -> None:
        if cluster_id and cluster_id != self.known_cluster_id():
            self.cluster_id_path.write_text(f"{cluster_id:x}\n")

    def unconfigure(self) -> None:
        """Stop the member and forget it (node removed or cluster destroyed)."""
        self.stop()
        self.conf_path.unlink(missing_ok=True)
        self.cluster_id_path.unlink(missing_ok=True)
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
        return [*self._base_argv(conf), *self._tls_argv(conf)]

    def _tls_argv(self, conf: MemberConfig) -> list[str]:
        """https URLs: clients and peers must show a certificate from the cluster CA.
        etcd reads the certificate files again at every handshake, so a renewed node
        certificate is served without a restart (measured with etcd 3.4); the CA file
        is read only at start.  The revocation list is read for every new connection;
        a member started before its node had one runs without it until restarted."""
        if not conf.client_url.startswith("https:"):
            return []  # a cluster made before etcd had TLS
        ca, cert, key = self.tls
        crl = (["--client-crl-file", str(self.crl), "--peer-crl-file", str(self.crl)]
               if self.crl.exists() else [])
        return ["--cert-file", cert, "--key-file", key, "--client-cert-auth",
                "--trusted-ca-file", ca,
                "--peer-cert-file", cert, "--peer-key-file", key, "--peer-client-cert-auth",
                "--peer-trusted-ca-file", ca, *crl]

    def _base_argv(self, conf: MemberConfig) -> list[str]:
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
            # With TLS, etcd 3.4 logs a warning for every request through its JSON
            # gateway under client-certificate auth ("ignoring common name in
            # gRPC-gateway proxy request": 100 lines/s measured), so it logs errors
            # only; etcd's health is in 'gnt-cluster verify' and the metrics.
            "--log-level", "error" if conf.client_url.startswith("https:") else "warn",
        ]

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is not None:
            procs.terminate(pid, timeout)
        self.pid_path.unlink(missing_ok=True)

    def wait_healthy(self, timeout: float = 20.0) -> bool:
        """Wait until the member answers ``/health`` with a leader; ``False`` at once
        if its process exits meanwhile (:meth:`exit_reason` says why)."""
        conf = self.config()
        if conf is None:
            return False
        return wait_healthy(conf.client_url, timeout, self.tls, alive=self.running)

    def exit_reason(self) -> str:
        """What etcd said last before it exited: the message and error of the last
        fatal or error line of its log (JSON lines, zap), or ``""``."""
        for line in reversed(tail_lines(self.log_path, 65536, window=65536)):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("fatal", "panic",
                                                                    "error"):
                err = str(entry.get("error", ""))
                return f"{entry.get('msg', '')}: {err[:300]}" if err else \
                    str(entry.get("msg", ""))
        return ""

    def recover_alone(self, learner: bool = False) -> None:
        """Make this member a cluster of one, then restart it with its normal arguments.

        A voter is restarted once with ``--force-new-cluster``.  A learner cannot be
        (etcd 3.4 panics: "removed all voters"), so its database is restored into a
        new one-member cluster with ``etcdctl snapshot restore``; keys, revisions and
        leases are kept (measured: the first write 1.0 s after the restore began).  The
        old data directory is kept as ``etcd.before-recovery``."""
        conf = self.config()
        if conf is None:
            raise NodeSetupError(f"No etcd member is configured in {self.base}.")
        self.stop()
        if learner:
            # A token of its own gives the restored cluster an id of its own, which
            # tells a returning old member that this is not its cluster any more.
            conf = replace(conf, cluster_token=f"{conf.cluster_token.split('~')[0]}~"
                                               f"{int(time.time())}")
            self._restore_from_snapshot(conf)
            self.configure(MemberConfig(conf.name, conf.client_url, conf.peer_url,
                                        f"{conf.name}={conf.peer_url}", "existing",
                                        conf.cluster_token))
            self.start()
            if not self.wait_healthy(30):
                raise NodeSetupError(
                    f"etcd member {conf.name} did not start from its restored copy; "
                    f"see {self.log_path}.")
            return
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

    def _restore_from_snapshot(self, conf: MemberConfig) -> None:
        db = self.data / "member" / "snap" / "db"
        if not db.exists():
            raise NodeSetupError(f"etcd member {conf.name} has no database at {db}; it "
                                 f"cannot be recovered alone.")
        if shutil.which(ETCDCTL_BINARY) is None:
            raise NodeSetupError("etcdctl is not installed; install Debian's etcd-client.")
        restored = self.base / "etcd.restoring"
        backup = self.base / "etcd.before-recovery"
        for path in (restored, backup):
            if path.exists():
                shutil.rmtree(path)
        proc = subprocess.run(
            [ETCDCTL_BINARY, "snapshot", "restore", str(db), "--skip-hash-check",
             "--name", conf.name, "--initial-cluster", f"{conf.name}={conf.peer_url}",
             "--initial-advertise-peer-urls", conf.peer_url,
             "--initial-cluster-token", conf.cluster_token, "--data-dir", str(restored)],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "ETCDCTL_API": "3"})
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise NodeSetupError(f"etcd member {conf.name} could not be restored from its "
                                 f"database: {' '.join(tail) or 'etcdctl failed'}.")
        self.data.rename(backup)
        restored.rename(self.data)
        log.warning("etcd member %s restored alone from its learner copy (old data kept "
                    "in %s)", conf.name, backup)


def wait_healthy(client_url: str, timeout: float, tls: TlsFiles | None = None,
                 alive: Callable[[], bool] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    ctx = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        if ctx is None and tls and client_url.startswith("https:"):
            try:
                ctx = client_context(tls)
            except OSError:  # the files are not written yet: ask again
                time.sleep(0.1)
                continue
        if healthy(client_url, ctx):
            return True
        time.sleep(0.1)
    return False


def healthy(client_url: str, ctx: ssl.SSLContext | None = None) -> bool:
    """``/health`` answers with a leader (``ctx``: the client TLS context for https)."""
    try:
        with urllib.request.urlopen(client_url + "/health", timeout=1.0,
                                    context=ctx) as resp:
            body = json.loads(resp.read())
            return str(body.get("health")) == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False

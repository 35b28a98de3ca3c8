"""What a node keeps on its own disk: the few files it needs before it can reach etcd.

``<data_dir>/node.json``   joined state: cluster name, etcd endpoints, member name
``<data_dir>/daemon.json`` where this node's daemon listens (for the local CLI)
``<data_dir>/cluster.pem|.key`` the cluster certificate, cached from the store
``<data_dir>/client.json`` the client config (redist-conf), with the CLI's password
``<data_dir>/ca.pem|.key``  the cluster's CA (haven.pki), which signs the etcd certificates
``<data_dir>/etcd.pem|.key`` this node's certificate for etcd (server, peer and client)
``<data_dir>/etcd-crl.pem`` the etcd certificates the cluster revoked (haven.revocation)
``<data_dir>/secrets.json`` the cluster secret and the CLI's password (never in etcd)
``<data_dir>/join-token``  while standby: the one-time token a master must present to
                           make this node join (``haven join-token`` prints it)
Everything else here is a cache of the store but for ``node.json``'s endpoints, which
are how the node finds etcd in the first place.  Every file is 0600: the directory
holds every key of the cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from haven import pki
from haven.errors import NodeSetupError
from haven.store.tls import TlsFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSecrets:
    """What only the cluster's nodes know.  ``cluster_secret`` authenticates node
    daemons to each other, signs session tokens and derives replication keys;
    ``admin_password`` is the CLI's RAPI password (its hash is in etcd)."""

    cluster_secret: str
    admin_password: str

    @classmethod
    def new(cls) -> ClusterSecrets:
        return cls(secrets.token_hex(32), secrets.token_urlsafe(18))

    def to_text(self) -> str:
        """What ``secrets.json`` holds."""
        return json.dumps(asdict(self), indent=1)


@dataclass(frozen=True)
class JoinedState:
    cluster_name: str
    etcd_endpoints: tuple[str, ...]
    etcd_managed: bool
    etcd_member: bool
    node_uuid: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class LocalState:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.node_file = data_dir / "node.json"
        self.daemon_file = data_dir / "daemon.json"
        self.cert_file = data_dir / "cluster.pem"
        self.key_file = data_dir / "cluster.key"
        self.client_file = data_dir / "client.json"
        self.provisional_cert = data_dir / "provisional.pem"
        self.provisional_key = data_dir / "provisional.key"
        self.logs = data_dir / "logs"
        self.etcd_files = etcd_tls_files(data_dir)
        self.ca_file = Path(self.etcd_files.ca)
        self.ca_key_file = data_dir / "ca.key"
        self.etcd_cert_file = Path(self.etcd_files.cert)
        self.etcd_key_file = Path(self.etcd_files.key)
        self.crl_file = etcd_crl_file(data_dir)
        self.secrets_file = data_dir / "secrets.json"
        self.join_token_file = data_dir / "join-token"

    def ensure_dirs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        os.chmod(self.dir, 0o700)

    def joined(self) -> JoinedState | None:
        try:
            data = json.loads(self.node_file.read_text())
        except (OSError, ValueError):
            return None
        data["etcd_endpoints"] = tuple(data["etcd_endpoints"])
        return JoinedState(**data)

    def save_joined(self, state: JoinedState) -> None:
        write_private(self.node_file, json.dumps(asdict(state), indent=1))

    def forget(self) -> None:
        """Leave the cluster locally: drop the joined state and the cluster secrets."""
        for f in (self.node_file, self.cert_file, self.key_file, self.client_file,
                  self.ca_file, self.ca_key_file, self.etcd_cert_file, self.etcd_key_file,
                  self.secrets_file, self.crl_file):
            f.unlink(missing_ok=True)

    def save_cert(self, cert_pem: str, key_pem: str) -> list[str]:
        return write_changed({self.cert_file: cert_pem, self.key_file: key_pem})

    def ensure_provisional_cert(self) -> None:
        if not self.provisional_cert.exists():
            cert, key = make_certificate("haven-provisional")
            write_private(self.provisional_key, key)
            write_private(self.provisional_cert, cert)

    # -- the cluster's keys ---------------------------------------------------------
    def save_ca(self, ca: pki.KeyPair) -> None:
        write_private(self.ca_key_file, ca.key_pem)
        write_private(self.ca_file, ca.cert_pem)

    def ca(self) -> pki.KeyPair:
        try:
            return pki.KeyPair(self.ca_file.read_text(), self.ca_key_file.read_text())
        except OSError as exc:
            raise NodeSetupError(f"The cluster CA is missing in {self.dir} ({exc}); "
                                 f"re-add this node to the cluster.") from exc

    def save_etcd_cert(self, pair: pki.KeyPair) -> None:
        write_private(self.etcd_key_file, pair.key_pem)
        write_private(self.etcd_cert_file, pair.cert_pem)

    def etcd_tls(self) -> TlsFiles | None:
        """The files this node talks to etcd with, or None (a cluster made before etcd
        had TLS, or an external etcd reached over plain HTTP)."""
        files = self.etcd_files
        return files if all(os.path.exists(f) for f in files) else None

    def save_secrets(self, value: ClusterSecrets) -> None:
        write_private(self.secrets_file, value.to_text())

    def secrets(self) -> ClusterSecrets | None:
        try:
            return ClusterSecrets(**json.loads(self.secrets_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def key_bundle(self) -> dict[str, str]:
        """Every key the cluster's nodes share, from this node's files: what the master
        sends a joining node, and redist-conf (and renew-crypto) to every node."""
        keys = self.secrets()
        if keys is None:
            raise NodeSetupError(f"This node has no cluster secrets ({self.secrets_file}); "
                                 f"copy secrets.json, ca.pem and ca.key there from a node "
                                 f"that has them.")
        ca = self.ca()
        try:
            cert, key = self.cert_file.read_text(), self.key_file.read_text()
        except OSError as exc:
            raise NodeSetupError(f"The cluster certificate is missing in {self.dir} "
                                 f"({exc}).") from exc
        out = {"cert_pem": cert, "key_pem": key, "ca_pem": ca.cert_pem,
               "ca_key": ca.key_pem, "cluster_secret": keys.cluster_secret,
               "admin_password": keys.admin_password}
        if self.crl_file.exists():
            out["crl_pem"] = self.crl_file.read_text()
        return out

    def save_key_bundle(self, bundle: dict[str, object]) -> list[str]:
        """Write what :meth:`key_bundle` gave (files that changed are returned);
        ``etcd_cert``/``etcd_key``, if present, are this node's own certificate."""
        try:
            files = {self.cert_file: bundle["cert_pem"], self.key_file: bundle["key_pem"],
                     self.ca_file: bundle["ca_pem"], self.ca_key_file: bundle["ca_key"],
                     self.secrets_file: ClusterSecrets(
                         str(bundle["cluster_secret"]),
                         str(bundle["admin_password"])).to_text()}
        except KeyError as exc:
            raise NodeSetupError(f"The cluster's keys sent to this node lack {exc}; the "
                                 f"master runs an older Haven.") from exc
        if bundle.get("etcd_cert") and bundle.get("etcd_key"):
            files[self.etcd_key_file] = bundle["etcd_key"]
            files[self.etcd_cert_file] = bundle["etcd_cert"]
        for path, text in files.items():
            if not isinstance(text, str) or not text:
                raise NodeSetupError(f"The cluster's keys sent to this node have no "
                                     f"{path.name}.")
        written = write_changed({path: str(text) for path, text in files.items()})
        crl = bundle.get("crl_pem")
        if isinstance(crl, str):
            written += self.save_crl(crl)
        return written

    def save_crl(self, crl_pem: str) -> list[str]:
        """Write the cluster's revocation list for the etcd member, if it is signed by
        this node's CA (etcd refuses every connection while its list does not parse);
        the paths written."""
        try:
            ca_pem = self.ca_file.read_text()
        except OSError:
            return []
        if not pki.crl_signed_by(crl_pem, ca_pem):
            log.warning("Ignoring a revocation list that the cluster CA did not sign")
            return []
        return write_changed({self.crl_file: crl_pem})

    # -- the join token (standby) -----------------------------------------------------
    def join_token(self) -> str:
        """This standby node's one-time join token, made on first use: a secret the
        master must present, and the fingerprint of the certificate this node serves
        while standby, which the master pins (so each side verifies the other)."""
        self.ensure_provisional_cert()
        try:
            secret = self.join_token_file.read_text().strip()
        except OSError:
            secret = ""
        if not secret:
            secret = secrets.token_hex(16)
            write_private(self.join_token_file, secret + "\n")
        fp = pki.fingerprint(self.provisional_cert.read_text()).split(":", 1)[1]
        return f"{pki.TOKEN_PREFIX}.{secret}.{fp}"

    def consume_join_token(self, presented: str) -> bool:
        """True if ``presented`` is this node's current token; any presentation of the
        right secret uses it up (a job record in etcd that holds it is then useless)."""
        try:
            secret = self.join_token_file.read_text().strip()
        except OSError:
            return False
        given = pki.split_token(presented)[0] if presented else ""
        ok = bool(secret) and secrets.compare_digest(
            hashlib.sha256(given.encode()).digest(), hashlib.sha256(secret.encode()).digest())
        if ok:
            self.join_token_file.unlink(missing_ok=True)
        return ok

    def new_join_token(self) -> None:
        """Forget the current token (the next ``join_token`` makes a new one)."""
        self.join_token_file.unlink(missing_ok=True)


def etcd_tls_files(data_dir: Path) -> TlsFiles:
    """Where a node keeps the cluster CA and its own etcd certificate and key: read by
    its daemon's store and by its etcd member (haven.daemon.etcd_member)."""
    return TlsFiles(str(data_dir / "ca.pem"), str(data_dir / "etcd.pem"),
                    str(data_dir / "etcd.key"))


def etcd_crl_file(data_dir: Path) -> Path:
    """Where a node keeps the cluster's revocation list for its etcd member."""
    return data_dir / "etcd-crl.pem"


def write_changed(files: dict[Path, str]) -> list[str]:
    """Write each file whose content differs (:func:`write_private`); the paths written."""
    written = []
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            write_private(path, text)
            written.append(str(path))
    return written


def write_private(path: Path, text: str) -> None:
    """Write atomically, readable by root only (it may hold keys or passwords)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def make_certificate(common_name: str) -> tuple[str, str]:
    """A self-signed EC certificate and key (PEM), via the openssl command."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        key, cert = Path(tmp) / "k.pem", Path(tmp) / "c.pem"
        try:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
                 "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(cert)],
                check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NodeSetupError(f"Could not create a certificate with openssl: {exc}; "
                                 f"install the openssl package.") from exc
        return cert.read_text(), key.read_text()

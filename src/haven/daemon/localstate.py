"""What a node keeps on its own disk: the few files it needs before it can reach etcd.

``<data_dir>/node.json``   joined state: cluster name, etcd endpoints, member name
``<data_dir>/daemon.json`` where this node's daemon listens (for the local CLI)
``<data_dir>/cluster.pem|.key`` the cluster certificate, cached from the store
``<data_dir>/client.json`` the client config, cached from the store (redist-conf)
Everything here is a cache of the store but for ``node.json``'s endpoints, which are
how the node finds etcd in the first place.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from haven.errors import NodeSetupError


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
        for f in (self.node_file, self.cert_file, self.key_file, self.client_file):
            f.unlink(missing_ok=True)

    def save_cert(self, cert_pem: str, key_pem: str) -> list[str]:
        written = []
        for path, text in ((self.cert_file, cert_pem), (self.key_file, key_pem)):
            if not path.exists() or path.read_text() != text:
                write_private(path, text)
                written.append(str(path))
        return written

    def ensure_provisional_cert(self) -> None:
        if not self.provisional_cert.exists():
            cert, key = make_certificate("haven-provisional")
            write_private(self.provisional_key, key)
            write_private(self.provisional_cert, cert)


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

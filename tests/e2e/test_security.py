"""The control plane's doors (issue 14): etcd answers only the cluster's certificates,
nothing in etcd is a usable secret, and a node joins only with its one-time token.

One real two-node cluster: node02 is removed and added back through its join token,
then a replicated instance is made, so that every kind of record is in etcd when it is
searched for secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import httpx

from haven import pki
from haven.daemon.localstate import LocalState
from haven.store.tls import TlsFiles, client_context
from tests.e2e.conftest import BIN, Sim

BAD_TOKEN = f"hvn1.{'0' * 32}.{'0' * 64}"


def _post(url: str, path: str, body: dict[str, str], verify: ssl.SSLContext | bool
          ) -> httpx.Response:
    return httpx.post(url + path, json=body, verify=verify, timeout=5, trust_env=False)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _stranger(tmp: Path) -> TlsFiles:
    """A client certificate from a CA that is not the cluster's."""
    ca = pki.make_ca("stranger")
    pair = pki.issue(ca, "stranger", ["127.0.0.1"])
    files = TlsFiles(str(tmp / "ca.pem"), str(tmp / "c.pem"), str(tmp / "c.key"))
    for path, text in zip(files, (ca.cert_pem, pair.cert_pem, pair.key_pem), strict=True):
        Path(path).write_text(text)
    return files


def _refused(url: str, verify: ssl.SSLContext | bool) -> None:
    """Neither a read nor a write gets through."""
    for path, body in (("/v3/kv/range", {"key": _b64("/"), "range_end": _b64("\0")}),
                       ("/v3/kv/put", {"key": _b64("/stranger"), "value": _b64("x")})):
        try:
            resp = _post(url, path, body, verify)
        except (httpx.HTTPError, ssl.SSLError, OSError):
            continue
        raise AssertionError(f"{url}{path} answered {resp.status_code}: {resp.text[:200]}")


def _dump(url: str, tls: TlsFiles) -> bytes:
    """Every key and value in etcd, read with the node's own certificate."""
    resp = _post(url, "/v3/kv/range", {"key": _b64("\0"), "range_end": _b64("\0")},
                 client_context(tls))
    resp.raise_for_status()
    kvs = resp.json().get("kvs", [])
    assert len(kvs) > 20, "the dump should hold the whole configuration"
    return b"\n".join(base64.b64decode(kv["key"]) + b"=" + base64.b64decode(kv.get(
        "value", "")) for kv in kvs)


def test_join_token_etcd_tls_and_no_secret_in_etcd(cluster2: Sim, tmp_path: Path) -> None:
    sim = cluster2
    url1 = f"https://{sim.address('node01')}:2379"
    # -- a removed node's certificate is revoked ---------------------------------------
    removed = _copy_tls(sim.base / "node02", tmp_path / "removed")
    _reads(url1, removed)  # it opens etcd while node02 belongs to the cluster
    assert sim.run("gnt-node", "remove", "node02").returncode == 0
    _refused(url1, client_context(removed))
    # -- joining: the token is required, checked both ways, and used up ----------------
    p = sim.run("gnt-node", "add", "--primary-ip", sim.address("node02"), "node02")
    assert p.returncode == 1 and "join token" in p.stderr and "Traceback" not in p.stderr
    # A token naming another certificate: the master refuses before sending any key.
    p = sim.run("gnt-node", "add", "--primary-ip", sim.address("node02"), "--join-token",
                BAD_TOKEN, "node02")
    assert p.returncode == 1 and "presents certificate" in p.stderr, p.stderr
    token = sim.join_token("node02")
    # The right certificate but a wrong secret: the node refuses and stays standby.
    forged = token.split(".")
    forged[1] = "f" * 32
    p = sim.run("gnt-node", "add", "--primary-ip", sim.address("node02"), "--join-token",
                ".".join(forged), "node02")
    assert p.returncode == 1 and "refused to join" in p.stderr, p.stderr
    assert not (sim.base / "node02" / "secrets.json").exists()
    p = sim.run("gnt-node", "add", "--primary-ip", sim.address("node02"), "--join-token",
                token, "node02")
    assert p.returncode == 0, p.stderr
    sim.wait_verify_ok()
    p = sim.run("haven", "join-token", "--data-dir", str(sim.base / "node02"))
    assert p.returncode == 1 and "already belongs" in p.stderr

    p = sim.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=16m", "-B",
                "memory=64", "-o", "busybox", "-n", "node01:node02", "vm1")
    assert p.returncode == 0, p.stderr

    # -- etcd: only the cluster's certificates ----------------------------------------
    tls = LocalState(sim.base / "node01").etcd_tls()
    assert tls is not None
    stranger = _stranger(tmp_path)
    no_cert = ssl.create_default_context(cafile=tls.ca)
    no_cert.check_hostname = False
    for node in ("node01", "node02"):
        addr = sim.address(node)
        for port in (2379, 2380):
            _refused(f"http://{addr}:{port}", True)  # plain HTTP
            _refused(f"https://{addr}:{port}", no_cert)  # TLS, no client certificate
            _refused(f"https://{addr}:{port}", client_context(stranger))  # another CA
    url = f"https://{sim.address('node01')}:2379"
    dump = _dump(url, tls)
    assert b"/stranger" not in dump

    # -- nothing in etcd is a usable secret ---------------------------------------------
    client = json.loads((sim.base / "client.json").read_text())
    keys = json.loads((sim.base / "node01" / "secrets.json").read_text())
    assert keys["admin_password"] == client["password"]
    secrets = {"the CLI's password": client["password"],
               "the cluster secret": keys["cluster_secret"],
               "a private key": "PRIVATE KEY"}
    for node in ("node01", "node02"):
        for f in ("ca.key", "cluster.key", "etcd.key"):
            body = (sim.base / node / f).read_text().splitlines()[1]
            secrets[f"{node}'s {f}"] = body
    psk_dirs = list((sim.base / "node01" / "run").glob("vm1.psk/keys.psk"))
    for psk in psk_dirs:
        secrets["vm1's replication key"] = psk.read_text().split(":", 1)[1].strip()
    assert psk_dirs, "vm1's NBD link should use TLS with a pre-shared key"
    for what, secret in secrets.items():
        assert secret.encode() not in dump, f"{what} is in etcd"
    assert b'"replication_secret": ""' in dump or b'"replication_secret":""' in dump
    # RAPI passwords are stored as scrypt hashes only.
    assert b'"password": "scrypt$' in dump or b'"password":"scrypt$' in dump

    # -- the files that hold them are root's alone -------------------------------------
    for node in ("node01", "node02"):
        for f in ("secrets.json", "ca.key", "cluster.key", "etcd.key", "client.json"):
            mode = stat.S_IMODE((sim.base / node / f).stat().st_mode)
            assert mode == 0o600, f"{node}/{f} has mode {mode:o}"
    assert stat.S_IMODE((sim.base / "client.json").stat().st_mode) == 0o600

    # -- renew-crypto: new node certificates, served at once; the old ones revoked -----
    before = {n: _served(sim.address(n), tls) for n in ("node01", "node02")}
    old = {n: _copy_tls(sim.base / n, tmp_path / f"old-{n}") for n in ("node01", "node02")}
    p = sim.run("gnt-cluster", "renew-crypto", "--new-node-certificates")
    assert p.returncode != 0 and "-f" in p.stderr  # not on a terminal: must confirm
    p = sim.run("gnt-cluster", "renew-crypto", "--new-cluster-domain-secret", "-f")
    assert p.returncode == 1 and "cannot renew" in p.stderr
    p = sim.run("gnt-cluster", "renew-crypto", "--new-node-certificates", "-f")
    assert p.returncode == 0, p.stderr
    ca_pem = Path(tls.ca).read_text()
    for node in ("node01", "node02"):
        cert = (sim.base / node / "etcd.pem").read_text()
        assert pki.signed_by(cert, ca_pem)
        assert pki.fingerprint(cert) != before[node]
        assert _served(sim.address(node), tls) == pki.fingerprint(cert)
    for node in ("node01", "node02"):  # no member takes an old certificate any more
        for port in (2379, 2380):
            for holder in ("node01", "node02"):
                _refused(f"https://{sim.address(node)}:{port}", client_context(old[holder]))
    _reads(url1, tls)
    sim.wait_verify_ok()
    # The daemons connect with their new certificates from now on: node01's member (the
    # only voter of two nodes) restarts, every connection to it is opened again.
    pid = int((sim.base / "node01" / "etcd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    sim.wait_verify_ok()
    assert int((sim.base / "node01" / "etcd.pid").read_text()) != pid
    out = sim.run("gnt-instance", "list", "--no-headers", "-o", "name,status",
                  check=True).stdout
    assert out.split() == ["vm1", "running"], out

    # -- renew-crypto: a new cluster certificate, served and pinned at once ------------
    stale = tmp_path / "stale-client.json"
    stale.write_text((sim.base / "client.json").read_text())
    old_cert = json.loads(stale.read_text())["cert"]
    p = sim.run("gnt-cluster", "renew-crypto", "--new-cluster-certificate", "-f")
    assert p.returncode == 0, p.stderr
    new_cert = json.loads((sim.base / "client.json").read_text())["cert"]
    assert new_cert != old_cert  # the CLI that ran it follows the new certificate
    for node in ("node01", "node02"):
        assert ssl.get_server_certificate((sim.address(node), 5080)).strip() == \
            new_cert.strip()
        assert json.loads((sim.base / node / "client.json").read_text())["cert"] == new_cert
    sim.wait_verify_ok()  # node to node calls pin the new certificate too
    p = subprocess.run([str(BIN / "gnt-cluster"), "info"], capture_output=True, text=True,
                       timeout=60, env={**sim.env, "HAVEN_CLIENT_CONFIG": str(stale)})
    assert p.returncode != 0 and "renew-crypto" in p.stderr and "Traceback" not in p.stderr


def _copy_tls(node_dir: Path, dest: Path) -> TlsFiles:
    """A copy of a node's etcd certificate and key as they are now (a backup)."""
    dest.mkdir()
    files = TlsFiles(str(dest / "ca.pem"), str(dest / "etcd.pem"), str(dest / "etcd.key"))
    for name, path in zip(("ca.pem", "etcd.pem", "etcd.key"), files, strict=True):
        Path(path).write_text((node_dir / name).read_text())
    return files


def _reads(url: str, tls: TlsFiles) -> None:
    """``tls`` opens etcd at ``url``: a read gets through."""
    resp = _post(url, "/v3/kv/range", {"key": _b64("cluster")}, client_context(tls))
    assert resp.status_code == 200, resp.text


def _served(address: str, tls: TlsFiles) -> str:
    """The fingerprint of the certificate etcd serves at ``address``."""
    with socket.create_connection((address, 2379), timeout=5) as raw, \
            client_context(tls).wrap_socket(raw) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return "sha256:" + hashlib.sha256(der).hexdigest()

"""The CLI's HTTP client: the standard library's ``http.client``, so a command starts
fast (httpx alone takes longer to import than most commands take to run).

It reaches the cluster through any live node's API, master first, rotating on
connection errors, with the cluster certificate pinned and the admin user from the
client config.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any

from haven import clientconf
from haven.errors import ApiUnavailable, HavenError, NotClusterError, TemporaryError, from_json

CONNECT_TIMEOUT = 1.5
UNAVAILABLE_PATIENCE = 60.0  # seconds a job is followed through an outage


class Client:
    def __init__(self, endpoints: list[str], cert_pem: str | None, user: str | None,
                 password: str | None, config_path: Path | None = None) -> None:
        self.endpoints = list(endpoints)
        self.config_path = config_path
        self._cert = cert_pem
        self.ctx = _context(cert_pem)
        self._conns: dict[str, http.client.HTTPSConnection] = {}
        self.auth = None
        if user and password is not None:
            self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    @classmethod
    def from_config(cls) -> Client:
        path = clientconf.config_path()
        conf = clientconf.load(path)
        if conf is None:
            raise NotClusterError(
                f"No cluster client config at {path}: this machine is not part of a "
                f"cluster. Create one with 'gnt-cluster init' or 'haven up', or set "
                f"HAVEN_CLIENT_CONFIG.")
        return cls(list(conf.get("endpoints", [])), conf.get("cert"), conf.get("user"),
                   conf.get("password"), path)

    @classmethod
    def for_address(cls, address: str, port: int, verify: bool = True) -> Client:
        """A client for one node (e.g. the local one); the cluster identity if known."""
        conf = clientconf.load() if verify else None
        if conf is None:
            return cls([f"{address}:{port}"], None, None, None)
        return cls([f"{address}:{port}"], conf.get("cert"), conf.get("user"),
                   conf.get("password"))

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 30.0) -> Any:
        """One API call; the first endpoint that answers serves it.

        The connection is kept open for the next call (a job's submit, wait and
        result share one TLS session).
        """
        errors = []
        cert_changed = False
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.auth:
            headers["Authorization"] = self.auth
        for i, ep in enumerate(self.endpoints):
            status = -1
            for attempt in (0, 1):
                conn, reused = self._connection(ep)
                try:
                    if conn.sock is None:
                        conn.connect()  # within CONNECT_TIMEOUT: a dead node is skipped
                    assert conn.sock is not None
                    conn.sock.settimeout(timeout)
                    conn.request(method, path, payload, headers)
                    resp = conn.getresponse()
                    status, data = resp.status, resp.read()
                    break
                except (OSError, http.client.HTTPException) as exc:
                    self._drop(ep)
                    if isinstance(exc, ssl.SSLCertVerificationError):
                        if not attempt and self._follow_new_certificate():
                            continue
                        cert_changed = True
                    # A kept-alive connection the server has closed fails at once:
                    # retry once on a new one before trying the next node.
                    if attempt or not reused:
                        errors.append(f"{ep}: {exc or type(exc).__name__}")
                        break
            if status < 0:
                continue
            if status == 502 and i + 1 < len(self.endpoints) and _node_not_ready(data):
                # This node's daemon runs but cannot serve yet (starting, or cut off from
                # etcd): nothing was done there, so another node may answer.
                errors.append(f"{ep}: not ready")
                continue
            if i:  # remember the endpoint that answered for the next call
                self.endpoints.insert(0, self.endpoints.pop(i))
            return self._decode(status, data, ep)
        if cert_changed:
            raise ApiUnavailable(
                "The cluster's nodes present a certificate this client does not pin ("
                + "; ".join(errors) + "); if it was renewed (gnt-cluster renew-crypto), "
                "copy the client config from a node (<data dir>/client.json).")
        raise ApiUnavailable(
            "No node of the cluster answered (" + "; ".join(errors) + "). Check that "
            "haven-noded runs on the nodes ('haven status' for a local cluster).")

    def _follow_new_certificate(self) -> bool:
        """The node presented a certificate that is not the pinned one: if this
        client's config file now pins another (a node rewrites its own after
        ``renew-crypto --new-cluster-certificate``), use that.  True if it changed."""
        if self.config_path is None:
            return False
        conf = clientconf.load(self.config_path)
        cert = conf.get("cert") if conf else None
        if not cert or cert == self._cert:
            return False
        self.close()
        self._cert = cert
        self.ctx = _context(cert)
        return True

    def _connection(self, ep: str) -> tuple[http.client.HTTPSConnection, bool]:
        conn = self._conns.get(ep)
        if conn is not None:
            return conn, True
        host, _, port = ep.rpartition(":")
        conn = http.client.HTTPSConnection(host, int(port), timeout=CONNECT_TIMEOUT,
                                           context=self.ctx)
        self._conns[ep] = conn
        return conn, False

    def _drop(self, ep: str) -> None:
        conn = self._conns.pop(ep, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        for ep in list(self._conns):
            self._drop(ep)

    def _decode(self, status: int, data: bytes, ep: str) -> Any:
        try:
            decoded = json.loads(data) if data else None
        except ValueError as exc:
            raise HavenError(f"Node {ep} sent an invalid answer.") from exc
        if status >= 400:
            if isinstance(decoded, dict):
                if status == 503 and decoded.get("kind") not in ("NotClusterError",):
                    raise TemporaryError(str(decoded.get("message")))
                err = from_json(decoded)
                if err.message.startswith("Node ") and "not part of a cluster" in \
                        err.message and status == 500:
                    raise NotClusterError(err.message)
                raise err
            raise HavenError(f"Node {ep} answered HTTP {status}.")
        return decoded

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        return self.request("POST", path, body, timeout)

    def put(self, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        return self.request("PUT", path, body, timeout)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # -- jobs ------------------------------------------------------------------------
    def submit(self, ops: list[dict[str, Any]]) -> int:
        return int(self.post("/haven/jobs", {"opcodes": ops}))

    def wait_job(self, job_id: int, feedback: Any = None) -> dict[str, Any]:
        """Follow a job to its end, passing each new log entry to ``feedback``."""
        serial = 0
        prev = None
        unavailable_since: float | None = None
        while True:
            try:
                res = self.put(f"/2/jobs/{job_id}/wait", {
                    "fields": ["status"], "previous_job_info": prev,
                    "previous_log_serial": serial}, timeout=40)
            except (TemporaryError, ApiUnavailable):
                # etcd electing a leader or the master failing over: the job is safe
                # in the store, so keep following it for a while.
                now = time.monotonic()
                unavailable_since = unavailable_since or now
                if now - unavailable_since > UNAVAILABLE_PATIENCE:
                    raise
                time.sleep(0.5)
                continue
            unavailable_since = None
            if res is not None:
                for entry in res.get("log_entries", []):
                    serial = max(serial, int(entry[0]))
                    if feedback is not None:
                        feedback(entry)
                prev = res["job_info"]
                if prev[0] in ("success", "error", "canceled"):
                    return dict(self.get(f"/2/jobs/{job_id}"))

    def refresh_config(self) -> None:
        """Rewrite the client config from the cluster (after membership changes)."""
        if self.config_path is None:
            return
        try:
            conf = self.get("/haven/client-config")
        except HavenError:
            return
        if isinstance(conf, dict) and conf.get("endpoints"):
            clientconf.save(conf, self.config_path)


def _context(cert_pem: str | None) -> ssl.SSLContext:
    if cert_pem:
        ctx = ssl.create_default_context(cadata=cert_pem)
        # The pinned self-signed cluster certificate is the identity; nodes are
        # addressed by IP, so there is no host name to check.
        ctx.check_hostname = False
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def local_daemon() -> tuple[str, int] | None:
    """Where this machine's node daemon listens (``$HAVEN_DATA_DIR/daemon.json``)."""
    data_dir = Path(os.environ.get("HAVEN_DATA_DIR", "/var/lib/haven"))
    try:
        info = json.loads((data_dir / "daemon.json").read_text())
        return str(info["address"]), int(info["port"])
    except (OSError, ValueError, KeyError):
        return None




def _node_not_ready(data: bytes) -> bool:
    try:
        body = json.loads(data)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("kind") == "NodeSetupError" and \
        "not part of a cluster" in str(body.get("message", ""))

"""The CLI's HTTP client: standard library only, so a command starts fast.

It reaches the cluster through any live node's API, master first, rotating on
connection errors, with the cluster certificate pinned and the admin user from the
client config.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
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
        if cert_pem:
            self.ctx = ssl.create_default_context(cadata=cert_pem)
            # The pinned self-signed cluster certificate is the identity; nodes are
            # addressed by IP, so there is no host name to check.
            self.ctx.check_hostname = False
        else:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
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
        """One API call; the first endpoint that answers serves it."""
        errors = []
        for i, ep in enumerate(self.endpoints):
            host, _, port = ep.rpartition(":")
            conn = http.client.HTTPSConnection(host, int(port), timeout=CONNECT_TIMEOUT,
                                               context=self.ctx)
            try:
                conn.connect()
                assert conn.sock is not None
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.sock.settimeout(timeout)
                headers = {"Content-Type": "application/json"}
                if self.auth:
                    headers["Authorization"] = self.auth
                conn.request(method, path, json.dumps(body) if body is not None else None,
                             headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{ep}: {exc}")
                conn.close()
                continue
            conn.close()
            if i:  # remember the endpoint that answered for the next call
                self.endpoints.insert(0, self.endpoints.pop(i))
            return self._decode(resp.status, data, ep)
        raise ApiUnavailable(
            "No node of the cluster answered (" + "; ".join(errors) + "). Check that "
            "haven-noded runs on the nodes ('haven status' for a local cluster).")

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


def local_daemon() -> tuple[str, int] | None:
    """Where this machine's node daemon listens (``$HAVEN_DATA_DIR/daemon.json``)."""
    data_dir = Path(os.environ.get("HAVEN_DATA_DIR", "/var/lib/haven"))
    try:
        info = json.loads((data_dir / "daemon.json").read_text())
        return str(info["address"]), int(info["port"])
    except (OSError, ValueError, KeyError):
        return None



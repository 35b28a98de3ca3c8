"""Calls from one node daemon to another over the cluster's HTTPS API.

Nodes already in the cluster are reached with the cluster certificate pinned; a node
being added still serves its provisional certificate, which the master pins by the
fingerprint carried in the node's join token (``verify="sha256:<hex>"``), as SSH pins
a host key on Ganeti's first contact.

A node daemon that has just (re)started serves its API before it has reached etcd: it
knows neither the cluster's users (so it cannot check the caller's credentials) nor its
instances.  It answers "not part of a cluster" (:func:`not_ready`), nothing done, and
:meth:`HttpsNodeRpc.call` asks again for up to :data:`NOT_READY_PATIENCE` seconds (1.5 s
measured for a node that was killed and started again), so that no job fails on that
window and no user sees an internal refusal.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import http.client
import json
import ssl
import time
from typing import Any

from haven.errors import HavenError, NodeSetupError, OpPrereqError, from_json

NOT_READY_PATIENCE = 30.0  # seconds a starting node daemon is waited for
NOT_READY_RETRY = 0.25


class NodeNotReady(NodeSetupError):
    """Internal: the node daemon answered that it is not part of a cluster yet."""


def not_ready(status: int, body: Any) -> bool:
    """True if an answer says the daemon cannot serve yet and did nothing: its API
    gate (``api.http.NOT_READY_MESSAGE``: "not part of a cluster yet") or a handler
    that found no cluster connection (``NodeDaemon.store``: "cannot reach etcd right
    now"), both ``NodeSetupError``s on HTTP 502.  A node that is for good not part of a
    cluster says neither."""
    if status != 502 or not isinstance(body, dict) or body.get("kind") != "NodeSetupError":
        return False
    message = str(body.get("message", ""))
    return "not part of a cluster yet" in message or "cannot reach etcd right now" in message


class NodeRpc(abc.ABC):
    """What the master asks of other nodes' daemons."""

    @abc.abstractmethod
    def call(self, address: str, port: int, method: str, path: str,
             body: Any = None, timeout: float = 10.0, verify: bool | str = True) -> Any:
        """One request; returns the decoded JSON answer or raises a HavenError.
        ``verify``: True pins the cluster certificate; a ``sha256:<hex>`` string pins
        that certificate fingerprint instead (a node being added)."""


class HttpsNodeRpc(NodeRpc):
    def __init__(self, cert_file: str | None, auth_header: str | None = None) -> None:
        self._verified: ssl.SSLContext | None = None
        if cert_file:
            self._verified = ssl.create_default_context(cafile=cert_file)
            # Nodes are addressed by IP; the pinned self-signed cluster certificate
            # is the identity, not a host name.
            self._verified.check_hostname = False
        self._unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._unverified.check_hostname = False
        self._unverified.verify_mode = ssl.CERT_NONE
        self.auth_header = auth_header
        self.not_ready_patience = NOT_READY_PATIENCE

    def call(self, address: str, port: int, method: str, path: str,
             body: Any = None, timeout: float = 10.0, verify: bool | str = True) -> Any:
        deadline = time.monotonic() + self.not_ready_patience
        while True:
            try:
                return self._call_once(address, port, method, path, body, timeout, verify)
            except NodeNotReady as exc:
                if time.monotonic() >= deadline:
                    raise NodeSetupError(
                        f"Node daemon at {address}:{port} is still starting after "
                        f"{self.not_ready_patience:g} s ({exc.message}); check that it "
                        "reaches etcd (its logs/noded.log).") from exc
                time.sleep(NOT_READY_RETRY)

    def _call_once(self, address: str, port: int, method: str, path: str, body: Any,
                   timeout: float, verify: bool | str) -> Any:
        pin = verify if isinstance(verify, str) else ""
        ctx = self._verified if verify is True and self._verified else self._unverified
        conn = http.client.HTTPSConnection(address, port, timeout=timeout, context=ctx)
        headers = {"Content-Type": "application/json"}
        # A standby node (pinned) is never shown the cluster daemons' credentials.
        if self.auth_header and not pin:
            headers["Authorization"] = self.auth_header
        try:
            if pin:
                conn.connect()
                _check_pin(conn, address, port, pin)
            conn.request(method, path, json.dumps(body) if body is not None else None,
                         headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise NodeSetupError(
                f"Node daemon at {address}:{port} does not answer ({exc}); check that "
                f"haven-noded runs there.") from exc
        finally:
            conn.close()
        try:
            decoded = json.loads(data) if data else None
        except ValueError as exc:
            raise NodeSetupError(f"Node daemon at {address}:{port} sent invalid JSON.") \
                from exc
        if resp.status >= 400:
            if isinstance(decoded, dict) and not_ready(resp.status, decoded):
                raise NodeNotReady(str(decoded.get("message")))
            if isinstance(decoded, dict):
                raise from_json(decoded)
            raise HavenError(f"Node daemon at {address}:{port} answered {resp.status}.")
        return decoded

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The context that pins the cluster certificate (None before joining)."""
        return self._verified

    def open_stream(self, address: str, port: int, path: str,
                    timeout: float = 30.0) -> http.client.HTTPResponse:
        """GET ``path`` as a byte stream (a disk copy): the response, to ``read()``
        from and close.  Raises OSError if the node refuses or cannot be reached."""
        if self._verified is None:
            raise OSError("the cluster certificate is not known on this node")
        conn = http.client.HTTPSConnection(address, port, timeout=timeout,
                                           context=self._verified)
        try:
            conn.request("GET", path, headers={"Authorization": self.auth_header or ""})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise OSError(f"node {address} did not answer {path}: {exc}") from exc
        if resp.status != 200:
            body = resp.read()
            conn.close()
            try:
                message = str(json.loads(body).get("message"))
            except (ValueError, AttributeError):
                message = f"HTTP {resp.status}"
            raise OSError(f"node {address} refused {path}: {message}")
        return resp


def _check_pin(conn: http.client.HTTPSConnection, address: str, port: int, pin: str) -> None:
    sock = conn.sock
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    seen = "sha256:" + hashlib.sha256(der or b"").hexdigest()
    if not hmac.compare_digest(seen, pin):
        conn.close()
        raise OpPrereqError(
            f"The daemon at {address}:{port} presents certificate {seen[:19]}..., not the "
            f"one in the join token ({pin[:19]}...); check the address, or print the "
            f"node's current token with 'haven join-token' there.")

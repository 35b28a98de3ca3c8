"""A small threaded HTTPS server with a router, Basic auth and JSON bodies.

The standard library's ``ThreadingHTTPServer`` is enough for a control plane and keeps
the daemon free of a web framework.  TLS is applied per accepted connection with the
*current* context, so a node that joins a cluster switches from its own provisional
certificate to the cluster's without restarting its listener.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from haven.errors import ECODE_ENVIRON, HavenError

log = logging.getLogger(__name__)


class HttpError(HavenError):
    """An error raised by a handler with an explicit HTTP status."""

    def __init__(self, status: int, message: str, ecode: str = "wrong_input") -> None:
        super().__init__(message, ecode)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    user: str | None
    can_write: bool
    params: dict[str, str] = field(default_factory=dict)
    peer: str = ""

    def qbool(self, name: str) -> bool:
        return self.query.get(name, ["0"])[-1] in ("1", "true", "yes")

    def obj(self) -> dict[str, Any]:
        """The JSON body as an object (``{}`` when there is none)."""
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise HttpError(400, "The request body must be a JSON object.")
        return self.body

    def qstr(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass
class Response:
    body: Any
    status: int = 200
    content_type: str = "application/json"


Handler = Callable[[Request], Any]


class Stream:
    """A response that turns the connection into a raw byte stream (the console):
    after the headers, ``pump(connection, rfile)`` owns the socket until it returns."""

    def __init__(self, pump: Callable[[socket.socket, Any], None]) -> None:
        self.pump = pump


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    write: bool  # needs an authenticated user with write access


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, path: str, handler: Handler, write: bool = False) -> None:
        """``path`` may hold ``{name}`` segments, matched as ``[^/]+``."""
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"
        self.routes.append(Route(method, re.compile(regex), handler, write))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """The route, its parameters, and whether the path exists for another method."""
        other = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method:
                return route, m.groupdict(), False
            other = True
        return None, {}, other


def hash_password(password: str, salt: str) -> str:
    return hashlib.sha256((salt + ":" + password).encode()).hexdigest()


# What a node daemon that cannot check credentials yet answers a request that needs
# them.  Its kind and "not part of a cluster" are what callers recognise as "nothing was
# done here, ask again or ask another node": the CLI moves to the next node
# (cli/client.py), node-to-node calls wait and retry (noderpc.py).
NOT_READY_STATUS = 502
NOT_READY_MESSAGE = ("This node daemon is starting: it is not part of a cluster yet (it "
                     "has not reached etcd), so it cannot check credentials; retry in a "
                     "moment.")


class Authenticator:
    """RAPI users: name -> {"password": hash, "salt": ..., "write": bool}.

    ``loaded`` turns true once ``users`` has been set (by the daemon, from the cluster's
    configuration in etcd).  Before that, a daemon that just (re)started serves its API
    without knowing any user, not even the node daemons' own: a refusal then would be
    wrong (the caller may well be allowed), so :meth:`ApiServer.dispatch` answers "not
    ready" instead of "needs a user with write access"."""

    def __init__(self) -> None:
        self._users: dict[str, dict[str, Any]] = {}
        self.loaded = False

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        return self._users

    @users.setter
    def users(self, users: dict[str, dict[str, Any]]) -> None:
        self._users = users
        self.loaded = True

    def check(self, header: str | None) -> tuple[str | None, bool]:
        if not header or not header.startswith("Basic "):
            return None, False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, False
        entry = self.users.get(user)
        if entry is None:
            return None, False
        expected = str(entry.get("password", ""))
        if not hmac.compare_digest(expected, hash_password(password, str(entry.get("salt")))):
            return None, False
        return user, bool(entry.get("write", False))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], api: ApiServer) -> None:
        self.api = api
        super().__init__(addr, _RequestHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # Responses are written as headers then body: without NODELAY, Nagle's
        # algorithm and the client's delayed ACK add 40 ms to every call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self.api.ssl_context
        if ctx is None:
            return sock, addr
        sock.settimeout(30)
        # The handshake happens on the first read, in the handler's own thread, so a
        # slow client never stalls the accept loop.
        return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def _handle(self, method: str) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(Response({"code": 400, "message": "The request body is not valid JSON.",
                                 "explain": "wrong_input"}, 400))
            return
        user, can_write = api.auth.check(self.headers.get("Authorization"))
        req = Request(method, url.path, parse_qs(url.query), body, user, can_write,
                      peer=self.client_address[0])
        self._send(api.dispatch(req))

    def _send(self, resp: Response) -> None:
        if isinstance(resp.body, Stream):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            # The other side going away simply ends the stream.
            with contextlib.suppress(OSError):
                resp.body.pump(self.connection, self.rfile)
            return
        data = resp.body if isinstance(resp.body, bytes) else \
            json.dumps(resp.body).encode()
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(data)))
        if resp.status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="Haven Remote API"')
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class ApiServer:
    """Serves a :class:`Router` on ``address:port`` in a background thread."""

    def __init__(self, address: str, port: int, router: Router) -> None:
        self.router = router
        self.auth = Authenticator()
        self.ssl_context: ssl.SSLContext | None = None
        self._server = _Server((address, port), self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="api", daemon=True)

    def use_certificate(self, cert_file: str, key_file: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self.ssl_context = ctx

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def dispatch(self, req: Request) -> Response:
        route, params, other = self.router.match(req.method, req.path)
        if route is None:
            if other:
                return _error(405, f"Method {req.method} is not allowed on {req.path}.")
            return _error(404, f"There is no resource {req.path}.")
        if route.write and not req.can_write:
            if not self.auth.loaded:
                return _error(NOT_READY_STATUS, NOT_READY_MESSAGE, ECODE_ENVIRON,
                              "NodeSetupError")
            if req.user is None:
                return _error(401, "This request needs a user with write access "
                                   "(HTTP Basic authentication).")
            return _error(403, f"User {req.user!r} has no write access.")
        req.params = params
        try:
            result = route.handler(req)
        except HttpError as exc:
            return Response(exc.to_json() | {"code": exc.status}, exc.status)
        except HavenError as exc:
            return Response(exc.to_json(), exc.http_status)
        except Exception as exc:  # the boundary: no traceback reaches a client
            log.exception("internal error serving %s %s", req.method, req.path)
            return _error(500, f"Internal error: {type(exc).__name__}: {exc}", "internal_error")
        if isinstance(result, Response):
            return result
        if isinstance(result, Stream):
            return Response(result)
        return Response(result)


def _error(status: int, message: str, explain: str = "wrong_input",
           kind: str = "HavenError") -> Response:
    return Response({"code": status, "message": message, "explain": explain,
                     "kind": kind}, status)

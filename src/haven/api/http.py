"""The node API's HTTP layer: Starlette on uvicorn, with Haven's router, RAPI's error
shapes, Basic or Bearer auth, and TLS that follows the node into its cluster.

Routes are plain synchronous functions (:class:`Router`): they read etcd and call other
nodes, so each request runs in a worker thread (a bounded pool, sized for RAPI's
long-polling job waits) while uvicorn's event loop keeps accepting.  Streams (a disk
copy) are sent as they are produced; the serial console is a WebSocket (api/console.py)
and the dashboard adds its own Starlette routes (``extra_routes``).

TLS: uvicorn is given one ``SSLContext`` for the life of the daemon.  A node that joins
a cluster switches from its own provisional certificate to the cluster's by loading the
new chain into that same context: every handshake after that presents it, without
restarting the listener (connections already open keep theirs).
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.responses import StreamingResponse
from starlette.routing import BaseRoute
from starlette.routing import Route as StarletteRoute

from haven.api.auth import Authenticator, hash_password
from haven.api.routing import (
    NOT_READY_MESSAGE,
    NOT_READY_STATUS,
    Handler,
    HttpError,
    Request,
    Response,
    Route,
    Router,
    Stream,
)
from haven.errors import ECODE_ENVIRON, HavenError

log = logging.getLogger(__name__)
# uvicorn's own start and stop lines repeat the daemon's: keep its warnings only.
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

# Requests served at once.  RAPI clients long-poll job waits (up to 10 s each), and a
# blocked pool would stall node-to-node calls behind them.
WORKER_THREADS = 128
METHODS = ["GET", "POST", "PUT", "DELETE"]


class _Config(uvicorn.Config):
    """uvicorn's config, serving TLS with our own (reloadable) context."""

    def __init__(self, app: Any, context: ssl.SSLContext | None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._context = context

    @property
    def is_ssl(self) -> bool:
        # False while uvicorn's own load() runs: it would build a context from files.
        return self._context is not None and not getattr(self, "_loading", False)

    def load(self) -> None:
        self._loading = True
        try:
            super().load()
        finally:
            self._loading = False
        self.ssl = self._context


class ApiServer:
    """Serves a :class:`Router` (and ``extra_routes``) on ``address:port`` over HTTPS,
    from a background thread running uvicorn."""

    def __init__(self, address: str, port: int, router: Router,
                 extra_routes: Sequence[BaseRoute] = ()) -> None:
        self.router = router
        self.auth = Authenticator()
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._has_cert = False
        self._limiter: anyio.CapacityLimiter | None = None
        # Bound here, so that a port in use fails the daemon's start with its OSError.
        # IPPROTO_TCP spelled out: asyncio turns Nagle off only on sockets whose proto
        # says TCP, and accepted sockets copy the listener's.  With proto 0, every small
        # answer (headers and body in two TLS records) waited ~44 ms for the client's
        # delayed ACK.  TCP_NODELAY on the listener is inherited by Linux too.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.bind((address, port))
        except OSError:
            self._sock.close()
            raise
        self._sock.listen(128)
        # Listening from here: early callers wait in the backlog until uvicorn runs.
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self.app = Starlette(
            routes=[*extra_routes,
                    StarletteRoute("/{path:path}", self._endpoint, methods=METHODS)],
            # The dashboard moves to another node when its own goes away: it calls
            # that node from the page's origin.  Credentials are never ambient (a
            # header, not a cookie), so any origin may ask.
            middleware=[Middleware(CORSMiddleware, allow_origins=["*"],
                                   allow_methods=METHODS,
                                   allow_headers=["Authorization", "Content-Type"])])
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def use_certificate(self, cert_file: str, key_file: str) -> None:
        # Loading into the live context: handshakes from now on present the new one.
        self.ssl_context.load_cert_chain(cert_file, key_file)
        self._has_cert = True

    def start(self) -> None:
        # Without a certificate (unit tests only: a daemon always has one) plain HTTP.
        context = self.ssl_context if self._has_cert else None
        config = _Config(self.app, context, log_config=None, access_log=False,
                         lifespan="off", http="h11", ws="websockets-sansio",
                         timeout_graceful_shutdown=1, server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]},
                                        name="api", daemon=True)
        self._thread.start()
        # A server that cannot start must fail the daemon, not leave it deaf.
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start; see the log above")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(2)
        self._sock.close()

    async def _endpoint(self, request: StarletteRequest) -> StarletteResponse:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return _starlette(_error(400, "The request body is not valid JSON."))
        user, can_write = self.auth.check(request.headers.get("authorization"))
        req = Request(request.method, request.url.path, parse_qs(request.url.query), body,
                      user, can_write, peer=request.client.host if request.client else "")
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(WORKER_THREADS)
        log.debug("%s %s from %s", req.method, req.path, req.peer)
        resp = await anyio.to_thread.run_sync(functools.partial(self.dispatch, req),
                                              limiter=self._limiter)
        return _starlette(resp)

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
        return Response(result)


def _starlette(resp: Response) -> StarletteResponse:
    if isinstance(resp.body, Stream):
        return StreamingResponse(iter(resp.body.chunks), media_type="application/octet-stream")
    data = resp.body if isinstance(resp.body, bytes) else json.dumps(resp.body).encode()
    headers = {"WWW-Authenticate": 'Basic realm="Haven Remote API"'} \
        if resp.status == 401 else None
    return StarletteResponse(data, resp.status, headers, media_type=resp.content_type)


def _error(status: int, message: str, explain: str = "wrong_input",
           kind: str = "HavenError") -> Response:
    return Response({"code": status, "message": message, "explain": explain,
                     "kind": kind}, status)


__all__ = ["NOT_READY_MESSAGE", "NOT_READY_STATUS", "ApiServer", "Authenticator", "Handler",
           "HttpError", "Request", "Response", "Route", "Router", "Stream", "hash_password"]

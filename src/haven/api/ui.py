"""The web dashboard's server side: the page itself at ``/ui``, a login that trades a
RAPI user's password for a token (``/haven/session``), and ``/haven/live``, a
Server-Sent Events stream that tells the page which parts of the cluster changed.

The page reads everything else through RAPI's own read paths (``/2/nodes?bulk=1``,
``/2/instances?bulk=1``, ``/2/jobs/<id>``, ``/haven/events?after=``, ...) and acts
through its write paths with the token as ``Authorization: Bearer``: the dashboard has
no private API to keep in step with RAPI, and any node can serve it, which is how the
page carries on when the node it came from dies (it reconnects to another node).

``/haven/live`` sends, as SSE events:

- ``hello``: ``{"node", "joined", "seq"}`` once, when the stream opens;
- ``change``: ``{"seq", "changed": [top-level store prefixes], "jobs": [ids]}`` at most
  every :data:`COALESCE` seconds after a store change (``"*"`` in ``changed`` means
  "anything may have changed": re-read everything);
- ``ping``: ``{"seq"}`` every :data:`PING` seconds without a change, so that the page
  notices a node that stopped answering;
- ``bye``: ``{"reason"}`` just before the stream ends: ``renew`` after
  :data:`MAX_STREAM` seconds (the page opens a new one on the same node), ``leaving``
  when the node leaves its cluster or stops (the page moves to another node).  No open
  dashboard ever holds a daemon's shutdown.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

if TYPE_CHECKING:
    from haven.api.node import ChangeHub, NodeContext

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("ui_static")
TOKEN_TTL = 12 * 3600.0
PING = 5.0  # seconds between pings on a quiet stream (the page gives up after 3 missed)
COALESCE = 0.05  # a burst of store writes (a job step) becomes one change event
MAX_STREAM = 300.0  # the page reconnects; a stream never outlives this
_JOB_IDS_KEPT = 512


class TokenAuth(Protocol):
    """What the dashboard needs of the API's authenticator (``api.http.Authenticator``)."""

    loaded: bool

    def check(self, header: str | None) -> tuple[str | None, bool]: ...

    def issue_token(self, user: str, write: bool, ttl: float = TOKEN_TTL) -> str: ...

    def check_token(self, token: str) -> tuple[str | None, bool]: ...


class ChangeFeed:
    """Counts the store's changes by top-level prefix for every live stream of a daemon.

    It subscribes once to each change hub the daemon has had (a node that rejoins gets a
    new hub); :meth:`wait` blocks a worker thread until the count moves past ``after``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seq = 0
        self._last: dict[str, int] = {}
        self._jobs: deque[tuple[int, int]] = deque(maxlen=_JOB_IDS_KEPT)
        self._hubs: weakref.WeakSet[ChangeHub] = weakref.WeakSet()

    def attach(self, hub: ChangeHub) -> None:
        """Follow ``hub`` (a joined node's change hub) if not already following it."""
        with self._cond:
            if hub in self._hubs:
                return
            self._hubs.add(hub)
        hub.subscribe("", self.on_key)

    def on_key(self, key: str) -> None:
        """A store key changed (the hub calls this in its watch thread); ``""`` after a
        relist means anything may have changed."""
        category = key.split("/", 1)[0] if key else "*"
        with self._cond:
            self.seq += 1
            self._last[category] = self.seq
            if category == "jobs":
                tail = key.split("/", 1)[1] if "/" in key else ""
                if tail.isdigit():
                    self._jobs.append((self.seq, int(tail)))
            self._cond.notify_all()

    def wait(self, after: int, timeout: float) -> int:
        """The current count, once it differs from ``after`` or ``timeout`` has passed."""
        with self._cond:
            if self.seq == after:
                self._cond.wait(timeout)
            return self.seq

    def since(self, after: int) -> dict[str, Any]:
        """What changed after count ``after``: prefixes and job ids."""
        with self._cond:
            changed = sorted(c for c, s in self._last.items() if s > after)
            jobs = sorted({j for s, j in self._jobs if s > after})
            if len(self._jobs) == self._jobs.maxlen and self._jobs[0][0] > after:
                changed.append("*")  # some job ids fell out of the ring: re-read all
            return {"seq": self.seq, "changed": changed, "jobs": jobs}


def routes(d: NodeContext) -> list[BaseRoute]:
    """The dashboard's routes for node daemon ``d``."""
    feed = ChangeFeed()
    # Waiting streams hold worker threads of their own, never the API's.
    limiter = anyio.CapacityLimiter(64)

    async def live(request: Request) -> Response:
        return StreamingResponse(_stream(d, feed, limiter), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def session(request: Request) -> Response:
        return await _session(d, request)

    async def to_page(_request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    return [
        Route("/ui", to_page, methods=["GET"]),
        Mount("/ui", app=StaticFiles(directory=STATIC, html=True), name="ui"),
        Route("/haven/live", live, methods=["GET"]),
        Route("/haven/session", session, methods=["GET", "POST"]),
    ]


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _stream(d: NodeContext, feed: ChangeFeed,
                  limiter: anyio.CapacityLimiter) -> AsyncIterator[str]:
    joined = d.joined
    if joined is not None:
        feed.attach(joined.hub)
    last = feed.seq
    yield _sse("hello", {"node": d.name, "joined": joined is not None, "seq": last})
    if joined is None:
        return  # not part of a cluster (yet, or any more): the page asks another node
    ends = time.monotonic() + MAX_STREAM
    sent = time.monotonic()
    while time.monotonic() < ends:
        if d.joined is not joined:
            # Left the cluster, or stopping (the daemon's shutdown never waits for us).
            yield _sse("bye", {"reason": "leaving"})
            return
        # Short waits, so that a stopping daemon is noticed within a second.
        seq = await anyio.to_thread.run_sync(feed.wait, last, min(PING, 1.0),
                                             limiter=limiter)
        if seq == last:
            if time.monotonic() - sent >= PING:
                sent = time.monotonic()
                yield _sse("ping", {"seq": seq})
            continue
        sent = time.monotonic()
        await anyio.sleep(COALESCE)
        changes = feed.since(last)
        last = changes["seq"]
        yield _sse("change", changes)
    yield _sse("bye", {"reason": "renew"})  # a fresh stream, same node


async def _session(d: NodeContext, request: Request) -> Response:
    """``POST``: ``{"user", "password"}`` (or Basic auth) -> a token for the page.
    ``GET`` with ``Authorization: Bearer`` -> who the token belongs to."""
    auth = cast(TokenAuth | None, d.api.auth if d.api is not None else None)
    if auth is None or not auth.loaded:
        return _error(502, "This node daemon is starting and cannot check credentials "
                           "yet; retry in a moment or use another node.", "environment_error")
    header = request.headers.get("authorization") or ""
    if request.method == "GET":
        user, write = auth.check_token(header[7:]) if header.startswith("Bearer ") \
            else (None, False)
        if user is None:
            return _error(401, "The session token is missing, wrong or expired; log in "
                               "again.")
        return JSONResponse({"user": user, "write": write, "node": d.name})
    raw = await request.body()
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("user"), str) \
                or not isinstance(body.get("password", ""), str):
            return _error(400, 'The body must be {"user": NAME, "password": PASSWORD}.')
        pair = f"{body['user']}:{body.get('password', '')}".encode()
        header = "Basic " + base64.b64encode(pair).decode()
    user, write = auth.check(header)
    if user is None:
        return _error(401, "Wrong user name or password (the users are those of the "
                           "cluster's RAPI users file).")
    try:
        token = auth.issue_token(user, write, TOKEN_TTL)
    except RuntimeError:  # no cluster secret: the node has left its cluster
        return _error(502, f"Node {d.name} is not part of a cluster right now; log in "
                           "on another node.", "environment_error")
    log.info("dashboard session opened for %s (%s)", user, "write" if write else "read-only")
    return JSONResponse({"token": token, "user": user, "write": write, "node": d.name,
                         "expires": time.time() + TOKEN_TTL})


def _error(status: int, message: str, explain: str = "wrong_input") -> Response:
    return JSONResponse({"code": status, "message": message, "explain": explain}, status)

"""The serial console as a WebSocket: from the VM's unix socket on its primary node,
through any node's API, to the CLI or the dashboard's terminal.

``/haven/instances/{name}/console/ws``: binary frames both ways carry the console's
bytes.  Several clients may watch one console at once (``console_hub``): each sees
what the guest prints, and what any of them types reaches the guest.  A text frame
carries a JSON error in RAPI's shape (``code``, ``message``, ``explain``) just before
the server closes.  A node that is not the instance's primary
relays to the primary's own endpoint (``?local=1``), authenticated as a node.

Callers authenticate with an ``Authorization`` header (Basic, or Bearer with a session
token) or, from a browser, which cannot set headers on a WebSocket, ``?token=``.  Write
access is required: a console is root on the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from haven.api import console_hub
from haven.errors import HavenError, OpPrereqError

if TYPE_CHECKING:
    from haven.api.node import NodeContext

log = logging.getLogger(__name__)

PATH = "/haven/instances/{name}/console/ws"


def routes(d: NodeContext) -> list[BaseRoute]:
    """The console's WebSocket route, served by ``d``."""

    async def endpoint(ws: WebSocket) -> None:
        await serve(d, ws)

    return [WebSocketRoute(PATH, endpoint)]


def _who(d: NodeContext, ws: WebSocket) -> tuple[str | None, bool]:
    assert d.api is not None
    token = ws.query_params.get("token")
    if token:
        return d.api.auth.check_token(token)
    return d.api.auth.check(ws.headers.get("authorization"))


async def _refuse(ws: WebSocket, status: int, message: str, explain: str = "wrong_input",
                  kind: str = "HavenError") -> None:
    await ws.send_text(json.dumps({"code": status, "message": message, "explain": explain,
                                   "kind": kind}))
    await ws.close(code=4000 + status)


async def serve(d: NodeContext, ws: WebSocket) -> None:
    name = ws.path_params["name"]
    await ws.accept()
    user, can_write = _who(d, ws)
    if not can_write:
        assert d.api is not None
        if not d.api.auth.loaded:
            await _refuse(ws, 502, f"Node {d.name} is starting: it is not part of a cluster "
                                   f"yet; retry in a moment.", "environment_error",
                          "NodeSetupError")
        elif user is None:
            await _refuse(ws, 401, "The console needs a user with write access.")
        else:
            await _refuse(ws, 403, f"User {user!r} has no write access.")
        return
    local = ws.query_params.get("local") == "1"
    try:
        target = await run_in_threadpool(_locate, d, name, local)
    except HavenError as exc:
        await ws.send_text(json.dumps(exc.to_json()))
        await ws.close(code=4000 + exc.http_status)
        return
    log.info("console of %s opened by %s%s", name, user,
             "" if isinstance(target, str) else f" (relayed to {target[0]})")
    try:
        if isinstance(target, str):
            await _serve_local(ws, target)
        else:
            await _relay(ws, *target[1:], name)
    except HavenError as exc:
        with contextlib.suppress(RuntimeError, OSError, WebSocketException):
            await ws.send_text(json.dumps(exc.to_json()))
    except (WebSocketDisconnect, ConnectionClosed, OSError) as exc:
        log.debug("console of %s ended: %s", name, exc)
    finally:
        # The client may have gone first: nothing to close then.
        with contextlib.suppress(RuntimeError, OSError, WebSocketException,
                                 WebSocketDisconnect):
            await ws.close()


def _locate(d: NodeContext, name: str, local: bool) -> str | tuple[str, str, int, Any, str]:
    """The console socket's path here, or (node, address, port, ssl, auth) to relay to."""
    from haven.api.instances_api import one_instance
    from haven.master import state

    inst = one_instance(d, name)
    if not local and inst["status"] != "running":
        raise OpPrereqError(f"Instance {name} is not running ({inst['status']}); start it "
                            f"with gnt-instance startup {name}.")
    if local or inst["pnode"] == d.name:
        path = d.instances.console_path(name)
        if not path.exists():
            raise OpPrereqError(f"Instance {name} has no console on node {d.name}: it does "
                                f"not run here.")
        return str(path)
    node = state.node(d.store(), inst["pnode"])
    rpc = d.rpc()
    if rpc.ssl_context is None:
        raise OpPrereqError(f"Node {d.name} does not know the cluster certificate yet.")
    return node.name, node.primary_ip, node.api_port, rpc.ssl_context, rpc.auth_header or ""


async def _serve_local(ws: WebSocket, path: str) -> None:
    # Through the hub: QEMU serves one console client at a time, and a second viewer
    # (the dashboard while the CLI is attached) would otherwise wait, silent.
    viewer = await console_hub.join(path)

    async def to_guest() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            await viewer.write(msg.get("bytes") or (msg.get("text") or "").encode())

    async def from_guest() -> None:
        while (data := await viewer.get()) is not None:
            await ws.send_bytes(data)

    try:
        await _first_done(to_guest, from_guest)
    finally:
        viewer.leave()


async def _relay(ws: WebSocket, address: str, port: int, ctx: Any, auth: str,
                 name: str) -> None:
    uri = f"wss://{address}:{port}{PATH.format(name=name)}?local=1"
    try:
        upstream = await connect(uri, ssl=ctx, additional_headers={"Authorization": auth},
                                 open_timeout=10, max_size=None, compression=None)
    except (OSError, InvalidStatus, WebSocketException, TimeoutError) as exc:
        raise HavenError(f"The primary node at {address} does not serve the console of "
                         f"{name}: {exc}") from exc
    async with upstream:
        async def up() -> None:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                await upstream.send(msg.get("bytes") or (msg.get("text") or "").encode())

        async def down() -> None:
            async for data in upstream:
                if isinstance(data, str):
                    await ws.send_text(data)  # the primary's error, passed on as is
                else:
                    await ws.send_bytes(data)

        await _first_done(up, down)


async def _first_done(*parts: Callable[[], Awaitable[None]]) -> None:
    """Run both directions; when either ends (a side closed), stop the other."""
    tasks = [asyncio.ensure_future(p()) for p in parts]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
    for t in done:
        exc = t.exception()
        if exc is not None and not isinstance(
                exc, WebSocketDisconnect | ConnectionClosed | OSError):
            raise exc

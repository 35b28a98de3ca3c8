"""``gnt-instance console``: the serial console through the cluster's API.

On a terminal it is interactive (raw mode; Ctrl-] leaves, like Ganeti's consoles).
With piped input it copies stdin to the console and the console to stdout, and ends
once stdin is exhausted and the console has been quiet for a moment (a few seconds at
most, for a guest that never stops printing), so scripts can send a command and read
its output.

The WebSocket runs on one asyncio loop (``websockets.asyncio``), never on two threads:
the threaded client reads and writes one TLS connection from two threads at once, and
about one connection in twenty under load lost its opening request that way (OpenSSL
objects are not safe for concurrent use; the server's TLS 1.3 session tickets arrive
while the request is written), leaving the console silent until killed.  Only the
blocking reads of stdin run in a thread, and they touch no socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from haven.cli.client import CONNECT_TIMEOUT, Client
from haven.errors import ApiUnavailable, HavenError, TemporaryError, from_json

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

ESCAPE = b"\x1d"  # Ctrl-]
LINGER = float(os.environ.get("HAVEN_CONSOLE_LINGER", "1.0"))
MAX_LINGER = 3 * LINGER  # piped: the longest wait for the answer after the input ended
OPEN_TIMEOUT = CONNECT_TIMEOUT + 10  # TLS and the upgrade, per node
CLOSE_TIMEOUT = 2.0


async def open_console(c: Client, name: str) -> ClientConnection:
    """A WebSocket on the console of ``name``, through the first node that answers."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    errors = []
    for ep in c.endpoints:
        headers = {"Authorization": c.auth} if c.auth else {}
        try:
            return await connect(f"wss://{ep}/haven/instances/{name}/console/ws", ssl=c.ctx,
                                 additional_headers=headers, open_timeout=OPEN_TIMEOUT,
                                 close_timeout=CLOSE_TIMEOUT, max_size=None,
                                 compression=None,
                                 # Unbounded: a guest that never stops printing must
                                 # not stall the connection once we stop reading.
                                 max_queue=None)
        except (OSError, TimeoutError, InvalidStatus, WebSocketException) as exc:
            errors.append(f"{ep}: {exc or type(exc).__name__}")
    raise ApiUnavailable("No node of the cluster answered (" + "; ".join(errors) + ").")


def _output(msg: str | bytes) -> bytes:
    """A console frame's bytes; a text frame is the server's error, raised."""
    if isinstance(msg, bytes):
        return msg
    try:
        err = json.loads(msg)
    except ValueError:
        raise HavenError(f"The console sent an invalid message: {msg[:80]!r}") from None
    if isinstance(err, dict) and err.get("kind") == "NodeSetupError" and \
            "not part of a cluster" in str(err.get("message")):
        raise TemporaryError(str(err.get("message")))
    raise from_json(err)


def attach(c: Client, name: str) -> int:
    if os.environ.get("HAVEN_CONSOLE_DEBUG"):
        import faulthandler
        import signal

        # For a post-mortem of a console that hangs: SIGUSR1 prints every thread's stack.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    return asyncio.run(_attach(c, name, sys.stdin.isatty()))


async def _attach(c: Client, name: str, interactive: bool) -> int:
    ws = await open_console(c, name)
    try:
        if interactive:
            return await _interactive(ws, name)
        return await _piped(ws)
    finally:
        # A close the server never answers must not keep the user waiting.
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT + 1)


def _read_stdin(fd: int, loop: asyncio.AbstractEventLoop,
                queue: asyncio.Queue[bytes | None]) -> None:
    """Blocking reads of ``fd`` into ``queue`` (None at its end), from a thread: a
    pipe, a terminal and a regular file all work the same way."""
    try:
        while data := os.read(fd, 65536):
            loop.call_soon_threadsafe(queue.put_nowait, data)
    except OSError:
        pass
    loop.call_soon_threadsafe(queue.put_nowait, None)


def _watchdog(stdin_done: threading.Event) -> None:
    # Whatever blocks (a close handshake that never completes, a relay that never
    # answers), a script's console ends a few seconds after its input did.
    stdin_done.wait()
    time.sleep(MAX_LINGER + CLOSE_TIMEOUT + 5)
    sys.stdout.flush()
    sys.stderr.write("Warning: the console did not close in time; leaving it.\n")
    if os.environ.get("HAVEN_CONSOLE_DEBUG"):
        import faulthandler

        faulthandler.dump_traceback(sys.stderr)
    sys.stderr.flush()
    os._exit(0)


async def _piped(ws: ClientConnection) -> int:
    """Copy stdin to the console until it ends, and the console to stdout until it has
    been quiet for LINGER seconds after that (at most MAX_LINGER seconds)."""
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    stdin_done = threading.Event()
    threading.Thread(target=_read_stdin, args=(sys.stdin.fileno(), loop, queue),
                     daemon=True, name="console-in").start()
    threading.Thread(target=_watchdog, args=(stdin_done,), daemon=True,
                     name="console-watchdog").start()

    async def send() -> None:
        try:
            while (data := await queue.get()) is not None:
                await ws.send(data)
        except ConnectionClosed:
            pass
        finally:
            stdin_done.set()

    sender = asyncio.create_task(send())
    out = sys.stdout.buffer
    ended: float | None = None  # when stdin ended and all of it was sent
    try:
        while True:
            if ended is None and sender.done():
                ended = time.monotonic()
            if ended is not None and time.monotonic() - ended >= MAX_LINGER:
                break  # a guest that never stops talking (a background writer)
            try:
                msg = await asyncio.wait_for(ws.recv(), 0.2 if ended is None else LINGER)
            except TimeoutError:
                if ended is not None:
                    break  # input done and the console quiet: the script has its answer
                continue
            out.write(_output(msg))
            out.flush()
    except ConnectionClosed:
        pass
    finally:
        sender.cancel()
    return 0


async def _interactive(ws: ClientConnection, name: str) -> int:
    import termios
    import tty

    from websockets.exceptions import ConnectionClosed

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()
    sys.stderr.write(f"Connected to the console of {name}; Ctrl-] leaves.\r\n")

    def typed() -> None:
        try:
            keys.put_nowait(os.read(fd, 1024))
        except OSError:
            keys.put_nowait(b"")

    async def receive() -> None:
        async for msg in ws:
            os.write(sys.stdout.fileno(), _output(msg))

    async def send() -> None:
        while True:
            data = await keys.get()
            if not data or ESCAPE in data:
                data = data.split(ESCAPE)[0]
                if data:
                    await ws.send(data)
                return
            await ws.send(data)

    tty.setraw(fd)
    loop.add_reader(fd, typed)
    tasks = [asyncio.create_task(receive()), asyncio.create_task(send())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            exc = t.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed | OSError):
                raise exc  # the server's error (a text frame), said after the reset
    finally:
        for t in tasks:
            t.cancel()
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
    sys.stderr.write("\r\nDisconnected.\r\n")
    return 0

"""``gnt-instance console``: the serial console through the cluster's API.

On a terminal it is interactive (raw mode; Ctrl-] leaves, like Ganeti's consoles).
With piped input it copies stdin to the console and the console to stdout, and ends
once stdin is exhausted and the console has been quiet for a moment (a few seconds at
most, for a guest that never stops printing), so scripts can
send a command and read its output.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from typing import TYPE_CHECKING

from haven.cli.client import CONNECT_TIMEOUT, Client
from haven.errors import ApiUnavailable, HavenError, TemporaryError, from_json

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

ESCAPE = b"\x1d"  # Ctrl-]
LINGER = float(os.environ.get("HAVEN_CONSOLE_LINGER", "1.0"))
MAX_LINGER = 3 * LINGER  # piped: the longest wait for the answer after the input ended


def open_console(c: Client, name: str) -> ClientConnection:
    """A WebSocket on the console of ``name``, through the first node that answers."""
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    errors = []
    for ep in c.endpoints:
        headers = {"Authorization": c.auth} if c.auth else {}
        try:
            ws = connect(f"wss://{ep}/haven/instances/{name}/console/ws", ssl=c.ctx,
                         additional_headers=headers, open_timeout=CONNECT_TIMEOUT + 10,
                         close_timeout=2, max_size=None, compression=None,
                         # Unbounded: with a bounded queue, a guest that never stops
                         # printing fills it once we stop reading, the reader thread
                         # blocks, and close() waits for it forever.
                         max_queue=None)
        except (OSError, TimeoutError, InvalidStatus, WebSocketException) as exc:
            errors.append(f"{ep}: {exc}")
            continue
        return ws
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
    ws = open_console(c, name)
    try:
        if sys.stdin.isatty():
            return _interactive(ws, name)
        return _piped(ws)
    finally:
        ws.close()


def _interactive(ws: ClientConnection, name: str) -> int:
    import termios
    import tty

    from websockets.exceptions import ConnectionClosed

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    sys.stderr.write(f"Connected to the console of {name}; Ctrl-] leaves.\r\n")
    closed = threading.Event()
    failure: list[HavenError] = []

    def receive() -> None:
        try:
            for msg in ws:
                os.write(sys.stdout.fileno(), _output(msg))
        except HavenError as exc:
            failure.append(exc)
        except (ConnectionClosed, OSError):
            pass
        finally:
            closed.set()

    try:
        tty.setraw(fd)
        threading.Thread(target=receive, daemon=True, name="console-out").start()
        while not closed.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if fd not in ready:
                continue
            data = os.read(fd, 1024)
            if not data or ESCAPE in data:
                data = data.split(ESCAPE)[0]
                if data:
                    ws.send(data)
                break
            ws.send(data)
    except (ConnectionClosed, OSError):
        pass
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
    if failure:
        raise failure[0]
    sys.stderr.write("\r\nDisconnected.\r\n")
    return 0


def _piped(ws: ClientConnection) -> int:
    """Copy stdin to the console until it ends, and the console to stdout until it has
    been quiet for LINGER seconds after that (at most MAX_LINGER seconds)."""
    from websockets.exceptions import ConnectionClosed

    stdin_done = threading.Event()

    def send() -> None:
        try:
            while data := os.read(sys.stdin.fileno(), 65536):
                ws.send(data)
        except (ConnectionClosed, OSError):
            pass
        finally:
            stdin_done.set()

    def watchdog() -> None:
        # Whatever blocks (a close handshake that never completes, a relay that never
        # answers), a script's console ends a few seconds after its input did.
        stdin_done.wait()
        time.sleep(MAX_LINGER + 5)
        sys.stdout.flush()
        sys.stderr.write("Warning: the console did not close in time; leaving it.\n")
        if os.environ.get("HAVEN_CONSOLE_DEBUG"):
            import faulthandler

            faulthandler.dump_traceback(sys.stderr)
        sys.stderr.flush()
        os._exit(0)

    threading.Thread(target=send, daemon=True, name="console-in").start()
    threading.Thread(target=watchdog, daemon=True, name="console-watchdog").start()
    out = sys.stdout.buffer
    ended: float | None = None  # when stdin ended
    try:
        while True:
            if ended is None and stdin_done.is_set():
                ended = time.monotonic()
            if ended is not None and time.monotonic() - ended >= MAX_LINGER:
                break  # a guest that never stops talking (a background writer)
            try:
                msg = ws.recv(timeout=0.2 if ended is None else LINGER)
            except TimeoutError:
                if ended is not None:
                    break  # input done and the console quiet: the script has its answer
                continue
            out.write(_output(msg))
            out.flush()
    except ConnectionClosed:
        pass
    return 0

"""Serial console streaming: from the VM's unix socket on its node, through any node's
API, to the CLI.  Bytes are copied both ways until either side closes."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any


def pump_unix(path: str) -> Any:
    """A stream pump joining the client connection to the console socket ``path``."""

    def pump(conn: socket.socket, rfile: Any) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as con:
            con.connect(path)
            _join(conn, rfile, con)

    return pump


def pump_remote(open_upstream: Any) -> Any:
    """A pump relaying to another node's console stream (``open_upstream()`` returns a
    connected socket already past the HTTP headers, and any bytes read beyond them)."""

    def pump(conn: socket.socket, rfile: Any) -> None:
        upstream, early = open_upstream()
        with upstream:
            if early:
                conn.sendall(early)
            _join(conn, rfile, upstream)

    return pump


def _join(client: socket.socket, client_rfile: Any, other: socket.socket) -> None:
    done = threading.Event()

    def to_other() -> None:
        try:
            while True:
                # read1: whatever has arrived, without waiting to fill a buffer.
                data = client_rfile.read1(65536)
                if not data:
                    break
                other.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            # TLS has no half-close, and SSLSocket.shutdown() drops the TLS layer at
            # once: the reading thread's next recv() then returned raw TLS records (a
            # peer's close_notify reached a console as garbage).  Only a plain socket
            # (the VM's own console socket) is half-closed.
            if not isinstance(other, ssl.SSLSocket):
                with contextlib.suppress(OSError):
                    other.shutdown(socket.SHUT_WR)
            done.set()

    t = threading.Thread(target=to_other, daemon=True, name="console-in")
    t.start()
    try:
        while True:
            data = other.recv(65536)
            if not data:
                break
            client.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        done.wait(1.0)

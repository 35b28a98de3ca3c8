"""``gnt-instance console``: the serial console through the cluster's API.

On a terminal it is interactive (raw mode; Ctrl-] leaves, like Ganeti's consoles).
With piped input it copies stdin to the console and the console to stdout, and ends
once stdin is exhausted and the console has been quiet for a moment, so scripts can
send a command and read its output.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
from typing import Any

from haven.cli.client import Client
from haven.errors import ApiUnavailable, HavenError, from_json

ESCAPE = b"\x1d"  # Ctrl-]
LINGER = float(os.environ.get("HAVEN_CONSOLE_LINGER", "1.0"))


def open_stream(c: Client, name: str) -> tuple[socket.socket, bytes]:
    """A socket streaming the console of ``name``, and bytes already read past the
    response headers."""
    errors = []
    for ep in c.endpoints:
        try:
            sock = c._connection(ep)
        except OSError as exc:
            errors.append(f"{ep}: {exc}")
            continue
        # The stream takes the connection over: do not keep it for other calls.
        c._conns.pop(ep, None)
        c._files.pop(ep, None)
        head = (f"GET /haven/instances/{name}/console HTTP/1.1\r\nHost: haven\r\n"
                f"Content-Length: 0\r\n" + (f"Authorization: {c.auth}\r\n" if c.auth else "")
                + "\r\n")
        sock.settimeout(30)
        sock.sendall(head.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise HavenError(f"Node {ep} closed the console of {name}.")
            buf += chunk
        header, _, rest = buf.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        if status != 200:
            length = 0
            for line in header.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            while len(rest) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                rest += chunk
            sock.close()
            try:
                raise from_json(json.loads(rest))
            except ValueError:
                raise HavenError(f"Node {ep} refused the console of {name} "
                                 f"(HTTP {status}).") from None
        sock.settimeout(None)
        return sock, rest
    raise ApiUnavailable("No node of the cluster answered (" + "; ".join(errors) + ").")


def attach(c: Client, name: str) -> int:
    sock, early = open_stream(c, name)
    out = sys.stdout.buffer
    if early:
        out.write(early)
        out.flush()
    if sys.stdin.isatty():
        return _interactive(sock, name)
    return _piped(sock)


def _interactive(sock: Any, name: str) -> int:
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    sys.stderr.write(f"Connected to the console of {name}; Ctrl-] leaves.\r\n")
    try:
        tty.setraw(fd)
        while True:
            ready, _, _ = select.select([fd, sock], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in ready:
                data = os.read(fd, 1024)
                if not data or ESCAPE in data:
                    data = data.split(ESCAPE)[0]
                    if data:
                        sock.sendall(data)
                    break
                sock.sendall(data)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
        sock.close()
    sys.stderr.write("\r\nDisconnected.\r\n")
    return 0


def _piped(sock: Any) -> int:
    fd = sys.stdin.fileno()
    stdin_open = True
    out = sys.stdout.buffer
    try:
        while True:
            watch = [sock, fd] if stdin_open else [sock]
            ready, _, _ = select.select(watch, [], [], None if stdin_open else LINGER)
            if not ready:
                break  # input done and the console quiet: the script has its answer
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                out.write(data)
                out.flush()
            if stdin_open and fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    stdin_open = False
                else:
                    sock.sendall(data)
    finally:
        sock.close()
    return 0

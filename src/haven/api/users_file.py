"""Ganeti's RAPI users file (``rapi/users`` under the node's data directory, as
``/var/lib/ganeti/rapi/users`` is for Ganeti): one user per line,
``NAME PASSWORD [write|read]``, ``#`` comments.  The password is
``{HA1}<md5 of NAME:Ganeti Remote API:PASSWORD>`` (what Ganeti's documentation and
Ganeti Web Manager tell administrators to write), ``{CLEARTEXT}PASSWORD``, or the
password itself.

As with Ganeti the file is per node, read again whenever it changes (no restart), and
``gnt-cluster redist-conf`` copies the master's to every node.  Its passwords never go
into etcd.  The cluster's own users (``haven-admin``, the node daemons') come from the
cluster configuration and cannot be redefined here.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REALM = "Ganeti Remote API"  # Ganeti's, so that existing {HA1} hashes keep working


@dataclass(frozen=True)
class FileUser:
    name: str
    password: str  # as written: {HA1}..., {CLEARTEXT}... or plain
    write: bool

    def verify(self, password: str) -> bool:
        spec = self.password
        if spec[:5].upper() == "{HA1}":
            ha1 = hashlib.md5(f"{self.name}:{REALM}:{password}".encode()).hexdigest()
            return hmac.compare_digest(ha1, spec[5:].lower())
        if spec[:11].upper() == "{CLEARTEXT}":
            spec = spec[11:]
        return hmac.compare_digest(spec.encode(), password.encode())


def parse(text: str, source: str = "the RAPI users file") -> dict[str, FileUser]:
    """The users of ``text``; a malformed line is skipped with a warning naming it
    (as Ganeti does), so that one typo does not lock every user out."""
    users: dict[str, FileUser] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) not in (2, 3):
            log.warning("%s, line %d: expected 'NAME PASSWORD [write]'; line ignored",
                        source, number)
            continue
        options = {o.strip().lower() for o in fields[2].split(",")} if len(fields) == 3 \
            else set()
        unknown = options - {"write", "read"}
        if unknown:
            log.warning("%s, line %d: unknown option(s) %s; line ignored", source, number,
                        ", ".join(sorted(unknown)))
            continue
        users[fields[0]] = FileUser(fields[0], fields[1], "write" in options)
    return users


class UsersFile:
    """The file at ``path``, parsed again when its size or modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.users: dict[str, FileUser] = {}

    def current(self) -> dict[str, FileUser]:
        try:
            st = self.path.stat()
        except OSError:
            self._stamp, self.users = None, {}
            return self.users
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self.users = parse(self.path.read_text(), str(self.path))
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("cannot read %s: %s; its users are refused", self.path, exc)
                self.users = {}
            self._stamp = stamp
            log.info("RAPI users file %s: %d user(s)", self.path, len(self.users))
        return self.users

    def text(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def replace(self, text: str) -> bool:
        """Write ``text`` as the file (mode 0600: it may hold passwords); whether it
        changed."""
        if self.text() == text:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)
        return True

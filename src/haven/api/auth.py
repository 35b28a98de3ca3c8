"""Who is calling: RAPI users (HTTP Basic) and browser session tokens (Bearer).

RAPI users live in the cluster's configuration in etcd: name -> {"password": hash,
"salt": ..., "write": bool}, and in each node's Ganeti-format users file
(``users_file.py``).  A browser logs in once with such a user and gets a token
(:meth:`Authenticator.issue_token`) that it sends as ``Authorization: Bearer`` (or
``?token=`` on a WebSocket, which cannot carry headers from a browser).  Tokens are
signed with a key derived from the cluster's secret, so one token works on every node of
the cluster: the dashboard moves to another node when its own goes away.  The signature
is the standard library's HMAC-SHA256; the token holds no secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from haven.api.users_file import UsersFile
from haven.passwords import hash_password, verify_password

TOKEN_TTL = 12 * 3600.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """RAPI users and session tokens.

    ``loaded`` turns true once ``users`` has been set (by the daemon, from the cluster's
    configuration in etcd).  Before that, a daemon that just (re)started serves its API
    without knowing any user, not even the node daemons' own: a refusal then would be
    wrong (the caller may well be allowed), so :meth:`ApiServer.dispatch` answers "not
    ready" instead of "needs a user with write access"."""

    def __init__(self) -> None:
        self._users: dict[str, dict[str, Any]] = {}
        self._token_key = b""
        self.loaded = False
        # Ganeti's per-node RAPI users file, set by the daemon (users_file.py).
        self.users_file: UsersFile | None = None
        self._verified: dict[bytes, bool] = {}
        self._cache_key = secrets.token_bytes(32)

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        return self._users

    @users.setter
    def users(self, users: dict[str, dict[str, Any]]) -> None:
        self._users = users
        self.loaded = True

    def set_token_secret(self, secret: str) -> None:
        """The cluster's secret, the same on every node: tokens verify everywhere."""
        self._token_key = hashlib.sha256(b"haven-session:" + secret.encode()).digest() \
            if secret else b""

    def check(self, header: str | None) -> tuple[str | None, bool]:
        """The user named by an ``Authorization`` header and whether it may write;
        ``(None, False)`` for no header or wrong credentials."""
        if not header:
            return None, False
        if header.startswith("Bearer "):
            return self.check_token(header[7:].strip())
        if not header.startswith("Basic "):
            return None, False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, False
        return self.check_password(user, password)

    def check_password(self, user: str, password: str) -> tuple[str | None, bool]:
        entry = self.users.get(user)
        if entry is None:
            # The cluster's own users first: the file cannot redefine them.
            extra = self.users_file.current().get(user) if self.users_file else None
            if extra is not None and self.loaded and extra.verify(password):
                return user, extra.write
            return None, False
        salt, stored = str(entry.get("salt")), str(entry.get("password", ""))
        # scrypt costs ~50 ms: each distinct (user, password, stored hash) is verified
        # once; the key is a keyed digest, so the cache holds no password.
        key = hmac.new(self._cache_key, f"{user}\0{salt}\0{stored}\0{password}".encode(),
                       hashlib.sha256).digest()
        ok = self._verified.get(key)
        if ok is None:
            ok = verify_password(password, salt, stored)
            if len(self._verified) >= 1024:
                self._verified.clear()
            self._verified[key] = ok
        if not ok:
            return None, False
        return user, bool(entry.get("write", False))

    def issue_token(self, user: str, write: bool, ttl: float = TOKEN_TTL) -> str:
        """A signed token for ``user`` valid for ``ttl`` seconds."""
        if not self._token_key:
            raise RuntimeError("no cluster secret yet: this node is not part of a cluster")
        claims = _b64(json.dumps({"u": user, "w": write, "e": time.time() + ttl}).encode())
        sig = hmac.new(self._token_key, claims.encode(), hashlib.sha256).digest()
        return f"{claims}.{_b64(sig)}"

    def check_token(self, token: str) -> tuple[str | None, bool]:
        """The user and write flag of a valid, unexpired token whose user still
        exists (a removed user's tokens stop working); ``(None, False)`` otherwise."""
        if not self._token_key or token.count(".") != 1:
            return None, False
        claims, sig = token.split(".")
        good = hmac.new(self._token_key, claims.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(good, _unb64(sig)):
                return None, False
            data = json.loads(_unb64(claims))
        except ValueError:
            return None, False
        user = data.get("u")
        if not isinstance(user, str) or float(data.get("e", 0)) < time.time() or \
                user not in self.users:
            return None, False
        # A user whose write access was taken away keeps only read access.
        return user, bool(data.get("w")) and bool(self.users[user].get("write"))


__all__ = ["TOKEN_TTL", "Authenticator", "hash_password"]

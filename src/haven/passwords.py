"""How RAPI users' passwords are stored: a salted SHA-256, the same on every node.

Neutral ground for the daemon, which writes the hashes (the cluster's first user at
``gnt-cluster init``, the node daemons' own user), and the API, which checks them.  The
format is part of the cluster's stored state: changing it breaks every stored user.
"""

from __future__ import annotations

import hashlib


def hash_password(password: str, salt: str) -> str:
    """The stored form of ``password`` with ``salt``: hex SHA-256 of ``salt:password``."""
    return hashlib.sha256((salt + ":" + password).encode()).hexdigest()

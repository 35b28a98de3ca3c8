"""How RAPI users' passwords are stored: scrypt (OpenSSL's, through :mod:`hashlib`).

Neutral ground for the daemon, which writes the hashes (the cluster's first user at
``gnt-cluster init``, the node daemons' own user), and the API, which checks them.

Stored form: ``scrypt$N$r$p$<hex>`` of the password with the user's salt; the cost
parameters travel with the hash, so raising them later keeps old hashes valid.  Hashes
written before (one salted SHA-256, hex) are still accepted, so existing clusters keep
their users; the next ``gnt-cluster init`` or password change writes scrypt.
"""

from __future__ import annotations

import hashlib
import hmac

# 16 MiB and about 50 ms per hash here: costly to guess offline, and the API checks
# each distinct credential once (haven.api.auth caches what it verified).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_PREFIX = "scrypt$"


def _scrypt(password: str, salt: str, n: int, r: int, p: int) -> str:
    return hashlib.scrypt(password.encode(), salt=salt.encode(), n=n, r=r, p=p,
                          maxmem=256 * 2**20, dklen=32).hex()


def hash_password(password: str, salt: str) -> str:
    """The stored form of ``password`` with ``salt``."""
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{_PREFIX}{SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${digest}"


def verify_password(password: str, salt: str, stored: str) -> bool:
    """True if ``password`` (with ``salt``) matches the stored form, in constant time."""
    if stored.startswith(_PREFIX):
        try:
            n, r, p, digest = stored[len(_PREFIX):].split("$")
            got = _scrypt(password, salt, int(n), int(r), int(p))
        except (ValueError, MemoryError):
            return False
        return hmac.compare_digest(got, digest)
    legacy = hashlib.sha256((salt + ":" + password).encode()).hexdigest()
    return hmac.compare_digest(legacy, stored)

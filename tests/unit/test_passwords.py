"""RAPI users' password hashes are stored in the cluster's configuration: new ones are
scrypt with their cost parameters, and those existing clusters stored (salted SHA-256)
must still verify, whichever module checks them (``haven.passwords``, re-exported by
``haven.api.auth``)."""

from __future__ import annotations

import hashlib

from haven.api.auth import Authenticator
from haven.api.auth import hash_password as api_hash_password
from haven.passwords import SCRYPT_N, hash_password, verify_password

# Computed by the implementation that wrote the hashes of existing clusters.
STORED = {("s3cret", "salt1"): "42911e8d1a536bd1f3d5c3083c699631451e3727217ba214a6eff51870ae4412",
          ("5b3c8e4e-7f0b-4b8e-9d7e-0c1a2b3c4d5e", "node"):
          "6d57ea441f34a019164ba6499cfff2c0a742b7b0cb1eea431ff571501fdb26b6"}


def test_new_hashes_are_scrypt_and_carry_their_cost() -> None:
    stored = hash_password("s3cret", "salt1")
    assert stored.startswith(f"scrypt${SCRYPT_N}$8$1$") and len(stored.split("$")[-1]) == 64
    expected = hashlib.scrypt(b"s3cret", salt=b"salt1", n=SCRYPT_N, r=8, p=1,
                              maxmem=2**28, dklen=32).hex()
    assert stored.endswith(expected)
    assert verify_password("s3cret", "salt1", stored)
    assert not verify_password("s3cret", "salt2", stored)
    assert not verify_password("wrong", "salt1", stored)
    # Weaker parameters written into the hash do not verify against the same digest.
    assert not verify_password("s3cret", "salt1", stored.replace(f"${SCRYPT_N}$", "$1024$"))
    assert not verify_password("s3cret", "salt1", "scrypt$garbage")
    assert api_hash_password is hash_password


def test_hashes_existing_clusters_stored_still_verify() -> None:
    for (password, salt), stored in STORED.items():
        assert verify_password(password, salt, stored)
        assert not verify_password(password + "x", salt, stored)
    auth = Authenticator()
    auth.users = {"admin": {"password": STORED[("s3cret", "salt1")], "salt": "salt1",
                            "write": True}}
    assert auth.check_password("admin", "s3cret") == ("admin", True)
    assert auth.check_password("admin", "wrong") == (None, False)


def test_the_verification_cache_follows_a_changed_password() -> None:
    auth = Authenticator()
    auth.users = {"u": {"password": hash_password("one", "s"), "salt": "s", "write": False}}
    assert auth.check_password("u", "one") == ("u", False)
    assert auth.check_password("u", "one") == ("u", False)  # from the cache
    auth.users = {"u": {"password": hash_password("two", "s"), "salt": "s", "write": False}}
    assert auth.check_password("u", "one") == (None, False)
    assert auth.check_password("u", "two") == ("u", False)

"""RAPI users' password hashes are stored in the cluster's configuration: the format
must never change, whichever module computes it (``haven.passwords``, re-exported by
``haven.api.auth``)."""

from __future__ import annotations

from haven.api.auth import Authenticator
from haven.api.auth import hash_password as api_hash_password
from haven.passwords import hash_password

# Computed by the implementation that wrote the hashes of existing clusters.
STORED = {("s3cret", "salt1"): "42911e8d1a536bd1f3d5c3083c699631451e3727217ba214a6eff51870ae4412",
          ("5b3c8e4e-7f0b-4b8e-9d7e-0c1a2b3c4d5e", "node"):
          "6d57ea441f34a019164ba6499cfff2c0a742b7b0cb1eea431ff571501fdb26b6"}


def test_hashes_are_those_existing_clusters_stored() -> None:
    for (password, salt), stored in STORED.items():
        assert hash_password(password, salt) == stored
    assert api_hash_password is hash_password


def test_a_stored_hash_still_verifies() -> None:
    auth = Authenticator()
    auth.users = {"admin": {"password": STORED[("s3cret", "salt1")], "salt": "salt1",
                            "write": True}}
    assert auth.check_password("admin", "s3cret") == ("admin", True)
    assert auth.check_password("admin", "wrong") == (None, False)

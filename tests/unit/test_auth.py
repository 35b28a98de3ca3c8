"""RAPI users and session tokens (haven.api.auth)."""

from __future__ import annotations

import base64

import pytest

from haven.api.auth import Authenticator, hash_password


def auth(secret: str = "cluster-uuid") -> Authenticator:
    a = Authenticator()
    a.users = {"alice": {"password": hash_password("pw", "s1"), "salt": "s1", "write": True},
               "bob": {"password": hash_password("pw2", "s2"), "salt": "s2", "write": False}}
    a.set_token_secret(secret)
    return a


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_checks_the_password_and_says_who_may_write() -> None:
    a = auth()
    assert a.check(basic("alice", "pw")) == ("alice", True)
    assert a.check(basic("bob", "pw2")) == ("bob", False)
    assert a.check(basic("alice", "wrong")) == (None, False)
    assert a.check(basic("nobody", "pw")) == (None, False)
    assert a.check("Basic !!!") == (None, False)
    assert a.check(None) == (None, False)


def test_a_token_works_on_every_node_of_the_cluster_and_nowhere_else() -> None:
    token = auth().issue_token("alice", True)
    other_node = auth()  # same cluster secret
    assert other_node.check("Bearer " + token) == ("alice", True)
    assert other_node.check_token(token) == ("alice", True)
    assert auth("another-cluster").check_token(token) == (None, False)


def test_a_tampered_expired_or_orphaned_token_is_refused() -> None:
    a = auth()
    token = a.issue_token("bob", False)
    claims, sig = token.split(".")
    forged = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)).replace(
            b'"w": false', b'"w": true')).decode().rstrip("=")
    assert a.check_token(f"{forged}.{sig}") == (None, False)
    assert a.check_token(a.issue_token("alice", True, ttl=-1)) == (None, False)
    assert a.check_token("not-a-token") == (None, False)
    gone = a.issue_token("alice", True)
    a.users = {"bob": a.users["bob"]}  # alice removed from the RAPI users
    assert a.check_token(gone) == (None, False)


def test_a_user_whose_write_access_was_taken_keeps_only_read_access() -> None:
    a = auth()
    token = a.issue_token("alice", True)
    a.users = dict(a.users, alice=dict(a.users["alice"], write=False))
    assert a.check_token(token) == ("alice", False)


def test_no_token_before_the_node_knows_its_cluster() -> None:
    a = Authenticator()
    with pytest.raises(RuntimeError):
        a.issue_token("alice", True)
    assert a.check_token("x.y") == (None, False)

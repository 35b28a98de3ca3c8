"""Ganeti's RAPI users file: its formats, its reload, and its place behind the
cluster's own users."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from haven.api.auth import Authenticator
from haven.api.users_file import UsersFile, parse
from haven.passwords import hash_password


def ha1(user: str, password: str) -> str:
    # What Ganeti's documentation tells administrators to run (openssl md5).
    return hashlib.md5(f"{user}:Ganeti Remote API:{password}".encode()).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_three_password_forms_and_the_write_option() -> None:
    users = parse(f"""# Ganeti Web Manager
gwm {{HA1}}{ha1("gwm", "s3cret")} write
reader {{CLEARTEXT}}look
plain pw read
""")
    assert set(users) == {"gwm", "reader", "plain"}
    assert users["gwm"].write and not users["reader"].write and not users["plain"].write
    assert users["gwm"].verify("s3cret") and not users["gwm"].verify("S3cret")
    assert users["reader"].verify("look") and not users["reader"].verify("{CLEARTEXT}look")
    assert users["plain"].verify("pw")


def test_a_malformed_line_is_skipped_not_the_file() -> None:
    users = parse("ok pw write\nno-password\nbad pw write,admin\nalso ok2\n")
    assert set(users) == {"ok", "also"}


def test_the_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    f = UsersFile(tmp_path / "rapi" / "users")
    assert f.current() == {}
    assert f.replace("a pw\n") is True
    assert (tmp_path / "rapi" / "users").stat().st_mode & 0o777 == 0o600
    assert set(f.current()) == {"a"}
    assert f.replace("a pw\n") is False  # unchanged
    f.path.write_text("a pw\nb pw2 write\n")
    os.utime(f.path, ns=(1, 1))  # a change within the same mtime tick still shows
    assert set(f.current()) == {"a", "b"}
    f.path.unlink()
    assert f.current() == {}


def test_the_authenticator_takes_file_users_after_the_cluster_s(tmp_path: Path) -> None:
    auth = Authenticator()
    auth.users_file = UsersFile(tmp_path / "users")
    auth.users_file.replace(f"gwm {{HA1}}{ha1('gwm', 'pw')} write\nro ro-pw\n"
                            "haven-admin stolen write\n")
    assert auth.check(basic("gwm", "pw")) == (None, False)  # not loaded: not yet a node
    auth.users = {"haven-admin": {"salt": "s", "password": hash_password("real", "s"),
                                  "write": True}}
    assert auth.check(basic("gwm", "pw")) == ("gwm", True)
    assert auth.check(basic("gwm", "wrong")) == (None, False)
    assert auth.check(basic("ro", "ro-pw")) == ("ro", False)
    # The file cannot redefine the cluster's own users.
    assert auth.check(basic("haven-admin", "stolen")) == (None, False)
    assert auth.check(basic("haven-admin", "real")) == ("haven-admin", True)

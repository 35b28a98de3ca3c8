"""A node daemon that has just (re)started, before it reached etcd (issue 10: "An
internal refusal reaches the user"): it cannot check credentials yet, so it answers
"not ready" rather than "needs a user with write access", and node-to-node calls wait
for it instead of failing the job."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.api.http import NOT_READY_STATUS, ApiServer, Request, Router, hash_password
from haven.daemon.localstate import make_certificate
from haven.errors import HavenError, NodeSetupError
from haven.noderpc import HttpsNodeRpc, not_ready

NODE_AUTH = "Basic " + base64.b64encode(b"haven-node:cluster-uuid").decode()
NODE_USERS = {"haven-node": {"password": hash_password("cluster-uuid", "node"),
                             "salt": "node", "write": True}}


def router() -> Router:
    r = Router()
    r.add("POST", "/haven/node/instance/{name}/migrate-accept",
          lambda q: {"uri": f"tcp:x:1/{q.params['name']}"}, write=True)
    r.add("GET", "/2/info", lambda _q: {"name": "unit"})
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def starting(tmp_path: Path) -> Iterator[tuple[ApiServer, str]]:
    """An HTTPS API server whose users are not loaded yet (a daemon before activate())
    and the certificate file a caller pins."""
    cert, key = make_certificate("haven-unit")
    (tmp_path / "c.pem").write_text(cert)
    (tmp_path / "c.key").write_text(key)
    server = ApiServer("127.0.0.1", free_port(), router())
    server.use_certificate(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    server.start()
    yield server, str(tmp_path / "c.pem")
    server.stop()


def _write(api: ApiServer, auth: str | None) -> tuple[int, dict[str, object]]:
    user, can_write = api.auth.check(auth)
    resp = api.dispatch(Request("POST", "/haven/node/instance/vm2/migrate-accept", {}, {},
                                user, can_write))
    return resp.status, resp.body


def test_a_daemon_without_its_users_answers_not_ready_not_unauthorised() -> None:
    api = ApiServer("127.0.0.1", free_port(), router())
    try:  # dispatch() alone: the server is never started, only its socket closed
        for auth in (NODE_AUTH, None):
            status, body = _write(api, auth)
            assert status == NOT_READY_STATUS == 502
            assert body["kind"] == "NodeSetupError"
            assert "write access" not in str(body["message"])
            assert not_ready(status, body)  # what node callers retry on
            # ... and what the CLI client moves on to the next node for.
            assert "not part of a cluster" in str(body["message"])
        # Reads need no user: served as before.
        assert api.dispatch(Request("GET", "/2/info", {}, None, None, False)).status == 200
        api.auth.users = dict(NODE_USERS)  # the daemon reached etcd
        assert _write(api, NODE_AUTH)[0] == 200
        status, body = _write(api, None)
        assert status == 401 and "write access" in str(body["message"])
        assert not not_ready(status, body)
    finally:
        api.stop()


def test_an_empty_user_list_once_loaded_still_refuses() -> None:
    api = ApiServer("127.0.0.1", free_port(), router())
    try:
        api.auth.users = {}
        assert _write(api, NODE_AUTH)[0] == 401
    finally:
        api.stop()


def test_not_ready_is_only_the_starting_answers() -> None:
    store_down = {"kind": "NodeSetupError", "message": "Node node01 is not part of a "
                  "cluster (or cannot reach etcd right now)."}
    assert not_ready(502, store_down)
    for status, body in [
        (401, {"kind": "HavenError", "message": "This request needs a user with write "
               "access (HTTP Basic authentication)."}),
        (502, {"kind": "NodeSetupError", "message": "Node node05 is not part of a "
               "cluster."}),  # for good: no retry
        (400, {"kind": "OpPrereqError", "message": "not part of a cluster yet"}),
    ]:
        assert not not_ready(status, body), body


def test_a_node_call_waits_for_a_starting_daemon(starting: tuple[ApiServer, str]) -> None:
    api, cert = starting
    rpc = HttpsNodeRpc(cert, NODE_AUTH)
    # The daemon reaches etcd 0.6 s after the call was made.
    timer = threading.Timer(0.6, lambda: setattr(api.auth, "users", dict(NODE_USERS)))
    timer.start()
    t0 = time.monotonic()
    try:
        answer = rpc.call("127.0.0.1", api.address[1], "POST",
                          "/haven/node/instance/vm2/migrate-accept", {})
    finally:
        timer.cancel()
    assert answer == {"uri": "tcp:x:1/vm2"}
    assert time.monotonic() - t0 >= 0.5


def test_a_daemon_that_never_gets_ready_fails_with_a_sentence(
        starting: tuple[ApiServer, str]) -> None:
    api, cert = starting
    rpc = HttpsNodeRpc(cert, NODE_AUTH)
    rpc.not_ready_patience = 0.5
    with pytest.raises(NodeSetupError) as err:
        rpc.call("127.0.0.1", api.address[1], "POST",
                 "/haven/node/instance/vm2/migrate-accept", {})
    assert "still starting" in err.value.message
    assert "write access" not in err.value.message


def test_a_real_refusal_is_not_retried(starting: tuple[ApiServer, str]) -> None:
    api, cert = starting
    api.auth.users = dict(NODE_USERS)
    rpc = HttpsNodeRpc(cert, "Basic " + base64.b64encode(b"haven-node:wrong").decode())
    t0 = time.monotonic()
    with pytest.raises(HavenError) as err:
        rpc.call("127.0.0.1", api.address[1], "POST",
                 "/haven/node/instance/vm2/migrate-accept", {})
    assert "write access" in err.value.message
    assert time.monotonic() - t0 < 2

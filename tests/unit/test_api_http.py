"""The REST boundary: routing, Basic auth, error mapping, and one real HTTP round trip.

Most tests call :meth:`ApiServer.dispatch` with a request whose user comes from the
server's own :class:`Authenticator`, exactly as the request handler builds it.  One
server is bound for the whole module (the constructor binds the given port, so a free
one is picked first) and serves plain HTTP (no certificate) for the round trips.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from haven.api.http import (
    ApiServer,
    Authenticator,
    HttpError,
    Request,
    Response,
    Router,
    hash_password,
)
from haven.errors import ExistsError, NotFoundError, OpPrereqError
from haven.store.errors import FencedOut


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ADMIN = basic("admin", "s3cret")
VIEWER = basic("viewer", "look")


def boom(_req: Request) -> Any:
    raise RuntimeError("secret internals at /srv/haven/state.db")


def raise_error(req: Request) -> Any:
    kind = req.params["kind"]
    if kind == "notfound":
        raise NotFoundError("Node 'node09' is not part of the cluster; see gnt-node list.")
    if kind == "exists":
        raise ExistsError("Node node02 is already in the cluster; see gnt-node list.")
    if kind == "fenced":
        raise FencedOut("Refused a master write: another node is master now.")
    if kind == "teapot":
        raise HttpError(418, "This node only brews tea.")
    raise OpPrereqError("Node node02 is the master; move the master role first.")


def build_router() -> Router:
    r = Router()
    r.add("GET", "/2/info", lambda _q: {"name": "haven-unit"})
    r.add("GET", "/2/jobs/{id}", lambda q: {"id": int(q.params["id"])})
    r.add("POST", "/haven/jobs", lambda q: {"submitted": q.body, "by": q.user}, write=True)
    r.add("DELETE", "/2/jobs/{id}", lambda q: [True, f"Job {q.params['id']} canceled"],
          write=True)
    r.add("GET", "/boom", boom)
    r.add("GET", "/errors/{kind}", raise_error)
    r.add("PUT", "/created", lambda _q: Response({"ok": True}, 201))
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    server = ApiServer("127.0.0.1", free_port(), build_router())
    server.auth.users = {
        "admin": {"password": hash_password("s3cret", "salt1"), "salt": "salt1",
                  "write": True},
        "viewer": {"password": hash_password("look", "salt2"), "salt": "salt2",
                   "write": False},
    }
    server.start()
    yield server
    server.stop()


def dispatch(api: ApiServer, method: str, path: str, auth: str | None = None,
             body: Any = None) -> Response:
    user, can_write = api.auth.check(auth)
    return api.dispatch(Request(method, path, {}, body, user, can_write))


# -- routing -------------------------------------------------------------------------------


def test_router_matches_path_parameters_and_tells_other_methods_apart() -> None:
    r = build_router()
    route, params, other = r.match("GET", "/2/jobs/17")
    assert route is not None and (params, other) == ({"id": "17"}, False)
    assert r.match("PATCH", "/2/jobs/17")[1:] == ({}, True)
    assert r.match("GET", "/2/jobs/17/extra") == (None, {}, False)


def test_unknown_path_is_404_with_a_sentence(api: ApiServer) -> None:
    resp = dispatch(api, "GET", "/2/nothing")
    assert (resp.status, resp.body) == (404, {
        "code": 404, "message": "There is no resource /2/nothing.", "explain": "wrong_input",
        "kind": "HavenError"})


def test_wrong_method_is_405(api: ApiServer) -> None:
    resp = dispatch(api, "PUT", "/2/info")
    assert (resp.status, resp.body["message"]) == (
        405, "Method PUT is not allowed on /2/info.")


def test_a_read_route_needs_no_user(api: ApiServer) -> None:
    resp = dispatch(api, "GET", "/2/jobs/5")
    assert (resp.status, resp.body) == (200, {"id": 5})


def test_write_route_without_auth_is_401(api: ApiServer) -> None:
    resp = dispatch(api, "POST", "/haven/jobs", body={"opcodes": []})
    assert resp.status == 401
    assert resp.body["message"] == ("This request needs a user with write access "
                                    "(HTTP Basic authentication).")


def test_write_route_with_a_wrong_password_is_401(api: ApiServer) -> None:
    assert dispatch(api, "POST", "/haven/jobs", basic("admin", "guess")).status == 401


def test_write_route_with_a_read_only_user_is_403(api: ApiServer) -> None:
    resp = dispatch(api, "DELETE", "/2/jobs/3", VIEWER)
    assert (resp.status, resp.body["message"]) == (403, "User 'viewer' has no write access.")


def test_write_route_with_a_write_user_runs_the_handler(api: ApiServer) -> None:
    resp = dispatch(api, "POST", "/haven/jobs", ADMIN, body={"opcodes": [1]})
    assert (resp.status, resp.body) == (200, {"submitted": {"opcodes": [1]}, "by": "admin"})


def test_a_handler_may_answer_with_its_own_status(api: ApiServer) -> None:
    resp = dispatch(api, "PUT", "/created")
    assert (resp.status, resp.body) == (201, {"ok": True})


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status", "error"), [
    ("notfound", 404, NotFoundError("Node 'node09' is not part of the cluster; see gnt-node "
                                    "list.")),
    ("exists", 409, ExistsError("Node node02 is already in the cluster; see gnt-node list.")),
    ("prereq", 400, OpPrereqError("Node node02 is the master; move the master role first.")),
    ("fenced", 409, FencedOut("Refused a master write: another node is master now.")),
])
def test_a_haven_error_maps_to_its_http_status_and_json_body(
        api: ApiServer, kind: str, status: int, error: Exception) -> None:
    resp = dispatch(api, "GET", f"/errors/{kind}")
    assert resp.status == status == error.http_status  # type: ignore[attr-defined]
    assert resp.body == error.to_json()  # type: ignore[attr-defined]


def test_an_http_error_keeps_its_explicit_status(api: ApiServer) -> None:
    resp = dispatch(api, "GET", "/errors/teapot")
    assert resp.status == 418
    assert (resp.body["code"], resp.body["message"]) == (418, "This node only brews tea.")


def test_an_unexpected_exception_is_500_without_a_traceback(
        api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    resp = dispatch(api, "GET", "/boom")
    assert resp.status == 500
    assert resp.body["explain"] == "internal_error"
    text = json.dumps(resp.body)
    assert "Traceback" not in text and 'File "' not in text and "line " not in text
    assert "Traceback" in caplog.text, "the traceback goes to the daemon's log instead"


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    (ADMIN, ("admin", True)),
    (VIEWER, ("viewer", False)),
    (basic("admin", "wrong"), (None, False)),
    (basic("nobody", "s3cret"), (None, False)),
    ("Bearer abc", (None, False)),
    ("Basic !!!not-base64", (None, False)),
    ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), (None, False)),
    (None, (None, False)),
])
def test_authenticator_checks_salted_password_hashes(
        api: ApiServer, header: str | None, expected: tuple[str | None, bool]) -> None:
    assert api.auth.check(header) == expected


def test_a_fresh_authenticator_knows_no_user() -> None:
    assert Authenticator().check(ADMIN) == (None, False)


def test_hash_password_is_salted() -> None:
    assert hash_password("pw", "a") != hash_password("pw", "b")
    assert hash_password("pw", "a") == hash_password("pw", "a")


# -- over the wire ---------------------------------------------------------------------------


def call(api: ApiServer, method: str, path: str, body: bytes | None = None,
         auth: str | None = None) -> tuple[int, dict[str, str], Any]:
    host, port = api.address
    conn = http.client.HTTPConnection(str(host), int(port), timeout=5)
    try:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read())
    finally:
        conn.close()


def test_round_trip_read_over_plain_http(api: ApiServer) -> None:
    status, headers, body = call(api, "GET", "/2/info")
    assert (status, body) == (200, {"name": "haven-unit"})
    assert headers["content-type"] == "application/json"


def test_round_trip_write_needs_basic_auth_and_advertises_it(api: ApiServer) -> None:
    status, headers, _ = call(api, "POST", "/haven/jobs", b'{"opcodes": []}')
    assert status == 401
    assert headers["www-authenticate"] == 'Basic realm="Haven Remote API"'
    status, _, body = call(api, "POST", "/haven/jobs", b'{"opcodes": []}', ADMIN)
    assert (status, body) == (200, {"submitted": {"opcodes": []}, "by": "admin"})


def test_round_trip_refuses_a_body_that_is_not_json(api: ApiServer) -> None:
    status, _, body = call(api, "POST", "/haven/jobs", b"{not json", ADMIN)
    assert (status, body["message"]) == (400, "The request body is not valid JSON.")

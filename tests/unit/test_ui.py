"""The dashboard's server side: the change feed, the live stream, the login."""

from __future__ import annotations

import base64
import json
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette

from haven.api import ui

with warnings.catch_warnings():
    # Starlette 1.x would rather drive its test client with httpx2; httpx still works.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


class FakeAuth:
    loaded = True

    def check(self, header: str | None) -> tuple[str | None, bool]:
        ok = "Basic " + base64.b64encode(b"admin:secret").decode()
        ro = "Basic " + base64.b64encode(b"viewer:viewer").decode()
        return {ok: ("admin", True), ro: ("viewer", False)}.get(header or "", (None, False))

    def issue_token(self, user: str, write: bool, ttl: float = 0) -> str:
        return f"tok-{user}-{int(write)}"

    def check_token(self, token: str) -> tuple[str | None, bool]:
        if token.startswith("tok-"):
            _, user, write = token.split("-")
            return user, write == "1"
        return None, False


class FakeHub:
    def __init__(self) -> None:
        self.subs: list[tuple[str, Callable[[str], None]]] = []

    def subscribe(self, prefix: str, fn: Callable[[str], None]) -> None:
        self.subs.append((prefix, fn))

    def fire(self, key: str) -> None:
        for _prefix, fn in self.subs:
            fn(key)


class FakeDaemon:
    def __init__(self, joined: bool = True) -> None:
        self.name = "node01"
        self.api: Any = type("Api", (), {"auth": FakeAuth()})()
        self.hub = FakeHub()
        self.joined: Any = type("Joined", (), {"hub": self.hub})() if joined else None


def client(d: FakeDaemon) -> TestClient:
    return TestClient(Starlette(routes=ui.routes(d)))  # type: ignore[arg-type]


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_feed_names_changed_prefixes_and_job_ids() -> None:
    feed = ui.ChangeFeed()
    hub = FakeHub()
    feed.attach(hub)
    feed.attach(hub)  # once per hub, however often a stream asks
    assert len(hub.subs) == 1
    hub.fire("observed/vm1")
    hub.fire("jobs/000000000042")
    hub.fire("jobs/000000000043")
    assert feed.since(0) == {"seq": 3, "changed": ["jobs", "observed"], "jobs": [42, 43]}
    assert feed.since(2) == {"seq": 3, "changed": ["jobs"], "jobs": [43]}
    hub.fire("")  # a relist after a compaction: anything may have changed
    assert "*" in feed.since(3)["changed"]


def test_feed_wait_returns_at_once_when_something_changed_since() -> None:
    feed = ui.ChangeFeed()
    feed.on_key("nodes/node02")
    assert feed.wait(0, timeout=30) == 1  # no wait: 1 != 0
    threading.Timer(0.05, feed.on_key, ("alive/node02",)).start()
    assert feed.wait(1, timeout=30) == 2


def test_live_stream_says_hello_then_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui, "MAX_STREAM", 0.6)
    monkeypatch.setattr(ui, "PING", 0.2)
    d = FakeDaemon()
    threading.Timer(0.1, d.hub.fire, ("instances/vm1",)).start()
    r = client(d).get("/haven/live")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[0] == ("hello", {"node": "node01", "joined": True, "seq": 0})
    changes = [data for kind, data in events if kind == "change"]
    assert changes and changes[0]["changed"] == ["instances"]
    assert ("ping", {"seq": 1}) in events  # quiet afterwards: the page knows it is alive
    assert events[-1] == ("bye", {"reason": "renew"})  # the page reopens on this node


def test_live_stream_ends_within_a_second_when_its_node_leaves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui, "MAX_STREAM", 30.0)
    d = FakeDaemon()

    def leave() -> None:
        d.joined = None

    threading.Timer(0.2, leave).start()
    events = sse(client(d).get("/haven/live").text)
    assert events[-1] == ("bye", {"reason": "leaving"})  # the page moves to another node


def test_live_stream_of_a_node_outside_any_cluster_ends_after_hello() -> None:
    r = client(FakeDaemon(joined=False)).get("/haven/live")
    assert sse(r.text) == [("hello", {"node": "node01", "joined": False, "seq": 0})]


def test_login_trades_a_password_for_a_token_the_node_recognises() -> None:
    c = client(FakeDaemon())
    r = c.post("/haven/session", json={"user": "admin", "password": "secret"})
    assert r.status_code == 200
    body = r.json()
    assert (body["user"], body["write"], body["token"]) == ("admin", True, "tok-admin-1")
    r = c.get("/haven/session", headers={"Authorization": "Bearer " + body["token"]})
    assert r.json() == {"user": "admin", "write": True, "node": "node01"}
    r = c.post("/haven/session", auth=("viewer", "viewer"))
    assert r.json()["write"] is False


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"user": "admin", "password": "wrong"}, 401, "Wrong user name or password"),
    ({"user": 3}, 400, '{"user": NAME'),
    ([1, 2], 400, '{"user": NAME'),
    ("not json", 400, "not valid JSON"),
])
def test_login_refusals_have_ganeti_error_shape(body: Any, status: int, words: str) -> None:
    c = client(FakeDaemon())
    data = body if isinstance(body, str) else json.dumps(body)
    r = c.post("/haven/session", content=data)
    assert r.status_code == status
    assert set(r.json()) == {"code", "message", "explain"}
    assert words in r.json()["message"]


def test_a_stale_token_is_refused() -> None:
    r = client(FakeDaemon()).get("/haven/session", headers={"Authorization": "Bearer x"})
    assert r.status_code == 401


def test_the_page_is_served_with_its_vendored_terminal() -> None:
    c = client(FakeDaemon())
    r = c.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    assert "<title>Haven</title>" in c.get("/ui/").text
    assert c.get("/ui/vendor/xterm.js").status_code == 200
    assert c.get("/ui/vendor/addon-fit.js").status_code == 200

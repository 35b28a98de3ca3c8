"""A RAPI under test without a server: the real routes of the RAPI v2 modules on an
in-memory store holding a small cluster, a dispatcher that maps errors as the HTTP
boundary does, and a way to run the jobs a request queued."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import haven.master.opcodes  # noqa: F401  (registers the opcodes)
from haven.api import (
    groups_api,
    instances_api,
    nodes_api,
    query_api,
    routes,
    tags_api,
    unsupported,
)
from haven.api.routing import HttpError, Request, Response, Router
from haven.errors import HavenError
from haven.master import jobqueue
from haven.master.lu import MasterContext, lu_class
from haven.model.cluster import Cluster
from haven.model.instance import Disk, Instance, Nic, Observed
from haven.model.keys import Keys
from haven.model.node import Node, NodeFacts
from haven.store import Guard, MemoryStore
from tests.unit.support import NoRpc

NODES = ("node01", "node02", "node03")
CLUSTER_UUID = "5b3c8e4e-7f0b-4b8e-9d7e-0c1a2b3c4d5e"


def dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


class FakeDaemon:
    """What the routes use of a node daemon: its store (and attributes bound at install
    time, never called by these tests)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.joined = None
        self.name = "node01"
        self.instances = object()
        self.replication = object()
        self.migration = object()

    def store(self) -> MemoryStore:
        return self._store


@dataclass
class Rapi:
    store: MemoryStore
    router: Router
    ctx: MasterContext
    feedback: list[str] = field(default_factory=list)

    def call(self, method: str, url: str, body: Any = None, write: bool = True
             ) -> tuple[int, Any]:
        """One request: (status, JSON body), errors mapped as api/http.py maps them."""
        parts = urlsplit(url)
        route, params, other = self.router.match(method, parts.path)
        if route is None:
            return (405 if other else 404), {"code": 404, "message": "no resource",
                                             "explain": "wrong_input"}
        if route.write and not write:
            return 401, {"code": 401, "message": "needs a user", "explain": "wrong_input"}
        req = Request(method, parts.path, parse_qs(parts.query, keep_blank_values=True),
                      body, "admin" if write else None, write, params)
        try:
            result = route.handler(req)
        except HttpError as exc:
            return exc.status, exc.to_json() | {"code": exc.status}
        except HavenError as exc:
            return exc.http_status, exc.to_json()
        if isinstance(result, Response):
            if isinstance(result.body, bytes) and result.content_type == "application/json":
                return result.status, json.loads(result.body)  # pre-encoded, as sent
            return result.status, result.body
        return 200, json.loads(json.dumps(result))

    def ok(self, method: str, url: str, body: Any = None) -> Any:
        status, out = self.call(method, url, body)
        assert status == 200, out
        return out

    def jobs(self) -> list[int]:
        return [j.id for j in jobqueue.list_jobs(self.store)]

    def run_job(self, job_id: int) -> list[Any]:
        """Run every opcode of a queued job in its phases; their results."""
        job, _ = jobqueue.read(self.store, job_id)
        out = []
        for op in job.ops:
            lu = lu_class(op)(self.ctx, op, self.feedback.append)
            lu.check_arguments()
            lu.check_prereq()
            out.append(json.loads(json.dumps(lu.exec())))
        return out


def populate(store: MemoryStore) -> None:
    cluster = Cluster("c1", CLUSTER_UUID, 1.0, 1.0, True, (), "", "")
    store.put(Keys.cluster, dumps(cluster.to_json()))
    for i, name in enumerate(NODES, 1):
        store.put(Keys.node(name), dumps(Node(name, f"u{i}", f"10.0.0.{i}", f"10.0.0.{i}",
                                              5080).to_json()))
        store.put(Keys.alive(name), dumps({"node": name}))
        store.put(Keys.facts(name), dumps(NodeFacts(
            name, 4096, 2048, 512, 4, 10000, 8000, ("kvm",), "tcg", "0", "x86_64", "",
            0.0).to_json()))
    vm1 = Instance("vm1", "u-vm1", "busybox", "kvm", "drbd", "node01", ("node02",),
                   (Disk("d0", 0, 1024, "x/disk0"),), (Nic(0, "aa:00:00:00:00:01"),),
                   beparams={"memory": 256, "maxmem": 256, "minmem": 256, "vcpus": 2,
                             "auto_balance": True}, admin_state="up")
    store.put(Keys.instance("vm1"), dumps(vm1.to_json()))
    store.put(Keys.observed("vm1"), dumps(Observed("vm1", "node01", "running", 42,
                                                   1).to_json()))
    # A record written before tags (and filled beparams) existed.
    old = Instance("vm2", "u-vm2", "busybox", "kvm", "file", "node02",
                   disks=(Disk("d1", 0, 512, "y/disk0"),),
                   beparams={"memory": 128}).to_json()
    del old["tags"]
    store.put(Keys.instance("vm2"), dumps(old))


@pytest.fixture(name="rapi")
def rapi_fixture() -> Iterator[Rapi]:
    store = MemoryStore("/haven/c1/")
    assert store.create(Keys.master, b'{"node": "node01"}') is not None
    token = store.get(Keys.master).create_revision  # type: ignore[union-attr]
    populate(store)
    d: Any = FakeDaemon(store)
    r = Router()
    r.add("GET", "/2/features", lambda _q: list(routes.FEATURES))
    r.add("GET", "/2/info", lambda _q: routes.info(d))
    for mod in (nodes_api, instances_api, groups_api, tags_api, query_api):
        mod.install(r, d)
    unsupported.install(r)
    ctx = MasterContext(store=store, guard=lambda: Guard(Keys.master, token),
                        master_node="node01", rpc=NoRpc())
    yield Rapi(store, r, ctx)
    store.close()

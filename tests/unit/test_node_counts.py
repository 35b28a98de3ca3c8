"""``/2/nodes`` counts each node's instances: primary for, and drbd secondary of."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from haven.api import nodes_api
from haven.api.http import Request
from haven.model.instance import Disk, Instance
from haven.model.keys import Keys
from haven.model.node import Node
from haven.store import MemoryStore

NODES = ("node01", "node02", "node03")


class FakeDaemon:
    """The one thing the node routes read from a daemon: its store."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def store(self) -> MemoryStore:
        return self._store


def dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def add_instance(store: MemoryStore, name: str, template: str, primary: str,
                 secondaries: tuple[str, ...] = ()) -> None:
    inst = Instance(name, f"u-{name}", "busybox", "kvm", template, primary, secondaries,
                    (Disk("d0", 0, 64, f"{name}/disk0"),), admin_state="up")
    store.put(Keys.instance(name), dumps(inst.to_json()))


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    store = MemoryStore("/haven/nodes/")
    for i, name in enumerate(NODES, 1):
        store.put(Keys.node(name), dumps(Node(name, f"u{i}", f"10.0.0.{i}", f"10.0.0.{i}",
                                              5080).to_json()))
    add_instance(store, "vm1", "drbd", "node01", ("node02",))
    add_instance(store, "vm2", "drbd", "node02", ("node01",))
    add_instance(store, "vm3", "drbd", "node01", ("node02",))
    add_instance(store, "vm4", "file", "node03")
    yield FakeDaemon(store)
    store.close()


def bulk() -> Request:
    return Request("GET", "/2/nodes", {"bulk": ["1"]}, None, None, False)


def test_bulk_nodes_count_primary_and_secondary_instances(daemon: FakeDaemon) -> None:
    views = {v["name"]: v for v in nodes_api.list_nodes(daemon, bulk())}  # type: ignore[arg-type]
    got = {n: (v["pinst_cnt"], v["sinst_cnt"], v["pinst_list"], v["sinst_list"])
           for n, v in views.items()}
    assert got == {
        "node01": (2, 1, ["vm1", "vm3"], ["vm2"]),
        "node02": (1, 2, ["vm2"], ["vm1", "vm3"]),
        "node03": (1, 0, ["vm4"], []),
    }


def test_one_node_lists_its_instances(daemon: FakeDaemon) -> None:
    v = nodes_api.one_node(daemon, "node02")  # type: ignore[arg-type]
    assert (v["pinst_cnt"], v["sinst_cnt"]) == (1, 2)
    assert v["pinst_list"] == ["vm2"] and v["sinst_list"] == ["vm1", "vm3"]

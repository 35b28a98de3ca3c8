"""Typed reads of cluster objects from the store, with the errors users see."""

from __future__ import annotations

import json
from typing import Any

from haven.errors import NotClusterError, NotFoundError
from haven.model.cluster import Cluster
from haven.model.instance import Instance, Observed
from haven.model.keys import ALIVE, FACTS, INSTANCES, MASTER, NODES, OBSERVED, Keys
from haven.model.node import Node, NodeFacts
from haven.store.base import Store


def cluster_rev(store: Store) -> tuple[Cluster, int]:
    kv = store.get(Keys.cluster)
    if kv is None:
        raise NotClusterError("This cluster has no configuration in etcd; was it "
                              "destroyed? Initialise one with gnt-cluster init.")
    return Cluster.from_json(json.loads(kv.value)), kv.mod_revision


def cluster(store: Store) -> Cluster:
    return cluster_rev(store)[0]


def node_rev(store: Store, name: str) -> tuple[Node, int]:
    kv = store.get(Keys.node(name))
    if kv is None:
        raise NotFoundError(f"Node {name!r} is not part of the cluster; see gnt-node list.")
    return Node.from_json(json.loads(kv.value)), kv.mod_revision


def node(store: Store, name: str) -> Node:
    return node_rev(store, name)[0]


def nodes(store: Store) -> list[Node]:
    kvs, _ = store.list(NODES)
    return [Node.from_json(json.loads(kv.value)) for kv in kvs]


def facts(store: Store) -> dict[str, NodeFacts]:
    kvs, _ = store.list(FACTS)
    out = {}
    for kv in kvs:
        f = NodeFacts.from_json(json.loads(kv.value))
        out[f.name] = f
    return out


def observed(store: Store, name: str) -> Observed | None:
    """What the agent of the node running instance ``name`` last reported (None if
    nothing runs it)."""
    kv = store.get(Keys.observed(name))
    return Observed.from_json(json.loads(kv.value)) if kv else None


def instances(store: Store) -> dict[str, Instance]:
    """Every instance, by name."""
    kvs, _ = store.list(INSTANCES)
    return {i.name: i for i in (Instance.from_json(json.loads(kv.value)) for kv in kvs)}


def all_observed(store: Store) -> dict[str, Observed]:
    """What the agents last reported of every instance, by name."""
    kvs, _ = store.list(OBSERVED)
    return {o.name: o for o in (Observed.from_json(json.loads(kv.value)) for kv in kvs)}


def alive(store: Store) -> dict[str, dict[str, Any]]:
    kvs, _ = store.list(ALIVE)
    return {kv.key[len(ALIVE):]: json.loads(kv.value) for kv in kvs}


def master(store: Store) -> str | None:
    kv = store.get(MASTER)
    if kv is None:
        return None
    return str(json.loads(kv.value).get("node"))


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

"""``GET /2/instances?bulk=1`` fast: each instance's view is built and encoded once per
change of what it shows, and reused, as bytes, until then.

What Ganeti Web Manager, htools and the dashboard poll is the whole list, and nearly
all of it is the same from one poll to the next.  The store is still read on every
request (four range reads: instances, their observed states, replica states, HA
records, plus the live nodes), so an answer is never staler than a plain read; what is
saved is decoding each record and building and encoding its view (about 0.3 ms per
instance here), which is redone only for an instance whose records' ``mod_revision``,
or whose primary node's liveness, changed.

The cache is per store client (a daemon that joins another cluster starts afresh) and
bounded by the instances that exist (entries of removed instances are dropped).
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import TYPE_CHECKING, Any

from haven.master import state
from haven.model import ha
from haven.model.instance import Instance, Observed
from haven.model.keys import INSTANCES, OBSERVED, REPLICAS
from haven.model.replica import Replicas
from haven.store.base import KeyValue, Store

if TYPE_CHECKING:
    from haven.api.node import NodeContext

# (instance revision, observed, replicas, HA record revisions, primary alive, offline)
_Sig = tuple[int, int, int, int, bool, bool]


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.decoded: dict[str, tuple[int, Instance]] = {}
        self.views: dict[str, tuple[_Sig, bytes]] = {}


_caches: weakref.WeakKeyDictionary[Store, _Cache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache_of(store: Store) -> _Cache:
    with _caches_lock:
        c = _caches.get(store)
        if c is None:
            c = _caches[store] = _Cache()
        return c


def _by_name(kvs: list[KeyValue], prefix: str) -> dict[str, KeyValue]:
    return {kv.key[len(prefix):]: kv for kv in kvs}


def bulk_json(d: NodeContext) -> bytes:
    """The bulk instance list, encoded as RAPI's JSON array."""
    from haven.api.instances_api import instance_view

    store = d.store()
    ikvs, _ = store.list(INSTANCES)
    obs = _by_name(store.list(OBSERVED)[0], OBSERVED)
    reps = _by_name(store.list(REPLICAS)[0], REPLICAS)
    recs = _by_name(store.list(ha.HA_INSTANCES)[0], ha.HA_INSTANCES)
    alive = set(state.alive(store))
    offline = {n.name for n in state.nodes(store) if n.offline}
    cache = _cache_of(store)
    parts: list[bytes] = []
    seen: set[str] = set()
    for kv in ikvs:
        name = kv.key[len(INSTANCES):]
        seen.add(name)
        with cache.lock:
            hit = cache.decoded.get(name)
        if hit is not None and hit[0] == kv.mod_revision:
            inst = hit[1]
        else:
            inst = Instance.from_json(json.loads(kv.value))
            with cache.lock:
                cache.decoded[name] = (kv.mod_revision, inst)
        o, r, h = obs.get(name), reps.get(name), recs.get(name)
        sig: _Sig = (kv.mod_revision, o.mod_revision if o else 0,
                     r.mod_revision if r else 0, h.mod_revision if h else 0,
                     inst.primary_node in alive, inst.primary_node in offline)
        with cache.lock:
            view = cache.views.get(name)
        if view is None or view[0] != sig:
            fragment = json.dumps(instance_view(
                inst, Observed.from_json(json.loads(o.value)) if o else None, alive,
                offline, Replicas.from_json(json.loads(r.value)) if r else None,
                ha.InstanceHA.from_json(json.loads(h.value)) if h else None)).encode()
            with cache.lock:
                cache.views[name] = (sig, fragment)
        else:
            fragment = view[1]
        parts.append(fragment)
    with cache.lock:
        for gone in set(cache.views) - seen:
            cache.views.pop(gone, None)
        for gone in set(cache.decoded) - seen:
            cache.decoded.pop(gone, None)
    return b"[" + b",".join(parts) + b"]"


def bulk(d: NodeContext) -> list[dict[str, Any]]:
    """The same list decoded (for callers that filter or reshape it)."""
    result: list[dict[str, Any]] = json.loads(bulk_json(d))
    return result

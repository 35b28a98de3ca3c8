"""The bulk instance list reuses each instance's encoded view until what it shows
changes, and then shows the change on the very next request."""

from __future__ import annotations

import json
from typing import Any

from haven.api import instance_list
from haven.api.instances_api import instance_view
from haven.master import state
from haven.model.instance import Instance, Observed
from haven.model.keys import Keys
from tests.unit.rapi_fake import Rapi, dumps, rapi_fixture  # noqa: F401


def by_name(rapi: Rapi) -> dict[str, Any]:
    return {i["name"]: i for i in rapi.ok("GET", "/2/instances?bulk=1")}


def test_the_cached_list_equals_a_fresh_build(rapi: Rapi) -> None:
    by_name(rapi)  # fills the cache
    cached = by_name(rapi)
    store = rapi.store
    alive = set(state.alive(store))
    for name in ("vm1", "vm2"):
        inst = Instance.from_json(json.loads(store.get(Keys.instance(name)).value))  # type: ignore[union-attr]
        okv = store.get(Keys.observed(name))
        obs = Observed.from_json(json.loads(okv.value)) if okv else None
        fresh = json.loads(json.dumps(instance_view(inst, obs, alive, set())))
        assert cached[name] == fresh


def test_a_change_shows_on_the_next_request(rapi: Rapi) -> None:
    assert by_name(rapi)["vm1"]["status"] == "running"
    store = rapi.store
    # Its observed state changes (the agent saw it stop).
    store.put(Keys.observed("vm1"), dumps(Observed("vm1", "node01", "stopped", 0,
                                                   1).to_json()))
    assert by_name(rapi)["vm1"]["status"] == "ERROR_down"
    # Its primary's lease goes: nothing of vm1 changed, but what it shows does.
    store.put(Keys.observed("vm1"), dumps(Observed("vm1", "node01", "running", 42,
                                                   1).to_json()))
    assert by_name(rapi)["vm1"]["status"] == "running"
    store.delete(Keys.alive("node01"))
    assert by_name(rapi)["vm1"]["status"] == "ERROR_nodedown"
    # Its record changes (a tag).
    inst = json.loads(store.get(Keys.instance("vm2")).value)  # type: ignore[union-attr]
    inst["tags"] = ["web"]
    store.put(Keys.instance("vm2"), json.dumps(inst).encode())
    assert by_name(rapi)["vm2"]["tags"] == ["web"]


def test_a_removed_instance_leaves_the_list_and_the_cache(rapi: Rapi) -> None:
    by_name(rapi)
    rapi.store.delete(Keys.instance("vm2"))
    assert set(by_name(rapi)) == {"vm1"}
    cache = instance_list._cache_of(rapi.store)
    assert set(cache.views) == {"vm1"} and set(cache.decoded) == {"vm1"}


def test_an_unchanged_instance_is_not_rebuilt(rapi: Rapi, monkeypatch: Any) -> None:
    by_name(rapi)
    calls: list[str] = []
    real = instance_view

    def counting(inst: Instance, *args: Any, **kw: Any) -> dict[str, Any]:
        calls.append(inst.name)
        return real(inst, *args, **kw)

    monkeypatch.setattr("haven.api.instances_api.instance_view", counting)
    by_name(rapi)
    assert calls == []
    rapi.store.put(Keys.observed("vm2"), dumps(Observed("vm2", "node02", "running", 7,
                                                        1).to_json()))
    by_name(rapi)
    assert calls == ["vm2"]

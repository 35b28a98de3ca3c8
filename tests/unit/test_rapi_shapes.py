"""RAPI v2 as htools and Ganeti's client read it: every field htools' RAPI backend
(HTools/Backend/Rapi.hs) extracts, with the JSON type it parses, and the default node
group."""

from __future__ import annotations

import json
import uuid

import pytest

from haven.master.opcodes.query import group_uuid
from haven.model.keys import Keys
from haven.model.node import Node
from tests.unit.rapi_fake import CLUSTER_UUID, Rapi, rapi_fixture  # noqa: F401

ISPEC_KEYS = {"memory-size", "cpu-count", "disk-count", "disk-size", "nic-count",
              "spindle-use"}


def check_ipolicy(pol: dict[str, object]) -> None:
    """Complete as htools' IPolicy JSON requires, with numbers where it reads numbers."""
    assert set(pol) >= {"minmax", "std", "disk-templates", "vcpu-ratio", "spindle-ratio"}
    minmax = pol["minmax"]
    assert isinstance(minmax, list) and minmax
    for mm in minmax:
        assert set(mm["min"]) == ISPEC_KEYS and set(mm["max"]) == ISPEC_KEYS
        assert all(mm["min"][k] <= mm["max"][k] for k in ISPEC_KEYS)
    assert set(pol["std"]) == ISPEC_KEYS  # type: ignore[arg-type]
    assert isinstance(pol["vcpu-ratio"], float) and isinstance(pol["spindle-ratio"], float)
    assert "drbd" in pol["disk-templates"]  # type: ignore[operator]


def test_features_announce_what_the_ganeti_client_checks(rapi: Rapi) -> None:
    assert set(rapi.ok("GET", "/2/features")) == {
        "instance-create-reqv1", "instance-reinstall-reqv1", "node-migrate-reqv1",
        "node-evac-res1"}


def test_groups_bulk_have_the_fields_htools_read(rapi: Rapi) -> None:
    groups = rapi.ok("GET", "/2/groups?bulk=1")
    assert len(groups) == 1
    g = groups[0]
    assert g["name"] == "default" and g["alloc_policy"] == "preferred"
    assert g["uuid"] == group_uuid(CLUSTER_UUID)
    uuid.UUID(g["uuid"])
    assert g["tags"] == [] and g["node_cnt"] == 3
    assert g["node_list"] == ["node01", "node02", "node03"]
    check_ipolicy(g["ipolicy"])


def test_group_uuid_is_stable_and_per_cluster() -> None:
    assert group_uuid(CLUSTER_UUID) == group_uuid(CLUSTER_UUID)
    assert group_uuid(CLUSTER_UUID) != group_uuid(str(uuid.uuid4()))
    uuid.UUID(group_uuid("not-a-uuid"))


def test_groups_list_and_one_group(rapi: Rapi) -> None:
    assert rapi.ok("GET", "/2/groups") == [{"name": "default", "uri": "/2/groups/default"}]
    assert rapi.ok("GET", "/2/groups/default")["name"] == "default"
    status, err = rapi.call("GET", "/2/groups/other")
    assert status == 404 and "other" in err["message"]
    assert set(err) >= {"code", "message", "explain"}


def test_group_changes_are_refused_with_501_and_nothing_queued(rapi: Rapi) -> None:
    for method, url in (("POST", "/2/groups"), ("PUT", "/2/groups/default/rename"),
                        ("DELETE", "/2/groups/default"),
                        ("PUT", "/2/groups/default/assign-nodes")):
        status, err = rapi.call(method, url, {"name": "g2"})
        assert status == 501, (method, url)
        assert err["code"] == 501 and "one node group" in err["message"]
    assert rapi.jobs() == []


def test_nodes_bulk_have_the_fields_htools_read(rapi: Rapi) -> None:
    nodes = {n["name"]: n for n in rapi.ok("GET", "/2/nodes?bulk=1")}
    assert sorted(nodes) == ["node01", "node02", "node03"]
    guuid = group_uuid(CLUSTER_UUID)
    for n in nodes.values():
        assert n["offline"] is False and n["drained"] is False and n["vm_capable"] is True
        assert n["group.uuid"] == guuid and n["group"] == "default"
        assert n["mtotal"] == 4096 and n["mnode"] == 512 and n["mfree"] == 2048
        assert n["dtotal"] == 10000 and n["dfree"] == 8000
        assert n["ctotal"] == 4 and isinstance(n["cnos"], int)
        assert n["spfree"] == 0 and isinstance(n["sptotal"], int)
        assert n["ndparams"]["exclusive_storage"] is False
        assert isinstance(n["ndparams"]["spindle_count"], int)
        assert n["tags"] == []
    assert nodes["node01"]["pinst_list"] == ["vm1"]
    assert nodes["node02"]["sinst_list"] == ["vm1"]


def test_instances_bulk_have_the_fields_htools_read(rapi: Rapi) -> None:
    insts = {i["name"]: i for i in rapi.ok("GET", "/2/instances?bulk=1")}
    vm1, vm2 = insts["vm1"], insts["vm2"]
    assert vm1["status"] == "running" and vm1["oper_ram"] == 256
    assert vm1["disk_usage"] == 1024 and vm1["disk.sizes"] == [1024]
    assert vm1["disk.spindles"] == [None]
    assert vm1["pnode"] == "node01" and vm1["snodes"] == ["node02"]
    assert vm1["disk_template"] == "drbd" and vm1["tags"] == []
    be = vm1["beparams"]
    assert be["vcpus"] == 2 and be["auto_balance"] is True and be["spindle_use"] == 1
    assert be["memory"] == 256
    # A stopped instance: htools fall back to beparams' memory, which must be there.
    assert vm2["status"] == "ADMIN_down" and vm2["oper_ram"] is None
    assert vm2["beparams"]["memory"] == 128 and vm2["beparams"]["vcpus"] == 1
    assert vm2["beparams"]["auto_balance"] is True


def test_info_has_master_tags_full_ipolicy_and_hypervisor(rapi: Rapi) -> None:
    info = rapi.ok("GET", "/2/info")
    assert info["master"] == "node01" and info["tags"] == []
    assert info["default_hypervisor"] == "kvm"
    check_ipolicy(info["ipolicy"])
    assert info["ndparams"]["exclusive_storage"] is False


@pytest.mark.parametrize("kind", ["node", "instance"])
def test_records_without_tags_read_as_untagged(rapi: Rapi, kind: str) -> None:
    if kind == "node":
        raw = Node("node09", "u9", "10.0.0.9", "10.0.0.9", 5080).to_json()
        del raw["tags"]
        rapi.store.put(Keys.node("node09"), json.dumps(raw).encode())
        assert rapi.ok("GET", "/2/nodes/node09")["tags"] == []
    else:
        assert rapi.ok("GET", "/2/instances/vm2")["tags"] == []
        assert rapi.ok("GET", "/2/instances/vm2/tags") == []


@pytest.mark.parametrize("method, url", [
    ("POST", "/2/instances-multi-alloc"), ("PUT", "/2/instances/vm1/export"),
    ("POST", "/2/nodes/node01/powercycle"), ("GET", "/2/nodes/node01/storage"),
    ("PUT", "/2/modify"), ("GET", "/2/filters"),
])
def test_what_haven_lacks_is_501_in_ganeti_shape(rapi: Rapi, method: str, url: str
                                                 ) -> None:
    status, err = rapi.call(method, url, {})
    assert status == 501 and err["message"].startswith("Haven cannot"), err
    assert set(err) >= {"code", "message", "explain"}
    assert rapi.jobs() == []


def test_networks_are_an_empty_list(rapi: Rapi) -> None:
    assert rapi.ok("GET", "/2/networks") == []
    assert rapi.call("GET", "/2/networks/net1")[0] == 404

"""``/2/query/*``, ``/2/instances/NAME/info`` (a job whose result is Ganeti's instance
data) and node migrate/evacuate (jobs that submit one job per instance)."""

from __future__ import annotations

from typing import Any

import pytest

from haven.master import jobqueue
from haven.master.opcodes.query import group_uuid
from haven.model.instance import Disk, Instance
from haven.model.keys import Keys
from tests.unit.rapi_fake import CLUSTER_UUID, Rapi, dumps, rapi_fixture  # noqa: F401


def test_get_query_returns_ganeti_query_response(rapi: Rapi) -> None:
    out = rapi.ok("GET", "/2/query/instance?fields=name,status,oper_ram,be/vcpus")
    assert [f["name"] for f in out["fields"]] == ["name", "status", "oper_ram", "be/vcpus"]
    assert {f["name"]: f["kind"] for f in out["fields"]}["oper_ram"] == "number"
    assert all(set(f) == {"name", "title", "kind", "doc"} for f in out["fields"])
    rows = {r[0][1]: r for r in out["data"]}
    assert rows["vm1"] == [[0, "vm1"], [0, "running"], [0, 256], [0, 2]]
    assert rows["vm2"][2] == [2, None]  # no live data for a stopped instance


@pytest.mark.parametrize("qfilter, names", [
    (["=", "status", "running"], ["vm1"]),
    (["!", ["=", "status", "running"]], ["vm2"]),
    (["|", ["=", "name", "vm1"], ["=", "pnode", "node02"]], ["vm1", "vm2"]),
    (["&", [">=", "disk_usage", 600], ["=~", "name", "^vm"]], ["vm1"]),
    (["=[]", "snodes", "node02"], ["vm1"]),
    (["?", "snodes"], ["vm1"]),
    (None, ["vm1", "vm2"]),
])
def test_put_query_filters(rapi: Rapi, qfilter: Any, names: list[str]) -> None:
    body: dict[str, Any] = {"fields": ["name"]}
    if qfilter is not None:
        body["qfilter"] = qfilter
    out = rapi.ok("PUT", "/2/query/instance", body)
    assert sorted(r[0][1] for r in out["data"]) == names


def test_query_nodes_groups_and_jobs(rapi: Rapi) -> None:
    nodes = rapi.ok("GET", "/2/query/node?fields=name,group.uuid,mfree")
    assert len(nodes["data"]) == 3
    assert nodes["data"][0][1] == [0, group_uuid(CLUSTER_UUID)]
    groups = rapi.ok("PUT", "/2/query/group", {"fields": ["name", "alloc_policy"]})
    assert groups["data"] == [[[0, "default"], [0, "preferred"]]]
    job = rapi.ok("PUT", "/2/tags?tag=x")
    jobs = rapi.ok("GET", "/2/query/job?fields=id,status")
    assert jobs["data"] == [[[0, job], [0, "queued"]]]
    fields = rapi.ok("GET", "/2/query/node/fields")
    assert "mfree" in [f["name"] for f in fields["fields"]]


@pytest.mark.parametrize("method, url, body, words", [
    ("GET", "/2/query/instance?fields=name,bogus", None, "Unknown field(s) bogus"),
    ("GET", "/2/query/instance", None, "fields"),
    ("PUT", "/2/query/instance", {"fields": []}, "non-empty"),
    ("PUT", "/2/query/instance", {"fields": ["name"], "qfilter": ["~~", "name", "x"]},
     "operator '~~'"),
    ("PUT", "/2/query/instance", {"fields": ["name"], "qfilter": ["=", "nope", 1]},
     "Unknown field 'nope'"),
    ("PUT", "/2/query/instance", {"fields": ["name"], "qfilter": "name"}, "Invalid"),
    ("GET", "/2/query/network?fields=name", None, "no network resource"),
    ("GET", "/2/query/widgets?fields=name", None, "Unknown query resource"),
])
def test_bad_queries_are_400(rapi: Rapi, method: str, url: str, body: Any,
                             words: str) -> None:
    status, err = rapi.call(method, url, body)
    assert status == 400 and words in err["message"], err
    assert set(err) >= {"code", "message", "explain"}


def test_instance_info_is_a_job_with_ganeti_instance_data(rapi: Rapi) -> None:
    job_id = rapi.ok("GET", "/2/instances/vm1/info")
    job, _ = jobqueue.read(rapi.store, job_id)
    assert job.ops[0]["OP_ID"] == "OP_INSTANCE_QUERY_DATA"
    (result,) = rapi.run_job(job_id)
    info = result["vm1"]
    assert info["name"] == "vm1" and info["run_state"] == "up"
    assert info["config_state"] == "up" and info["pnode"] == "node01"
    assert info["snodes"] == ["node02"] and info["os"] == "busybox"
    assert info["pnode_group_uuid"] == group_uuid(CLUSTER_UUID)
    assert info["disks"][0]["size"] == 1024 and info["disks"][0]["iv_name"] == "disk/0"
    assert info["disks"][0]["drbd_info"]["secondary_node"] == "node02"
    assert info["nics"][0][3] == "aa:00:00:00:00:01"
    assert info["be_actual"]["vcpus"] == 2


def test_instance_info_static_has_no_run_state(rapi: Rapi) -> None:
    (result,) = rapi.run_job(rapi.ok("GET", "/2/instances/vm2/info?static=1"))
    assert result["vm2"]["run_state"] is None


def test_instance_info_of_an_unknown_instance_is_404_and_queues_nothing(
        rapi: Rapi) -> None:
    status, err = rapi.call("GET", "/2/instances/nope/info")
    assert status == 404 and "nope" in err["message"]
    assert rapi.jobs() == []


def add_stopped_file_instance(rapi: Rapi) -> None:
    inst = Instance("vm3", "u-vm3", "busybox", "kvm", "file", "node01",
                    disks=(Disk("d3", 0, 256, "z/disk0"),), beparams={"memory": 128})
    rapi.store.put(Keys.instance("vm3"), dumps(inst.to_json()))


def test_node_migrate_submits_one_migration_per_running_primary(rapi: Rapi) -> None:
    add_stopped_file_instance(rapi)
    job_id = rapi.ok("POST", "/2/nodes/node01/migrate", {"mode": "live"})
    (result,) = rapi.run_job(job_id)
    assert len(result["jobs"]) == 1
    ok, child = result["jobs"][0]
    assert ok is True
    child_job, _ = jobqueue.read(rapi.store, child)
    assert child_job.ops[0]["OP_ID"] == "OP_INSTANCE_MIGRATE"
    assert child_job.ops[0]["instance_name"] == "vm1"
    assert child_job.ops[0]["mode"] == "live"


def test_node_evacuate_moves_primaries_and_secondaries(rapi: Rapi) -> None:
    add_stopped_file_instance(rapi)
    (result,) = rapi.run_job(rapi.ok("POST", "/2/nodes/node01/evacuate",
                                     {"mode": "primary-only"}))
    ops = {jobqueue.read(rapi.store, j)[0].ops[0]["instance_name"]:
           jobqueue.read(rapi.store, j)[0].ops[0]["OP_ID"] for _ok, j in result["jobs"]}
    assert ops == {"vm1": "OP_INSTANCE_MIGRATE", "vm3": "OP_INSTANCE_MOVE"}
    (sec,) = rapi.run_job(rapi.ok("POST", "/2/nodes/node02/evacuate",
                                  {"mode": "secondary-only"}))
    (child,) = [j for _ok, j in sec["jobs"]]
    op = jobqueue.read(rapi.store, child)[0].ops[0]
    assert op["OP_ID"] == "OP_INSTANCE_REPLACE_DISKS"
    assert op["mode"] == "replace_new_secondary" and op["remote_node"] == "node03"


@pytest.mark.parametrize("url, body, status", [
    ("/2/nodes/node09/migrate", {}, 404),
    ("/2/nodes/node09/evacuate", {}, 404),
    ("/2/nodes/node01/evacuate", {"mode": "sideways"}, 400),
    ("/2/nodes/node01/migrate", {"mode": "teleport"}, 400),
    ("/2/nodes/node01/migrate", {"colour": "red"}, 400),
    ("/2/nodes/node01/evacuate?dry_run=1", {}, 501),
])
def test_bad_node_moves_are_refused_and_queue_nothing(rapi: Rapi, url: str,
                                                      body: dict[str, Any],
                                                      status: int) -> None:
    code, err = rapi.call("POST", url, body)
    assert code == status, err
    assert rapi.jobs() == []

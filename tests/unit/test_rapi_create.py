"""Version-1 instance creation and reinstall bodies as Ganeti's client sends them, mapped
onto Haven's opcodes; what Haven cannot do is refused before anything is queued."""

from __future__ import annotations

from typing import Any

import pytest

from haven.api.http import HttpError
from haven.api.rapi_create import create_ops, reinstall_ops
from haven.errors import InvalidInput
from haven.master import jobqueue
from haven.master.lu import check_job
from tests.unit.rapi_fake import Rapi, rapi_fixture  # noqa: F401

# What GanetiRapiClient.CreateInstance("create", "vm3", "drbd", [{"size": 1024}],
# [{}], os="busybox", pnode=..., beparams=..., start=False) sends.
CLIENT_BODY: dict[str, Any] = {
    "__version__": 1, "mode": "create", "name": "vm3", "disk_template": "drbd",
    "disks": [{"size": 1024, "mode": "rw"}], "nics": [{}], "os": "busybox",
    "pnode": "node01", "snode": "node02", "beparams": {"memory": 128, "vcpus": 1},
    "hvparams": {}, "start": False, "ip_check": False, "name_check": False,
    "identify_defaults": False, "src_node": None, "tags": ["web", "env:prod"],
}


def test_ganeti_names_are_renamed_and_the_job_checks() -> None:
    ops = create_ops(CLIENT_BODY, ("file", "drbd"))
    create = ops[0]
    assert create["OP_ID"] == "OP_INSTANCE_CREATE"
    assert create["instance_name"] == "vm3" and create["os_type"] == "busybox"
    assert "os" not in create and "name" not in create and "mode" not in create
    assert "identify_defaults" not in create and "src_node" not in create
    assert ops[1] == {"OP_ID": "OP_TAGS_SET", "kind": "instance", "name": "vm3",
                      "tags": ["web", "env:prod"]}
    checked = check_job(ops)  # what submission runs: Haven's opcodes accept it
    assert checked[0]["disks"] == [{"size": 1024, "mode": "rw"}]


def test_the_route_queues_one_job_with_both_opcodes(rapi: Rapi) -> None:
    job_id = rapi.ok("POST", "/2/instances", CLIENT_BODY)
    job, _ = jobqueue.read(rapi.store, job_id)
    assert [op["OP_ID"] for op in job.ops] == ["OP_INSTANCE_CREATE", "OP_TAGS_SET"]


@pytest.mark.parametrize("change, words", [
    ({"__version__": 0}, "version 0"),
    ({"__version__": 2}, "version 2"),
    ({"mode": "import"}, "'import' is not supported"),
    ({"group_name": "other"}, "Node group 'other'"),
    ({"src_node": "node03"}, "src_node"),
    ({"source_x509_ca": "pem"}, "source_x509_ca"),
    ({"disk_template": "plain"}, "'plain' is not enabled"),
    ({"os_type": "debian"}, "only one of 'os' and 'os_type'"),
    ({"beparams": {"frobnicate": 1}}, "frobnicate"),
])
def test_bad_bodies_are_refused_with_400_and_nothing_queued(
        rapi: Rapi, change: dict[str, Any], words: str) -> None:
    status, err = rapi.call("POST", "/2/instances", {**CLIENT_BODY, **change})
    assert status == 400, err
    assert words in err["message"]
    assert set(err) >= {"code", "message", "explain"}
    assert rapi.jobs() == []


def test_a_body_that_is_not_an_object_is_refused(rapi: Rapi) -> None:
    status, err = rapi.call("POST", "/2/instances", ["vm3"])
    assert status == 400 and "JSON object" in err["message"]
    assert rapi.jobs() == []


def test_dry_run_is_refused_rather_than_done(rapi: Rapi) -> None:
    status, err = rapi.call("POST", "/2/instances?dry_run=1", CLIENT_BODY)
    assert status == 501 and "Dry runs" in err["message"]
    assert rapi.jobs() == []


def test_group_default_and_no_tags_give_one_opcode() -> None:
    body = {**CLIENT_BODY, "group_name": "default"}
    del body["tags"]
    assert [op["OP_ID"] for op in create_ops(body)] == ["OP_INSTANCE_CREATE"]


def test_bad_tags_are_refused_at_submission() -> None:
    with pytest.raises(InvalidInput, match="invalid characters"):
        check_job(create_ops({**CLIENT_BODY, "tags": ["no spaces"]}))


def test_reinstall_body_version_1_shuts_down_reinstalls_and_starts() -> None:
    ops = reinstall_ops("vm1", {"os": "busybox", "start": True}, None, False)
    assert [op["OP_ID"] for op in ops] == ["OP_INSTANCE_SHUTDOWN", "OP_INSTANCE_REINSTALL",
                                          "OP_INSTANCE_STARTUP"]
    assert ops[1]["os_type"] == "busybox"
    check_job(ops)
    no_start = reinstall_ops("vm1", {"start": False}, None, False)
    assert [op["OP_ID"] for op in no_start] == ["OP_INSTANCE_SHUTDOWN",
                                               "OP_INSTANCE_REINSTALL"]
    legacy = reinstall_ops("vm1", None, "busybox", True)
    assert len(legacy) == 2 and legacy[1]["os_type"] == "busybox"


def test_reinstall_refuses_mixed_or_unknown_parameters() -> None:
    with pytest.raises(HttpError, match="combine"):
        reinstall_ops("vm1", {"os": "busybox"}, "busybox", False)
    with pytest.raises(HttpError, match="color"):
        reinstall_ops("vm1", {"color": "red"}, None, False)


def test_reinstall_of_an_unknown_instance_is_404(rapi: Rapi) -> None:
    status, _ = rapi.call("POST", "/2/instances/nope/reinstall", {"start": False})
    assert status == 404
    assert rapi.jobs() == []


@pytest.mark.parametrize("method, path", [
    ("DELETE", ""), ("PUT", "/startup"), ("PUT", "/shutdown"), ("POST", "/reboot"),
    ("PUT", "/modify"), ("PUT", "/rename"), ("PUT", "/failover"), ("PUT", "/migrate"),
    ("PUT", "/activate-disks"), ("PUT", "/deactivate-disks"),
    ("POST", "/replace-disks"), ("POST", "/disk/0/grow"),
])
def test_jobs_for_an_unknown_instance_are_404_and_not_queued(rapi: Rapi, method: str,
                                                             path: str) -> None:
    status, err = rapi.call(method, f"/2/instances/nope{path}", {})
    assert status == 404 and "'nope' does not exist" in err["message"], err
    assert rapi.jobs() == []


def test_instance_migrate_is_queued_for_a_known_instance(rapi: Rapi) -> None:
    job_id = rapi.ok("PUT", "/2/instances/vm1/migrate", {"mode": "live"})
    job, _ = jobqueue.read(rapi.store, job_id)
    assert job.ops[0]["OP_ID"] == "OP_INSTANCE_MIGRATE" and job.ops[0]["mode"] == "live"


def test_nics_and_disks_in_ganeti_terms() -> None:
    (op,) = create_ops({**CLIENT_BODY, "tags": [],
                        "nics": [{"link": "br0"}, {"mode": "user", "mac": "generate",
                                                   "ip": None}],
                        "disks": [{"size": 512, "name": "root", "vg": "xenvg",
                                   "spindles": None}]})
    assert op["nics"] == [{"link": "br0", "mode": "bridged"},
                          {"mode": "user", "mac": "generate"}]
    assert op["disks"] == [{"size": 512}]
    check_job([op])
    with pytest.raises(HttpError, match="network"):
        create_ops({**CLIENT_BODY, "nics": [{"network": "net1"}]})
    with pytest.raises(HttpError, match="adopt"):
        create_ops({**CLIENT_BODY, "disks": [{"size": 1, "adopt": "lv0"}]})

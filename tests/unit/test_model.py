"""The frozen model objects: JSON round trips, Ganeti's node roles and job summaries."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from haven.model import Cluster, Job, JobStatus, Keys, Node, NodeFacts, OpStatus
from haven.model.job import summarize
from haven.model.keys import store_prefix


def through_json(data: dict[str, Any]) -> dict[str, Any]:
    """What the store gives back: the object as bytes and decoded again."""
    return json.loads(json.dumps(data, separators=(",", ":")).encode())  # type: ignore[no-any-return]


def node(name: str = "node02", **kw: Any) -> Node:
    return Node(name=name, uuid=f"uuid-{name}", primary_ip="192.0.2.2",
                secondary_ip="198.51.100.2", api_port=5080, **kw)


# -- jobs ---------------------------------------------------------------------------------


def test_a_new_job_is_queued_with_one_slot_per_opcode() -> None:
    job = Job.new(7, [{"OP_ID": "OP_TEST_DELAY"}, {"OP_ID": "OP_CLUSTER_VERIFY"}], 1000.0)
    assert (job.status, job.opstatus, job.opresult, job.oplog) == (
        JobStatus.QUEUED, (OpStatus.QUEUED,) * 2, (None, None), ((), ()))
    assert (job.received_ts, job.start_ts, job.end_ts, job.master) == (1000.0, None, None, "")


def test_a_job_survives_a_json_round_trip_in_every_field() -> None:
    job = Job.new(3, [{"OP_ID": "OP_NODE_ADD", "node_name": "node02"},
                      {"OP_ID": "OP_TEST_DELAY", "duration": 1.5}], 1000.0)
    job = job.with_log(0, "Adding node02", 1001.0).with_op(0, OpStatus.SUCCESS, {"node": "n"})
    job = job.with_op(1, OpStatus.ERROR, ["OpPrereqError", ["Node down.", "wrong_state"]])
    job = replace(job, status=JobStatus.ERROR, start_ts=1000.5, end_ts=1002.0,
                  master="node01", progress={"step": 2, "disks": ["a", "b"]})
    data = through_json(job.to_json())
    assert data["status"] == "error" and data["opstatus"] == ["success", "error"]
    back = Job.from_json(data)
    assert back == job
    assert isinstance(back.status, JobStatus) and isinstance(back.opstatus[0], OpStatus)


def test_job_from_json_ignores_keys_written_by_a_newer_daemon() -> None:
    data = Job.new(1, [{"OP_ID": "OP_TEST_DELAY"}], 5.0).to_json()
    data["priority_class"] = "high"
    assert Job.from_json(data) == Job.new(1, [{"OP_ID": "OP_TEST_DELAY"}], 5.0)


def test_job_log_entries_get_increasing_serials_per_job() -> None:
    job = Job.new(1, [{"OP_ID": "A"}, {"OP_ID": "B"}], 0.0)
    job = job.with_log(0, "one", 1.0).with_log(1, "two", 2.0).with_log(0, "three", 3.0, "x")
    assert job.oplog == (((1, 1.0, "message", "one"), (3, 3.0, "x", "three")),
                         ((2, 2.0, "message", "two"),))
    assert job.log_serial == 3


def test_with_op_keeps_a_result_unless_the_opcode_finished() -> None:
    job = Job.new(1, [{"OP_ID": "A"}], 0.0).with_op(0, OpStatus.RUNNING, "partial")
    assert job.opresult == ("partial",)
    assert job.with_op(0, OpStatus.WAITING).opresult == ("partial",)
    assert job.with_op(0, OpStatus.SUCCESS).opresult == (None,)


def test_only_success_error_and_canceled_are_final() -> None:
    assert {s for s in JobStatus if s.finalized} == {
        JobStatus.SUCCESS, JobStatus.ERROR, JobStatus.CANCELED}


@pytest.mark.parametrize(("op", "summary"), [
    ({"OP_ID": "OP_NODE_ADD", "node_name": "node02"}, "NODE_ADD(node02)"),
    ({"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "vm1", "target_node": "node03"},
     "INSTANCE_MIGRATE(vm1)"),
    ({"OP_ID": "OP_TEST_DELAY", "duration": 2.0}, "TEST_DELAY(2.0)"),
    ({"OP_ID": "OP_TEST_DELAY", "duration": 0.0}, "TEST_DELAY(0.0)"),
    ({"OP_ID": "OP_NODE_REMOVE", "node_name": ""}, "NODE_REMOVE"),
    ({"OP_ID": "OP_CLUSTER_VERIFY"}, "CLUSTER_VERIFY"),
    ({"OP_ID": "CUSTOM_THING", "name": "x"}, "CUSTOM_THING(x)"),
    ({}, "UNKNOWN"),
])
def test_job_summary_is_ganetis_short_opcode_with_its_main_argument(
        op: dict[str, Any], summary: str) -> None:
    assert summarize(op) == summary


def test_job_summary_lists_every_opcode() -> None:
    job = Job.new(1, [{"OP_ID": "OP_NODE_ADD", "node_name": "node02"},
                      {"OP_ID": "OP_CLUSTER_REDIST_CONF"}], 0.0)
    assert job.summary == ["NODE_ADD(node02)", "CLUSTER_REDIST_CONF"]


# -- nodes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "master", "role"), [
    ({}, "node02", "M"),
    ({"master_candidate": False, "offline": True}, "node02", "M"),
    ({}, "node01", "C"),
    ({"master_candidate": True, "drained": True}, "node01", "C"),
    ({"master_candidate": False, "drained": True}, "node01", "D"),
    ({"master_candidate": False, "drained": True, "offline": True}, None, "D"),
    ({"master_candidate": False, "offline": True}, "node01", "O"),
    ({"master_candidate": False}, "node01", "R"),
    ({"master_candidate": False}, None, "R"),
])
def test_node_role_letter_follows_ganetis_precedence(flags: dict[str, bool],
                                                      master: str | None, role: str) -> None:
    assert node(**flags).role(master) == role


def test_a_node_survives_a_json_round_trip_and_ignores_unknown_keys() -> None:
    n = node(etcd_member_id=0x1234, etcd_peer_url="http://192.0.2.2:2380", ctime=5.0)
    data = through_json(n.to_json())
    assert Node.from_json(data) == n
    assert Node.from_json({**data, "ndparams": {"spindle_count": 1}}) == n


def test_modifying_a_node_bumps_serial_and_mtime() -> None:
    n = node().modified(50.0, offline=True)
    assert (n.offline, n.mtime, n.serial_no) == (True, 50.0, 2)
    assert n.api_url == "https://192.0.2.2:5080"


def test_node_facts_survive_a_json_round_trip() -> None:
    facts = NodeFacts(name="node02", memory_total=4096, memory_free=2048, memory_dom0=512,
                      cpu_total=4, storage_size=10240, storage_free=8192,
                      hypervisors=("kvm", "fake"), accel="kvm", version="0.1.0",
                      architecture="x86_64", os_release="Debian 12", updated=1000.0,
                      boot_id="b-1")
    assert NodeFacts.from_json(through_json(facts.to_json())) == facts


# -- cluster ---------------------------------------------------------------------------------


def test_the_cluster_survives_a_json_round_trip() -> None:
    cluster = Cluster(name="haven-local", uuid="c-uuid", ctime=1.0, mtime=2.0,
                      etcd_managed=True, etcd_endpoints=("http://192.0.2.1:2379",),
                      cert_pem="CERT", key_pem="KEY",
                      rapi_users={"admin": {"password": "h", "salt": "s", "write": True}},
                      enabled_hypervisors=("kvm", "fake"))
    data = through_json(cluster.to_json())
    assert Cluster.from_json(data) == cluster
    assert Cluster.from_json({**data, "drbd_helper": "/bin/true"}) == cluster


def test_touching_the_cluster_bumps_serial_and_mtime() -> None:
    cluster = Cluster("c", "u", 1.0, 1.0, False, (), "", "")
    assert (cluster.touched(9.0).mtime, cluster.touched(9.0).serial_no) == (9.0, 2)


# -- keys ------------------------------------------------------------------------------------


def test_job_keys_sort_in_id_order() -> None:
    keys = [Keys.job(i) for i in (2, 10, 100)]
    assert keys == sorted(keys) == ["jobs/000000000002", "jobs/000000000010",
                                    "jobs/000000000100"]
    assert (Keys.node("node01"), Keys.lock("node/node01"), store_prefix("c1")) == (
        "nodes/node01", "locks/node/node01", "/haven/c1/")

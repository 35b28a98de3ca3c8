"""Ganeti's iallocator protocol: the input built from an in-memory store, run through
the real ``hail`` (Debian's ganeti-htools), and the answers that must be refused."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import haven.master.opcodes  # noqa: F401  (registers the opcodes)
from haven.errors import InsufficientResources, InvalidInput
from haven.master import iallocator as ia
from haven.master.iallocator import IAllocatorError
from haven.master.lu import MasterContext, lu_class
from haven.model.cluster import Cluster
from haven.model.instance import Disk, Instance
from haven.model.keys import Keys
from haven.model.node import Node, NodeFacts
from haven.store import Guard, MemoryStore
from tests.unit.support import NoRpc

HAIL = "/usr/lib/ganeti/iallocators/hail"
needs_hail = pytest.mark.skipif(not os.access(HAIL, os.X_OK),
                                reason=f"{HAIL} is absent (apt install ganeti-htools)")
TEMPLATES = ("file", "sharedfile", "diskless", "drbd", "ext")


def dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def add_node(store: MemoryStore, i: int, name: str, free: int, total: int = 4096) -> None:
    store.put(Keys.node(name), dumps(Node(name, f"u{i}", f"10.0.0.{i}", f"10.0.0.{i}",
                                          5080).to_json()))
    store.put(Keys.alive(name), dumps({"node": name}))
    store.put(Keys.facts(name), dumps(NodeFacts(name, total, free, total - free, 2, 20000,
                                                15000, ("kvm",), "kvm", "0", "x86_64", "",
                                                0.0).to_json()))


def add_instance(store: MemoryStore, name: str, node: str, memory: int,
                 template: str = "ext") -> None:
    inst = Instance(name, f"u-{name}", "busybox", "kvm", template, node,
                    disks=(Disk(f"d-{name}", 0, 1024),), admin_state="up",
                    beparams={"memory": memory})
    store.put(Keys.instance(name), dumps(inst.to_json()))
    store.put(Keys.observed(name), dumps({"name": name, "node": node, "state": "running"}))


@pytest.fixture
def ctx() -> Iterator[MasterContext]:
    """Three 4 GiB nodes: node01 runs vm1 (2000 MiB, ext) and has 500 MiB free,
    node02 has 3000 free, node03 1900."""
    store = MemoryStore("/haven/ops/")
    assert store.create("master", b'{"node": "node01"}') is not None
    token = store.get("master").create_revision  # type: ignore[union-attr]
    store.put(Keys.cluster, dumps(Cluster("c", "6f1c3c2e-8d1e-4c57-a5e3-0d6a9f1b2c3d", 0, 0,
                                          True, (), "", "",
                                          enabled_disk_templates=TEMPLATES).to_json()))
    for i, (name, free) in enumerate((("node01", 500), ("node02", 3000),
                                      ("node03", 1900)), 1):
        add_node(store, i, name, free)
    add_instance(store, "vm1", "node01", 2000)
    yield MasterContext(store=store, guard=lambda: Guard("master", token),
                        master_node="node01", rpc=NoRpc())
    store.close()


def request(memory: int, template: str = "ext") -> dict[str, Any]:
    return ia.allocate_request("new", memory, template, [{"size": 1024, "mode": "rw"}],
                               nics=[{"mode": "user"}], os_name="busybox")


def hail_input(ctx: MasterContext, req: dict[str, Any]) -> dict[str, Any]:
    data = ia.cluster_input(ctx.store)
    data["request"] = req
    return data


def test_the_input_carries_what_hail_3_requires(ctx: MasterContext) -> None:
    data = hail_input(ctx, request(512))
    assert set(data) >= {"cluster_name", "cluster_tags", "enabled_hypervisors", "ipolicy",
                         "nodegroups", "nodes", "instances", "request"}
    n1 = data["nodes"]["node01"]
    assert (n1["total_memory"], n1["free_memory"], n1["reserved_memory"]) == (4096, 500,
                                                                              1596)
    assert (n1["i_pri_memory"], n1["i_pri_up_memory"]) == (2000, 2000)
    assert n1["group"] in data["nodegroups"] and n1["ndparams"]["spindle_count"] == 1
    assert data["instances"]["vm1"]["nodes"] == ["node01"]
    assert data["request"]["required_nodes"] == 1
    assert "ext" in data["nodegroups"][n1["group"]]["ipolicy"]["disk-templates"]


@needs_hail
def test_hail_places_a_new_ext_instance_on_a_node_that_fits(ctx: MasterContext) -> None:
    node = ia.run("hail", hail_input(ctx, request(512)))
    assert node in (["node02"], ["node03"])
    free = ia.read_model(ctx.store).free()
    assert free[node[0]] >= 512


@needs_hail
def test_hail_keeps_n_plus_one_like_the_built_in_allocator(ctx: MasterContext) -> None:
    # On node02 the new 1200 MiB instance would leave vm1 (2000 MiB) no room should
    # node01 fail: hail's global N+1 check picks node03, as ours does.
    assert ia.run("hail", hail_input(ctx, request(1200))) == ["node03"]


@needs_hail
def test_hail_refuses_what_breaks_n_plus_one_in_ganetis_words(ctx: MasterContext) -> None:
    with pytest.raises(InsufficientResources) as err:
        ia.run("hail", hail_input(ctx, request(2500)))
    assert err.value.message.startswith("Can't compute nodes using iallocator 'hail': "
                                        "Request failed: ")
    assert "FailN1" in err.value.message


@needs_hail
def test_hail_relocates_a_shared_instance_off_its_primary(ctx: MasterContext) -> None:
    kv = ctx.store.get(Keys.instance("vm1"))
    assert kv is not None
    inst = Instance.from_json(json.loads(kv.value))
    data = hail_input(ctx, ia.relocate_request(inst))
    assert ia.run("hail", data) == ["node02"]


@needs_hail
def test_instance_create_with_iallocator_hail(ctx: MasterContext) -> None:
    said: list[str] = []
    op = {"OP_ID": "OP_INSTANCE_CREATE", "instance_name": "vm9", "os_type": "busybox",
          "disk_template": "sharedfile", "disks": [{"size": "1g"}],
          "beparams": {"memory": 1200},
          "iallocator": "hail"}
    lu = lu_class(op)(ctx, op, said.append)
    lu.check_arguments()
    lu.check_prereq()
    assert lu.pnode == "node03"
    assert said == ["- INFO: Selected nodes for instance vm9 via iallocator hail: node03"]


def script(tmp_path: Path, body: str, name: str = "fake") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_a_malformed_answer_is_one_sentence(ctx: MasterContext, tmp_path: Path) -> None:
    script(tmp_path, "echo 'this is not json'\n")
    with pytest.raises(IAllocatorError) as err:
        ia.run("fake", hail_input(ctx, request(512)), search_path=[str(tmp_path)])
    assert err.value.message.startswith("Can't compute nodes using iallocator 'fake': its "
                                        "answer is not valid (not JSON: ")
    assert err.value.message.endswith("check the script by hand with its input file.")


@pytest.mark.parametrize(("answer", "why"), [
    ('{"success": true, "info": ""}', "missing key 'result'"),
    ('{"success": true, "info": "", "result": ["node02", "node03"]}',
     "iallocator returned invalid number of nodes (2), required 1"),
    ('[1, 2]', "not a dict"),
])
def test_answers_ganeti_would_refuse_are_refused(ctx: MasterContext, tmp_path: Path,
                                                 answer: str, why: str) -> None:
    script(tmp_path, f"echo '{answer}'\n")
    with pytest.raises(IAllocatorError, match=re.escape(f"its answer is not valid ({why}")):
        ia.run("fake", hail_input(ctx, request(512)), search_path=[str(tmp_path)])


def test_a_node_outside_the_cluster_is_refused(ctx: MasterContext, tmp_path: Path) -> None:
    script(tmp_path, 'echo \'{"success": true, "info": "", "result": ["elsewhere"]}\'\n')
    with pytest.raises(IAllocatorError, match="it chose elsewhere, not a node of this"):
        ia.run("fake", hail_input(ctx, request(512)), search_path=[str(tmp_path)])


def test_a_failing_or_missing_script(ctx: MasterContext, tmp_path: Path) -> None:
    script(tmp_path, "echo boom >&2\nexit 3\n")
    with pytest.raises(IAllocatorError, match=r"failed with exit status 3 \(boom\)"):
        ia.run("fake", hail_input(ctx, request(512)), search_path=[str(tmp_path)])
    with pytest.raises(IAllocatorError, match="'nope': no such script in"):
        ia.run("nope", hail_input(ctx, request(512)), search_path=[str(tmp_path)])
    with pytest.raises(IAllocatorError, match="bare script name"):
        ia.run("../fake", hail_input(ctx, request(512)), search_path=[str(tmp_path)])


def test_the_script_reads_the_input_file_it_is_given(ctx: MasterContext,
                                                      tmp_path: Path) -> None:
    # A script that answers with the first node of the input proves the file is there.
    script(tmp_path, 'python3 -c "import json,sys; d=json.load(open(sys.argv[1])); '
                     'print(json.dumps({\'success\': True, \'info\': \'ok\', '
                     '\'result\': [sorted(d[\'nodes\'])[0]]}))" "$1"\n')
    assert ia.run("fake", hail_input(ctx, request(512)),
                  search_path=[str(tmp_path)]) == ["node01"]


@needs_hail
def test_hail_relocates_off_a_dead_primary(ctx: MasterContext) -> None:
    # A node whose daemon holds no lease goes to hail as offline: its instance still
    # gets a new primary (Ganeti would fail the request on the unanswered node RPC).
    ctx.store.delete(Keys.alive("node01"))
    kv = ctx.store.get(Keys.instance("vm1"))
    assert kv is not None
    data = hail_input(ctx, ia.relocate_request(Instance.from_json(json.loads(kv.value))))
    assert data["nodes"]["node01"]["offline"] is True
    assert ia.run("hail", data) == ["node02"]


@needs_hail
def test_failover_with_iallocator_hail(ctx: MasterContext) -> None:
    said: list[str] = []
    op = {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "vm1", "iallocator": "hail"}
    lu = lu_class(op)(ctx, op, said.append)
    lu.check_arguments()
    lu.check_prereq()
    assert lu.target == "node02"
    assert said == ["- INFO: Selected nodes for instance vm1 via iallocator hail: node02"]


@needs_hail
def test_hail_gives_a_drbd_instance_two_nodes(ctx: MasterContext) -> None:
    nodes = ia.run("hail", hail_input(ctx, request(256, "drbd")))
    assert len(nodes) == 2 and len(set(nodes)) == 2


def test_a_node_and_an_iallocator_together_are_refused(ctx: MasterContext) -> None:
    op = {"OP_ID": "OP_INSTANCE_CREATE", "instance_name": "vm9", "os_type": "busybox",
          "disk_template": "sharedfile", "disks": [{"size": "1g"}], "pnode": "node02",
          "iallocator": "hail"}
    lu = lu_class(op)(ctx, op, lambda _m: None)
    lu.check_arguments()
    with pytest.raises(InvalidInput, match="Do not specify both, iallocator and node: "
                                           "give instance vm9 either -n or -I hail"):
        lu.check_prereq()

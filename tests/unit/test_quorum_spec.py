"""The pure parts of quorum replication: the command line of a replicated disk, and the
replication state read from QEMU's block graph and jobs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from haven.hypervisor.base import DiskSpec, HypervisorError
from haven.hypervisor.qemu.cmdline import disk_args
from haven.hypervisor.qemu.quorum import Slot, parse_slots, slot_of, states


def graph(children: dict[str, str]) -> dict[str, Any]:
    """An ``x-debug-query-block-graph`` answer: quorum ``q0`` with these children
    (edge name -> node name), the device on top."""
    names = ["q0", "disk0", "file0", "/machine/peripheral/vblk0/virtio-backend",
             *children.values()]
    ids = {n: i for i, n in enumerate(dict.fromkeys(names))}
    edges = [{"parent": ids["q0"], "child": ids[node], "name": edge}
             for edge, node in children.items()]
    edges += [{"parent": ids["disk0"], "child": ids["file0"], "name": "file"},
              {"parent": ids["/machine/peripheral/vblk0/virtio-backend"],
               "child": ids["q0"], "name": "root"}]
    return {"nodes": [{"id": i, "name": n, "type": "block-driver"} for n, i in ids.items()],
            "edges": edges}


def test_a_replicated_disk_is_a_quorum_of_the_image_and_a_placeholder() -> None:
    args = disk_args(DiskSpec(0, "/d/x.raw", replicated=True, size=1 << 26))
    joined = " ".join(args)
    placeholder = json.loads(args[args.index("-blockdev", 4) + 1])
    assert placeholder["node-name"] == "null0"
    # Writes vanish; reads fail (never zeros handed to the guest as data).
    assert placeholder["file"]["driver"] == "blkdebug"
    assert placeholder["file"]["inject-error"][0]["iotype"] == "read"
    assert placeholder["file"]["image"] == {"driver": "null-co", "size": 1 << 26}
    assert ("driver=quorum,node-name=q0,vote-threshold=2,read-pattern=fifo,"
            "children.0=disk0,children.1=null0") in joined
    assert args[-1] == "virtio-blk-pci,drive=q0,id=vblk0,werror=stop,rerror=stop"
    # Not replicated: the device sits on the image, as before.
    assert disk_args(DiskSpec(0, "/d/x.raw"))[-1] == "virtio-blk-pci,drive=disk0,id=vblk0"
    with pytest.raises(HypervisorError, match="size is unknown"):
        disk_args(DiskSpec(0, "/d/x.raw", replicated=True))


def test_the_slot_is_read_from_the_quorum_s_second_child() -> None:
    assert parse_slots(graph({"children.0": "disk0", "children.1": "null0"})) == {
        0: ("unprotected", "children.1")}
    assert parse_slots(graph({"children.0": "disk0", "children.2": "repl0"})) == {
        0: ("replica", "children.2")}
    assert parse_slots(graph({"children.0": "disk0", "children.3": "lost0"})) == {
        0: ("lost", "children.3")}
    assert parse_slots({"nodes": [], "edges": []}) == {}
    assert parse_slots("garbage") == {}
    assert slot_of(1, "repl0") is None and slot_of(1, "repl1") == "replica"


def test_states_of_quorum_disks_and_a_job_wins() -> None:
    slots: dict[int, tuple[Slot, str]] = {0: ("replica", "children.2"),
                                          1: ("lost", "children.3"),
                                          2: ("unprotected", "children.1")}
    got = states(slots, [], idle={0: 3.0})
    assert (got[0].phase, got[0].job_id, got[0].idle_s) == ("ready", "q0", 3.0)
    assert (got[1].phase, got[1].slot) == ("failed", "lost")
    assert (got[2].phase, got[2].job_id) == ("none", "")
    # A write stopped on an I/O error with the replica in the slot: failed.
    assert states({0: ("replica", "children.2")}, [], failed={0})[0].phase == "failed"
    # A sync under way into the replica says more than the placeholder.
    job = {"device": "mirror2", "type": "mirror", "status": "running", "ready": False,
           "offset": 10, "len": 100, "io-status": "ok", "paused": False}
    got = states(slots, [job])
    assert (got[2].phase, got[2].job_id, got[2].slot) == ("syncing", "mirror2", "unprotected")
    # A disk without a quorum: the job alone, as for the mirror-only replication.
    assert states({}, [{**job, "device": "mirror5"}])[5].slot == ""

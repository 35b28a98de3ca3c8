"""When may the new primary of a migrated ``drbd`` instance bring the old primary's copy
up to date from its migration bitmaps, rather than copy every disk (issue 10)?  A wrong
yes loses data, so every condition is tried on its own (pure)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from haven.daemon.migration_bitmaps import migration_bitmaps_cover, process_start
from haven.model.instance import Disk, Instance


def before() -> Instance:
    """vm2 as node02 accepted its migration: primary node01, generation 4."""
    return Instance("vm2", "u", "busybox", "kvm", "drbd", "node01", ("node02",),
                    (Disk("d0", 0, 64),), admin_state="up", generation=4)


def after() -> Instance:
    """What the migration's switch made of it: primary node02, node01 secondary."""
    return dataclasses.replace(before(), primary_node="node02", secondary_nodes=("node01",),
                               generation=5)


def record(**change: Any) -> dict[str, Any]:
    """What node02 noted when it accepted (NodeReplication.note_migration)."""
    rec: dict[str, Any] = {"instance": "vm2", "pid": 4242, "start": "987654",
                           "source": "node01", "generation": 4}
    rec.update(change)
    return rec


def covers(rec: dict[str, Any], inst: Instance | None = None, node: str = "node02",
           pid: int = 4242, start: str = "987654") -> bool:
    return migration_bitmaps_cover(rec, inst or after(), node, pid, start)


def test_right_after_the_migration_the_bitmaps_cover_the_difference() -> None:
    assert covers(record())


@pytest.mark.parametrize(("why", "rec", "kw"), [
    ("the VM was restarted since (its bitmaps are gone)", record(), {"pid": 4243}),
    ("a new process reuses the pid", record(), {"start": "987999"}),
    ("the process start is unknown", record(), {"start": ""}),
    ("another instance's record", record(instance="vm3"), {}),
    ("the migration did not switch (rolled back)", record(),
     {"inst": dataclasses.replace(after(), generation=4, primary_node="node01",
                                  secondary_nodes=("node02",))}),
    ("another change since the switch", record(),
     {"inst": dataclasses.replace(after(), generation=6)}),
    ("a new secondary (replace-disks)", record(),
     {"inst": dataclasses.replace(after(), secondary_nodes=("node03",), generation=6)}),
    ("a new secondary at the same generation", record(),
     {"inst": dataclasses.replace(after(), secondary_nodes=("node03",))}),
    ("no secondary at all", record(),
     {"inst": dataclasses.replace(after(), secondary_nodes=())}),
    ("asked on another node", record(), {"node": "node01"}),
    ("a record without a generation", {k: v for k, v in record().items()
                                       if k != "generation"}, {}),
])
def test_anything_else_means_a_full_copy(why: str, rec: dict[str, Any],
                                         kw: dict[str, Any]) -> None:
    assert not covers(rec, **kw), why


def test_process_start_names_one_process() -> None:
    mine = process_start(os.getpid())
    assert mine.isdigit() and mine == process_start(os.getpid())
    assert process_start(1 << 30) == ""

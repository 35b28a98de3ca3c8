"""The resync bitmaps of an incoming migration: after a migration here, the mirror to
the old primary (now the secondary) copies only what the VM wrote since it activated
its disks, not the whole disks.

This node notes the migration it accepted in a local file (``<name>.migrated.json``),
and :func:`migration_bitmaps_cover` decides whether the VM's bitmaps still cover the
difference when the disks are protected (``NodeReplication._for_disks``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haven.model.instance import Instance

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon
    from haven.daemon.replication import NodeReplication


def process_start(pid: int) -> str:
    """The start time of process ``pid`` (``/proc/<pid>/stat`` field 22, in clock ticks
    since boot): with the pid it names one process, never a later one reusing the pid.
    "" if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def migration_bitmaps_cover(record: dict[str, Any], inst: Instance, node: str, pid: int,
                            start: str) -> bool:
    """Whether the resync bitmaps of the VM ``pid`` (started at ``start``) on ``node``
    hold every block in which the disks of ``inst`` differ from its secondary's replicas,
    so that protecting them may copy just those blocks (pure).

    ``record`` was written when this node accepted the migration of ``inst`` (see
    :meth:`NodeReplication.note_migration`).  The bitmaps were added to the incoming
    VM's disks before it activated them, so they hold every write it made.  At its
    activation the disks equalled the source's: the source's mirrors had ended in sync
    (``hand_over``) with its guest stopped, and the source never ran again.  So the
    difference is exactly those writes, *provided* that: this is still that VM process
    (a restarted QEMU has no bitmap: bitmaps on raw images are not persistent), the
    secondary is that migration's source (its image untouched since: it only quit, then
    got exported), and the generation is the one the migration's switch made (one more:
    any other change of primary, secondary or disks bumps it again)."""
    return (record.get("pid") == pid and bool(start) and record.get("start") == start
            and record.get("instance") == inst.name and inst.primary_node == node
            and tuple(inst.secondary_nodes[:1]) == (record.get("source"),)
            and inst.generation == int(record.get("generation", -2)) + 1)


def migration_path(d: NodeDaemon, name: str) -> Path:
    return d.instances.run_dir / f"{name}.migrated.json"


def note_migration(d: NodeDaemon, inst: Instance, pid: int) -> None:
    """This node accepts the migration of ``inst`` into VM process ``pid``, whose
    disks got their resync bitmaps before activation: remember it, so that the
    mirror to the old primary can start from those bitmaps (see
    :func:`migration_bitmaps_cover`).  A local file: a node daemon restarted
    meanwhile still finds it; a new VM process does not match it."""
    from haven.daemon.localstate import write_private

    write_private(migration_path(d, inst.name), json.dumps({
        "instance": inst.name, "pid": pid, "start": process_start(pid),
        "source": inst.primary_node, "generation": inst.generation}))


def migrated_bitmaps(rep: NodeReplication, inst: Instance) -> bool:
    try:
        record = json.loads(migration_path(rep.d, inst.name).read_text())
    except (OSError, ValueError):
        return False
    vm = rep._hv().list().get(inst.name)
    return isinstance(record, dict) and vm is not None and migration_bitmaps_cover(
        record, inst, rep.d.name, vm.pid, process_start(vm.pid))

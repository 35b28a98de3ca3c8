"""Copying an instance's disks from one node to another (``gnt-instance move``):
the source streams each file through its node API, the destination writes it sparse."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from haven.errors import NotFoundError, OpExecError
from haven.master import state

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon

CHUNK = 1 << 20


def send_file(path: Path) -> Iterator[bytes]:
    """The chunks of ``path``, read as they are sent."""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def disk_path(d: NodeDaemon, name: str, index: int) -> Path:
    inst, _ = d.instances.instance(name)
    disk = next((x for x in inst.disks if x.index == index), None)
    if disk is None:
        raise NotFoundError(f"Instance {name} has no disk {index}.")
    return Path(d.instances.disk_template(inst).assemble(inst)[index].path)


def pull(d: NodeDaemon, name: str, source: str, index: int, dest: Path) -> int:
    """Fetch disk ``index`` of ``name`` from node ``source`` into ``dest`` (sparse);
    returns the bytes received."""
    node = state.node(d.store(), source)
    try:
        resp = d.rpc().open_stream(node.primary_ip, node.api_port,
                                   f"/haven/node/instance/{name}/disk/{index}")
    except OSError as exc:
        raise OpExecError(f"Node {source} did not send disk {index} of {name}: {exc}") \
            from exc
    total = 0
    with resp, open(dest, "r+b") as out:
        try:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                if chunk.count(0) == len(chunk):
                    out.seek(len(chunk), 1)  # keep the copy sparse
                else:
                    out.write(chunk)
                total += len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            # A chunked stream cut short is an error, never a shorter disk.
            raise OpExecError(f"Node {source} stopped sending disk {index} of {name} "
                              f"after {total} bytes: {exc!r}") from exc
        out.truncate(max(total, out.tell()))
    return total

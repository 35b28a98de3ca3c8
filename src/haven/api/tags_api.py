"""RAPI's tag resources: ``/2/tags`` (the cluster), ``/2/nodes/NAME/tags``,
``/2/instances/NAME/tags`` and ``/2/groups/NAME/tags``.

``GET`` lists the tags; ``PUT ?tag=a&tag=b`` adds and ``DELETE ?tag=a`` removes them,
each as a job (``OP_TAGS_SET``/``OP_TAGS_DEL``) whose id is the answer, as in Ganeti.
Everything that can be checked before the job runs is: the tags' syntax, the object's
existence, and (for removal) that each tag is there; a refused request queues nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from haven.api.rapi_create import refuse_dry_run
from haven.api.routing import HttpError, Request, Router
from haven.errors import OpPrereqError
from haven.master.opcodes.tags import (
    KIND_CLUSTER,
    KIND_INSTANCE,
    KIND_NODE,
    KIND_NODEGROUP,
    read_tags,
    validate_tag,
)

if TYPE_CHECKING:
    from haven.api.node import NodeContext

PATHS = {KIND_CLUSTER: "/2/tags", KIND_NODE: "/2/nodes/{name}/tags",
         KIND_INSTANCE: "/2/instances/{name}/tags", KIND_NODEGROUP: "/2/groups/{name}/tags"}


def install(r: Router, d: NodeContext) -> None:
    for kind, path in PATHS.items():
        r.add("GET", path, _bind(get_tags, d, kind))
        r.add("PUT", path, _bind(add_tags, d, kind), write=True)
        r.add("DELETE", path, _bind(delete_tags, d, kind), write=True)


def _bind(fn: Callable[[Any, str, Request], Any], d: NodeContext, kind: str
          ) -> Callable[[Request], Any]:
    return lambda q: fn(d, kind, q)


def _name(kind: str, q: Request) -> str:
    return "" if kind == KIND_CLUSTER else q.params["name"]


def get_tags(d: NodeContext, kind: str, q: Request) -> list[str]:
    return read_tags(d.store(), kind, _name(kind, q))


def _tags_from(q: Request) -> list[str]:
    tags = list(q.query.get("tag", []))
    if not tags:
        raise HttpError(400, "Give the tags as query arguments: ?tag=a&tag=b.")
    return [validate_tag(t) for t in tags]


def add_tags(d: NodeContext, kind: str, q: Request) -> int:
    from haven.api.routes import submit

    refuse_dry_run(q)
    tags = _tags_from(q)
    name = _name(kind, q)
    read_tags(d.store(), kind, name)  # an unknown object is refused here (404)
    return submit(d, [{"OP_ID": "OP_TAGS_SET", "kind": kind, "name": name or None,
                       "tags": tags}])


def delete_tags(d: NodeContext, kind: str, q: Request) -> int:
    from haven.api.routes import submit

    refuse_dry_run(q)
    tags = _tags_from(q)
    name = _name(kind, q)
    missing = sorted(set(tags) - set(read_tags(d.store(), kind, name)))
    if missing:
        what = f"{kind} {name}" if name else kind
        raise OpPrereqError(f"Tag(s) {', '.join(repr(t) for t in missing)} not found on "
                            f"{what}.")
    return submit(d, [{"OP_ID": "OP_TAGS_DEL", "kind": kind, "name": name or None,
                       "tags": tags}])


__all__ = ["install"]

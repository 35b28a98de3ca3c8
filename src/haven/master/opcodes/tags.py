"""Ganeti's tags on the cluster, the node group, nodes and instances.

``OP_TAGS_SET`` / ``OP_TAGS_DEL`` change them (jobs, as in Ganeti), ``OP_TAGS_GET``
reads them.  Tags are validated as Ganeti's ``TaggableObject.ValidateTag`` does: a
non-empty string of at most 128 characters from ``[\\w.+*/:@-]``, at most 4096 per
object.  Every write is a compare-and-swap of the object that holds them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from haven.errors import InvalidInput, NotFoundError, OpPrereqError
from haven.master import state
from haven.master.lu import REQUIRED, LogicalUnit, register
from haven.model.cluster import Cluster
from haven.model.instance import Instance
from haven.model.keys import Keys
from haven.model.node import Node

MAX_TAG_LEN = 128  # Ganeti's constants.MAX_TAG_LEN
MAX_TAGS_PER_OBJ = 4096  # constants.MAX_TAGS_PER_OBJ
TAG_RE = re.compile(r"^[\w.+*/:@-]+$")

KIND_CLUSTER = "cluster"
KIND_NODEGROUP = "nodegroup"
KIND_NODE = "node"
KIND_INSTANCE = "instance"
KINDS = (KIND_CLUSTER, KIND_NODEGROUP, KIND_NODE, KIND_INSTANCE)
DEFAULT_GROUP = "default"  # Haven's one node group


def validate_tag(tag: Any) -> str:
    """One tag, checked as Ganeti checks it (same messages)."""
    if not isinstance(tag, str):
        raise InvalidInput(f"Invalid tag type (not a string): {tag!r}.")
    if len(tag) > MAX_TAG_LEN:
        raise InvalidInput(f"Tag too long (>{MAX_TAG_LEN} characters): {tag[:20]}...")
    if not tag:
        raise InvalidInput("Tags cannot be empty.")
    if not TAG_RE.match(tag):
        raise InvalidInput(f"Tag {tag!r} contains invalid characters; use letters, digits "
                           f"and . + * / : @ - _")
    return tag


def check_kind(kind: Any, name: Any) -> None:
    if kind not in KINDS:
        raise InvalidInput(f"Unknown tag kind {kind!r}; use one of {', '.join(KINDS)}.")
    if kind != KIND_CLUSTER and not name:
        raise InvalidInput(f"Tags of a {kind} need the {kind}'s name.")


def read_tags(store: Any, kind: str, name: str) -> list[str]:
    """The tags of one object, sorted (what ``list-tags`` prints)."""
    obj, _key, _rev = _read(store, kind, name)
    return sorted(_tags_of(obj, kind))


def _read(store: Any, kind: str, name: str) -> tuple[Any, str, int]:
    if kind in (KIND_CLUSTER, KIND_NODEGROUP):
        if kind == KIND_NODEGROUP and name != DEFAULT_GROUP:
            raise NotFoundError(f"Node group {name!r} does not exist; Haven has one group, "
                                f"{DEFAULT_GROUP!r}.")
        cluster, rev = state.cluster_rev(store)
        return cluster, Keys.cluster, rev
    if kind == KIND_NODE:
        node, rev = state.node_rev(store, name)
        return node, Keys.node(name), rev
    kv = store.get(Keys.instance(name))
    if kv is None:
        raise NotFoundError(f"Instance {name!r} does not exist; see gnt-instance list.")
    return Instance.from_json(json.loads(kv.value)), Keys.instance(name), kv.mod_revision


def _tags_of(obj: Any, kind: str) -> tuple[str, ...]:
    if kind == KIND_NODEGROUP:
        assert isinstance(obj, Cluster)
        return obj.group_tags
    tags: tuple[str, ...] = obj.tags
    return tags


def _with_tags(obj: Any, kind: str, tags: tuple[str, ...], now: float) -> Any:
    if isinstance(obj, Cluster):
        if kind == KIND_NODEGROUP:
            return replace(obj.touched(now), group_tags=tags)
        return replace(obj.touched(now), tags=tags)
    assert isinstance(obj, Node | Instance)
    return obj.modified(now, tags=tags)


class _TagsLU(LogicalUnit):
    PARAMS = {"kind": (str, REQUIRED), "name": ((str, type(None)), None),
              "tags": (list, REQUIRED)}

    def check_arguments(self) -> None:
        super().check_arguments()
        check_kind(self.op["kind"], self.op["name"])
        if self.op["kind"] == KIND_CLUSTER:
            self.op["name"] = None
        if not self.op["tags"]:
            raise InvalidInput("Give at least one tag.")
        self.op["tags"] = [validate_tag(t) for t in self.op["tags"]]

    def lock_names(self) -> list[str]:
        kind, name = self.op["kind"], self.op["name"]
        if kind in (KIND_CLUSTER, KIND_NODEGROUP):
            return ["cluster"]
        return [f"{kind}/{name}"]

    def change(self, fn: Callable[[tuple[str, ...]], tuple[str, ...]]) -> list[str]:
        """Apply ``fn`` to the object's tags with a compare-and-swap; the new tags."""
        kind, name = self.op["kind"], self.op["name"] or ""
        obj, key, rev = _read(self.c.store, kind, name)
        new_tags = fn(_tags_of(obj, kind))
        new = _with_tags(obj, kind, new_tags, self.c.clock())
        if self.c.store.cas(key, state.dumps(new.to_json()), rev,
                            guard=self.require_guard()) is None:
            what = f"{kind} {name}" if name else kind
            raise OpPrereqError(f"The tags of {what} changed concurrently; retry.")
        return sorted(new_tags)


@register
class TagsSet(_TagsLU):
    """``add-tags``: tags already present are kept once."""

    OP_ID = "OP_TAGS_SET"

    def check_prereq(self) -> None:
        obj, _, _ = _read(self.c.store, self.op["kind"], self.op["name"] or "")
        have = set(_tags_of(obj, self.op["kind"]))
        if len(have | set(self.op["tags"])) > MAX_TAGS_PER_OBJ:
            raise OpPrereqError(f"Too many tags: at most {MAX_TAGS_PER_OBJ} per object.")

    def exec(self) -> Any:
        add = self.op["tags"]
        self.change(lambda cur: tuple(sorted(set(cur) | set(add))))
        return None


@register
class TagsDel(_TagsLU):
    """``remove-tags``: every tag named must be present (Ganeti refuses otherwise)."""

    OP_ID = "OP_TAGS_DEL"

    def check_prereq(self) -> None:
        obj, _, _ = _read(self.c.store, self.op["kind"], self.op["name"] or "")
        missing = sorted(set(self.op["tags"]) - set(_tags_of(obj, self.op["kind"])))
        if missing:
            what = self.op["kind"] + (f" {self.op['name']}" if self.op["name"] else "")
            raise OpPrereqError(f"Tag(s) {', '.join(repr(t) for t in missing)} not found "
                                f"on {what}.")

    def exec(self) -> Any:
        drop = set(self.op["tags"])
        self.change(lambda cur: tuple(t for t in cur if t not in drop))
        return None


@register
class TagsGet(LogicalUnit):
    OP_ID = "OP_TAGS_GET"
    PARAMS = {"kind": (str, REQUIRED), "name": ((str, type(None)), None)}

    def check_arguments(self) -> None:
        super().check_arguments()
        check_kind(self.op["kind"], self.op["name"])

    def exec(self) -> Any:
        return read_tags(self.c.store, self.op["kind"], self.op["name"] or "")


__all__ = ["TagsDel", "TagsGet", "TagsSet", "read_tags", "validate_tag"]

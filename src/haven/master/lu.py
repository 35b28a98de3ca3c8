"""Logical units: how one opcode runs, in Ganeti's phases.

``check_arguments`` (syntax only, also run when the job is submitted) -> ``lock_names``
(store locks, taken by the runner) -> ``check_prereq`` (read-only, idempotent) ->
``exec``.  An LU that sets ``RESUMABLE`` may be run again from the start by a new
master after the old one died mid-way; the others are failed with a clear message.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from haven.errors import InvalidInput
from haven.model.cluster import Cluster
from haven.model.node import Node
from haven.noderpc import NodeRpc
from haven.store.base import Guard, Store

REQUIRED = object()


@dataclass
class MasterContext:
    """Everything an LU may use.  ``guard()`` is the master's fencing guard, or
    ``None`` the instant the master's lease is no longer locally valid."""

    store: Store
    guard: Callable[[], Guard | None]
    master_node: str
    rpc: NodeRpc
    etcd_admin: Any = None  # EtcdStore when the cluster's etcd is managed
    clock: Callable[[], float] = time.time
    extras: dict[str, Any] = field(default_factory=dict)
    # Held for every etcd membership change the master makes: the runner's quorum
    # upkeep and the node jobs.  A member added while another was removed cannot
    # start: its --initial-cluster no longer matches the members (etcd exits with
    # "error validating peerURLs"); a node add lost its join to that race in CI.
    votes: threading.Lock = field(default_factory=threading.Lock)


class LogicalUnit:
    OP_ID: ClassVar[str] = ""
    RESUMABLE: ClassVar[bool] = False
    # name -> (type or tuple of types, default or REQUIRED)
    PARAMS: ClassVar[dict[str, tuple[type | tuple[type, ...], Any]]] = {}

    def __init__(self, ctx: MasterContext | None, op: dict[str, Any],
                 feedback: Callable[[str], None]) -> None:
        self.ctx = ctx  # None while only checking arguments at submission
        self.op = dict(op)
        self.feedback = feedback

    @property
    def c(self) -> MasterContext:
        assert self.ctx is not None
        return self.ctx

    def check_arguments(self) -> None:
        """Validate and default ``self.op`` from ``PARAMS``; extend for more checks."""
        allowed = set(self.PARAMS) | {"OP_ID", "comment", "depends", "priority",
                                      "debug_level", "dry_run", "reason"}
        unknown = sorted(set(self.op) - allowed)
        if unknown:
            raise InvalidInput(f"{self.OP_ID} does not take parameter(s) "
                               f"{', '.join(unknown)}.")
        for name, (typ, default) in self.PARAMS.items():
            if name not in self.op or self.op[name] is None:
                if default is REQUIRED:
                    raise InvalidInput(f"{self.OP_ID} needs the parameter {name!r}.")
                # A fresh copy: list and dict defaults must not be shared between jobs.
                self.op[name] = copy.deepcopy(default)
                continue
            value = self.op[name]
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = self.op[name] = float(value)
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise InvalidInput(f"Parameter {name!r} of {self.OP_ID} has the wrong "
                                   f"type: {value!r}.")

    @classmethod
    def resumable(cls, op: dict[str, Any]) -> bool:
        """Whether a new master may run this opcode again from the start."""
        return cls.RESUMABLE

    def lock_names(self) -> list[str]:
        return []

    def before_lock(self) -> None:
        """Wait, without any lock, for what the agents must do first (they leave a
        locked instance alone); read-only and bounded.  Most opcodes need nothing."""

    def check_prereq(self) -> None:
        """Read-only checks against the current state."""

    def exec(self) -> Any:
        raise NotImplementedError

    # -- helpers shared by LUs -------------------------------------------------------
    def require_guard(self) -> Guard:
        from haven.store.errors import FencedOut

        guard = self.c.guard()
        if guard is None:
            raise FencedOut("This node stopped being master while the job was running.")
        return guard

    def cluster(self) -> Cluster:
        from haven.master import state

        return state.cluster(self.c.store)

    def node(self, name: str) -> Node:
        from haven.master import state

        return state.node(self.c.store, name)


_REGISTRY: dict[str, type[LogicalUnit]] = {}


def register(cls: type[LogicalUnit]) -> type[LogicalUnit]:
    _REGISTRY[cls.OP_ID] = cls
    return cls


def lu_class(op: dict[str, Any]) -> type[LogicalUnit]:
    op_id = op.get("OP_ID") if isinstance(op, dict) else None
    if not isinstance(op_id, str) or op_id not in _REGISTRY:
        raise InvalidInput(f"Unknown opcode {op_id!r}; known are "
                           f"{', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[op_id]


def check_job(ops: Any) -> list[dict[str, Any]]:
    """Submission-time check: a non-empty list of opcodes whose arguments are valid."""
    if not isinstance(ops, list) or not ops:
        raise InvalidInput("A job needs a non-empty list of opcodes.")
    checked = []
    for op in ops:
        lu = lu_class(op)(None, op, lambda _msg: None)
        lu.check_arguments()
        checked.append(lu.op)
    return checked

"""Haven's store: the only code that talks to etcd (see :mod:`haven.store.base`).

Importing this package is cheap; :class:`EtcdStore` (and with it ``httpx``) is loaded
only when first used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from haven.store.base import (
    Compare,
    Delete,
    Get,
    Guard,
    KeyValue,
    Member,
    Op,
    Put,
    Store,
    TxnResult,
    Watch,
    WatchEvent,
)
from haven.store.election import Election
from haven.store.errors import (
    Compacted,
    FencedOut,
    LeaseExpired,
    OutcomeUnknown,
    StoreError,
    StoreUnavailable,
)
from haven.store.lease import LeaseKeeper
from haven.store.memory import MemoryStore
from haven.store.typed import Doc, dumps, get_json, list_json, update_json
from haven.store.watcher import Watcher

if TYPE_CHECKING:
    from haven.store.etcd import EtcdStore

__all__ = [
    "Compacted",
    "Compare",
    "Delete",
    "Doc",
    "Election",
    "EtcdStore",
    "FencedOut",
    "Get",
    "Guard",
    "KeyValue",
    "LeaseExpired",
    "LeaseKeeper",
    "Member",
    "MemoryStore",
    "Op",
    "OutcomeUnknown",
    "Put",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "Watcher",
    "dumps",
    "get_json",
    "list_json",
    "open_store",
    "update_json",
]

MEMORY = "memory://"


def open_store(endpoints: str | Sequence[str], prefix: str, timeout: float = 2.0) -> Store:
    """The store for ``endpoints`` (a list, or one comma-separated string).

    ``"memory://"`` gives a fresh :class:`MemoryStore` (nothing shared with any other
    call); anything else is a list of etcd client URLs.
    """
    eps = [e.strip() for e in endpoints.split(",")] if isinstance(endpoints, str) \
        else [e.strip() for e in endpoints]
    eps = [e for e in eps if e]
    if eps and all(e.startswith(MEMORY) for e in eps):
        return MemoryStore(prefix)
    if any(e.startswith(MEMORY) for e in eps):
        raise ValueError(f"cannot mix {MEMORY} with etcd endpoints: {eps}")
    from haven.store.etcd import EtcdStore

    return EtcdStore(eps, prefix, timeout=timeout)


def __getattr__(name: str) -> Any:
    if name == "EtcdStore":
        from haven.store.etcd import EtcdStore

        return EtcdStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""JSON objects in the store: canonical encoding and the read-modify-CAS loop.

Every Haven object is a JSON object written by compare-and-swap on the
``mod_revision`` it was read at (:func:`update_json`), so two writers never lose each
other's changes: the loser re-reads and re-applies its change.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from haven.store.base import Guard, KeyValue, Store
from haven.store.errors import StoreError

JsonObj = dict[str, Any]


class Doc(NamedTuple):
    """A decoded value and the ``mod_revision`` to compare-and-swap against."""

    value: JsonObj
    mod_revision: int


def dumps(obj: JsonObj) -> bytes:
    """Canonical compact JSON (sorted keys, no spaces, UTF-8): equal objects, equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def loads(kv: KeyValue) -> JsonObj:
    """Decode a stored JSON object; a corrupt value raises :class:`StoreError`."""
    try:
        obj = json.loads(kv.value)
    except ValueError as exc:
        raise StoreError(f"The value of {kv.key!r} is not valid JSON.") from exc
    if not isinstance(obj, dict):
        raise StoreError(f"The value of {kv.key!r} is not a JSON object.")
    return obj


def get_json(store: Store, key: str) -> Doc | None:
    """``(value, mod_revision)`` of ``key``, or ``None``.  One linearizable read."""
    kv = store.get(key)
    return None if kv is None else Doc(loads(kv), kv.mod_revision)


def list_json(store: Store, prefix: str) -> tuple[dict[str, Doc], int]:
    """Every object under ``prefix`` by key (sorted), and the revision of the listing."""
    kvs, revision = store.list(prefix)
    return {kv.key: Doc(loads(kv), kv.mod_revision) for kv in kvs}, revision


def update_json(store: Store, key: str, fn: Callable[[JsonObj | None], JsonObj | None],
                guard: Guard | None = None, retries: int = 20) -> JsonObj | None:
    """Read ``key``, apply ``fn`` and write the result only if ``key`` did not change.

    ``fn`` gets a fresh copy of the current object (``None`` if absent) and returns the
    new object, or ``None`` to delete the key.  On a conflict it is called again with
    the newer object, so it must be a pure function of its argument.  Each attempt is
    one compare-and-swap (plus ``guard``: :class:`FencedOut` ends the loop at once).
    If ``fn`` returns the object unchanged nothing is written.  Returns what was
    stored; raises :class:`StoreError` after ``retries`` conflicting attempts.
    """
    for attempt in range(retries):
        doc = get_json(store, key)
        new = fn(None if doc is None else doc.value)
        if doc is None and new is None:
            return None
        if doc is not None and new == doc.value:
            return new
        if new is None:
            assert doc is not None
            if store.delete(key, mod_revision=doc.mod_revision, guard=guard):
                return None
        elif store.cas(key, dumps(new), 0 if doc is None else doc.mod_revision,
                       guard=guard) is not None:
            return new
        # Lost a race: back off a little (randomized, growing) so that busy writers of
        # one key do not collide forever.
        time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    raise StoreError(
        f"Gave up updating {key!r} after {retries} conflicting writes; it is changing too "
        "often, retry later."
    )

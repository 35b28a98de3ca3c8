"""The store contract over etcd's v3 JSON gateway (``/v3/...`` on the client port).

No gRPC: plain ``httpx`` POSTs of JSON whose bytes are base64 and whose 64-bit
integers are strings (absent fields mean 0 / false).  Every request is one etcd RPC,
so each method inherits that RPC's atomicity (see :mod:`haven.store.base`).

How requests reach etcd (endpoint rotation, frozen members, what is resent and when a
write's outcome is unknown) is :mod:`haven.store.etcd_transport`; the membership and
maintenance calls are :mod:`haven.store.etcd_admin`, the wire format
:mod:`haven.store.etcd_wire`, the watch stream :mod:`haven.store.etcd_watch`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence

from haven.store.base import (
    Compare,
    Delete,
    Get,
    KeyValue,
    Op,
    Put,
    Store,
    TxnResult,
    Watch,
)
from haven.store.errors import LeaseExpired, StoreError
from haven.store.etcd_admin import _EtcdAdmin
from haven.store.etcd_transport import FAST_TIMEOUT
from haven.store.etcd_watch import _EtcdWatch
from haven.store.etcd_wire import (
    _RESULTS,
    _TARGETS,
    Alarm,
    EndpointStatus,
    Json,
    _b64,
    _int,
    _Refused,
    _unb64,
    prefix_end,
)
from haven.store.tls import TlsFiles

__all__ = ["Alarm", "EndpointStatus", "EtcdStore", "prefix_end"]


class EtcdStore(_EtcdAdmin, Store):
    """:class:`Store` on etcd 3.4+ through its JSON gateway.  Thread-safe."""

    def __init__(self, endpoints: Sequence[str], prefix: str, timeout: float = 2.0,
                 tls: TlsFiles | None = None, fast_timeout: float = FAST_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        super().__init__(endpoints, timeout, tls, fast_timeout)
        self._prefix = prefix
        self._pfx = prefix.encode()
        self._watches: weakref.WeakSet[_EtcdWatch] = weakref.WeakSet()

    # -- encoding ------------------------------------------------------------------
    def _key(self, key: str) -> bytes:
        return self._pfx + key.encode()

    def _range(self, key: str, prefix: bool) -> Json:
        k = self._key(key)
        if not prefix:
            return {"key": _b64(k)}
        if not k:
            return {"key": _b64(b"\0"), "range_end": _b64(b"\0")}
        return {"key": _b64(k), "range_end": _b64(prefix_end(k))}

    def _kv(self, d: Json) -> KeyValue:
        key = _unb64(d.get("key"))
        if key.startswith(self._pfx):
            key = key[len(self._pfx):]
        return KeyValue(key=key.decode("utf-8", "replace"), value=_unb64(d.get("value")),
                        create_revision=_int(d.get("create_revision")),
                        mod_revision=_int(d.get("mod_revision")),
                        version=_int(d.get("version")), lease=_int(d.get("lease")))

    def _compare(self, c: Compare) -> Json:
        target, field = _TARGETS[c.target]
        operand = _b64(c.operand) if isinstance(c.operand, bytes) else str(c.operand)
        return {"key": _b64(self._key(c.key)), "target": target,
                "result": _RESULTS[c.op], field: operand}

    def _op(self, op: Op) -> Json:
        if isinstance(op, Put):
            put: Json = {"key": _b64(self._key(op.key)), "value": _b64(op.value)}
            if op.lease:
                put["lease"] = str(op.lease)
            return {"request_put": put}
        if isinstance(op, Delete):
            return {"request_delete_range": self._range(op.key, op.prefix)}
        return {"request_range": self._range(op.key, op.prefix)}

    # -- the contract --------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        """One linearizable range request."""
        data = self._post("/v3/kv/range", self._range(key, False), idempotent=True)
        kvs = data.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """One linearizable range request; the revision is the one it was served at."""
        data = self._post("/v3/kv/range", self._range(prefix, True), idempotent=True)
        kvs = [self._kv(d) for d in data.get("kvs") or []]
        return kvs, _int(data.get("header", {}).get("revision"))

    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """One etcd transaction (``/v3/kv/txn``): atomic, one revision for all writes."""
        body = {"compare": [self._compare(c) for c in compares],
                "success": [self._op(o) for o in success],
                "failure": [self._op(o) for o in failure]}
        read_only = all(isinstance(o, Get) for o in (*success, *failure))
        data = self._post("/v3/kv/txn", body, idempotent=read_only)
        responses: list[list[KeyValue] | int | None] = []
        for r in data.get("responses") or []:
            if "response_range" in r:
                responses.append([self._kv(d) for d in r["response_range"].get("kvs") or []])
            elif "response_delete_range" in r:
                responses.append(_int(r["response_delete_range"].get("deleted")))
            else:
                responses.append(None)
        return TxnResult(bool(data.get("succeeded")),
                         _int(data.get("header", {}).get("revision")), tuple(responses))

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease; resent on failure (an orphaned lease just expires)."""
        data = self._post("/v3/lease/grant", {"TTL": int(ttl), "ID": 0}, idempotent=True)
        if data.get("error"):
            raise StoreError(f"etcd refused a lease of {ttl} s: {data['error']}.")
        return _int(data.get("ID")), _int(data.get("TTL"))

    def lease_keepalive(self, lease_id: int) -> int:
        """One keepalive round trip; ``0`` when etcd no longer knows the lease."""
        data = self._post("/v3/lease/keepalive", {"ID": str(lease_id)}, idempotent=True,
                          patient=False)
        return _int(data.get("result", {}).get("TTL"))

    def lease_ttl(self, lease_id: int) -> float:
        """``/v3/lease/timetolive``: whole seconds left (etcd truncates), 0 if gone."""
        data = self._post("/v3/lease/timetolive", {"ID": str(lease_id)}, idempotent=True)
        return float(max(_int(data.get("TTL")), 0))

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke; the lease's keys are deleted in the same revision."""
        with contextlib.suppress(LeaseExpired):
            self._post("/v3/lease/revoke", {"ID": str(lease_id)}, idempotent=True)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """A streamed ``/v3/watch``; the request is sent when iteration starts."""
        body = {"create_request": {**self._range(prefix, True),
                                   "start_revision": str(max(start_revision, 0))}}
        w = _EtcdWatch(self, body)
        with self._lock:
            self._watches.add(w)
        return w

    def compact(self, revision: int) -> None:
        """Compact the whole keyspace (etcd has one history); repeating it is harmless."""
        try:
            self._post("/v3/kv/compaction", {"revision": str(revision)}, idempotent=True)
        except _Refused as exc:
            if "has been compacted" not in exc.text:
                raise

    def revision(self) -> int:
        data = self._post("/v3/kv/range", {**self._range("", True), "count_only": True},
                          idempotent=True)
        return _int(data.get("header", {}).get("revision"))

    def close(self) -> None:
        """End every open watch (blocked readers return), then drop the connections."""
        self._shut = True
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.close()
        self._client.close()
        self._watch_client.close()

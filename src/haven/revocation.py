"""Which etcd certificates the cluster issued to each node, and which it revoked.

A renewed certificate (``gnt-cluster renew-crypto --new-node-certificates``) and the
certificate of a removed node (``gnt-node remove``) must stop opening etcd: a copy of
one (``etcd.pem`` and ``etcd.key`` taken from a backup, say) must not be a key to the
cluster.  (A copy of a whole data directory also holds the CA key, which can sign a
new certificate: only a new CA would shut that out.)  The master records the serial
of every certificate it issues under ``pki/issued/<node>``; revoking adds serials to
the cluster's revocation list, signed by the CA, kept in ``pki/crl`` (public: serial
numbers and a signature).  Every node writes the list into its own file as soon as it
sees it change (its event hub), and its etcd member reads that file for every new
client and peer connection (``--client-crl-file``/``--peer-crl-file``), so a
revocation takes effect within a watch event, without a restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from haven import pki
from haven.model.keys import ISSUED, Keys
from haven.store.base import Guard, Store

log = logging.getLogger(__name__)


def issued(store: Store, node: str) -> set[int]:
    """The serials of the etcd certificates issued to ``node`` and not yet revoked."""
    kv = store.get(Keys.issued(node))
    if kv is None:
        return set()
    try:
        return {int(s, 16) for s in json.loads(kv.value)}
    except (ValueError, TypeError):
        return set()


def orphans(store: Store, nodes: set[str]) -> dict[str, set[int]]:
    """Serials recorded for nodes that are not in ``nodes`` (removed, but a failure
    kept their certificates from being revoked then)."""
    kvs, _ = store.list(ISSUED)
    out: dict[str, set[int]] = {}
    for kv in kvs:
        name = kv.key[len(ISSUED):]
        if name not in nodes:
            out[name] = issued(store, name)
    return out


def issued_value(serials: Iterable[int]) -> bytes:
    """What ``pki/issued/<node>`` holds: the serials in hexadecimal."""
    return json.dumps(sorted(f"{s:x}" for s in serials)).encode()


def record_issued(store: Store, node: str, cert_pem: str, guard: Guard | None,
                  replace: bool = False) -> None:
    """Remember that ``cert_pem`` was issued to ``node`` (alone if ``replace``)."""
    serials = {pki.serial(cert_pem)} | (set() if replace else issued(store, node))
    store.put(Keys.issued(node), issued_value(serials), guard=guard)


def revoked(store: Store) -> set[int]:
    """The serials on the cluster's revocation list."""
    kv = store.get(Keys.crl)
    return pki.crl_serials(kv.value.decode()) if kv is not None else set()


def revoke(store: Store, ca: pki.KeyPair, serials: Iterable[int],
           guard: Guard | None) -> str:
    """Add ``serials`` to the revocation list; returns the list (PEM), which every
    node writes for its etcd member when it sees the change."""
    before = revoked(store)
    crl = pki.make_crl(ca, before | set(serials))
    store.put(Keys.crl, crl.encode(), guard=guard)
    added = sorted(set(serials) - before)
    if added:
        log.info("revoked etcd certificate(s) %s", ", ".join(f"{s:x}" for s in added))
    return crl

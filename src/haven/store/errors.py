"""Errors raised by the store layer (a subtree of :class:`haven.errors.HavenError`).

    StoreError
    ├── StoreUnavailable    no endpoint answered, or etcd has no leader / no quorum
    │   └── OutcomeUnknown  a write was sent but its answer lost: it may have applied
    ├── Compacted           a watch asked for history etcd has already compacted
    ├── LeaseExpired        a keepalive found the lease gone (or past its local deadline)
    ├── StoreClosed         the client was closed (its node left the cluster or reconnects)
    └── FencedOut           a guarded write was refused: the caller is no longer master
"""

from __future__ import annotations

from haven.errors import ECODE_ENVIRON, ECODE_STATE, EXIT_NOTCLUSTER, HavenError


class StoreError(HavenError):
    ecode = ECODE_ENVIRON
    http_status = 503


class StoreUnavailable(StoreError):
    exit_code = EXIT_NOTCLUSTER


class OutcomeUnknown(StoreUnavailable):
    """A write reached etcd but no verdict came back (the reply timed out, "leader
    changed", the member stopped): it may or may not commit.  Re-read before retrying,
    or resend only a write that applies at most once (a compare-and-swap)."""


class Compacted(StoreError):
    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseExpired(StoreError):
    ecode = ECODE_STATE


class FencedOut(StoreError):
    ecode = ECODE_STATE
    http_status = 409


class StoreClosed(StoreError):
    """A request on a client its owner has closed: the node daemon left the cluster,
    or replaced its connection, while a caller (a long poll) still held the old one.
    Retryable (503): the next request finds the node's new state, or another node."""

"""The JSON gateway's wire format for :mod:`haven.store.etcd`: base64 bytes, 64-bit
integers as strings, etcd's error shapes, member and status records, and the errors
the store's retry logic tells apart."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, TypedDict

from haven.store.base import Member
from haven.store.errors import StoreError, StoreUnavailable

Json = dict[str, Any]

_TARGETS = {"mod": ("MOD", "mod_revision"), "create": ("CREATE", "create_revision"),
            "version": ("VERSION", "version"), "value": ("VALUE", "value")}
_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


class EndpointStatus(TypedDict):
    """``/v3/maintenance/status`` of one member, integers decoded."""

    endpoint: str
    version: str
    cluster_id: int  # differs between the two sides of a --no-voting recovery
    member_id: int
    leader: int  # 0: this member knows no leader
    raft_term: int
    raft_index: int
    db_size: int
    db_size_in_use: int
    is_learner: bool
    errors: list[str]


@dataclass(frozen=True)
class Alarm:
    """A raised etcd alarm, e.g. ``NOSPACE`` (the cluster is read-only until disarmed)."""

    member_id: int
    alarm: str


Alarms = list[Alarm]


class _AllFailed(StoreUnavailable):
    """Every endpoint failed, nothing may have been applied, and at least one member
    answered: etcd is electing a leader, worth a retry in a moment."""


class _TimedOut(StoreUnavailable):
    """No endpoint answered a request that is safe to resend, and some did not answer
    within the short first-round timeout: worth one round with the full timeout."""


class _Refused(StoreError):
    """etcd answered with an error we do not retry; ``text`` is etcd's message."""

    def __init__(self, message: str, text: str, code: int) -> None:
        super().__init__(message)
        self.text = text
        self.code = code


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(value: object) -> int:
    return int(str(value)) if value else 0


def prefix_end(key: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``key``."""
    trimmed = key.rstrip(b"\xff")
    if not trimmed:
        return b"\0"  # etcd: "\0" as range_end means "to the end of the keyspace"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _url(endpoint: str, scheme: str = "http") -> str:
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if "://" in endpoint else f"{scheme}://{endpoint}"


def _error_of(data: Json, status: int) -> tuple[str, int]:
    err = data.get("error")
    if isinstance(err, dict):  # streaming endpoints: {"error": {"grpc_code", "message"}}
        return str(err.get("message", "")), _int(err.get("grpc_code"))
    return str(data.get("message") or err or f"HTTP status {status}"), _int(data.get("code"))


def _member(d: Json) -> Member:
    return Member(id=_int(d.get("ID")), name=str(d.get("name", "")),
                  peer_urls=tuple(d.get("peerURLs", ())),
                  client_urls=tuple(d.get("clientURLs", ())),
                  is_learner=bool(d.get("isLearner", False)))

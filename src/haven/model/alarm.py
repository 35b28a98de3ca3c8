"""Alarms and their settings, as kept in the store.

``alarms/active/<id>``: an alarm that holds now, written by the master's alarm loop
(raise, message change, clear) and by any node's API (acknowledge, a compare-and-swap).
``alarms/history/<raised ns>-<id>``: a cleared alarm, as it was when it cleared; the
loop keeps at most ``history_limit`` of them.  ``alarms/settings``: the thresholds and
notification targets, one JSON object of :class:`AlarmSettings` fields.

An alarm's ``id`` is ``<kind>:<object name>`` (``node-unreachable:node02``), stable
while its condition holds, so a condition that stays true is one alarm, and one that
goes and comes back is a new raise (a new history entry).  Acknowledging records who
and when; it does not clear.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from haven.errors import InvalidInput
from haven.model.fields import known

CRITICAL = "critical"
WARNING = "warning"
INFO = "info"
#: Most urgent first: ``haven alarms`` sorts by this.
SEVERITIES = (CRITICAL, WARNING, INFO)

# The built-in definitions (``kind`` of an alarm).
NODE_UNREACHABLE = "node-unreachable"
INSTANCE_DOWN = "instance-down"
REPLICA_DEGRADED = "replica-degraded"
N1_LOST = "n1-lost"
ETCD_MEMBER_DOWN = "etcd-member-down"
QUORUM_AT_RISK = "quorum-at-risk"
NODE_MEMORY = "node-memory"
NODE_DISK = "node-disk"
JOB_FAILED = "job-failed"
KINDS = (NODE_UNREACHABLE, INSTANCE_DOWN, REPLICA_DEGRADED, N1_LOST, ETCD_MEMBER_DOWN,
         QUORUM_AT_RISK, NODE_MEMORY, NODE_DISK, JOB_FAILED)


def alarm_id(kind: str, name: str) -> str:
    return f"{kind}:{name}"


@dataclass(frozen=True)
class Alarm:
    """One alarm.  ``object`` is what it is about (``node/node02``, ``instance/vm1``,
    ``job/12``, ``cluster``); times are the master's wall clock; ``cleared`` is 0 while
    it is active."""

    id: str
    kind: str
    object: str
    severity: str
    message: str
    raised: float
    cleared: float = 0.0
    updated: float = 0.0  # last change of message or severity while active
    acked_by: str = ""  # the person who acknowledged it
    acked_user: str = ""  # the API user that sent the acknowledgement
    acked_at: float = 0.0
    node: str = ""  # the master that raised it

    @property
    def active(self) -> bool:
        return self.cleared == 0.0

    @property
    def acked(self) -> bool:
        return self.acked_at > 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = "active" if self.active else "cleared"
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alarm:
        return cls(**known(cls, data))

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()

    def acknowledged(self, by: str, user: str, now: float) -> Alarm:
        return replace(self, acked_by=by, acked_user=user, acked_at=now)


def sort_key(a: Alarm) -> tuple[int, int, float, str]:
    """Active first (the most severe, then the oldest raise first), then the cleared
    ones (the last cleared first)."""
    if not a.active:
        return (1, 0, -a.cleared, a.id)
    sev = SEVERITIES.index(a.severity) if a.severity in SEVERITIES else len(SEVERITIES)
    return (0, sev, a.raised, a.id)


@dataclass(frozen=True)
class AlarmSettings:
    """Thresholds and notification targets, cluster-wide (``haven alarms set``)."""

    #: Seconds a condition must hold before its alarm is raised (clearing is at once).
    debounce_seconds: float = 2.0
    #: Seconds an instance that should run may be down (booting, restarting) first.
    instance_down_seconds: float = 10.0
    #: Seconds a replica may be degraded (resyncing, Outdated) before the alarm.
    replica_degraded_seconds: float = 60.0
    #: A live node using more than this percentage of its memory raises an alarm.
    memory_percent: float = 90.0
    #: ... of its instance storage.
    disk_percent: float = 90.0
    #: Seconds a failed job keeps its alarm after it ended (then it clears).
    job_failed_seconds: float = 3600.0
    #: Cleared alarms kept in the history.
    history_limit: int = 1000
    #: HTTP(S) URL the master POSTs each raise and clear to, as JSON ("" = none).
    webhook_url: str = ""
    #: Seconds a webhook POST may take.
    webhook_timeout: float = 5.0
    #: A command the master runs for each raise and clear, the alarm as JSON on stdin
    #: (split like a shell line, not run by a shell; "" = none).
    command: str = ""
    #: Seconds the command may run before it is killed.
    command_timeout: float = 30.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlarmSettings:
        """Stored settings; a value that does not validate (written by a newer
        version, or by hand) falls back to its default instead of breaking the loop."""
        out = cls()
        for key, value in known(cls, data).items():
            try:
                out = replace(out, **{key: parse(key, value)})
            except InvalidInput:
                continue
        return out

    def with_changes(self, changes: dict[str, Any]) -> AlarmSettings:
        """These settings with ``changes`` applied, every value validated first."""
        parsed = {k: parse(k, v) for k, v in changes.items()}
        return replace(self, **parsed)


#: What each setting means (``haven alarms settings``).
HELP: dict[str, str] = {
    "debounce_seconds": "seconds a condition must hold before its alarm is raised",
    "instance_down_seconds": "seconds an instance that should run may be down first",
    "replica_degraded_seconds": "seconds a replica may be degraded (resyncing, Outdated) "
                                "first",
    "memory_percent": "memory use (%) of a live node above which it raises an alarm",
    "disk_percent": "instance storage use (%) of a live node above which it raises an "
                    "alarm",
    "job_failed_seconds": "seconds a failed job keeps its alarm after it ended",
    "history_limit": "cleared alarms kept in the history",
    "webhook_url": "URL the master POSTs each raise and clear to, as JSON (empty: none)",
    "webhook_timeout": "seconds a webhook POST may take",
    "command": "command the master runs for each raise and clear, the alarm as JSON on "
               "stdin (empty: none)",
    "command_timeout": "seconds the command may run before it is killed",
}


_LIMITS: dict[str, tuple[float, float]] = {
    "debounce_seconds": (0.0, 3600.0),
    "instance_down_seconds": (0.0, 86400.0),
    "replica_degraded_seconds": (0.0, 86400.0),
    "memory_percent": (1.0, 100.0),
    "disk_percent": (1.0, 100.0),
    "job_failed_seconds": (0.0, 30 * 86400.0),
    "history_limit": (1.0, 100000.0),
    "webhook_timeout": (0.1, 300.0),
    "command_timeout": (0.1, 3600.0),
}


def setting_names() -> list[str]:
    return [f.name for f in fields(AlarmSettings)]


def parse(key: str, value: Any) -> Any:
    """``value`` (a JSON value, or the text typed after ``haven alarms set KEY``) as
    setting ``key`` wants it; :class:`InvalidInput` with one sentence otherwise."""
    if key not in setting_names():
        raise InvalidInput(f"Unknown alarm setting {key!r}; the settings are "
                           f"{', '.join(setting_names())}.")
    if key in _LIMITS:
        low, high = _LIMITS[key]
        integer = key == "history_limit"
        kind = "a whole number" if integer else "a number"
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if integer and number != int(number):
                raise ValueError(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"Alarm setting {key!r} must be {kind} from {low:g} to "
                               f"{high:g}, not {value!r}.") from None
        if not low <= number <= high:
            raise InvalidInput(f"Alarm setting {key!r} must be from {low:g} to {high:g}, "
                               f"not {number:g}.")
        return int(number) if integer else number
    if not isinstance(value, str):
        raise InvalidInput(f"Alarm setting {key!r} must be a string, not {value!r}.")
    value = value.strip()
    if key == "webhook_url" and value and not value.startswith(("http://", "https://")):
        raise InvalidInput(f"Alarm setting 'webhook_url' must be an http:// or https:// "
                           f"URL (or empty to send none), not {value!r}.")
    if key == "command" and value:
        try:
            shlex.split(value)
        except ValueError as exc:
            raise InvalidInput(f"Alarm setting 'command' cannot be split into words "
                               f"({exc}): {value!r}.") from None
    return value

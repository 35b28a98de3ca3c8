"""Alarms in the store: read the active ones and the history, acknowledge, and read or
change the settings.  Used by the alarm loop and by every node's API; every write that
depends on what was read is a compare-and-swap (an acknowledgement and the loop's
update or clear of the same alarm cannot undo each other)."""

from __future__ import annotations

import json
from typing import Any

from haven.errors import InvalidInput, NotFoundError, TemporaryError
from haven.model import alarm as A
from haven.model import event
from haven.model.alarm import Alarm, AlarmSettings
from haven.model.keys import ALARM_SETTINGS, ALARMS_ACTIVE, ALARMS_HISTORY, Keys
from haven.store.base import Compare, Put, Store

CAS_TRIES = 20


def active(store: Store) -> dict[str, tuple[Alarm, int]]:
    """Active alarms by id, with each key's mod revision."""
    kvs, _ = store.list(ALARMS_ACTIVE)
    out = {}
    for kv in kvs:
        a = Alarm.from_json(json.loads(kv.value))
        out[a.id] = (a, kv.mod_revision)
    return out


def history(store: Store) -> list[Alarm]:
    """Cleared alarms, oldest raise first."""
    kvs, _ = store.list(ALARMS_HISTORY)
    return [Alarm.from_json(json.loads(kv.value)) for kv in kvs]


def listing(store: Store, include_cleared: bool = False) -> list[Alarm]:
    """Active alarms (most severe, then oldest first), then with ``include_cleared``
    the history (last cleared first)."""
    out = [a for a, _rev in active(store).values()]
    if include_cleared:
        out += history(store)
    return sorted(out, key=A.sort_key)


def settings_rev(store: Store) -> tuple[AlarmSettings, int]:
    kv = store.get(ALARM_SETTINGS)
    if kv is None:
        return AlarmSettings(), 0
    try:
        data = json.loads(kv.value)
    except ValueError:
        data = {}
    return AlarmSettings.from_json(data if isinstance(data, dict) else {}), kv.mod_revision


def settings(store: Store) -> AlarmSettings:
    return settings_rev(store)[0]


def change_settings(store: Store, changes: dict[str, Any]) -> AlarmSettings:
    """Validate and apply ``changes`` (setting -> value); the settings as written."""
    if not changes:
        raise InvalidInput("No alarm setting given; the settings are "
                           f"{', '.join(A.setting_names())}.")
    for _ in range(CAS_TRIES):
        cur, rev = settings_rev(store)
        new = cur.with_changes(changes)
        body = json.dumps(new.to_json(), sort_keys=True).encode()
        if store.cas(ALARM_SETTINGS, body, rev) is not None:
            return new
    raise TemporaryError("The alarm settings are being changed by someone else; "
                         "try again.")


def acknowledge(store: Store, alarm_id: str, by: str, user: str, now: float,
                node: str = "") -> Alarm:
    """Record who acknowledged active alarm ``alarm_id`` and when (the first
    acknowledgement stays); the alarm as stored.  An event tells the others."""
    key = Keys.alarm(alarm_id)
    for _ in range(CAS_TRIES):
        kv = store.get(key)
        if kv is None:
            raise NotFoundError(f"Alarm {alarm_id!r} is not active; see 'haven alarms'.")
        cur = Alarm.from_json(json.loads(kv.value))
        if cur.acked:
            return cur
        new = cur.acknowledged(by, user, now)
        ev = event.Event(now, "alarm-acknowledged", cur.object, node,
                         f"Alarm {alarm_id} acknowledged by {by}.", "info")
        res = store.txn([Compare(key, "mod", "=", kv.mod_revision)],
                        [Put(key, new.encode()), Put(ev.key(), ev.encode())])
        if res.succeeded:
            return new
    raise TemporaryError(f"Alarm {alarm_id!r} kept changing; try again.")

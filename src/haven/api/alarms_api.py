"""Alarms: ``GET /haven/alarms`` (active ones; ``?all=1`` adds the cleared history),
``POST /haven/alarms/{id}/ack`` (body ``{"by": "alice"}``, optional: the person; the
API user otherwise), ``GET /haven/alarms/settings`` and ``PUT /haven/alarms/settings``
(body ``{"setting": value, ...}``, every value validated before any is written).

Raised and cleared by the master's alarm loop (``master/alarm_loop.py``); any node
answers these from the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from haven.api.http import HttpError, Request, Router
from haven.errors import InvalidInput
from haven.master import alarm_store
from haven.model import alarm as A

if TYPE_CHECKING:
    from haven.api.node import NodeContext

MAX_BY = 64  # characters of an acknowledging person's name


def install(r: Router, d: NodeContext) -> None:
    """Register the ``/haven/alarms`` routes."""
    r.add("GET", "/haven/alarms", lambda q: alarms(d, q))
    r.add("GET", "/haven/alarms/settings", lambda _q: settings(d))
    r.add("PUT", "/haven/alarms/settings", lambda q: change_settings(d, q), write=True)
    r.add("POST", "/haven/alarms/{id}/ack", lambda q: ack(d, q), write=True)


def alarms(d: NodeContext, q: Request) -> list[dict[str, Any]]:
    """Active alarms, most severe and oldest first; with ``all`` the cleared ones after
    them, last cleared first."""
    return [a.to_json() for a in alarm_store.listing(d.store(), q.qbool("all"))]


def ack(d: NodeContext, q: Request) -> dict[str, Any]:
    import time

    body = q.obj()
    unknown = sorted(set(body) - {"by"})
    if unknown:
        raise InvalidInput(f"An acknowledgement takes only 'by', not "
                           f"{', '.join(map(repr, unknown))}.")
    by = body.get("by") or q.user or ""
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_BY:
        raise InvalidInput(f"'by' must name the person acknowledging (1 to {MAX_BY} "
                           f"characters), not {by!r}.")
    return alarm_store.acknowledge(d.store(), q.params["id"], by.strip(), q.user or "",
                                   time.time(), d.name).to_json()


def settings(d: NodeContext) -> dict[str, Any]:
    """Every setting's value, and what each means."""
    return {"settings": alarm_store.settings(d.store()).to_json(), "help": dict(A.HELP)}


def change_settings(d: NodeContext, q: Request) -> dict[str, Any]:
    body = q.obj()
    if not body:
        raise HttpError(400, "The body must name at least one alarm setting, e.g. "
                        '{"memory_percent": 85}.')
    return {"settings": alarm_store.change_settings(d.store(), body).to_json(),
            "help": dict(A.HELP)}

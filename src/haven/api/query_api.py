"""RAPI ``/2/query/RESOURCE`` (``GET ?fields=a,b`` or ``PUT {"fields", "qfilter"}``)
and ``/2/query/RESOURCE/fields``, for the resources Haven has: instance, node, group,
job.

Answers Ganeti's ``QueryResponse``: ``{"fields": [field definitions], "data": [[[status,
value], ...], ...]}`` with status 0 (normal) or 2 (no data).  Fields are the keys of
the resource's RAPI bulk shape, plus ``be/KEY`` and ``hv/KEY`` for instances.  Filters
are Ganeti's query language, a subset: ``& | !``, ``= != < > <= >=``, ``=~`` (regular
expression), ``=[]`` (list contains) and ``?`` (true).  An unknown resource, field or
operator is refused with 400 before anything runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from haven.api.routing import HttpError, Request, Router

if TYPE_CHECKING:
    from haven.api.node import NodeContext

RS_NORMAL = 0  # Ganeti's constants.RS_*
RS_NODATA = 2
RESOURCES = ("instance", "node", "group", "job")
# Ganeti resources Haven does not have.
ABSENT = ("network", "export", "lock", "os", "extstorage", "cluster", "filter")


def install(r: Router, d: NodeContext) -> None:
    r.add("GET", "/2/query/{what}", lambda q: query(d, q.params["what"], _get_fields(q),
                                                      None))
    r.add("PUT", "/2/query/{what}", lambda q: query(
        d, q.params["what"], _body_fields(q), q.obj().get("qfilter", q.obj().get("filter"))))
    r.add("GET", "/2/query/{what}/fields", lambda q: fields_of(
        d, q.params["what"], _split(q.qstr("fields"))))


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [f for f in value.split(",") if f]


def _get_fields(q: Request) -> list[str]:
    fields = _split(q.qstr("fields"))
    if not fields:
        raise HttpError(400, "Give the fields to return: ?fields=name,status.")
    return fields


def _body_fields(q: Request) -> list[str]:
    fields = q.obj().get("fields")
    if isinstance(fields, str):
        fields = _split(fields)
    if not isinstance(fields, list) or not fields or \
            not all(isinstance(f, str) for f in fields):
        raise HttpError(400, "The body needs \"fields\": a non-empty list of field names.")
    return fields


def rows(d: NodeContext, what: str) -> list[dict[str, Any]]:
    """Every object of a resource, in its RAPI bulk shape."""
    from haven.api import groups_api, instances_api, nodes_api, routes
    from haven.master import jobqueue

    if what not in RESOURCES:
        if what in ABSENT:
            raise HttpError(400, f"Haven has no {what} resource to query; use one of "
                                 f"{', '.join(RESOURCES)}.")
        raise HttpError(400, f"Unknown query resource {what!r}; use one of "
                             f"{', '.join(RESOURCES)}.")
    bulk = Request("GET", "", {"bulk": ["1"]}, None, None, False)
    if what == "instance":
        return instances_api.list_instances(d, bulk)
    if what == "node":
        return nodes_api.list_nodes(d, bulk)
    if what == "group":
        return groups_api.list_groups(d.store(), True)
    return [routes.job_dict(j) for j in jobqueue.list_jobs(d.store())]


def _getter(what: str, name: str, sample: dict[str, Any] | None
            ) -> Callable[[dict[str, Any]], Any] | None:
    """How to read field ``name`` from a row, or None if the field does not exist."""
    if what == "instance" and name[:3] in ("be/", "hv/"):
        key = "beparams" if name.startswith("be/") else "hvparams"
        sub = name[3:]
        return lambda row: (row.get(key) or {}).get(sub)
    if sample is None or name in sample:
        return lambda row: row.get(name)
    return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"


def field_defs(what: str, names: list[str], data: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    # With no rows to look at, any name is accepted (it has no values anyway).
    sample = data[0] if data else None
    unknown = [n for n in names if _getter(what, n, sample) is None]
    if unknown:
        raise HttpError(400, f"Unknown field(s) {', '.join(unknown)} for {what}; see "
                             f"/2/query/{what}/fields.")
    defs = []
    for n in names:
        getter = _getter(what, n, sample)
        assert getter is not None
        value = next((getter(r) for r in data if getter(r) is not None), None)
        defs.append({"name": n, "title": n.replace("_", " ").title().replace(" ", ""),
                     "kind": _kind(value), "doc": f"{what} field {n}"})
    return defs


Filter = Any


def _compile(what: str, flt: Filter, sample: dict[str, Any] | None
             ) -> Callable[[dict[str, Any]], bool]:
    if flt is None:
        return lambda _row: True
    if not isinstance(flt, list) or not flt or not isinstance(flt[0], str):
        raise HttpError(400, f"Invalid query filter {flt!r}: a filter is a list "
                             f"[operator, operands...].")
    op, args = flt[0], flt[1:]
    if op in ("&", "|"):
        subs = [_compile(what, a, sample) for a in args]
        if op == "&":
            return lambda row: all(s(row) for s in subs)
        return lambda row: any(s(row) for s in subs)
    if op == "!":
        if len(args) != 1:
            raise HttpError(400, "The filter operator '!' takes one operand.")
        sub = _compile(what, args[0], sample)
        return lambda row: not sub(row)
    if op == "?":
        if len(args) != 1:
            raise HttpError(400, "The filter operator '?' takes one field.")
        get = _field(what, args[0], sample)
        return lambda row: bool(get(row))
    if op not in _BINARY and op != "=~":
        raise HttpError(400, f"Unknown query filter operator {op!r}; Haven supports "
                             f"& | ! ? = != < > <= >= =~ =[].")
    if len(args) != 2:
        raise HttpError(400, f"The filter operator {op!r} takes a field and a value.")
    get = _field(what, args[0], sample)
    value = args[1]
    if op == "=~":
        try:
            rx = re.compile(str(value))
        except re.error as exc:
            raise HttpError(400, f"Invalid regular expression {value!r}: {exc}.") from exc
        return lambda row: isinstance(get(row), str) and rx.search(get(row)) is not None
    cmp = _BINARY[op]
    return lambda row: _safe(cmp, get(row), value)


def _safe(cmp: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    try:
        return cmp(a, b)
    except TypeError:
        return False


_BINARY: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b), "!=": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b), ">": lambda a, b: bool(a > b),
    "<=": lambda a, b: bool(a <= b), ">=": lambda a, b: bool(a >= b),
    "=[]": lambda a, b: isinstance(a, list) and b in a,
}


def _field(what: str, name: Any, sample: dict[str, Any] | None
           ) -> Callable[[dict[str, Any]], Any]:
    get = _getter(what, name, sample) if isinstance(name, str) else None
    if get is None:
        raise HttpError(400, f"Unknown field {name!r} in the query filter for {what}.")
    return get


def query(d: NodeContext, what: str, names: list[str], flt: Filter) -> dict[str, Any]:
    data = rows(d, what)
    defs = field_defs(what, names, data)
    keep = _compile(what, flt, data[0] if data else None)
    getters = [_getter(what, n, None) for n in names]
    out = []
    for row in data:
        if not keep(row):
            continue
        values = [g(row) if g else None for g in getters]
        out.append([[RS_NODATA, None] if v is None else [RS_NORMAL, v] for v in values])
    return {"fields": defs, "data": out}


def fields_of(d: NodeContext, what: str, names: list[str] | None) -> dict[str, Any]:
    data = rows(d, what)
    if names is None:
        names = sorted(data[0]) if data else ["name"]
    return {"fields": field_defs(what, names, data)}


__all__ = ["install", "query"]

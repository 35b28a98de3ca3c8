"""Ganeti RAPI resources Haven has no equivalent for: answered in Ganeti's error shape
with 501 and a sentence that says so (a path Ganeti does not know stays a 404).

Networks are the exception for reads: Haven has none, so listing them answers an empty
list (what Ganeti answers on a cluster without networks) and one network is a 404.
"""

from __future__ import annotations

from typing import Any

from haven.api.routing import HttpError, Router
from haven.errors import NotFoundError

# (method, path, what Haven cannot do)
UNSUPPORTED: tuple[tuple[str, str, str], ...] = (
    ("PUT", "/2/modify", "change cluster parameters through RAPI (use gnt-cluster)"),
    ("POST", "/2/instances-multi-alloc", "allocate several instances in one request; "
                                         "create them one by one"),
    ("PUT", "/2/instances/{name}/prepare-export", "export instances"),
    ("PUT", "/2/instances/{name}/export", "export instances"),
    ("POST", "/2/instances/{name}/recreate-disks", "recreate instance disks"),
    ("POST", "/2/nodes/{name}/powercycle", "power-cycle nodes through RAPI (the fence "
                                           "agent does it when a node is lost)"),
    ("GET", "/2/nodes/{name}/storage", "list storage units (see gnt-node volumes)"),
    ("PUT", "/2/nodes/{name}/storage/modify", "change storage units"),
    ("PUT", "/2/nodes/{name}/storage/repair", "repair storage units"),
    ("POST", "/2/networks", "create networks"),
    ("GET", "/2/filters", "have job filters"),
    ("POST", "/2/filters", "have job filters"),
)


def install(r: Router) -> None:
    for method, path, what in UNSUPPORTED:
        r.add(method, path, _refuse(what), write=method != "GET")
    r.add("GET", "/2/networks", lambda _q: [])
    r.add("GET", "/2/networks/{name}", lambda q: _no_network(q.params["name"]))


def _refuse(what: str) -> Any:
    def handler(_q: Any) -> Any:
        raise HttpError(501, f"Haven cannot {what}; nothing was queued.")
    return handler


def _no_network(name: str) -> Any:
    raise NotFoundError(f"Network {name!r} does not exist; Haven has no networks.")


__all__ = ["install"]

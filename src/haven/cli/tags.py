"""Ganeti's tag commands, shared by ``gnt-cluster``, ``gnt-node``, ``gnt-instance`` and
``gnt-group``: ``list-tags``, ``add-tags [--from FILE]``, ``remove-tags [--from FILE]``
and ``gnt-cluster search-tags PATTERN``.

They go through RAPI's tag resources, so everything checkable (the tags' syntax, the
object's existence, a tag to remove being there) is refused before a job is queued;
the change itself is a job the command waits for, as Ganeti's do.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from haven.cli.client import Client
from haven.cli.common import job_error, print_log
from haven.errors import InvalidInput

PATHS = {"cluster": "/2/tags", "node": "/2/nodes/{name}/tags",
         "instance": "/2/instances/{name}/tags", "nodegroup": "/2/groups/{name}/tags"}


def _path(kind: str, name: str | None) -> str:
    return PATHS[kind].format(name=quote(name or "", safe=""))


def _read_from(path: str | None) -> list[str]:
    """Ganeti's ``--from FILE``: one tag per line, ``-`` for standard input."""
    if not path:
        return []
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"Cannot read tags from {path}: {exc.strerror}.") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _change(method: str, kind: str, name: str | None, tags: list[str],
            submit_only: bool) -> int:
    if not tags:
        raise InvalidInput("Give at least one tag (or --from FILE).")
    c = Client.from_config()
    query = urlencode([("tag", t) for t in tags])
    job_id = int(c.request(method, f"{_path(kind, name)}?{query}"))
    if submit_only:
        print(f"JobID: {job_id}")
        return 0
    job = c.wait_job(job_id, print_log)
    if job["status"] != "success":
        raise job_error(job)
    return 0


def cmd_list_tags(kind: str, args: Any) -> int:
    for tag in sorted(Client.from_config().get(_path(kind, getattr(args, "name", None)))):
        print(tag)
    return 0


def cmd_add_tags(kind: str, args: Any) -> int:
    tags = list(args.tags) + _read_from(args.tags_source)
    return _change("PUT", kind, getattr(args, "name", None), tags, args.submit)


def cmd_remove_tags(kind: str, args: Any) -> int:
    tags = list(args.tags) + _read_from(args.tags_source)
    return _change("DELETE", kind, getattr(args, "name", None), tags, args.submit)


def cmd_search_tags(args: Any) -> int:
    """Every tag matching the pattern, as Ganeti prints it: ``PATH TAG``."""
    try:
        rx = re.compile(args.pattern)
    except re.error as exc:
        raise InvalidInput(f"Invalid search pattern {args.pattern!r}: {exc}.") from exc
    c = Client.from_config()
    found = [("/cluster", t) for t in c.get("/2/tags")]
    found += [(f"/nodegroup/{g['name']}", t) for g in c.get("/2/groups?bulk=1")
              for t in g.get("tags") or []]
    found += [(f"/nodes/{n['name']}", t) for n in c.get("/2/nodes?bulk=1")
              for t in n.get("tags") or []]
    found += [(f"/instances/{i['name']}", t) for i in c.get("/2/instances?bulk=1")
              for t in i.get("tags") or []]
    for path, tag in sorted(found):
        if rx.search(tag):
            print(f"{path} {tag}")
    return 0


def add_parsers(sub: Any, kind: str, what: str | None) -> None:
    """Add ``list-tags``, ``add-tags`` and ``remove-tags`` to a ``gnt-*`` parser;
    ``what``: the name of the object argument (None for the cluster)."""
    lt = sub.add_parser("list-tags", help=f"list the tags of the {kind}")
    if what:
        lt.add_argument("name", metavar=what)
    lt.set_defaults(fn=lambda a: cmd_list_tags(kind, a))
    for verb, fn in (("add", cmd_add_tags), ("remove", cmd_remove_tags)):
        p = sub.add_parser(f"{verb}-tags", help=f"{verb} tags of the {kind}")
        p.add_argument("--from", dest="tags_source", metavar="FILE",
                       help="read the tags from FILE (one a line, - for stdin)")
        p.add_argument("--submit", action="store_true")
        if what:
            p.add_argument("name", metavar=what)
        p.add_argument("tags", nargs="*", metavar="TAG")
        p.set_defaults(fn=lambda a, f=fn: f(kind, a))


__all__ = ["add_parsers", "cmd_search_tags"]

"""Haven's router and its request/response types, without any web framework: route
modules and the node daemon import these without paying for the server's imports (a
restarted daemon must take its lease over within seconds; see noded.run)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from haven.errors import HavenError

T = TypeVar("T")


class HttpError(HavenError):
    """An error raised by a handler with an explicit HTTP status."""

    def __init__(self, status: int, message: str, ecode: str = "wrong_input") -> None:
        super().__init__(message, ecode)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    user: str | None
    can_write: bool
    params: dict[str, str] = field(default_factory=dict)
    peer: str = ""

    def qbool(self, name: str) -> bool:
        return self.query.get(name, ["0"])[-1] in ("1", "true", "yes")

    def obj(self) -> dict[str, Any]:
        """The JSON body as an object (``{}`` when there is none)."""
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise HttpError(400, "The request body must be a JSON object.")
        return self.body

    def body_field(self, name: str, cast: Callable[[Any], T]) -> T:
        """``cast`` of the body's ``name``; a missing or unusable value is a 400 that
        names it (node-to-node calls read their arguments this way)."""
        value = self.obj().get(name)
        if value is None:
            raise HttpError(400, f"The request body needs {name!r}.")
        try:
            return cast(value)
        except (TypeError, ValueError) as exc:
            raise HttpError(400, f"The request body's {name!r} is not usable: "
                                 f"{value!r:.60}.") from exc

    def qstr(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass
class Response:
    body: Any
    status: int = 200
    content_type: str = "application/json"


Handler = Callable[[Request], Any]


class Stream:
    """A response sent as its chunks are produced (a disk image); the iterator runs in
    a worker thread and may block on its file."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    write: bool  # needs an authenticated user with write access


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, path: str, handler: Handler, write: bool = False) -> None:
        """``path`` may hold ``{name}`` segments, matched as ``[^/]+``."""
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"
        self.routes.append(Route(method, re.compile(regex), handler, write))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """The route, its parameters, and whether the path exists for another method."""
        other = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method:
                return route, m.groupdict(), False
            other = True
        return None, {}, other


# What a node daemon that cannot check credentials yet answers a request that needs
# them.  Its kind and "not part of a cluster" are what callers recognise as "nothing was
# done here, ask again or ask another node": the CLI moves to the next node
# (cli/client.py), node-to-node calls wait and retry (noderpc.py).
NOT_READY_STATUS = 502
NOT_READY_MESSAGE = ("This node daemon is starting: it is not part of a cluster yet (it "
                     "has not reached etcd), so it cannot check credentials; retry in a "
                     "moment.")

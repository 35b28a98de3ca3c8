"""``haven events [--follow]``: the cluster's event history, and what comes next."""

from __future__ import annotations

import sys
import time
from typing import Any

from haven.cli.client import Client
from haven.cli.common import ArgParser, run


def _print(ev: dict[str, Any]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev["ts"]))
    print(f"{when} {ev['severity']:<7} {ev['object']:<20} {ev['message']}", flush=True)


def cmd_events(args: Any) -> int:
    c = Client.from_config()
    events = c.get(f"/haven/events?limit={args.last}")
    for ev in events:
        if not args.object or ev["object"] == args.object:
            _print(ev)
    if not args.follow:
        return 0
    after = events[-1]["key"] if events else ""
    while True:
        new = c.get(f"/haven/events?wait=1&after={after}", timeout=30)
        for ev in new:
            if not args.object or ev["object"] == args.object:
                _print(ev)
        if new:
            after = new[-1]["key"]


def build_parser(prog: str = "haven events") -> ArgParser:
    p = ArgParser(prog=prog, description="Show the cluster's events")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("-n", "--last", type=int, default=100, help="how many past events")
    p.add_argument("--object", help="only events about this object (e.g. instance/vm1)")
    return p


def main(argv: list[str] | None = None, prog: str = "haven events") -> int:
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    return run(lambda: int(cmd_events(args)))


if __name__ == "__main__":
    sys.exit(main())

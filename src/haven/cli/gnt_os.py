"""``gnt-os``: list, info, diagnose the OS definitions the nodes can install."""

from __future__ import annotations

import sys
from typing import Any

from haven.cli.client import Client
from haven.cli.common import ArgParser, dispatch, render_table


def cmd_list(args: Any) -> int:
    names = Client.from_config().get("/2/os")
    if not args.no_headers:
        print("Name")
    for n in names:
        print(n)
    return 0


def cmd_info(_args: Any) -> int:
    for o in Client.from_config().get("/haven/os"):
        print(f"OS: {o['name']}")
        print(f"  - valid: {o['valid']}")
        print(f"  - path: {o['path']}")
        print(f"  - API versions: {', '.join(map(str, o.get('api_versions') or []))}")
        print(f"  - variants: {', '.join(o.get('variants') or []) or '(none)'}")
        params = o.get("parameters") or []
        print("  - parameters:" + ("" if params else " (none)"))
        for p in params:
            print(f"    - {p[0]}: {p[1]}" if isinstance(p, list | tuple) else f"    - {p}")
    return 0


def cmd_diagnose(_args: Any) -> int:
    rows = []
    bad = 0
    for o in Client.from_config().get("/haven/os"):
        status = "valid" if o["valid"] else f"invalid - {o.get('message', '')}"
        bad += 0 if o["valid"] else 1
        rows.append([o["name"], status, o["path"]])
    print(render_table(["OS", "Status", "Path"], rows))
    return 1 if bad else 0


def build_parser(prog: str = "gnt-os") -> ArgParser:
    p = ArgParser(prog=prog, description="OS definitions")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    lp = sub.add_parser("list")
    lp.add_argument("--no-headers", action="store_true")
    lp.set_defaults(fn=cmd_list)
    sub.add_parser("info").set_defaults(fn=cmd_info)
    sub.add_parser("diagnose").set_defaults(fn=cmd_diagnose)
    return p


def main(argv: list[str] | None = None, prog: str = "gnt-os") -> int:
    return dispatch(build_parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())

"""``gnt-group``: Haven's one node group, ``default`` (list, info, list-fields, tags).

Every node is in it; commands that would need a second group (add, remove, rename,
assign-nodes, modify) are answered with Ganeti's error shape by the API.
"""

from __future__ import annotations

import sys
from typing import Any

from haven.cli import tags
from haven.cli.client import Client
from haven.cli.common import (
    ArgParser,
    dispatch,
    parse_fields,
    print_fields,
    print_listing,
)

# field -> (header, numeric, formatter), Ganeti's titles
FIELDS: dict[str, tuple[str, bool, Any]] = {
    "name": ("Group", False, None), "uuid": ("UUID", False, None),
    "node_cnt": ("Nodes", True, None), "node_list": ("NodeList", False, None),
    "pinst_cnt": ("Instances", True, None), "pinst_list": ("InstanceList", False, None),
    "alloc_policy": ("AllocPolicy", False, None),
    "ndparams": ("NDParams", False, lambda d: ", ".join(f"{k}={v}" for k, v in
                                                        sorted(d.items()))),
    "ipolicy": ("InstancePolicy", False, None), "tags": ("Tags", False, None),
    "serial_no": ("SerialNo", True, None), "ctime": ("CTime", False, None),
    "mtime": ("MTime", False, None),
}
DEFAULT_FIELDS = ["name", "node_cnt", "pinst_cnt", "alloc_policy", "ndparams"]


def cmd_list(args: Any) -> int:
    fields = parse_fields(args.output, DEFAULT_FIELDS, FIELDS)
    print_listing("group", Client.from_config().get("/2/groups?bulk=1"), args.names,
                  fields, FIELDS, args)
    return 0


def cmd_list_fields(_args: Any) -> int:
    return print_fields(FIELDS)


def _spec(spec: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(spec.items()))


def cmd_info(args: Any) -> int:
    c = Client.from_config()
    groups = [c.get(f"/2/groups/{g}") for g in args.names] if args.names else \
        c.get("/2/groups?bulk=1")
    for g in groups:
        pol = g.get("ipolicy") or {}
        print(f"Node group: {g['name']}")
        print(f"  UUID: {g['uuid']}")
        print(f"  Serial number: {g.get('serial_no')}")
        print(f"  Allocation policy: {g['alloc_policy']}")
        print(f"  Nodes: {', '.join(g.get('node_list') or []) or '-'}")
        print(f"  Instances: {', '.join(g.get('pinst_list') or []) or '-'}")
        print(f"  Tags: {', '.join(g.get('tags') or []) or '(none)'}")
        print("  Node parameters:")
        for k, v in sorted((g.get("ndparams") or {}).items()):
            print(f"    {k}: {v}")
        print("  Instance policy - limits for instances:")
        for mm in pol.get("minmax") or []:
            print(f"    min: {_spec(mm['min'])}")
            print(f"    max: {_spec(mm['max'])}")
        if pol.get("std"):
            print(f"    std: {_spec(pol['std'])}")
        print(f"    allowed disk templates: {', '.join(pol.get('disk-templates') or [])}")
        print(f"    vcpu-ratio: {pol.get('vcpu-ratio')}")
        print(f"    spindle-ratio: {pol.get('spindle-ratio')}")
    return 0


def build_parser(prog: str = "gnt-group") -> ArgParser:
    p = ArgParser(prog=prog, description="Show the node group (Haven has one: default)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    lp = sub.add_parser("list", help="list node groups")
    lp.add_argument("-o", "--output", help="fields to show (or +fields to add)")
    lp.add_argument("--separator")
    lp.add_argument("--no-headers", action="store_true")
    lp.add_argument("--units", help="size units (only raw MiB with 'm')")
    lp.add_argument("-v", "--verbose", action="store_true")
    lp.add_argument("names", nargs="*")
    lp.set_defaults(fn=cmd_list)
    sub.add_parser("list-fields").set_defaults(fn=cmd_list_fields)
    ip = sub.add_parser("info", help="show node group details")
    ip.add_argument("names", nargs="*")
    ip.set_defaults(fn=cmd_info)
    tags.add_parsers(sub, "nodegroup", "GROUP")
    return p


def main(argv: list[str] | None = None, prog: str = "gnt-group") -> int:
    return dispatch(build_parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())

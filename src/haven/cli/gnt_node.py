"""``gnt-node``: add, list, info, remove, modify, list-fields."""

from __future__ import annotations

import sys
from typing import Any

from haven.cli import tags
from haven.cli.client import Client
from haven.cli.common import (
    ArgParser,
    dispatch,
    format_unit,
    parse_fields,
    print_fields,
    print_listing,
    render_table,
    submit_and_wait,
    yes_no,
)
from haven.errors import InvalidInput

# field -> (header, numeric, formatter)
FIELDS: dict[str, tuple[str, bool, Any]] = {
    "name": ("Node", False, None),
    "dtotal": ("DTotal", True, format_unit), "dfree": ("DFree", True, format_unit),
    "mtotal": ("MTotal", True, format_unit), "mnode": ("MNode", True, format_unit),
    "mfree": ("MFree", True, format_unit),
    "pinst_cnt": ("Pinst", True, None), "sinst_cnt": ("Sinst", True, None),
    "pinst_list": ("PriInstances", False, None), "sinst_list": ("SecInstances", False, None),
    "pip": ("PrimaryIP", False, None), "sip": ("SecondaryIP", False, None),
    "master": ("IsMaster", False, None), "master_candidate": ("MasterC", False, None),
    "master_capable": ("MasterCapable", False, None),
    "vm_capable": ("VMCapable", False, None), "drained": ("Drained", False, None),
    "offline": ("Offline", False, None), "role": ("Role", False, None),
    "ctotal": ("CTotal", True, None), "group": ("Group", False, None),
    "uuid": ("UUID", False, None), "serial_no": ("SerialNo", True, None),
    "tags": ("Tags", False, None), "alive": ("Alive", False, None),
    "accel": ("Accel", False, None), "version": ("Version", False, None),
}
DEFAULT_FIELDS = ["name", "dtotal", "dfree", "mtotal", "mnode", "mfree", "pinst_cnt",
                  "sinst_cnt"]


def cmd_list(args: Any) -> int:
    fields = parse_fields(args.output, DEFAULT_FIELDS, FIELDS)
    print_listing("node", Client.from_config().get("/2/nodes?bulk=1"), args.names, fields,
                  FIELDS, args)
    return 0


def cmd_list_fields(_args: Any) -> int:
    return print_fields(FIELDS)


def cmd_info(args: Any) -> int:
    c = Client.from_config()
    nodes = [c.get(f"/2/nodes/{n}") for n in args.names] if args.names else \
        c.get("/2/nodes?bulk=1")
    for n in nodes:
        print(f"Node name: {n['name']}")
        print(f"  primary ip: {n['pip']}")
        print(f"  secondary ip: {n['sip']}")
        print(f"  master candidate: {n['master_candidate']}")
        print(f"  drained: {n['drained']}")
        print(f"  offline: {n['offline']}")
        print(f"  master_capable: {n['master_capable']}")
        print(f"  vm_capable: {n['vm_capable']}")
        print(f"  node group: {n.get('group') or 'default'}")
        print(f"  tags: {', '.join(n.get('tags') or []) or '(none)'}")
        print(f"  role: {n['role']}{' (master)' if n['master'] else ''}")
        print(f"  alive: {n['alive']}")
        print(f"  etcd member: {n.get('etcd_member_id') or '(none)'}")
        print(f"  hypervisors: {', '.join(n.get('hypervisors') or []) or '?'}")
        print(f"  accelerator: {n.get('accel') or '?'}")
        print(f"  memory: total {format_unit(n.get('mtotal'))}, free "
              f"{format_unit(n.get('mfree'))}")
        print(f"  storage: total {format_unit(n.get('dtotal'))}, free "
              f"{format_unit(n.get('dfree'))}")
        print(f"  cpus: {n.get('ctotal') or '?'}")
        print(f"  software version: {n.get('version') or '?'}")
        print(f"  primary for instances: {', '.join(n.get('pinst_list') or []) or '-'}")
        print(f"  secondary for instances: {', '.join(n.get('sinst_list') or []) or '-'}")
    return 0


def cmd_add(args: Any) -> int:
    c = Client.from_config()
    op = {"OP_ID": "OP_NODE_ADD", "node_name": args.name,
          "master_capable": args.master_capable, "vm_capable": args.vm_capable,
          "primary_ip": args.primary_ip or "", "secondary_ip": args.secondary_ip or "",
          "readd": args.readd, "join_token": args.join_token or ""}
    if args.api_port:
        op["api_port"] = args.api_port
    submit_and_wait(c, [op], args.submit)
    c.refresh_config()
    return 0


def cmd_remove(args: Any) -> int:
    c = Client.from_config()
    submit_and_wait(c, [{"OP_ID": "OP_NODE_REMOVE", "node_name": args.name}], args.submit)
    c.refresh_config()
    return 0


def cmd_modify(args: Any) -> int:
    op: dict[str, Any] = {"OP_ID": "OP_NODE_SET_PARAMS", "node_name": args.name,
                          "force": args.force}
    for key, val in (("master_candidate", args.master_candidate), ("drained", args.drained),
                     ("offline", args.offline), ("master_capable", args.master_capable),
                     ("vm_capable", args.vm_capable)):
        if val is not None:
            op[key] = val
    if args.fence_agent is not None:
        op["fence_agent"] = "" if args.fence_agent == "none" else args.fence_agent
        params = {}
        for item in args.fence_param:
            key, sep, value = item.partition("=")
            if not sep:
                raise InvalidInput(f"--fence-param {item} is not KEY=VALUE; e.g. "
                                   f"--fence-param ip=10.0.0.5.")
            params[key.strip()] = value
        op["fence_params"] = params
    elif args.fence_param:
        raise InvalidInput("--fence-param needs --fence-agent too (the parameters are "
                           "the agent's).")
    result = submit_and_wait(Client.from_config(), [op], args.submit)
    if result:
        print(f"Modified node {args.name}")
        for key, val in result:
            print(f" - {key} -> {val}")
    return 0


def cmd_volumes(args: Any) -> int:
    c = Client.from_config()
    nodes = args.names or [n["id"] for n in c.get("/2/nodes")]
    rows = []
    for name in nodes:
        node = c.get(f"/2/nodes/{name}")
        if not node.get("alive"):
            print(f"Node {name} is down; its volumes are not listed.", file=sys.stderr)
            continue
        from haven.cli.client import Client as _C

        rows += [[v["node"], v["phys"], v["vg"], v["name"], format_unit(v["size"]),
                  v["instance"]] for v in _C([f"{node['pip']}:{node['api_port']}"],
                                             *_creds(c)).get("/haven/node/volumes")]
    out = render_table(["Node", "PhysDev", "VG", "Name", "Size", "Instance"], rows,
                       args.separator, args.no_headers, [False, False, False, False, True])
    if out:
        print(out)
    return 0


def _creds(c: Client) -> tuple[Any, Any, Any]:
    from haven import clientconf

    conf = clientconf.load() or {}
    return conf.get("cert"), conf.get("user"), conf.get("password")


def cmd_migrate(args: Any) -> int:
    from haven.cli import evacuate

    for line in evacuate.migrate_node(args.name, args.node or ""):
        print(line)
    return 0


def cmd_failover(args: Any) -> int:
    from haven.cli import evacuate

    for line in evacuate.failover_node(args.name, args.ignore_consistency):
        print(line)
    return 0


def cmd_evacuate(args: Any) -> int:
    from haven.cli import evacuate

    both = not args.primary_only and not args.secondary_only
    for line in evacuate.evacuate(args.name, args.primary_only or both,
                                  args.secondary_only or both, args.node or ""):
        print(line)
    return 0


def cmd_maintenance(args: Any) -> int:
    from haven.cli import evacuate

    for line in evacuate.maintenance(args.name, end=args.end):
        print(line)
    return 0


def build_parser(prog: str = "gnt-node") -> ArgParser:
    p = ArgParser(prog=prog, description="Manage the cluster's nodes")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    lp = sub.add_parser("list", help="list nodes")
    lp.add_argument("-o", "--output", help="fields to show (or +fields to add)")
    lp.add_argument("--separator")
    lp.add_argument("--no-headers", action="store_true")
    lp.add_argument("--units", help="size units (only raw MiB with 'm')")
    lp.add_argument("-v", "--verbose", action="store_true")
    lp.add_argument("names", nargs="*")
    lp.set_defaults(fn=cmd_list)
    sub.add_parser("list-fields").set_defaults(fn=cmd_list_fields)
    ip = sub.add_parser("info", help="show node details")
    ip.add_argument("names", nargs="*")
    ip.set_defaults(fn=cmd_info)
    ap = sub.add_parser("add", help="add a node (its haven-noded must be running)")
    ap.add_argument("--master-capable", type=yes_no, default=True, metavar="yes|no")
    ap.add_argument("--vm-capable", type=yes_no, default=True, metavar="yes|no")
    ap.add_argument("--primary-ip", help="the node's address if its name does not resolve")
    ap.add_argument("-s", "--secondary-ip", help="address for replication traffic")
    ap.add_argument("--api-port", type=int)
    ap.add_argument("--readd", action="store_true")
    ap.add_argument("--join-token", metavar="TOKEN",
                    help="(Haven) the node's one-time token, printed by 'haven join-token' "
                         "on that node")
    ap.add_argument("--submit", action="store_true")
    ap.add_argument("name")
    ap.set_defaults(fn=cmd_add)
    rp = sub.add_parser("remove", help="remove a node")
    rp.add_argument("--submit", action="store_true")
    rp.add_argument("name")
    rp.set_defaults(fn=cmd_remove)
    mg = sub.add_parser("migrate", help="migrate every running primary instance away")
    mg.add_argument("-n", "--target-node", dest="node")
    mg.add_argument("-f", "--force", action="store_true")
    mg.add_argument("name")
    mg.set_defaults(fn=cmd_migrate)
    fo = sub.add_parser("failover", help="fail over every primary instance")
    fo.add_argument("--ignore-consistency", action="store_true")
    fo.add_argument("-f", "--force", action="store_true")
    fo.add_argument("name")
    fo.set_defaults(fn=cmd_failover)
    ev = sub.add_parser("evacuate", help="move instances (and replicas) off a node")
    ev.add_argument("-p", "--primary-only", action="store_true")
    ev.add_argument("-s", "--secondary-only", action="store_true")
    ev.add_argument("-n", "--new-secondary", dest="node")
    ev.add_argument("-f", "--force", action="store_true")
    ev.add_argument("name")
    ev.set_defaults(fn=cmd_evacuate)
    mt = sub.add_parser("maintenance", help="(Haven) drain, move every instance and the "
                        "master role off, mark offline; --end reverses it")
    mt.add_argument("--end", action="store_true")
    mt.add_argument("name")
    mt.set_defaults(fn=cmd_maintenance)
    vp = sub.add_parser("volumes", help="disk files and replicas on the nodes")
    vp.add_argument("--separator")
    vp.add_argument("--no-headers", action="store_true")
    vp.add_argument("names", nargs="*")
    vp.set_defaults(fn=cmd_volumes)
    mp = sub.add_parser("modify", help="change a node's flags")
    mp.add_argument("-C", "--master-candidate", type=yes_no, metavar="yes|no")
    mp.add_argument("-D", "--drained", type=yes_no, metavar="yes|no")
    mp.add_argument("-O", "--offline", type=yes_no, metavar="yes|no")
    mp.add_argument("--master-capable", type=yes_no, metavar="yes|no")
    mp.add_argument("--vm-capable", type=yes_no, metavar="yes|no")
    mp.add_argument("--fence-agent", metavar="AGENT|haven-local|none",
                    help="(Haven) what turns the node off when it is lost: a fence-agents "
                         "script (fence_ipmilan...), haven-local (haven up), or none")
    mp.add_argument("--fence-param", action="append", metavar="KEY=VALUE", default=[],
                    help="(Haven) a parameter of the fence agent (ip=, username=, ...)")
    mp.add_argument("-f", "--force", action="store_true")
    mp.add_argument("--submit", action="store_true")
    mp.add_argument("name")
    mp.set_defaults(fn=cmd_modify)
    tags.add_parsers(sub, "node", "NODE")
    return p


def main(argv: list[str] | None = None, prog: str = "gnt-node") -> int:
    return dispatch(build_parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())

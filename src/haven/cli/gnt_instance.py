"""``gnt-instance``: add, remove, list, info, startup, shutdown, reboot, console, modify,
reinstall, rename, grow-disk.  This module is the command line (its parser and entry
point); the commands themselves are in ``instance_cmds``."""

from __future__ import annotations

import sys

from haven.cli import params, tags
from haven.cli.common import ArgParser, dispatch
from haven.cli.instance_cmds import (
    _simple,
    cmd_activate_disks,
    cmd_add,
    cmd_console,
    cmd_deactivate_disks,
    cmd_failover,
    cmd_grow_disk,
    cmd_info,
    cmd_list,
    cmd_list_fields,
    cmd_migrate,
    cmd_modify,
    cmd_move,
    cmd_reinstall,
    cmd_remove,
    cmd_rename,
    cmd_replace_disks,
)


def build_parser(prog: str = "gnt-instance") -> ArgParser:
    p = ArgParser(prog=prog, description="Manage instances")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)

    a = sub.add_parser("add", help="create an instance")
    a.add_argument("-t", "--disk-template", required=True)
    a.add_argument("--disk", action="append", type=params.indexed, metavar="N:size=SIZE")
    a.add_argument("-B", "--backend-parameters", dest="backend", type=params.kv_list)
    a.add_argument("-H", "--hypervisor-parameters", dest="hypervisor_params",
                   type=params.hv_params)
    a.add_argument("-O", "--os-parameters", dest="os_parameters", type=params.kv_list)
    a.add_argument("-o", "--os-type", dest="os")
    a.add_argument("-n", "--node", help="primary node (or pnode:snode)")
    a.add_argument("--net", action="append", type=params.indexed, metavar="N:mode=...")
    a.add_argument("--no-start", action="store_true")
    a.add_argument("--no-install", action="store_true")
    a.add_argument("--no-wait-for-sync", action="store_true",
                   help="drbd: return before the replica is in sync")
    a.add_argument("--hypervisor", help="kvm (default)")
    a.add_argument("--disk-format", choices=["raw", "qcow2"])
    a.add_argument("--no-ip-check", action="store_true")
    a.add_argument("--no-name-check", action="store_true")
    a.add_argument("-I", "--iallocator")
    a.add_argument("--submit", action="store_true")
    a.add_argument("name")
    a.set_defaults(fn=cmd_add)

    r = sub.add_parser("remove")
    r.add_argument("-f", "--force", action="store_true")
    r.add_argument("--shutdown-timeout", type=float, default=120.0)
    r.add_argument("--ignore-failures", action="store_true")
    r.add_argument("--submit", action="store_true")
    r.add_argument("name")
    r.set_defaults(fn=cmd_remove)

    ls = sub.add_parser("list")
    ls.add_argument("-o", "--output")
    ls.add_argument("--separator")
    ls.add_argument("--no-headers", action="store_true")
    ls.add_argument("--units")
    ls.add_argument("names", nargs="*")
    ls.set_defaults(fn=cmd_list)
    sub.add_parser("list-fields").set_defaults(fn=cmd_list_fields)

    i = sub.add_parser("info")
    i.add_argument("--all", action="store_true")
    i.add_argument("names", nargs="*")
    i.set_defaults(fn=cmd_info)

    for name, opid, helptext in (("startup", "OP_INSTANCE_STARTUP", "start instances"),
                                 ("start", "OP_INSTANCE_STARTUP", "start instances"),
                                 ("shutdown", "OP_INSTANCE_SHUTDOWN", "stop instances"),
                                 ("stop", "OP_INSTANCE_SHUTDOWN", "stop instances"),
                                 ("reboot", "OP_INSTANCE_REBOOT", "reboot instances")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--all", action="store_true")
        sp.add_argument("--submit", action="store_true")
        if opid == "OP_INSTANCE_STARTUP":
            sp.add_argument("-f", "--force", action="store_true")
        if opid == "OP_INSTANCE_SHUTDOWN":
            sp.add_argument("--timeout", type=float, default=None)
        if opid == "OP_INSTANCE_REBOOT":
            sp.add_argument("-t", "--type", dest="reboot_type",
                            choices=["soft", "hard", "full"], default="hard")
            sp.add_argument("--shutdown-timeout", type=float, default=None)
        sp.add_argument("names", nargs="*")
        sp.set_defaults(fn=_simple(opid))

    co = sub.add_parser("console", help="attach to the serial console (escape: Ctrl-])")
    co.add_argument("--show-cmd", action="store_true")
    co.add_argument("name")
    co.set_defaults(fn=cmd_console)

    m = sub.add_parser("modify")
    m.add_argument("-B", "--backend-parameters", dest="backend", type=params.kv_list)
    m.add_argument("-H", "--hypervisor-parameters", dest="hypervisor_params",
                   type=params.hv_params)
    m.add_argument("--disk", action="append", type=params.indexed,
                   metavar="add:size=SIZE|N:remove")
    m.add_argument("--new-primary")
    m.add_argument("-o", "--os-type", dest="os")
    m.add_argument("--offline", action="store_true")
    m.add_argument("--online", action="store_true")
    m.add_argument("--ha", metavar="on|off", default="",
                   help="(Haven) restart it elsewhere by itself when its node dies")
    m.add_argument("--ha-priority", type=int, help="(Haven) recovered first if higher")
    m.add_argument("--ha-max-restart", type=int,
                   help="(Haven) automatic restarts in place before giving up (0: 5)")
    m.add_argument("--ha-max-relocate", type=int,
                   help="(Haven) recovery attempts on another node per failure (0: 2)")
    m.add_argument("--submit", action="store_true")
    m.add_argument("name")
    m.set_defaults(fn=cmd_modify)

    ri = sub.add_parser("reinstall")
    ri.add_argument("-o", "--os-type", dest="os")
    ri.add_argument("-f", "--force", action="store_true")
    ri.add_argument("--submit", action="store_true")
    ri.add_argument("name")
    ri.set_defaults(fn=cmd_reinstall)

    rn = sub.add_parser("rename")
    rn.add_argument("--submit", action="store_true")
    rn.add_argument("name")
    rn.add_argument("new_name")
    rn.set_defaults(fn=cmd_rename)

    f = sub.add_parser("failover", help="restart an instance on its secondary node")
    f.add_argument("--ignore-consistency", action="store_true",
                   help="start even if the replica there is not UpToDate (loses writes)")
    f.add_argument("--shutdown-timeout", type=float, default=120.0)
    f.add_argument("-n", "--target-node", dest="node")
    f.add_argument("-I", "--iallocator", help="shared disks: pick the node with this "
                   "iallocator (hail), not the built-in allocator")
    f.add_argument("-f", "--force", action="store_true")
    f.add_argument("--submit", action="store_true")
    f.add_argument("name")
    f.set_defaults(fn=cmd_failover)
    mg = sub.add_parser("migrate", help="move a running instance live to another node")
    mg.add_argument("--non-live", action="store_true",
                    help="pause the instance for the whole copy")
    mg.add_argument("--migration-mode", choices=("live", "non-live"),
                    help="default: -H migration_mode, else live (non-live under TCG "
                         "with a QEMU older than 10.0)")
    mg.add_argument("--cleanup", action="store_true",
                    help="finish or roll back an interrupted migration")
    mg.add_argument("--allow-failover", action="store_true")
    mg.add_argument("--ignore-hvversions", action="store_true",
                    help="migrate even if the nodes run different QEMU versions")
    mg.add_argument("-n", "--target-node", dest="node")
    mg.add_argument("-I", "--iallocator", help="shared disks: pick the node with this "
                    "iallocator (hail), not the built-in allocator")
    mg.add_argument("-f", "--force", action="store_true")
    mg.add_argument("--submit", action="store_true")
    mg.add_argument("name")
    mg.set_defaults(fn=cmd_migrate)
    mv = sub.add_parser("move", help="copy a file-disk instance to another node")
    mv.add_argument("-n", "--target-node", dest="node")
    mv.add_argument("--shutdown-timeout", type=float, default=120.0)
    mv.add_argument("-f", "--force", action="store_true")
    mv.add_argument("--submit", action="store_true")
    mv.add_argument("name")
    mv.set_defaults(fn=cmd_move)
    ad = sub.add_parser("activate-disks")
    ad.add_argument("--submit", action="store_true")
    ad.add_argument("name")
    ad.set_defaults(fn=cmd_activate_disks)
    dd = sub.add_parser("deactivate-disks")
    dd.add_argument("-f", "--force", action="store_true")
    dd.add_argument("--submit", action="store_true")
    dd.add_argument("name")
    dd.set_defaults(fn=cmd_deactivate_disks)
    rd = sub.add_parser("replace-disks")
    rd.add_argument("-s", "--on-secondary", action="store_true")
    rd.add_argument("-p", "--on-primary", action="store_true")
    rd.add_argument("-n", "--new-secondary")
    rd.add_argument("-a", "--auto", action="store_true")
    rd.add_argument("--submit", action="store_true")
    rd.add_argument("name")
    rd.set_defaults(fn=cmd_replace_disks)

    g = sub.add_parser("grow-disk")
    g.add_argument("--absolute", action="store_true")
    g.add_argument("--submit", action="store_true")
    g.add_argument("name")
    g.add_argument("disk_index", type=int)
    g.add_argument("amount")
    g.set_defaults(fn=cmd_grow_disk)
    tags.add_parsers(sub, "instance", "INSTANCE")
    return p


def main(argv: list[str] | None = None, prog: str = "gnt-instance") -> int:
    return dispatch(build_parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())

"""What each ``gnt-instance`` command does (add, remove, list, info, startup, shutdown,
reboot, console, modify, reinstall, rename, grow-disk, failover, migrate, move and the
disk commands): builds its opcode, submits the job and prints the result.  The parser
that maps the command line onto these is ``gnt_instance``."""

from __future__ import annotations

import sys
from typing import Any

from haven.cli import params
from haven.cli.client import Client
from haven.cli.common import (
    format_unit,
    parse_fields,
    print_fields,
    print_listing,
    submit_and_wait,
)
from haven.errors import ConfirmationError, InvalidInput

FIELDS: dict[str, tuple[str, bool, Any]] = {
    "name": ("Instance", False, None), "hypervisor": ("Hypervisor", False, None),
    "os": ("OS", False, None), "pnode": ("Primary_node", False, None),
    "snodes": ("Secondary_Nodes", False, None), "status": ("Status", False, None),
    "oper_ram": ("Memory", True, format_unit), "oper_vcpus": ("VCPUs", True, None),
    "oper_state": ("Running", False, None), "admin_state": ("InstanceState", False, None),
    "admin_up": ("Autostart", False, None), "disk_template": ("Disk_template", False, None),
    "disk.sizes": ("Disk_sizes", False, None), "disk_usage": ("DiskUsage", True, format_unit),
    "disk.count": ("Disks", True, None), "nic.count": ("NICs", True, None),
    "nic.macs": ("NIC_MACs", False, None), "nic.ips": ("NIC_IPs", False, None),
    "nic.modes": ("NIC_modes", False, None), "nic.links": ("NIC_links", False, None),
    "uuid": ("UUID", False, None), "ctime": ("CTime", False, None),
    "mtime": ("MTime", False, None), "serial_no": ("SerialNo", True, None),
    "tags": ("Tags", False, None), "restarts": ("Restarts", True, None),
    "accel": ("Accel", False, None), "generation": ("Generation", True, None),
    "degraded": ("Degraded", False, None), "network_port": ("Network_port", True, None),
    "ha": ("HA", False, None), "ha_priority": ("HA_priority", True, None),
    "ha_state": ("HA_state", False, None), "ha_reason": ("HA_reason", False, None),
}
DEFAULT_FIELDS = ["name", "hypervisor", "os", "pnode", "status", "oper_ram"]


def _names(c: Client, args: Any) -> list[str]:
    if getattr(args, "all", False):
        if args.names:
            raise InvalidInput("Give instance names or --all, not both.")
        return [i["id"] for i in c.get("/2/instances")]
    if not args.names:
        raise InvalidInput("Name at least one instance, or use --all.")
    return list(args.names)


def cmd_add(args: Any) -> int:
    if args.node and ":" in args.node:
        pnode, snode = args.node.split(":", 1)
    else:
        pnode, snode = args.node or "", ""
    op: dict[str, Any] = {
        "OP_ID": "OP_INSTANCE_CREATE", "instance_name": args.name,
        "disk_template": args.disk_template, "os_type": args.os or "",
        "disks": params.disks(args.disk or []), "beparams": args.backend or {},
        "hvparams": args.hypervisor_params or {}, "pnode": pnode, "snode": snode,
        "start": not args.no_start, "no_install": args.no_install,
        "wait_for_sync": not args.no_wait_for_sync,
        "nics": [p for _i, p in sorted(args.net or [], key=lambda x: int(x[0]))],
        "hypervisor": args.hypervisor or "kvm", "osparams": args.os_parameters or {},
        "iallocator": args.iallocator or "",
    }
    if args.disk_format:
        op["disk_format"] = args.disk_format
    submit_and_wait(Client.from_config(), [op], args.submit)
    return 0


def cmd_list(args: Any) -> int:
    fields = parse_fields(args.output, DEFAULT_FIELDS, FIELDS)
    insts = print_listing("instance", Client.from_config().get("/2/instances?bulk=1"),
                          args.names, fields, FIELDS, args,
                          {"oper_ram": "-", "oper_vcpus": "-"})
    # The table stays Ganeti's (scripts parse it); degraded disks are flagged aside.
    for i in insts:
        if i.get("degraded"):
            print(f"WARNING: {i['name']} has degraded disks: {'; '.join(i['degraded'])}",
                  file=sys.stderr)
    return 0


def cmd_list_fields(_args: Any) -> int:
    return print_fields(FIELDS)


def cmd_info(args: Any) -> int:
    c = Client.from_config()
    names = [i["id"] for i in c.get("/2/instances")] if args.all or not args.names \
        else args.names
    for name in names:
        i = c.get(f"/2/instances/{name}")
        print(f"Instance name: {i['name']}")
        print(f"UUID: {i['uuid']}")
        print(f"Serial number: {i['serial_no']}")
        print(f"State: configured to be {i['admin_state']}, actual state is "
              f"{'up' if i['oper_state'] else 'down'} ({i['status']})")
        print("  Nodes:")
        print(f"    - primary: {i['pnode']}")
        print(f"    - secondaries: {', '.join(i['snodes']) or ''}")
        print(f"  Operating system: {i['os']}")
        print(f"  Tags: {', '.join(i.get('tags') or []) or '(none)'}")
        print(f"  Generation: {i['generation']}; automatic restarts: {i['restarts']}")
        if "ha" in i:
            print(f"  High availability: {i['ha']} (priority {i['ha_priority']}, "
                  f"max_restart {i['ha_max_restart']}, max_relocate {i['ha_max_relocate']})")
            if i.get("ha_state"):
                rec = i.get("ha_recovery") or {}
                print(f"    last recovery: {i['ha_state']} from {rec.get('node', '?')}"
                      + (f" to {rec['target']}" if rec.get("target") else "")
                      + (f": {i['ha_reason']}" if i.get("ha_reason") else ""))
        if i.get("observed"):
            print(f"  Last agent message: {i['observed']}")
        print("  Hypervisor: " + i["hypervisor"]
              + (f" (accelerator {i['accel']}, pid {i['pid']})" if i.get("pid") else ""))
        for k, v in sorted(i["hvparams"].items()):
            print(f"    {k}: {v}")
        print("  Back-end parameters:")
        for k, v in sorted(i["beparams"].items()):
            print(f"    - {k}: {v}")
        print("  NICs:")
        for n in i["nics"]:
            print(f"    - nic/{n['index']}: MAC: {n['mac']}, IP: {n['ip'] or 'None'}, "
                  f"mode: {n['mode']}, link: {n['link'] or '-'}")
        print(f"  Disk template: {i['disk_template']}")
        print("  Disks:")
        for dk in i["disks"]:
            print(f"    - disk/{dk['index']}: {dk['format']}, size {format_unit(dk['size'])}"
                  f", mode {dk['mode']}" + (f", {dk['path']}" if dk["path"] else "")
                  + (f", provider {dk['provider']}" if dk.get("provider") else "")
                  + "".join(f", {k}={v}" for k, v in sorted((dk.get("params") or {}).items())))
            for node, disks in sorted(i.get("replicas", {}).items()):
                r = disks.get(str(dk["index"]), {})
                role = "primary" if node == i["pnode"] else "secondary"
                pct = f" {r.get('percent', 0):.0f}%" if r.get("state") == "Inconsistent" else ""
                msg = f" ({r['message']})" if r.get("message") else ""
                print(f"      {role} {node}: {r.get('state', 'Unknown')}{pct}{msg}")
        if i.get("replica_generation") is not None:
            print(f"  Replica states at generation {i['replica_generation']}"
                  + (f"; port {i['network_port']}" if i.get("network_port") else ""))
    return 0


def _simple(opid: str, extra: dict[str, Any] | None = None) -> Any:
    def cmd(args: Any) -> int:
        c = Client.from_config()
        names = _names(c, args)
        for name in names:
            op = {"OP_ID": opid, "instance_name": name, **(extra or {})}
            for key in ("timeout", "reboot_type", "shutdown_timeout"):
                if hasattr(args, key) and getattr(args, key) is not None:
                    op[key] = getattr(args, key)
            if hasattr(args, "force") and opid == "OP_INSTANCE_STARTUP":
                op["force"] = args.force
            submit_and_wait(c, [op], args.submit)
        return 0
    return cmd


def _confirm(text: str, force: bool) -> None:
    if force:
        return
    if not sys.stdin.isatty():
        raise ConfirmationError(f"{text} Add --force to confirm when not on a terminal.")
    answer = input(f"{text}\nContinue? y/[n]: ").strip().lower()
    if answer not in ("y", "yes"):
        raise ConfirmationError("Aborted: not confirmed.")


def cmd_remove(args: Any) -> int:
    _confirm(f"This will remove the instance {args.name} and all the data on its disks.",
             args.force)
    submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_REMOVE", "instance_name": args.name,
        "shutdown_timeout": args.shutdown_timeout,
        "ignore_failures": args.ignore_failures}], args.submit)
    return 0


def cmd_console(args: Any) -> int:
    from haven.cli import console

    c = Client.from_config()
    if args.show_cmd:
        info = c.get(f"/2/instances/{args.name}/console")
        print(" ".join(info["command"]))
        return 0
    return console.attach(c, args.name)


def cmd_modify(args: Any) -> int:
    op: dict[str, Any] = {"OP_ID": "OP_INSTANCE_SET_PARAMS", "instance_name": args.name,
                          "beparams": args.backend or {},
                          "hvparams": args.hypervisor_params or {},
                          "pnode": args.new_primary or "", "os_name": args.os or ""}
    changes = []
    for ident, p in args.disk or []:
        if ident == "add":
            changes.append(["add", -1, p])
        elif p.get("remove") or ident == "remove":
            changes.append(["remove", int(ident) if ident.isdigit() else -1, {}])
        else:
            raise InvalidInput(f"--disk {ident}:... is not understood; use --disk "
                               f"add:size=1g or --disk N:remove.")
    op["disks"] = changes
    if args.offline:
        op["offline"] = True
    if args.online:
        op["offline"] = False
    if args.ha:
        op["ha"] = args.ha
    for key in ("ha_priority", "ha_max_restart", "ha_max_relocate"):
        if getattr(args, key) is not None:
            op[key] = getattr(args, key)
    result = submit_and_wait(Client.from_config(), [op], args.submit)
    if result:
        print(f"Modified instance {args.name}")
        for k, v in result:
            print(f" - {k} -> {v}")
    return 0


def cmd_reinstall(args: Any) -> int:
    _confirm(f"This will reinstall the instance {args.name} and remove all its data.",
             args.force)
    op = {"OP_ID": "OP_INSTANCE_REINSTALL", "instance_name": args.name}
    if args.os:
        op["os_type"] = args.os
    submit_and_wait(Client.from_config(), [op], args.submit)
    return 0


def cmd_rename(args: Any) -> int:
    res = submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_RENAME", "instance_name": args.name,
        "new_name": args.new_name}], args.submit)
    if res:
        print(f"Instance '{res['old_name']}' renamed to '{res['instance']}'")
    return 0


def cmd_grow_disk(args: Any) -> int:
    submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_GROW_DISK", "instance_name": args.name,
        "disk": args.disk_index, "amount": args.amount, "absolute": args.absolute}],
        args.submit)
    return 0


def cmd_failover(args: Any) -> int:
    if not args.force and sys.stdin.isatty():
        _confirm(f"Failover will stop instance {args.name} on its primary and start it on "
                 f"the other node.", False)
    res = submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": args.name,
        "ignore_consistency": args.ignore_consistency,
        "shutdown_timeout": args.shutdown_timeout, "target_node": args.node or "",
        "iallocator": args.iallocator or ""}],
        args.submit)
    if res:
        print(f"Instance {res['instance']} failed over from {res['from']} to {res['to']}.")
    return 0


def cmd_activate_disks(args: Any) -> int:
    res = submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_ACTIVATE_DISKS", "instance_name": args.name}], args.submit)
    for node, disk, path in res or []:
        print(f"{node}:{disk}:{path}")
    return 0


def cmd_deactivate_disks(args: Any) -> int:
    submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_DEACTIVATE_DISKS", "instance_name": args.name,
        "force": args.force}], args.submit)
    return 0


def cmd_replace_disks(args: Any) -> int:
    modes = [m for m, on in (("replace_on_secondary", args.on_secondary),
                             ("replace_on_primary", args.on_primary),
                             ("replace_new_secondary", bool(args.new_secondary)),
                             ("replace_auto", args.auto)) if on]
    if len(modes) != 1:
        raise InvalidInput("Give exactly one of -s, -p, -n NODE or -a.")
    res = submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_REPLACE_DISKS", "instance_name": args.name,
        "mode": modes[0], "remote_node": args.new_secondary or ""}], args.submit)
    if res and not res.get("replaced", True):
        print(f"Nothing to do: the replicas of {args.name} are {res.get('reason')}.")
    return 0


def cmd_migrate(args: Any) -> int:
    res = submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": args.name,
        "mode": "non-live" if args.non_live else (args.migration_mode or ""),
        "cleanup": args.cleanup,
        "allow_failover": args.allow_failover, "target_node": args.node or "",
        "iallocator": args.iallocator or "",
        "ignore_hvversions": args.ignore_hvversions}],
        args.submit)
    if res and res.get("cleanup"):
        print(f"Cleanup of {args.name}: {res['cleanup']}.")
    elif res:
        print(f"Instance {res['instance']} migrated {res.get('mode', 'live')} from "
              f"{res['from']} to {res['to']} (total {res.get('total_ms')} ms, downtime "
              f"{res.get('downtime_ms')} ms).")
    return 0


def cmd_move(args: Any) -> int:
    res = submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_INSTANCE_MOVE", "instance_name": args.name,
        "target_node": args.node or "", "shutdown_timeout": args.shutdown_timeout}],
        args.submit)
    if res:
        print(f"Instance {res['instance']} moved from {res['from']} to {res['to']}.")
    return 0

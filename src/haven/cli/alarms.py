"""``haven alarms``: the active alarms (``--all``: with the cleared ones), ``haven alarms
ack ID`` to acknowledge one, ``haven alarms settings`` and ``haven alarms set KEY VALUE``
for the thresholds and where alarms are sent."""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote

from haven.cli.client import Client
from haven.cli.common import ArgParser, render_table, run


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _state(a: dict[str, Any]) -> str:
    if a.get("state") == "cleared":
        return "cleared"
    return "acked" if a.get("acked_at") else "ACTIVE"


def cmd_list(args: Any) -> int:
    alarms = Client.from_config().get("/haven/alarms" + ("?all=1" if args.all else ""))
    if args.json:
        print(json.dumps(alarms, indent=2))
        return 0
    if not alarms:
        print("No active alarms." if not args.all else "No alarms, active or cleared.")
        return 0
    rows = []
    for a in alarms:
        acked = f"{a['acked_by']} {_when(a['acked_at'])}" if a.get("acked_at") else "-"
        rows.append([a["id"], a["severity"], _state(a), _when(a["raised"]),
                     _when(a["cleared"]), acked, a["message"]])
    print(render_table(["ID", "Severity", "State", "Raised", "Cleared", "Acknowledged",
                        "Message"], rows))
    return 0


def _person() -> str:
    # Everyone's CLI speaks as the cluster's admin user: name the person at the terminal.
    return os.environ.get("SUDO_USER") or getpass.getuser()


def cmd_ack(args: Any) -> int:
    c = Client.from_config()
    for alarm_id in args.ids:
        a = c.post(f"/haven/alarms/{quote(alarm_id, safe=':')}/ack",
                   {"by": args.by or _person()})
        print(f"Alarm {a['id']} acknowledged by {a['acked_by']} at "
              f"{_when(a['acked_at'])}.")
    return 0


def _print_settings(data: dict[str, Any]) -> None:
    rows = [[k, json.dumps(v), data.get("help", {}).get(k, "")]
            for k, v in data["settings"].items()]
    print(render_table(["Setting", "Value", "Meaning"], rows))


def cmd_settings(_args: Any) -> int:
    _print_settings(Client.from_config().get("/haven/alarms/settings"))
    return 0


def cmd_set(args: Any) -> int:
    data = Client.from_config().put("/haven/alarms/settings", {args.key: args.value})
    print(f"Alarm setting {args.key} is now {json.dumps(data['settings'][args.key])}.")
    return 0


def build_parser(prog: str = "haven alarms") -> ArgParser:
    p = ArgParser(prog=prog, description="Alarms: list, acknowledge, settings")
    p.add_argument("--all", action="store_true", help="also the cleared alarms")
    p.add_argument("--json", action="store_true", help="print the alarms as JSON")
    p.set_defaults(fn=cmd_list)
    sub = p.add_subparsers(dest="command", parser_class=ArgParser)
    ls = sub.add_parser("list", help="the active alarms (the default)")
    ls.add_argument("--all", action="store_true", help="also the cleared alarms")
    ls.add_argument("--json", action="store_true", help="print the alarms as JSON")
    ls.set_defaults(fn=cmd_list)
    ack = sub.add_parser("ack", help="acknowledge alarms (they stay until they clear)")
    ack.add_argument("ids", nargs="+", metavar="ID")
    ack.add_argument("--by", help="who acknowledges (default: the user at this terminal)")
    ack.set_defaults(fn=cmd_ack)
    sub.add_parser("settings", help="thresholds and notification targets"
                   ).set_defaults(fn=cmd_settings)
    st = sub.add_parser("set", help="change one setting (haven alarms set KEY VALUE)")
    st.add_argument("key")
    st.add_argument("value", help="the new value ('' for none, for the targets)")
    st.set_defaults(fn=cmd_set)
    return p


def main(argv: list[str] | None = None, prog: str = "haven alarms") -> int:
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    return run(lambda: int(args.fn(args)))


if __name__ == "__main__":
    sys.exit(main())

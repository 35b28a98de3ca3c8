"""``haven ha status``: every node's HA state (online, unreachable, fenced, recovering,
back, manual) and every instance's HA setting and last recovery, with timings."""

from __future__ import annotations

import sys
import time
from typing import Any

from haven.cli.client import Client
from haven.cli.common import ArgParser, render_table, run


def _ago(ts: float) -> str:
    return f"{time.time() - ts:.0f} s ago" if ts else "-"


def cmd_status(_args: Any) -> int:
    data = Client.from_config().get("/haven/ha")
    print(f"Master: {data['master']}")
    rows = []
    for n in data["nodes"]:
        role = "master" if n["master"] else ("offline" if n["offline"] else
                                             ("witness" if not n["vm_capable"] else ""))
        rows.append([n["name"], "Y" if n["alive"] else "N", n["state"], role,
                     _ago(n["since"]) if n["state"] != "online" else "-", n["reason"]])
    print(render_table(["Node", "Lease", "HA_state", "Role", "Since", "Why"], rows))
    rows = []
    for i in sorted(data["instances"], key=lambda i: i["name"]):
        rec = i.get("ha_recovery") or {}
        took = ""
        if i.get("ha_state") == "recovered" and rec.get("finished") and rec.get("lost_at"):
            took = f"{rec['finished'] - rec['lost_at']:.1f} s"
        rows.append([i["name"], i["pnode"], i["ha"], str(i["ha_priority"]),
                     i.get("ha_state") or "-",
                     f"{rec.get('node', '')}->{rec.get('target', '')}" if rec else "-",
                     took or "-", i.get("ha_reason") or ""])
    print()
    print(render_table(["Instance", "Primary", "HA", "Priority", "Last_recovery", "Move",
                        "Took", "Why"], rows))
    return 0


def build_parser(prog: str = "haven ha") -> ArgParser:
    p = ArgParser(prog=prog, description="High availability: nodes' fencing states and "
                  "instances' recoveries")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="nodes' HA states, recoveries and their timings"
                   ).set_defaults(fn=cmd_status)
    return p


def main(argv: list[str] | None = None, prog: str = "haven ha") -> int:
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    return run(lambda: int(args.fn(args)))


if __name__ == "__main__":
    sys.exit(main())

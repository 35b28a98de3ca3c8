"""``gnt-job``: list, info, watch, cancel."""

from __future__ import annotations

import sys
import time
from typing import Any

from haven.cli.client import Client
from haven.cli.common import ArgParser, dispatch, parse_fields, print_log, render_table

FIELDS: dict[str, tuple[str, bool]] = {
    "id": ("ID", True), "status": ("Status", False), "summary": ("Summary", False),
    "received_ts": ("Received", False), "start_ts": ("Start", False),
    "end_ts": ("End", False), "opstatus": ("OpCode_status", False),
    "master": ("Master", False),
}
DEFAULT_FIELDS = ["id", "status", "summary"]


def _ts(v: Any) -> str:
    if not v:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v[0])) + f".{v[1]:06d}"


def cmd_list(args: Any) -> int:
    fields = parse_fields(args.output, DEFAULT_FIELDS, FIELDS)
    jobs = Client.from_config().get("/2/jobs?bulk=1")
    if args.running:
        jobs = [j for j in jobs if j["status"] in ("running", "waiting", "canceling")]
    if args.pending:
        jobs = [j for j in jobs if j["status"] in ("queued", "waiting")]
    rows = []
    for j in jobs:
        row = []
        for f in fields:
            v = j.get(f)
            row.append(_ts(v) if f.endswith("_ts") else v)
        rows.append(row)
    out = render_table([FIELDS[f][0] for f in fields], rows, args.separator,
                       args.no_headers, [FIELDS[f][1] for f in fields])
    if out:
        print(out)
    return 0


def cmd_info(args: Any) -> int:
    c = Client.from_config()
    for jid in args.ids:
        j = c.get(f"/2/jobs/{jid}")
        print(f"- Job ID: {j['id']}")
        print(f"  Status: {j['status']}")
        print(f"  Received:         {_ts(j['received_ts'])}")
        print(f"  Processing start: {_ts(j['start_ts'])}")
        print(f"  Processing end:   {_ts(j['end_ts'])}")
        print(f"  Master: {j.get('master') or '-'}")
        print("  Opcodes:")
        for op, st, res, log in zip(j["ops"], j["opstatus"], j["opresult"], j["oplog"],
                                    strict=True):
            print(f"    - Opcode: {op.get('OP_ID')}")
            print(f"      Status: {st}")
            print("      Input fields:")
            for k, v in sorted(op.items()):
                if k != "OP_ID":
                    print(f"        {k}: {v}")
            print(f"      Result: {res}")
            print("      Execution log:")
            for entry in log:
                print(f"        {entry[0]}:{time.ctime(entry[1])} {entry[2]} {entry[3]}")
    return 0


def cmd_watch(args: Any) -> int:
    c = Client.from_config()
    print(f"Output from job {args.id} follows")
    print("-----------------------------")
    job = c.wait_job(int(args.id), print_log)
    return 0 if job["status"] == "success" else 1


def cmd_cancel(args: Any) -> int:
    c = Client.from_config()
    rc = 0
    for jid in args.ids:
        ok, msg = c.delete(f"/2/jobs/{jid}")
        print(msg)
        rc = rc or (0 if ok else 1)
    return rc


def build_parser(prog: str = "gnt-job") -> ArgParser:
    p = ArgParser(prog=prog, description="Inspect and cancel jobs")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    lp = sub.add_parser("list")
    lp.add_argument("-o", "--output")
    lp.add_argument("--separator")
    lp.add_argument("--no-headers", action="store_true")
    lp.add_argument("--running", action="store_true")
    lp.add_argument("--pending", action="store_true")
    lp.set_defaults(fn=cmd_list)
    ip = sub.add_parser("info")
    ip.add_argument("ids", nargs="+", type=int)
    ip.set_defaults(fn=cmd_info)
    wp = sub.add_parser("watch")
    wp.add_argument("id", type=int)
    wp.set_defaults(fn=cmd_watch)
    cp = sub.add_parser("cancel")
    cp.add_argument("ids", nargs="+", type=int)
    cp.set_defaults(fn=cmd_cancel)
    return p


def main(argv: list[str] | None = None, prog: str = "gnt-job") -> int:
    return dispatch(build_parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())

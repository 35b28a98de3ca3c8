"""``gnt-debug delay``: a trivial job, for tests and latency benchmarks."""

from __future__ import annotations

import sys
from typing import Any

from haven.cli.client import Client
from haven.cli.common import ArgParser, dispatch, submit_and_wait


def cmd_delay(args: Any) -> int:
    op = {"OP_ID": "OP_TEST_DELAY", "duration": args.duration,
          "on_master": not args.no_master, "repeat": args.repeat,
          "no_resume": args.no_resume}
    submit_and_wait(Client.from_config(), [op], args.submit)
    return 0


def build_parser(prog: str = "gnt-debug") -> ArgParser:
    p = ArgParser(prog=prog, description="Debugging commands")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    dp = sub.add_parser("delay", help="run a job that sleeps DURATION seconds")
    dp.add_argument("--no-master", action="store_true")
    dp.add_argument("-r", "--repeat", type=int, default=0)
    dp.add_argument("--submit", action="store_true")
    dp.add_argument("--no-resume", action="store_true",
                    help="a new master fails the job instead of running it again")
    dp.add_argument("duration", type=float)
    dp.set_defaults(fn=cmd_delay)
    return p


def main(argv: list[str] | None = None, prog: str = "gnt-debug") -> int:
    return dispatch(build_parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())

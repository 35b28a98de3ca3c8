"""``haven``: the local cluster (up, down, status, kill, start) and the ``gnt-*``
families under one command (``haven cluster info`` = ``gnt-cluster info``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from haven.cli.common import ArgParser, render_table, run

FAMILIES = {"cluster": "gnt_cluster", "node": "gnt_node", "job": "gnt_job",
            "debug": "gnt_debug", "instance": "gnt_instance", "os": "gnt_os",
            "events": "events", "ha": "ha", "alarms": "alarms"}


def cmd_up(args: Any) -> int:
    from haven.sim import cluster

    layout = cluster.up(args.base_dir, args.nodes, args.subnet, args.name, args.lease_ttl,
                        hypervisors=tuple(args.hypervisors.split(",")),
                        use_netns=args.netns, witness=args.witness, storage=args.storage)
    master = cluster.wait_master(layout)
    print(f"Cluster {layout.cluster}: {len(layout.nodes)} node(s), master {master}.")
    from haven import clientconf

    print(f"Client config: {clientconf.config_path()}")
    return 0


def cmd_down(args: Any) -> int:
    from haven.sim import cluster

    if args.destroy:
        cluster.destroy(args.base_dir)
        print("Local cluster stopped and its files deleted.")
        return 0
    layout = cluster.down(args.base_dir)
    print("No local cluster." if layout is None else
          f"Local cluster {layout.cluster} stopped; its data is kept for 'haven up'.")
    return 0


def cmd_status(args: Any) -> int:
    from haven.sim import cluster

    rows = cluster.status(args.base_dir)
    if not rows:
        print("No local cluster; create one with 'haven up'.")
        return 1
    print(render_table(["Node", "Address", "Daemon", "etcd", "Master", "Role"],
                       [[r["node"], r["address"], r["noded"] or "down", r["etcd"] or "down",
                         r["master"], r["role"] or "-"] for r in rows]))
    return 0


def cmd_kill(args: Any) -> int:
    from haven.sim import cluster

    layout = _layout(args.base_dir)
    if args.node == "san":
        from haven.sim import san

        pids = san.kill(args.base_dir)
        print(f"Killed the storage server: {' '.join(map(str, pids)) or 'it was not running'}")
        return 0
    pids = cluster.kill_node(layout.node(args.node))
    print(f"Killed {len(pids)} process(es) of {args.node}: {' '.join(map(str, pids))}")
    return 0


def cmd_stop(args: Any) -> int:
    from haven.sim import cluster

    layout = _layout(args.base_dir)
    stopped = cluster.shutdown_node(layout.node(args.node))
    print(f"Stopped {args.node}" + (f" and its VMs {', '.join(stopped)}" if stopped
                                    else "") + ".")
    return 0


def cmd_start(args: Any) -> int:
    from haven.sim import cluster

    layout = _layout(args.base_dir)
    if args.node == "san":
        from haven.sim import san

        srv = san.start(args.base_dir)
        print(f"Storage server tgtd serves {srv.portal} again.")
        return 0
    node = layout.node(args.node)
    began = time.monotonic()
    cluster.start_node(node)
    # As a machine that has booted: back in the cluster (its etcd rejoined, its lease
    # held), so that the next command already sees it.
    if cluster.wait_active(node, timeout=60.0):
        print(f"Started {args.node} (back in the cluster after "
              f"{time.monotonic() - began:.1f} s).")
        return 0
    print(f"Started {args.node}, but it has not reached the cluster after 60 s; see "
          f"{node.dir / 'logs' / 'noded.log'}.", file=sys.stderr)
    return 1


def cmd_join_token(args: Any) -> int:
    """Print the node's join token (made on first use; ``--new`` replaces it)."""
    from haven.cli.local import data_dir
    from haven.daemon.localstate import LocalState
    from haven.errors import OpPrereqError

    local = LocalState(args.data_dir or data_dir())
    joined = local.joined()
    if joined is not None:
        raise OpPrereqError(f"This node already belongs to cluster {joined.cluster_name}; "
                            f"a join token is for a node not in any cluster.")
    if not local.dir.is_dir():
        raise OpPrereqError(f"No node data directory at {local.dir}; start haven-noded "
                            f"there first, or give --data-dir.")
    if args.new:
        local.new_join_token()
    print(local.join_token())
    return 0


def cmd_maintenance(args: Any) -> int:
    from haven.cli import evacuate

    for line in evacuate.maintenance(args.node, end=args.end):
        print(line)
    return 0


def cmd_demo(_args: Any) -> int:
    from haven.sim import demo

    return demo.main()


def _layout(base: Path) -> Any:
    from haven.errors import NotClusterError
    from haven.sim import cluster

    layout = cluster.load_layout(base)
    if layout is None:
        raise NotClusterError(f"No local cluster in {base}; create one with 'haven up'.")
    return layout


def build_parser() -> ArgParser:
    from haven.sim.cluster import DEFAULT_BASE

    p = ArgParser(prog="haven", description="Haven: HA virtualization cluster manager")
    p.add_argument("--base-dir", type=Path, default=DEFAULT_BASE,
                   help="where the local cluster lives (default %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    up = sub.add_parser("up", help="start a whole cluster on this machine")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--subnet", default="127.0.10", help="loopback prefix for node IPs")
    up.add_argument("--name", default="haven-local", help="cluster name")
    up.add_argument("--lease-ttl", type=int, default=5)
    up.add_argument("--netns", action="store_true",
                    help="each node in its own network namespace on a bridged LAN "
                         "(10.77.0.0/24; root only)")
    up.add_argument("--witness", action="store_true",
                    help="the last node is a vote-only witness (etcd voter, no VMs)")
    up.add_argument("--hypervisors", default="kvm",
                    help="enabled hypervisors (kvm; 'kvm,fake' for benchmarks)")
    up.add_argument("--storage", default="", choices=["", "iscsi"],
                    help="iscsi: also a local iSCSI storage server (tgtd) for -t ext "
                         "disks with provider=iscsi")
    up.set_defaults(fn=cmd_up)
    down = sub.add_parser("down", help="stop the local cluster (data is kept)")
    down.add_argument("--destroy", action="store_true", help="also delete its files")
    down.set_defaults(fn=cmd_down)
    sub.add_parser("status", help="processes of the local cluster").set_defaults(
        fn=cmd_status)
    k = sub.add_parser("kill", help="SIGKILL every process of one node (or 'san', the "
                       "storage server)")
    k.add_argument("node")
    k.set_defaults(fn=cmd_kill)
    st = sub.add_parser("stop", help="shut one node down cleanly (daemon, VMs, etcd)")
    st.add_argument("node")
    st.set_defaults(fn=cmd_stop)
    s = sub.add_parser("start", help="start a killed or stopped node (or 'san') again")
    s.add_argument("node")
    s.set_defaults(fn=cmd_start)
    sub.add_parser("demo", help="local cluster and a tour, with measured times"
                   ).set_defaults(fn=cmd_demo)
    mt = sub.add_parser("maintenance", help="move everything off a node (master role "
                        "too) and mark it offline; --end reverses it")
    mt.add_argument("--end", action="store_true")
    mt.add_argument("node")
    mt.set_defaults(fn=cmd_maintenance)
    jt = sub.add_parser("join-token", help="print this standby node's one-time token for "
                        "'gnt-node add --join-token' on the master")
    jt.add_argument("--new", action="store_true", help="make a new token (the old one "
                    "no longer works)")
    jt.add_argument("--data-dir", type=Path, default=None,
                    help="the node's data directory (default: $HAVEN_DATA_DIR or "
                         "/var/lib/haven; a local cluster's node: <base-dir>/<node>)")
    jt.set_defaults(fn=cmd_join_token)
    for fam in FAMILIES:
        own = {"events": "the cluster's events", "ha": "high availability status",
               "alarms": "active alarms, acknowledge, settings"}
        sub.add_parser(fam, help=own.get(fam, f"same as gnt-{fam}"), add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # "haven node list" is "gnt-node list": hand the rest of the line over unparsed.
    skip = False
    for i, word in enumerate(argv):
        if skip or word.startswith("-"):
            skip = word == "--base-dir"  # the only global option with a value
            continue
        if word in FAMILIES:
            import importlib

            mod = importlib.import_module(f"haven.cli.{FAMILIES[word]}")
            return int(mod.main(argv[i + 1:], prog=f"haven {word}"))
        break
    args = build_parser().parse_args(argv)
    return run(lambda: int(args.fn(args)))


if __name__ == "__main__":
    sys.exit(main())

"""``gnt-cluster``: init, info, verify, getmaster, master-failover, redist-conf,
destroy, version."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from typing import Any

from haven import __version__, clientconf
from haven.cli import tags
from haven.cli.client import Client, local_daemon
from haven.cli.common import ArgParser, dispatch, submit_and_wait
from haven.errors import EXIT_FAILURE, ConfirmationError, InvalidInput, NotClusterError


def cmd_init(args: Any) -> int:
    from haven.cli import local

    name = args.node_name or socket.gethostname().split(".")[0]
    try:
        address = args.primary_ip or socket.gethostbyname(name)
    except OSError as exc:
        raise InvalidInput(f"Cannot resolve this node's name {name!r}; give its address "
                           f"with --primary-ip.") from exc
    client = local.start_daemon(name, address, local.data_dir(), args.api_port)
    endpoints = [e for e in (args.etcd_endpoints or "").split(",") if e]
    conf = client.post("/haven/node/init", {
        "cluster_name": args.cluster_name, "etcd_endpoints": endpoints,
        "lease_ttl": args.lease_ttl, "vm_capable": args.vm_capable}, timeout=90)
    path = clientconf.save(conf)
    print(f"Cluster {args.cluster_name} initialised; master is {name}. "
          f"Client config written to {path}.")
    return 0


def cmd_info(_args: Any) -> int:
    i = Client.from_config().get("/2/info")
    ctime = time.ctime(i["ctime"])
    mtime = time.ctime(i["mtime"])
    print(f"Cluster name: {i['name']}")
    print(f"Cluster UUID: {i['uuid']}")
    print(f"Creation time: {ctime}")
    print(f"Modification time: {mtime}")
    print(f"Master node: {i['master']}")
    print(f"Architecture (this node): {i['architecture'][0]} ({i['architecture'][1]})")
    print(f"Tags: {', '.join(i.get('tags') or []) or '(none)'}")
    print(f"Default hypervisor: {i['default_hypervisor']}")
    print(f"Enabled hypervisors: {', '.join(i['enabled_hypervisors'])}")
    print(f"Enabled disk templates: {', '.join(i['enabled_disk_templates'])}")
    print("Cluster parameters:")
    print(f"  candidate pool size: {i['candidate_pool_size']}")
    print(f"  maximal number of jobs running simultaneously: {i['max_running_jobs']}")
    print(f"  mac prefix: {i['mac_prefix']}")
    print(f"  file storage path: {i['file_storage_dir']}")
    print(f"  shared file storage path: {i['shared_file_storage_dir']}")
    print(f"  default instance allocator: {i['default_iallocator']}")
    print("Coordination store:")
    kind = "managed (one member per master candidate)" if i["etcd_managed"] else "external"
    print(f"  etcd: {kind}")
    if i["etcd_endpoints"]:
        print(f"  endpoints: {', '.join(i['etcd_endpoints'])}")
    print(f"  node lease TTL: {i['lease_ttl']} s")
    return 0


def cmd_getmaster(_args: Any) -> int:
    master = Client.from_config().get("/haven/master")
    if master is None:
        print("No master is elected right now (a failover may be in progress).",
              file=sys.stderr)
        return EXIT_FAILURE
    print(master)
    return 0


def cmd_verify(args: Any) -> int:
    print(f"{time.ctime()} * Verifying cluster (job submitted)", flush=True)
    res = submit_and_wait(Client.from_config(), [{
        "OP_ID": "OP_CLUSTER_VERIFY", "verbose": args.verbose,
        "error_codes": args.error_codes,
        "skip_checks": ["nplusone_mem"] if args.no_nplus1_mem else [],
        "ignore_errors": [e for e in (args.ignore_errors or "").split(",") if e]}])
    for line in res.get("checked", []):
        print(f"{time.ctime()} * Verified {line}")
    for w in res.get("warnings", []):
        print(f"{time.ctime()}   - WARNING: {w}")
    for e in res.get("errors", []):
        print(f"{time.ctime()}   - ERROR: {e}")
    return 0 if res.get("ok") else EXIT_FAILURE


def cmd_master_failover(args: Any) -> int:
    if args.no_voting and not args.yes_do_it:
        raise ConfirmationError(
            "--no-voting recovers the cluster's etcd from this node's member alone and "
            "can lose the last writes of the other members if they are still alive. "
            "Make sure they are down for good, then add --yes-do-it.")
    body = {"no_voting": args.no_voting}
    if args.target:
        c = Client.from_config()
        node = c.get(f"/2/nodes/{args.target}")
        target = Client.for_address(node["pip"], node.get("api_port") or 5080)
        res = target.post("/haven/master-failover", body, timeout=120)
    else:
        where = local_daemon()
        if where is None:
            raise NotClusterError("No node daemon runs on this machine; run the command "
                                  "on the node that should become master, or name it "
                                  "with --target.")
        target = Client.for_address(*where, verify=False)
        res = target.post("/haven/node/master-failover-local", body, timeout=120)
    if res.get("changed") is False:
        print(f"Node {res['master']} is already the master.")
    else:
        print(f"Master role moved to {res['master']}"
              + (f" (from {res['previous']})" if res.get("previous") else "")
              + (" after recovering etcd from its member alone" if res.get("recovered")
                 else "") + ".")
    if res.get("warning"):
        print(f"WARNING: {res['warning']}.")
    # The master moved: put it first in this machine's client config.
    with contextlib.suppress(NotClusterError):
        Client.from_config().refresh_config()
    return 0


def cmd_verify_disks(_args: Any) -> int:
    res = submit_and_wait(Client.from_config(), [{"OP_ID": "OP_CLUSTER_VERIFY_DISKS"}])
    if not res:
        print("All replicated disks are in sync.")
        return 0
    for item in res:
        down = f" (down: {', '.join(item['nodes_down'])})" if item["nodes_down"] else \
            " (resyncing: the agents copy what changed)"
        print(f"Instance {item['instance']}{down}:")
        for p in item["problems"]:
            print(f"  - {p}")
    return 0


def cmd_redist(args: Any) -> int:
    res = submit_and_wait(Client.from_config(), [{"OP_ID": "OP_CLUSTER_REDIST_CONF"}],
                          args.submit)
    if res:
        for node, written in sorted(res.items()):
            if isinstance(written, list):
                print(f"{node}: {len(written)} file(s) updated"
                      + (f" ({', '.join(written)})" if written else " (all up to date)"))
            else:
                print(f"{node}: {written}")
    return 0


UNRENEWABLE = ("rapi_certificate", "new_confd_hmac_key", "new_spice_certificate",
               "spice_certificate", "new_cluster_domain_secret", "cluster_domain_secret",
               "new_ssh_keys")


def cmd_renew_crypto(args: Any) -> int:
    asked = [f"--{k.replace('_', '-')}" for k in UNRENEWABLE if getattr(args, k)]
    if asked:
        raise InvalidInput(
            f"Haven cannot renew {', '.join(asked)}: it renews --new-node-certificates "
            f"(each node's etcd certificate) and --new-cluster-certificate (the API's, "
            f"also --new-rapi-certificate), and makes them itself.")
    cluster_cert = args.new_cluster_certificate or args.new_rapi_certificate
    if not (args.new_node_certificates or cluster_cert):
        raise InvalidInput("Nothing to renew: give --new-node-certificates or "
                           "--new-cluster-certificate.")
    what = " and ".join(w for w, asked_for in (
        ("every node's etcd certificate", args.new_node_certificates),
        ("the cluster certificate every client pins", cluster_cert)) if asked_for)
    if not args.force:
        if not sys.stdin.isatty():
            raise ConfirmationError(f"Renewing {what}; add -f to confirm when not on a "
                                    f"terminal.")
        answer = input(f"Updating {what} now.\nContinue? y/[n]: ").strip().lower()
        if answer not in ("y", "yes"):
            raise ConfirmationError("Aborted: not confirmed.")
    client = Client.from_config()
    res = submit_and_wait(client, [{"OP_ID": "OP_CLUSTER_RENEW_CRYPTO",
                                    "node_certificates": args.new_node_certificates,
                                    "cluster_certificate": cluster_cert}], args.submit)
    if cluster_cert and not args.submit:
        # Over the connection the job was followed on (it was opened before the
        # switch): this client's config pins the new certificate from now on.
        client.refresh_config()
    for node in sorted(res or {}):
        print(f"{node}: renewed")
    return 0


def cmd_destroy(args: Any) -> int:
    if not args.yes_do_it:
        raise ConfirmationError("Destroying a cluster is irreversible; confirm with "
                                "--yes-do-it.")
    c = Client.from_config()
    master = c.get("/haven/master")
    node = c.get(f"/2/nodes/{master}")
    res = Client.for_address(node["pip"], node.get("api_port") or 5080).post(
        "/haven/cluster/destroy", timeout=60)
    print(f"Cluster {res['destroyed']} destroyed.")
    return 0


def cmd_version(_args: Any) -> int:
    print(f"Software version: {__version__}")
    print("Internode protocol: 2040000")
    print("Configuration format: 3000000")
    print("OS api version: 20")
    print("Export interface: 0")
    print(f"VCS version: haven-{__version__}")
    return 0


def build_parser(prog: str = "gnt-cluster") -> ArgParser:
    p = ArgParser(prog=prog, description="Manage the cluster")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    ip = sub.add_parser("init", help="create a cluster on this node")
    ip.add_argument("--etcd-endpoints", help="use this external etcd (comma-separated "
                    "URLs) instead of a managed member")
    ip.add_argument("--lease-ttl", type=int, default=5)
    ip.add_argument("--node-name", help="this node's name (default: short host name)")
    ip.add_argument("--primary-ip", help="this node's address (default: resolve name)")
    ip.add_argument("--api-port", type=int, default=5080)
    ip.add_argument("--vm-capable", default=True, type=lambda v: v == "yes")
    ip.add_argument("cluster_name")
    ip.set_defaults(fn=cmd_init)
    sub.add_parser("info").set_defaults(fn=cmd_info)
    sub.add_parser("getmaster").set_defaults(fn=cmd_getmaster)
    vp = sub.add_parser("verify")
    vp.add_argument("--verbose", action="store_true")
    vp.add_argument("--error-codes", action="store_true")
    vp.add_argument("--no-nplus1-mem", action="store_true",
                    help="skip the N+1 memory check (Ganeti's ENODEN1)")
    vp.add_argument("-I", "--ignore-errors", metavar="CODES",
                    help="comma-separated error codes reported as warnings (ENODEN1)")
    vp.set_defaults(fn=cmd_verify)
    mp = sub.add_parser("master-failover", help="make this node (or --target) master")
    mp.add_argument("--no-voting", action="store_true",
                    help="recover etcd from this node's member alone (quorum lost)")
    mp.add_argument("--yes-do-it", action="store_true")
    mp.add_argument("--target", help="the node to make master (default: this node)")
    mp.set_defaults(fn=cmd_master_failover)
    sub.add_parser("verify-disks", help="list degraded replicated disks").set_defaults(
        fn=cmd_verify_disks)
    rp = sub.add_parser("redist-conf")
    rp.add_argument("--submit", action="store_true")
    rp.set_defaults(fn=cmd_redist)
    cp = sub.add_parser("renew-crypto", help="renew the cluster's certificates")
    cp.add_argument("-f", "--force", action="store_true")
    cp.add_argument("--new-node-certificates", action="store_true",
                    help="every node's etcd certificate, from the cluster CA")
    cp.add_argument("--new-cluster-certificate", action="store_true",
                    help="the certificate every node's API serves and clients pin")
    cp.add_argument("--new-rapi-certificate", action="store_true",
                    help="the same as --new-cluster-certificate (one API serves RAPI)")
    for flag in UNRENEWABLE:
        name = f"--{flag.replace('_', '-')}"
        if flag in ("rapi_certificate", "spice_certificate", "cluster_domain_secret"):
            cp.add_argument(name, metavar="FILE", help="(not supported by Haven)")
        else:
            cp.add_argument(name, action="store_true", help="(not supported by Haven)")
    cp.add_argument("--submit", action="store_true")
    cp.set_defaults(fn=cmd_renew_crypto)
    dp = sub.add_parser("destroy")
    dp.add_argument("--yes-do-it", action="store_true")
    dp.set_defaults(fn=cmd_destroy)
    sub.add_parser("version").set_defaults(fn=cmd_version)
    tags.add_parsers(sub, "cluster", None)
    st = sub.add_parser("search-tags", help="list every tag matching a pattern")
    st.add_argument("pattern")
    st.set_defaults(fn=tags.cmd_search_tags)
    return p


def main(argv: list[str] | None = None, prog: str = "gnt-cluster") -> int:
    return dispatch(build_parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())

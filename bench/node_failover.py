"""Automatic failover of a dead node, measured (issue 11).

A local 3-node cluster (``haven up``), ``--instances`` busybox ``drbd`` instances whose
primary is one non-master node and secondary the other.  Each run SIGKILLs every
process of the instances' current primary node (``haven kill``: a power cut) and times,
from the kill:

- ``fenced``: the HA manager declares the node fenced (``GET /haven/ha``);
- ``running``: ``gnt-instance list`` shows every instance ``running`` on the survivor;
- ``shell``: every guest's shell answers a command on its console on the survivor
  (``gnt-instance console``; it includes that command's own start-up, ~0.3 s).

Then the node is started again, the replicas resync, and the next run kills the other
node (the instances' primary now).  Prints JSON (min/median/max per phase and every
run) and writes ``bench/results/node_failover.{json,png}``.  Goal: median <= 10 s and
max <= 15 s to the shell.

    uv run --group bench python bench/node_failover.py [--runs 10] [--instances 2]
        [--fence-agent haven-local]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN, RESULTS, local_cluster, run, summary, write_json

POLL = 0.1


def api(env: dict[str, str], path: str) -> Any:
    from haven.cli.client import Client

    os.environ["HAVEN_CLIENT_CONFIG"] = env["HAVEN_CLIENT_CONFIG"]
    return Client.from_config().get(path, timeout=5)


def placement(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    rows = api(env, "/2/instances?bulk=1")
    return {r["name"]: (r["status"], r["pnode"]) for r in rows}


def replicas_up_to_date(env: dict[str, str], names: list[str]) -> bool:
    rows = {r["name"]: r for r in api(env, "/2/instances?bulk=1")}
    return all(not rows[n]["degraded"] for n in names)


def console_answers(env: dict[str, str], name: str, tag: str) -> bool:
    try:
        proc = subprocess.run([str(BIN / "gnt-instance"), "console", name],
                              input=f"echo {tag}-$((6*7))\n", capture_output=True,
                              text=True, timeout=15, env=env)
    except subprocess.TimeoutExpired:
        return False
    return f"{tag}-42" in proc.stdout


def wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def one_run(base: Path, env: dict[str, str], names: list[str], victim: str,
            survivor: str, index: int) -> dict[str, Any]:
    from haven.sim import cluster

    layout = cluster.load_layout(base)
    assert layout is not None
    t0 = time.monotonic()
    cluster.kill_node(layout.node(victim))  # SIGKILL of all its processes at once
    fenced = running = shell = None
    answered: set[str] = set()
    ready: set[str] = set()
    while shell is None:
        now = time.monotonic() - t0
        if now > 120:
            raise RuntimeError(f"run {index}: not recovered within 120 s "
                               f"(fenced {fenced}, running {running})")
        try:
            if fenced is None:
                nodes = {n["name"]: n for n in api(env, "/haven/ha")["nodes"]}
                if nodes[victim]["state"] in ("fenced", "recovering"):
                    fenced = time.monotonic() - t0
            if running is None:
                where = placement(env)
                if all(where.get(n) == ("running", survivor) for n in names):
                    running = time.monotonic() - t0
        except Exception:  # the master itself may be changing: poll again
            pass
        # The shell: its boot banner in the survivor's console log, then an answer.
        for n in names:
            if n in ready:
                continue
            log = base / survivor / "run" / f"{n}.console.log"
            try:
                if log.stat().st_mtime >= time.time() - (time.monotonic() - t0) and \
                        "GUEST-READY" in log.read_text(errors="replace"):
                    ready.add(n)
            except OSError:
                pass
        for n in sorted(ready - answered):
            if console_answers(env, n, f"r{index}"):
                answered.add(n)
        if answered == set(names):
            shell = time.monotonic() - t0
        else:
            time.sleep(POLL)
    result = {"run": index, "victim": victim, "survivor": survivor,
              "fenced": round(fenced or -1, 2), "running": round(running or -1, 2),
              "shell": round(shell, 2)}
    print(json.dumps(result), file=sys.stderr, flush=True)
    run(env, "haven", "--base-dir", str(base), "start", victim)
    wait("the replicas to resync", lambda: replicas_up_to_date(env, names), 180)
    return result


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    xs = [r["run"] for r in runs]
    for key, marker in (("fenced", "s"), ("running", "o"), ("shell", "^")):
        ax.plot(xs, [r[key] for r in runs], marker=marker, label=key)
    ax.axhline(10, color="grey", linestyle="--", linewidth=0.8, label="goal: median 10 s")
    ax.axhline(15, color="grey", linestyle=":", linewidth=0.8, label="goal: max 15 s")
    ax.set_xlabel("run (a node with instances SIGKILLed)")
    ax.set_ylabel("seconds after the kill")
    ax.set_title("Automatic failover: kill -> fenced -> running -> guest shell answers")
    ax.legend()
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--subnet", default="127.0.61")
    p.add_argument("--fence-agent", default="",
                   help="give both VM nodes this fence agent (haven-local: haven up's "
                        "built-in one) instead of relying on the lease rule alone")
    args = p.parse_args()
    names = [f"ha{i}" for i in range(1, args.instances + 1)]
    runs: list[dict[str, Any]] = []
    with local_cluster(3, args.subnet) as (base, env):
        master = run(env, "gnt-cluster", "getmaster").stdout.strip()
        a, b = [n for n in ("node01", "node02", "node03") if n != master][:2]
        if args.fence_agent:
            for n in (a, b):
                run(env, "gnt-node", "modify", "--fence-agent", args.fence_agent, n)
        for n in names:
            run(env, "gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
                "memory=128", "-o", "busybox", "-n", f"{a}:{b}", n)
        wait("the initial sync", lambda: replicas_up_to_date(env, names), 180)
        victim, survivor = a, b
        for i in range(1, args.runs + 1):
            runs.append(one_run(base, env, names, victim, survivor, i))
            victim, survivor = survivor, victim
    out = {"runs": runs, "instances": len(names), "lease_ttl": 5,
           "fence_agent": args.fence_agent or "none (lease rule)",
           **{k: summary([r[k] for r in runs]) for k in ("fenced", "running", "shell")}}
    name = "node_failover" + ("_agent" if args.fence_agent else "")
    path = write_json(name, out)
    plot(runs, RESULTS / f"{name}.png")
    print(json.dumps({k: out[k] for k in ("fenced", "running", "shell")}, indent=1))
    print(f"written: {path} and {RESULTS / (name + '.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

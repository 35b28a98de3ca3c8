"""The two-node reference scenarios (issue 10), timed step by step.

Runs ``tests/e2e/test_two_node.py`` (three ``drbd`` instances on ``haven up --nodes 2``;
move an instance, planned shutdown of the primary node, unplanned loss of the master
recovered with ``--no-voting``; node shutdowns by SIGKILL and by a clean stop; and the
witness cluster) ``--runs`` times, and prints each command's seconds (min / median /
max over the runs of its variant) as JSON, also written to
``bench/results/two_node.json``.  The test itself checks placement, one QEMU per
instance, the consoles and the guest writer's acknowledged writes.

Usage: python bench/two_node.py [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import summary, write_json

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="haven-two-node-") as tmp:
        timings = Path(tmp) / "timings.json"
        env = dict(os.environ, HAVEN_TIMINGS=str(timings))
        for i in range(args.runs):
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "tests/e2e/test_two_node.py"], cwd=ROOT, env=env, text=True,
                capture_output=True, timeout=1800)
            print(f"run {i + 1}: {proc.stdout.strip().splitlines()[-1]}", file=sys.stderr)
            if proc.returncode != 0:
                print(proc.stdout[-4000:], file=sys.stderr)
                return 1
        runs = json.loads(timings.read_text())
    by_step: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for step in run["steps"]:
            by_step[run["variant"]][step["command"]].append(float(step["seconds"]))
    result = {variant: {cmd: summary(values) for cmd, values in steps.items()}
              for variant, steps in by_step.items()}
    path = write_json("two_node", {"runs": args.runs, "variants": result})
    print(json.dumps(result, indent=1))
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

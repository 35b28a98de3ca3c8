"""``haven demo`` runs the two-node reference scenarios end to end and exits 0 only if
every one succeeded (create, start, console, migrate, failover, master hand-over, node
shut down and back, unplanned loss of the master recovered with --no-voting)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN

pytestmark = pytest.mark.e2e


# make test-all only (CI time): the demo is the two-node reference scenario, which
# tests/e2e/test_two_node.py::test_reference_scenarios_on_two_nodes[kill] runs step by
# step with the same Ganeti commands; `make demo` runs it too.
@pytest.mark.long
def test_haven_demo_succeeds_and_reports_every_scenario(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    env = dict(os.environ, HAVEN_DEMO_DIR=str(base))
    try:
        proc = subprocess.run([str(BIN / "haven"), "demo"], capture_output=True, text=True,
                              timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        report = proc.stdout.split("=== Haven demo report ===")[1]
        for step in ("haven up", "gnt-instance add vm3", "gnt-instance migrate vm2",
                     "gnt-instance failover vm1", "master-failover (run on node02)",
                     "node01 back", "--no-voting", "gnt-node failover", "node02 back",
                     "vm1 running on node01, by itself", "vm1's shell answers"):
            assert step in report, report
    finally:
        subprocess.run([str(BIN / "haven"), "--base-dir", str(base), "down", "--destroy"],
                       capture_output=True, timeout=120)

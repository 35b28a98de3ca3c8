"""A short randomized fault campaign (issue 14) on a real 3-node cluster with its iSCSI
target: ``bench/chaos.py`` with a fixed seed and a handful of faults.

A ``drbd`` instance and a shared-storage (``-t ext``, iSCSI) instance run guest writers
of sequence-numbered synced writes while faults land at the moments the seed draws.
Checked, as the campaign itself checks them: no instance ever has two running QEMUs
(sampled every 50 ms), every instance is recovered within the bound, every write the
guests saw acknowledged is on the disk they run on afterwards, no job stays stuck.  On a
failure the message names the seed and the round's timeline; the cluster's logs are
copied to ``<tmp>/sim.logs/round-N``.  The full campaign (200+ faults) is run by hand:
``python bench/chaos.py --help``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.e2e.conftest import Sim, make_sim

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="partitions need root (iptables, cgroups)")]

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Seed 43 draws every kind of fault, among them the round that lost an acknowledged write
# when drbd replicated with QEMU's write-blocking mirror alone: its primary frozen
# (SIGSTOP of the node) while its peer's qemu-storage-daemon was killed; the guest's
# first write after the resume failed on the peer and was acknowledged all the same.
# drbd disks now write through a quorum (haven.hypervisor.qemu.quorum), which stops the
# guest on that write instead.
SEED = 43
FAULTS = 5


def load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", BENCH / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def san(tmp_path: Path) -> Iterator[Sim]:
    yield from make_sim(tmp_path, 3, extra=("--storage", "iscsi"))


def test_a_short_fault_campaign_keeps_every_promise(san: Sim) -> None:
    chaos = load_chaos()
    t0 = time.monotonic()
    allowed = tuple(chaos.KINDS)
    result = chaos.campaign(san.base, san.subnet, SEED, FAULTS, bound=60.0, name="",
                            create=False, allowed=allowed)
    print(chaos.format_table(result["table"]))
    print(f"{result['faults']} faults in {result['rounds']} rounds, "
          f"{time.monotonic() - t0:.0f} s")
    bad = [r for r in result["round_details"]
           if r["split_brain"] or r["lost_writes"] or not r["recovered"] or r["stuck"]]
    replay = (f"seed {SEED}: replay with python bench/chaos.py --seed {SEED} --faults "
              f"{FAULTS} --kinds {','.join(allowed)}; logs in {san.base}.logs\n"
              + json.dumps(bad, indent=1))
    total = result["table"]["total"]
    assert result["faults"] >= FAULTS, replay
    assert total["split_brain"] == 0, replay
    assert total["lost_writes"] == 0, replay
    assert total["recovered"] == total["runs"] == result["faults"], replay
    assert total["stuck"] == 0, replay
    # The sampler really sampled: about every 50 ms, never blind for long.  (On two
    # cores under three TCG guests its thread stalls at times: 0.65 s at most over the
    # 204-fault campaign, 1.1 s once with another test suite running beside it.)
    assert result["sampler"]["ticks"] > result["seconds"] * 10, result["sampler"]
    assert result["sampler"]["max_gap_s"] < 2.0, result["sampler"]
    assert result["sampler"]["errors"] == 0, result["sampler"]
    # The guests really wrote during the faults, and the checks read their disks.
    # (``acked`` is the highest acknowledged sequence number of the round's writer run,
    # -1 when it acknowledged none.)
    assert all(v >= 0 for r in result["round_details"] for v in r["acked"].values()), \
        [r["acked"] for r in result["round_details"]]

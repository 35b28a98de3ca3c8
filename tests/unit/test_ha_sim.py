"""The HA simulator's scenarios (``tests/ha_scenarios/*.json``), in virtual time.

Each scenario runs the real HA plan, agent plan, lease keeper, election and failover
opcode together (:mod:`haven.sim.hasim`).  At every virtual instant: never two running
copies of an instance, never a start off its primary or from a replica not UpToDate at
the instance's generation.  At the end: the expected events appear in order (each line
a prefix of a log line, see :mod:`haven.sim.hasim_model`), no forbidden line appears,
and every instance is where the scenario says (``down`` needs a ``why_down``).

A scenario that shows a bug in code this simulator tests is listed in ``KNOWN_BUGS``
with the reason: it is expected to fail (xfail) until the bug is fixed, and the test
fails once it passes, so that the entry is removed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from haven.master import ha as ha_mod
from haven.model.replica import Replicas
from haven.sim.hasim import Simulation
from haven.sim.hasim_model import Result, Scenario, load

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "ha_scenarios"
SCENARIOS = sorted(SCENARIO_DIR.glob("*.json"))

# Scenario name -> why it fails (the bug, precisely).  The four bugs the simulator found
# first (the grace timed on the wall clock, twice; running recoveries' memory not
# counted; a USER_down guest started elsewhere) were fixed in master/ha.py.
KNOWN_BUGS: dict[str, str] = {}


def check(sc: Scenario, res: Result) -> list[str]:
    """Every way the run differs from the scenario, one sentence each."""
    problems = [f"invariant: {v}" for v in res.violations]
    missing = res.missing(sc.expect)
    if missing:
        problems.append(f"expected, in order, but missing from the log: {missing}")
    problems += [f"forbidden line in the log: {line!r}" for line in res.forbidden(sc.never)]
    problems += [f"too late: {late}" for late in res.late(sc.by)]
    for name, where in sorted(res.placement.items()):
        want = sc.final.get(name)
        if want is None:
            problems.append(f"the scenario says nothing of {name}'s final placement")
        elif want != where:
            problems.append(f"{name} ends {'on ' + where if where != 'down' else 'down'}, "
                            f"expected {want}")
        if want == "down" and not sc.why_down.get(name):
            problems.append(f"{name} is expected down without a why_down")
    return problems


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    sc = load(path)
    res = Simulation(sc).run()
    problems = check(sc, res)
    if problems:
        if path.stem in KNOWN_BUGS:
            pytest.xfail(KNOWN_BUGS[path.stem])
        pytest.fail("\n".join(problems) + "\n--- log ---\n" + "\n".join(res.timed))
    assert path.stem not in KNOWN_BUGS, "this known bug no longer shows: drop the entry"


def test_there_are_at_least_100_scenarios_each_with_a_description() -> None:
    assert len(SCENARIOS) >= 100
    for path in SCENARIOS:
        assert load(path).description, path.name


def test_a_run_is_deterministic() -> None:
    sc = load(SCENARIO_DIR / "node_death_basic.json")
    assert Simulation(sc).run().timed == Simulation(sc).run().timed


def test_expected_lines_match_as_an_ordered_subsequence_of_prefixes() -> None:
    res = Result(log=["a 1", "b 2", "c 3"])
    assert res.missing(("a", "c 3")) == []
    assert res.missing(("c", "a")) == ["a"]
    assert res.forbidden(("b",)) == ["b 2"]


# -- the checker catches what it must -------------------------------------------------
def _run(name: str) -> tuple[Scenario, Result]:
    sc = load(SCENARIO_DIR / f"{name}.json")
    return sc, Simulation(sc).run()


def test_a_plan_that_recovers_a_live_node_shows_two_copies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = ha_mod.plan

    def blind(v: ha_mod.HAView) -> list[ha_mod.Action]:
        # Believes node02 lost although it holds its lease and runs vm1: its key gone
        # and its heartbeats long unseen.
        return real(dataclasses.replace(v, alive=v.alive - {"node02"},
                                        silent={**v.silent, "node02": 1e9}))

    monkeypatch.setattr(ha_mod, "plan", blind)
    sc = dataclasses.replace(load(SCENARIO_DIR / "node_death_basic.json"), timeline=())
    res = Simulation(sc).run()
    assert any("two running copies of vm1" in v for v in res.violations), res.timed


def test_a_lease_key_gone_early_does_not_fence_a_node_that_still_renews(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An etcd leader that resumes after a freeze may revoke a live lease (etcd issue
    # 15247): the node's key goes while its fencer still waits for its last renewal's
    # deadline, and the node renews under a new lease.  The master, which saw its
    # heartbeats a moment ago, must not count it fenced on the key alone.
    real = ha_mod.plan

    def revoked(v: ha_mod.HAView) -> list[ha_mod.Action]:
        return real(dataclasses.replace(v, alive=v.alive - {"node02"}))

    monkeypatch.setattr(ha_mod, "plan", revoked)
    sc = dataclasses.replace(load(SCENARIO_DIR / "node_death_basic.json"), timeline=())
    res = Simulation(sc).run()
    assert not res.violations, res.violations
    assert not any("vm1 recovering" in line for line in res.timed), res.timed


def test_a_consistency_check_that_always_passes_shows_a_stale_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Replicas, "node_up_to_date", lambda *_a: True)
    _sc, res = _run("stale_secondary_outdated_then_primary_dies")
    # The failover job rewrites the replica states before it starts the VM, so only
    # the simulator's own record of acknowledged writes can tell.
    assert any("misses acknowledged writes" in v for v in res.violations), res.timed


def test_a_fencer_that_never_fires_shows_two_copies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from haven.sim import hasim_world

    # The cut-off node keeps its VM while the majority side recovers it.
    monkeypatch.setattr(hasim_world.SimFencer, "due", lambda _self, _now: False)
    _sc, res = _run("partition_minority_primary")
    assert any("two running copies of vm1: on node02 and node03" in v
               for v in res.violations), res.timed


def test_a_start_gate_that_ignores_the_lease_shows_two_copies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from haven.sim import hasim_world

    # A node that reboots after its instance moved but whose store view still holds the
    # old configuration cannot exist here; what the gate prevents is a frozen node
    # restarting a killed VM before it knows it lost its lease: with the gate open and
    # the fencer unable to kill, the resumed node's copy survives next to the new one.
    monkeypatch.setattr(hasim_world.World, "start_blocked", lambda _self, _node: "")
    monkeypatch.setattr(hasim_world.SimFencer, "due", lambda _self, _now: False)
    _sc, res = _run("freeze_resume_after_recovery")
    assert any("two running copies of vm1" in v for v in res.violations), res.timed

"""Fence agents (haven.fence.agents): fence-agents' stdin interface, the built-in
haven-local agent, and what the HA plan does with them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from haven.errors import InvalidInput
from haven.fence import agents
from haven.master.ha import plan
from haven.model import ha as H
from haven.model.ha import NodeHA
from tests.unit.test_ha_plan import NODES, inst, kinds, reps, view


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def sbin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(agents, "_SBIN", (str(tmp_path),))
    return tmp_path


def test_a_fence_agents_script_gets_its_options_on_stdin_and_must_confirm_off(
        sbin: Path) -> None:
    log = sbin / "calls"
    # fence-agents read "key=value" lines; status answers exit 2 / "Status: OFF" when off.
    script(sbin, "fence_fake", f'cat >> {log}; echo --- >> {log}\n'
           f'grep -q action=status {log} && {{ echo "Status: OFF"; exit 2; }}\nexit 0\n')
    ok, msg = agents.fence("node02", "fence_fake", {"ip": "10.0.0.5", "password": "s3"})
    assert ok and msg == "fence_fake turned node02 off"
    calls = log.read_text().split("---\n")
    assert calls[0] == "action=off\nip=10.0.0.5\npassword=s3\n"
    assert calls[1].startswith("action=status\n")


def test_a_failing_missing_or_hanging_agent_is_a_sentence_not_a_success(sbin: Path) -> None:
    script(sbin, "fence_broken", "echo 'Failed: Unable to connect' >&2; exit 1\n")
    ok, msg = agents.fence("node02", "fence_broken", {})
    assert not ok and msg == "fence_broken -o off failed (1): Failed: Unable to connect"
    script(sbin, "fence_stillon",
           'grep -q action=status && { echo "Status: ON"; exit 0; }\nexit 0\n')
    ok, msg = agents.fence("node02", "fence_stillon", {})
    assert not ok and "still on" in msg
    script(sbin, "fence_slow", "sleep 5\n")
    ok, msg = agents.fence("node02", "fence_slow", {}, timeout=0.3)
    assert not ok and "did not answer within 0 s" in msg
    ok, msg = agents.fence("node02", "fence_absent", {})
    assert not ok and "apt install fence-agents" in msg


def test_the_local_agent_kills_every_process_of_the_nodes_directory(tmp_path: Path) -> None:
    base = tmp_path / "sim"
    (base / "node02" / "run").mkdir(parents=True)
    (base / "node02" / "node.json").write_text("{}")
    (base / "sim.json").write_text("{}")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    victim = subprocess.Popen([*sleeper, str(base / "node02") + "/x"])
    bystander = subprocess.Popen([*sleeper, str(base / "node03") + "/x"])
    try:
        ok, msg = agents.fence("node02", agents.LOCAL, {}, base)
        assert ok and "killed every process of node02 (1)" in msg
        victim.wait(5)  # (kill_node reaps it: its exit status is gone)
        assert bystander.poll() is None
        ok, msg = agents.fence("node09", agents.LOCAL, {}, base)
        assert not ok and "no node node09" in msg
        assert agents.fence("node02", agents.LOCAL, {}, None)[0] is False
    finally:
        for p in (victim, bystander):
            p.kill()
            p.wait()


@pytest.mark.parametrize("agent, params, words", [
    ("ipmi", {}, "not valid; give haven-local or the name"),
    ("fence_ipmilan", {"IP": "x"}, "lower-case key"),
    ("fence_ipmilan", {"ip": "a\nb"}, "on one line"),
    ("fence_ipmilan", {"action": "reboot"}, "set by Haven"),
    ("haven-local", {"ip": "x"}, "takes no --fence-param"),
])
def test_bad_agent_settings_are_refused_with_the_fix(agent: str, params: dict[str, str],
                                                      words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        agents.validate("node02", agent, params)


def test_with_an_agent_a_silent_node_is_turned_off_and_fenced_at_once() -> None:
    nodes = dict(NODES, node02=replace(NODES["node02"], fence_agent="haven-local"))
    vm1 = inst("vm1", "node02", "node03")
    v = replace(view([vm1], [reps(vm1)], alive=("node01", "node02", "node03")),
                nodes=nodes, silent={"node02": 2.6}, silent_limit=4.0, suspect_limit=2.5)
    assert kinds(plan(v)) == [("node", "node02", H.UNREACHABLE)]
    unreachable = NodeHA("node02", H.UNREACHABLE, 100.0, 100.0)
    acts = plan(replace(v, node_ha={"node02": unreachable}))
    assert [(a.kind, a.target) for a in acts] == [("fence", "node02")]
    running = replace(unreachable, fence="running")
    assert plan(replace(v, node_ha={"node02": running}, state_age={"node02": 3.0})) == []
    done = replace(unreachable, fence="confirmed", fence_msg="killed every process")
    acts = plan(replace(v, node_ha={"node02": done}, state_age={"node02": 0.1}))
    assert kinds(acts)[:2] == [("node", "node02", H.FENCED), ("node", "node02", H.RECOVERING)]
    assert ("recover", "vm1", "node03") in kinds(acts)
    # A failed agent: the lease rule decides, only past the fencer's deadline + grace.
    failed = replace(unreachable, fence="failed", fence_msg="no answer")
    v2 = replace(v, node_ha={"node02": failed}, state_age={"node02": 9.0})
    assert plan(replace(v2, silent={"node02": 4.5})) == []
    assert kinds(plan(replace(v2, silent={"node02": 5.0})))[0] == ("node", "node02", H.FENCED)

"""The cluster foundation on a real 3-node local cluster: election, node and job
commands, refusals with Ganeti's exit codes, voluntary and automatic master failover."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.conftest import Sim

pytestmark = pytest.mark.e2e


def test_first_node_is_master_and_every_node_is_listed(cluster3: Sim) -> None:
    assert cluster3.master() == "node01"
    p = cluster3.run("gnt-node", "list", "-o", "name,role,pip,master_candidate,alive",
                     "--no-headers", "--separator=|", check=True)
    rows = [line.split("|") for line in p.stdout.splitlines()]
    assert rows == [["node01", "M", cluster3.address("node01"), "Y", "Y"],
                    ["node02", "C", cluster3.address("node02"), "Y", "Y"],
                    ["node03", "C", cluster3.address("node03"), "Y", "Y"]]
    p = cluster3.run("gnt-node", "list", check=True)
    assert p.stdout.splitlines()[0].split() == ["Node", "DTotal", "DFree", "MTotal",
                                                "MNode", "MFree", "Pinst", "Sinst"]
    info = cluster3.run("gnt-node", "info", "node02", check=True).stdout
    assert "accelerator: tcg" in info or "accelerator: kvm" in info
    assert cluster3.run("haven", "node", "list", "--no-headers", "-o", "name",
                        check=True).stdout.split() == ["node01", "node02", "node03"]


def test_cluster_verify_passes_and_reports_three_etcd_members(cluster3: Sim) -> None:
    out = cluster3.wait_verify_ok()
    assert len(re.findall(r"Verified etcd member node0\d: healthy", out)) == 3


@pytest.mark.parametrize(("argv", "code", "needle"), [
    (("gnt-node", "info", "nosuch"), 1, "nosuch"),
    (("gnt-node", "add", "node02"), 1, "already in the cluster"),
    (("gnt-node", "remove", "node01"), 1, "is the master"),
    (("gnt-node", "modify", "-O", "yes", "node01"), 1, "is the master"),
    (("gnt-node", "modify", "node02"), 1, "at least one"),
    (("gnt-node", "list", "-o", "name,bogus"), 14, "bogus"),
    (("gnt-cluster", "destroy"), 13, "--yes-do-it"),
    (("gnt-cluster", "master-failover", "--no-voting"), 13, "--yes-do-it"),
    (("gnt-job", "info", "99999"), 1, "Job 99999"),
    (("gnt-node", "modify", "-C", "maybe", "node02"), 1, "yes or no"),
])
def test_bad_input_is_refused_with_one_sentence_and_ganeti_exit_code(
        cluster3: Sim, argv: tuple[str, ...], code: int, needle: str) -> None:
    p = cluster3.run(*argv)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_adding_a_node_that_does_not_answer_is_refused_and_leaves_nothing(
        cluster3: Sim) -> None:
    ghost = f"{cluster3.subnet}.9"
    p = cluster3.run("gnt-node", "add", "--primary-ip", ghost, "--join-token",
                     f"hvn1.{'0' * 32}.{'0' * 64}", "ghost")
    assert p.returncode == 1
    assert "does not answer" in p.stderr and ghost in p.stderr
    names = cluster3.run("gnt-node", "list", "-o", "name", "--no-headers").stdout.split()
    assert "ghost" not in names


def test_second_init_on_a_cluster_node_is_refused(cluster3: Sim) -> None:
    p = cluster3.run("gnt-cluster", "init", "--node-name", "node01", "--primary-ip",
                     cluster3.address("node01"), "other", data_dir="node01")
    assert p.returncode == 1
    assert "already part of cluster" in p.stderr


def test_drain_and_undrain_a_node(cluster3: Sim) -> None:
    cluster3.run("gnt-node", "modify", "-D", "yes", "node03", check=True)
    role = cluster3.run("gnt-node", "list", "-o", "role", "--no-headers", "node03").stdout
    assert role.strip() == "D"
    cluster3.run("gnt-node", "modify", "-C", "yes", "node03", check=True)
    role = cluster3.run("gnt-node", "list", "-o", "role", "--no-headers", "node03").stdout
    assert role.strip() == "C"


def test_jobs_are_listed_and_shown(cluster3: Sim) -> None:
    p = cluster3.run("gnt-debug", "delay", "--submit", "0.2", check=True)
    job_id = int(p.stdout.split(":")[1])
    w = cluster3.run("gnt-job", "watch", str(job_id), check=True)
    assert f"Output from job {job_id}" in w.stdout
    info = cluster3.run("gnt-job", "info", str(job_id), check=True).stdout
    assert "Status: success" in info and "OP_TEST_DELAY" in info
    listing = cluster3.run("gnt-job", "list", "--no-headers", "--separator=|").stdout
    assert f"{job_id}|success|TEST_DELAY(0.2)" in listing.splitlines()


def test_redist_conf_reports_every_node(cluster3: Sim) -> None:
    out = cluster3.run("gnt-cluster", "redist-conf", check=True).stdout
    for node in ("node01", "node02", "node03"):
        assert re.search(rf"^{node}: \d+ file\(s\) updated", out, re.M), out


def test_voluntary_master_failover_there_and_back(cluster3: Sim) -> None:
    p = cluster3.run("gnt-cluster", "master-failover", "--target", "node02", check=True)
    assert "Master role moved to node02" in p.stdout
    assert cluster3.master() == "node02"
    cluster3.run("gnt-debug", "delay", "0", check=True)
    # Run on the target itself, as in Ganeti.
    p = cluster3.run("gnt-cluster", "master-failover", data_dir="node01", check=True)
    assert cluster3.master() == "node01"


def wait_quorum_settled(sim: Sim, timeout: float = 90) -> None:
    """Until every master candidate's member votes again.  Draining node03 earlier in
    this module took two votes away (two candidates: only the master votes) and giving
    them back takes a member rejoin and catch-up; until then losing a voter loses
    quorum, by the rules, which is not what the next test is about (two CI runs killed
    the master inside that window: three tests failed on the lost quorum)."""
    deadline = time.monotonic() + timeout
    while True:
        out = sim.run("gnt-cluster", "verify").stdout
        if "do not follow the quorum rules yet" not in out and \
                len(re.findall(r"Verified etcd member node0\d: healthy", out)) == 3:
            return
        assert time.monotonic() < deadline, out[-1500:]
        time.sleep(0.5)


def test_killing_the_master_node_elects_a_new_master_that_resumes_jobs(
        cluster3: Sim) -> None:
    wait_quorum_settled(cluster3)
    old = cluster3.master()
    resumable = int(cluster3.run("gnt-debug", "delay", "--submit", "3",
                                 check=True).stdout.split(":")[1])
    fragile = int(cluster3.run("gnt-debug", "delay", "--submit", "--no-resume", "3",
                               check=True).stdout.split(":")[1])
    time.sleep(0.5)  # both are running on the old master now
    cluster3.run("haven", "kill", old, check=True)
    new = cluster3.wait_master(not_node=old)
    assert new != old
    cluster3.run("gnt-debug", "delay", "0", check=True)
    # The resumable job is run again by the new master; the other is failed clearly.
    w = cluster3.run("gnt-job", "watch", str(resumable), timeout=60)
    assert w.returncode == 0, w.stdout + w.stderr
    info = cluster3.run("gnt-job", "info", str(fragile), check=True).stdout
    assert "Status: error" in info
    assert f"The master node {old} stopped while this job was running" in info
    verify = cluster3.run("gnt-cluster", "verify")
    assert verify.returncode == 1 and f"node {old}: its daemon holds no lease" in verify.stdout
    cluster3.run("haven", "start", old, check=True)
    cluster3.wait_verify_ok()


def test_removing_and_adding_a_node_changes_the_etcd_members(cluster3: Sim) -> None:
    cluster3.wait_verify_ok()
    victim = next(n for n in ("node03", "node02") if n != cluster3.master())
    p = cluster3.run("gnt-node", "remove", victim, timeout=120)
    assert p.returncode == 0, p.stderr
    names = cluster3.run("gnt-node", "list", "-o", "name", "--no-headers").stdout.split()
    assert victim not in names and len(names) == 2
    out = cluster3.wait_verify_ok()
    assert len(re.findall(r"Verified etcd member node0\d: healthy", out)) == 2
    # Its daemon went back to standby: it can be added again, as a fresh member.
    p = cluster3.run("gnt-node", "add", "--primary-ip", cluster3.address(victim),
                     "--join-token", cluster3.join_token(victim), victim, timeout=120)
    assert p.returncode == 0, p.stderr
    out = cluster3.wait_verify_ok()
    assert len(re.findall(r"Verified etcd member node0\d: healthy", out)) == 3


def test_a_node_removed_while_down_returns_as_standby_and_can_be_added_again(
        cluster3: Sim) -> None:
    # The node added by the test before comes back with every member voting only once
    # the one its removal demoted has rejoined and been promoted (a second or so after
    # the add ends): killing a voter before that loses the quorum (CI: the removal
    # below found no etcd answer).
    wait_quorum_settled(cluster3)
    victim = next(n for n in ("node03", "node02") if n != cluster3.master())
    cluster3.run("haven", "kill", victim, check=True)
    p = cluster3.run("gnt-node", "remove", victim, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    cluster3.run("haven", "start", victim, check=True)
    # It asks the others, finds no record of itself, and does not rejoin etcd: the
    # cluster keeps two healthy members and verifies clean.
    log = cluster3.base / victim / "logs" / "noded.log"
    deadline = time.monotonic() + 30
    while "goes back to standby" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.3)
    out = cluster3.wait_verify_ok()
    assert len(re.findall(r"Verified etcd member node0\d: healthy", out)) == 2
    names = cluster3.run("gnt-node", "list", "-o", "name", "--no-headers").stdout.split()
    assert victim not in names
    p = cluster3.run("gnt-node", "add", "--primary-ip", cluster3.address(victim),
                     "--join-token", cluster3.join_token(victim), victim, timeout=120)
    assert p.returncode == 0, p.stderr
    out = cluster3.wait_verify_ok()
    assert len(re.findall(r"Verified etcd member node0\d: healthy", out)) == 3

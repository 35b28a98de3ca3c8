"""Ganeti's own clients against a real `haven up`: Debian's ``python3-ganeti-rapi``
(``ganeti.rapi.client.GanetiRapiClient``, each call it offers for what Haven has) and
htools (``hbal -m``, ``hinfo -m``: dry runs that load the whole cluster over RAPI).

The RAPI client is a system module for the system Python, so it runs in
``/usr/bin/python3`` (a script below that prints each call's outcome as JSON); htools
read without credentials and accept the cluster's self-signed certificate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Sim, make_sim

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/usr/lib/python3/dist-packages/ganeti/rapi/client.py")
                       .exists() or shutil.which("hbal") is None,
                       reason="needs Debian's python3-ganeti-rapi and ganeti-htools"),
]

SYSTEM_PYTHON = "/usr/bin/python3"

# Runs in the system Python: every step's result (or its error) as one JSON object.
DRIVER = r'''
import json, sys, traceback
from ganeti.rapi import client as gc

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = gc.GanetiRapiClient(host, port, username=user, password=password)
out = {}

def step(name, fn):
    try:
        out[name] = {"ok": fn()}
    except gc.GanetiApiError as exc:
        out[name] = {"error": str(exc), "code": exc.code}
    except Exception as exc:
        out[name] = {"error": "%s: %s" % (type(exc).__name__, exc),
                     "trace": traceback.format_exc()}

def job(jid):
    ok = c.WaitForJobCompletion(jid, period=1, retries=240)
    status = c.GetJobStatus(jid)
    return {"done": ok, "status": status["status"], "opresult": status["opresult"],
            "id": jid}

step("version", c.GetVersion)
step("features", c.GetFeatures)
step("info", c.GetInfo)
step("nodes", lambda: c.GetNodes())
step("nodes_bulk", lambda: c.GetNodes(bulk=True))
step("node", lambda: c.GetNode("node01"))
step("node_role", lambda: c.GetNodeRole("node01"))
step("groups", lambda: c.GetGroups())
step("groups_bulk", lambda: c.GetGroups(bulk=True))
step("group", lambda: c.GetGroup("default"))
step("os", c.GetOperatingSystems)
step("create", lambda: job(c.CreateInstance(
    "create", "rapi1", "file", [{"size": 64}], [{}], os="busybox", pnode="node02",
    beparams={"memory": 128, "vcpus": 1}, start=False, ip_check=False,
    name_check=False, tags=["from:rapi"])))
step("instances", lambda: c.GetInstances())
step("instances_bulk", lambda: c.GetInstances(bulk=True))
step("instance", lambda: c.GetInstance("rapi1"))
step("instance_info", lambda: job(c.GetInstanceInfo("rapi1")))
step("add_instance_tags", lambda: job(c.AddInstanceTags("rapi1", ["web", "env:test"])))
step("instance_tags", lambda: c.GetInstanceTags("rapi1"))
step("delete_instance_tags", lambda: job(c.DeleteInstanceTags("rapi1", ["web"])))
step("instance_tags_after", lambda: c.GetInstanceTags("rapi1"))
step("add_cluster_tags", lambda: job(c.AddClusterTags(["site:lab"])))
step("cluster_tags", c.GetClusterTags)
step("add_node_tags", lambda: job(c.AddNodeTags("node03", ["rack:7"])))
step("node_tags", lambda: c.GetNodeTags("node03"))
step("delete_node_tags", lambda: job(c.DeleteNodeTags("node03", ["rack:7"])))
step("node_tags_after", lambda: c.GetNodeTags("node03"))
step("group_tags", lambda: c.GetGroupTags("default"))
step("reinstall", lambda: job(c.ReinstallInstance("rapi1", no_startup=True)))
step("migrate_node", lambda: job(c.MigrateNode("node03")))
step("evacuate_node", lambda: job(c.EvacuateNode("node03", mode="secondary-only")))
step("query", lambda: c.Query("instance", ["name", "status", "pnode"],
                              qfilter=["=", "name", "rapi1"]))
step("query_fields", lambda: c.QueryFields("node", ["name", "mfree"]))
step("jobs", lambda: c.GetJobs())
step("jobs_bulk", lambda: c.GetJobs(bulk=True))
# What Haven refuses: Ganeti's error shape and the right status, nothing queued.
step("jobs_before_refusals", lambda: len(c.GetJobs()))
step("unknown_instance", lambda: c.GetInstance("nope"))
step("unknown_instance_info", lambda: c.GetInstanceInfo("nope"))
step("import_mode", lambda: c.CreateInstance("import", "rapi2", "file", [{"size": 64}],
                                             [{}], os="busybox"))
step("bad_field", lambda: c.CreateInstance("create", "rapi2", "file", [{"size": 64}],
                                           [{}], os="busybox", src_node="node01"))
step("bad_tag", lambda: c.AddClusterTags(["no spaces"]))
step("other_group", lambda: c.CreateGroup("g2"))
step("bad_query", lambda: c.Query("instance", ["name", "bogus"]))
step("jobs_after_refusals", lambda: len(c.GetJobs()))
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    yield from make_sim(tmp_path_factory.mktemp("rapi"), 3)


def api(sim: Sim) -> tuple[str, int, str, str]:
    conf = json.loads(Path(sim.env["HAVEN_CLIENT_CONFIG"]).read_text())
    host, port = conf["endpoints"][0].rsplit(":", 1)
    return host, int(port), conf["user"], conf["password"]


@pytest.fixture(scope="module")
def results(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    script = tmp_path_factory.mktemp("driver") / "driver.py"
    script.write_text(DRIVER)
    host, port, user, password = api(sim)
    p = subprocess.run([SYSTEM_PYTHON, str(script), host, str(port), user, password],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def ok(results: dict[str, Any], step: str) -> Any:
    res = results[step]
    assert "ok" in res, f"{step}: {res}"
    return res["ok"]


def done(results: dict[str, Any], step: str) -> list[Any]:
    res = ok(results, step)
    assert res["done"] is True and res["status"] == "success", f"{step}: {res}"
    return list(res["opresult"])


def refused(results: dict[str, Any], step: str, code: int) -> str:
    res = results[step]
    assert "error" in res and res.get("code") == code, f"{step}: {res}"
    assert "Traceback" not in res["error"]
    return str(res["error"])


def test_cluster_nodes_and_groups(results: dict[str, Any]) -> None:
    assert ok(results, "version") == 2
    assert "instance-create-reqv1" in ok(results, "features")
    info = ok(results, "info")
    assert info["master"] == "node01" and info["default_hypervisor"] == "kvm"
    assert set(info["ipolicy"]) >= {"minmax", "std", "disk-templates", "vcpu-ratio",
                                    "spindle-ratio"}
    # The client turns the non-bulk lists into names.
    assert sorted(ok(results, "nodes")) == ["node01", "node02", "node03"]
    bulk = ok(results, "nodes_bulk")
    group = ok(results, "group")
    assert {n["group.uuid"] for n in bulk} == {group["uuid"]}
    assert all(isinstance(n["mfree"], int) and n["ndparams"]["spindle_count"] >= 0
               for n in bulk)
    assert ok(results, "node")["name"] == "node01"
    assert ok(results, "node_role") == "master"
    assert ok(results, "groups") == ["default"]
    assert ok(results, "groups_bulk")[0]["alloc_policy"] == "preferred"
    assert "busybox+default" in ok(results, "os")


def test_create_and_read_an_instance(results: dict[str, Any]) -> None:
    done(results, "create")
    assert "rapi1" in ok(results, "instances")
    (bulk,) = [i for i in ok(results, "instances_bulk") if i["name"] == "rapi1"]
    assert bulk["pnode"] == "node02" and bulk["status"] == "ADMIN_down"
    assert bulk["tags"] == ["from:rapi"] and bulk["disk.sizes"] == [64]
    assert bulk["beparams"]["vcpus"] == 1 and bulk["beparams"]["memory"] == 128
    assert ok(results, "instance")["os"] == "busybox"
    (data,) = done(results, "instance_info")
    assert data["rapi1"]["os"] == "busybox" and data["rapi1"]["pnode"] == "node02"
    assert data["rapi1"]["run_state"] == "down"
    assert data["rapi1"]["disks"][0]["size"] == 64


def test_tags(results: dict[str, Any]) -> None:
    done(results, "add_instance_tags")
    assert ok(results, "instance_tags") == ["env:test", "from:rapi", "web"]
    done(results, "delete_instance_tags")
    assert ok(results, "instance_tags_after") == ["env:test", "from:rapi"]
    done(results, "add_cluster_tags")
    assert ok(results, "cluster_tags") == ["site:lab"]
    done(results, "add_node_tags")
    assert ok(results, "node_tags") == ["rack:7"]
    done(results, "delete_node_tags")
    assert ok(results, "node_tags_after") == []
    assert ok(results, "group_tags") == []


def test_reinstall_node_moves_query_and_jobs(results: dict[str, Any]) -> None:
    done(results, "reinstall")
    (migrate,) = done(results, "migrate_node")
    assert migrate == {"jobs": []}  # nothing runs on node03
    done(results, "evacuate_node")
    q = ok(results, "query")
    assert q["data"] == [[[0, "rapi1"], [0, "ADMIN_down"], [0, "node02"]]]
    assert [f["name"] for f in ok(results, "query_fields")["fields"]] == ["name", "mfree"]
    assert len(ok(results, "jobs")) >= 8
    assert all("status" in j for j in ok(results, "jobs_bulk"))


def test_refusals_have_ganeti_shape_and_queue_nothing(results: dict[str, Any]) -> None:
    assert "nope" in refused(results, "unknown_instance", 404)
    refused(results, "unknown_instance_info", 404)
    assert "import" in refused(results, "import_mode", 400)
    assert "src_node" in refused(results, "bad_field", 400)
    assert "invalid characters" in refused(results, "bad_tag", 400)
    refused(results, "other_group", 501)
    assert "bogus" in refused(results, "bad_query", 400)
    assert ok(results, "jobs_after_refusals") == ok(results, "jobs_before_refusals")


def htool(sim: Sim, tool: str, *args: str, url: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    host, port, _, _ = api(sim)
    p = subprocess.run([tool, "-m", url or f"https://{host}:{port}", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{tool} failed:\n{p.stdout}\n{p.stderr}"
    return p


def test_htools_load_the_cluster(sim: Sim, results: dict[str, Any]) -> None:
    done(results, "create")  # the instance htools must count
    p = htool(sim, "hbal", "-v", "-p", "--print-instances")
    text = p.stdout + p.stderr
    assert "Loaded 3 nodes, 1 instances" in text, text
    # The node and instance tables (htools print them on stderr).
    for name in ("node01", "node02", "node03", "rapi1"):
        assert name in text
    assert "Solution length=0" in text  # balanced: no move to suggest
    # ``-m HOST`` alone means https://HOST:5080, the port haven up's nodes use.
    host, port, _, _ = api(sim)
    info = htool(sim, "hinfo", "-v", "-p", url=host if port == 5080 else None)
    text = info.stdout + info.stderr
    assert "Loaded 3 nodes, 1 instance, 1 node group" in text, text
    assert "default" in text  # the node group


def test_gnt_group_and_tag_commands(sim: Sim, results: dict[str, Any]) -> None:
    done(results, "create")
    p = sim.run("gnt-group", "list", "--no-headers", "-o", "name,node_cnt,alloc_policy",
                check=True)
    assert p.stdout.split() == ["default", "3", "preferred"]
    p = sim.run("gnt-group", "info", "default", check=True)
    assert "Nodes: node01, node02, node03" in p.stdout
    for cmd, target in (("gnt-cluster", []), ("gnt-node", ["node02"]),
                        ("gnt-instance", ["rapi1"]), ("gnt-group", ["default"])):
        sim.run(cmd, "add-tags", *target, "cli:1", "cli:2", check=True)
        sim.run(cmd, "remove-tags", *target, "cli:2", check=True)
        p = sim.run(cmd, "list-tags", *target, check=True)
        assert "cli:1" in p.stdout.split() and "cli:2" not in p.stdout.split(), cmd
    p = sim.run("gnt-instance", "add-tags", "rapi1", "bad tag")
    assert p.returncode != 0 and "invalid characters" in p.stderr
    assert "Traceback" not in p.stderr
    p = sim.run("gnt-cluster", "search-tags", "^cli:", check=True)
    assert "/instances/rapi1 cli:1" in p.stdout and "/nodes/node02 cli:1" in p.stdout


USERS_DRIVER = r'''
import json, sys
from ganeti.rapi import client as gc
host, port = sys.argv[1], int(sys.argv[2])
out = {}
for user, password in (("gwm", "gwm-pw"), ("ro", "ro-pw"), ("gwm", "wrong")):
    c = gc.GanetiRapiClient(host, port, username=user, password=password)
    res = {}
    try:
        res["read"] = sorted(c.GetInfo())[:1]
    except gc.GanetiApiError as exc:
        res["read"] = exc.code
    try:
        res["write"] = c.AddClusterTags(["by:" + user])
    except gc.GanetiApiError as exc:
        res["write"] = exc.code
    out[user + ":" + password] = res
print(json.dumps(out))
'''


def test_ganeti_users_file_on_the_master_serves_every_node_after_redist_conf(
        sim: Sim, tmp_path: Path) -> None:
    """Ganeti's ``rapi/users`` format, written on the master as a Ganeti administrator
    would ({HA1} hash for write access, a read-only user), then ``gnt-cluster
    redist-conf``: another node accepts those users with Ganeti's own client."""
    import hashlib

    master = sim.master()
    ha1 = hashlib.md5(b"gwm:Ganeti Remote API:gwm-pw").hexdigest()
    users = sim.base / master / "rapi" / "users"
    users.parent.mkdir(parents=True, exist_ok=True)
    users.write_text(f"# Ganeti Web Manager\ngwm {{HA1}}{ha1} write\nro ro-pw\n")
    out = sim.run("gnt-cluster", "redist-conf", check=True).stdout
    other = next(n for n in ("node01", "node02", "node03") if n != master)
    copy = sim.base / other / "rapi" / "users"
    assert copy.read_text() == users.read_text(), out
    assert copy.stat().st_mode & 0o777 == 0o600
    script = tmp_path / "users.py"
    script.write_text(USERS_DRIVER)
    p = subprocess.run([SYSTEM_PYTHON, str(script), sim.address(other), "5080"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    assert res["gwm:gwm-pw"]["read"] != 401 and isinstance(res["gwm:gwm-pw"]["write"], int)
    assert res["gwm:gwm-pw"]["write"] not in (401, 403)  # a job id
    assert res["ro:ro-pw"]["read"] != 401 and res["ro:ro-pw"]["write"] == 403
    assert res["gwm:wrong"]["write"] == 401

"""``gnt-group`` and the ``add-tags``/``list-tags``/``remove-tags`` commands, run in
process against the RAPI routes on an in-memory cluster (jobs run in place)."""

from __future__ import annotations

from typing import Any

import pytest

from haven import errors
from haven.cli import gnt_cluster, gnt_group, gnt_instance, gnt_node
from haven.cli import tags as cli_tags
from tests.unit.rapi_fake import Rapi, rapi_fixture  # noqa: F401


class FakeClient:
    """The CLI's client, answered by the routes; a queued job runs at once."""

    def __init__(self, rapi: Rapi) -> None:
        self.rapi = rapi

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 30.0) -> Any:
        status, out = self.rapi.call(method, path, body)
        if status != 200:
            raise errors.from_json(out)
        return out

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return self.request("GET", path)

    def wait_job(self, job_id: int, feedback: Any = None) -> dict[str, Any]:
        try:
            result = self.rapi.run_job(job_id)
        except errors.HavenError as exc:
            return {"id": job_id, "status": "error", "opstatus": ["error"],
                    "opresult": [[type(exc).__name__, [exc.message, exc.ecode]]]}
        return {"id": job_id, "status": "success", "opstatus": ["success"],
                "opresult": result}


@pytest.fixture
def client(rapi: Rapi, monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient(rapi)
    for mod in (cli_tags, gnt_group):
        monkeypatch.setattr(mod.Client, "from_config", classmethod(lambda _cls: fake))
    return fake


def test_gnt_group_list_and_info(client: FakeClient, capsys: pytest.CaptureFixture[str]
                                 ) -> None:
    assert gnt_group.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["Group", "Nodes", "Instances", "AllocPolicy", "NDParams"]
    assert out[1].split()[:4] == ["default", "3", "2", "preferred"]
    assert gnt_group.main(["info", "default"]) == 0
    info = capsys.readouterr().out
    assert "Node group: default" in info and "Allocation policy: preferred" in info
    assert "Nodes: node01, node02, node03" in info and "vcpu-ratio: 4.0" in info


def test_gnt_group_unknown_group_fails_with_a_message(
        client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert gnt_group.main(["info", "other"]) != 0
    assert "Node group 'other' does not exist" in capsys.readouterr().err
    assert gnt_group.main(["list", "other"]) != 0


@pytest.mark.parametrize("main, target", [
    (gnt_cluster.main, []), (gnt_node.main, ["node02"]),
    (gnt_instance.main, ["vm1"]), (gnt_group.main, ["default"]),
])
def test_tag_commands(client: FakeClient, capsys: pytest.CaptureFixture[str],
                      main: Any, target: list[str]) -> None:
    assert main(["add-tags", *target, "web", "env:prod"]) == 0
    capsys.readouterr()
    assert main(["list-tags", *target]) == 0
    assert capsys.readouterr().out.splitlines() == ["env:prod", "web"]
    assert main(["remove-tags", *target, "web"]) == 0
    assert main(["list-tags", *target]) == 0
    assert capsys.readouterr().out.splitlines() == ["env:prod"]


def test_bad_tags_and_missing_tags_are_refused(client: FakeClient, rapi: Rapi,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert gnt_node.main(["add-tags", "node01", "bad tag"]) != 0
    assert "invalid characters" in capsys.readouterr().err
    assert gnt_instance.main(["remove-tags", "vm1", "ghost"]) != 0
    assert "'ghost' not found on instance vm1" in capsys.readouterr().err
    assert gnt_node.main(["add-tags", "node09", "x"]) != 0
    assert "node09" in capsys.readouterr().err
    assert rapi.jobs() == []


def test_tags_from_a_file_and_search(client: FakeClient, tmp_path: Any,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "tags"
    f.write_text("rack:1\n\nrack:2\n")
    assert gnt_node.main(["add-tags", "--from", str(f), "node03"]) == 0
    assert gnt_cluster.main(["add-tags", "site:paris"]) == 0
    capsys.readouterr()
    assert gnt_cluster.main(["search-tags", "^(rack|site)"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "/cluster site:paris", "/nodes/node03 rack:1", "/nodes/node03 rack:2"]

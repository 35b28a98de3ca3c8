"""Tags on the cluster, the group, nodes and instances: RAPI's GET/PUT/DELETE (writes
are jobs), Ganeti's validation, and refusals that queue nothing."""

from __future__ import annotations

import pytest

from haven.errors import InvalidInput
from haven.master.opcodes.tags import validate_tag
from tests.unit.rapi_fake import Rapi, rapi_fixture  # noqa: F401

PATHS = ["/2/tags", "/2/nodes/node02/tags", "/2/instances/vm1/tags",
         "/2/groups/default/tags"]


@pytest.mark.parametrize("path", PATHS)
def test_add_list_remove_through_jobs(rapi: Rapi, path: str) -> None:
    assert rapi.ok("GET", path) == []
    job = rapi.ok("PUT", path + "?tag=web&tag=env:prod")
    assert isinstance(job, int)
    assert rapi.ok("GET", path) == []  # nothing changes before the job runs
    rapi.run_job(job)
    assert rapi.ok("GET", path) == ["env:prod", "web"]
    # Adding a tag twice keeps it once.
    rapi.run_job(rapi.ok("PUT", path + "?tag=web"))
    assert rapi.ok("GET", path) == ["env:prod", "web"]
    rapi.run_job(rapi.ok("DELETE", path + "?tag=web"))
    assert rapi.ok("GET", path) == ["env:prod"]


def test_tags_show_in_the_bulk_views(rapi: Rapi) -> None:
    rapi.run_job(rapi.ok("PUT", "/2/nodes/node03/tags?tag=rack1"))
    rapi.run_job(rapi.ok("PUT", "/2/instances/vm1/tags?tag=db"))
    rapi.run_job(rapi.ok("PUT", "/2/tags?tag=site:paris"))
    rapi.run_job(rapi.ok("PUT", "/2/groups/default/tags?tag=g1"))
    nodes = {n["name"]: n for n in rapi.ok("GET", "/2/nodes?bulk=1")}
    assert nodes["node03"]["tags"] == ["rack1"] and nodes["node01"]["tags"] == []
    assert rapi.ok("GET", "/2/instances/vm1")["tags"] == ["db"]
    assert rapi.ok("GET", "/2/info")["tags"] == ["site:paris"]
    assert rapi.ok("GET", "/2/groups?bulk=1")[0]["tags"] == ["g1"]


@pytest.mark.parametrize("query, status, words", [
    ("", 400, "?tag="),
    ("?tag=", 400, "cannot be empty"),
    ("?tag=has%20space", 400, "invalid characters"),
    ("?tag=" + "x" * 129, 400, "Tag too long"),
])
def test_invalid_tags_are_refused_and_nothing_queued(rapi: Rapi, query: str, status: int,
                                                     words: str) -> None:
    code, err = rapi.call("PUT", "/2/instances/vm1/tags" + query)
    assert code == status and words in err["message"], err
    assert rapi.jobs() == []


def test_unknown_objects_are_404_and_nothing_queued(rapi: Rapi) -> None:
    for method in ("GET", "PUT", "DELETE"):
        for path in ("/2/nodes/node09/tags", "/2/instances/nope/tags",
                     "/2/groups/other/tags"):
            status, err = rapi.call(method, path + "?tag=a")
            assert status == 404, (method, path, err)
            assert err["explain"] == "unknown_entity"
    assert rapi.jobs() == []


def test_removing_a_tag_that_is_not_there_is_refused(rapi: Rapi) -> None:
    status, err = rapi.call("DELETE", "/2/tags?tag=ghost")
    assert status == 400 and "'ghost' not found on cluster" in err["message"]
    assert rapi.jobs() == []


def test_writes_need_a_user_with_write_access(rapi: Rapi) -> None:
    status, _ = rapi.call("PUT", "/2/tags?tag=a", write=False)
    assert status == 401
    assert rapi.call("GET", "/2/tags", write=False) == (200, [])


def test_validation_matches_ganeti() -> None:
    assert validate_tag("a.b+c*d/e:f@g-h_i") == "a.b+c*d/e:f@g-h_i"
    assert validate_tag("x" * 128)
    for bad in ("", "x" * 129, "a b", "a,b", "é?"):
        with pytest.raises(InvalidInput):
            validate_tag(bad)
    with pytest.raises(InvalidInput, match="not a string"):
        validate_tag(5)

"""The REST API: Ganeti RAPI v2 paths and shapes, plus Haven's ``/haven/*`` paths.

Reads are served by any node from the store; writes become jobs in the store that the
master runs.  Node-to-node calls (join, leave, redist) live under ``/haven/node``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from haven.api.routing import HttpError, Request, Response, Router
from haven.api.views import cluster_view
from haven.errors import InvalidInput, NotFoundError
from haven.master import jobqueue, state
from haven.master.lu import check_job
from haven.model.job import Job, public_op
from haven.model.keys import Keys

if TYPE_CHECKING:
    from haven.api.node import NodeContext

WAIT_TIMEOUT = 10.0  # Ganeti's RAPI job wait returns after at most this long
# What Ganeti's RAPI client looks for in /2/features before using a request format:
# version-1 instance creation and reinstall bodies, node migration with a body, and
# node evacuation whose job result lists the jobs it submitted.
FEATURES = ("instance-create-reqv1", "instance-reinstall-reqv1", "node-migrate-reqv1",
            "node-evac-res1")


def install(r: Router, d: NodeContext) -> None:
    """Register every route of the API against daemon ``d``."""
    from haven.api import (
        alarms_api,
        groups_api,
        ha_api,
        instances_api,
        metrics,
        nodes_api,
        query_api,
        tags_api,
        unsupported,
    )

    ha_api.install(r, d)
    r.add("GET", "/", lambda _q: "Haven Remote API")
    r.add("GET", "/version", lambda _q: 2)
    r.add("GET", "/2", lambda _q: [])
    r.add("GET", "/2/features", lambda _q: list(FEATURES))
    r.add("GET", "/2/info", lambda _q: info(d))
    r.add("GET", "/2/jobs", lambda q: jobs(d, q))
    r.add("GET", "/2/jobs/{id}", lambda q: job_info(d, q))
    r.add("DELETE", "/2/jobs/{id}", lambda q: list(jobqueue.cancel(d.store(), _jid(q))),
          write=True)
    r.add("GET", "/2/jobs/{id}/wait", lambda q: job_wait(d, q))
    r.add("PUT", "/2/jobs/{id}/wait", lambda q: job_wait(d, q))
    r.add("PUT", "/2/redistribute-config",
          lambda _q: submit(d, [{"OP_ID": "OP_CLUSTER_REDIST_CONF"}]), write=True)
    r.add("POST", "/haven/jobs", lambda q: submit(d, (q.body or {}).get("opcodes")),
          write=True)
    r.add("GET", "/haven/master", lambda _q: state.master(d.store()))
    r.add("GET", "/haven/status", lambda _q: status(d))
    nodes_api.install(r, d)
    instances_api.install(r, d)
    groups_api.install(r, d)
    tags_api.install(r, d)
    query_api.install(r, d)
    unsupported.install(r)
    metrics.install(r, d)
    alarms_api.install(r, d)


def info(d: NodeContext) -> dict[str, Any]:
    store = d.store()
    return cluster_view(state.cluster(store), state.master(store))


def submit(d: NodeContext, ops: Any) -> int:
    """Check the opcodes' arguments now (a bad job is refused, not queued) and queue."""
    checked = check_job(ops)
    return jobqueue.submit(d.store(), checked)


def _jid(q: Request) -> int:
    try:
        return int(q.params["id"])
    except ValueError as exc:
        raise InvalidInput(f"Job id {q.params['id']!r} is not a number.") from exc


def job_dict(job: Job) -> dict[str, Any]:
    """A job in RAPI's ``/2/jobs/<id>`` shape."""
    return {
        "id": job.id, "status": str(job.status), "ops": [public_op(op) for op in job.ops],
        "opstatus": [str(s) for s in job.opstatus], "opresult": list(job.opresult),
        "oplog": [list(map(list, log)) for log in job.oplog],
        "summary": job.summary, "received_ts": _ts(job.received_ts),
        "start_ts": _ts(job.start_ts), "end_ts": _ts(job.end_ts),
        "master": job.master,
    }


def _ts(t: float | None) -> list[int] | None:
    # Ganeti sends timestamps as (seconds, microseconds).
    if t is None:
        return None
    return [int(t), int((t % 1) * 1e6)]


def jobs(d: NodeContext, q: Request) -> list[dict[str, Any]]:
    all_jobs = jobqueue.list_jobs(d.store())
    if q.qbool("bulk"):
        return [job_dict(j) for j in all_jobs]
    return [{"id": j.id, "uri": f"/2/jobs/{j.id}"} for j in all_jobs]


def job_info(d: NodeContext, q: Request) -> dict[str, Any]:
    job, _ = jobqueue.read(d.store(), _jid(q))
    return job_dict(job)


def job_wait(d: NodeContext, q: Request) -> Any:
    """Long-poll until the job's status or log changes (RAPI's ``/wait``).

    Body (or query): ``fields``, ``previous_job_info``, ``previous_log_serial``.
    Answers ``{"job_info": [...], "log_entries": [...]}`` or ``null`` on timeout.
    """
    body = q.body if isinstance(q.body, dict) else {}
    fields = body.get("fields") or ["status", "opstatus"]
    prev_info = body.get("previous_job_info")
    prev_serial = int(body.get("previous_log_serial") or q.qstr("previous_log_serial") or 0)
    timeout = min(float(body.get("timeout") or q.qstr("timeout") or WAIT_TIMEOUT),
                  WAIT_TIMEOUT)
    job_id = _jid(q)
    deadline = time.monotonic() + timeout
    store = d.store()
    joined = d.joined
    while True:
        job, _ = jobqueue.read(store, job_id)
        view = job_dict(job)
        cur = [view.get(f) for f in fields]
        entries = [list(e) for log in job.oplog for e in log if e[0] > prev_serial]
        if cur != prev_info or entries or job.status.finalized:
            return {"job_info": cur, "log_entries": entries}
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if joined is not None:
            joined.hub.wait(min(left, 1.0))
        else:
            time.sleep(min(left, 0.1))


def status(d: NodeContext) -> dict[str, Any]:
    js = d.local.joined()
    out: dict[str, Any] = {"node": d.name, "address": d.settings.address,
                           "cluster": js.cluster_name if js else None,
                           "etcd_member_running": d.member.running(),
                           "uptime": time.time() - d.started}
    joined = d.joined
    if joined is not None:
        out["lease_valid"] = joined.lease.valid()
        out["role"] = joined.role.last_summary if joined.role else None
        out["is_master"] = bool(joined.role and joined.role.is_master())
    return out


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data).encode(), status)


def not_found(what: str) -> HttpError:
    return HttpError(404, f"{what} does not exist.", "unknown_entity")


__all__ = ["Keys", "NotFoundError", "install"]

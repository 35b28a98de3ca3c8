"""Jobs (``jobs/<id>``): Ganeti's job model, a list of opcodes run in order by the master."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from haven.model.fields import known


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    CANCELING = "canceling"
    CANCELED = "canceled"

    @property
    def finalized(self) -> bool:
        return self in (JobStatus.SUCCESS, JobStatus.ERROR, JobStatus.CANCELED)


class OpStatus(enum.StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    CANCELING = "canceling"
    CANCELED = "canceled"


@dataclass(frozen=True)
class Job:
    """One job.  ``ops`` are opcode dicts (``{"OP_ID": "OP_TEST_DELAY", ...}``).

    ``oplog[i]`` is a list of ``[serial, timestamp, type, message]`` entries (Ganeti's
    shape); ``progress`` is free-form per-opcode state an opcode persists so that a new
    master can finish or roll back its work.
    """

    id: int
    ops: tuple[dict[str, Any], ...]
    status: JobStatus
    opstatus: tuple[OpStatus, ...]
    opresult: tuple[Any, ...]
    oplog: tuple[tuple[tuple[Any, ...], ...], ...]
    received_ts: float
    start_ts: float | None = None
    end_ts: float | None = None
    master: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    log_serial: int = 0

    @classmethod
    def new(cls, job_id: int, ops: list[dict[str, Any]], now: float) -> Job:
        n = len(ops)
        return cls(id=job_id, ops=tuple(ops), status=JobStatus.QUEUED,
                   opstatus=(OpStatus.QUEUED,) * n, opresult=(None,) * n,
                   oplog=((),) * n, received_ts=now)

    @property
    def summary(self) -> list[str]:
        return [summarize(op) for op in self.ops]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["opstatus"] = [str(s) for s in self.opstatus]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        kw = known(cls, data)
        kw["ops"] = tuple(kw["ops"])
        kw["status"] = JobStatus(kw["status"])
        kw["opstatus"] = tuple(OpStatus(s) for s in kw["opstatus"])
        kw["opresult"] = tuple(kw["opresult"])
        kw["oplog"] = tuple(tuple(tuple(e) for e in log) for log in kw["oplog"])
        return cls(**kw)

    def with_log(self, index: int, message: str, now: float, kind: str = "message") -> Job:
        serial = self.log_serial + 1
        logs = list(self.oplog)
        logs[index] = (*logs[index], (serial, now, kind, message))
        return replace(self, oplog=tuple(logs), log_serial=serial)

    def with_op(self, index: int, status: OpStatus, result: Any = None) -> Job:
        st = list(self.opstatus)
        st[index] = status
        res = list(self.opresult)
        if result is not None or status in (OpStatus.SUCCESS, OpStatus.ERROR):
            res[index] = result
        return replace(self, opstatus=tuple(st), opresult=tuple(res))


# Opcode arguments that are secrets: kept in the job (the master needs them) but never
# shown by the API, whose reads are open to anyone as Ganeti's RAPI's are.
SECRET_OP_FIELDS = frozenset({"join_token"})


def public_op(op: dict[str, Any]) -> dict[str, Any]:
    """``op`` as the API shows it: secret arguments replaced by ``"<hidden>"``."""
    return {k: "<hidden>" if k in SECRET_OP_FIELDS and v else v for k, v in op.items()}


def summarize(op: dict[str, Any]) -> str:
    """Ganeti's job summary: ``OP_NODE_ADD`` with its main argument, ``NODE_ADD(node02)``."""
    op_id = str(op.get("OP_ID", "OP_UNKNOWN"))
    short = op_id[3:] if op_id.startswith("OP_") else op_id
    for key in ("instance_name", "node_name", "name", "duration", "target_node"):
        if key in op and op[key] not in (None, ""):
            return f"{short}({op[key]})"
    return short

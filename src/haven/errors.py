"""The one error tree of Haven.

    HavenError                      code, exit status, HTTP status, one sentence
    ├── OpPrereqError               a request that cannot be done in the current state
    │   ├── NotFoundError           unknown node, instance, job ...
    │   ├── ExistsError             a name already in use
    │   └── InvalidInput            a wrong value or option
    ├── OpExecError                 a step failed while doing the work
    ├── NotClusterError             this machine is not part of a cluster
    ├── ConfirmationError           a dangerous command without its confirmation flag
    ├── ApiUnavailable              no node daemon answered (CLI side)
    └── store.errors.StoreError     everything that comes from etcd (see that module)

Every error carries a Ganeti error code (``ECODE_*``), the exit status Ganeti's CLI
would give, and the HTTP status the REST API answers with.  Messages are one sentence
that names the object and, where there is one, the fix.  No traceback ever reaches a
user: the CLI and the API map these errors at their boundary.
"""

from __future__ import annotations

from typing import ClassVar

# Ganeti's error codes (ganeti.errors.ECODE_*), sent as the second element of a
# prerequisite error so that RAPI clients can tell them apart.
ECODE_RESOLVER = "resolver_error"
ECODE_NORES = "insufficient_resources"
ECODE_TEMP_NORES = "temp_insufficient_resources"
ECODE_INVAL = "wrong_input"
ECODE_STATE = "wrong_state"
ECODE_NOENT = "unknown_entity"
ECODE_EXISTS = "already_exists"
ECODE_NOTUNIQUE = "resource_not_unique"
ECODE_FAULT = "internal_error"
ECODE_ENVIRON = "environment_error"

# Ganeti's CLI exit codes (ganeti._constants.EXIT_*).
EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_NOTCLUSTER = 5
EXIT_NOTMASTER = 11
EXIT_NODESETUP_ERROR = 12
EXIT_CONFIRMATION = 13
EXIT_UNKNOWN_FIELD = 14


class HavenError(Exception):
    """Root of every error Haven raises on purpose."""

    ecode: ClassVar[str] = ECODE_FAULT
    exit_code: ClassVar[int] = EXIT_FAILURE
    http_status: ClassVar[int] = 500
    prefix: ClassVar[str] = "Failure"

    def __init__(self, message: str, ecode: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if ecode is not None:
            self.ecode = ecode  # type: ignore[misc]

    def to_json(self) -> dict[str, object]:
        """The body the REST API sends for this error (Ganeti RAPI's shape)."""
        return {
            "code": self.http_status,
            "message": self.message,
            "explain": self.ecode,
            "kind": type(self).__name__,
        }


class OpPrereqError(HavenError):
    """The request is valid but cannot be carried out in the current state."""

    ecode = ECODE_STATE
    http_status = 400
    prefix = "Failure: prerequisites not met for this operation"


class NotFoundError(OpPrereqError):
    ecode = ECODE_NOENT
    http_status = 404


class ExistsError(OpPrereqError):
    ecode = ECODE_EXISTS
    http_status = 409


class InvalidInput(OpPrereqError):
    ecode = ECODE_INVAL
    http_status = 400


class InsufficientResources(OpPrereqError):
    ecode = ECODE_NORES
    http_status = 400


class OpExecError(HavenError):
    """A step failed while the work was being done."""

    ecode = ECODE_FAULT
    http_status = 500
    prefix = "Failure: command execution error"


class NotClusterError(HavenError):
    ecode = ECODE_ENVIRON
    exit_code = EXIT_NOTCLUSTER
    http_status = 503
    prefix = "Failure"


class NodeSetupError(HavenError):
    """A node (daemon, etcd member) could not be reached or set up.  Exits 1 like
    Ganeti's failed jobs; ``EXIT_NODESETUP_ERROR`` is for node-daemon setup tools."""

    ecode = ECODE_ENVIRON
    http_status = 502


class ConfirmationError(HavenError):
    ecode = ECODE_INVAL
    exit_code = EXIT_CONFIRMATION
    http_status = 400


class TemporaryError(HavenError):
    """The cluster cannot answer right now (e.g. etcd is electing a leader)."""

    ecode = ECODE_TEMP_NORES
    http_status = 503


class ApiUnavailable(HavenError):
    """No node daemon of the cluster answered the CLI."""

    ecode = ECODE_ENVIRON
    exit_code = EXIT_NOTMASTER
    http_status = 503
    prefix = "Failure"


_BY_KIND: dict[str, type[HavenError]] = {}


def _register(*classes: type[HavenError]) -> None:
    for cls in classes:
        _BY_KIND[cls.__name__] = cls


_register(HavenError, OpPrereqError, NotFoundError, ExistsError, InvalidInput,
          InsufficientResources, OpExecError, NotClusterError, NodeSetupError,
          ConfirmationError, ApiUnavailable, TemporaryError)


def from_json(body: dict[str, object]) -> HavenError:
    """Rebuild an error sent by :meth:`HavenError.to_json` (CLI side)."""
    cls = _BY_KIND.get(str(body.get("kind", "")), HavenError)
    err = cls(str(body.get("message", "unknown error")))
    explain = body.get("explain")
    if isinstance(explain, str):
        err.ecode = explain  # type: ignore[misc]
    return err

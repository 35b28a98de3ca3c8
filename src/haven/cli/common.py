"""What every command shares: option types, tables, units, errors and exit codes."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from haven.errors import EXIT_FAILURE, EXIT_SUCCESS, HavenError, InvalidInput


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Ganeti's usage errors exit with 1 after one line naming the problem.
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)


def yes_no(value: str) -> bool:
    v = value.lower()
    if v in ("yes", "y", "true", "1", "on"):
        return True
    if v in ("no", "n", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {value!r}")


def format_unit(mib: Any) -> str:
    """Ganeti's ``FormatUnit(value, 'h')`` for a size in MiB."""
    if mib is None:
        return "?"
    v = float(mib)
    if v < 1024:
        return f"{int(v)}M"
    if v < 1024 * 1024:
        return f"{v / 1024:.1f}G"
    return f"{v / 1024 / 1024:.1f}T"


def print_fields(fields: Mapping[str, Sequence[Any]]) -> int:
    """``list-fields``: each field's name and title (its first element); exit code 0."""
    print(render_table(["Name", "Title"], [[k, v[0]] for k, v in fields.items()]))
    return 0


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 separator: str | None = None, no_headers: bool = False,
                 numeric: Sequence[bool] = ()) -> str:
    """Ganeti's ``GenerateTable``: space-padded columns (numbers right-aligned), or
    plain ``separator``-joined values."""
    srows = [[_cell(v) for v in r] for r in rows]
    if separator is not None:
        lines = [] if no_headers else [separator.join(headers)]
        lines += [separator.join(r) for r in srows]
        return "\n".join(lines)
    allrows = srows if no_headers else [list(headers), *srows]
    if not allrows:
        return ""
    widths = [max(len(r[i]) for r in allrows) for i in range(len(headers))]
    lines = []
    for r in allrows:
        cells = []
        for i, v in enumerate(r):
            last = i == len(r) - 1
            if i < len(numeric) and numeric[i]:
                cells.append(v.rjust(widths[i]))
            else:
                cells.append(v if last else v.ljust(widths[i]))
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "?"
    if isinstance(v, bool):
        return "Y" if v else "N"
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v)
    return str(v)


def print_log(entry: Sequence[Any], prefix: str = "") -> None:
    """A job log line as Ganeti prints it: the time, then the message (after
    ``prefix``, the instance's name when one command runs a job per instance)."""
    ts = entry[1]
    t = ts[0] if isinstance(ts, list) else ts
    print(f"{time.ctime(float(t))} {prefix}{entry[3]}", flush=True)


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """A ``gnt-*`` command's main: parse ``argv`` (default: the process's), run the
    chosen subcommand's ``fn`` through :func:`run`."""
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run(lambda: int(args.fn(args)))


def run(fn: Callable[[], int]) -> int:
    """Run a command; every error becomes one message and Ganeti's exit code."""
    try:
        return fn()
    except HavenError as exc:
        print(format_error(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Aborted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_SUCCESS


def format_error(exc: HavenError) -> str:
    from haven.errors import OpExecError, OpPrereqError

    if isinstance(exc, OpPrereqError):
        return (f"Failure: prerequisites not met for this operation:\n"
                f"error type: {exc.ecode}, error details:\n{exc.message}")
    if isinstance(exc, OpExecError):
        return f"Failure: command execution error:\n{exc.message}"
    return f"Failure: {exc.message}"


def job_error(job: dict[str, Any]) -> HavenError:
    """The error of a failed job, rebuilt from its opresult."""
    from haven import errors

    statuses = job.get("opstatus") or []
    for i, res in enumerate(job.get("opresult", [])):
        if i < len(statuses) and statuses[i] != "error":
            continue  # a successful opcode's result is data, not an error
        if isinstance(res, list) and len(res) == 2 and isinstance(res[1], list):
            kind, args = res
            cls = getattr(errors, str(kind), errors.OpExecError)
            if not (isinstance(cls, type) and issubclass(cls, HavenError)):
                cls = errors.OpExecError
            msg = str(args[0]) if args else "unknown error"
            err = cls(msg)
            if len(args) > 1 and isinstance(args[1], str):
                err.ecode = args[1]  # type: ignore[misc]
            return err
    if job.get("status") == "canceled":
        return errors.OpExecError(f"Job {job.get('id')} was canceled.")
    return errors.OpExecError(f"Job {job.get('id')} failed.")


def submit_and_wait(client: Any, ops: list[dict[str, Any]], submit_only: bool = False,
                    quiet: bool = False, prefix: str = "") -> Any:
    """Submit a job, print its log as it runs (each line after ``prefix``), return its
    last result or raise."""
    job_id = client.submit(ops)
    if submit_only:
        print(f"JobID: {job_id}")
        return None
    job = client.wait_job(job_id, None if quiet else
                          (lambda entry: print_log(entry, prefix)))
    if job["status"] != "success":
        raise job_error(job)
    return job["opresult"][-1] if job["opresult"] else None


def parse_fields(spec: str | None, default: list[str], known: dict[str, Any]) -> list[str]:
    """Ganeti's ``-o``: a list, or ``+a,b`` to extend the default."""
    if not spec:
        return default
    fields = default + spec[1:].split(",") if spec.startswith("+") else spec.split(",")
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise UnknownField(f"Unknown output field(s): {', '.join(unknown)}; see "
                           f"list-fields.")
    return fields


class UnknownField(InvalidInput):
    from haven.errors import EXIT_UNKNOWN_FIELD as exit_code


def print_listing(kind: str, items: list[dict[str, Any]], names: list[str],
                  fields: list[str], table: dict[str, tuple[str, bool, Any]], args: Any,
                  missing_value: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Ganeti's ``list``: the named objects (all if none; an unknown name is an error),
    sorted by name, one row each with ``table``'s title, alignment and formatter per
    field; ``--units`` prints raw numbers.  Returns the objects listed."""
    from haven.errors import NotFoundError

    if names:
        missing = set(names) - {i["name"] for i in items}
        if missing:
            raise NotFoundError(f"{kind.capitalize()}(s) {', '.join(sorted(missing))} not "
                                f"known; see gnt-{kind} list.")
        items = [i for i in items if i["name"] in names]
    items = sorted(items, key=lambda i: i["name"])
    rows = []
    for item in items:
        row = []
        for f in fields:
            v = item.get(f)
            fmt = table[f][2]
            if v is None and missing_value and f in missing_value:
                v = missing_value[f]
            elif fmt and v is not None and not getattr(args, "units", None):
                v = fmt(v)
            row.append(v)
        rows.append(row)
    out = render_table([table[f][0] for f in fields], rows, args.separator,
                       args.no_headers, [table[f][1] for f in fields])
    if out:
        print(out)
    return items

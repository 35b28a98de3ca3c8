"""What every command shares: tables, units, output fields, job errors, Ganeti's error
text and exit codes, and ``haven <family>`` handing over to ``gnt-<family>``."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from haven.cli import common, haven
from haven.cli.common import (
    UnknownField,
    format_error,
    format_unit,
    job_error,
    parse_fields,
    render_table,
)
from haven.errors import (
    EXIT_UNKNOWN_FIELD,
    ConfirmationError,
    HavenError,
    InvalidInput,
    NotFoundError,
    OpExecError,
    OpPrereqError,
)

# -- render_table ----------------------------------------------------------------------------


def test_render_table_pads_columns_and_right_aligns_numbers() -> None:
    table = render_table(["Node", "DTotal", "Role"],
                         [["node01", 1024, "M"], ["node10", 10, "C"]],
                         numeric=[False, True, False])
    assert table.splitlines() == [
        "Node   DTotal Role",
        "node01   1024 M",
        "node10     10 C",
    ]


def test_render_table_never_pads_the_last_column_nor_leaves_trailing_spaces() -> None:
    table = render_table(["Name", "Tags"], [["a", "x"], ["longer-name", ""]])
    assert table.splitlines() == ["Name        Tags", "a           x", "longer-name"]


def test_render_table_formats_missing_values_booleans_and_lists_like_ganeti() -> None:
    table = render_table(["Name", "Offline", "Nodes", "Memory"],
                         [["vm1", False, ["node01", "node02"], None],
                          ["vm2", True, [], 512]], separator="|")
    assert table == "Name|Offline|Nodes|Memory\nvm1|N|node01,node02|?\nvm2|Y||512"


def test_render_table_separator_mode_does_not_pad() -> None:
    assert render_table(["A", "B"], [["long value", 1]], separator=" ") == "A B\nlong value 1"


@pytest.mark.parametrize("separator", [None, ":"])
def test_render_table_without_headers_prints_only_rows(separator: str | None) -> None:
    table = render_table(["Node", "Pinst"], [["node01", 3]], separator=separator,
                         no_headers=True, numeric=[False, True])
    assert table == ("node01 3" if separator is None else "node01:3")


def test_render_table_of_nothing_is_empty_without_headers_and_the_header_line_with() -> None:
    assert render_table(["Node"], [], no_headers=True) == ""
    assert render_table(["Node", "Role"], []) == "Node Role"


# -- format_unit -----------------------------------------------------------------------------


@pytest.mark.parametrize(("mib", "text"), [
    (0, "0M"), (512, "512M"), (1023, "1023M"), (1024, "1.0G"), (1536, "1.5G"),
    (1024 * 1024 - 1, "1024.0G"), (1024 * 1024, "1.0T"), (3 * 1024 * 1024 / 2, "1.5T"),
    ("2048", "2.0G"), (None, "?"),
])
def test_format_unit_is_ganetis_human_size_in_mib(mib: Any, text: str) -> None:
    assert format_unit(mib) == text


# -- parse_fields ----------------------------------------------------------------------------

KNOWN = {"name": "Node", "pinst_cnt": "Pinst", "role": "Role", "dtotal": "DTotal"}
DEFAULT = ["name", "pinst_cnt"]


@pytest.mark.parametrize(("spec", "fields"), [
    (None, DEFAULT),
    ("", DEFAULT),
    ("role", ["role"]),
    ("role,name", ["role", "name"]),
    ("+role", ["name", "pinst_cnt", "role"]),
    ("+role,dtotal", ["name", "pinst_cnt", "role", "dtotal"]),
])
def test_parse_fields_replaces_or_with_plus_extends_the_default(
        spec: str | None, fields: list[str]) -> None:
    assert parse_fields(spec, DEFAULT, KNOWN) == fields


def test_parse_fields_never_changes_the_default_list() -> None:
    default = list(DEFAULT)
    parse_fields("+role", default, KNOWN)
    assert default == DEFAULT


def test_an_unknown_field_raises_with_exit_code_14(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownField) as err:
        parse_fields("name,colour,+x", DEFAULT, KNOWN)
    assert err.value.message == "Unknown output field(s): colour, +x; see list-fields."
    assert isinstance(err.value, InvalidInput)
    assert err.value.exit_code == EXIT_UNKNOWN_FIELD == 14
    assert common.run(lambda: len(parse_fields("colour", DEFAULT, KNOWN))) == 14
    assert "Unknown output field(s): colour" in capsys.readouterr().err


# -- job_error ---------------------------------------------------------------------------------


def failed_job(*opresult: Any, opstatus: list[str] | None = None,
               status: str = "error") -> dict[str, Any]:
    return {"id": 12, "status": status, "opresult": list(opresult),
            "opstatus": opstatus or ["error"] * len(opresult)}


@pytest.mark.parametrize(("opresult", "cls", "message", "ecode"), [
    (["OpPrereqError", ["Node node02 is the master.", "wrong_state"]], OpPrereqError,
     "Node node02 is the master.", "wrong_state"),
    (["NotFoundError", ["Node 'node09' is not part of the cluster.", "unknown_entity"]],
     NotFoundError, "Node 'node09' is not part of the cluster.", "unknown_entity"),
    (["OpExecError", ["The master node node00 stopped while this job was running."]],
     OpExecError, "The master node node00 stopped while this job was running.",
     "internal_error"),
    (["FencedOut", ["Refused a master write.", "wrong_state"]], OpExecError,
     "Refused a master write.", "wrong_state"),
    (["ECODE_INVAL", ["not a class"]], OpExecError, "not a class", "internal_error"),
    (["OpPrereqError", []], OpPrereqError, "unknown error", "wrong_state"),
])
def test_job_error_rebuilds_the_error_class_and_message_from_the_opresult(
        opresult: list[Any], cls: type[HavenError], message: str, ecode: str) -> None:
    err = job_error(failed_job(None, opresult, opstatus=["success", "error"]))
    assert (type(err), err.message, err.ecode) == (cls, message, ecode)


def test_job_error_of_a_canceled_or_silent_job_names_the_job() -> None:
    assert job_error(failed_job(None, status="canceled")).message == "Job 12 was canceled."
    assert job_error(failed_job(None)).message == "Job 12 failed."


def test_job_error_ignores_the_results_of_opcodes_that_succeeded() -> None:
    job = failed_job([["offline", True], ["master_candidate", False]],
                     ["OpPrereqError", ["Node node03 is down.", "wrong_state"]],
                     opstatus=["success", "error"])
    err = job_error(job)
    assert (type(err), err.message) == (OpPrereqError, "Node node03 is down.")


# -- format_error and exit codes --------------------------------------------------------------


@pytest.mark.parametrize(("error", "text"), [
    (OpPrereqError("Node node02 is the master."),
     "Failure: prerequisites not met for this operation:\n"
     "error type: wrong_state, error details:\nNode node02 is the master."),
    (NotFoundError("Node 'node09' is not part of the cluster."),
     "Failure: prerequisites not met for this operation:\n"
     "error type: unknown_entity, error details:\nNode 'node09' is not part of the cluster."),
    (InvalidInput("Delay -1 s is out of range."),
     "Failure: prerequisites not met for this operation:\n"
     "error type: wrong_input, error details:\nDelay -1 s is out of range."),
    (OpExecError("Could not start instance 'vm1': qemu exited."),
     "Failure: command execution error:\nCould not start instance 'vm1': qemu exited."),
    (ConfirmationError("Destroying needs --yes-do-it."),
     "Failure: Destroying needs --yes-do-it."),
])
def test_format_error_prefixes_like_ganeti(error: HavenError, text: str) -> None:
    assert format_error(error) == text


def test_run_prints_the_error_and_returns_its_exit_code(
        capsys: pytest.CaptureFixture[str]) -> None:
    def fails() -> int:
        raise ConfirmationError("Destroying needs --yes-do-it.")

    assert common.run(fails) == 13
    assert capsys.readouterr().err == "Failure: Destroying needs --yes-do-it.\n"
    assert common.run(lambda: 0) == 0


# -- haven <family> -> gnt-<family> -------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(haven.FAMILIES))
def test_haven_family_hands_the_rest_of_the_line_to_gnt_family(
        family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], str]] = []
    mod = importlib.import_module(f"haven.cli.{haven.FAMILIES[family]}")
    monkeypatch.setattr(mod, "main", lambda argv, prog: calls.append((argv, prog)) or 7)
    assert haven.main([family, "list", "-o", "+role", "--no-headers"]) == 7
    assert calls == [(["list", "-o", "+role", "--no-headers"], f"haven {family}")]


def test_haven_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        haven.main([])
    assert exit_.value.code == 1
    assert "haven: error:" in capsys.readouterr().err

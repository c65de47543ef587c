"""`-r` output is safe to open (issue 10, item 8): CSV cells cannot run as formulas, the table
carries no raw control character and marks cut values, every document or row names its
target, and the logs get a summary of the listing instead of the listing itself."""
from __future__ import annotations

import csv
import io
import json

from constants import ExitCode
from tests.support import run_process, write_config

HOSTILE = {
    "=HYPERLINK(\"http://evil\")": "formula", "+1+2": "plus", "-2+3": "minus", "@SUM(A1)": "at",
    "\tcmd": "tab", "\rcmd": "return", "evil\x1b[31m.example\nNEXT ROW": "escape",
}


def plant(standins, values) -> None:
    """Indicators this app owns, as if an earlier version had sent them."""
    for number, (value, name) in enumerate(values.items()):
        key = f"{number:064x}"
        standins.graph.indicators[key] = {"id": key, "externalId": name, "domainName": value, "tlpLevel": "white",
                                          "expirationDateTime": "2030-01-01T00:00:00Z"}
        standins.graph.owners[key] = standins.client_id
        standins.graph._sequence[key] = number + 1


def test_csv_cells_that_start_a_formula_are_defused(standins, tmp_path):
    plant(standins, HOSTILE)
    run = run_process(write_config(tmp_path, standins), "-r", "--format", "csv")
    assert run.code == ExitCode.OK, run.err
    rows = list(csv.reader(io.StringIO(run.out, newline="")))
    cells = {row[2]: row[3] for row in rows[1:]}
    for value, name in HOSTILE.items():  # (the process's text stdout reads a CR as a newline)
        expected = value if name == "escape" else "'" + value
        assert cells[name].replace("\n", "\r") == expected.replace("\n", "\r"), name


def test_table_escapes_control_characters_and_marks_cut_values(standins, tmp_path):
    sha256 = "a" * 64
    plant(standins, {**HOSTILE, sha256: "hash", "x" * 80 + ".example": "long"})
    run = run_process(write_config(tmp_path, standins), "-r", "--format", "table")
    assert run.code == ExitCode.OK, run.err
    assert "\x1b" not in run.out and "\r" not in run.out
    lines = run.out.splitlines()
    assert len(lines) == 1 + len(HOSTILE) + 2
    assert any("evil\\x1b[31m.example\\nNEXT ROW" in line for line in lines)
    assert any(sha256 in line for line in lines)
    assert any("x" * 63 + "\u2026" in line for line in lines)


def test_each_document_and_row_names_its_target_and_logs_hold_a_summary(standins, tmp_path):
    config = write_config(tmp_path, standins, target=["graph", "sentinel"])
    assert run_process(config).code == ExitCode.OK
    for path in (tmp_path / "logs").iterdir():
        path.unlink()
    run = run_process(config, "-r")
    assert run.code == ExitCode.OK, run.err
    decoder, text, documents = json.JSONDecoder(), run.out, []
    while text.strip():
        document, end = decoder.raw_decode(text.lstrip())
        documents.append(document)
        text = text.lstrip()[end:]
    assert [document["target"] for document in documents] == [
        f"graph tenant {standins.tenant}", f"sentinel workspace {standins.sentinel.workspace_id}"]
    summaries = run.logs("listing")
    assert [summary["indicators"] for summary in summaries] == [len(document["value"]) for document in documents]
    assert run.logs("list") == [] and run.logs("queryIndicators") == []
    rows = list(csv.reader(io.StringIO(run_process(config, "-r", "--format", "csv").out)))
    assert {row[0] for row in rows if row[0] != "target"} == {document["target"] for document in documents}

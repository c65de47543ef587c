"""Issue 14, "Delivery, confirmed": `--verify` and `verify_after_minutes` against the Sentinel
stand-in's Log Analytics table and the Graph and Defender stand-ins' own listings."""
from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import pytest

from constants import Delivery, ExitCode
from loganalytics_client import table_id
from tests.support import (
    ROOT,
    defender_config,
    delivery_counts,
    graph_session,
    run_cli,
    sentinel_config,
    store_file,
    undelivered_records,
    write_config,
)


def _victims(standins: Any, count: int) -> list[str]:
    """STIX ids of the first `count` indicators the workspace holds, in upload order."""
    return list(standins.sentinel.objects)[:count]


def _rule(ident: str, change: Any) -> Any:
    """An ingestion rule touching only the row of STIX id `ident` (`change`: row -> row | None)."""
    return lambda row: change(row) if row["Id"].endswith("---" + ident) else row


def test_a_full_sync_of_every_fixture_event_is_delivered_and_parsed(standins, tmp_path, capsys, monkeypatch):
    """The guard that moved out of the stand-in: whatever the mapping sends, Sentinel parses.
    (Asked 100 ids per query, so that a big tenant's answer stays far below the row limit.)"""
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    monkeypatch.setattr("constants.LOGANALYTICS_IDS_PER_QUERY", 100)
    checked = run_cli(config, "--verify", capsys=capsys)
    assert len(standins.loganalytics.requests_seen) == -(-len(standins.sentinel.objects) // 100)
    assert checked.code == ExitCode.OK, checked.err
    found = delivery_counts(checked)
    assert found[Delivery.UNPARSED.value] == 0
    assert found[Delivery.DELIVERED.value] == len(standins.sentinel.objects) > 250
    assert checked.err == "" and undelivered_records(checked) == []


def test_a_compound_pattern_stored_under_our_id_shows_as_unparsed(standins, tmp_path, capsys):
    """What misp-stix's `AND` patterns did to cudeso's users: Sentinel takes them, the table
    shows no observable, and only the delivery check says so."""
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    (victim,) = _victims(standins, 1)
    compound = "[ipv4-addr:value = '198.51.100.7' AND ipv4-addr:value = '198.51.100.8']"
    session = graph_session(standins, resource=standins.sentinel.url)
    url = (f"{standins.sentinel.url}/workspaces/{standins.sentinel.workspace_id}"
           "/threat-intelligence-stix-objects:upload?api-version=2024-02-01-preview")
    same_version = {**standins.sentinel.objects[victim], "pattern": compound}
    assert session.post(url, json={"sourcesystem": "MISP", "stixobjects": [same_version]}).status_code == 200
    checked = run_cli(config, "--verify", capsys=capsys)
    assert checked.code == ExitCode.UNDELIVERED and delivery_counts(checked)["unparsed"] == 1
    (logged,) = undelivered_records(checked)
    assert (logged["id"], logged["status"], logged["pattern"]) == (victim, "unparsed", compound)


def test_verify_tells_unparsed_rewritten_missing_and_deleted_apart(standins, tmp_path, capsys):
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    unparsed, rewritten, dropped, deleted = _victims(standins, 4)
    standins.loganalytics.ingestion_rules += [
        _rule(unparsed, lambda row: {**row, "ObservableKey": "", "ObservableValue": ""}),
        _rule(rewritten, lambda row: {**row, "Confidence": 5}),
        _rule(dropped, lambda row: None),
    ]
    assert standins.sentinel.delete(deleted)
    table = run_cli(config, "-r", "--format", "table", capsys=capsys)
    assert "delivered" not in table.out.splitlines()[0]  # no verification yet: no column

    checked = run_cli(config, "--verify", capsys=capsys)
    assert checked.code == ExitCode.UNDELIVERED
    assert checked.err.count("\n") == 1 and "unparsed 1, missing 1, deleted 1" in checked.err
    found = delivery_counts(checked)
    assert {status: found[status.value] for status in Delivery if status is not Delivery.DELIVERED} == {
        Delivery.UNPARSED: 1, Delivery.REWRITTEN: 1, Delivery.DIFFERS: 0, Delivery.PENDING: 0, Delivery.MISSING: 1,
        Delivery.DELETED: 1}
    logged = {record["id"]: record for record in undelivered_records(checked)}
    assert set(logged) == {unparsed, dropped, deleted}
    assert logged[unparsed]["pattern"] == standins.sentinel.objects[unparsed]["pattern"]
    assert logged[dropped]["status"] == "missing" and logged[dropped]["pattern"].startswith("[")

    listing = run_cli(config, "-r", "--format", "table", capsys=capsys)
    header, *rows = listing.out.splitlines()
    assert header.split()[-1] == "delivered"
    label = f"sentinel workspace {standins.sentinel.workspace_id}"
    shown = {row.removeprefix(label).split()[0]: row.split()[-1] for row in rows}
    assert (shown[unparsed], shown[rewritten], shown[dropped]) == ("unparsed", "rewritten", "missing")
    as_json = run_cli(config, "-r", capsys=capsys)
    items = json.loads(as_json.out)["value"]
    assert {item["properties"]["externalId"]: item["delivered"] for item in items}[rewritten] == "rewritten"

    waiting = write_config(tmp_path, standins, target="sentinel", verify_after_minutes=60)
    patient = run_cli(waiting, "--verify", capsys=capsys)
    assert delivery_counts(patient)[Delivery.PENDING.value] == 1  # the dropped one is still young
    assert delivery_counts(patient)[Delivery.MISSING.value] == 0


def test_the_readme_kql_gives_the_numbers_the_tool_reports(standins, tmp_path, capsys):
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    unparsed, deleted = _victims(standins, 2)
    standins.loganalytics.ingestion_rules.append(_rule(unparsed, lambda row: {**row, "ObservableKey": ""}))
    standins.sentinel.delete(deleted)
    found = delivery_counts(run_cli(config, "--verify", capsys=capsys))
    session = graph_session(standins, resource="https://api.loganalytics.io")
    url = f"{standins.loganalytics.url}/v1/workspaces/{standins.sentinel.workspace_id}/query"
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Delivery checks", 1)[1].split("\n## ", 1)[0]
    queries = dict(re.findall(r"`(\w+)`:\n\n```kusto\n(.*?)```", section, re.S))
    assert set(queries) == {"unparsed", "deleted"}
    for status, kql in queries.items():
        answer = session.post(url, json={"query": kql, "timespan": "P14D"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["tables"][0]["rows"] == [[found[status]]], status


def test_a_sync_with_verify_after_minutes_reports_delivery_and_fails_on_a_loss(standins, tmp_path, capsys):
    config = sentinel_config(tmp_path, standins, verify_after_minutes=1)
    standins.loganalytics.lag_seconds = 3600  # no row has reached the table yet: young, so pending
    first = run_cli(config, capsys=capsys)
    report = first.logs("run-report")[-1]
    assert first.code == ExitCode.OK and report["delivery"]["pending"] == len(standins.sentinel.objects)
    assert "delivery checked: delivered 0" in first.out
    standins.loganalytics.lag_seconds = 0
    (dropped,) = _victims(standins, 1)
    standins.loganalytics.ingestion_rules.append(_rule(dropped, lambda row: None))
    with sqlite3.connect(store_file(tmp_path, "sentinel")) as db:
        db.execute("UPDATE indicators SET sent_at = '2020-01-01T00:00:00Z'")
    again = run_cli(config, capsys=capsys)
    report = again.logs("run-report")[-1]
    assert again.code == ExitCode.UNDELIVERED and "missing 1" in again.err
    assert report["delivery"]["missing"] == 1 and report["delivery"]["delivered"] == len(standins.sentinel.objects) - 1
    assert report["exit_code"] == ExitCode.UNDELIVERED


PARTIAL = {"tables": [{"name": "PrimaryResult", "columns": [{"name": "Id", "type": "string"}], "rows": []}],
           "error": {"code": "PartialError", "message": "Query result set has exceeded the internal limit"}}
FAULT_TEXT = {"garbled": "not the documented JSON", "forbidden": "Log Analytics Reader", "partial": "only part of the result"}


@pytest.mark.parametrize("fault", list(FAULT_TEXT))
def test_a_log_analytics_failure_is_one_line_and_exit_4(standins, tmp_path, capsys, monkeypatch, fault):
    monkeypatch.setattr("ms_client.time.sleep", lambda seconds: None)
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    if fault == "garbled":
        standins.loganalytics.fail_next(200, "<html>proxy login</html>", times=5)
    elif fault == "partial":
        standins.loganalytics.fail_next(200, PARTIAL)
    else:
        standins.loganalytics.readers.clear()
    checked = run_cli(config, "--verify", capsys=capsys)
    assert checked.code == ExitCode.MICROSOFT
    assert checked.err.count("\n") == 1 and "Traceback" not in checked.err
    assert FAULT_TEXT[fault] in checked.err
    text = checked.log_text() + checked.err + checked.out
    assert not any(token in text for token in standins.entra.issued_tokens())
    assert standins.client_secret not in text


def test_graph_verification_reads_its_listing(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins, target="graph")
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    gone, edited = list(standins.graph.indicators)[:2]
    with standins.graph.lock:
        del standins.graph.indicators[gone]
        standins.graph.indicators[edited]["description"] = "changed in the portal"
    checked = run_cli(config, "--verify", capsys=capsys)
    found = delivery_counts(checked)
    assert checked.code == ExitCode.UNDELIVERED
    assert (found["missing"], found["differs"], found["delivered"]) == (1, 1, len(standins.graph.indicators) - 1)
    assert [record["id"] for record in undelivered_records(checked)] == [gone]


def test_defender_verification_reads_its_listing(standins, tmp_path, capsys):
    config = defender_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    gone, edited = standins.defender.held()[:2]
    session = graph_session(standins, resource=standins.defender.url)
    assert session.delete(f"{standins.defender.url}/api/indicators/{gone['id']}").status_code == 204
    changed = {name: edited[name] for name in ("indicatorValue", "indicatorType", "action", "expirationTime", "generateAlert")}
    answer = session.post(f"{standins.defender.url}/api/indicators/import",
                          json={"Indicators": [{**changed, "title": "changed in the portal", "description": "x"}]})
    assert answer.status_code == 200 and not answer.json()["value"][0]["isFailed"], answer.text
    checked = run_cli(config, "--verify", capsys=capsys)
    found = delivery_counts(checked)
    assert (found["missing"], found["differs"]) == (1, 1)
    (lost,) = undelivered_records(checked)
    assert lost["value"] == gone["indicatorValue"]


def test_verification_ids_are_the_tables_ids():
    assert table_id("MISP", "indicator--1") == "TUlTUA==---indicator--1"



def test_check_probes_the_log_analytics_permission_when_verification_is_on(standins, tmp_path, capsys):
    config = sentinel_config(tmp_path, standins, verify_after_minutes=30)
    passing = run_cli(config, "--check", capsys=capsys)
    assert passing.code == ExitCode.OK, passing.out
    assert "✓ sentinel workspace" in passing.out and "delivery checks" in passing.out
    standins.loganalytics.readers.clear()
    failing = run_cli(config, "--check", capsys=capsys)
    assert failing.code == ExitCode.MICROSOFT
    (line,) = [line for line in failing.out.splitlines() if "delivery checks" in line]
    assert line.startswith("✗") and "Log Analytics Reader" in failing.out
    quiet = run_cli(sentinel_config(tmp_path, standins), "--check", capsys=capsys)
    assert "delivery checks" not in quiet.out

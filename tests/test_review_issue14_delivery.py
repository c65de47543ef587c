"""Review of issue 14's delivery checks: verdicts that were wrong, and exit codes under cron."""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
from typing import Any

from constants import Delivery, ExitCode
from delivery import judge_table_row
from standins.sentinel import observable
from state_store import StateRow
from tests.support import delivery_counts, run_cli, sentinel_config, store_file

NOW = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
SENT = {"id": "indicator--1", "pattern": "[ipv4-addr:value = '198.51.100.7']", "confidence": 50,
        "modified": "2026-12-01T10:00:00.123Z", "valid_until": "2027-01-30T10:00:00.123Z"}
TABLE = {"Id": "TUlTUA==---indicator--1", "Modified": "2026-12-01T10:00:00.1230000Z", "ObservableKey": "ipv4-addr:value",
         "ObservableValue": "198.51.100.7", "Pattern": SENT["pattern"], "Confidence": 50,
         "ValidUntil": "2027-01-30T10:00:00.1230000Z", "IsDeleted": False}


def _row(**sent: Any) -> StateRow:
    return StateRow("indicator--1", "indicator--1", "h", "f", "", "event", "2020-01-01T00:00:00Z",
                    json.dumps({**SENT, **sent}))


def _judged(seen: dict[str, Any], **sent: Any) -> Delivery:
    return judge_table_row(_row(**sent), {**TABLE, **seen}, NOW, dt.timedelta(0)).status


def test_a_timestamp_with_an_offset_is_the_same_moment_as_the_tables():
    """--rebuild-state keeps `modified` as the management API writes it, which may carry `+00:00`
    (or another offset) instead of `Z`: the same moment is the same version, not a missing one."""
    assert _judged({}, modified="2026-12-01T10:00:00.123+00:00") is Delivery.DELIVERED
    assert _judged({}, modified="2026-12-01T12:00:00.123+02:00") is Delivery.DELIVERED
    assert _judged({"ValidUntil": "2027-01-30T10:00:00.123+00:00"}) is Delivery.DELIVERED


def test_two_unreadable_timestamps_are_not_the_same_version():
    assert _judged({"Modified": "yesterday"}, modified="today") is Delivery.MISSING


def test_columns_typed_as_text_are_read_by_their_value():
    """A bool or int column that arrives as text (a proxy, an older API version) must not turn
    a deleted indicator into a delivered one, nor an untouched confidence into a rewritten one."""
    assert _judged({"IsDeleted": "true"}) is Delivery.DELETED
    assert _judged({"IsDeleted": "False", "Confidence": "50"}) is Delivery.DELIVERED


def test_rejected_and_undelivered_in_one_target_exits_9_and_says_both(standins, tmp_path, capsys):
    """README's order puts 9 above 1, as two targets already get it; one target with both must too,
    and its one stderr line must not hide either."""
    config = sentinel_config(tmp_path, standins, verify_after_minutes=1)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    refused, dropped = list(standins.sentinel.objects)[:2]
    standins.sentinel.reject_value(observable(standins.sentinel.objects[refused]["pattern"])[1], "on the allow list")
    standins.loganalytics.ingestion_rules.append(lambda row: None if row["Id"].endswith("---" + dropped) else row)
    with sqlite3.connect(store_file(tmp_path, "sentinel")) as db:
        db.execute("DELETE FROM indicators WHERE remote_id = ?", (refused,))
        db.execute("UPDATE indicators SET sent_at = '2020-01-01T00:00:00Z'")
    again = run_cli(config, "--full", capsys=capsys)
    assert again.logs("run-report")[-1]["rejected"] == 1 and delivery_counts(again)["missing"] == 1
    assert again.code == ExitCode.UNDELIVERED, again.err
    assert "rejected" in again.err and "missing 1" in again.err

"""The Log Analytics stand-in answers the query API as azure-monitor-docs `logs/api` documents it,
with `ThreatIntelIndicators` rows derived from what the Sentinel stand-in accepted, and refuses
every query it does not understand instead of answering it wrongly."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
import requests

from standins import StandIns
from standins.loganalytics import AUDIENCE, timespan
from tests.support import graph_session

STAMP = "2024-05-01T10:00:00.000Z"


def indicator(pattern: str, **overrides: Any) -> dict[str, Any]:
    return {"type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}", "created": STAMP,
            "modified": STAMP, "pattern": pattern, "pattern_type": "stix", "valid_from": STAMP,
            "valid_until": "2030-01-01T00:00:00Z", "confidence": 80, **overrides}


@pytest.fixture
def session(standins: StandIns) -> requests.Session:
    return graph_session(standins, resource=AUDIENCE)


def upload(standins: StandIns, objects: list[dict[str, Any]], source: str = "MISP") -> None:
    sentinel = graph_session(standins, resource=standins.sentinel.url)
    url = (f"{standins.sentinel.url}/workspaces/{standins.sentinel.workspace_id}"
           "/threat-intelligence-stix-objects:upload?api-version=2024-02-01-preview")
    assert sentinel.post(url, json={"sourcesystem": source, "stixobjects": objects}).status_code == 200


def query(standins: StandIns, session: requests.Session, kql: str, workspace: str | None = None,
          **body: Any) -> requests.Response:
    url = f"{standins.loganalytics.url}/v1/workspaces/{workspace or standins.sentinel.workspace_id}/query"
    return session.post(url, json={"query": kql, **body})


def table(answer: requests.Response) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    (primary,) = answer.json()["tables"]
    assert primary["name"] == "PrimaryResult"
    names = [column["name"] for column in primary["columns"]]
    return [dict(zip(names, row, strict=True)) for row in primary["rows"]]


def test_rows_carry_the_observable_of_a_single_comparison_and_none_of_a_compound(standins, session):
    single = indicator("[file:hashes.'SHA-256' = '" + "a" * 64 + "']")
    compound = indicator("[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '5.6.7.8']")
    upload(standins, [single, compound])
    rows = {row["Id"].split("---")[1]: row for row in table(query(standins, session, "ThreatIntelIndicators"))}

    assert (rows[single["id"]]["ObservableKey"], rows[single["id"]]["ObservableValue"]) == ("file:hashes.'SHA-256'", "a" * 64)
    assert (rows[compound["id"]]["ObservableKey"], rows[compound["id"]]["ObservableValue"]) == ("", "")
    assert rows[single["id"]]["Id"].split("---")[0] == "TUlTUA=="  # base64("MISP")
    assert rows[single["id"]]["Source"] == "MISP" and rows[single["id"]]["SourceSystem"] != "MISP"
    assert json.loads(rows[compound["id"]]["Data"])["pattern"] == compound["pattern"]


def test_every_version_is_a_row_and_arg_max_keeps_the_latest(standins, session):
    item = indicator("[domain-name:value = 'evil.example']", description="d" * 1500)
    upload(standins, [item])
    upload(standins, [{**item, "modified": "2024-05-02T10:00:00.000Z", "revoked": True}])
    assert standins.sentinel.delete(item["id"])

    assert len(table(query(standins, session, "ThreatIntelIndicators"))) == 3
    (latest,) = table(query(standins, session, "ThreatIntelIndicators | summarize arg_max(TimeGenerated, *) by Id"))
    assert (latest["IsDeleted"], latest["Revoked"], latest["IsActive"]) == (True, True, False)
    assert len(json.loads(latest["Data"])["description"]) == 1000


def test_where_count_and_project(standins, session):
    upload(standins, [indicator("[ipv4-addr:value = '198.51.100.1']"), indicator("[url:value = 'https://a.example/']")])
    upload(standins, [indicator("[ipv4-addr:value = '198.51.100.2']")], source="Other feed")

    by_source = table(query(standins, session, "ThreatIntelIndicators | summarize count() by Source"))
    assert sorted((row["Source"], row["count_"]) for row in by_source) == [("MISP", 2), ("Other feed", 1)]
    kept = table(query(standins, session, 'ThreatIntelIndicators | where Source == "MISP" and ObservableKey != "url:value" '
                                          "and isnotempty(ObservableKey) | project ObservableValue"))
    assert kept == [{"ObservableValue": "198.51.100.1"}]
    listed = table(query(standins, session, "ThreatIntelIndicators | where ObservableValue in ('198.51.100.2', 'x') "
                                            "and isempty(Revoked) | summarize count()"))
    assert listed == [{"count_": 0}]


@pytest.mark.parametrize("kql", [
    "ThreatIntelIndicators | where Confidence > 50",
    "ThreatIntelIndicators | where Source matches regex 'M.SP'",
    "ThreatIntelIndicators | extend A = 1",
    "ThreatIntelIndicators | summarize arg_max(TimeGenerated, *) by Source",
    "ThreatIntelIndicators | where NoSuchColumn == 1",
    "ThreatIntelligenceIndicator",
    "ThreatIntelIndicators | top 1 by Confidence",
    "ThreatIntelIndicators | where Source == 'MISP' // comment",
])
def test_anything_else_is_a_bad_argument_never_a_wrong_answer(standins, session, kql):
    upload(standins, [indicator("[ipv4-addr:value = '198.51.100.1']")])
    answer = query(standins, session, kql)

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "BadArgumentError" and error["innererror"]["code"] in ("SyntaxError", "SemanticError")
    assert error["message"] and error["correlationId"]


def test_lag_ingestion_rules_and_timespan(standins, session):
    kept, dropped = indicator("[ipv4-addr:value = '198.51.100.1']"), indicator("[ipv4-addr:value = '198.51.100.2']")
    upload(standins, [kept, dropped])
    standins.loganalytics.lag_seconds = 3600
    assert table(query(standins, session, "ThreatIntelIndicators")) == []
    standins.loganalytics.lag_seconds = 0
    standins.loganalytics.ingestion_rules += [lambda row: None if row["ObservableValue"].endswith(".2") else row,
                                              lambda row: {**row, "Confidence": 10}]
    (row,) = table(query(standins, session, "ThreatIntelIndicators", timespan="PT1H"))
    assert (row["ObservableValue"], row["Confidence"]) == ("198.51.100.1", 10)
    assert table(query(standins, session, "ThreatIntelIndicators", timespan="2020-01-01T00:00:00Z/P1D")) == []
    assert query(standins, session, "ThreatIntelIndicators", timespan="yesterday").status_code == 400


def test_timespan_reads_durations_and_intervals():
    now = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
    assert timespan("P1D", now) == (now - dt.timedelta(days=1), now)
    assert timespan("PT1H30M", now) == (now - dt.timedelta(hours=1, minutes=30), now)
    assert timespan("2026-01-01T00:00:00Z/P2D", now) == (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 3, tzinfo=dt.UTC))
    assert timespan("P", now) is None and timespan("1D", now) is None


def test_access_is_refused_as_documented(standins, session):
    upload(standins, [indicator("[ipv4-addr:value = '198.51.100.1']")])
    wrong_audience = graph_session(standins, resource=standins.sentinel.url)
    assert query(standins, wrong_audience, "ThreatIntelIndicators").json()["error"]["code"] == "InvalidAuthenticationTokenAudience"
    assert query(standins, requests.Session(), "ThreatIntelIndicators").status_code == 401
    unknown = query(standins, session, "ThreatIntelIndicators", workspace=str(uuid.uuid4()))
    assert unknown.status_code == 404
    standins.loganalytics.readers.clear()
    refused = query(standins, session, "ThreatIntelIndicators")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "InsufficientAccessError")


def test_an_empty_workspace_is_204(standins, session):
    assert query(standins, session, "ThreatIntelIndicators").status_code == 204

"""The stand-ins issue 15 adds, spoken to with the real client libraries over HTTPS: MISP's
/sightings/add as PyMISP calls it (saved, refused with a 200, forbidden without perm_sighting,
read back with includeSightings, and counted by the decay score), Graph's alerts_v2 (its
documented filter properties only, paging, the permission) and Log Analytics' SecurityAlert."""
from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
import requests

from standins import StandIns
from standins.alerts import ip_evidence, url_evidence
from standins.loganalytics import AUDIENCE
from tests.support import graph_session, misp, search
from tests.test_decay import attribute, decay_event


@pytest.fixture
def one_attribute(standins: StandIns) -> dict[str, Any]:
    item = attribute("evil.example.org", "domain", age_days=40)
    standins.misp.events = [decay_event(item)]
    return item


def test_pymisp_add_sighting_is_stored_read_back_and_counted_by_the_score(standins, one_attribute):
    client = misp(standins)
    moment = int(time.time()) - 3600
    answer: Any = client.add_sighting({"type": "0", "source": "misp2sentinel:test", "timestamp": moment}, one_attribute["uuid"])
    assert answer["Sighting"]["id"] and answer["Sighting"]["date_sighting"] == str(moment)
    assert standins.misp.sightings[one_attribute["uuid"]] == [moment]
    attributes: Any = client.search(controller="attributes", uuid=one_attribute["uuid"], include_sightings=True)
    (found,) = attributes["Attribute"]
    assert [(s["source"], s["type"], s["date_sighting"]) for s in found["Sighting"]] == [("misp2sentinel:test", "0", str(moment))]
    (event,) = search(client, include_decay_score=True)
    (score,) = event["Event"]["Attribute"][0]["decay_score"]
    assert score["score"] > 70 and not score["decayed"]  # 40 days old, but sighted an hour ago


@pytest.mark.parametrize(("body", "reason"), [
    ({"type": "5", "source": "x"}, "Invalid type"),
    ({"type": "0", "source": "x" * 256}, "longer than 255"),
    ({"type": "0", "source": "x", "timestamp": "yesterday"}, "Invalid date"),
])
def test_misp_refuses_with_a_200_and_a_message(standins, one_attribute, body, reason):
    answer: Any = misp(standins).add_sighting(body, one_attribute["uuid"])
    assert "Sighting" not in answer and answer["message"].startswith("Could not add the Sighting. Reason: ")
    assert reason in answer["message"] and standins.misp.sighting_records == []


def test_an_unknown_attribute_a_scripted_refusal_and_a_missing_permission(standins, one_attribute):
    client = misp(standins)
    unknown: Any = client.add_sighting({"type": "0"}, "00000000-0000-4000-8000-000000000000")
    assert "No valid attributes found" in unknown["message"]
    standins.misp.refuse_sightings = "the event is locked"
    locked: Any = client.add_sighting({"type": "0"}, one_attribute["uuid"])
    assert "the event is locked" in locked["message"]
    standins.misp.refuse_sightings = None
    standins.misp.perm_sighting = False
    version: Any = misp(standins).misp_instance_version
    assert version["perm_sighting"] is False
    forbidden: Any = client.add_sighting({"type": "0"}, one_attribute["uuid"])
    assert forbidden["errors"][0] == 403 and standins.misp.sighting_records == []


def test_a_value_sighting_hits_every_attribute_with_the_value(standins):
    first, second = attribute("shared.example", "domain", age_days=1), attribute("shared.example", "domain", age_days=2)
    standins.misp.events = [decay_event(first), decay_event(second)]
    misp(standins).add_sighting({"type": "0", "value": "SHARED.example"})
    assert {r["attribute_uuid"] for r in standins.misp.sighting_records} == {first["uuid"], second["uuid"]}


def _alerts(standins: StandIns, session: requests.Session, **query: str) -> requests.Response:
    return session.get(f"{standins.graph.url}/v1.0/security/alerts_v2", params=query)


def test_alerts_v2_filters_on_documented_properties_and_pages(standins):
    session = graph_session(standins)
    now = dt.datetime.now(dt.UTC)
    for hours in (5, 3, 1):
        standins.graph.add_alert([ip_evidence("203.0.113.9")], created=now - dt.timedelta(hours=hours))
    standins.graph.add_alert([url_evidence("https://x.example/")], service_source="microsoftDefenderForOffice365")
    since = (now - dt.timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    wanted = f"serviceSource eq 'microsoftDefenderForEndpoint' and createdDateTime ge {since}"
    first = _alerts(standins, session, **{"$filter": wanted, "$top": "1"})
    assert first.status_code == 200, first.text
    assert len(first.json()["value"]) == 1 and "@odata.nextLink" in first.json()
    second = session.get(first.json()["@odata.nextLink"]).json()
    assert len(second["value"]) == 1 and "@odata.nextLink" not in second
    assert {a["id"] for a in first.json()["value"] + second["value"]} == {a["id"] for a in standins.graph.alerts[1:3]}
    refused = _alerts(standins, session, **{"$filter": "detectionSource eq 'customTi'"})
    assert refused.status_code == 400 and "detectionSource" in refused.json()["error"]["message"]
    assert _alerts(standins, session, **{"$top": "2001"}).status_code == 400
    standins.graph.alert_readers.clear()
    denied = _alerts(standins, session)
    assert denied.status_code == 403 and "SecurityAlert.Read.All" in denied.json()["error"]["message"]


def test_security_alert_answers_the_default_match_query_and_an_operators_variant(standins):
    session = graph_session(standins, resource=AUDIENCE)
    now = dt.datetime.now(dt.UTC)
    standins.loganalytics.add_alert("TI map IP entity to SigninLogs", [{"Type": "ip", "Address": "203.0.113.9"}],
                                    {"IndicatorId": "indicator--1"}, at=now - dt.timedelta(hours=2))
    standins.loganalytics.add_alert("My MISP rule", [], at=now - dt.timedelta(hours=1))
    standins.loganalytics.add_alert("ti MAP old", [], at=now - dt.timedelta(days=3))
    url = f"{standins.loganalytics.url}/v1/workspaces/{standins.sentinel.workspace_id}/query"

    def names(kql: str, timespan: str = "P1D") -> list[str]:
        answer = session.post(url, json={"query": kql, "timespan": timespan})
        assert answer.status_code == 200, answer.text
        (table,) = answer.json()["tables"]
        columns = [c["name"] for c in table["columns"]]
        return [dict(zip(columns, row, strict=True))["AlertName"] for row in table["rows"]]

    default = ('SecurityAlert | where AlertName startswith "TI map" '
               "| project TimeGenerated, StartTime, SystemAlertId, AlertName, Entities, ExtendedProperties")
    assert names(default) == ["TI map IP entity to SigninLogs"]
    assert names(default, "P7D") == ["TI map IP entity to SigninLogs", "ti MAP old"]
    assert names(default + " | take 1", "P7D") == ["TI map IP entity to SigninLogs"]
    widened = default.replace('"TI map"', '"TI map" or AlertName in ("My MISP rule")')
    assert names(widened) == ["TI map IP entity to SigninLogs", "My MISP rule"]
    assert names('SecurityAlert | where (AlertName has "misp" or AlertName contains "xyz") and Status == "New"') == ["My MISP rule"]
    interval = f"{(now - dt.timedelta(minutes=90)).isoformat()}/{now.isoformat()}"
    assert names("SecurityAlert", interval) == ["My MISP rule"]
    row = json.loads(session.post(url, json={"query": default}).json()["tables"][0]["rows"][0][5])
    assert row["IndicatorId"] == "indicator--1"
    unknown = session.post(url, json={"query": "SecurityAlert | where NoSuchColumn startswith 'x'"})
    assert unknown.status_code == 400

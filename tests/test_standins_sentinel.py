"""The Sentinel stand-in speaks the STIX objects upload API and the management read-back the
way microsoft-apis.md §3 documents them, to real MSAL tokens and `requests`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import stix2

from standins import StandIns
from standins.sentinel import UPLOAD_API_VERSION
from tests.support import graph_session, query_url

STAMP = "2024-05-01T10:00:00.000Z"
LATER = "2024-05-02T10:00:00.000Z"


@pytest.fixture(autouse=True)
def _accepted_objects_are_strict_stix(standins: StandIns) -> Iterator[None]:
    """Whatever the stand-in accepted in a test must also be valid for the stix2 library."""
    yield
    for obj in standins.sentinel.objects.values():
        stix2.parse(obj, allow_custom=False)


@pytest.fixture
def session(standins: StandIns) -> requests.Session:
    """A session carrying a real MSAL token for scope `<sentinel url>/.default`."""
    return graph_session(standins, resource=standins.sentinel.url)


def indicator(value: str = "198.51.100.7", **overrides: Any) -> dict[str, Any]:
    """A valid STIX 2.1 IPv4 indicator with a fresh id; an override of `...` removes a property."""
    item = {"type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}",
            "created": STAMP, "modified": STAMP, "name": f"IP {value}",
            "description": "Cerber Ransomware C2", "pattern": f"[ipv4-addr:value = '{value}']",
            "pattern_type": "stix", "valid_from": STAMP, "valid_until": "2030-01-01T00:00:00Z",
            "confidence": 80, "labels": ["misp:event-id=42"], "indicator_types": ["malicious-activity"],
            "kill_chain_phases": [{"kill_chain_name": "misp-category",
                                   "phase_name": "network-activity"}],
            "external_references": [{"source_name": "MISP", "external_id": "5a3c2fda"}],
            "object_marking_refs": ["marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"]}
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not ...}


def upload_url(s: StandIns, workspace: str | None = None) -> str:
    return (f"{s.sentinel.url}/workspaces/{workspace or s.sentinel.workspace_id}"
            f"/threat-intelligence-stix-objects:upload?api-version={UPLOAD_API_VERSION}")


def upload(s: StandIns, session: requests.Session, objects: list[Any], source: str = "MISP",
           workspace: str | None = None) -> requests.Response:
    return session.post(upload_url(s, workspace), json={"sourcesystem": source, "stixobjects": objects})


# --- upload ------------------------------------------------------------------------------


def test_valid_indicator_is_200_with_empty_body_and_stored(standins: StandIns,
                                                           session: requests.Session) -> None:
    item = indicator()
    answer = upload(standins, session, [item])

    assert (answer.status_code, answer.content) == (200, b"")
    assert standins.sentinel.objects == {item["id"]: item}
    assert standins.sentinel.sources == {item["id"]: "MISP"}


def test_invalid_records_are_listed_and_the_rest_stored(standins: StandIns,
                                                        session: requests.Session) -> None:
    bad_pattern = indicator(pattern="[ipv4-addr:value = '1.2.3.4'")
    bad_id = indicator(id="indicator--NOT-A-UUID")
    valid = indicator()
    answer = upload(standins, session, [bad_pattern, bad_id, valid])

    assert answer.status_code == 200
    errors = answer.json()["errors"]
    assert [e["recordIndex"] for e in errors] == [0, 1]
    assert "Invalid STIX pattern" in errors[0]["errorMessages"][0]
    assert errors[1]["errorMessages"] == [
        "Error for Property=id: Must be '<type>--<UUID>' with the object's type. "
        "Actual value: indicator--NOT-A-UUID."]
    assert list(standins.sentinel.objects) == [valid["id"]]


def test_a_compound_pattern_is_accepted_as_the_real_service_accepts_it(standins: StandIns,
                                                                       session: requests.Session) -> None:
    """Sentinel answers 200 and stores it; only its table shows the empty ObservableKey
    (Azure/Azure-Sentinel#12075): the Log Analytics stand-in derives that row."""
    compound = indicator(pattern="[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '5.6.7.8']")
    answer = upload(standins, session, [compound])

    assert (answer.status_code, answer.content) == (200, b"")
    assert [version.obj for version in standins.sentinel.history[compound["id"]]] == [compound]


def test_history_keeps_every_version_and_an_arm_delete(standins: StandIns, session: requests.Session) -> None:
    item = indicator()
    upload(standins, session, [item])
    upload(standins, session, [{**item, "modified": LATER, "revoked": True}])
    (listed,) = session.post(query_url(standins), json={}).json()["value"]
    deleted = session.delete(f"{standins.sentinel.url}{standins.sentinel.management_path}/indicators/{listed['name']}"
                             "?api-version=2025-09-01")

    assert deleted.status_code == 200 and standins.sentinel.objects == {}
    versions = standins.sentinel.history[item["id"]]
    assert [(v.obj.get("revoked", False), v.deleted) for v in versions] == [(False, False), (True, False), (True, True)]
    assert versions[0].at <= versions[1].at <= versions[2].at
    assert session.post(query_url(standins), json={}).json()["value"] == []


def test_quoted_and_inside_a_value_is_one_comparison(standins: StandIns,
                                                     session: requests.Session) -> None:
    item = indicator(pattern="[file:name = 'a AND b=\\'1\\'']")
    answer = upload(standins, session, [item])

    assert (answer.status_code, answer.content) == (200, b"")
    assert item["id"] in standins.sentinel.objects


def test_all_invalid_is_400_with_errors(standins: StandIns, session: requests.Session) -> None:
    answer = upload(standins, session, [indicator(pattern_type="sigma"), {"type": "malware"}])

    assert answer.status_code == 400
    errors = answer.json()["errors"]
    assert [e["recordIndex"] for e in errors] == [0, 1]
    assert "Error for Property=id: Required property is missing. Actual value: NULL." in \
        errors[1]["errorMessages"]
    assert standins.sentinel.objects == {}


@pytest.mark.parametrize(("source", "count", "fragment"), [
    ("MISP", 101, "at most 100"),
    ("microsoft sentinel", 1, "reserved"),
    ("", 1, "sourcesystem"),
])
def test_request_level_refusals_are_400(standins: StandIns, session: requests.Session,
                                        source: str, count: int, fragment: str) -> None:
    answer = upload(standins, session, [indicator() for _ in range(count)], source=source)

    assert answer.status_code == 400
    assert answer.json()["statusCode"] == 400 and fragment in answer.json()["message"]
    assert standins.sentinel.objects == {}


def test_revoked_object_takes_no_later_version(standins: StandIns, session: requests.Session) -> None:
    item = indicator()
    assert upload(standins, session, [item]).status_code == 200
    assert upload(standins, session, [{**item, "modified": LATER, "revoked": True}]).content == b""

    answer = upload(standins, session, [{**item, "modified": "2024-05-03T10:00:00.000Z"}, indicator()])

    assert answer.status_code == 200
    [error] = answer.json()["errors"]
    assert error["recordIndex"] == 0 and "object is revoked" in error["errorMessages"][0]
    assert standins.sentinel.objects[item["id"]]["revoked"] is True


def test_versions_replace_unless_older(standins: StandIns, session: requests.Session) -> None:
    item = indicator()
    newer = {**item, "modified": LATER, "confidence": 90}
    assert upload(standins, session, [item]).status_code == 200
    assert upload(standins, session, [newer]).content == b""
    assert upload(standins, session, [newer]).content == b""  # same version again: accepted

    answer = upload(standins, session, [{**item, "confidence": 10}])

    assert answer.status_code == 400
    assert answer.json()["errors"][0]["errorMessages"][0].startswith("Error for Property=modified:")
    assert standins.sentinel.objects[item["id"]] == newer


def test_rejected_value_is_refused_per_record(standins: StandIns, session: requests.Session) -> None:
    standins.sentinel.reject_value("10.0.0.1", "Private addresses are not accepted.")
    answer = upload(standins, session, [indicator(), indicator("10.0.0.1")])

    assert answer.json() == {"errors": [{"recordIndex": 1, "errorMessages": [
        "Error for Property=pattern: Private addresses are not accepted. "
        "Actual value: [ipv4-addr:value = '10.0.0.1']."]}]}


def test_rate_limit_counts_a_sliding_window(standins: StandIns, session: requests.Session) -> None:
    sentinel = standins.sentinel
    sentinel.per_minute, now = 3, [1000.0]
    sentinel.clock = lambda: now[0]
    for step in range(3):
        now[0] = 1000.0 + step
        assert upload(standins, session, [indicator()]).status_code == 200

    now[0] = 1010.4
    refused = upload(standins, session, [indicator()])
    sentinel.retry_after_header = True
    now[0] = 1059.5
    refused_with_header = upload(standins, session, [indicator()])
    now[0] = 1060.0  # the first request left the window
    admitted = upload(standins, session, [indicator()])

    assert (refused.status_code, refused.json()) == (429, {
        "statusCode": 429, "message": "Rate limit is exceeded. Try again in 50 seconds."})
    assert "Retry-After" not in refused.headers
    assert refused_with_header.status_code == 429
    assert refused_with_header.json()["message"] == "Rate limit is exceeded. Try again in 1 seconds."
    assert refused_with_header.headers["Retry-After"] == "1"
    assert admitted.status_code == 200
    assert (sentinel.throttled, len(sentinel.objects)) == (2, 4)


def test_rate_limit_frees_up_after_a_short_window(standins: StandIns,
                                                  session: requests.Session) -> None:
    standins.sentinel.per_minute, standins.sentinel.window_seconds = 3, 0.3
    answers = [upload(standins, session, [indicator()]).status_code for _ in range(4)]
    time.sleep(0.35)

    assert answers == [200, 200, 200, 429]
    assert upload(standins, session, [indicator()]).status_code == 200


def test_injected_500_has_the_documented_shape(standins: StandIns, session: requests.Session) -> None:
    standins.sentinel.fail_next(500, path_suffix=":upload")
    answer = upload(standins, session, [indicator()])

    assert answer.status_code == 500
    assert answer.json()["statusCode"] == 500 and answer.json()["message"] == "Internal server error"
    assert uuid.UUID(answer.json()["activityId"])
    assert upload(standins, session, [indicator()]).status_code == 200


# --- management read-back ----------------------------------------------------------------


def test_query_indicators_pages_with_post_then_get_next_link(standins: StandIns,
                                                             session: requests.Session) -> None:
    mine = [indicator(f"192.0.2.{n}") for n in range(5)]
    assert upload(standins, session, mine[:3]).status_code == 200
    assert upload(standins, session, [indicator("203.0.113.9")], source="OpenCTI").status_code == 200
    assert upload(standins, session, mine[3:]).status_code == 200

    first = session.post(query_url(standins), json={"pageSize": 2, "sources": ["MISP"]})
    pages = [first.json()]
    while "nextLink" in pages[-1]:
        link = pages[-1]["nextLink"]
        assert link.startswith(query_url(standins) + "&$skipToken=")
        pages.append(session.get(link).json())

    assert first.status_code == 200
    assert [[i["properties"]["externalId"] for i in p["value"]] for p in pages] == [
        [m["id"] for m in mine[:2]], [m["id"] for m in mine[2:4]], [mine[4]["id"]]]
    item = pages[0]["value"][0]
    assert item["id"] == f"{standins.sentinel.management_path}/indicators/{item['name']}"
    assert uuid.UUID(item["name"]) and item["etag"] == '"1"'
    assert item["kind"] == "indicator"
    assert item["type"] == "Microsoft.SecurityInsights/ThreatIntelligence"  # spec examples' casing
    properties = item["properties"]
    assert properties.pop("lastUpdatedTimeUtc").endswith("Z")
    assert properties == {
        "externalId": mine[0]["id"], "source": "MISP", "displayName": "IP 192.0.2.0",
        "description": "Cerber Ransomware C2", "pattern": "[ipv4-addr:value = '192.0.2.0']",
        "patternType": "stix", "validFrom": STAMP, "validUntil": "2030-01-01T00:00:00Z",
        "revoked": False, "confidence": 80, "threatTypes": ["malicious-activity"],
        "labels": ["misp:event-id=42"],
        "killChainPhases": [{"killChainName": "misp-category", "phaseName": "network-activity"}],
        "created": STAMP, "modified": STAMP,
        "externalReferences": [{"sourceName": "MISP", "externalId": "5a3c2fda"}],
        "objectMarkingRefs": ["marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"]}

    everything = session.post(query_url(standins), json={}).json()
    assert len(everything["value"]) == 6 and "nextLink" not in everything


def test_repeat_next_link_fault_repeats_the_same_url(standins: StandIns,
                                                     session: requests.Session) -> None:
    assert upload(standins, session, [indicator(f"192.0.2.{n}") for n in range(3)]).status_code == 200
    standins.sentinel.repeat_next_link = True

    first = session.post(query_url(standins), json={"pageSize": 2}).json()
    second = session.get(first["nextLink"]).json()
    third = session.get(second["nextLink"]).json()

    assert first["nextLink"] == second["nextLink"] == third["nextLink"]
    assert second["value"] == third["value"] and len(second["value"]) == 1


# --- authentication and addressing ---------------------------------------------------------


def test_token_for_another_audience_is_401(standins: StandIns) -> None:
    answer = upload(standins, graph_session(standins), [indicator()])

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "audience" in answer.json()["error"]["message"]
    assert requests.post(query_url(standins), json={}).status_code == 401


def test_unknown_workspace_or_api_version(standins: StandIns, session: requests.Session) -> None:
    unknown = upload(standins, session, [indicator()], workspace=str(uuid.uuid4()))
    no_version = session.post(upload_url(standins).split("?")[0],
                              json={"sourcesystem": "MISP", "stixobjects": [indicator()]})
    wrong_workspace_name = session.post(query_url(standins).replace("law-soc", "law-other"), json={})

    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "WorkspaceNotFound")
    assert no_version.status_code == 400
    assert (wrong_workspace_name.status_code, wrong_workspace_name.json()["error"]["code"]) == (
        404, "ResourceNotFound")
    assert standins.sentinel.objects == {}

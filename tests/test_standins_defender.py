"""The Defender for Endpoint stand-in speaks the documented indicators API over real HTTPS."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from standins import DefenderStandIn, StandIns
from standins.defender import FOREIGN_CREATOR

OTHER_APP = "cccccccc-0000-0000-0000-000000000000"
SHA256 = "a" * 64


def indicator(value: str = SHA256, kind: str = "FileSha256", **overrides: Any) -> dict[str, Any]:
    """A valid import item; an override of `...` removes that property."""
    item = {"indicatorValue": value, "indicatorType": kind, "action": "Block", "title": "Cerber",
            "description": "MISP event 12", "severity": "High", "expirationTime": "2030-01-01T00:00:00Z",
            "externalID": "5a3c2fda-78f4-44b7-8366-46da02de0b81", "application": "misp2sentinel"}
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not ...}


def session(defender: DefenderStandIn, client_id: str, resource: str | None = None) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {defender.entra.issue(client_id, resource or defender.url)}"
    return s


def import_items(defender: DefenderStandIn, s: requests.Session, items: list[Any]) -> requests.Response:
    return s.post(f"{defender.url}/api/indicators/import", json={"Indicators": items})


def listed(defender: DefenderStandIn, s: requests.Session, **params: str) -> list[dict[str, Any]]:
    """Every page of a listing, following @odata.nextLink."""
    url: str | None = f"{defender.url}/api/indicators"
    items: list[dict[str, Any]] = []
    while url:
        answer = s.get(url, params=params if not items else None)
        assert answer.status_code == 200, answer.text
        items += answer.json()["value"]
        url = answer.json().get("@odata.nextLink")
    return items


@pytest.fixture
def own(standins: StandIns) -> requests.Session:
    """A session of the demo app, which holds Ti.ReadWrite."""
    return session(standins.defender, standins.client_id)


def make_defender(standins: StandIns, **options: Any) -> DefenderStandIn:
    """A separately configured Defender stand-in (small cap, short window), closed by the caller."""
    defender = DefenderStandIn(standins.entra, **options)
    standins.entra.resources.add(defender.url)
    defender.grant(standins.client_id, "Ti.ReadWrite")
    defender.start()
    return defender


def test_import_creates_indicators_with_documented_fields(standins: StandIns, own: requests.Session) -> None:
    defender = standins.defender
    answer = import_items(defender, own, [indicator(), indicator("93.184.216.34", "IpAddress", application=...)])

    assert answer.status_code == 200
    assert answer.json() == {"value": [
        {"id": "5001", "indicator": SHA256, "isFailed": False, "failureReason": None},
        {"id": "5002", "indicator": "93.184.216.34", "isFailed": False, "failureReason": None}]}
    first, second = defender.held()
    assert {k: first[k] for k in ("id", "createdBy", "createdBySource", "sourceType", "lastUpdatedBy")} == {
        "id": "5001", "createdBy": standins.client_id, "createdBySource": f"app {standins.client_id}",
        "sourceType": "AadApp", "lastUpdatedBy": None}
    assert first["title"] == "Cerber" and first["application"] == "misp2sentinel" and first["generateAlert"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["creationTimeDateTimeUtc"])
    assert second["application"] is None and second["rbacGroupNames"] == []
    assert defender.calls["import"] == 1


BAD_ITEMS: list[tuple[dict[str, Any], str]] = [
    (indicator("198.51.100.0/24", "IpAddress"), "CIDR notation for IPs isn't supported"),
    (indicator("10.1.2.3", "IpAddress"), "not a public IP address"),
    (indicator("300.1.1.1", "IpAddress"), "not a valid IP address"),
    (indicator("ab" * 31, "FileSha256"), "64 hexadecimal"),
    (indicator("g" * 40, "FileSha1"), "40 hexadecimal"),
    (indicator("ab" * 24, "CertificateThumbprint"), "40 or 64 hexadecimal"),
    (indicator(action="Audit"), "Audit requires generateAlert"),
    (indicator(action="Audit", generateAlert=False), "Audit requires generateAlert"),
    (indicator(confidence=80), "unknown property confidence"),
    (indicator(title="t" * 101), "'title' must be at most 100"),
    (indicator(description=...), "'description' must be a string"),
    (indicator(description="d" * 4097), "'description' must be at most 4096"),
    (indicator(externalID="e" * 256), "'externalID' must be at most 255"),
    (indicator(severity="Critical"), "severity must be one of"),
    (indicator(action="block"), "action must be one of"),
    (indicator(kind="Sha256"), "indicatorType must be one of"),
    (indicator(expirationTime="2030-01-01T00:00:00"), "expirationTime"),
    (indicator(expirationTime="soon Z"), "expirationTime"),
    (indicator(generateAlert="true"), "'generateAlert' must be a boolean"),
    (indicator(rbacGroupNames="all"), "'rbacGroupNames' must be a list"),
    (indicator("bad_host.example", "DomainName"), "not a valid domain name"),
    (indicator("x" * 64 + ".example", "DomainName"), "not a valid domain name"),
    (indicator("http://evil.example/a b", "Url"), "without white space"),
    (indicator("http://evil.example/" + "a" * 2030, "Url"), "2048"),
]


def test_import_refuses_items_per_documented_rule(standins: StandIns, own: requests.Session) -> None:
    answer = import_items(standins.defender, own, [item for item, _ in BAD_ITEMS])

    assert answer.status_code == 200
    results = answer.json()["value"]
    for (item, reason), result in zip(BAD_ITEMS, results, strict=True):
        assert result["isFailed"] is True and result["id"] is None, item
        assert reason in result["failureReason"], (item, result)
        assert result["indicator"] == item["indicatorValue"]
    assert standins.defender.held() == []
    accepted = import_items(standins.defender, own, [
        indicator(action="Audit", generateAlert=True), indicator("Bücher.example", "DomainName"),
        indicator("2606:4700:4700::1111", "IpAddress"), indicator("AB" * 20, "CertificateThumbprint"),
        indicator("http://evil.example/a", "Url", severity=None, rbacGroupNames=["SOC"])]).json()["value"]
    assert [r["isFailed"] for r in accepted] == [False] * 5


@pytest.mark.parametrize("body", [None, [indicator()], {"indicators": [indicator()]}, {"Indicators": []},
                                  {"Indicators": indicator()}, {"Indicators": [indicator()] * 501}])
def test_import_refuses_bodies_of_the_wrong_shape(standins: StandIns, own: requests.Session, body: Any) -> None:
    answer = own.post(f"{standins.defender.url}/api/indicators/import", json=body)

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "BadRequest" and "500" in error["message"] and error["target"]
    assert standins.defender.held() == []


def test_import_of_an_existing_identity_updates_it_in_place(standins: StandIns, own: requests.Session) -> None:
    defender = standins.defender
    first = import_items(defender, own, [indicator(), indicator("2606:4700:4700::1111", "IpAddress")]).json()["value"]
    again = import_items(defender, own, [
        indicator(SHA256.upper(), title="Cerber v2", application="someone else", severity=None),
        indicator("2606:4700:4700:0:0:0:0:1111", "IpAddress", action="Allowed"),
        indicator("http://Evil.example/", "Url"), indicator("http://evil.example/", "Url")]).json()["value"]

    assert [r["id"] for r in again] == [first[0]["id"], first[1]["id"], "5003", "5004"]
    hash_item, ip_item, *_ = defender.held()
    assert (hash_item["title"], hash_item["application"], hash_item["severity"]) == ("Cerber v2", "misp2sentinel", None)
    assert hash_item["lastUpdatedBy"] == standins.client_id and ip_item["action"] == "Allowed"
    assert len(defender.held()) == 4


def test_ti_readwrite_sees_only_its_own_and_all_sees_every_indicator(standins: StandIns,
                                                                     own: requests.Session) -> None:
    defender = standins.defender
    mine = import_items(defender, own, [indicator()]).json()["value"][0]["id"]
    defender.grant(OTHER_APP, "Ti.ReadWrite")
    other = session(defender, OTHER_APP)

    assert listed(defender, other) == []
    clash = import_items(defender, other, [indicator(title="theirs")]).json()["value"][0]
    assert clash["isFailed"] and clash["failureReason"] == "indicator exists and was created by another application"
    assert other.delete(f"{defender.url}/api/indicators/{mine}").status_code == 404
    assert other.post(f"{defender.url}/api/indicators/BatchDelete", json={"IndicatorIds": [mine]}).status_code == 404
    assert defender.held()[0]["title"] == "Cerber"

    defender.grant(OTHER_APP, "Ti.ReadWrite.All")
    assert [i["id"] for i in listed(defender, other)] == [mine]
    assert not import_items(defender, other, [indicator(title="theirs")]).json()["value"][0]["isFailed"]
    assert defender.held()[0]["createdBy"] == standins.client_id and defender.held()[0]["lastUpdatedBy"] == OTHER_APP
    assert other.delete(f"{defender.url}/api/indicators/{mine}").status_code == 204
    with pytest.raises(ValueError):
        defender.grant(OTHER_APP, "Ti.Read.All")


def test_tenant_cap_counts_every_source_and_only_active_indicators(standins: StandIns) -> None:
    defender = make_defender(standins, tenant_cap=5)
    try:
        foreign = defender.preload_foreign(3)
        s = session(defender, standins.client_id)
        expired = indicator("b" * 64, expirationTime="2020-01-01T00:00:00Z")
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1.5))
        results = import_items(defender, s, [expired, indicator("c" * 64, expirationTime=soon),
                                             indicator("d" * 64), indicator("e" * 64)]).json()["value"]

        assert [r["isFailed"] for r in results] == [False, False, False, True]
        assert results[3]["failureReason"] == "the tenant holds the maximum of 5 active indicators"
        assert [i["id"] for i in defender.held(FOREIGN_CREATOR)] == foreign
        assert [i["indicatorValue"] for i in defender.held(standins.client_id)] == ["c" * 64, "d" * 64]
        assert import_items(defender, s, [indicator("e" * 64)]).json()["value"][0]["isFailed"]
        time.sleep(2.1)
        assert [i["indicatorValue"] for i in listed(defender, s)] == ["d" * 64]
        result = import_items(defender, s, [indicator("e" * 64), indicator("c" * 64)]).json()["value"]
        assert [r["isFailed"] for r in result] == [False, True]
        assert int(result[0]["id"]) > int(results[2]["id"])  # ids are never reused
    finally:
        defender.close()


def test_listing_pages_with_top_skip_next_link_and_filters(standins: StandIns, own: requests.Session) -> None:
    defender = standins.defender
    defender.preload_foreign(2)
    items = [indicator(f"{n:064x}", externalID=f"o'brien-{n % 2}") for n in range(5)]
    ids = [r["id"] for r in import_items(defender, own, items).json()["value"]]

    assert [i["id"] for i in listed(defender, own, **{"$top": "2"})] == ids
    page = own.get(f"{defender.url}/api/indicators", params={"$top": "2", "$skip": "1"}).json()
    assert page["@odata.context"] == f"{defender.url}/api/$metadata#Indicators"
    assert [i["id"] for i in page["value"]] == ids[1:3]
    assert page["@odata.nextLink"] == f"{defender.url}/api/indicators?$top=2&$skip=3"
    odd = listed(defender, own, **{"$filter": f"createdBy eq '{standins.client_id}' and externalID eq 'o''brien-1'",
                                   "$top": "1"})
    assert [i["id"] for i in odd] == [ids[1], ids[3]]
    raw = own.get(f"{defender.url}/api/indicators?%24filter=indicatorValue+eq+%27{items[4]['indicatorValue']}%27")
    assert [i["id"] for i in raw.json()["value"]] == [ids[4]] and "@odata.nextLink" not in raw.json()


@pytest.mark.parametrize("params", [{"$top": "0"}, {"$top": "10001"}, {"$top": "two"}, {"$skip": "-1"},
                                    {"$orderby": "id"}, {"$filter": "indicatorValue ne 'x'"},
                                    {"$filter": "title eq 'x'"}, {"$filter": "action eq 'Block' or action eq 'Audit'"},
                                    {"$filter": "action eq Block"}, {"$filter": "action eq 'Block' and"}])
def test_listing_refuses_what_it_does_not_support(standins: StandIns, own: requests.Session,
                                                  params: dict[str, str]) -> None:
    answer = own.get(f"{standins.defender.url}/api/indicators", params=params)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "BadRequest"


def test_default_page_size_pages_too(standins: StandIns) -> None:
    defender = make_defender(standins, page_size=2)
    try:
        s = session(defender, standins.client_id)
        import_items(defender, s, [indicator(f"{n:064x}") for n in range(3)])
        first = s.get(f"{defender.url}/api/indicators").json()
        assert len(first["value"]) == 2 and "$skip=2" in first["@odata.nextLink"]
        assert len(listed(defender, s)) == 3
    finally:
        defender.close()


@pytest.mark.parametrize("body", [None, {}, {"IndicatorIds": []}, {"IndicatorIds": "5001"},
                                  {"IndicatorIds": [5001]}, {"IndicatorIds": ["abc"]},
                                  {"IndicatorIds": [str(n) for n in range(501)]}])
def test_batch_delete_refuses_bad_bodies(standins: StandIns, own: requests.Session, body: Any) -> None:
    import_items(standins.defender, own, [indicator()])
    answer = own.post(f"{standins.defender.url}/api/indicators/BatchDelete", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "BadRequest"
    assert len(standins.defender.held()) == 1


def test_batch_delete_is_all_or_nothing_and_single_delete_settles(standins: StandIns,
                                                                  own: requests.Session) -> None:
    defender = standins.defender
    foreign = defender.preload_foreign(1)[0]
    ids = [r["id"] for r in import_items(defender, own, [indicator(f"{n:064x}") for n in range(3)]).json()["value"]]
    url = f"{defender.url}/api/indicators/BatchDelete"

    missing = own.post(url, json={"IndicatorIds": [ids[0], "999999", foreign]})
    assert missing.status_code == 404
    assert "999999" in missing.json()["error"]["message"] and foreign in missing.json()["error"]["message"]
    assert len(defender.held()) == 4
    done = own.post(url, json={"IndicatorIds": ids[:2]})
    assert done.status_code == 204 and done.content == b""
    assert [i["id"] for i in defender.held()] == [foreign, ids[2]]
    assert own.delete(f"{defender.url}/api/indicators/{ids[2]}").status_code == 204
    gone = own.delete(f"{defender.url}/api/indicators/{ids[2]}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "NotFound"
    assert [i["id"] for i in defender.held()] == [foreign]
    assert (defender.calls["batchdelete"], defender.calls["delete"]) == (2, 2)
    assert own.delete(f"{defender.url}/api/indicators/{foreign}").status_code == 404


def test_rate_limits_answer_429_with_retry_after_per_operation(standins: StandIns) -> None:
    defender = make_defender(standins, window_seconds=2)
    try:
        s = session(defender, standins.client_id)
        assert all(import_items(defender, s, [indicator()]).status_code == 200 for _ in range(30))
        throttled = import_items(defender, s, [indicator()])
        assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "TooManyRequests"
        wait = int(throttled.headers["Retry-After"])
        assert 1 <= wait <= 2
        delete = s.post(f"{defender.url}/api/indicators/BatchDelete", json={"IndicatorIds": ["1"]})
        assert delete.status_code == 404  # its own counter
        assert all(s.get(f"{defender.url}/api/indicators").status_code == 200 for _ in range(100))
        assert s.get(f"{defender.url}/api/indicators").status_code == 429
        defender.grant(OTHER_APP, "Ti.ReadWrite")
        assert import_items(defender, session(defender, OTHER_APP), [indicator("f" * 64)]).status_code == 200
        assert (defender.throttled, defender.calls["import"], defender.calls["list"]) == (2, 31, 100)
        time.sleep(wait)
        assert import_items(defender, s, [indicator()]).status_code == 200
    finally:
        defender.close()


def test_authentication_and_permission(standins: StandIns) -> None:
    defender = standins.defender
    url = f"{defender.url}/api/indicators"
    for answer in (requests.get(url), session(defender, standins.client_id, standins.graph.url).get(url)):
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "Unauthorized" and answer.json()["error"]["target"]
    assert "issued for" in session(defender, standins.client_id, standins.graph.url).get(url).json()["error"]["message"]
    ungranted = session(defender, OTHER_APP)
    for answer in (ungranted.get(url), ungranted.post(f"{url}/import", json={"Indicators": [indicator()]}),
                   ungranted.post(f"{url}/BatchDelete", json={"IndicatorIds": ["5001"]}),
                   ungranted.delete(f"{url}/5001")):
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "Forbidden"
    assert defender.held() == [] and sum(defender.calls.values()) == 0
    own = session(defender, standins.client_id)
    assert own.get(f"{url}/5001").status_code == 404
    standins.entra.expire_all()
    assert own.get(url).status_code == 401


def test_injected_faults(standins: StandIns, own: requests.Session) -> None:
    defender = standins.defender
    defender.fail_next(503, "<html>Service Unavailable</html>", path_suffix="/import")
    defender.fail_next(429, headers={"Retry-After": "7"}, path_suffix="/import")
    assert own.get(f"{defender.url}/api/indicators").status_code == 200
    unavailable = import_items(defender, own, [indicator()])
    assert unavailable.status_code == 503 and unavailable.headers["Content-Type"].startswith("text/html")
    throttled = import_items(defender, own, [indicator()])
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    assert throttled.json()["error"]["code"] == "TooManyRequests" and defender.held() == []

    defender.garble_next(path_suffix="/import")
    defender.garble_next("<html>Bad gateway</html>", path_suffix="/import")
    with pytest.raises(ValueError):
        import_items(defender, own, [indicator()]).json()
    html = import_items(defender, own, [indicator("b" * 64)])
    assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
    assert len(defender.held()) == 2

    defender.delay_next(1.0)
    with pytest.raises(requests.Timeout):
        own.post(f"{defender.url}/api/indicators/import", json={"Indicators": [indicator("c" * 64)]}, timeout=0.3)
    assert len(defender.held()) == 3


def test_standins_register_the_defender(standins: StandIns, tmp_path: Path) -> None:
    assert standins.defender.url in standins.entra.resources
    config = standins.write_tool_config(tmp_path).read_text()
    assert f"defender_endpoint = {standins.defender.url!r}" in config
    token = requests.post(f"{standins.entra.authority}/oauth2/v2.0/token", data={
        "client_id": standins.client_id, "client_secret": standins.client_secret,
        "grant_type": "client_credentials", "scope": f"{standins.defender.url}/.default"}).json()["access_token"]
    answer = requests.get(f"{standins.defender.url}/api/indicators", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json()["value"] == []


def test_foreign_preloads_never_repeat_a_value(standins: StandIns) -> None:
    defender = standins.defender
    first = defender.preload_foreign(2)[0]
    defender.grant(OTHER_APP, "Ti.ReadWrite.All")
    assert session(defender, OTHER_APP).delete(f"{defender.url}/api/indicators/{first}").status_code == 204
    more = defender.preload_foreign(1) + defender.preload_foreign(1, creator=OTHER_APP)
    assert len({i["indicatorValue"] for i in defender.held()}) == 3
    assert [i["createdBy"] for i in defender.held()] == [FOREIGN_CREATOR, FOREIGN_CREATOR, OTHER_APP]
    assert [i["id"] for i in defender.held()][1:] == more

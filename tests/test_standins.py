"""The stand-ins speak the wire protocol the real clients (PyMISP, MSAL, requests) expect."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from typing import Any

import msal
import pymisp
import pytest
import requests

from standins import StandIns
from standins.graph import FAILED_ID
from tests.support import graph_session, misp, msal_app, search

PUBLISHED_INFOS = ["Ransomware - Xorist", "Cerber Ransomware",
                   "OSINT - ASERT Threat Intelligence Report 2016-03 The Four-Element Sword Engagement",
                   "MAR-10164494.r1.v1 (SamSam ransomware)"]


def indicator(**overrides: Any) -> dict[str, Any]:
    """A valid Sentinel URL indicator; an override of `...` removes that property."""
    item = {"action": "alert", "description": "Cerber Ransomware", "targetProduct": "Azure Sentinel",
            "threatType": "Malware", "tlpLevel": "white",
            "expirationDateTime": "2030-01-01T00:00:00Z", "url": "http://evil.example/x",
            "externalId": "5a3c2fda-78f4-44b7-8366-46da02de0b81"}
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not ...}


def submit(s: StandIns, session: requests.Session, items: list[Any]) -> requests.Response:
    return session.post(f"{s.graph.url}/beta/security/tiIndicators/submitTiIndicators",
                        json={"value": items})


# --- MISP ----------------------------------------------------------------------------------


def test_pymisp_constructs_and_pages_published_events(standins: StandIns) -> None:
    client = misp(standins)
    pages = [search(client, published=True, limit=2, page=page) for page in (1, 2, 3)]

    assert [[e["Event"]["info"] for e in page] for page in pages] == [
        PUBLISHED_INFOS[:2], PUBLISHED_INFOS[2:], []]
    seen = standins.misp.requests_seen
    assert [r.path for r in seen[:3]] == [
        "/servers/getVersion", "/users/view/me", "/attributes/describeTypes.json"]
    assert all(r.headers["authorization"] == standins.misp_key for r in seen)
    bodies: list[Any] = [r.json for r in seen if r.path == "/events/restSearch"]
    assert [(b["published"], b["limit"], b["page"], b["returnFormat"]) for b in bodies] == [
        (True, 2, 1, "json"), (True, 2, 2, "json"), (True, 2, 3, "json")]


def test_wrong_key_fails_pymisp_construction(standins: StandIns) -> None:
    with pytest.raises(pymisp.PyMISPError):
        pymisp.PyMISP(standins.misp.url, "not-the-key", ssl=True)
    assert standins.misp.requests_seen[0].path == "/servers/getVersion"


@pytest.mark.parametrize(("mode", "outcome"), [
    ("403", (403, "Authentication failed")), ("errors-200", "something went wrong"),
    ("500", pymisp.MISPServerError),
    ("502-html", pymisp.MISPServerError), ("html-200", pymisp.PyMISPUnexpectedResponse),
    ("reset", requests.exceptions.ConnectionError)])
def test_fault_modes_give_what_misp_md_says_pymisp_does(standins: StandIns, mode: str,
                                                  outcome: Any) -> None:
    client = misp(standins)
    standins.misp.fail_page(2, mode)
    assert len(search(client, published=True, limit=2, page=1)) == 2
    for _ in range(2):  # the fault persists until cleared
        if isinstance(outcome, type):
            with pytest.raises(outcome):
                search(client, published=True, limit=2, page=2)
        else:
            errors = search(client, published=True, limit=2, page=2)["errors"]
            if isinstance(errors, tuple):  # 4xx JSON: (status, body), returned, not raised
                errors = (errors[0], errors[1]["name"][:len(outcome[1])])
            assert errors == outcome
    standins.misp.clear_faults()
    assert len(search(client, published=True, limit=2, page=2)) == 2


def test_rest_search_filters(standins: StandIns) -> None:
    client = misp(standins)
    ids_only = search(client, to_ids=1)
    attributes = [a for e in ids_only for a in e["Event"]["Attribute"]]
    attributes += [a for e in ids_only for o in e["Event"]["Object"] for a in o["Attribute"]]
    assert attributes and all(a["to_ids"] for a in attributes)
    assert all(o["Attribute"] for e in ids_only for o in e["Event"]["Object"])
    long_event = next(e for e in ids_only if e["Event"]["info"].startswith("OSINT - ASERT"))
    assert len(long_event["Event"]["Attribute"]) == 258
    samsam = next(e for e in ids_only if e["Event"]["info"].startswith("MAR-10164494"))
    assert len(samsam["Event"]["Object"]) == 13  # of 17 file objects, 4 have no IDS attribute

    assert [e["Event"]["id"] for e in search(client, eventid="9747")] == ["9747"]
    by_uuid = search(client, uuid=["57c4445b-c548-4654-af0b-4be3950d210f",
                                   "56e12e66-f01c-41be-afea-4d9a950d210f"])
    assert [e["Event"]["info"] for e in by_uuid] == PUBLISHED_INFOS[:2]
    window = search(client, publish_timestamp=[1550654000, 1550655000])
    assert [e["Event"]["info"] for e in window] == PUBLISHED_INFOS[2:]
    assert len(search(client, timestamp="1513948642")) == 2  # existing_event and SamSam
    assert search(client, publish_timestamp="14d") == []

    fresh: dict[str, Any] = {"Event": {"id": "1", "uuid": "0b7a6f5c-1d2e-4f3a-8b9c-0d1e2f3a4b5c", "info": "fresh",
                       "org_id": "1", "published": True, "timestamp": str(int(time.time())),
                       "publish_timestamp": str(int(time.time())),
                       "Attribute": [{"type": "ip-dst", "value": "192.0.2.1", "to_ids": True,
                                      "deleted": False},
                                     {"type": "ip-dst", "value": "192.0.2.2", "to_ids": True,
                                      "deleted": True}]}}
    standins.misp.events.append(fresh)
    recent = search(client, publish_timestamp="14d")
    assert [a["value"] for e in recent for a in e["Event"]["Attribute"]] == ["192.0.2.1"]
    # Soft-deleted attributes: only for the user's own org's events; deleted=1 is those alone
    both = search(client, publish_timestamp="12h", deleted=[0, 1])
    assert [a["value"] for a in both[0]["Event"]["Attribute"]] == ["192.0.2.1", "192.0.2.2"]
    only = search(client, publish_timestamp="12h", deleted=True)
    assert [a["value"] for a in only[0]["Event"]["Attribute"]] == ["192.0.2.2"]
    fresh["Event"]["Attribute"][0]["to_ids"] = False  # MISP's selection counts the deleted IDS attribute
    assert [e["Event"]["Attribute"] for e in search(client, publish_timestamp="12h", to_ids=True)] == [[]]
    fresh["Event"]["Attribute"][1]["to_ids"] = False  # no IDS attribute left: event not matched
    assert search(client, publish_timestamp="12h", to_ids=True) == []
    assert len(search(client, publish_timestamp="12h")) == 1
    assert search(client, published=False, limit=10)[0]["Event"]["info"].startswith("OSINT - Sednit")

    assert search(client, return_format="csv")["errors"][0] == 400


def test_metadata_search_returns_event_headers_without_attributes(standins: StandIns) -> None:
    headers = search(misp(standins), published=True, metadata=True)
    assert [e["Event"]["info"] for e in headers] == PUBLISHED_INFOS
    for wrapped in headers:
        event = wrapped["Event"]
        assert not {"Attribute", "Object", "ShadowAttribute", "EventReport"} & event.keys()
        assert {"uuid", "timestamp", "publish_timestamp", "Tag"} <= event.keys()
    assert "Attribute" in standins.misp.events[0]["Event"]  # the stored event is untouched


def test_non_events_and_ignore_page_faults(standins: StandIns) -> None:
    client = misp(standins)
    standins.misp.fail_page(2, "non-events")
    assert search(client, published=True, limit=2, page=2) == ["not an event", {"foo": 1}, 42]
    standins.misp.clear_faults()
    standins.misp.fail_page(None, "ignore-page")
    first = search(client, published=True, limit=2, page=1)
    assert [search(client, published=True, limit=2, page=page) for page in (2, 7)] == [first, first]
    headers = search(client, published=True, metadata=True, limit=2, page=3)
    assert [e["Event"]["uuid"] for e in headers] == [e["Event"]["uuid"] for e in first]


def test_page_hook_runs_once_before_that_page_of_a_full_search(standins: StandIns) -> None:
    client = misp(standins)
    calls: list[int] = []
    standins.misp.on_page(2, lambda: calls.append(len(standins.misp.requests_seen)))
    search(client, published=True, metadata=True, limit=2, page=2)  # metadata: not this hook
    assert calls == []
    search(client, published=True, limit=2, page=1)
    search(client, published=True, limit=2, page=2)
    search(client, published=True, limit=2, page=2)
    assert calls == [len(standins.misp.requests_seen) - 1]


def test_seeded_events_are_wrapped(fixture_events: list[dict[str, Any]]) -> None:
    assert len(fixture_events) == 6 and all(set(e) == {"Event"} for e in fixture_events)
    bare_export = fixture_events[2]["Event"]  # existing_event.json has no "Event" wrapper
    assert bare_export["id"] == "9747" and len(bare_export["Object"]) == 49


# --- Entra / MSAL ----------------------------------------------------------------------------


def test_msal_gets_a_token_and_caches_it(standins: StandIns) -> None:
    app = msal_app(standins)
    scopes = [f"{standins.graph.url}/.default"]
    first = app.acquire_token_for_client(scopes)
    second = app.acquire_token_for_client(scopes)

    assert first["token_source"] == "identity_provider" and second["token_source"] == "cache"
    assert first["access_token"] == second["access_token"] and first["expires_in"] == 3599
    assert standins.entra.token_requests == 1
    assert standins.entra.issued_tokens() == [first["access_token"]]
    info = standins.entra.validate(first["access_token"])
    assert info and (info.client_id, info.tenant, info.resource) == (
        standins.client_id, standins.tenant, standins.graph.url)
    oidc, token_post = standins.entra.requests_seen
    assert oidc.path == f"/{standins.tenant}/v2.0/.well-known/openid-configuration"
    assert b"grant_type=client_credentials" in token_post.body
    assert b"client_secret=demo-secret-value" in token_post.body
    standins.entra.expire_all()
    assert standins.entra.validate(first["access_token"]) is None


@pytest.mark.parametrize(("client_id", "secret", "resource", "error", "code"), [
    (None, "wrong-secret", None, "invalid_client", 7000215),
    ("99999999-0000-0000-0000-000000000000", None, None, "unauthorized_client", 700016),
    (None, None, "https://management.azure.com", "invalid_resource", 500011)])
def test_msal_token_errors(standins: StandIns, client_id: str | None, secret: str | None,
                           resource: str | None, error: str, code: int) -> None:
    result = msal_app(standins, client_id=client_id, secret=secret).acquire_token_for_client(
        [f"{resource or standins.graph.url}/.default"])
    assert "access_token" not in result
    assert result["error"] == error and result["error_codes"] == [code]
    assert result["error_description"].startswith(f"AADSTS{code}: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(result)


def test_msal_scope_without_default_suffix_is_invalid_scope(standins: StandIns) -> None:
    # MSAL itself only sends what it is given; post the form as MSAL would.
    response = requests.post(f"{standins.entra.authority}/oauth2/v2.0/token", data={
        "client_id": standins.client_id, "client_secret": standins.client_secret,
        "grant_type": "client_credentials", "scope": standins.graph.url, "client_info": "1"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert response.json()["error_codes"] == [1002012]


def test_msal_unknown_tenant_and_injected_failures(standins: StandIns) -> None:
    with pytest.raises(ValueError):
        msal.ConfidentialClientApplication(
            standins.client_id, client_credential=standins.client_secret,
            authority=f"{standins.entra.url}/no-such-tenant", instance_discovery=False,
            azure_region=False)
    standins.entra.fail_token(500)
    with pytest.raises(msal.exceptions.MsalServiceError):
        msal_app(standins).acquire_token_for_client([f"{standins.graph.url}/.default"])
    standins.entra.fail_token(429, {"error": "temporarily_unavailable"}, {"Retry-After": "7"})
    throttled = msal_app(standins).acquire_token_for_client([f"{standins.graph.url}/.default"])
    assert throttled["error"] == "temporarily_unavailable"
    assert "access_token" in msal_app(standins).acquire_token_for_client(
        [f"{standins.graph.url}/.default"])


# --- Graph -----------------------------------------------------------------------------------


def test_submit_reports_per_item_errors_with_206(standins: StandIns) -> None:
    session = graph_session(standins)
    response = submit(standins, session, [indicator(), indicator(tlpLevel="clear")])

    assert response.status_code == 206
    body = response.json()
    assert body["@odata.context"].endswith("#Collection(microsoft.graph.tiIndicator)")
    good, bad = body["value"]
    assert re.fullmatch(r"[0-9a-f]{64}", good["id"])
    assert good["azureTenantId"] == standins.tenant and good["ingestedDateTime"].endswith("Z")
    assert standins.graph.indicators[good["id"]] == good
    assert bad["id"] == FAILED_ID and bad["tlpLevel"] == "clear"
    error = json.loads(bad["Error"])["error"]
    assert error["code"] == "InvalidInput" and "'tlpLevel'" in error["message"]
    assert re.fullmatch(r"\|[0-9a-f-]{36}_", error["target"])
    assert submit(standins, session, [indicator(), indicator()]).status_code == 200

    standins.graph.reject_value("192.0.2.9", "Indicator value is on the allow list")
    refused = submit(standins, session, [indicator(url=..., networkDestinationIPv4="192.0.2.9")])
    assert refused.status_code == 206
    assert json.loads(refused.json()["value"][0]["Error"])["error"]["message"] == (
        "Indicator value is on the allow list")


BAD_ITEMS: list[tuple[dict[str, Any], str]] = [
    (indicator(fileCreationDateTime="2020-01-01T00:00:00Z"), "fileCreationDateTime"),
    (indicator(emailSourceIPAddress="192.0.2.1"), "emailSourceIPAddress"),
    (indicator(action=...), "action"),
    (indicator(description=...), "description"),
    (indicator(expirationDateTime=...), "expirationDateTime"),
    (indicator(targetProduct="Microsoft Sentinel"), "targetProduct"),
    (indicator(threatType="watchlist"), "threatType"),
    (indicator(action="alerts"), "action"),
    (indicator(diamondModel="Adversary"), "diamondModel"),
    (indicator(fileHashValue="ab" * 32, fileHashType="SHA256"), "fileHashType"),
    (indicator(killChain=["Command and Control"]), "killChain"),
    (indicator(description="x" * 101), "description"),
    (indicator(confidence=101), "confidence"),
    (indicator(confidence="50"), "confidence"),
    (indicator(severity=True), "severity"),
    (indicator(networkDestinationPort="443"), "networkDestinationPort"),
    (indicator(networkDestinationAsn=2**63), "networkDestinationAsn"),
    (indicator(fileSize=1.5), "fileSize"),
    (indicator(expirationDateTime="next year"), "expirationDateTime"),
    (indicator(tags="tlp:white"), "tags"),
    (indicator(passiveOnly="false"), "passiveOnly"),
    (indicator(url=...), "observable"),
    (indicator(url=..., fileHashValue="ab" * 32), "fileHashType"),
    (indicator(targetProduct="Microsoft Defender ATP", url=..., emailSenderAddress="a@b.example"),
     "emailSenderAddress"),
    (indicator(targetProduct="Microsoft Defender ATP", url=..., fileHashValue="ab" * 32,
               fileHashType="ctph"), "fileHashType"),
]


def test_submit_validates_documented_rules(standins: StandIns) -> None:
    response = submit(standins, graph_session(standins), [item for item, _ in BAD_ITEMS])

    assert response.status_code == 206
    messages = [json.loads(r["Error"])["error"]["message"] for r in response.json()["value"]]
    for (_, name), message in zip(BAD_ITEMS, messages, strict=True):
        assert name in message
    assert standins.graph.indicators == {}


def test_submit_rejects_malformed_bodies(standins: StandIns) -> None:
    session = graph_session(standins)
    too_many = submit(standins, session, [indicator()] * 101)
    assert too_many.status_code == 400 and "100" in too_many.json()["error"]["message"]
    assert too_many.json()["error"]["code"] == "BadRequest"
    not_json = session.post(f"{standins.graph.url}/beta/security/tiIndicators/submitTiIndicators",
                            data=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert set(not_json.json()["error"]["innerError"]) == {"date", "request-id", "client-request-id"}


def test_list_pages_with_next_link_and_owned_by(standins: StandIns) -> None:
    session = graph_session(standins)
    created = [r["id"] for r in submit(standins, session, [indicator()] * 5).json()["value"]]
    url: str | None = f"{standins.graph.url}/beta/security/tiIndicators?$top=2"
    listed, pages = [], 0
    while url:
        assert url.startswith(standins.graph.url)
        page = session.get(url).json()
        listed += [item["id"] for item in page["value"]]
        url, pages = page.get("@odata.nextLink"), pages + 1
    assert listed == created and pages == 3

    standins.entra.clients["bbbbbbbb-0000-0000-0000-000000000000"] = "other-secret"
    other = graph_session(standins, client_id="bbbbbbbb-0000-0000-0000-000000000000",
                          secret="other-secret")
    assert other.get(f"{standins.graph.url}/beta/security/tiIndicators").json()["value"] == []
    assert other.get(f"{standins.graph.url}/beta/security/tiIndicators/{created[0]}").status_code == 404


def test_delete_removes_only_own_indicators(standins: StandIns) -> None:
    session = graph_session(standins)
    first, second = (r["id"] for r in submit(standins, session, [indicator()] * 2).json()["value"])
    delete_url = f"{standins.graph.url}/beta/security/tiIndicators/deleteTiIndicators"

    result = session.post(delete_url, json={"value": [first, "f" * 64]}).json()["value"]
    assert result == [{"code": 0, "message": "", "subcode": 0},
                      {"code": 404, "message": f"Indicator {'f' * 64} not found", "subcode": 0}]
    assert session.get(f"{standins.graph.url}/beta/security/tiIndicators/{first}").status_code == 404
    assert session.get(f"{standins.graph.url}/beta/security/tiIndicators/{second}").json()["id"] == second
    by_external = session.post(f"{delete_url}ByExternalId",
                               json={"value": [indicator()["externalId"]]}).json()["value"]
    assert by_external == [{"code": 0, "message": "", "subcode": 0}]
    assert standins.graph.indicators == {}


def test_unauthenticated_requests_get_401(standins: StandIns) -> None:
    list_url = f"{standins.graph.url}/beta/security/tiIndicators"
    missing = requests.get(list_url)
    assert missing.status_code == 401
    error = missing.json()["error"]
    assert (error["code"], error["message"]) == ("InvalidAuthenticationToken", "Access token is empty.")
    standins.entra.resources.add("https://management.azure.com")
    foreign = graph_session(standins, resource="https://management.azure.com").get(list_url)
    assert foreign.status_code == 401 and "Invalid audience" in foreign.json()["error"]["message"]
    session = graph_session(standins)
    assert session.get(list_url).status_code == 200
    standins.entra.expire_all()
    expired = session.get(list_url)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]


def test_injected_graph_faults(standins: StandIns) -> None:
    session = graph_session(standins)
    standins.graph.fail_next(429, headers={"Retry-After": "3"}, path_suffix="/submitTiIndicators")
    assert session.get(f"{standins.graph.url}/beta/security/tiIndicators").status_code == 200
    throttled = submit(standins, session, [indicator()])
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "3"
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert submit(standins, session, [indicator()]).status_code == 200
    standins.graph.fail_next(503, "<html>Service Unavailable</html>", times=2)
    assert [submit(standins, session, []).status_code for _ in range(3)] == [503, 503, 200]


def test_graph_garbles_an_answer_after_doing_the_work(standins: StandIns) -> None:
    session = graph_session(standins)
    standins.graph.garble_next(path_suffix="/submitTiIndicators")
    standins.graph.garble_next("<html>Bad gateway</html>", path_suffix="/submitTiIndicators")
    truncated = submit(standins, session, [indicator()])
    with pytest.raises(ValueError):
        truncated.json()
    html = submit(standins, session, [indicator()])
    assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
    assert len(standins.graph.indicators) == 2


def test_graph_processes_a_request_late(standins: StandIns) -> None:
    session = graph_session(standins)
    standins.graph.process_late(1.5, path_suffix="/submitTiIndicators")
    with pytest.raises(requests.Timeout):
        session.post(f"{standins.graph.url}/beta/security/tiIndicators/submitTiIndicators",
                     json={"value": [indicator()]}, timeout=0.5)
    assert standins.graph.indicators == {}
    assert submit(standins, session, [indicator()]).status_code == 200
    time.sleep(1.5)
    assert len(standins.graph.indicators) == 2


def test_server_plumbing_keep_alive_content_length_and_close(standins: StandIns) -> None:
    port = int(standins.graph.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(standins.ca_bundle_path))
    connection = http.client.HTTPSConnection("localhost", port, context=context)
    sockets = []
    for path in ("/nowhere", "/beta/security/tiIndicators"):
        connection.request("GET", path)
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status == 401 and int(answer.headers["Content-Length"]) == len(body)
        sockets.append(connection.sock)
    assert sockets[0] is not None and sockets[0] is sockets[1]  # HTTP/1.1 keep-alive
    connection.close()
    standins.misp.close()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{standins.misp.url}/servers/getVersion", timeout=5)

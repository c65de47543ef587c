"""The Defender target end to end: the real PyMISP, MSAL and requests over HTTPS against the
MISP, Entra and Defender for Endpoint stand-ins. Reconciliation (add, update, remove, a lost
state, kill -9), the budget (stable, never over the tenant's cap, foreign indicators never
touched) and the per-target policy from one MISP fetch."""
from __future__ import annotations

import json

from constants import ExitCode
from misp_transformer import MappingPolicy
from standins import DEFAULT_USER_ASSIGNED_CLIENT_ID
from tests.support import (
    defender_config,
    expected_defender_keys,
    expected_stix_ids,
    graph_session,
    held_defender_keys,
    kill_during_defender_import,
    published,
    run_cli,
    store_file,
    write_config,
)

OTHER_APP = "ffffffff-0000-0000-0000-000000000000"


def run_report(result) -> dict:
    """The last run report of the Defender target."""
    return [record for record in result.logs("run-report") if record["target"].startswith("defender")][-1]


def test_a_sync_puts_exactly_what_misp_wants_into_defender_and_a_rerun_sends_nothing(standins, tmp_path, capsys):
    config = defender_config(tmp_path, standins)
    first = run_cli(config, capsys=capsys)
    assert first.code == ExitCode.OK, first.out + first.err
    wanted = expected_defender_keys(standins.misp.events)
    assert set(held_defender_keys(standins)) == wanted and max(held_defender_keys(standins).values()) == 1
    imports = standins.defender.calls["import"]
    assert imports == -(-len(wanted) // 500)
    second = run_cli(config, capsys=capsys)
    assert second.code == ExitCode.OK and standins.defender.calls["import"] == imports
    assert standins.defender.calls["batchdelete"] == 0 and standins.defender.throttled == 0


def test_edits_in_misp_update_and_remove_by_numeric_id(standins, tmp_path, capsys):
    config = defender_config(tmp_path, standins)
    run_cli(config, capsys=capsys)
    event = published(standins)[0]
    sent = [a for a in event["Attribute"] if a["type"] in ("md5", "sha1", "sha256", "domain", "url") and a.get("to_ids")]
    gone, edited = sent[0], sent[1]
    gone["to_ids"] = False
    edited["comment"] = "edited in MISP"
    event["timestamp"] = str(int(event["timestamp"]) + 60)
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    held = {item["indicatorValue"]: item for item in standins.defender.held(standins.client_id)}
    assert gone["value"].lower() not in {value.lower() for value in held}
    assert "edited in MISP" in held[edited["value"].lower() if edited["type"] != "url" else edited["value"]]["description"]
    assert set(held_defender_keys(standins)) == expected_defender_keys(standins.misp.events)
    deletes = [r for r in standins.defender.requests_seen if r.path.endswith("/BatchDelete")]
    assert deletes and all(ident.isdigit() for r in deletes for ident in r.json["IndicatorIds"])


def test_a_lost_state_file_is_rebuilt_from_defender_and_nothing_is_sent_twice(standins, tmp_path, capsys):
    config = defender_config(tmp_path, standins)
    run_cli(config, capsys=capsys)
    ids = {item["id"] for item in standins.defender.held()}
    store_file(tmp_path, "defender").unlink()
    imports = standins.defender.calls["import"]
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert {item["id"] for item in standins.defender.held()} == ids
    assert standins.defender.calls["import"] == imports  # every indicator read back as unchanged


def test_a_kill_during_an_import_is_recovered_without_loss_or_copy(standins, tmp_path, capsys):
    config = defender_config(tmp_path, standins)
    kill_during_defender_import(config, standins)
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    held = held_defender_keys(standins)
    assert set(held) == expected_defender_keys(standins.misp.events) and max(held.values()) == 1


def test_the_budget_keeps_a_stable_choice_and_counts_the_rest(standins, tmp_path, capsys):
    config = defender_config(tmp_path, standins, defender_max_indicators=5)
    first = run_cli(config, capsys=capsys)
    assert first.code == ExitCode.OK, first.out + first.err
    chosen = {item["id"] for item in standins.defender.held()}
    assert len(chosen) == 5
    over = len(expected_defender_keys(standins.misp.events)) - 5
    assert run_report(first)["skipped"]["over-budget"] == over
    assert f"over-budget {over}" in first.out
    calls = dict(standins.defender.calls)
    second = run_cli(config, capsys=capsys)
    assert second.code == ExitCode.OK
    assert {item["id"] for item in standins.defender.held()} == chosen
    assert standins.defender.calls["import"] == calls["import"] and standins.defender.calls["batchdelete"] == 0


def test_never_over_the_tenant_cap_and_foreign_indicators_are_never_touched(standins, tmp_path, capsys):
    standins.defender.grant(standins.client_id, "Ti.ReadWrite.All")
    foreign = standins.defender.preload_foreign(15000 - 3)
    before = {item["id"]: dict(item) for item in standins.defender.held(OTHER_APP)}
    result = run_cli(defender_config(tmp_path, standins), capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert len(standins.defender.held()) == 15000
    assert len(standins.defender.held(standins.client_id)) == 3
    assert {item["id"]: item for item in standins.defender.held(OTHER_APP)} == before and len(foreign) == len(before)


def test_with_ti_readwrite_only_the_service_refusal_at_the_cap_is_logged_with_its_reason(standins, tmp_path, capsys):
    standins.defender.preload_foreign(15000 - 2)
    result = run_cli(defender_config(tmp_path, standins), capsys=capsys)
    assert result.code != ExitCode.OK
    assert len(standins.defender.held()) == 15000
    errors = [e for e in result.logs("error") if e.get("rejected")]
    assert errors and "maximum" in errors[0]["rejected"][0]["reason"]


def test_a_value_another_source_holds_is_not_taken_over(standins, tmp_path, capsys):
    """Ti.ReadWrite.All would let import overwrite another source's indicator of the same value."""
    standins.entra.clients[OTHER_APP] = "other-secret"
    standins.defender.grant(OTHER_APP, "Ti.ReadWrite")
    standins.defender.grant(standins.client_id, "Ti.ReadWrite.All")
    kind, _, value = sorted(expected_defender_keys(standins.misp.events))[0].partition(":")
    session = graph_session(standins, resource=standins.defender.url, client_id=OTHER_APP, secret="other-secret")
    theirs = {"indicatorValue": value, "indicatorType": kind, "action": "Allowed", "title": "their own",
              "description": "allow-listed by another team"}
    answer = session.post(f"{standins.defender.url}/api/indicators/import", json={"Indicators": [theirs]}, timeout=10)
    assert answer.status_code == 200 and answer.json()["value"][0]["isFailed"] is False
    before = standins.defender.held(OTHER_APP)
    result = run_cli(defender_config(tmp_path, standins), capsys=capsys)
    assert standins.defender.held(OTHER_APP) == before and before[0]["action"] == "Allowed"
    assert "never changes an indicator it did not create" in json.dumps(result.logs("error"))
    assert result.code == ExitCode.REJECTED


def test_one_fetch_feeds_each_target_its_own_policy(standins, tmp_path, capsys):
    event = published(standins)[0]
    event["Tag"] = [*event.get("Tag", []), {"name": "tlp:red"}]  # the most restrictive tag wins: red
    config = write_config(tmp_path, standins, target=["sentinel", {"type": "defender", "tlp_max": "green",
                                                                   "defender_action": "Block"}])
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert set(standins.sentinel.objects) >= expected_stix_ids(standins.misp.events)
    assert set(held_defender_keys(standins)) == expected_defender_keys(standins.misp.events, MappingPolicy(tlp_max="green"))
    assert {item["action"] for item in standins.defender.held()} == {"Block"}
    searches = [r for r in standins.misp.requests_seen if r.path.endswith("/events/restSearch")]
    assert searches  # one listing and one read served both targets
    assert run_report(result)["skipped"].get("above-tlp-max", 0) > 0


def test_graph_with_defender_atp_stops_before_any_request(standins, tmp_path, capsys):
    result = run_cli(write_config(tmp_path, standins, targetProduct="Microsoft Defender ATP"), capsys=capsys)
    assert result.code == ExitCode.CONFIG
    assert 'target = "defender"' in result.err and len(result.err.strip().splitlines()) == 1
    assert standins.graph.requests_seen == [] and standins.misp.requests_seen == []


def test_a_429_is_waited_out_and_sent_again(standins, tmp_path, capsys):
    standins.defender.fail_next(429, headers={"Retry-After": "1"}, path_suffix="/import")
    result = run_cli(defender_config(tmp_path, standins), capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert set(held_defender_keys(standins)) == expected_defender_keys(standins.misp.events)


def test_listing_check_and_delete_by_id(standins, tmp_path, capsys):
    config = defender_config(tmp_path, standins)
    run_cli(config, capsys=capsys)
    listing = run_cli(config, "-r", capsys=capsys)
    assert listing.code == ExitCode.OK
    assert len(json.loads(listing.out)["value"]) == len(standins.defender.held(standins.client_id))
    check = run_cli(config, "--check", capsys=capsys)
    assert check.code == ExitCode.OK, check.out
    victim = standins.defender.held(standins.client_id)[0]["id"]
    deleted = run_cli(config, "-d", victim, capsys=capsys)
    assert deleted.code == ExitCode.OK, deleted.out + deleted.err
    assert victim not in {item["id"] for item in standins.defender.held()}
    run_cli(config, capsys=capsys)  # MISP still wants it: sent again, under a new id
    assert set(held_defender_keys(standins)) == expected_defender_keys(standins.misp.events)


def test_a_dry_run_sends_nothing_to_defender(standins, tmp_path, capsys):
    result = run_cli(defender_config(tmp_path, standins), "--dry-run", capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert standins.defender.calls["import"] == 0 and standins.defender.held() == []


def _identity_endpoint(standins, monkeypatch) -> None:
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET",
                 "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", standins.identity.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", standins.identity.header_secret)


def test_a_user_assigned_identity_owns_what_it_creates(standins, tmp_path, capsys, monkeypatch):
    """Defender records the identity's client id as createdBy, not graph_auth's client_id."""
    _identity_endpoint(standins, monkeypatch)
    standins.defender.grant(DEFAULT_USER_ASSIGNED_CLIENT_ID, "Ti.ReadWrite")
    config = defender_config(tmp_path, standins, managed_identity=DEFAULT_USER_ASSIGNED_CLIENT_ID)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    held = held_defender_keys(standins, DEFAULT_USER_ASSIGNED_CLIENT_ID)
    assert set(held) == expected_defender_keys(standins.misp.events)
    imports = standins.defender.calls["import"]
    store_file(tmp_path, "defender").unlink()  # read back: its own, so nothing is sent again
    assert run_cli(config, capsys=capsys).code == ExitCode.OK and standins.defender.calls["import"] == imports


def test_a_system_assigned_identity_without_its_client_id_is_a_config_error(standins, tmp_path, capsys, monkeypatch):
    _identity_endpoint(standins, monkeypatch)
    config = defender_config(tmp_path, standins, managed_identity=True,
                             graph_auth={"tenant": standins.tenant, "client_id": "", "client_secret": ""})
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.CONFIG and "client_id" in result.err and len(result.err.strip().splitlines()) == 1
    assert standins.defender.requests_seen == []


def test_rebuild_state_table_listing_and_explain_know_the_defender_target(standins, tmp_path, capsys):
    config = defender_config(tmp_path, standins)
    run_cli(config, capsys=capsys)
    imports = standins.defender.calls["import"]
    rebuilt = run_cli(config, "--rebuild-state", capsys=capsys)
    assert rebuilt.code == ExitCode.OK, rebuilt.out + rebuilt.err
    assert run_cli(config, capsys=capsys).code == ExitCode.OK and standins.defender.calls["import"] == imports
    table = run_cli(config, "-r", "--format", "csv", capsys=capsys)
    header, *rows = table.out.strip().splitlines()
    assert header == "target,id,externalID,indicatorType,indicatorValue,action,expirationTime"
    assert len(rows) == len(standins.defender.held(standins.client_id))
    attribute = next(a for a in published(standins)[0]["Attribute"] if a["type"] == "md5" and a.get("to_ids"))
    explained = run_cli(config, "--explain", attribute["uuid"], capsys=capsys)
    assert explained.code == ExitCode.OK and "defender" in explained.out, explained.out + explained.err

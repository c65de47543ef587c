"""Issue 15 end to end: scripted matches in the Graph alerts_v2 and Log Analytics SecurityAlert
stand-ins become MISP sightings through PyMISP, over HTTPS: the right attribute, source and
time, once per attribute and day across re-runs, kills and a lost state; nothing for what is not
ours; refusals and a missing permission said loudly; decay following the sightings."""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from typing import Any

import pytest

import constants as C
from constants import ExitCode
from misp_transformer import stix_id
from settings import load_settings
from standins.alerts import file_evidence, ip_evidence, url_evidence
from tests.support import defender_config, run_cli, sentinel_config, store_file, write_config
from tests.test_decay import CROSSING_DAYS, DAY, age, attribute, decay_event, iso

HOUR = 3600


@pytest.fixture
def small_misp(standins) -> dict[str, dict[str, Any]]:
    """One published event: an address, a domain and a hash, all recent."""
    items = {"ip": attribute("185.220.101.7", "ip-dst", age_days=1), "domain": attribute("bad.example.com", "domain", age_days=1),
             "hash": attribute("b" * 64, "sha256", age_days=1)}
    items["hash"]["category"] = "Payload delivery"
    standins.misp.events = [decay_event(*items.values())]
    return items


def ago(hours: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)


def records(standins, source: str | None = None) -> list[dict[str, Any]]:
    return [r for r in standins.misp.sighting_records if source is None or r["source"] == source]


def sightings_of(result) -> dict[str, int]:
    return result.logs("sightings")[-1]["sightings"]


def synced_with_a_match(standins, tmp_path, capsys) -> Any:
    """A Defender target holding the small event, and one alert an hour ago on its address."""
    config = defender_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    standins.graph.add_alert([ip_evidence("185.220.101.7")], created=ago(1))
    return config


def sighting_posts(standins) -> list[Any]:
    return [r for r in standins.misp.requests_seen if r.path.startswith("/sightings/add")]


def test_defender_matches_become_one_sighting_per_attribute_and_day(standins, tmp_path, capsys, small_misp):
    config = defender_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    first_hit, later_hit = ago(3), ago(1)
    standins.graph.add_alert([ip_evidence("185.220.101.7")], created=later_hit)
    standins.graph.add_alert([ip_evidence("185.220.101.7")], created=first_hit)
    standins.graph.add_alert([url_evidence("https://bad.example.com/payload")], created=ago(2))  # the domain indicator
    standins.graph.add_alert([file_evidence(sha256="B" * 64)], created=ago(30))  # the hash, yesterday or earlier
    standins.graph.add_alert([ip_evidence("203.0.113.50")], created=ago(2))  # another source's indicator
    standins.graph.add_alert([ip_evidence("185.220.101.7")], created=ago(2), detection_source="antivirus")  # not a custom TI hit
    standins.graph.add_alert([ip_evidence("185.220.101.7")], created=ago(24 * 9))  # before the first window
    result = run_cli(config, "--sightings", capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    posted = {r["attribute_uuid"]: r for r in records(standins)}
    assert set(posted) == {small_misp["ip"]["uuid"], small_misp["domain"]["uuid"], small_misp["hash"]["uuid"]}
    assert len(records(standins)) == 3
    assert all(r["source"] == "misp2sentinel:defender" and str(r["type"]) == "0" for r in posted.values())
    assert int(posted[small_misp["ip"]["uuid"]]["date_sighting"]) == int(first_hit.timestamp())
    assert int(posted[small_misp["hash"]["uuid"]]["date_sighting"]) == int((first_hit - dt.timedelta(hours=27)).timestamp())
    assert all(post.path.rsplit("/", 1)[1] in posted for post in sighting_posts(standins))  # by uuid, never by value
    assert all("value" not in (post.json or {}) for post in sighting_posts(standins))
    assert sightings_of(result) == {"alerts": 5, "posted": 3, "duplicates": 0, "refused": 0, "not_ours": 1,
                                    "unreadable": 0, "recovered": 0, "deferred": 0}
    assert "sightings to MISP: posted 3, duplicates 0, refused 0" in result.out
    again = run_cli(config, "--sightings", capsys=capsys)  # reads from 6 h before the last run: the hash's alert is older
    assert again.code == ExitCode.OK and len(records(standins)) == 3
    assert (sightings_of(again)["posted"], sightings_of(again)["duplicates"], sightings_of(again)["alerts"]) == (0, 2, 4)


def test_sentinel_ti_map_alerts_map_back_by_stix_id_or_by_value(standins, tmp_path, capsys, small_misp):
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    ip_id = stix_id(small_misp["ip"]["uuid"])
    assert ip_id in standins.sentinel.objects
    standins.loganalytics.add_alert("TI map IP entity to CommonSecurityLog", [{"$id": "2", "Type": "ip", "Address": "185.220.101.7"}],
                                    {"IndicatorId": ip_id, "ThreatType": "malware"}, at=ago(2))
    standins.loganalytics.add_alert("TI map Domain entity to DnsEvents", [{"$id": "3", "Type": "dns", "DomainName": "BAD.example.com"}],
                                    at=ago(1))
    standins.loganalytics.add_alert("TI map IP entity to SigninLogs", [{"Type": "ip", "Address": "192.0.2.99"}], at=ago(1))
    standins.loganalytics.add_alert("MISP hash hit", [{"Type": "filehash", "Algorithm": "SHA256", "Value": "b" * 64}], at=ago(1))
    result = run_cli(config, "--sightings", capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert {r["attribute_uuid"] for r in records(standins, "misp2sentinel:sentinel")} == {
        small_misp["ip"]["uuid"], small_misp["domain"]["uuid"]}
    assert sightings_of(result)["not_ours"] == 1 and sightings_of(result)["alerts"] == 3
    own_rule = config.read_text() + ('sentinel_match_query = \'SecurityAlert | where AlertName startswith "TI map" or AlertName '
                                     'in ("MISP hash hit") | project TimeGenerated, SystemAlertId, Entities, ExtendedProperties\'\n')
    config.write_text(own_rule)
    widened = run_cli(config, "--sightings", capsys=capsys)
    assert widened.code == ExitCode.OK, widened.err
    assert sightings_of(widened)["posted"] == 1 and sightings_of(widened)["duplicates"] == 2
    assert small_misp["hash"]["uuid"] in {r["attribute_uuid"] for r in records(standins)}
    queries = [r.json for r in standins.loganalytics.requests_seen if "SecurityAlert" in (r.json or {}).get("query", "")]
    assert all("/" in body["timespan"] for body in queries)


def test_sentinel_maps_a_value_to_the_observable_sent_not_the_misp_text(standins, tmp_path, capsys):
    """An indicator's `name` is MISP's text: defanged, or a composite such as domain|ip. The
    alert's entity holds the observable the pattern matched, so that is what a value is compared with."""
    composite = attribute("c2.example.net|185.220.101.9", "domain|ip", age_days=1)
    defanged = attribute("hxxps://evil[.]example/x", "url", age_days=1)
    standins.misp.events = [decay_event(composite, defanged)]
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    standins.loganalytics.add_alert("TI map IP entity to SigninLogs", [{"Type": "ip", "Address": "185.220.101.9"}], at=ago(1))
    standins.loganalytics.add_alert("TI map URL entity to UrlClickEvents", [{"Type": "url", "Url": "https://evil.example/x"}],
                                    at=ago(1))
    result = run_cli(config, "--sightings", capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert sorted(r["attribute_uuid"] for r in records(standins)) == sorted([composite["uuid"], defanged["uuid"]])
    assert sightings_of(result)["not_ours"] == 0


def test_a_refusal_is_logged_with_misps_reason_and_retried_next_run(standins, tmp_path, capsys, small_misp):
    config = synced_with_a_match(standins, tmp_path, capsys)
    standins.misp.refuse_sightings = "the attribute is in a deleted event"
    refused = run_cli(config, "--sightings", "--quiet", capsys=capsys)  # cron: exit 1 still says why, on stderr
    assert refused.code == ExitCode.REJECTED
    assert "1 sightings refused by MISP" in refused.err and records(standins) == []
    (logged,) = refused.log_dir.glob(f"*_{C.SIGHTINGS_REFUSED_LOG}-defender_*.jsonl")
    record = json.loads(logged.read_text().splitlines()[0])
    assert record["attribute_uuid"] == small_misp["ip"]["uuid"] and "deleted event" in record["reason"]
    standins.misp.refuse_sightings = None
    standins.graph.add_alert([ip_evidence("185.220.101.7")], created=ago(0.5))
    retried = run_cli(config, "--sightings", "--quiet", capsys=capsys)
    assert retried.code == ExitCode.OK and len(records(standins)) == 1
    assert retried.out == "" and retried.err == ""  # --quiet: errors only, so a good night sends no cron mail


def test_without_perm_sighting_the_run_stops_loudly_and_keeps_its_window(standins, tmp_path, capsys, small_misp):
    config = synced_with_a_match(standins, tmp_path, capsys)
    standins.misp.perm_sighting = False
    denied = run_cli(config, "--sightings", capsys=capsys)
    assert denied.code == ExitCode.MISP and "perm_sighting" in denied.err and "Traceback" not in denied.err
    assert [record["status"] for record in denied.logs("misp-sighting")] == [403]  # as MISP answered, not PyMISP's 200
    standins.misp.perm_sighting = True
    allowed = run_cli(config, "--sightings", capsys=capsys)
    assert allowed.code == ExitCode.OK and len(records(standins)) == 1


def test_a_kill_after_the_post_or_a_lost_state_never_posts_twice(standins, tmp_path, capsys, small_misp):
    config = synced_with_a_match(standins, tmp_path, capsys)
    assert run_cli(config, "--sightings", capsys=capsys).code == ExitCode.OK
    path = store_file(tmp_path, "defender")
    with sqlite3.connect(path) as db:  # as a kill between MISP's answer and the state's commit leaves it
        db.execute("UPDATE sightings SET status = 'pending'")
        db.execute("DELETE FROM meta WHERE key = ?", (C.SIGHTINGS_WINDOW_META,))
    recovered = run_cli(config, "--sightings", capsys=capsys)
    assert sightings_of(recovered)["recovered"] == 1 and len(records(standins)) == 1
    path.unlink()
    assert run_cli(config, capsys=capsys).code == ExitCode.OK  # the sync reads Defender back
    after_loss = run_cli(config, "--sightings", capsys=capsys)
    assert after_loss.code == ExitCode.OK
    assert sightings_of(after_loss)["duplicates"] == 1 and len(records(standins)) == 1


def test_no_state_and_graph_targets_post_nothing_and_say_why(standins, tmp_path, capsys, small_misp):
    config = defender_config(tmp_path, standins)
    standins.graph.add_alert([ip_evidence("185.220.101.7")], created=ago(1))
    fresh = run_cli(config, "--sightings", capsys=capsys)
    assert fresh.code == ExitCode.OK and "run a sync first" in fresh.out and records(standins) == []
    (tmp_path / "graph").mkdir()
    graph = write_config(tmp_path / "graph", standins)
    assert run_cli(graph, capsys=capsys).code == ExitCode.OK
    said = run_cli(graph, "--sightings", capsys=capsys)
    assert said.code == ExitCode.OK and "no API that says what an indicator matched" in said.out


def test_check_verifies_the_alert_permissions_and_misps_sighting_permission(standins, tmp_path, capsys, small_misp):
    config = write_config(tmp_path, standins, target=["sentinel", "defender"], report_sightings=True)
    checked = run_cli(config, "--check", capsys=capsys)
    assert checked.code == ExitCode.OK, checked.out
    assert "✓ MISP sightings" in checked.out and checked.out.count(": sightings") == 2
    standins.graph.alert_readers.clear()
    standins.misp.perm_sighting = False
    failed = run_cli(config, "--check", capsys=capsys)
    assert failed.code != ExitCode.OK
    assert "✗ MISP sightings" in failed.out and C.GRAPH_ALERTS_PERMISSION in failed.out


def test_a_sync_whose_defender_alerts_are_refused_still_posts_sentinels_sightings(standins, tmp_path, capsys, small_misp):
    """report_sightings with two targets: Defender's alerts refused (no SecurityAlert.Read.All) is
    that target's exit 4 and last-run.json entry, said under --quiet; Sentinel's matches still go to MISP."""
    config = write_config(tmp_path, standins, target=["sentinel", "defender"], report_sightings=True)
    standins.loganalytics.add_alert("TI map IP entity to SigninLogs", [{"Type": "ip", "Address": "185.220.101.7"}], at=ago(1))
    standins.graph.alert_readers.clear()
    result = run_cli(config, "--quiet", capsys=capsys)
    assert result.code == ExitCode.MICROSOFT, result.out + result.err
    assert [r["attribute_uuid"] for r in records(standins, "misp2sentinel:sentinel")] == [small_misp["ip"]["uuid"]]
    assert "sightings: alerts:" in result.err and C.GRAPH_ALERTS_PERMISSION in result.err and result.out == ""
    status = json.loads((result.log_dir / C.LAST_RUN_FILE).read_text())
    assert [entry["last_exit_code"] for entry in status.values()] == [ExitCode.OK, ExitCode.MICROSOFT]


def test_report_sightings_keeps_a_matched_indicator_fresh_while_an_unmatched_one_decays(standins, tmp_path, capsys):
    """The loop the issue closes: Defender's match becomes a MISP sighting at the end of the
    sync; ten days later MISP's score counts from it, so the matched address's expiry has moved
    out, while the unmatched one has crossed the threshold and is removed."""
    matched = attribute("185.220.101.20", "ip-dst", age_days=40)
    unmatched = attribute("185.220.101.21", "ip-dst", age_days=40)
    standins.misp.events = [decay_event(matched, unmatched)]
    config = defender_config(tmp_path, standins, misp_decay_model="NIDS Simple Decaying Model", report_sightings=True,
                             max_delete_fraction=0.6)
    standins.graph.add_alert([ip_evidence("185.220.101.20")], created=ago(0.1))
    first = run_cli(config, capsys=capsys)
    assert first.code == ExitCode.OK, first.out + first.err
    assert first.logs("run-report")[-1]["sightings"]["posted"] == 1
    (posted,) = records(standins)
    assert posted["attribute_uuid"] == matched["uuid"]
    age(standins, 10)  # the unmatched address is 50 days old: past the 46.9-day crossing
    second = run_cli(config, capsys=capsys)
    assert second.code == ExitCode.OK, second.out + second.err
    held = {item["indicatorValue"]: item for item in standins.defender.held(standins.client_id)}
    assert set(held) == {"185.220.101.20"}
    reference = standins.misp.sightings[matched["uuid"]][-1]
    assert held["185.220.101.20"]["expirationTime"] == iso(reference + round(CROSSING_DAYS * DAY))
    assert reference > time.time() - 10 * DAY - HOUR
    assert second.logs("run-report")[-1]["decay"]["removed_decayed"] == 1


def test_a_match_on_an_indicator_the_same_sync_decays_away_is_still_posted(standins, tmp_path, capsys):
    """report_sightings runs at the end of the sync: an indicator that matched since the last run
    but decayed in this one is removed first, and its match must still reach MISP, not count as
    not_ours (its state row is gone by then)."""
    matched, fresh = attribute("185.220.101.20", "ip-dst", age_days=40), attribute("185.220.101.22", "ip-dst", age_days=1)
    standins.misp.events = [decay_event(matched, fresh)]
    config = defender_config(tmp_path, standins, misp_decay_model="NIDS Simple Decaying Model", report_sightings=True,
                             max_delete_fraction=0.6)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    standins.graph.add_alert([ip_evidence("185.220.101.20")], created=ago(1))
    age(standins, 10)  # the matched address is 50 days old: this sync removes it
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert result.logs("run-report")[-1]["decay"]["removed_decayed"] == 1
    assert [r["attribute_uuid"] for r in records(standins)] == [matched["uuid"]]
    assert result.logs("run-report")[-1]["sightings"]["not_ours"] == 0


def test_a_match_query_without_time_generated_is_a_config_error_not_zero_alerts(standins, tmp_path, capsys, small_misp):
    """Every row of such a query would be skipped: the matches lost without a word, the window moved on."""
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    standins.loganalytics.add_alert("TI map IP entity to SigninLogs", [{"Type": "ip", "Address": "185.220.101.7"}], at=ago(1))
    config.write_text(config.read_text() + "sentinel_match_query = 'SecurityAlert | project StartTime, SystemAlertId, Entities'\n")
    result = run_cli(config, "--sightings", capsys=capsys)
    assert result.code == ExitCode.CONFIG, result.out + result.err
    assert "sentinel_match_query" in result.err and "TimeGenerated" in result.err and records(standins) == []
    config.write_text(config.read_text().replace("project StartTime,", "project TimeGenerated,"))
    fixed = run_cli(config, "--sightings", capsys=capsys)
    assert fixed.code == ExitCode.OK and len(records(standins)) == 1


def test_check_says_a_match_query_without_time_generated_is_wrong(standins, tmp_path, capsys, small_misp):
    """--check must not pass a query that makes every sightings run exit 2."""
    config = sentinel_config(tmp_path, standins, report_sightings=True,
                             sentinel_match_query="SecurityAlert | project StartTime, SystemAlertId, Entities")
    standins.loganalytics.add_alert("TI map IP entity to SigninLogs", [{"Type": "ip", "Address": "185.220.101.7"}], at=ago(1))
    checked = run_cli(config, "--check", capsys=capsys)
    assert checked.code == ExitCode.CONFIG, checked.out + checked.err
    assert "✗" in checked.out and "TimeGenerated" in checked.out and "internal error" not in checked.err


def test_two_workspaces_post_under_sources_misp_tells_apart(standins, tmp_path):
    """The read-back before a post (a first run, a lost state) compares the source: with one
    source for both workspaces, the second one's first run took the first one's sightings for its own."""
    other = "12345678-0000-0000-0000-000000000000"
    one = load_settings(sentinel_config(tmp_path, standins))
    (tmp_path / "two").mkdir()
    workspaces = [{"type": "sentinel", "workspace_id": standins.sentinel.workspace_id},
                  {"type": "sentinel", "workspace_id": other, "workspace_name": "second"}]
    two = load_settings(write_config(tmp_path / "two", standins, target=workspaces))
    assert one.sighting_source_for(one.targets[0]) == "misp2sentinel:sentinel"
    assert [two.sighting_source_for(target) for target in two.targets] == [
        f"misp2sentinel:sentinel:{standins.sentinel.workspace_id}", f"misp2sentinel:sentinel:{other}"]

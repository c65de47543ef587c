"""The whole tool, end to end: PyMISP, MSAL and requests over HTTPS against the stand-ins."""
from __future__ import annotations

import collections
import json

import pytest

import constants as C
from constants import ExitCode
from tests.support import expected_external_ids, held_external_ids, run_cli, run_process, search_bodies, write_config


def test_sync_sends_every_indicator_of_published_events(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    expected = expected_external_ids(standins.misp.events)
    assert len(expected) > 250
    assert held_external_ids(standins) == expected
    bodies = [body for body in search_bodies(standins) if not body.get("metadata")]  # after the listing
    assert all(body["published"] is True and body["limit"] == 2 for body in bodies)
    published = sum(1 for e in standins.misp.events if e["Event"].get("published") is True)
    assert [body["page"] for body in bodies] == list(range(1, (published + 1) // 2 + 2))
    report = run.logs("run-report")[0]
    assert report["accepted"] == report["new"] == report["indicators"] == len(expected)
    assert report["events"] == published and report["rejected"] == report["failed"] == 0
    assert f"accepted: {len(expected)}" in run.out and "skipped:" in run.out
    assert report["attributes"] == report["indicators"] + sum(report["skipped"].values())
    submits = [r for r in standins.graph.requests_seen if r.path.endswith("/submitTiIndicators")]
    assert len(submits) == -(-len(expected) // 100) or len(submits) >= len(expected) / 100
    assert all(len(r.json["value"]) <= 100 for r in submits)


def test_request_and_error_files_hold_no_secret(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins, verbose_log=True)
    standins.graph.fail_next(503, {"error": {"code": "ServiceUnavailable", "message": "try later"}}, times=1,
                             path_suffix="submitTiIndicators")
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.OK
    requests_logged = run.logs("submitTiIndicators")
    assert requests_logged and {r["status"] for r in requests_logged} >= {200, 503}
    tokens = standins.entra.issued_tokens()
    assert tokens
    everything = run.log_text() + run.out + run.err
    for secret in (standins.misp.key, standins.client_secret, *tokens):
        assert secret not in everything
    assert '"value"' in run.err and "submitTiIndicators -> 200" in run.err  # verbose printed the bodies


def test_dry_run_sends_nothing_and_needs_no_microsoft_credentials(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins, graph_auth={"tenant": "", "client_id": "", "client_secret": ""})
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\n")
    run = run_cli(config, "--dry-run", capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert standins.graph.requests_seen == [] and standins.entra.requests_seen == []
    would_send = [item for record in run.logs("dry-run-new") for item in record]
    assert {item["externalId"] for item in would_send} == expected_external_ids(standins.misp.events)
    assert "Dry run" in run.out


def test_rejected_indicator_is_logged_with_graphs_reason_and_exit_1(standins, tmp_path, capsys):
    standins.graph.reject_value("8.8.8.8", "Indicator value is on the allow list")
    standins.misp.events.append({"Event": {
        "uuid": "11111111-0000-4000-8000-000000000001", "info": "Rejection test", "published": True,
        "timestamp": "1700000000", "publish_timestamp": "1700000000",
        "Attribute": [
            {"uuid": "11111111-0000-4000-8000-0000000000a1", "type": "ip-dst", "value": "8.8.8.8", "to_ids": True},
            {"uuid": "11111111-0000-4000-8000-0000000000a2", "type": "ip-dst", "value": "9.9.9.9", "to_ids": True},
        ],
    }})
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.REJECTED
    assert "11111111-0000-4000-8000-0000000000a2" in held_external_ids(standins)
    rejected = [item for error in run.logs("error") for item in error.get("rejected", [])]
    assert [(r["key"], r["reason"]) for r in rejected] == [
        ("11111111-0000-4000-8000-0000000000a1", "InvalidInput: Indicator value is on the allow list"),
    ]
    assert "rejected: 1" in run.out


def test_throttled_batch_is_retried_and_nothing_lost(standins, tmp_path, capsys):
    standins.graph.fail_next(429, {"error": {"code": "TooManyRequests", "message": "slow down"}}, headers={"Retry-After": "0"}, times=2)
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.OK
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def test_read_lists_every_owned_indicator_across_pages(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    run = run_cli(config, "-r", capsys=capsys)
    assert run.code == ExitCode.OK
    listing = json.loads(run.out)
    assert listing["@odata.context"].endswith("#security/tiIndicators")
    assert sorted(item["id"] for item in listing["value"]) == sorted(standins.graph.indicators)
    pages = [r for r in standins.graph.requests_seen if r.method == "GET"][1:]  # after the first sync's read-back
    assert len(pages) == -(-len(standins.graph.indicators) // 100) >= 2


def test_delete_by_graph_id(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    run_cli(config, capsys=capsys)
    victim = next(iter(standins.graph.indicators))
    run = run_cli(config, "-d", victim, "no-such-id", capsys=capsys)
    assert run.code == ExitCode.REJECTED
    assert victim not in standins.graph.indicators
    assert f"{victim}: deleted" in run.out and "no-such-id: not deleted: 404" in run.out


@pytest.mark.parametrize(("setting", "value", "named"), [
    ("passiveOnly", "False", "passiveOnly"),
    ("action", "alerts", "action"),
    ("targetProduct", "Microsoft Sentinel", "targetProduct"),
    ("misp_verifycert", "False", "misp_verifycert"),
    ("days_to_expire", 0, "days_to_expire"),
    ("misp_event_filters", {"published": True, "limit": 10}, "misp_event_filters"),
    ("graph_endpoint", "http://graph.example", "graph_endpoint"),
])
def test_bad_config_is_one_line_naming_the_setting_exit_2(standins, tmp_path, capsys, setting, value, named):
    run = run_cli(write_config(tmp_path, standins, **{setting: value}), capsys=capsys)
    assert run.code == ExitCode.CONFIG
    assert run.err.count("\n") == 1 and named in run.err
    assert standins.misp.requests_seen == [] and standins.entra.requests_seen == []


def test_config_with_code_is_refused_not_executed(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    marker = tmp_path / "executed"
    config.write_text(config.read_text() + f"open({str(marker)!r}, 'w')\n")
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.CONFIG and "only `name = value`" in run.err
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["500", "502-html", "html-200", "403", "errors-200", "reset"])
def test_misp_failure_on_a_later_page_is_exit_3_not_silence(standins, tmp_path, capsys, mode):
    standins.misp.fail_page(2, mode)
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.MISP, run.err
    assert run.err.startswith("misp2sentinel: error: MISP") and "page 2" in run.err and run.err.count("\n") == 1
    assert run.logs("error")[0]["context"] == "misp"


def test_wrong_misp_key_is_exit_3(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    (tmp_path / ".env").write_text(f"MISP_KEY=wrong-key\nAZURE_CLIENT_SECRET={standins.client_secret}\n")
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.MISP and "cannot connect to MISP" in run.err
    assert "wrong-key" not in run.err + run.log_text()


def test_unreachable_misp_is_exit_3(standins, tmp_path, capsys):
    run = run_cli(write_config(tmp_path, standins, misp_domain="https://127.0.0.1:9/"), capsys=capsys)
    assert run.code == ExitCode.MISP and "cannot connect to MISP" in run.err


def test_untrusted_certificate_is_refused(standins, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    run = run_cli(write_config(tmp_path, standins), "--dry-run", capsys=capsys)
    assert run.code == ExitCode.MISP and "certificate" in run.err.lower()


def test_wrong_client_secret_names_the_aadsts_code_and_hides_the_secret(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\nAZURE_CLIENT_SECRET=not-the-secret\n")
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.MICROSOFT
    assert "AADSTS7000215" in run.err and "invalid_client" in run.err
    (error,) = run.logs("error")  # reported once
    assert "AADSTS7000215" in error["error"]
    assert "not-the-secret" not in run.err + run.out + run.log_text()
    assert standins.misp.requests_seen == []  # the token is checked before MISP is read


def test_graph_permission_refused_is_exit_4(standins, tmp_path, capsys):
    standins.graph.fail_next(403, {"error": {"code": "Forbidden", "message": "Insufficient privileges"}}, times=5)
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.MICROSOFT
    assert "Forbidden: Insufficient privileges" in run.err and "ThreatIndicators.ReadWrite.OwnedBy" in run.err


def test_graph_down_marks_batches_failed_and_exit_4(standins, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ms_client.MAX_WAIT_SECONDS", 0.0)
    standins.graph.fail_next(503, {"error": {"code": "ServiceUnavailable", "message": "down"}}, times=1000,
                             path_suffix="submitTiIndicators")
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.MICROSOFT
    report = run.logs("run-report")[0]
    assert report["failed"] == report["new"] > 0 and report["accepted"] == 0
    assert "HTTP 503" in run.logs("error")[0]["error"]


def test_cron_style_process_uses_config_dir_and_prints_no_traceback(standins, tmp_path):
    config = write_config(tmp_path, standins)
    good = run_process(config)
    assert good.code == ExitCode.OK, good.err
    assert (tmp_path / "logs").is_dir() and good.logs("run-report")
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\nAZURE_CLIENT_SECRET=bad\n")
    bad = run_process(config)
    assert bad.code == ExitCode.MICROSOFT and "Traceback" not in bad.err


def test_seed_style_filter_list_keeps_events_matching_every_filter(standins, tmp_path, capsys):
    uuids = [e["Event"]["uuid"] for e in standins.misp.events if e["Event"].get("published") is True]
    filters = [{"uuid": uuids[:3]}, {"uuid": uuids[1:]}]
    run = run_cli(write_config(tmp_path, standins, misp_event_filters=filters), capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    kept = [e for e in standins.misp.events if e["Event"]["uuid"] in uuids[1:3]]
    assert held_external_ids(standins) == expected_external_ids(kept)
    bodies = search_bodies(standins)
    assert any(body.get("metadata") == 1 for body in bodies)
    assert all(body.get("published") is True for body in bodies if body.get("metadata") == 0)


def test_an_attribute_in_two_events_is_sent_once_and_counted_as_duplicate(standins, tmp_path, capsys):
    copy = json.loads(json.dumps(standins.misp.events[0]))
    copy["Event"]["uuid"] = "33333333-0000-4000-8000-000000000001"
    standins.misp.events.append(copy)
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.OK
    report = run.logs("run-report")[-1]
    duplicates = len(expected_external_ids([standins.misp.events[0]]))
    assert report["skipped"]["duplicate"] == duplicates > 0
    assert report["new"] == report["indicators"] == len(standins.graph.indicators)


def test_every_skip_is_listed_line_by_line_with_its_value(standins, tmp_path, capsys):
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    (path,) = run.log_dir.glob("*_skipped-graph_*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    report = run.logs("run-report")[0]
    assert collections.Counter(r["reason"] for r in records) == report["skipped"]
    assert {r["attribute_type"] for r in records if r["reason"] == "unsupported-type"} == {"regkey|value", "email-attachment"}
    assert all(r["event_uuid"] and r["attribute_uuid"] and isinstance(r["value"], str) for r in records)


def test_routine_skips_are_capped_per_reason_in_the_skipped_file(standins, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(C, "ROUTINE_SKIPS_LOGGED", 5)
    run = run_cli(write_config(tmp_path, standins, misp_event_filters={"published": True}), capsys=capsys)  # MISP sends non-IDS too
    (path,) = run.log_dir.glob("*_skipped-graph_*.jsonl")
    logged = collections.Counter(json.loads(line)["reason"] for line in path.read_text().splitlines())
    assert run.logs("run-report")[0]["skipped"]["not-to-ids"] > logged["not-to-ids"] == 5
    assert logged["unsupported-type"] == 2


def test_an_update_clears_a_dropped_list_with_an_empty_list_not_null(standins, tmp_path, capsys):
    """mapping.md "Graph collections": Graph's CSDL collections are not nullable, so the
    stand-in refuses null for them in updateTiIndicators, as Graph does."""
    attribute = {"uuid": "11111111-0000-4000-8000-0000000000b1", "type": "domain", "value": "tagged.example",
                 "to_ids": True, "Tag": [{"name": "custom:one"}]}
    standins.misp.events[:] = [{"Event": {
        "uuid": "11111111-0000-4000-8000-000000000002", "info": "Tag test", "published": True,
        "timestamp": "1700000000", "publish_timestamp": "1700000000", "Attribute": [attribute],
    }}]
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    (held,) = standins.graph.indicators.values()
    assert held["tags"] == ["custom:one"]
    del attribute["Tag"]
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.OK and "updated: 1" in run.out and "rejected: 0" in run.out
    (held,) = standins.graph.indicators.values()
    assert held.get("tags", []) == []
    (update,) = [r.json for r in standins.graph.requests_seen if r.path.endswith("/updateTiIndicators")]
    assert update["value"][0]["tags"] == [] and update["value"][0]["killChain"] == []

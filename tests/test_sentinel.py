"""Issue 4 end to end: the Sentinel STIX target against the Sentinel stand-in, alone and beside Graph."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from constants import ExitCode
from misp_transformer import MappingPolicy, StixTransformer
from ms_client import RateLimiter
from tests.support import (
    ROOT,
    active_ids,
    expected_external_ids,
    expected_stix_ids,
    held_external_ids,
    run_cli,
    run_process,
    sentinel_config,
    uploads,
    wait_for,
    write_config,
)


def test_sentinel_target_syncs_the_same_misp_data(standins, tmp_path, capsys):
    run = run_cli(sentinel_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    expected = expected_stix_ids(standins.misp.events)
    assert active_ids(standins) == expected and len(expected) > 250
    assert set(standins.sentinel.sources.values()) == {"MISP"}
    assert all(len(r.json["stixobjects"]) <= 100 for r in uploads(standins))
    assert standins.graph.requests_seen == [] and standins.sentinel.throttled == 0
    first = next(iter(standins.sentinel.objects.values()))
    assert first["external_references"][0]["url"].startswith(standins.misp.url + "/events/view/")
    before = len(standins.sentinel.requests_seen)
    again = run_cli(sentinel_config(tmp_path, standins), capsys=capsys)
    assert again.code == ExitCode.OK and uploads(standins, before) == []


def test_rejected_objects_are_logged_with_sentinels_messages(standins, tmp_path, capsys):
    transformer = StixTransformer(MappingPolicy(), dt.datetime.now(dt.UTC))
    victim = next(obj for wrapped in standins.misp.events if wrapped["Event"].get("published") is True
                  for obj in transformer.transform(wrapped).indicators if obj["pattern"].startswith("[ipv4-addr"))
    standins.sentinel.reject_value(victim["name"], "Indicator is on the allow list")
    run = run_cli(sentinel_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.REJECTED
    rejected = [item for error in run.logs("error") for item in error.get("rejected", [])]
    assert [r["indicator"]["pattern"] for r in rejected] == [victim["pattern"]]
    assert "allow list" in rejected[0]["reason"]
    assert active_ids(standins) == expected_stix_ids(standins.misp.events) - {rejected[0]["key"]}


def test_throttled_uploads_wait_as_told_and_lose_nothing(standins, tmp_path, capsys, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("ms_client.time.sleep", waits.append)
    standins.sentinel.fail_next(429, headers={"Retry-After": "7"}, times=1)
    standins.sentinel.fail_next(429, times=1)
    run = run_cli(sentinel_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.OK
    assert waits[:2] == [7.0, 1.0]  # the header, then the "Try again in N seconds" text
    assert active_ids(standins) == expected_stix_ids(standins.misp.events)


def test_rate_limiter_sleeps_only_when_the_window_is_full():
    limiter = RateLimiter(per_minute=3, window=0.3)
    started = time.monotonic()
    for _ in range(3):
        limiter.acquire()
        limiter.release()
    assert time.monotonic() - started < 0.05
    limiter.acquire()
    assert 0.25 < time.monotonic() - started < 0.6


def test_edit_moves_modified_forward_and_keeps_created(standins, tmp_path, capsys):
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    attribute = next(a for a in standins.misp.events[0]["Event"]["Attribute"] if a.get("to_ids") and a["type"] == "md5")
    attribute["comment"] = "seen again"
    (oid,) = expected_stix_ids([{"Event": {**standins.misp.events[0]["Event"], "Attribute": [attribute], "Object": []}}])
    before_obj = dict(standins.sentinel.objects[oid])
    time.sleep(0.01)
    before = len(standins.sentinel.requests_seen)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    after_obj = standins.sentinel.objects[oid]
    assert [len(r.json["stixobjects"]) for r in uploads(standins, before)] == [1]
    assert after_obj["modified"] > before_obj["modified"] and after_obj["created"] == before_obj["created"]
    assert after_obj["valid_from"] == before_obj["valid_from"] and after_obj["description"].endswith("seen again")


def test_attribute_losing_to_ids_is_revoked_and_revival_gets_a_new_id(standins, tmp_path, capsys):
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    event = standins.misp.events[0]["Event"]
    attribute = next(a for a in event["Attribute"] if a.get("to_ids") and a["type"] == "md5")
    (oid,) = expected_stix_ids([{"Event": {**event, "Attribute": [attribute], "Object": []}}])
    attribute["to_ids"] = False
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.OK and run.logs("run-report")[-1]["deleted"] == 1
    assert standins.sentinel.objects[oid]["revoked"] is True
    assert active_ids(standins) == expected_stix_ids(standins.misp.events)
    attribute["to_ids"] = True
    revived = run_cli(config, capsys=capsys)
    assert revived.code == ExitCode.OK, revived.logs("error")
    new_ids = active_ids(standins) - expected_stix_ids(standins.misp.events)
    assert len(new_ids) == 1 and oid not in new_ids and standins.sentinel.objects[oid]["revoked"] is True


def test_one_fetch_feeds_graph_and_a_workspace(standins, tmp_path, capsys):
    run = run_cli(write_config(tmp_path, standins, target=["graph", "sentinel"]), capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert active_ids(standins) == expected_stix_ids(standins.misp.events)
    pages = [r for r in standins.misp.requests_seen if r.path == "/events/restSearch" and not r.json.get("metadata")]
    published = sum(1 for e in standins.misp.events if e["Event"].get("published") is True)
    assert len(pages) == (published + 1) // 2 + 1  # MISP read once, not once per target
    reports = run.logs("run-report")
    assert sorted(r["target"] for r in reports) == ["graph tenant " + standins.tenant,
                                                    "sentinel workspace " + standins.sentinel.workspace_id]
    assert sorted((tmp_path / "state").glob("*.sqlite")) and len(list((tmp_path / "state").glob("*.sqlite"))) == 2


def test_a_failing_workspace_does_not_stop_the_other_targets(standins, tmp_path, capsys):
    targets = ["graph", {"type": "sentinel", "workspace_id": "12345678-0000-0000-0000-000000000000"}]
    run = run_cli(write_config(tmp_path, standins, target=targets), capsys=capsys)
    assert run.code == ExitCode.MICROSOFT
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert "WorkspaceNotFound" in run.err and run.err.count("\n") == 1


def test_read_lists_the_workspace_through_the_management_api(standins, tmp_path, capsys):
    standins.sentinel.page_size = 100
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    listing = run_cli(config, "-r", capsys=capsys)
    assert listing.code == ExitCode.OK
    items = json.loads(listing.out)["value"]
    assert {item["properties"]["externalId"] for item in items} == set(standins.sentinel.objects)
    gets = [r for r in standins.sentinel.requests_seen if r.method == "GET"]
    assert len(gets) >= 2


def test_read_guards_against_a_repeated_next_link(standins, tmp_path, capsys):
    config = sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    standins.sentinel.repeat_next_link = True
    listing = run_cli(config, "-r", capsys=capsys)
    assert listing.code == ExitCode.MICROSOFT and "same nextLink twice" in listing.err


def test_read_without_management_names_says_what_is_missing(standins, tmp_path, capsys):
    run = run_cli(sentinel_config(tmp_path, standins, workspace_name="", resource_group=""), "-r", capsys=capsys)
    assert run.code == ExitCode.CONFIG and "resource_group, workspace_name" in run.err


@pytest.mark.parametrize(("overrides", "named"), [
    ({"sourcesystem": "Microsoft Sentinel"}, "sourcesystem"),
    ({"workspace_id": ""}, "workspace_id"),
    ({"target": "splunk"}, "target"),
    ({"target": ["sentinel", "sentinel"]}, "each once"),
])
def test_bad_sentinel_config_is_exit_2(standins, tmp_path, capsys, overrides, named):
    run = run_cli(write_config(tmp_path, standins, **{"target": "sentinel", **overrides}), capsys=capsys)
    assert run.code == ExitCode.CONFIG and named in run.err
    assert standins.sentinel.requests_seen == [] and standins.misp.requests_seen == []


def test_kill_9_mid_upload_then_the_next_run_converges(standins, tmp_path):
    standins.sentinel.latency = 0.2
    config = sentinel_config(tmp_path, standins)
    process = subprocess.Popen([sys.executable, str(ROOT / "script.py"), "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(uploads(standins)) >= 2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    standins.sentinel.latency = 0.0
    recovered = run_process(config)
    assert recovered.code == ExitCode.OK, recovered.err
    assert active_ids(standins) == expected_stix_ids(standins.misp.events)

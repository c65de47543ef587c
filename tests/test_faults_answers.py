"""Issue 9, class 4 end to end: an ambiguous answer (a garbled 2xx, a submit Graph processed only
after the client gave up) never counts as delivered and never leaves a duplicate for good.

Every run is a separate process, as cron runs it. Injected HTML answers carry `Retry-After: 0`
so the retries of a separate process do not wait out the backoff.
"""
from __future__ import annotations

import collections
import json
import sqlite3

import pytest

from constants import ExitCode
from settings import load_settings
from sync import state_paths
from tests.support import (
    active_ids,
    assert_no_duplicates,
    expected_external_ids,
    expected_stix_ids,
    graph_calls,
    held_external_ids,
    run_process,
    sentinel_config,
    uploads,
    wait_for,
    write_config,
)

NO_WAIT = {"Retry-After": "0"}


def proxy_page(standins) -> str:
    """What a misconfigured proxy answers, echoing a secret it should not have seen."""
    return f"<html><body><h1>Welcome</h1><p>Session for {standins.client_secret} expired</p></body></html>"


def list_requests(standins, since: int = 0) -> int:
    return sum(1 for r in standins.graph.requests_seen[since:] if r.method == "GET")


def test_sentinel_html_200_once_is_retried_and_everything_arrives(standins, tmp_path):
    standins.sentinel.fail_next(200, proxy_page(standins), headers=NO_WAIT, path_suffix=":upload")
    run = run_process(sentinel_config(tmp_path, standins))
    assert run.code == ExitCode.OK, run.err
    assert active_ids(standins) == expected_stix_ids(standins.misp.events)
    report = run.logs("run-report")[-1]
    assert report["accepted"] == report["new"] and report["failed"] == 0
    assert len(uploads(standins)) == -(-report["new"] // 100) + 1


def test_sentinel_html_200_always_fails_the_batches_exit_4(standins, tmp_path):
    standins.sentinel.fail_next(200, proxy_page(standins), headers=NO_WAIT, times=1000, path_suffix=":upload")
    run = run_process(sentinel_config(tmp_path, standins, write_post_json=True))
    assert run.code == ExitCode.MICROSOFT
    assert standins.sentinel.objects == {}
    report = run.logs("run-report")[-1]
    assert report["accepted"] == 0 and report["failed"] == report["new"] > 0
    errors = [error["error"] for error in run.logs("error")]
    assert errors and all("HTTP 200 with a body that is not the documented JSON" in e and "Welcome" in e for e in errors)
    assert standins.client_secret not in run.log_text() + run.out + run.err


@pytest.mark.parametrize("html", [None, "<html><body>502 Bad Gateway</body></html>"], ids=["truncated", "html"])
def test_graph_garbled_200_after_the_work_leaves_no_duplicate(standins, tmp_path, html):
    standins.graph.garble_next(html, path_suffix="/submitTiIndicators")
    config = write_config(tmp_path, standins)
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert_no_duplicates(standins)
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    before = len(standins.graph.requests_seen)
    again = run_process(config)
    assert again.code == ExitCode.OK, again.err
    assert graph_calls(standins, before) == {}
    assert_no_duplicates(standins)


def test_graph_late_copy_is_removed_by_the_next_run(standins, tmp_path):
    standins.graph.process_late(4.5, path_suffix="/submitTiIndicators")
    config = write_config(tmp_path, standins, http_timeout=1)
    first = run_process(config)
    assert first.code == ExitCode.OK, first.err
    expected = expected_external_ids(standins.misp.events)
    held = next(r for r in standins.graph.requests_seen if r.path.endswith("/submitTiIndicators"))
    late = len(held.json["value"])  # the held submit creates its copies one by one: wait for all of them
    wait_for(lambda: len(standins.graph.indicators) == len(expected) + late, timeout=10)
    before = len(standins.graph.requests_seen)
    healed = run_process(config)
    assert healed.code == ExitCode.OK, healed.err
    assert_no_duplicates(standins)
    assert held_external_ids(standins) == expected
    assert healed.logs("run-report")[-1]["recovered"] == late
    assert graph_calls(standins, before) == {"deleteTiIndicators": 1}


def test_suspects_are_listed_until_a_late_enough_listing_is_clean(standins, tmp_path):
    standins.graph.garble_next(path_suffix="/submitTiIndicators")
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    before = len(standins.graph.requests_seen)
    assert run_process(config).code == ExitCode.OK
    assert list_requests(standins, before) >= 1  # the ambiguous submit was minutes ago at most
    settings = load_settings(config, environ={})
    _, path = state_paths(settings, settings.targets[0])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE suspects SET since = '2000-01-01T00:00:00Z'")
    db.close()
    assert run_process(config).code == ExitCode.OK
    before = len(standins.graph.requests_seen)
    assert run_process(config).code == ExitCode.OK
    assert standins.graph.requests_seen[before:] == []


@pytest.mark.parametrize("kind", ["graph", "sentinel"])
def test_read_retries_a_garbled_page_and_then_fails_in_one_line(standins, tmp_path, kind):
    stand_in, suffix = (standins.graph, "/tiIndicators") if kind == "graph" else (standins.sentinel, "/queryIndicators")
    config = write_config(tmp_path, standins, target=kind)
    assert run_process(config).code == ExitCode.OK
    stand_in.fail_next(200, proxy_page(standins), headers=NO_WAIT, path_suffix=suffix)
    listing = run_process(config, "-r")
    assert listing.code == ExitCode.OK, listing.err
    listed = json.loads(listing.out)["value"]
    held = held_external_ids(standins) if kind == "graph" else set(standins.sentinel.objects)
    keys = [item["externalId"] if kind == "graph" else item["properties"]["externalId"] for item in listed]
    assert collections.Counter(keys) == collections.Counter(held)
    stand_in.fail_next(200, '{"value": [{"id": "cut', headers=NO_WAIT, times=100, path_suffix=suffix)
    garbled = run_process(config, "-r")
    assert garbled.code == ExitCode.MICROSOFT
    assert garbled.err.count("\n") == 1 and "HTTP 200 with a body that is not the documented JSON" in garbled.err
    assert '{"value": [{"id": "cut' in garbled.err

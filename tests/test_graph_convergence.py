"""Graph end to end: it converges on exactly what MISP wants, and no fault (a retry, a kill, an
expired token, an overlapping cron run) breaks that."""
from __future__ import annotations

import functools
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from constants import ExitCode
from settings import load_settings
from state_store import target_lock
from sync import state_paths
from tests.support import (
    ROOT,
    assert_no_duplicates,
    expected_external_ids,
    graph_calls,
    held_external_ids,
    run_cli,
    run_process,
    start,
    wait_for,
    write_config,
)

INDICATOR_CALLS = ("submitTiIndicators", "updateTiIndicators", "deleteTiIndicators", "deleteTiIndicatorsByExternalId")


def event(standins, info_start: str) -> dict:
    return next(e["Event"] for e in standins.misp.events if e["Event"]["info"].startswith(info_start))


def ids_attributes(misp_event: dict) -> list[dict]:
    return [a for a in misp_event.get("Attribute", []) if a.get("to_ids") is True]


@pytest.mark.parametrize("full", [False, True])
def test_second_identical_run_sends_no_indicator_request(standins, tmp_path, capsys, full):
    """An incremental night reads no event in full; a full read plans every one as unchanged."""
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    before = len(standins.graph.requests_seen)
    second = run_cli(config, *(["--full"] if full else []), capsys=capsys)
    assert second.code == ExitCode.OK
    assert graph_calls(standins, before) == {}
    report = second.logs("run-report")[-1]
    assert report["requests"] == 0 and report["deleted"] == 0
    assert report["run_kind"] == ("full" if full else "incremental") and report["events_listed"] == 4
    if full:
        assert report["unchanged"] == report["indicators"] > 250 and report["events_read_in_full"] == 4
    else:
        assert report["indicators"] == report["events_read_in_full"] == 0


def test_scenario_add_edit_unflag_delete_unpublish_converges(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    asert = event(standins, "OSINT - ASERT")
    held = held_external_ids(standins)
    attributes = [a for a in ids_attributes(asert) if a["uuid"] in held]  # ones that became indicators
    edited_comment, edited_value, unflagged, deleted = attributes[0], attributes[1], attributes[2], attributes[3]
    edited_comment["comment"] = "analyst note added later"
    edited_value["type"], edited_value["value"] = "domain", "changed-value.example"
    unflagged["to_ids"] = False
    deleted["deleted"] = True
    asert["Attribute"].append({"uuid": "22222222-0000-4000-8000-000000000001", "type": "domain",
                               "value": "brand-new.example", "to_ids": True})
    asert["Attribute"].append({"uuid": "22222222-0000-4000-8000-000000000002", "type": "ip-src",
                               "value": "203.0.113.50", "to_ids": True})
    unpublished = event(standins, "Ransomware - Xorist")
    unpublished["published"] = False
    before = len(standins.graph.requests_seen)

    run = run_cli(config, capsys=capsys)

    assert run.code == ExitCode.OK, run.err
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert_no_duplicates(standins)
    report = run.logs("run-report")[-1]
    gone_from_xorist = len(expected_external_ids([{"Event": {**unpublished, "published": True}}]))
    # MISP moved ASERT's timestamp with the edits and lastReportedDateTime carries it (mapping.md),
    # so every indicator of ASERT that stays is updated, the edited comment among them
    updated = len(expected_external_ids([{"Event": asert}])) - 2 - 1
    assert (report["new"], report["update"], report["replace"]) == (2, updated, 1)
    assert report["deleted"] == 2 + gone_from_xorist
    calls = graph_calls(standins, before)
    # the new batch first removes any copy the state does not know of; the replacement removes
    # every copy under its externalId before submitting
    assert calls == {"submitTiIndicators": 2, "updateTiIndicators": -(-updated // 100), "deleteTiIndicators": 1,
                     "deleteTiIndicatorsByExternalId": 2}
    updated = next(i for i in standins.graph.indicators.values() if i["externalId"] == edited_comment["uuid"])
    assert "analyst note added later" in updated["additionalInformation"]


def test_event_leaving_the_time_window_is_kept_until_it_expires(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins, misp_event_filters={"publish_timestamp": 1400000000})
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    held = held_external_ids(standins)
    narrower = write_config(tmp_path, standins, misp_event_filters={"publish_timestamp": 1500000000})
    before = len(standins.graph.requests_seen)
    run = run_cli(narrower, capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert held_external_ids(standins) == held and graph_calls(standins, before) == {}
    assert run.logs("run-report")[-1]["kept_outside_window"] == 4
    alive_checks = [r.json for r in standins.misp.requests_seen
                    if r.json and r.json.get("metadata") == 1 and "publish_timestamp" not in r.json]
    assert alive_checks and all("publish_timestamp" not in body and body["published"] is True for body in alive_checks)


def test_expiry_is_extended_inside_the_renewal_window(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins, days_to_expire=10, renew_days=10)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    first_expiry = {i["externalId"]: i["expirationDateTime"] for i in standins.graph.indicators.values()}
    time.sleep(1.1)
    before = len(standins.graph.requests_seen)
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.OK
    assert run.logs("run-report")[-1]["renew"] == len(first_expiry)
    assert set(graph_calls(standins, before)) == {"updateTiIndicators"}
    assert all(i["expirationDateTime"] > first_expiry[i["externalId"]] for i in standins.graph.indicators.values())
    quiet = write_config(tmp_path, standins, days_to_expire=10, renew_days=2)
    before = len(standins.graph.requests_seen)
    assert run_cli(quiet, capsys=capsys).code == ExitCode.OK and graph_calls(standins, before) == {}


def test_safety_valve_blocks_mass_deletion_until_allowed(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    held = held_external_ids(standins)
    standins.misp.events[:] = [e for e in standins.misp.events if e["Event"]["info"].startswith("Ransomware - Xorist")]
    blocked = run_cli(config, capsys=capsys)
    assert blocked.code == ExitCode.SAFETY_VALVE
    assert held_external_ids(standins) == held
    assert "max_delete_fraction" in blocked.logs("error")[-1]["error"] and "DELETIONS BLOCKED" in blocked.out
    allowed = run_cli(config, "--allow-mass-delete", capsys=capsys)
    assert allowed.code == ExitCode.OK
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def test_misp_failure_mid_fetch_removes_nothing(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    held = held_external_ids(standins)
    del standins.misp.events[0]
    standins.misp.fail_page(2, "500")
    before = len(standins.graph.requests_seen)
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.MISP
    assert held_external_ids(standins) == held
    assert "deleteTiIndicators" not in graph_calls(standins, before)
    standins.misp.clear_faults()
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def test_rebuild_state_after_loss_duplicates_nothing(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    some = next(iter(standins.graph.indicators.values()))
    copy = {k: v for k, v in some.items() if k not in ("id", "azureTenantId", "ingestedDateTime")}
    standins.graph.indicators["f" * 64] = copy | {"id": "f" * 64}
    standins.graph.owners["f" * 64] = standins.client_id
    standins.graph._sequence["f" * 64] = 10**6
    for path in (tmp_path / "state").glob("*.sqlite"):
        path.unlink()
    rebuilt = run_cli(config, "--rebuild-state", capsys=capsys)
    assert rebuilt.code == ExitCode.OK and "1 duplicate copies removed" in rebuilt.out
    assert_no_duplicates(standins)
    before = len(standins.graph.requests_seen)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert graph_calls(standins, before) == {}


def test_ambiguous_timeout_on_submit_leaves_no_duplicate(standins, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ms_client.MAX_WAIT_SECONDS", 0.0)
    standins.graph.delay_next(0.0)  # the first run's read-back of the (empty) listing
    standins.graph.delay_next(2.5)
    run = run_cli(write_config(tmp_path, standins, http_timeout=1), capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert_no_duplicates(standins)
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert graph_calls(standins)["deleteTiIndicatorsByExternalId"] >= 1


def test_throttling_without_retry_after_backs_off_and_loses_nothing(standins, tmp_path, capsys, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("ms_client.time.sleep", waits.append)
    standins.graph.fail_next(429, times=3, path_suffix="submitTiIndicators")
    run = run_cli(write_config(tmp_path, standins, max_concurrent_requests=1), capsys=capsys)
    assert run.code == ExitCode.OK
    assert len(waits) == 3 and waits[0] < waits[1] < waits[2] <= 120
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def test_token_revoked_mid_run_is_renewed(standins, tmp_path, capsys):
    standins.graph.expire_tokens_after(1)
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert standins.entra.token_requests == 2
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def test_token_endpoint_error_is_reported_once(standins, tmp_path, capsys):
    standins.entra.fail_token(503, {"error": "temporarily_unavailable"}, times=10)
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.MICROSOFT
    assert run.err.count("\n") == 1 and "token endpoint" in run.err


def test_second_run_while_first_holds_the_lock_exits_7(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    settings = load_settings(config, environ={})
    lock, _ = state_paths(settings, settings.targets[0])
    assert lock.parent == tmp_path / "state"
    with target_lock(lock):
        run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.LOCKED and "another misp2sentinel run" in run.err
    assert standins.misp.requests_seen == []


def test_overlapping_cron_runs(standins, tmp_path, monkeypatch):
    """The first run's first submit is held in Graph until the second run has ended: the first
    holds its lock for the whole of the second, however slow the machine (a barrier, no sleeps)."""
    holding, release = threading.Event(), threading.Event()
    answer = standins.graph.respond

    def held_first_submit(request):
        if request.path.endswith("/submitTiIndicators") and not holding.is_set():
            holding.set()
            release.wait(timeout=300)
        return answer(request)

    monkeypatch.setattr(standins.graph, "respond", held_first_submit)
    config = write_config(tmp_path, standins, http_timeout=600)  # the held request outwaits a slow second run
    first = subprocess.Popen([sys.executable, str(ROOT / "script.py"), "--config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holding.wait(timeout=120), "the first run never reached Graph"
        second = run_process(config)
    finally:
        release.set()
    assert second.code == ExitCode.LOCKED, second.err
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == ExitCode.OK, first_err
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def _submits_reach(standins: Any, count: int) -> bool:
    return graph_calls(standins)["submitTiIndicators"] >= count


def test_kill_9_at_any_point_then_the_next_run_converges(standins, tmp_path):
    standins.graph.latency = 0.15
    config = write_config(tmp_path, standins)
    for submits_before_kill in (1, 2, 1):
        process = start(config)
        enough = graph_calls(standins)["submitTiIndicators"] + submits_before_kill
        wait_for(functools.partial(_submits_reach, standins, enough))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    standins.graph.latency = 0.0
    recovered = run_process(config)
    assert recovered.code == ExitCode.OK, recovered.err
    assert_no_duplicates(standins)
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert recovered.logs("run-report")[-1]["recovered"] > 0
    # and a kill while deleting what MISP dropped
    standins.misp.events[:] = standins.misp.events[1:]
    standins.graph.latency = 0.3
    process = start(config, "--allow-mass-delete")
    wait_for(lambda: graph_calls(standins)["deleteTiIndicators"] >= 1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    standins.graph.latency = 0.0
    assert run_process(config, "--allow-mass-delete").code == ExitCode.OK
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def test_files_are_private_and_old_logs_are_pruned(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins, log_retention_days=30)
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    old = logs / "misp2sentinel_20200101T000000.000000Z_error_00001.json"
    old.write_text("{}")
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    keep = logs / "operator-notes.txt"
    keep.write_text("mine")
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert not old.exists() and keep.exists()
    for path in [*logs.glob("*.json"), *(tmp_path / "state").glob("*.sqlite")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700

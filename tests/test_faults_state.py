"""Issue 9, classes 2, 3, 6, 7 and 9: the state never orphans, never duplicates and stays true
after kills, lost files, clock jumps and -d; one target's failure leaves the others alone.

Every test drives script.py as a separate process against the HTTPS stand-ins, as cron does.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import time

import pytest

from constants import ExitCode
from tests.support import (
    active_ids,
    active_keys,
    assert_no_duplicates,
    expected_external_ids,
    expected_stix_ids,
    graph_calls,
    held_external_ids,
    run_process,
    sentinel_config,
    shift_previous_run,
    start,
    store_file,
    uploads,
    wait_for,
    write_config,
)


def first_ids_attribute(standins) -> dict:
    return next(a for e in standins.misp.events if e["Event"].get("published") is True
                for a in e["Event"]["Attribute"] if a.get("to_ids") is True and a["type"] in ("ip-dst", "domain", "url"))


# --- class 2: a Sentinel upload the tool never recorded is still owned --------------------------

def test_sentinel_upload_killed_before_it_was_recorded_is_revoked_when_misp_drops_it(standins, tmp_path):
    config = sentinel_config(tmp_path, standins)
    standins.sentinel.latency = 1.0  # the workspace stores each upload, then answers late
    process = start(config)
    wait_for(lambda: len(standins.sentinel.objects) > 0)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stored = set(standins.sentinel.objects)
    standins.sentinel.latency = 0.0
    standins.misp.events[:] = []
    run = run_process(config, "--allow-mass-delete")
    assert run.code == ExitCode.OK, run.err
    assert stored and active_ids(standins) == set()


def test_revocations_killed_in_flight_are_finished_in_batches_by_the_next_run(standins, tmp_path):
    config = sentinel_config(tmp_path, standins, max_delete_fraction=1.0)
    assert run_process(config).code == ExitCode.OK
    assert len(standins.sentinel.objects) > 200  # so more than 100 revocations are left half done
    standins.misp.events[:] = []
    standins.sentinel.latency = 1.0
    process = start(config)
    wait_for(lambda: any(obj.get("revoked") for obj in standins.sentinel.objects.values()))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    standins.sentinel.latency = 0.0
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert active_ids(standins) == set() and all(len(r.json["stixobjects"]) <= 100 for r in uploads(standins))


# --- class 3: lost state never duplicates, never sends blind -------------------------------------

def _delete_folder(tmp_path, config):
    shutil.rmtree(tmp_path / "state")
    return config


def _truncate(tmp_path, config):
    store_file(tmp_path, "graph").write_bytes(b"")
    return config


def _damage(tmp_path, config):
    path = store_file(tmp_path, "graph")
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))
    return config


def _state_named_in_capitals(tmp_path, config):
    """As an earlier version named the file for a config whose ids were written in capitals."""
    path = store_file(tmp_path, "graph")
    path.rename(path.with_name(path.name.upper().replace(".SQLITE", ".sqlite")))
    return config


def _config_moved(tmp_path, config):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("config.py", ".env"):
        shutil.copy(tmp_path / name, moved / name)
    return moved / "config.py"


@pytest.mark.parametrize(("loss", "rebuilt"), [(_delete_folder, True), (_truncate, True), (_damage, True),
                                                (_state_named_in_capitals, False), (_config_moved, True)])
def test_lost_graph_state_is_rebuilt_from_graph_before_planning(standins, tmp_path, loss, rebuilt):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    held = held_external_ids(standins)
    before = len(standins.graph.requests_seen)
    run = run_process(loss(tmp_path, config))
    assert run.code == ExitCode.OK, run.err
    assert len(standins.graph.indicators) == len(held) and held_external_ids(standins) == held
    assert "submitTiIndicators" not in graph_calls(standins, before)
    assert (f"STATE REBUILT from the service: {len(held)} indicators" in run.out) is rebuilt


def test_lost_sentinel_state_keeps_created_and_gives_a_revived_attribute_a_fresh_id(standins, tmp_path):
    config = sentinel_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    victim = first_ids_attribute(standins)
    victim["deleted"] = True
    assert run_process(config).code == ExitCode.OK
    created = {stix: obj["created"] for stix, obj in standins.sentinel.objects.items()}
    shutil.rmtree(tmp_path / "state")
    victim["deleted"] = False
    before = len(standins.sentinel.requests_seen)
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert "STATE REBUILT" in run.out
    sent = [obj for r in uploads(standins, before) for obj in r.json["stixobjects"]]
    assert len(sent) == 1 and sent[0]["id"] not in created  # only the revival, under a new id
    assert all(standins.sentinel.objects[stix]["created"] == when for stix, when in created.items())
    assert set(active_keys(standins)) == expected_stix_ids(standins.misp.events)


def test_sentinel_without_state_or_management_settings_stops_with_a_fix(standins, tmp_path):
    config = sentinel_config(tmp_path, standins, subscription_id="")
    run = run_process(config)
    assert run.code == ExitCode.CONFIG
    assert run.err.count("\n") == 1 and "subscription_id" in run.err and "cannot be rebuilt" in run.err
    assert uploads(standins) == []


def test_rebuild_state_for_sentinel_then_sync_sends_nothing(standins, tmp_path):
    config = sentinel_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    shutil.rmtree(tmp_path / "state")
    rebuilt = run_process(config, "--rebuild-state")
    assert rebuilt.code == ExitCode.OK, rebuilt.err
    assert f"{len(standins.sentinel.objects)} indicators" in rebuilt.out
    before = len(standins.sentinel.requests_seen)
    assert run_process(config).code == ExitCode.OK and uploads(standins, before) == []


# --- class 6: the clock -------------------------------------------------------------------------

@pytest.mark.parametrize(("days", "expired"), [(1, False), (-70, True)], ids=["clock-behind", "clock-70-days-ahead"])
def test_clock_jump_forgets_and_removes_nothing_that_run(standins, tmp_path, days, expired):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    held = held_external_ids(standins)
    dropped = first_ids_attribute(standins)
    dropped["deleted"] = True
    shift_previous_run(store_file(tmp_path, "graph"), days, expired)
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert "clock" in run.err and "nothing was forgotten or removed" in run.err
    assert held_external_ids(standins) == held
    report = run.logs("run-report")[-1]
    assert report["deleted"] == report["forgotten_expired"] == 0 and report["clock_problem"]
    again = run_process(config)  # the clock is trusted again against this run's start
    assert again.code == ExitCode.OK and again.err == ""
    report = again.logs("run-report")[-1]
    if expired:  # its expiry (as the jumped clock saw it) has passed: the service expired it
        assert (report["deleted"], report["forgotten_expired"]) == (0, 1)
    else:
        assert report["deleted"] == 1 and held_external_ids(standins) == held - {dropped["uuid"]}


def test_clock_far_ahead_does_not_prune_the_logs(standins, tmp_path):
    config = write_config(tmp_path, standins, log_retention_days=30)
    assert run_process(config).code == ExitCode.OK
    written = sorted((tmp_path / "logs").iterdir())
    past = time.time() - 70 * 86400  # the logs and the last run, as a clock 70 days ahead sees them
    for path in written:
        os.utime(path, (past, past))
    shift_previous_run(store_file(tmp_path, "graph"), -70, expired=False)
    run = run_process(config)
    assert run.code == ExitCode.OK and "clock" in run.err
    assert all(path.exists() for path in written)


def test_sentinel_modified_moves_past_the_last_version_when_the_clock_is_behind(standins, tmp_path):
    config = sentinel_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for obj in standins.sentinel.objects.values():  # the last versions came from a clock 10 minutes ahead
        obj["modified"] = ahead
    with sqlite3.connect(store_file(tmp_path, "sentinel")) as db:
        for key, body in db.execute("SELECT external_id, body FROM indicators").fetchall():
            db.execute("UPDATE indicators SET body = ? WHERE external_id = ?", (json.dumps({**json.loads(body), "modified": ahead}), key))
    edited = first_ids_attribute(standins)
    edited["comment"] = "seen again by the SOC"
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    changed = [obj for obj in standins.sentinel.objects.values() if "seen again by the SOC" in obj.get("description", "")]
    assert len(changed) == 1 and changed[0]["modified"] > ahead


# --- class 7: -d keeps the state true ----------------------------------------------------------

def test_delete_by_graph_id_is_sent_again_by_the_next_sync(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    graph_id, item = next(iter(standins.graph.indicators.items()))
    deleted = run_process(config, "-d", graph_id)
    assert deleted.code == ExitCode.OK and f"{graph_id}: deleted" in deleted.out
    assert item["externalId"] not in held_external_ids(standins)
    assert run_process(config).code == ExitCode.OK
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def test_delete_by_stix_id_revokes_and_the_next_sync_revives_under_a_fresh_id(standins, tmp_path):
    config = sentinel_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    stix = sorted(active_ids(standins))[0]
    deleted = run_process(config, "-d", stix)
    assert deleted.code == ExitCode.OK, deleted.err
    assert standins.sentinel.objects[stix]["revoked"] is True
    unknown = run_process(config, "-d", "indicator--00000000-0000-4000-8000-000000000000")
    assert unknown.code == ExitCode.REJECTED and "not deleted" in unknown.out
    assert run_process(config).code == ExitCode.OK
    keys = active_keys(standins)
    assert set(keys) == expected_stix_ids(standins.misp.events) and set(keys.values()) == {1}
    assert stix not in active_ids(standins)


# --- class 9: one target failing does not stop the others -----------------------------------------

def test_one_targets_refused_token_leaves_the_other_target_syncing(standins, tmp_path):
    standins.entra.resources.discard(standins.sentinel.url)
    run = run_process(write_config(tmp_path, standins, target=["graph", "sentinel"]))
    assert run.code == ExitCode.MICROSOFT
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert "AADSTS500011" in run.err and run.err.count("\n") == 1
    assert_no_duplicates(standins)

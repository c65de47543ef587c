"""Issue 9, found by a red-team review of the fix: -d interrupted or answered late, a killed
run's submit processed late, a second workspace inheriting the first one's names, pending rows
refused on re-upload, ids revoked outside the state, a state restored from a backup, and
--rebuild-state over an unreadable store. Each drives script.py as a real process against the
HTTPS stand-ins, and each failed before its fix."""
from __future__ import annotations

import collections
import os
import shutil
import signal
import time

from constants import ExitCode
from standins import SentinelStandIn
from tests.support import (
    active_ids,
    active_keys,
    expected_external_ids,
    expected_stix_ids,
    graph_calls,
    held_external_ids,
    run_process,
    sentinel_config,
    start,
    store_file,
    wait_for,
    write_config,
)


def kill(process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def duplicates(standins) -> list[str]:
    counts = collections.Counter(item["externalId"] for item in standins.graph.indicators.values())
    return [key for key, n in counts.items() if n > 1]


# --- 1. -d killed after the service acted, before the state was written -------------------------

def test_graph_delete_killed_after_graph_deleted_is_sent_again_by_the_next_sync(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    graph_id = next(iter(standins.graph.indicators))
    standins.graph.latency = 3.0  # Graph deletes, then answers late
    process = start(config, "-d", graph_id)
    wait_for(lambda: graph_id not in standins.graph.indicators)
    kill(process)
    standins.graph.latency = 0.0
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    # MISP still wants it: the sync must re-create it (the state still says "sent, unchanged")
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def test_sentinel_delete_killed_after_the_revocation_is_revived_by_the_next_sync(standins, tmp_path):
    config = sentinel_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    stix = sorted(active_ids(standins))[0]
    standins.sentinel.latency = 3.0  # the workspace stores the revocation, then answers late
    process = start(config, "-d", stix)
    wait_for(lambda: standins.sentinel.objects[stix].get("revoked") is True)
    kill(process)
    standins.sentinel.latency = 0.0
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert set(active_keys(standins)) == expected_stix_ids(standins.misp.events)


# --- 2. -d whose first answer is lost: the retry is refused as "revoked" ---------------------------

def test_sentinel_delete_whose_answer_was_lost_records_the_revocation(standins, tmp_path):
    config = sentinel_config(tmp_path, standins, http_timeout=1)
    assert run_process(config).code == ExitCode.OK
    stix = sorted(active_ids(standins))[0]
    original, calls = standins.sentinel._upload, []

    def slow_once(*args):
        reply = original(*args)  # the revocation is stored ...
        calls.append(1)
        if len(calls) == 1:
            time.sleep(2.5)  # ... and its answer comes after the client gave up
        return reply

    standins.sentinel._upload = slow_once
    deleted = run_process(config, "-d", stix)
    assert standins.sentinel.objects[stix]["revoked"] is True
    assert deleted.code == ExitCode.OK, deleted.out + deleted.err  # it is revoked: that is what -d asked
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert set(active_keys(standins)) == expected_stix_ids(standins.misp.events)


# --- 3. a killed run's submit that Graph processes late duplicates for good -----------------------

def test_graph_submit_processed_after_the_run_was_killed_is_deduplicated(standins, tmp_path):
    config = write_config(tmp_path, standins)
    standins.graph.process_late(8.0, path_suffix="submitTiIndicators")  # held, then done
    process = start(config)
    wait_for(lambda: graph_calls(standins)["submitTiIndicators"] >= 1)
    time.sleep(0.3)
    kill(process)
    held_since = time.monotonic()
    recovered = run_process(config)  # recovers the pending rows and submits them again
    assert recovered.code == ExitCode.OK, recovered.err
    time.sleep(max(0.0, 9.0 - (time.monotonic() - held_since)))  # the killed run's submit lands now
    for _ in range(2):
        assert run_process(config).code == ExitCode.OK
    assert duplicates(standins) == []


# --- 4. a second workspace inherits the first one's management names and adopts its objects -------

SECOND_WORKSPACE = "77777777-6666-5555-4444-333333333333"


def second_workspace(standins) -> SentinelStandIn:
    """A second workspace on the same hosts (as in Azure): same upload/management endpoints,
    another workspace id, resource group and name. The first stand-in routes its requests."""
    other = SentinelStandIn(standins.entra, SECOND_WORKSPACE, standins.sentinel.subscription_id, "rg-two", "law-two")
    other._authenticate = standins.sentinel._authenticate  # type: ignore[method-assign]  # tokens for the shared host
    first_respond = standins.sentinel.respond

    def respond(request):
        if SECOND_WORKSPACE in request.path or "/resourceGroups/rg-two/" in request.path:
            return other._serve(request)
        return first_respond(request)

    standins.sentinel.respond = respond
    return other


def test_added_workspace_without_its_own_names_is_not_adopted_from_the_first(standins, tmp_path):
    other = second_workspace(standins)
    assert run_process(sentinel_config(tmp_path, standins)).code == ExitCode.OK  # months of syncing W1
    config = write_config(tmp_path, standins, target=["sentinel", {"type": "sentinel", "workspace_id": SECOND_WORKSPACE}])
    run = run_process(config)  # the operator adds a second workspace, as README "target" shows
    # either refuse the config (its queryIndicators would read workspace 1) or fill workspace 2
    assert run.code == ExitCode.CONFIG or {i for i, o in other.objects.items() if not o.get("revoked")} == \
        expected_stix_ids(standins.misp.events), (run.code, len(other.objects), run.out)


# --- 5. a pending Sentinel row whose re-upload is refused is forgotten, its earlier copy orphaned --

def test_sentinel_pending_row_refused_on_reupload_is_still_revoked_when_misp_drops_it(standins, tmp_path):
    config = sentinel_config(tmp_path, standins)
    standins.sentinel.latency = 1.0  # each upload is stored, then answered late
    process = start(config)
    wait_for(lambda: len(standins.sentinel.objects) > 0)
    kill(process)
    stored = set(standins.sentinel.objects)
    standins.sentinel.latency = 0.0
    standins.sentinel.fail_next(400, body={"statusCode": 400, "message": "Bad Request"}, times=50, path_suffix=":upload")
    refused = run_process(config)  # the pending rows are uploaded again and refused
    assert refused.code == ExitCode.REJECTED
    standins.sentinel._faults.clear()
    standins.misp.events[:] = []
    run = run_process(config, "--allow-mass-delete")
    assert run.code == ExitCode.OK, run.err
    assert stored and active_ids(standins) & stored == set()  # what run 1 stored must be revoked


# --- 6. an object revoked outside the state is refused at every renewal, never revived -----------

def test_sentinel_object_revoked_outside_the_state_is_revived_not_refused_forever(standins, tmp_path):
    assert run_process(sentinel_config(tmp_path, standins)).code == ExitCode.OK
    stix = sorted(active_ids(standins))[0]
    standins.sentinel.objects[stix]["revoked"] = True  # the portal, another host's -d, or a killed -d
    config = sentinel_config(tmp_path, standins, days_to_expire=400, renew_days=400)  # every run renews
    codes = [run_process(config).code for _ in range(2)]
    assert codes == [ExitCode.OK, ExitCode.OK]  # was [1, 1], and on every later run
    assert set(active_keys(standins)) == expected_stix_ids(standins.misp.events)


# --- 7. a state file restored from a backup duplicates what was submitted since -------------------

def test_graph_state_restored_from_a_backup_does_not_duplicate(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    shutil.copy(store_file(tmp_path, "graph"), tmp_path / "backup.sqlite")
    standins.misp.events[0]["Event"]["Attribute"].append(
        {"uuid": "22222222-0000-4000-8000-000000000001", "type": "domain", "value": "brand-new.example", "to_ids": True})
    assert run_process(config).code == ExitCode.OK
    shutil.copy(tmp_path / "backup.sqlite", store_file(tmp_path, "graph"))  # a VM snapshot / backup restore
    for _ in range(2):
        assert run_process(config).code == ExitCode.OK
    assert duplicates(standins) == []


# --- 8. --rebuild-state refuses the one case it is for: an unreadable store ------------------------

def test_rebuild_state_over_an_unreadable_store_rebuilds_it(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    path = store_file(tmp_path, "graph")
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))
    rebuilt = run_process(config, "--rebuild-state")
    assert rebuilt.code == ExitCode.OK, rebuilt.err  # was exit 2 "state file ... is unreadable"
    assert "state rebuilt from the service" in rebuilt.out

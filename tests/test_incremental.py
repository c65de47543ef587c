"""Issue 11 point 4: incremental nights read in full only the events whose clocks changed, and
converge to what a full read gives; a full read comes round every full_resync_days, on
--full, on new settings and after a clock problem. The tool runs as cron starts it.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import sqlite3
from typing import Any

import pytest

from constants import ExitCode
from standins import StandIns
from tests.support import (
    expected_external_ids,
    graph_calls,
    held_external_ids,
    published,
    run_process,
    search_bodies,
    shift_previous_run,
    store_file,
    write_config,
)


def full_bodies(standins: Any, since: int = 0) -> list[dict[str, Any]]:
    """The restSearch bodies after `since` that asked for full events (not the listing)."""
    return [body for body in search_bodies(standins)[since:] if not body.get("metadata")]


def new_attribute(uuid_tail: str, value: str) -> dict[str, Any]:
    return {"uuid": f"33333333-0000-4000-8000-{uuid_tail:0>12}", "type": "domain", "value": value, "to_ids": True,
            "timestamp": "1700000000"}


def report_of(run: Any) -> dict[str, Any]:
    return run.logs("run-report")[-1]


def test_an_incremental_night_reads_only_the_changed_event(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    changed = published(standins)[2]
    changed.setdefault("Attribute", []).append(new_attribute("1", "only-change.example"))
    since, graph_before = len(search_bodies(standins)), len(standins.graph.requests_seen)
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert [body["uuid"] for body in full_bodies(standins, since)] == [[changed["uuid"]]]
    report = report_of(run)
    assert (report["run_kind"], report["events_listed"], report["events_read_in_full"], report["new"]) == ("incremental", 4, 1, 1)
    assert report["deleted"] == 0 and held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert graph_calls(standins, graph_before)["submitTiIndicators"] == 1
    assert "run: incremental read (only changed events), 1 of 4 listed events read in full" in run.out


def test_a_synced_event_with_an_old_timestamp_is_read(standins, tmp_path):
    """A global `timestamp > last run` cursor misses an event synced from another MISP, which
    keeps its older timestamp (lifecycle.md section 2); a per-event comparison does not."""
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    synced = copy.deepcopy(published(standins)[0])
    synced.update(uuid="44444444-0000-4000-8000-000000000001", id="9001", timestamp="1300000000", Object=[],
                  Attribute=[new_attribute("2", "synced-old.example")])
    standins.misp.events.append({"Event": synced})
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert report_of(run)["events_read_in_full"] == 1 and "33333333-0000-4000-8000-000000000002" in held_external_ids(standins)


def _shift_full_read(config: Any, days: int) -> None:
    path = store_file(config.parent, "graph")
    with sqlite3.connect(path) as db:
        (last,) = db.execute("SELECT value FROM meta WHERE key = 'full_read'").fetchone()
        moved = dt.datetime.fromisoformat(last.replace("Z", "+00:00")) - dt.timedelta(days=days)
        db.execute("UPDATE meta SET value = ? WHERE key = 'full_read'", (moved.strftime("%Y-%m-%dT%H:%M:%SZ"),))


def test_a_full_read_comes_round_every_full_resync_days(standins, tmp_path):
    config = write_config(tmp_path, standins, full_resync_days=7)
    assert run_process(config).code == ExitCode.OK
    _shift_full_read(config, 6)
    assert report_of(run_process(config))["run_kind"] == "incremental"
    _shift_full_read(config, 1)
    run = run_process(config)
    report = report_of(run)
    assert (report["run_kind"], report["full_read_reason"], report["events_read_in_full"]) == (
        "full", "the last full read is 7 or more days old", 4)
    assert report_of(run_process(config))["run_kind"] == "incremental"  # the full read was recorded


def test_new_settings_and_full_flag_read_everything(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    report = report_of(run_process(write_config(tmp_path, standins, defaultConfidenceLevel=70)))
    assert (report["run_kind"], report["full_read_reason"]) == ("full", "the settings or the tool's version changed")
    assert report["update"] == report["indicators"] > 250  # the new confidence reached every indicator
    assert report_of(run_process(config, "--full"))["full_read_reason"] == "--full"


def test_an_event_with_a_rejected_indicator_is_read_again(standins, tmp_path):
    """The service refused one indicator: nothing in MISP changes, but the next night tries again."""
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    changed = published(standins)[1]
    changed.setdefault("Attribute", []).append(new_attribute("3", "refused-once.example"))
    standins.graph.reject_value("refused-once.example", "allow-listed by the tenant")
    first = report_of(run_process(config))
    assert first["rejected"] == 1
    standins.graph._rejected.clear()
    second = run_process(config)
    assert report_of(second)["events_read_in_full"] == 1 and report_of(second)["new"] == 1
    assert "33333333-0000-4000-8000-000000000003" in held_external_ids(standins)
    assert report_of(run_process(config))["events_read_in_full"] == 0


def test_a_failed_upload_leaves_its_event_to_be_read_again(standins, tmp_path):
    config = write_config(tmp_path, standins, target="sentinel")
    assert run_process(config).code == ExitCode.OK
    changed = published(standins)[3]
    changed.setdefault("Attribute", []).append(new_attribute("4", "upload-failed.example"))
    standins.sentinel.fail_next(503, times=20, path_suffix=":upload")
    run = run_process(config)
    assert report_of(run)["failed"] == 1
    standins.sentinel._faults.clear()
    second = run_process(config)
    assert second.code == ExitCode.OK, second.err
    assert report_of(second)["events_read_in_full"] == 1 and report_of(second)["accepted"] == 1


def test_indicators_due_for_renewal_are_read_and_renewed(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with sqlite3.connect(store_file(tmp_path, "graph")) as db:
        (event_uuid,) = db.execute("SELECT event_uuid FROM indicators LIMIT 1").fetchone()
        db.execute("UPDATE indicators SET expires_at = ? WHERE event_uuid = ?", (soon, event_uuid))
        due = db.execute("SELECT COUNT(*) FROM indicators WHERE event_uuid = ?", (event_uuid,)).fetchone()[0]
    since = len(search_bodies(standins))
    report = report_of(run_process(config))
    assert [body["uuid"] for body in full_bodies(standins, since)] == [[event_uuid]]
    assert report["renew"] == due > 0


def test_a_dry_run_keeps_the_unread_events_indicators(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    run = run_process(config, "--dry-run")
    assert run.code == ExitCode.OK, run.err
    assert report_of(run)["deleted"] == 0 and run.logs("dry-run-delete") == []


def _history(servers: StandIns, run: Any) -> None:
    """The same MISP history for both setups: edits, an added and a removed attribute, an
    unpublished event, a new event, each followed by one sync."""
    events = published(servers)
    steps = [
        lambda: next(a for a in events[0]["Attribute"] if a.get("to_ids")).update(comment="edited"),
        lambda: events[1].setdefault("Attribute", []).append(new_attribute("5", "added-later.example")),
        lambda: events[2].update(published=False),
        lambda: next(a for a in events[0]["Attribute"][::-1] if a.get("to_ids")).update(deleted=True),
        lambda: servers.misp.events.append({"Event": {**copy.deepcopy(events[0]), "uuid": "44444444-0000-4000-8000-000000000002",
                                                      "id": "9002", "Object": [], "Attribute": [new_attribute("6", "late.example")]}}),
        lambda: events[2].update(published=True, publish_timestamp=str(int(events[2]["publish_timestamp"]) + 10)),
    ]
    for step in steps:
        step()
        assert run(), "a sync failed"


def _held(servers: StandIns, target: str) -> dict[str, str]:
    """What the target holds, per key, without the fields a run stamps itself."""
    if target == "graph":
        stamped = {"id", "expirationDateTime", "ingestedDateTime", "azureTenantId", "lastReportedDateTime"}
        items = {item["externalId"]: item for item in servers.graph.indicators.values()}
    else:
        stamped = {"modified", "valid_until"}
        items = dict(servers.sentinel.objects)
    return {key: json.dumps({k: v for k, v in item.items() if k not in stamped}, sort_keys=True).replace(servers.misp.url, "MISP")
            for key, item in items.items()}


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_incremental_nights_converge_to_what_full_reads_give(standins, tmp_path, fixture_events, monkeypatch, target):
    incremental = write_config(tmp_path, standins, target=target, max_delete_fraction=1.0)
    assert run_process(incremental).code == ExitCode.OK
    _history(standins, lambda: run_process(incremental).code == ExitCode.OK)
    with StandIns(tmp_path / "full", events=fixture_events) as other:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca_bundle_path))
        always_full = write_config(tmp_path / "full", other, target=target, full_resync_days=0, max_delete_fraction=1.0)
        assert run_process(always_full).code == ExitCode.OK
        _history(other, lambda: run_process(always_full).code == ExitCode.OK)
        assert all(report["run_kind"] == "full" for report in
                   [json.loads(p.read_text()) for p in (tmp_path / "full" / "logs").glob("*_run-report_*.json")])
        assert _held(standins, target) == _held(other, target) and len(_held(standins, target)) > 250


def test_a_changed_event_unpublished_mid_run_keeps_its_indicators(standins, tmp_path):
    """The listing saw the event changed; between the listing and its read by uuid it was
    unpublished: this run cannot read it and removes nothing of it. The next run, which no
    longer lists it, removes its indicators."""
    config = write_config(tmp_path, standins, max_delete_fraction=1.0)
    assert run_process(config).code == ExitCode.OK
    held = held_external_ids(standins)
    changed = published(standins)[1]
    changed.setdefault("Attribute", []).append(new_attribute("7", "mid-run.example"))
    standins.misp.on_page(1, lambda: changed.update(published=False))
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    report = report_of(run)
    assert (report["events_read_in_full"], report["deleted"]) == (0, 0) and report["kept_not_read"] > 0
    assert held_external_ids(standins) == held
    assert report_of(run_process(config))["deleted"] == report["kept_not_read"]
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)


def add_twin(standins: Any, uuid: str, event_id: str, **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new published event holding a copy of the first IDS attribute of the first published
    event: two events then yield one attribute. Returns (that first event, the twin)."""
    source = published(standins)[0]
    twin = copy.deepcopy(source)
    twin.update(uuid=uuid, id=event_id, Object=[], Attribute=[copy.deepcopy(a) for a in source["Attribute"] if a.get("to_ids")][:1],
                **fields)
    standins.misp.events.append({"Event": twin})
    return source, twin


def _owner_and_other(standins: Any, tmp_path: Any, shared: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Of the two events holding attribute `shared`, the one its state row names, then the other."""
    with sqlite3.connect(store_file(tmp_path, "graph")) as db:
        (owner,) = db.execute("SELECT event_uuid FROM indicators WHERE external_id = ?", (shared,)).fetchone()
    holding = [e["Event"] for e in standins.misp.events if any(a.get("uuid") == shared for a in e["Event"].get("Attribute", []))]
    first, second = sorted(holding, key=lambda event: event["uuid"] != owner)
    return first, second


def test_an_attribute_two_events_share_stays_when_one_event_drops_it(standins, tmp_path):
    """Attribute X is in events A and B; the state row names one of them. When that one drops
    X, a full read still finds X in the other event and keeps it: so must an incremental night,
    although the other event did not change."""
    config = write_config(tmp_path, standins)
    _, twin = add_twin(standins, "44444444-0000-4000-8000-000000000003", "9003")
    shared = twin["Attribute"][0]["uuid"]
    assert run_process(config).code == ExitCode.OK and shared in held_external_ids(standins)
    owner, _ = _owner_and_other(standins, tmp_path, shared)
    owner["Attribute"] = [a for a in owner["Attribute"] if a.get("uuid") != shared]
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert report_of(run)["deleted"] == 0 and shared in held_external_ids(standins)
    assert report_of(run_process(config, "--full"))["new"] == 0  # nothing a full read had to bring back


def test_an_event_run_keeps_the_other_events_clocks(standins, tmp_path):
    """`--event` reads one event: the next night still skips every other unchanged event."""
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    one = published(standins)[1]["uuid"]
    assert run_process(config, "--event", one).code == ExitCode.OK
    report = report_of(run_process(config))
    assert (report["run_kind"], report["events_read_in_full"]) == ("incremental", 0)


def test_an_attribute_two_events_share_takes_what_a_full_read_gives(standins, tmp_path):
    """Two events yield attribute X with different event details: the first one MISP lists
    wins on a full read, and must win on an incremental night too (not the first by uuid)."""
    config = write_config(tmp_path, standins)
    source, twin = add_twin(standins, "00000000-0000-4000-8000-000000000004", "9004", info="a twin with another title")
    shared = twin["Attribute"][0]["uuid"]
    assert run_process(config).code == ExitCode.OK
    source["info"] = source["info"] + " (edited)"
    twin["info"] = twin["info"] + " (edited)"
    assert run_process(config, "--full").code == ExitCode.OK
    after_full = _held(standins, "graph")[shared]
    next(a for a in source["Attribute"] if a.get("to_ids") and a["uuid"] != shared).update(comment="edited again")
    published(standins)[1].setdefault("Attribute", []).append(new_attribute("7", "another-change.example"))
    run = run_process(config)
    assert report_of(run)["run_kind"] == "incremental", run.err
    assert _held(standins, "graph")[shared] == after_full


def test_an_attribute_left_to_the_other_event_stays_when_the_first_event_goes(standins, tmp_path):
    """Event A dropped attribute X that event B still has; later A is unpublished. A full read
    keeps X (B yields it): so must the incremental nights, whose state row named A."""
    config = write_config(tmp_path, standins)
    _, twin = add_twin(standins, "44444444-0000-4000-8000-000000000005", "9005")
    shared = twin["Attribute"][0]["uuid"]
    assert run_process(config).code == ExitCode.OK
    owner, _ = _owner_and_other(standins, tmp_path, shared)
    owner["Attribute"] = [a for a in owner["Attribute"] if a.get("uuid") != shared]
    assert run_process(config).code == ExitCode.OK and shared in held_external_ids(standins)
    assert run_process(config).code == ExitCode.OK
    owner.update(published=False)
    run = run_process(config, "--allow-mass-delete")
    assert run.code == ExitCode.OK, run.err
    assert shared in held_external_ids(standins)
    assert report_of(run_process(config, "--full"))["new"] == 0


def test_an_attribute_two_events_share_survives_an_event_run_of_the_other(standins, tmp_path):
    """`--event B` reads only B, so it cannot see that A shares X; the nights after must still
    keep X when one of the two drops it, as a full read does."""
    config = write_config(tmp_path, standins)
    _, twin = add_twin(standins, "44444444-0000-4000-8000-000000000006", "9006")
    shared = twin["Attribute"][0]["uuid"]
    assert run_process(config).code == ExitCode.OK
    owner, other = _owner_and_other(standins, tmp_path, shared)
    assert run_process(config, "--event", other["uuid"]).code == ExitCode.OK
    assert run_process(config).code == ExitCode.OK
    owner, _ = _owner_and_other(standins, tmp_path, shared)
    owner["Attribute"] = [a for a in owner["Attribute"] if a.get("uuid") != shared]
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert report_of(run)["deleted"] == 0 and shared in held_external_ids(standins)


def test_an_event_that_could_not_be_transformed_is_read_again(standins, tmp_path, capsys, monkeypatch):
    """README: an event with an attribute the tool failed to transform (a bug, maybe a passing
    one) is read again on the next run, not left until the next full read."""
    import misp_transformer
    from tests.support import run_cli
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    changed = published(standins)[1]
    changed.setdefault("Attribute", []).append({**new_attribute("8", "198.51.100.77"), "type": "ip-dst"})
    builder = misp_transformer.OBSERVABLE_TYPES["ip-dst"]

    def failing(*args: Any) -> Any:
        raise RuntimeError("a passing fault")
    monkeypatch.setitem(misp_transformer.OBSERVABLE_TYPES, "ip-dst", failing)
    assert report_of(run_cli(config, capsys=capsys))["skipped"]["internal-error"] > 0
    monkeypatch.setitem(misp_transformer.OBSERVABLE_TYPES, "ip-dst", builder)
    report = report_of(run_cli(config, capsys=capsys))
    assert report["events_read_in_full"] >= 1 and "33333333-0000-4000-8000-000000000008" in held_external_ids(standins)


def test_a_rebuilt_state_is_followed_by_a_full_read(standins, tmp_path):
    """Rows rebuilt from the service carry the service's copies, not what MISP wants now: the
    next run reads every event, and the one after is incremental again."""
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    assert run_process(config, "--rebuild-state").code == ExitCode.OK
    report = report_of(run_process(config))
    assert (report["run_kind"], report["full_read_reason"], report["events_read_in_full"]) == (
        "full", "no record of an earlier full read", 4)
    assert report_of(run_process(config))["run_kind"] == "incremental"


def test_a_clock_behind_the_last_run_reads_everything(standins, tmp_path):
    """After a clock jump no record of this store's times can be trusted: a full read."""
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    shift_previous_run(store_file(tmp_path, "graph"), 1, expired=False)
    report = report_of(run_process(config))
    assert (report["run_kind"], report["full_read_reason"], report["events_read_in_full"]) == ("full", "the clock moved", 4)

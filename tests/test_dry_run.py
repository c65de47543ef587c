"""A --dry-run plans what a sync would do without writing the state: it must remember what it has
seen as a sync does (duplicates across pages, what to remove), however it keeps those marks."""
from __future__ import annotations

import copy

from constants import ExitCode
from tests.support import expected_external_ids, run_process, write_config


def test_a_full_dry_run_after_a_sync_removes_only_what_misp_dropped(standins, tmp_path):
    config = write_config(tmp_path, standins, max_delete_fraction=1.0)
    assert run_process(config).code == ExitCode.OK
    dropped = standins.misp.events.pop(next(n for n, e in enumerate(standins.misp.events) if expected_external_ids([e])))
    run = run_process(config, "--dry-run", "--full")
    assert run.code == ExitCode.OK, run.err
    assert {key for record in run.logs("dry-run-delete") for key in record} == expected_external_ids([dropped])


def test_a_dry_run_counts_an_attribute_two_events_share_once(standins, tmp_path):
    """The copy comes in the last event, pages after the first was planned and its batch written."""
    first = next(e for e in standins.misp.events if len(expected_external_ids([e])) > 1)
    copied = copy.deepcopy(first)
    copied["Event"]["uuid"] = "22222222-0000-4000-8000-000000000001"
    standins.misp.events.append(copied)
    run = run_process(write_config(tmp_path, standins), "--dry-run")
    assert run.code == ExitCode.OK, run.err
    planned = [item["externalId"] for record in run.logs("dry-run-new") for item in record]
    assert len(planned) == len(set(planned)) == len(expected_external_ids(standins.misp.events))
    assert run.logs("run-report")[-1]["skipped"]["duplicate"] == len(expected_external_ids([first]))

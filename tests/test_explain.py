"""--explain, the skipped-attributes file and the summary's named deletions and rejections,
with the tool run as cron runs it (a process) against the stand-ins."""
from __future__ import annotations

import json

import pytest

from constants import ExitCode
from tests.support import run_process, write_config

EVENT = "44444444-0000-4000-8000-000000000001"
UNPUBLISHED = "44444444-0000-4000-8000-000000000002"
SENT, NOT_IDS, INVALID, HIDDEN, REJECTED = (f"44444444-0000-4000-8000-0000000000a{n}" for n in range(1, 6))


def add_events(standins) -> None:
    """One published event (sent, not-to-ids, invalid, rejected) and one unpublished event."""
    def attribute(uuid: str, value: str, to_ids: bool = True) -> dict:
        return {"uuid": uuid, "type": "ip-dst", "value": value, "to_ids": to_ids}
    standins.misp.events += [
        {"Event": {"uuid": EVENT, "info": "Explain test", "published": True, "timestamp": "1700000000",
                   "publish_timestamp": "1700000000",
                   "Attribute": [attribute(SENT, "203.0.113.7"), attribute(NOT_IDS, "203.0.113.8", to_ids=False),
                                 attribute(INVALID, "300.1.2.3"), attribute(REJECTED, "203.0.113.66")]}},
        {"Event": {"uuid": UNPUBLISHED, "info": "Draft", "published": False, "timestamp": "1700000000",
                   "publish_timestamp": "0", "Attribute": [attribute(HIDDEN, "198.51.100.9")]}},
    ]


def microsoft_requests(standins) -> int:
    return len(standins.graph.requests_seen) + len(standins.sentinel.requests_seen) + len(standins.entra.requests_seen)


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_explain_of_a_sent_value_says_new_then_unchanged_and_sends_nothing(standins, tmp_path, target):
    add_events(standins)
    config = write_config(tmp_path, standins, target=target)
    before = run_process(config, "--explain", "203.0.113.7")
    assert before.code == ExitCode.OK, before.err
    assert microsoft_requests(standins) == 0 and not (tmp_path / "state").exists()
    assert f"attribute {SENT} (ip-dst) '203.0.113.7' in MISP event {EVENT}" in before.out
    assert before.out.rstrip().endswith(": new") and "NOT SENT" not in before.out
    assert run_process(config).code == ExitCode.OK
    sent = microsoft_requests(standins)
    after = run_process(config, "--explain", SENT)
    assert after.code == ExitCode.OK, after.err
    assert after.out.rstrip().endswith(": unchanged")
    assert ("(service id " in after.out) is (target == "graph")  # a STIX key is its id
    assert microsoft_requests(standins) == sent


def test_explain_names_the_skip_reason_and_detail(standins, tmp_path):
    add_events(standins)
    config = write_config(tmp_path, standins, target=["graph", "sentinel"])
    not_ids = run_process(config, "--explain", NOT_IDS)
    assert not_ids.code == ExitCode.OK, not_ids.err
    assert not_ids.out.count(": skipped: not-to-ids") == 2
    invalid = run_process(config, "--explain", "300.1.2.3")
    assert invalid.code == ExitCode.OK, invalid.err
    assert invalid.out.count(": skipped: invalid-value (not an IP address") == 2


def test_explain_says_a_filter_leaves_the_attribute_out(standins, tmp_path):
    add_events(standins)
    run = run_process(write_config(tmp_path, standins, misp_event_filters={"published": True, "to_ids": True}),
                      "--explain", "203.0.113.8")
    assert run.code == ExitCode.OK, run.err
    assert "NOT SENT: misp_event_filters[0] {'published': True, 'to_ids': True} leaves this attribute out" in run.out
    assert run.out.rstrip().endswith(": skipped: not-to-ids")


def test_explain_says_the_filters_do_not_select_an_unpublished_event(standins, tmp_path):
    add_events(standins)
    run = run_process(write_config(tmp_path, standins), "--explain", "198.51.100.9")
    assert run.code == ExitCode.OK, run.err
    assert "NOT SENT: misp_event_filters[0] {'published': True" in run.out  # the filter in effect, whatever its defaults
    assert f"does not select MISP event {UNPUBLISHED}" in run.out
    assert "were it selected:" in run.out and run.out.rstrip().endswith(": new")


def test_explain_of_an_unknown_value_exits_8(standins, tmp_path):
    run = run_process(write_config(tmp_path, standins), "--explain", "no.such.example")
    assert run.code == ExitCode.NOT_FOUND == 8
    assert "no MISP attribute has the uuid or value 'no.such.example'" in run.out


def test_skipped_file_holds_the_value_and_every_reason(standins, tmp_path):
    add_events(standins)
    run = run_process(write_config(tmp_path, standins, misp_event_filters={"published": True}))  # MISP sends non-IDS too
    assert run.code == ExitCode.OK, run.err
    (path,) = run.log_dir.glob("*_skipped-graph_*.jsonl")
    records = {r["attribute_uuid"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert (records[NOT_IDS]["reason"], records[NOT_IDS]["value"]) == ("not-to-ids", "203.0.113.8")
    assert (records[INVALID]["reason"], records[INVALID]["value"]) == ("invalid-value", "300.1.2.3")
    assert {r["reason"] for r in records.values()} >= {"not-to-ids", "context", "unsupported-type", "invalid-value"}


def test_summary_names_the_deleted_and_rejected_indicators(standins, tmp_path):
    add_events(standins)
    config = write_config(tmp_path, standins, target=["graph", "sentinel"])
    standins.graph.reject_value("203.0.113.66", "on the allow list")
    standins.sentinel.reject_value("203.0.113.66", "on the allow list")
    assert run_process(config).code == ExitCode.REJECTED
    event = next(e["Event"] for e in standins.misp.events if e["Event"]["uuid"] == EVENT)
    event["Attribute"] = [a for a in event["Attribute"] if a["uuid"] != SENT]
    run = run_process(config)
    assert run.code == ExitCode.REJECTED, run.err
    gone = f"its MISP event {EVENT} no longer yields it"
    assert f"  deleted: attribute {SENT}: {gone}" in run.out  # Graph's state keeps no value
    assert f"  deleted: 203.0.113.7: {gone}" in run.out  # the STIX name is the value
    assert run.out.count("  rejected: 203.0.113.66: ") == 2
    records = [json.loads(line) for path in run.log_dir.glob("*_deleted-*.jsonl") for line in path.read_text().splitlines()]
    assert sorted((r["key"] == SENT, r["value"]) for r in records) == [(False, "203.0.113.7"), (True, "")]


@pytest.mark.parametrize("needle", ["", "   "], ids=["empty", "blank"])
def test_an_empty_needle_is_refused_and_sends_nothing(standins, tmp_path, needle):
    """`--explain "$VALUE"` with VALUE unset ran a full sync (287 indicators sent to Graph); a
    blank one listed every attribute in MISP (MISP takes an empty value as no filter)."""
    run = run_process(write_config(tmp_path, standins), "--explain", needle)
    assert run.code == ExitCode.CONFIG and run.out == "" and "--explain needs" in run.err, run.out[:300] + run.err
    assert standins.graph.indicators == {}


def test_an_empty_event_uuid_is_refused_and_sends_nothing(standins, tmp_path):
    """`--event "$UUID"` with UUID unset synced every event instead of one."""
    run = run_process(write_config(tmp_path, standins), "--event", " ")
    assert run.code == ExitCode.CONFIG and "--event needs" in run.err, run.err
    assert standins.graph.indicators == {}

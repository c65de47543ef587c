"""Issue 9, classes 1 and 8 end to end: no MISP value stops a run, and no MISP event makes
request bodies or logs grow with it."""
from __future__ import annotations

import datetime as dt
import json

import pytest

import misp_transformer
from constants import ExitCode, SkipReason
from misp_transformer import GraphTransformer, MappingPolicy, StixTransformer
from tests.support import (
    active_ids,
    expected_external_ids,
    expected_stix_ids,
    first_published,
    held_external_ids,
    run_cli,
    run_process,
    write_config,
)

BAD_NUMBERS = [
    {"uuid": "99999999-0000-4000-8000-000000000001", "type": "AS", "value": "AS\u00b2", "to_ids": True},
    {"uuid": "99999999-0000-4000-8000-000000000002", "type": "ip-dst|port", "value": "1.2.3.4|\u00b2", "to_ids": True},
]
TRANSFORMERS = {"graph": GraphTransformer, "sentinel": StixTransformer}


def skipped(run, target: str) -> list[dict]:
    return [json.loads(line) for path in sorted(run.log_dir.glob(f"*_skipped-{target}_*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines()]


def expected_skips(events: list[dict], target: str, reason: SkipReason) -> int:
    transformer = TRANSFORMERS[target](MappingPolicy(), dt.datetime.now(dt.UTC))
    return sum(1 for wrapped in events if wrapped["Event"].get("published") is True
               for skip in transformer.transform(wrapped).skips if skip.reason is reason)


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_unicode_digits_in_values_are_invalid_and_the_run_goes_on(standins, tmp_path, target):
    first_published(standins)["Attribute"].extend(dict(a) for a in BAD_NUMBERS)
    run = run_process(write_config(tmp_path, standins, target=target))
    assert run.code == ExitCode.OK, run.err
    if target == "graph":
        expected, held = expected_external_ids(standins.misp.events), held_external_ids(standins)
    else:
        expected, held = expected_stix_ids(standins.misp.events), active_ids(standins)
    assert held == expected and len(expected) > 250
    report = run.logs("run-report")[-1]
    assert report["skipped"]["invalid-value"] == expected_skips(standins.misp.events, target, SkipReason.INVALID_VALUE)
    assert "internal-error" not in report["skipped"]
    bad = {a["uuid"] for a in BAD_NUMBERS}
    reasons = {r["attribute_uuid"]: r["reason"] for r in skipped(run, target) if r["attribute_uuid"] in bad}
    assert reasons == dict.fromkeys(bad, "invalid-value")


def test_an_internal_error_is_a_logged_skip_and_the_run_goes_on(standins, tmp_path, capsys, monkeypatch):
    def failing(value, policy):
        raise RuntimeError("a bug in one builder")
    monkeypatch.setitem(misp_transformer.OBSERVABLE_TYPES, "ip-dst", failing)
    event = first_published(standins)
    event["Attribute"].append({"uuid": "99999999-0000-4000-8000-000000000003", "type": "ip-dst", "value": "198.51.100.9",
                               "to_ids": True})
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events) != set()
    failed = expected_skips(standins.misp.events, "graph", SkipReason.INTERNAL_ERROR)
    assert failed >= 1 and run.logs("run-report")[-1]["skipped"]["internal-error"] == failed
    records = [r for r in skipped(run, "graph") if r["reason"] == "internal-error"]
    assert len(records) == failed and {r["detail"] for r in records} == {"RuntimeError while transforming"}
    errors = [e for e in run.logs("error") if e["context"] == "transform"]
    assert event["uuid"] in {e["event_uuid"] for e in errors}
    logged = {a["uuid"]: a["error"] for e in errors for a in e["attributes"]}
    assert logged["99999999-0000-4000-8000-000000000003"] == "RuntimeError while transforming"
    assert len(logged) == failed


@pytest.mark.parametrize(("target", "builders"), [("graph", misp_transformer.OBSERVABLE_TYPES),
                                                   ("sentinel", misp_transformer.OBSERVABLE_TYPES)])
def test_an_internal_error_keeps_what_was_sent_for_the_attribute(standins, tmp_path, capsys, monkeypatch, target, builders):
    """A bug is not MISP's wish: indicators sent before for the attributes it hits stay."""
    config = write_config(tmp_path, standins, target=target, max_delete_fraction=1.0)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    held = held_external_ids(standins) if target == "graph" else active_ids(standins)

    def failing(*args):
        raise RuntimeError("a bug in one builder")
    monkeypatch.setitem(builders, "ip-dst", failing)
    run = run_cli(config, "--full", capsys=capsys)  # as a new version's first run would
    assert run.code == ExitCode.OK, run.err
    report = run.logs("run-report")[-1]
    assert report["skipped"]["internal-error"] > 0 and report["deleted"] == 0
    assert (held_external_ids(standins) if target == "graph" else active_ids(standins)) == held


def flood_with_comments(event: dict) -> None:
    """About 0.9 MB of distinct comment attributes, and 30 indicators with 30 kB of pasted notes
    each as their own comment (Sentinel's description holds that one, Graph's both)."""
    event["Attribute"].extend({"uuid": f"88888888-0000-4000-8000-{n:012d}", "type": "comment", "to_ids": False,
                               "value": f"note {n:04d} " + "c" * 990} for n in range(900))
    event["Attribute"].extend({"uuid": f"77777777-0000-4000-8000-{n:012d}", "type": "domain", "to_ids": True,
                               "value": f"flood{n}.example", "comment": f"notes {n} " + "n" * 30000} for n in range(30))


def compact_bytes(value) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_an_event_of_comments_keeps_bodies_and_logs_small(standins, tmp_path, target):
    flood_with_comments(first_published(standins))
    run = run_process(write_config(tmp_path, standins, target=target))  # write_post_json: every body is logged
    assert run.code == ExitCode.OK, run.err
    if target == "graph":
        assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
        posts = [r for r in standins.graph.requests_seen if r.method == "POST"]
        indicators = [i for r in posts for i in r.json["value"]]
        flooded = [i["additionalInformation"] for i in indicators if i["externalId"].startswith("77777777")]
    else:
        assert active_ids(standins) == expected_stix_ids(standins.misp.events)
        posts = [r for r in standins.sentinel.requests_seen if r.path.endswith(":upload")]
        indicators = [i for r in posts for i in r.json["stixobjects"]]
        flooded = [i["description"] for i in indicators if i["external_references"][0]["external_id"].startswith("77777777")]
    assert max(len(r.body) for r in posts) <= 100 * 16384  # the fork point: 31.6 MB (graph), 1 MB (sentinel)
    assert max(compact_bytes(i) for i in indicators) <= 16384
    assert len(flooded) == 30 and max(map(len, flooded)) <= 4096
    assert sum(p.stat().st_size for p in run.log_dir.iterdir()) <= 2_000_000  # the fork point: 64 MB (graph); now 0.9 MB

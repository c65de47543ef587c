"""Issue 9, a second red-team review (classes 1, 4, 5, 8, 9): lone surrogates in tags and
uuids, unreadable Sentinel `errors`, listings that never end or lack ids, junk read-back items,
one target's bug stopping the others, uncapped tag names, the 16 kB cap counted as sent, and old
events republished mid-run. Each drives script.py as a real process against the HTTPS
stand-ins, and each failed before its fix."""
from __future__ import annotations

import json

import pytest

from constants import ExitCode
from tests.support import (
    active_ids,
    expected_external_ids,
    expected_stix_ids,
    first_published,
    held_external_ids,
    run_process,
    write_config,
)


def held(standins, target):
    return held_external_ids(standins) if target == "graph" else active_ids(standins)


def expected(standins, target):
    return expected_external_ids(standins.misp.events) if target == "graph" else expected_stix_ids(standins.misp.events)


# --- class 1: a lone surrogate in a tag or uuid stops the run ------------------------------------

@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_lone_surrogate_in_a_tag_name_does_not_stop_the_run(standins, tmp_path, target):
    event = first_published(standins)
    event["Attribute"].append({"uuid": "99999999-0000-4000-8000-0000000000a1", "type": "domain", "value": "sur.example",
                               "to_ids": True, "Tag": [{"name": "bad\ud800tag"}]})
    run = run_process(write_config(tmp_path, standins, target=target))
    assert run.code == ExitCode.OK, run.err[-2000:]
    assert held(standins, target) == expected(standins, target)


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_lone_surrogate_in_an_attribute_uuid_does_not_stop_the_run(standins, tmp_path, target):
    event = first_published(standins)
    event["Attribute"].append({"uuid": "bad\udc80uuid", "type": "domain", "value": "sur2.example", "to_ids": True})
    run = run_process(write_config(tmp_path, standins, target=target))
    assert run.code in (ExitCode.OK, ExitCode.REJECTED), run.err[-2000:]


# --- class 4: garbled answers -----------------------------------------------------------------

def drop_published_event(standins) -> dict:
    event = first_published(standins)
    event["published"] = False
    return event


@pytest.mark.parametrize("errors", [[None], ["record 0 refused"], [{"recordIndex": "0", "errorMessages": ["bad"]}]],
                         ids=["null", "strings", "string-index"])
def test_sentinel_upload_answer_with_unreadable_errors_is_not_all_accepted(standins, tmp_path, errors):
    """A 200 whose `errors` list holds no readable record (not the documented
    {recordIndex: int, errorMessages}) says nothing about what arrived. Today every object is
    counted as accepted and recorded as sent: nothing arrived, exit 0, and the next run sends
    nothing either (the state says unchanged)."""
    from standins.tls import Reply
    config = write_config(tmp_path, standins, target="sentinel")
    original = standins.sentinel._upload
    standins.sentinel._upload = lambda request, grant, workspace: Reply(
        200, json.dumps({"errors": errors}).encode(), "application/json", {})
    first = run_process(config)
    standins.sentinel._upload = original
    second = run_process(config)
    assert active_ids(standins) == expected_stix_ids(standins.misp.events), (
        f"exits {first.code}, {second.code}; the workspace holds {len(active_ids(standins))} of "
        f"{len(expected_stix_ids(standins.misp.events))}")


def test_graph_listing_with_ever_new_next_links_stops(standins, tmp_path):
    """MicrosoftClient.pages only refuses a nextLink seen twice. A listing that re-serves its
    first page with a fresh @odata.nextLink each time (a proxy, or an API ignoring
    $skiptoken) never ends: the run (here: rebuilding a lost store) loops forever. The same
    holds for Sentinel queryIndicators (nextLink)."""
    import shutil

    from standins.tls import Reply
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    shutil.rmtree(tmp_path / "state")  # the next run rebuilds from the listing
    original, counter = standins.graph._list, iter(range(10**9))

    def endless(request, client_id):
        reply = original(request, client_id)
        payload = json.loads(reply.body)
        payload["@odata.nextLink"] = f"{standins.graph.url}/beta/security/tiIndicators?$top=100&$skiptoken=0&n={next(counter)}"
        return Reply(200, json.dumps(payload).encode(), reply.content_type, reply.headers)
    standins.graph._list = endless
    run = run_process(config, timeout=60)  # was TimeoutExpired
    assert run.code == ExitCode.MICROSOFT and len(standins.graph.requests_seen) < 1000


# --- class 8: tag and galaxy names are free text, but not capped --------------------------------

def posted_indicators(standins, target):
    if target == "graph":
        return [i for r in standins.graph.requests_seen if r.path.endswith("submitTiIndicators") for i in r.json["value"]]
    return [i for r in standins.sentinel.requests_seen if r.path.endswith(":upload") for i in r.json["stixobjects"]]


def longest_text(value) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return max(map(longest_text, value), default=0)
    if isinstance(value, dict):
        return max(map(longest_text, value.values()), default=0)
    return 0


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_huge_tag_and_galaxy_names_are_cut_to_the_text_cap(standins, tmp_path, target):
    """mapping.md: long free-text fields hold at most 4,096 characters (TEXT_FIELD_MAX: "and any
    free text read"). A 10,000-character tag and a 6,000-character galaxy cluster name go into
    Graph `tags` / `activityGroupNames` and STIX `labels` whole."""
    event = first_published(standins)
    event.setdefault("Tag", []).append({"name": "t" * 10000})
    event["Galaxy"] = [{"GalaxyCluster": [{"tag_name": 'misp-galaxy:threat-actor="' + "g" * 6000 + '"'}]}]
    run = run_process(write_config(tmp_path, standins, target=target))
    assert run.code == ExitCode.OK, run.err
    sent = posted_indicators(standins, target)
    assert sent and max(map(longest_text, sent)) <= 4096, max(map(longest_text, sent))


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_an_indicator_on_the_wire_stays_within_16_kB(standins, tmp_path, target):
    """requests sends `json=` with ensure_ascii=True: every non-ASCII character goes out as
    \\uXXXX (é: 6 bytes, an emoji: 12). The 16 kB cap counts what is sent (it once counted UTF-8,
    and an indicator "within 16 kB" was 24-48 kB in the request body)."""
    event = first_published(standins)
    event["Attribute"].append({"uuid": "99999999-0000-4000-8000-0000000000c1", "type": "email-subject",
                               "value": "\u00e9" * 2000, "to_ids": True, "comment": "\U0001f600" * 4000})
    run = run_process(write_config(tmp_path, standins, target=target))
    assert run.code == ExitCode.OK, run.err
    requests_seen = (standins.graph.requests_seen if target == "graph" else standins.sentinel.requests_seen)
    bodies = [r.body for r in requests_seen if r.path.endswith(("submitTiIndicators", ":upload"))]
    big = [b for b in bodies if b"99999999-0000-4000-8000-0000000000c1" in b]
    assert big and b"\\u00e9" in big[0], "sent as UTF-8 after all"
    per_indicator = [len(json.dumps(i, separators=(",", ":")).encode()) for i in posted_indicators(standins, target)]
    assert max(per_indicator) <= 16384, f"{max(per_indicator)} bytes as sent"


def test_graph_listing_item_without_an_id_is_a_garbled_answer_not_a_crash(standins, tmp_path):
    """A listing page whose items are objects but lack `id` passes value_list(); rebuild's
    graph_rows then reads item["id"] and the run dies with exit 5 (internal error), on every
    run while the store is fresh. It is a garbled answer: exit 4, or the item ignored."""
    import shutil

    from standins.tls import Reply
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    shutil.rmtree(tmp_path / "state")
    original = standins.graph._list

    def without_id(request, client_id):
        reply = original(request, client_id)
        payload = json.loads(reply.body)
        for item in payload["value"][:1]:
            item.pop("id", None)
        return Reply(200, json.dumps(payload).encode(), reply.content_type, reply.headers)
    standins.graph._list = without_id
    run = run_process(config)
    assert run.code != ExitCode.INTERNAL, run.err


@pytest.mark.parametrize("junk", ["not an object", ["x"]], ids=["string", "list"])
def test_sentinel_query_item_with_junk_properties_is_not_a_crash(standins, tmp_path, junk):
    """queryIndicators items are only checked to be objects; rebuild's stix_object/
    sentinel_rows then call .get on whatever `properties` holds."""
    import shutil

    from standins.tls import Reply
    config = write_config(tmp_path, standins, target="sentinel")
    assert run_process(config).code == ExitCode.OK
    shutil.rmtree(tmp_path / "state")
    original = standins.sentinel._query

    def junk_first(*args):
        reply = original(*args)
        payload = json.loads(reply.body)
        for item in payload.get("value", [])[:1]:
            item["properties"] = junk
        return Reply(200, json.dumps(payload).encode(), reply.content_type, reply.headers)
    standins.sentinel._query = junk_first
    run = run_process(config)
    assert run.code != ExitCode.INTERNAL, run.err


# --- class 9: an unexpected exception in one target stops every target --------------------------

def test_one_targets_garbled_listing_does_not_stop_the_other_target(standins, tmp_path):
    """TargetRun.guard catches MicrosoftError and ConfigError only: any other exception in one
    target's step (here graph_rows' KeyError on a listing item without `id`; likewise the
    UnicodeEncodeError of a log write) ends the whole run with exit 5, so the Sentinel target,
    whose service answers fine, gets nothing new."""
    from standins.tls import Reply
    config = write_config(tmp_path, standins, target=["graph", "sentinel"])
    assert run_process(config).code == ExitCode.OK
    next((tmp_path / "state").glob("graph_*.sqlite")).unlink()
    first_published(standins)["Attribute"].append(
        {"uuid": "99999999-0000-4000-8000-0000000000d1", "type": "domain", "value": "new-one.example", "to_ids": True})
    original = standins.graph._list

    def without_id(request, client_id):
        reply = original(request, client_id)
        payload = json.loads(reply.body)
        payload["value"][0].pop("id", None)
        return Reply(200, json.dumps(payload).encode(), reply.content_type, reply.headers)
    standins.graph._list = without_id
    run = run_process(config)
    assert active_ids(standins) == expected_stix_ids(standins.misp.events), f"exit {run.code}: {run.err.strip()}"


# --- class 5: republished old events mid-run read as "MISP ignores page" -------------------------

def test_old_events_republished_mid_run_are_not_taken_for_a_misp_ignoring_page(standins, tmp_path):
    """Two older (lower id) events republished between page 1 and page 2 shift the selection by
    a whole page (page size 2; with the default 100, 100 such events): page 2 then holds only
    events of page 1, and _search stops the run with exit 3 "MISP ignores `page`". A real
    paging MISP did nothing wrong; with a listing the page budget already bounds the loop."""
    import copy
    import uuid
    config = write_config(tmp_path, standins)
    template = next(e for e in standins.misp.events if e["Event"].get("published") is True)
    olds = []
    for _ in range(2):
        old = copy.deepcopy(template)
        old["Event"].update(uuid=str(uuid.uuid4()), published=False, Object=[])
        for attribute in old["Event"].get("Attribute", []):
            attribute["uuid"] = str(uuid.uuid4())
        olds.append(old)
    standins.misp.events[:0] = olds

    def republish():
        for old in olds:
            old["Event"]["published"] = True
    standins.misp.on_page(2, republish)
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err

"""Issue 9 class 5: MISP paging must not delete live indicators.

MispSource against the MISP stand-in over HTTPS: the metadata listing, events by uuid, and the
checks that stop a run on a page of non-events or on a MISP that ignores `page`; then the CLI.
"""
from __future__ import annotations

import re
import time
from typing import Any

import pytest

from constants import ExitCode
from misp_source import EventStamp, MispError, MispSource
from request_log import RequestLog
from settings import load_settings
from tests.support import active_ids, graph_calls, held_external_ids, published, run_process, search_bodies, write_config


def misp_source(standins: Any, tmp_path: Any, **overrides: Any) -> MispSource:
    """A MispSource on the stand-in, with the tests' page size of 2 events."""
    settings = load_settings(write_config(tmp_path, standins, **overrides), environ={})
    return MispSource(settings, RequestLog(tmp_path / "logs", write_requests=False, verbose=False))


def uuids_of(pages: Any) -> list[str]:
    return [wrapped["Event"]["uuid"] for page in pages for wrapped in page]


def test_listing_holds_every_selected_event_with_its_stamps(standins, tmp_path):
    events = published(standins)
    events[0]["timestamp"] = "١٧٠٠٠٠٠٠٠٠"  # Arabic-Indic digits: int() would take them, MISP never sends them
    del events[1]["publish_timestamp"]
    listing = misp_source(standins, tmp_path).listing()
    assert listing.primary_count == len(events) == 4
    assert dict(listing.events) == {
        events[0]["uuid"]: EventStamp(0, int(events[0]["publish_timestamp"])),
        events[1]["uuid"]: EventStamp(int(events[1]["timestamp"]), 0),
        **{e["uuid"]: EventStamp(int(e["timestamp"]), int(e["publish_timestamp"])) for e in events[2:]},
    }
    bodies = search_bodies(standins)
    assert [(b["metadata"], b["page"]) for b in bodies] == [(1, 1), (1, 2), (1, 3)]


def test_listing_intersects_every_filter_and_counts_the_first(standins, tmp_path):
    uuids = [e["uuid"] for e in published(standins)]
    source = misp_source(standins, tmp_path, misp_event_filters=[{"uuid": uuids[:3]}, {"uuid": uuids[1:]}])
    listing = source.listing()
    assert set(listing.events) == set(uuids[1:3]) and listing.primary_count == 3
    assert uuids_of(source.pages(listing)) == uuids[1:3]


def test_fetch_events_reads_chosen_events_in_batches_of_the_page_size(standins, tmp_path):
    uuids = [e["uuid"] for e in published(standins)]
    unpublished = next(w["Event"]["uuid"] for w in standins.misp.events if w["Event"]["published"] is False)
    pages = list(misp_source(standins, tmp_path).fetch_events([uuids[3].upper(), uuids[0], uuids[2], unpublished]))
    assert sorted(uuids_of(pages)) == sorted([uuids[0], uuids[2], uuids[3]])
    assert all("Attribute" in wrapped["Event"] for page in pages for wrapped in page)
    bodies = search_bodies(standins)
    assert [b["uuid"] for b in bodies] == [[uuids[3], uuids[0]], [uuids[2], unpublished]]  # in the order given
    assert all(b["published"] is True and b["metadata"] == 0 and b["page"] == 1 for b in bodies)


def test_fetch_events_refuses_events_it_did_not_ask_for(standins, tmp_path, monkeypatch):
    monkeypatch.setattr(standins.misp, "_selects", lambda event, body: event.get("published") is True)
    uuid = published(standins)[0]["uuid"]
    with pytest.raises(MispError, match="batch 1 of 1 holds 1 events not asked for: MISP ignored the uuid filter"):
        list(misp_source(standins, tmp_path).fetch_events([uuid]))


@pytest.mark.parametrize("page", [1, 2])
def test_a_page_of_non_events_is_a_misp_error(standins, tmp_path, page):
    standins.misp.fail_page(page, "non-events")
    source = misp_source(standins, tmp_path)
    items = re.escape("3 items that are not events (dict without a string Event.uuid, int, str)")
    with pytest.raises(MispError, match=f"^MISP events page {page} holds {items}$"):
        list(source.pages())
    with pytest.raises(MispError, match=f"^MISP filter 1 page {page} holds {items}$"):
        source.listing()


def test_misp_ignoring_page_is_caught_on_the_second_request(standins, tmp_path):
    standins.misp.fail_page(None, "ignore-page")
    source = misp_source(standins, tmp_path)
    with pytest.raises(MispError, match=r"^MISP filter 1 page 2 repeats only events of earlier pages: MISP ignores `page`$"):
        source.listing()
    with pytest.raises(MispError, match=r"^MISP events page 2 repeats only events"):
        list(source.pages())
    assert [b["page"] for b in search_bodies(standins)] == [1, 2, 1, 2]


def test_full_fetch_stops_at_the_page_budget_of_its_listing(standins, tmp_path):
    source = misp_source(standins, tmp_path)
    listing = source.listing()
    template = published(standins)[0]
    standins.misp.events.extend(
        {"Event": {**template, "uuid": f"44444444-0000-4000-8000-{n:012d}"}} for n in range(40))
    standins.misp.clear_requests()
    budget = -(-2 * listing.primary_count // 2) + 10
    with pytest.raises(MispError, match=f"^MISP events: still not at the end after {budget} pages"):
        list(source.pages(listing))
    assert len(search_bodies(standins)) == budget == 14


def test_event_unpublished_between_two_pages_is_missed_by_paging_and_read_by_uuid(standins, tmp_path):
    """The shift of issue 9 class 5, and the pieces that repair it: listing, pages, fetch_events."""
    source = misp_source(standins, tmp_path)
    listing = source.listing()
    first, _, shifted, _ = published(standins)
    hooked_at: list[int] = []

    def unpublish_first() -> None:
        hooked_at.append(len(search_bodies(standins)))
        first["published"] = False

    standins.misp.on_page(2, unpublish_first)
    read = uuids_of(source.pages(listing))
    assert hooked_at == [5]  # as page 2 arrives: after 3 metadata pages and page 1 of the full search
    assert shifted["uuid"] not in read and first["uuid"] in read
    missed = listing.events.keys() - set(read)
    assert missed == {shifted["uuid"]}
    assert uuids_of(source.fetch_events(missed)) == [shifted["uuid"]]


def test_event_published_between_two_pages_reads_none_twice(standins, tmp_path):
    source = misp_source(standins, tmp_path)
    listing = source.listing()
    newcomer = {"Event": {**published(standins)[0], "uuid": "55555555-0000-4000-8000-000000000001"}}
    standins.misp.on_page(2, lambda: standins.misp.events.insert(0, newcomer))
    read = uuids_of(source.pages(listing))
    assert read == [e["uuid"] for e in published(standins) if e["uuid"] in listing.events]
    assert [b["page"] for b in search_bodies(standins) if b["metadata"] == 0] == [1, 2, 3, 4]


def test_cli_page_of_non_events_exits_3_and_deletes_nothing(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    held = held_external_ids(standins)
    before = len(standins.graph.requests_seen)
    standins.misp.fail_page(1, "non-events")  # few indicators missing: under the safety valve
    run = run_process(config)
    assert run.code == ExitCode.MISP, run.err
    assert "page 1 holds 3 items that are not events" in run.err
    assert held_external_ids(standins) == held
    assert not {"deleteTiIndicators", "deleteTiIndicatorsByExternalId"} & set(graph_calls(standins, before))


def test_cli_misp_ignoring_page_exits_3_quickly_and_deletes_nothing(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    held = held_external_ids(standins)
    before = len(standins.graph.requests_seen)
    standins.misp.fail_page(None, "ignore-page")
    standins.misp.clear_requests()
    started = time.monotonic()
    run = run_process(config, timeout=30)
    assert run.code == ExitCode.MISP, run.err
    assert time.monotonic() - started < 30 and "MISP ignores `page`" in run.err
    assert len(search_bodies(standins)) <= 4
    assert held_external_ids(standins) == held
    assert not {"deleteTiIndicators", "deleteTiIndicatorsByExternalId"} & set(graph_calls(standins, before))


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_cli_event_unpublished_between_two_pages_deletes_no_live_indicator(standins, tmp_path, target):
    config = write_config(tmp_path, standins, target=target)  # 2 events per page
    assert run_process(config).code == ExitCode.OK
    held = held_external_ids(standins) if target == "graph" else active_ids(standins)
    first = next(e["Event"] for e in standins.misp.events if e["Event"]["published"] is True)
    standins.misp.on_page(2, lambda: first.update(published=False))  # the rest shift by one
    run = run_process(config, "--full")  # pages are read on a full read only
    assert run.code == ExitCode.OK, run.err
    report = run.logs("run-report")[-1]
    assert report["deleted"] == 0 and report["events"] == len([e for e in standins.misp.events if e["Event"]["published"]]) + 1
    assert (held_external_ids(standins) if target == "graph" else active_ids(standins)) == held

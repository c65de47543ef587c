"""Issue 15, the pure part of sightings: what an alert matched (Defender evidence, a Sentinel
match row), how a match finds its attribute, the window, and the posting loop's bookkeeping
(one post per attribute and day, pending before sending, refusals forgotten, the volume guard)."""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import constants as C
from defender_client import alert_matches, defender_key
from report import sightings_line
from request_log import RequestLog
from sentinel_client import match_row
from sightings import POSTED, Holdings, Match, SightingCounts, report_matches, wanted_sightings, window
from state_store import StateRow, StateStore

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
STIX = "indicator--0b6c2f6e-3f0a-5b8e-9d5c-3c3a5e0c8f11"
ATTRIBUTE = "5f1a2b3c-0000-4000-8000-00000000000a"
OTHER = "5f1a2b3c-0000-4000-8000-00000000000b"


def _row(key: str, remote: str, body: dict[str, Any]) -> StateRow:
    return StateRow(key, remote, "h", "f", "2027-01-01T00:00:00Z", "e", "2026-12-01T00:00:00Z", json.dumps(body))


class _Workspace:
    """The two things Holdings asks of a target, as the Sentinel adapter answers them."""

    kind, label = "sentinel", "sentinel workspace test"
    matches_permission = matches_fix = ""

    def __init__(self, found: list[Match]) -> None:
        self.found = found

    def matches(self, since: dt.datetime, until: dt.datetime) -> Iterator[Match]:
        return iter(self.found)

    def probe_matches(self) -> None:
        return None

    def attribute_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator["external_references"][0]["external_id"])

    def row_value(self, row: StateRow) -> str:
        return str(json.loads(row.body)["name"])


class _Misp:
    """A MISP that records posts; `refuse` names attributes it will not sight."""

    def __init__(self, refuse: frozenset[str] = frozenset(), holds: set[tuple[str, str]] | None = None) -> None:
        self.posts: list[tuple[str, str, int]] = []
        self.asked: list[tuple[str, str]] = []
        self.refuse, self.holds = refuse, holds or set()

    def add_sighting(self, attribute_uuid: str, source: str, moment: int) -> str:
        if attribute_uuid in self.refuse:
            return "Could not add the Sighting. Reason: attribute deleted"
        self.posts.append((attribute_uuid, source, moment))
        return ""

    def has_sighting(self, attribute_uuid: str, source: str, day: str) -> bool:
        self.asked.append((attribute_uuid, day))
        return (attribute_uuid, day) in self.holds


def _store(*uuids: str) -> StateStore:
    store = StateStore(None)
    rows = [_row(f"indicator--{n:08d}-0000-5000-8000-000000000000", f"indicator--{n:08d}-0000-5000-8000-000000000000",
                 {"name": f"198.51.100.{n}", "external_references": [{"external_id": uuid}]}) for n, uuid in enumerate(uuids, 1)]
    store.replace_all(rows)
    store.set_meta("run", "1")
    return store


def _log(tmp_path: Path) -> RequestLog:
    return RequestLog(tmp_path / "logs", True, False, ())


def test_a_ti_map_row_names_our_stix_id_in_its_extended_properties():
    row = {"TimeGenerated": "2026-12-02T10:00:00Z", "SystemAlertId": "a1",
           "ExtendedProperties": json.dumps({"IndicatorId": STIX.upper(), "Query": "ThreatIntelIndicators | ..."}),
           "Entities": json.dumps([{"$id": "2", "Type": "ip", "Address": "198.51.100.1"}])}
    assert list(match_row(row)) == [Match(dt.datetime(2026, 12, 2, 10, tzinfo=dt.UTC), "a1", key=STIX)]


def test_a_row_without_an_id_matches_by_its_entities_and_matched_value():
    row = {"TimeGenerated": "2026-12-02T10:00:00Z", "SystemAlertId": "a2", "MatchedValue": "evil.example",
           "Entities": [{"Type": "url", "Url": "https://evil.example/x"}, {"Type": "account", "Name": "bob"}]}
    assert sorted(m.value for m in match_row(row)) == ["evil.example", "https://evil.example/x"]


def test_alerts_without_a_readable_time_are_counted_as_unreadable_never_sighted(tmp_path):
    (row,) = match_row({"TimeGenerated": "yesterday", "IndicatorId": STIX, "SystemAlertId": "s1"})
    (alert,) = alert_matches({"id": "d1", "createdDateTime": None, "evidence": [{"ipAddress": "198.51.100.1"}]})
    misp = _Misp()
    counts = report_matches(_Workspace([row, alert]), _store(ATTRIBUTE), misp, "s", _log(tmp_path), NOW)
    assert (row.moment, alert.moment) == (None, None) and misp.posts == []
    assert (counts.alerts, counts.unreadable, counts.not_ours) == (2, 2, 0)
    assert "unreadable 2" in sightings_line(counts.as_dict())  # the summary says so, as README promises


def test_a_first_window_the_volume_guard_left_unfinished_keeps_its_start(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "SIGHTINGS_MAX_POSTS", 1)
    store = _store(ATTRIBUTE, OTHER)
    oldest = NOW - dt.timedelta(days=6, hours=23)
    matches = [Match(oldest, "a", value="198.51.100.1"), Match(oldest + dt.timedelta(minutes=1), "b", value="198.51.100.2")]
    misp = _Misp()
    assert report_matches(_Workspace(matches), store, misp, "s", _log(tmp_path), NOW).deferred == 1
    later = NOW + dt.timedelta(days=1)  # a plain first window would now start after both matches
    assert window(store, later)[0] == NOW - dt.timedelta(days=C.SIGHTINGS_FIRST_DAYS)
    counts = report_matches(_Workspace(matches), store, misp, "s", _log(tmp_path), later)
    assert (counts.posted, counts.deferred) == (1, 0) and [post[0] for post in misp.posts] == [ATTRIBUTE, OTHER]
    assert store.meta(C.SIGHTINGS_START_META) == "" and window(store, later)[0] == later - C.SIGHTINGS_OVERLAP


def test_the_volume_guard_bounds_the_read_backs_too(tmp_path, monkeypatch):
    """A first run after a lost state asks MISP about every slot: an alert storm must not turn
    into one restSearch per slot, all in one run, when every one of them is a duplicate."""
    monkeypatch.setattr(C, "SIGHTINGS_MAX_POSTS", 1)
    matches = [Match(NOW - dt.timedelta(hours=2), "a", value="198.51.100.1"),
               Match(NOW - dt.timedelta(hours=1), "b", value="198.51.100.2")]
    misp = _Misp(holds={(ATTRIBUTE, "2026-12-02"), (OTHER, "2026-12-02")})
    store = _store(ATTRIBUTE, OTHER)
    counts = report_matches(_Workspace(matches), store, misp, "s", _log(tmp_path), NOW)
    assert (len(misp.asked), counts.duplicates, counts.deferred) == (1, 1, 1) and misp.posts == []
    counts = report_matches(_Workspace(matches), store, misp, "s", _log(tmp_path), NOW + dt.timedelta(minutes=5))
    assert (counts.duplicates, counts.deferred) == (2, 0) and len(misp.asked) == 2 and misp.posts == []


def test_defender_evidence_gives_the_keys_our_indicators_have():
    alert = {"id": "da1", "createdDateTime": "2026-12-02T09:00:00.1234567Z", "evidence": [
        {"@odata.type": "#microsoft.graph.security.ipEvidence", "ipAddress": "2001:DB8::1"},
        {"@odata.type": "#microsoft.graph.security.urlEvidence", "url": "http://Evil.Example/a"},
        {"@odata.type": "#microsoft.graph.security.fileEvidence", "fileDetails": {"sha256": "AB" * 32, "sha1": None}}]}
    keys = {match.key for match in alert_matches(alert)}
    assert keys == {defender_key("IpAddress", "2001:db8::1"), defender_key("Url", "http://Evil.Example/a"),
                    defender_key("DomainName", "evil.example"), defender_key("FileSha256", "ab" * 32)}


def test_an_alert_with_no_usable_evidence_is_still_counted_as_not_ours(tmp_path):
    (match,) = alert_matches({"id": "da2", "createdDateTime": "2026-12-02T09:00:00Z", "evidence": [{"userAccount": {}}]})
    misp = _Misp()
    counts = report_matches(_Workspace([match]), _store(ATTRIBUTE), misp, "s", _log(tmp_path), NOW)
    assert (counts.alerts, counts.not_ours, counts.posted) == (1, 1, 0) and misp.posts == []


def test_a_match_finds_its_attribute_by_id_then_by_value():
    store = _store(ATTRIBUTE, OTHER)
    holdings = Holdings(store.owned_rows(), _Workspace([]))
    at = NOW - dt.timedelta(hours=1)
    assert holdings.attributes(Match(at, "x", key="INDICATOR--00000001-0000-5000-8000-000000000000")) == {ATTRIBUTE}
    assert holdings.attributes(Match(at, "x", value="198.51.100.2")) == {OTHER}
    assert holdings.attributes(Match(at, "x", key="indicator--ffffffff-0000-5000-8000-000000000000")) == set()


def test_one_sighting_per_attribute_and_day_at_the_earliest_match():
    holdings = Holdings(_store(ATTRIBUTE).owned_rows(), _Workspace([]))
    early, late = NOW - dt.timedelta(hours=3), NOW - dt.timedelta(hours=1)
    yesterday = NOW - dt.timedelta(days=1)
    found = [Match(late, "a", value="198.51.100.1"), Match(early, "b", value="198.51.100.1"),
             Match(yesterday, "c", value="198.51.100.1"), Match(late, "d", value="203.0.113.9")]
    counts = SightingCounts()
    wanted = wanted_sightings(found, holdings, NOW - dt.timedelta(days=7), NOW, counts)
    assert wanted == {(ATTRIBUTE, "2026-12-02"): early, (ATTRIBUTE, "2026-12-01"): yesterday}
    assert (counts.alerts, counts.not_ours) == (4, 1)


def test_the_window_starts_a_week_back_then_overlaps_the_last_one():
    store = _store()
    assert window(store, NOW) == (NOW - dt.timedelta(days=C.SIGHTINGS_FIRST_DAYS), NOW)
    store.set_meta(C.SIGHTINGS_WINDOW_META, "2026-12-01T12:00:00Z")
    assert window(store, NOW)[0] == dt.datetime(2026, 12, 1, 6, tzinfo=dt.UTC)
    store.set_meta(C.SIGHTINGS_WINDOW_META, "2027-06-01T00:00:00Z")  # the clock went back
    assert window(store, NOW)[0] == NOW - dt.timedelta(days=C.SIGHTINGS_FIRST_DAYS)


def test_a_rerun_posts_nothing_twice_and_a_first_run_asks_misp_first(tmp_path):
    store = _store(ATTRIBUTE, OTHER)
    matches = [Match(NOW - dt.timedelta(hours=2), "a", value="198.51.100.1"),
               Match(NOW - dt.timedelta(hours=2), "b", value="198.51.100.2")]
    misp = _Misp(holds={(OTHER, "2026-12-02")})  # posted before the state was lost
    first = report_matches(_Workspace(matches), store, misp, "misp2sentinel:sentinel", _log(tmp_path), NOW)
    assert (first.posted, first.duplicates) == (1, 1)
    assert misp.posts == [(ATTRIBUTE, "misp2sentinel:sentinel", int((NOW - dt.timedelta(hours=2)).timestamp()))]
    assert len(misp.asked) == 2
    again = report_matches(_Workspace(matches), store, misp, "misp2sentinel:sentinel", _log(tmp_path),
                           NOW + dt.timedelta(hours=1))
    assert (again.posted, again.duplicates) == (0, 2) and len(misp.posts) == 1 and len(misp.asked) == 2


def test_a_post_a_kill_left_pending_is_read_back_before_it_is_sent_again(tmp_path):
    store = _store(ATTRIBUTE)
    moment = NOW - dt.timedelta(hours=2)
    store.open_sightings()
    store.set_meta(C.SIGHTINGS_WINDOW_META, "2026-12-02T06:00:00Z")
    store.mark_sighting(ATTRIBUTE, "2026-12-02", moment, "pending")
    misp = _Misp(holds={(ATTRIBUTE, "2026-12-02")})
    counts = report_matches(_Workspace([]), store, misp, "s", _log(tmp_path), NOW)
    assert (counts.recovered, counts.posted) == (1, 0) and misp.posts == []
    assert store.sighting_status(ATTRIBUTE, "2026-12-02") == POSTED
    store.mark_sighting(ATTRIBUTE, "2026-12-02", moment, "pending")
    counts = report_matches(_Workspace([]), store, _Misp(), "s", _log(tmp_path), NOW)
    assert (counts.recovered, counts.posted) == (0, 1)


def test_a_refused_sighting_is_logged_and_not_remembered(tmp_path):
    store = _store(ATTRIBUTE)
    matches = [Match(NOW - dt.timedelta(hours=1), "a", value="198.51.100.1")]
    counts = report_matches(_Workspace(matches), store, _Misp(refuse=frozenset({ATTRIBUTE})), "s", _log(tmp_path), NOW)
    assert counts.refused == 1 and store.sighting_status(ATTRIBUTE, "2026-12-02") is None
    (logged,) = (tmp_path / "logs").glob(f"*{C.SIGHTINGS_REFUSED_LOG}-sentinel*.jsonl")
    record = json.loads(logged.read_text().splitlines()[0])
    assert record["attribute_uuid"] == ATTRIBUTE and "attribute deleted" in record["reason"]


def test_the_volume_guard_defers_the_rest_and_keeps_the_window(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "SIGHTINGS_MAX_POSTS", 1)
    store = _store(ATTRIBUTE, OTHER)
    matches = [Match(NOW - dt.timedelta(hours=2), "a", value="198.51.100.1"),
               Match(NOW - dt.timedelta(hours=1), "b", value="198.51.100.2")]
    misp = _Misp()
    counts = report_matches(_Workspace(matches), store, misp, "s", _log(tmp_path), NOW)
    assert (counts.posted, counts.deferred) == (1, 1) and store.meta(C.SIGHTINGS_WINDOW_META) is None
    counts = report_matches(_Workspace(matches), store, misp, "s", _log(tmp_path), NOW + dt.timedelta(minutes=5))
    assert (counts.posted, counts.duplicates, counts.deferred) == (1, 1, 0)
    assert [post[0] for post in misp.posts] == [ATTRIBUTE, OTHER]
    assert store.meta(C.SIGHTINGS_WINDOW_META) == "2026-12-02T12:05:00Z"


@pytest.mark.parametrize("moment", [NOW - dt.timedelta(days=8), NOW + dt.timedelta(minutes=1)])
def test_a_match_outside_the_window_is_not_sighted(tmp_path, moment):
    misp = _Misp()
    report_matches(_Workspace([Match(moment, "a", value="198.51.100.1")]), _store(ATTRIBUTE), misp, "s", _log(tmp_path), NOW)
    assert misp.posts == []


def test_a_clock_gone_back_asks_misp_before_reposting_days_the_state_pruned(tmp_path):
    """The week a clock gone back re-reads holds days the state pruned long ago: MISP has them."""
    store = _store(ATTRIBUTE)
    old = NOW - dt.timedelta(days=4)
    misp = _Misp()
    report_matches(_Workspace([Match(old, "a", value="198.51.100.1")]), store, misp, "s", _log(tmp_path), NOW)
    report_matches(_Workspace([]), store, misp, "s", _log(tmp_path), NOW + dt.timedelta(days=2))  # prunes that day
    misp.holds = {(ATTRIBUTE, old.date().isoformat())}
    back = NOW + dt.timedelta(days=2) - dt.timedelta(hours=1)  # NTP steps the clock back an hour
    counts = report_matches(_Workspace([Match(old, "a", value="198.51.100.1")]), store, misp, "s", _log(tmp_path), back)
    assert (counts.posted, counts.duplicates) == (0, 1) and len(misp.posts) == 1


def test_a_defender_url_differing_in_case_is_another_indicator():
    """Defender keys a URL exactly: an alert on one spelling sights only that spelling's attribute."""
    rows = [_row(defender_key("Url", url), str(n), {"externalID": uuid, "indicatorValue": url})
            for n, (url, uuid) in enumerate([("http://evil.example/A", ATTRIBUTE), ("http://evil.example/a", OTHER)])]
    target = _Workspace([])
    target.attribute_of = lambda indicator: str(indicator["externalID"])  # type: ignore[method-assign]
    target.row_value = lambda row: str(json.loads(row.body)["indicatorValue"])  # type: ignore[method-assign]
    holdings = Holdings(rows, target)
    (match,) = [m for m in alert_matches({"id": "d", "createdDateTime": "2026-12-02T09:00:00Z",
                                          "evidence": [{"url": "http://evil.example/a"}]}) if m.key.startswith("Url:")]
    assert holdings.attributes(match) == {OTHER}


@pytest.mark.parametrize("evidence", [5, True, "text", {"ipAddress": "198.51.100.1"}])
def test_an_alert_whose_evidence_is_not_a_list_is_counted_not_raised(evidence):
    (match,) = alert_matches({"id": "d", "createdDateTime": "2026-12-02T09:00:00Z", "evidence": evidence})
    assert match.key == ""


@pytest.mark.parametrize("depth", [990, 100000])
def test_a_match_row_nested_too_deep_is_read_not_raised(depth):
    """JSON nested past Python's recursion limit (json.loads raises RecursionError, not ValueError)."""
    deep = "[" * depth + json.dumps(STIX) + "]" * depth
    row = {"TimeGenerated": "2026-12-02T10:00:00Z", "SystemAlertId": "a", "Entities": deep, "ExtendedProperties": deep,
           "MatchedValue": "198.51.100.1"}
    assert [m.key for m in match_row(row)] == [STIX]

"""Issue 11 part 2: the tool's MISP fetch under each filter family, against a stand-in that
applies filters as MISP 2.5.1 does (standins/misp_search.py cites the MISP source).

Each tool test runs MispSource (real PyMISP over HTTPS) with a `misp_event_filters` setting and
asserts exactly which events and attributes come back; every expectation is a strict subset of
what an ignored filter would give. The direct tests pin MISP's edge semantics.
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
import time
import uuid
from typing import Any

import pytest

from misp_source import MispSource
from request_log import RequestLog
from settings import load_settings
from standins.misp_search import DecayingModel, Warninglist
from tests.support import misp, search, search_bodies, write_config

NOW = int(time.time())
DAY = 86400
_NS = uuid.UUID("6a1f7c3e-9b2d-4e8f-a0c1-5d6e7f8a9b0c")
CIRCL = {"id": "2", "name": "CIRCL", "uuid": "55f6ea5e-2c60-40e5-964f-47a8950d210f"}
OWN_ORG = {"id": "1", "name": "StandIn Org", "uuid": "5f6c3f7e-0000-4000-8000-000000000001"}
_IDS = itertools.count(100)


@pytest.fixture(autouse=True)
def _now(monkeypatch):
    """Times are relative to the test's start, not to the module's import minutes before."""
    monkeypatch.setattr(sys.modules[__name__], "NOW", int(time.time()))


def attribute(value: str, kind: str = "ip-dst", *tags: str, **fields: Any) -> dict[str, Any]:
    """An IDS attribute edited an hour ago; `tags` are attribute tags."""
    return {"uuid": str(uuid.uuid5(_NS, f"{kind}:{value}")), "type": kind, "category": "Network activity",
            "value": value, "to_ids": True, "deleted": False, "timestamp": str(NOW - 3600),
            "Tag": [{"name": t} for t in tags], **fields}


def event(info: str, *attributes: dict[str, Any], tags: tuple[str, ...] = (), org: dict[str, str] = CIRCL,
          objects: tuple[dict[str, Any], ...] = (), **fields: Any) -> dict[str, Any]:
    """A published event of `org`, edited and published an hour ago."""
    return {"Event": {"id": str(next(_IDS)), "uuid": str(uuid.uuid5(_NS, info)), "info": info, "published": True,
                      "date": "2026-11-01", "threat_level_id": "3", "org_id": org["id"], "orgc_id": org["id"],
                      "Orgc": dict(org), "timestamp": str(NOW - 3600), "publish_timestamp": str(NOW - 3600),
                      "Tag": [{"name": t} for t in tags], "Attribute": list(attributes), "Object": list(objects),
                      **fields}}


def source(standins: Any, tmp_path: Any, filters: dict[str, Any], *, direct: bool = False) -> MispSource:
    """MispSource as the tool builds it, with `filters` as its misp_event_filters setting.
    `direct`: put them in the Settings as they are, for keys settings.py does not list yet."""
    settings = load_settings(write_config(tmp_path, standins, **({} if direct else {"misp_event_filters": filters})),
                             environ={})
    if direct:
        settings = dataclasses.replace(settings, misp_event_filters=(filters,))
    return MispSource(settings, RequestLog(tmp_path / "logs", write_requests=False, verbose=False))


def fetched(standins: Any, tmp_path: Any, filters: dict[str, Any], *, direct: bool = False) -> dict[str, list[str]]:
    """info -> the values of the attributes (the event's, then its objects') the fetch returns."""
    pages = source(standins, tmp_path, filters, direct=direct).pages()
    return {e["info"]: [a["value"] for a in e["Attribute"]] + [a["value"] for o in e["Object"] for a in o["Attribute"]]
            for e in (wrapped["Event"] for page in pages for wrapped in page)}


def attributes_of(standins: Any, tmp_path: Any, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """The events' own attributes, as the fetch returns them."""
    pages = source(standins, tmp_path, filters).pages()
    return [a for page in pages for wrapped in page for a in wrapped["Event"]["Attribute"]]


def infos(standins: Any, tmp_path: Any, filters: dict[str, Any], **options: Any) -> list[str]:
    return sorted(fetched(standins, tmp_path, filters, **options))


def fixture_infos(standins: Any, *, published: bool = True) -> list[str]:
    return sorted(w["Event"]["info"] for w in standins.misp.events if w["Event"]["published"] is published)


# --- published, eventid, uuid, threat_level_id, org, metadata ---------------------------------

def test_published_selects_published_or_unpublished_fixture_events(standins, tmp_path):
    assert infos(standins, tmp_path, {"published": True}) == fixture_infos(standins)
    assert infos(standins, tmp_path, {"published": 0}) == fixture_infos(standins, published=False)
    assert infos(standins, tmp_path, {"published": False}) == fixture_infos(standins, published=False)  # sent as 0
    assert len(fixture_infos(standins, published=False)) == 2


def test_eventid_and_uuid_select_those_events_and_an_attribute_uuid_selects_its_event(standins, tmp_path):
    a, b, c = event("a", attribute("192.0.2.1")), event("b", attribute("192.0.2.2")), event("c", attribute("192.0.2.3"))
    standins.misp.events = [a, b, c]
    assert infos(standins, tmp_path, {"eventid": [a["Event"]["id"], c["Event"]["uuid"]]}) == ["a", "c"]
    assert infos(standins, tmp_path, {"uuid": b["Event"]["uuid"].upper()}) == ["b"]
    assert infos(standins, tmp_path, {"uuid": [c["Event"]["Attribute"][0]["uuid"]]}) == ["c"]  # set_filter_uuid
    assert infos(standins, tmp_path, {"uuid": {"NOT": [a["Event"]["uuid"]]}}) == ["b", "c"]


def test_value_selects_events_with_a_matching_whole_value_or_half(standins, tmp_path):
    standins.misp.events = [event("ip", attribute("192.0.2.1")), event("pair", attribute("evil.example|198.51.100.7", "domain|ip")),
                            event("other", attribute("203.0.113.9"))]
    assert infos(standins, tmp_path, {"value": "192.0.2.1"}) == ["ip"]
    assert infos(standins, tmp_path, {"value": "198.51.100.7"}) == ["pair"]  # value2 of a composite
    assert infos(standins, tmp_path, {"value": "%.example"}) == ["pair"]
    assert infos(standins, tmp_path, {"value": {"NOT": ["192.0.2.1"]}}) == ["other", "pair"]
    assert fetched(standins, tmp_path, {"value": "192.0.2.1"}) == {"ip": ["192.0.2.1"]}


def test_eventinfo_selects_by_the_events_info(standins, tmp_path):
    standins.misp.events = [event("OSINT - Sednit", attribute("192.0.2.1")), event("Ransomware wave", attribute("192.0.2.2"))]
    assert infos(standins, tmp_path, {"eventinfo": "%sednit%"}) == ["OSINT - Sednit"]
    assert infos(standins, tmp_path, {"eventinfo": {"NOT": ["%sednit%"]}}) == ["Ransomware wave"]


def test_threat_level_id_selects_by_equality(standins, tmp_path):
    standins.misp.events = [event("high", attribute("192.0.2.1"), threat_level_id="1"),
                            event("low", attribute("192.0.2.2"), threat_level_id="3"),
                            event("undefined", attribute("192.0.2.3"), threat_level_id="4")]
    assert infos(standins, tmp_path, {"threat_level_id": 1}) == ["high"]
    assert infos(standins, tmp_path, {"threat_level_id": ["1", "4"]}) == ["high", "undefined"]


def test_org_matches_the_creator_org_by_id_name_or_uuid(standins, tmp_path):
    other = {"id": "7", "name": "Other Org", "uuid": "0f0e0d0c-0b0a-4090-8070-605040302010"}
    # The owner org (org_id) is not what `org` tests: MISP compares Event.orgc_id
    standins.misp.events = [event("circl", attribute("192.0.2.1")),
                            event("other", attribute("192.0.2.2"), org=other, org_id="2")]
    assert infos(standins, tmp_path, {"org": "circl"}) == ["circl"]
    assert infos(standins, tmp_path, {"org": other["uuid"]}) == ["other"]
    assert infos(standins, tmp_path, {"org": 7}) == ["other"]
    assert infos(standins, tmp_path, {"org": "!CIRCL"}) == ["other"]
    assert infos(standins, tmp_path, {"org": "No Such Org"}) == []  # resolved to -1


def test_org_of_fixture_events_by_name(standins, tmp_path):
    assert infos(standins, tmp_path, {"org": "CIRCL"}) == fixture_infos(standins)
    assert infos(standins, tmp_path, {"org": "!CIRCL"}) == []


def test_metadata_listing_follows_the_filters(standins, tmp_path):
    standins.misp.events = [event("tagged", attribute("192.0.2.1"), tags=("tlp:green",)),
                            event("plain", attribute("192.0.2.2"))]
    listing = source(standins, tmp_path, {"tags": "tlp:green"}).listing()
    assert list(listing.events) == [standins.misp.events[0]["Event"]["uuid"]] and listing.primary_count == 1
    assert all(b["metadata"] == 1 for b in search_bodies(standins))


# --- tags and event_tags ----------------------------------------------------------------------

@pytest.fixture
def tagged(standins):
    """Events tagged on the event, on an attribute only, on both, and not at all."""
    standins.misp.events = [
        event("event-green", attribute("192.0.2.1"), tags=("tlp:green",)),
        event("attribute-green", attribute("192.0.2.2", "ip-dst", "tlp:green"), attribute("192.0.2.3")),
        event("amber-and-osint", attribute("192.0.2.4", "ip-dst", "type:OSINT"), tags=("tlp:amber",)),
        event("untagged", attribute("192.0.2.5")),
    ]
    return standins


def test_tags_string_and_list_select_events_tagged_on_the_event_or_an_attribute(tagged, tmp_path):
    assert infos(tagged, tmp_path, {"tags": "tlp:green"}) == ["attribute-green", "event-green"]
    assert infos(tagged, tmp_path, {"tags": ["tlp:green", "type:osint"]}) == [
        "amber-and-osint", "attribute-green", "event-green"]
    assert infos(tagged, tmp_path, {"tags": "tlp:%"}) == ["amber-and-osint", "attribute-green", "event-green"]
    assert infos(tagged, tmp_path, {"tags": "tlp:red"}) == []  # no such tag: nothing, not everything
    # The whole event comes back, not only the tagged attribute
    assert fetched(tagged, tmp_path, {"tags": "tlp:green"})["attribute-green"] == ["192.0.2.2", "192.0.2.3"]


def test_tags_and_requires_every_tag_somewhere_in_the_event(tagged, tmp_path):
    assert infos(tagged, tmp_path, {"tags": {"AND": ["tlp:amber", "type:OSINT"]}}) == ["amber-and-osint"]
    assert infos(tagged, tmp_path, {"tags": {"AND": ["tlp:amber", "tlp:green"]}}) == []


def test_tags_not_excludes_event_tags_and_strips_attributes_carrying_the_tag(tagged, tmp_path):
    got = fetched(tagged, tmp_path, {"tags": {"NOT": ["tlp:green"]}})
    assert got == {"attribute-green": ["192.0.2.3"], "amber-and-osint": ["192.0.2.4"], "untagged": ["192.0.2.5"]}
    assert fetched(tagged, tmp_path, {"tags": "!tlp:amber"}).keys() == {"event-green", "attribute-green", "untagged"}
    mixed = fetched(tagged, tmp_path, {"tags": {"OR": ["tlp:%"], "NOT": ["type:OSINT"]}})
    assert mixed == {"event-green": ["192.0.2.1"], "attribute-green": ["192.0.2.2", "192.0.2.3"]}


def test_event_tags_look_at_event_tags_only(tagged, tmp_path):
    assert infos(tagged, tmp_path, {"event_tags": "tlp:green"}) == ["event-green"]
    assert infos(tagged, tmp_path, {"event_tags": "!tlp:amber"}) == ["attribute-green", "event-green", "untagged"]


def test_tags_of_fixture_events(standins, tmp_path):
    ransomware = 'malware_classification:malware-category="Ransomware"'
    assert infos(standins, tmp_path, {"tags": ransomware}) == ["Cerber Ransomware", "Ransomware - Xorist"]
    assert infos(standins, tmp_path, {"tags": "misp-galaxy:%", "published": [0, 1]}) == [
        "MAR-10164494.r1.v1 (SamSam ransomware)",
        "OSINT - HIDDEN COBRA – North Korean Remote Administration Tool: FALLCHILL",
        "OSINT - Sednit update: How Fancy Bear Spent the Year"]


# --- attribute filters: type, category, to_ids, deleted -----------------------------------------

@pytest.fixture
def mixed(standins):
    standins.misp.events = [
        event("net", attribute("192.0.2.1"), attribute("evil.test", "domain"),
              attribute("note", "text", category="Other", to_ids=False)),
        event("files", attribute("d41d8cd98f00b204e9800998ecf8427e", "md5", category="Payload delivery"),
              objects=({"name": "file", "deleted": False,
                        "Attribute": [attribute("a.exe", "filename", category="Payload delivery", to_ids=False)]},)),
        event("mail", attribute("x@evil.test", "email", category="Payload delivery")),
    ]
    return standins


def test_type_selects_events_having_one_and_returns_them_whole(mixed, tmp_path):
    # MISP's events restSearch does not trim attributes by type (fetchEvent has no type condition)
    assert fetched(mixed, tmp_path, {"type_attribute": "domain"}) == {"net": ["192.0.2.1", "evil.test", "note"]}
    assert infos(mixed, tmp_path, {"type_attribute": ["md5", "domain"]}) == ["files", "net"]
    assert infos(mixed, tmp_path, {"type_attribute": "filename"}) == ["files"]  # an object's attribute
    assert infos(mixed, tmp_path, {"type_attribute": "email-src"}) == ["mail"]  # email-src also asks for email
    assert infos(mixed, tmp_path, {"type_attribute": "ip-%"}) == ["net"]
    assert search_bodies(mixed)[0]["type"] == "domain"  # PyMISP's name for it


def test_category_selects_events_having_one(mixed, tmp_path):
    assert infos(mixed, tmp_path, {"category": "Other"}) == ["net"]
    assert infos(mixed, tmp_path, {"category": "payload delivery"}) == ["files", "mail"]
    # NOT: the event has an attribute of another category
    assert infos(mixed, tmp_path, {"category": "!Network activity"}) == ["files", "mail", "net"]


def test_to_ids_selects_and_trims(mixed, tmp_path):
    assert fetched(mixed, tmp_path, {"to_ids": 1}) == {
        "net": ["192.0.2.1", "evil.test"], "files": ["d41d8cd98f00b204e9800998ecf8427e"], "mail": ["x@evil.test"]}
    assert fetched(mixed, tmp_path, {"to_ids": 0}) == {"net": ["note"], "files": ["a.exe"]}


def test_deleted_shows_soft_deleted_attributes_of_the_users_own_org_only(standins, tmp_path):
    live, gone = attribute("192.0.2.1"), attribute("192.0.2.2", deleted=True)
    standins.misp.events = [event("own", live, gone, org=OWN_ORG), event("theirs", live, gone)]
    assert fetched(standins, tmp_path, {}) == {"own": ["192.0.2.1"], "theirs": ["192.0.2.1"]}
    assert fetched(standins, tmp_path, {"deleted": 0}) == {"own": ["192.0.2.1"], "theirs": ["192.0.2.1"]}
    assert fetched(standins, tmp_path, {"deleted": [0, 1]}) == {
        "own": ["192.0.2.1", "192.0.2.2"], "theirs": ["192.0.2.1"]}
    assert fetched(standins, tmp_path, {"deleted": 1}) == {"own": ["192.0.2.2"], "theirs": []}
    assert fetched(standins, tmp_path, {"deleted": "only"}) == {"own": ["192.0.2.2"], "theirs": []}


def test_deleted_selects_only_events_with_a_deleted_attribute(standins, tmp_path):
    standins.misp.events = [event("clean", attribute("192.0.2.1"), org=OWN_ORG),
                            event("edited", attribute("192.0.2.2", deleted=True), org=OWN_ORG)]
    assert fetched(standins, tmp_path, {"deleted": 1}) == {"edited": ["192.0.2.2"]}


# --- enforceWarninglist -------------------------------------------------------------------------

WARNINGLISTS = [
    Warninglist("public DNS", "string", ["8.8.8.8"], ["ip-dst", "ip-src"]),
    Warninglist("sinkholes", "substring", ["sinkhole"]),
    Warninglist("top sites", "hostname", ["google.com."], ["domain", "hostname", "url"]),
    Warninglist("RFC 1918", "cidr", ["10.0.0.0/8", "2001:db8::/32"]),
    Warninglist("test TLD", "regex", ["/^[a-z0-9-]+\\.TEST$/i"], ["domain"]),
    Warninglist("disabled", "string", ["192.0.2.9"], enabled=False),
]


def test_enforce_warninglist_drops_hits_of_each_list_type(standins, tmp_path):
    standins.misp.warninglists = WARNINGLISTS
    values = [("8.8.8.8", "ip-dst"), ("8.8.8.8", "domain"), ("a.sinkhole.example", "hostname"),
              ("www.google.com", "domain"), ("https://mail.google.com/u/0", "url"), ("notgoogle.com", "domain"),
              ("10.1.2.3", "ip-dst"), ("10.0.0.1|443", "ip-dst|port"), ("2001:db8::1", "ip-src"),
              ("evil.test", "domain"), ("evil.test.example", "domain"), ("192.0.2.9", "ip-dst")]
    standins.misp.events = [event("mixed", *(attribute(v, t) for v, t in values),
                                  attribute("10.9.9.9", "ip-dst", to_ids=False))]
    assert fetched(standins, tmp_path, {"enforceWarninglist": True}) == {"mixed": [
        "8.8.8.8", "notgoogle.com", "evil.test.example", "192.0.2.9", "10.9.9.9"]}  # 8.8.8.8 as a domain: wrong type
    assert len(fetched(standins, tmp_path, {"enforceWarninglist": False})["mixed"]) == 13


def test_enforce_warninglist_returns_an_event_left_without_attributes(standins, tmp_path):
    standins.misp.warninglists = [Warninglist("RFC 1918", "cidr", ["10.0.0.0/8"])]
    standins.misp.events = [event("all private", attribute("10.0.0.1"), attribute("10.0.0.2")),
                            event("public", attribute("192.0.2.1"))]
    assert fetched(standins, tmp_path, {"enforceWarninglist": 1}) == {"all private": [], "public": ["192.0.2.1"]}


def test_enforce_warninglist_on_fixture_events(standins, tmp_path):
    standins.misp.warninglists = [Warninglist("hashes", "substring", ["a"], ["md5", "sha1", "sha256"])]
    before = fetched(standins, tmp_path, {"published": True, "to_ids": True})
    after = fetched(standins, tmp_path, {"published": True, "to_ids": True, "enforceWarninglist": True})
    assert before.keys() == after.keys()
    removed = {info: sorted(set(before[info]) - set(after[info])) for info in before}
    assert any(removed.values())
    assert all("a" in value for values in removed.values() for value in values)


# --- time filters -------------------------------------------------------------------------------

@pytest.fixture
def dated(standins):
    standins.misp.events = [
        event("old", attribute("192.0.2.1"), date="2026-10-01",
              timestamp=str(NOW - 20 * DAY), publish_timestamp=str(NOW - 10 * DAY)),
        event("recent", attribute("192.0.2.2"), date="2026-11-15",
              timestamp=str(NOW - 5 * DAY), publish_timestamp=str(NOW - 3 * DAY)),
        event("new", attribute("192.0.2.3"), date="2026-12-01",
              timestamp=str(NOW - 1800), publish_timestamp=str(NOW - 600)),
    ]
    return standins


def test_publish_timestamp_and_last_select_by_publish_time(dated, tmp_path):
    assert infos(dated, tmp_path, {"publish_timestamp": "4d"}) == ["new", "recent"]
    assert infos(dated, tmp_path, {"publish_timestamp": "30m"}) == ["new"]
    assert infos(dated, tmp_path, {"publish_timestamp": ["11d", "2d"]}) == ["old", "recent"]
    assert infos(dated, tmp_path, {"last": "1h"}) == ["new"]
    assert "publish_timestamp" in search_bodies(dated)[-1] and "last" not in search_bodies(dated)[-1]


def test_timestamp_and_event_timestamp_select_by_edit_time(dated, tmp_path):
    assert infos(dated, tmp_path, {"timestamp": "12h"}) == ["new"]
    assert infos(dated, tmp_path, {"timestamp": NOW - 6 * DAY}) == ["new", "recent"]
    assert infos(dated, tmp_path, {"event_timestamp": [NOW - 21 * DAY, NOW - 4 * DAY]}) == ["old", "recent"]


def test_date_from_and_date_to_select_by_event_date_inclusively(dated, tmp_path):
    assert infos(dated, tmp_path, {"date_from": "2026-11-15"}) == ["new", "recent"]
    assert infos(dated, tmp_path, {"date_to": "2026-11-15"}) == ["old", "recent"]
    assert infos(dated, tmp_path, {"date_from": "2026-10-02", "date_to": "2026-11-30"}) == ["recent"]


def test_date_selects_by_event_date_from_a_time(dated, tmp_path):
    # `date` is not in settings.py's keyword list (yet): given to MispSource directly
    assert infos(dated, tmp_path, {"published": True, "date": "2026-11-15"}, direct=True) == ["new", "recent"]
    window = {"published": True, "date": ["2026-10-01", "2026-11-15"]}
    assert infos(dated, tmp_path, window, direct=True) == ["old", "recent"]


# --- includeDecayScore --------------------------------------------------------------------------

def test_include_decay_score_scores_each_attribute_from_its_last_sighting_or_timestamp(standins, tmp_path):
    standins.misp.decaying_models = [DecayingModel(id="7", name="linear", lifetime=10, decay_speed=1,
                                                   threshold=50, default_base_score=100)]
    sighted = attribute("192.0.2.1", timestamp=str(NOW - 5 * DAY))
    seen = attribute("192.0.2.2", timestamp=str(NOW - 9 * DAY), last_seen=time.strftime(
        "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(NOW - 8 * DAY)))
    edited = attribute("192.0.2.3", timestamp=str(NOW - 1 * DAY))
    standins.misp.sightings = {sighted["uuid"]: [NOW - 7 * DAY, NOW - 2 * DAY], edited["uuid"]: [NOW - 3 * DAY]}
    standins.misp.events = [event("decaying", sighted, seen, edited)]
    scores = {a["value"]: a["decay_score"] for a in attributes_of(standins, tmp_path, {"includeDecayScore": True})}
    expected = {"192.0.2.1": (80, False), "192.0.2.2": (20, True), "192.0.2.3": (90, False)}
    for value, (score, decayed) in expected.items():
        [entry] = scores[value]
        assert entry["score"] == pytest.approx(score, abs=0.1) and entry["decayed"] is decayed
        assert entry["DecayingModel"] == {"id": "7", "name": "linear"}
    assert not any("decay_score" in a for a in attributes_of(standins, tmp_path, {"includeDecayScore": False}))
    assert not any("decay_score" in a for a in standins.misp.events[0]["Event"]["Attribute"])


def test_decay_score_follows_the_polynomial_formula_and_the_models_types(standins, tmp_path):
    model = DecayingModel(lifetime=30, decay_speed=2, threshold=40, default_base_score=90, attribute_types=["domain"])
    standins.misp.decaying_models = [model]
    standins.misp.events = [event("e", attribute("evil.test", "domain", timestamp=str(NOW - 12 * DAY)),
                                  attribute("192.0.2.1", timestamp=str(NOW - 12 * DAY)))]
    domain, address = attributes_of(standins, tmp_path, {"includeDecayScore": 1})
    [entry] = domain["decay_score"]
    assert entry["score"] == pytest.approx(90 * (1 - (12 / 30) ** 0.5), abs=0.1)  # 33.1
    assert entry["decayed"] is True and entry["base_score"] == 90
    assert "decay_score" not in address  # no model for its type


# --- direct stand-in semantics ------------------------------------------------------------------

def values_of(answer: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {w["Event"]["info"]: [a["value"] for a in w["Event"]["Attribute"]] for w in answer}


def test_time_bounds_are_inclusive_and_ranges_may_be_reversed(dated):
    client = misp(dated)
    recent = int(dated.misp.events[1]["Event"]["publish_timestamp"])
    assert sorted(values_of(search(client, publish_timestamp=recent))) == ["new", "recent"]
    assert list(values_of(search(client, publish_timestamp=[recent, recent]))) == ["recent"]
    assert list(values_of(search(client, publish_timestamp=[recent + 1, recent - 1]))) == ["recent"]
    assert search(client, publish_timestamp=recent + 1, timestamp=["0", NOW - 5 * DAY]) == []
    assert list(values_of(search(client, timestamp=["0", NOW - 5 * DAY]))) == ["old", "recent"]  # 0: no lower bound
    assert search(client, publish_timestamp="soon") == []  # unparseable: MISP's time() + 1
    assert list(values_of(search(client, date_from="2026-12-01", date_to="2026-12-01"))) == ["new"]


def test_relative_times_in_days_hours_minutes_and_seconds(dated):
    client = misp(dated)
    assert list(values_of(search(client, publish_timestamp="700s"))) == ["new"]
    assert list(values_of(search(client, publish_timestamp="11M"))) == ["new"]
    assert sorted(values_of(search(client, publish_timestamp="73h"))) == ["new", "recent"]
    assert len(search(client, publish_timestamp="10.5d")) == 3


def test_not_tags_drop_events_whose_only_attributes_carry_them(standins):
    standins.misp.events = [event("only blocked", attribute("192.0.2.1", "ip-dst", "false-positive")),
                            event("no attributes", tags=("tlp:green",)),
                            event("one left", attribute("192.0.2.2", "ip-dst", "false-positive"),
                                  attribute("192.0.2.3"))]
    client = misp(standins)
    assert values_of(search(client, tags="!false-positive")) == {"one left": ["192.0.2.3"]}
    assert len(search(client, tags="!no-such-tag")) == 3  # an unknown NOT tag filters nothing


def test_tags_and_with_a_wildcard_matching_two_tags_selects_nothing(standins):
    standins.misp.events = [event("both", attribute("192.0.2.1"), tags=("tlp:green", "tlp:amber"))]
    client = misp(standins)
    assert search(client, tags={"AND": ["tlp:%"]}) == []  # MispAttribute.php 1107: 1 name, 2 tag ids
    assert len(search(client, tags={"AND": ["tlp:gree_"]})) == 1
    assert len(search(client, tag="TLP:GREEN")) == 1  # `tag` stands for `tags`; LIKE ignores case


def test_keys_misp_does_not_apply_to_events_are_ignored(standins):
    client = misp(standins)
    everything = search(client, published=True)
    assert search(client, published=True, quick_filter="no such thing", object_name="no-such-object",
                  include_event_uuid=True, exclude_decayed=True, score=99, decayingModel=[5]) == everything


def test_published_false_is_skipped_by_the_selection_but_not_by_the_fetch(standins):
    # Event::filterEventIds skips a JSON false; fetchEvent still keeps Event.published = false,
    # so a page over all events holds only its unpublished ones (the first page here: none)
    client = misp(standins)
    assert search(client, published=False, limit=2, page=1) == []
    assert [w["Event"]["info"][:14] for w in search(client, published=False, limit=2, page=2)] == ["OSINT - Sednit"]
    assert len(search(client, published=0, limit=2, page=1)) == 2


def test_deleted_only_selects_like_mysql_casts_it(standins):
    # set_filter_deleted: Attribute.deleted IN ('only') is deleted = 0 for MySQL
    standins.misp.events = [event("all deleted", attribute("192.0.2.1", deleted=True), org=OWN_ORG),
                            event("mixed", attribute("192.0.2.2", deleted=True), attribute("192.0.2.3"), org=OWN_ORG)]
    assert values_of(search(misp(standins), deleted="only")) == {"mixed": ["192.0.2.2"]}


def test_warninglist_regex_and_hostname_details(standins):
    standins.misp.warninglists = [Warninglist("hosts", "hostname", ["Example.COM"]),
                                  Warninglist("regex", "regex", ["#^/admin#"], ["uri"])]
    standins.misp.events = [event("e", attribute("example.com.", "domain"), attribute("a.b.example.com/x", "url"),
                                  attribute("https://example.org", "url"), attribute("/admin/x", "uri"),
                                  attribute("/user/admin", "uri"))]
    answer = search(misp(standins), enforceWarninglist=True)
    assert values_of(answer) == {"e": ["https://example.org", "/user/admin"]}


def test_a_time_list_of_other_than_two_elements_is_refused(standins):
    answer = search(misp(standins), date=[1, 2, 3])  # PyMISP cuts timestamp lists to two
    assert answer["errors"][0] == 400


def test_misps_own_last_key_is_publish_timestamp(dated):
    # PyMISP renames `last`; MISP applies it too when a body carries it (set_filter_timestamp)
    answer = misp(dated).direct_call("events/restSearch", {"returnFormat": "json", "last": "4d"})
    assert sorted(w["Event"]["info"] for w in answer) == ["new", "recent"]


def test_string_values_are_trimmed_and_split_on_double_bars(tagged):
    client = misp(tagged)
    assert sorted(values_of(search(client, tags=" tlp:amber||type:OSINT "))) == ["amber-and-osint"]
    assert sorted(values_of(search(client, tags="tlp:green||tlp:amber"))) == [
        "amber-and-osint", "attribute-green", "event-green"]

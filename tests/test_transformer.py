"""The mapping contract (mapping.md), row by row, on the pure transformer."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest

import misp_transformer
import reconcile
from constants import INDICATOR_MAX_BYTES, SkipReason
from misp_transformer import GraphTransformer, MappingPolicy, StixTransformer, json_bytes

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def attribute(misp_type: str, value: str, to_ids=True, **extra) -> dict:
    return {"uuid": str(uuid.uuid4()), "type": misp_type, "value": value, "to_ids": to_ids, **extra}


def event(*attributes: dict, tags: tuple[str, ...] | list[str] = (), **extra) -> dict:
    return {"Event": {
        "uuid": "5a0d5bf4-99c8-4f15-9879-22b1950d210f", "info": "Test event", "timestamp": "1510922092",
        "Attribute": list(attributes), "Tag": [{"name": name} for name in tags], **extra,
    }}


DEFAULT_POLICY = MappingPolicy()


def run(*attributes: dict, policy: MappingPolicy = DEFAULT_POLICY, **event_kw):
    return GraphTransformer(policy, NOW).transform(event(*attributes, **event_kw))


def one(misp_type: str, value: str, policy: MappingPolicy = DEFAULT_POLICY, **extra) -> dict:
    result = run(attribute(misp_type, value, **extra), policy=policy)
    assert result.skips == [], result.skips
    (indicator,) = result.indicators
    return indicator


def skip_reason(misp_type: str, value: str, policy: MappingPolicy = DEFAULT_POLICY) -> SkipReason:
    result = run(attribute(misp_type, value), policy=policy)
    assert result.indicators == []
    return result.skips[0].reason


def observable(indicator: dict) -> dict:
    common = {"action", "targetProduct", "passiveOnly", "isActive", "externalId", "description",
              "additionalInformation", "expirationDateTime", "tlpLevel", "threatType", "confidence",
              "lastReportedDateTime", "tags", "killChain", "diamondModel", "activityGroupNames", "malwareFamilyNames"}
    return {key: value for key, value in indicator.items() if key not in common}


SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"

MAPPING_ROWS = [
    ("ip-dst", "198.51.100.7", {"networkDestinationIPv4": "198.51.100.7"}),
    ("ip-dst", "2001:db8::1", {"networkDestinationIPv6": "2001:db8::1"}),
    ("ip-dst", "10.0.0.0/16", {"networkDestinationCidrBlock": "10.0.0.0/16"}),
    ("ip-dst", "2001:db8::/32", {"networkDestinationCidrBlock": "2001:db8::/32"}),
    ("ip-dst", "::ffff:1.2.3.4", {"networkDestinationIPv6": "::ffff:102:304"}),
    ("ip-src", "203.0.113.9", {"networkSourceIPv4": "203.0.113.9"}),
    ("ip-src", "192.0.2.0/24", {"networkSourceCidrBlock": "192.0.2.0/24"}),
    ("ip-dst|port", "198.51.100.7|443", {"networkDestinationIPv4": "198.51.100.7", "networkDestinationPort": 443}),
    ("ip-src|port", "2001:db8::5|8080", {"networkSourceIPv6": "2001:db8::5", "networkSourcePort": 8080}),
    ("domain", "Evil.Example.COM.", {"domainName": "evil.example.com"}),
    ("hostname", " mail.example.org ", {"domainName": "mail.example.org"}),
    ("domain", "bücher.example", {"domainName": "xn--bcher-kva.example"}),
    ("domain|ip", "evil.example.com|198.51.100.7", {"domainName": "evil.example.com", "networkIPv4": "198.51.100.7"}),
    ("domain|ip", "evil.example.com|2001:db8::7", {"domainName": "evil.example.com", "networkIPv6": "2001:db8::7"}),
    ("hostname|port", "c2.example.net|8443", {"domainName": "c2.example.net", "networkDestinationPort": 8443}),
    ("url", "https://evil.example.com/a?b=c", {"url": "https://evil.example.com/a?b=c"}),
    ("url", "evil.example.com/path", {"url": "http://evil.example.com/path"}),
    ("email-src", "bad@Phish.Example", {"emailSenderAddress": "bad@phish.example", "emailSourceDomain": "phish.example"}),
    ("email-dst", "victim@example.org", {"emailRecipient": "victim@example.org"}),
    ("email-subject", "Invoice overdue", {"emailSubject": "Invoice overdue"}),
    ("email-x-mailer", "EvilMailer 1.0", {"emailXMailer": "EvilMailer 1.0"}),
    ("email-src-display-name", "Accounts Team", {"emailSenderName": "Accounts Team"}),
    ("filename", "invoice.pdf.exe", {"fileName": "invoice.pdf.exe"}),
    ("md5", MD5.upper(), {"fileHashType": "md5", "fileHashValue": MD5}),
    ("sha1", SHA1, {"fileHashType": "sha1", "fileHashValue": SHA1}),
    ("sha256", SHA256, {"fileHashType": "sha256", "fileHashValue": SHA256}),
    ("authentihash", SHA256, {"fileHashType": "authenticodeHash256", "fileHashValue": SHA256}),
    ("ssdeep", "96:s4Ud1Lj96tHHlZDrwciQmA:s4Ud1Lj96tHHlZDrwciQmA",
     {"fileHashType": "ctph", "fileHashValue": "96:s4Ud1Lj96tHHlZDrwciQmA:s4Ud1Lj96tHHlZDrwciQmA"}),
    ("sha512", "a" * 128, {"fileHashType": "unknown", "fileHashValue": "a" * 128}),
    ("sha224", "b" * 56, {"fileHashType": "unknown", "fileHashValue": "b" * 56}),
    ("sha384", "c" * 96, {"fileHashType": "unknown", "fileHashValue": "c" * 96}),
    ("sha512/224", "d" * 56, {"fileHashType": "unknown", "fileHashValue": "d" * 56}),
    ("sha512/256", "e" * 64, {"fileHashType": "unknown", "fileHashValue": "e" * 64}),
    ("sha3-256", "f" * 64, {"fileHashType": "unknown", "fileHashValue": "f" * 64}),
    ("imphash", MD5, {"fileHashType": "unknown", "fileHashValue": MD5}),
    ("impfuzzy", "48:ABC/def:ghi+JKL", {"fileHashType": "unknown", "fileHashValue": "48:ABC/def:ghi+JKL"}),
    ("pehash", SHA1, {"fileHashType": "unknown", "fileHashValue": SHA1}),
    ("tlsh", "T1" + "A" * 70, {"fileHashType": "unknown", "fileHashValue": "a" * 70}),
    ("vhash", "0150366d1570", {"fileHashType": "unknown", "fileHashValue": "0150366d1570"}),
    ("telfhash", "1" * 70, {"fileHashType": "unknown", "fileHashValue": "1" * 70}),
    ("cdhash", SHA1, {"fileHashType": "unknown", "fileHashValue": SHA1}),
    ("filename|sha256", f"evil.exe|{SHA256}", {"fileName": "evil.exe", "fileHashType": "sha256", "fileHashValue": SHA256}),
    ("filename|md5", f"evil.exe|{MD5}", {"fileName": "evil.exe", "fileHashType": "md5", "fileHashValue": MD5}),
    ("filename|authentihash", f"a.dll|{SHA256}", {"fileName": "a.dll", "fileHashType": "authenticodeHash256", "fileHashValue": SHA256}),
    ("malware-sample", f"dropper.bin|{MD5}", {"fileName": "dropper.bin", "fileHashType": "md5", "fileHashValue": MD5}),
    ("mutex", "Global\\EvilMutex", {"fileMutexName": "Global\\EvilMutex"}),
    ("user-agent", "Mozilla/5.0 (EvilBot)", {"userAgent": "Mozilla/5.0 (EvilBot)"}),
    ("AS", "AS64500", {"networkSourceAsn": 64500}),
    ("AS", "64501", {"networkSourceAsn": 64501}),
]


@pytest.mark.parametrize(("misp_type", "value", "expected"), MAPPING_ROWS, ids=[f"{t}:{v[:20]}" for t, v, _ in MAPPING_ROWS])
def test_every_mapping_row_fills_exactly_its_fields(misp_type, value, expected):
    assert observable(one(misp_type, value)) == expected


def test_network_ignore_direction_also_fills_directionless_fields():
    policy = MappingPolicy(network_ignore_direction=True)
    assert observable(one("ip-dst|port", "198.51.100.7|443", policy)) == {
        "networkDestinationIPv4": "198.51.100.7", "networkIPv4": "198.51.100.7",
        "networkDestinationPort": 443, "networkPort": 443,
    }
    assert observable(one("ip-src", "10.1.0.0/16", policy)) == {"networkSourceCidrBlock": "10.1.0.0/16", "networkCidrBlock": "10.1.0.0/16"}


@pytest.mark.parametrize(("misp_type", "value"), [
    ("ip-dst", "1.2.3"), ("ip-dst", "999.1.1.1"), ("ip-src", "not an ip"), ("ip-dst|port", "1.2.3.4"),
    ("ip-dst|port", "1.2.3.4|70000"), ("ip-dst|port", "1.2.3.4|http"), ("domain", "-bad-.example"),
    ("domain", "198.51.100.7"), ("domain", ""), ("hostname", "a b.example"), ("domain|ip", "example.com"),
    ("domain|ip", "example.com|10.0.0.0/8"), ("url", "   "), ("url", "http://a b"), ("email-src", "nobody"),
    ("email-dst", "@example.com"), ("md5", "xyz"), ("sha256", MD5), ("sha1", "g" * 40), ("ssdeep", "not-fuzzy"),
    ("filename|sha256", "evil.exe"), ("filename|sha256", f"evil.exe|{MD5}"), ("malware-sample", "x.bin"),
    ("AS", "AS-ONE"), ("AS", "4294967296"), ("email-subject", "  "), ("mutex", ""),
])
def test_invalid_values_are_counted_not_sent(misp_type, value):
    assert skip_reason(misp_type, value) is SkipReason.INVALID_VALUE


@pytest.mark.parametrize("misp_type", ["yara", "link", "text", "btc", "email-body", "vulnerability"])
def test_types_without_a_graph_field_are_unsupported(misp_type):
    assert skip_reason(misp_type, "anything") is SkipReason.UNSUPPORTED_TYPE


@pytest.mark.parametrize(("misp_type", "value"), [
    ("regkey", "HKLM\\Software\\Run"), ("mac-address", "00:11:22:33:44:55"), ("x509-fingerprint-sha1", SHA1),
])
def test_observables_without_a_graph_field_are_not_for_this_target(misp_type, value):
    """Read and valid (STIX has a pattern for them), but Graph has no field."""
    assert skip_reason(misp_type, value) is SkipReason.NOT_FOR_TARGET


def test_port_and_size_are_weak_unless_allowed():
    assert skip_reason("port", "443") is SkipReason.WEAK_OBSERVABLE
    assert skip_reason("size-in-bytes", "1024") is SkipReason.WEAK_OBSERVABLE
    allowed = MappingPolicy(allow_weak_observables=True)
    assert observable(one("port", "443", allowed)) == {"networkPort": 443}
    assert observable(one("size-in-bytes", "1024", allowed)) == {"fileSize": 1024}


def test_common_fields_follow_config_and_event():
    policy = MappingPolicy(action="block", passive_only=True, days_to_expire=10, default_confidence=40)
    a = attribute("domain", "evil.example.com")
    indicator = one("domain", "evil.example.com", policy) | {}
    indicator = GraphTransformer(policy, NOW).transform(event(a)).indicators[0]
    assert indicator["externalId"] == a["uuid"]
    assert indicator["action"] == "block" and indicator["passiveOnly"] is True
    assert indicator["targetProduct"] == "Azure Sentinel" and indicator["isActive"] is True
    assert indicator["expirationDateTime"] == "2026-12-08T12:00:00Z"
    assert indicator["lastReportedDateTime"] == "2017-11-17T12:34:52Z"
    assert indicator["confidence"] == 40
    assert indicator["tlpLevel"] == "red" and indicator["threatType"] == "WatchList"
    assert indicator["description"] == "Test event"


def test_description_adds_comment_and_is_cut_to_100_characters():
    long_info = "OSINT - " + "x" * 150
    result = GraphTransformer(MappingPolicy(), NOW).transform(event(attribute("domain", "a.example", comment="C2 server"), info=long_info))
    indicator = result.indicators[0]
    assert len(indicator["description"]) == 100 and indicator["description"].endswith("\u2026")
    assert indicator["additionalInformation"].startswith(long_info + " - C2 server")
    short = one("domain", "a.example", comment="C2 server")
    assert short["description"] == "Test event - C2 server"


def test_tlp_most_restrictive_and_attribute_wins():
    result = run(
        attribute("domain", "a.example"),
        attribute("domain", "b.example", Tag=[{"name": "TLP:GREEN"}]),
        tags=["tlp:clear", "tlp:amber+strict"],
    )
    assert [i["tlpLevel"] for i in result.indicators] == ["amber", "green"]
    assert [i["tlpLevel"] for i in run(attribute("ip-dst", "1.2.3.4"), tags=["tlp:clear"]).indicators] == ["white"]
    assert all("tags" not in i for i in result.indicators)


def test_taxonomies_map_and_are_not_repeated_as_tags():
    result = run(
        attribute("url", "http://x.example/", Tag=[
            {"name": "sentinel-threattype:Phishing"}, {"name": "misp:confidence-level=\"rarely-confident\""},
            {"name": "kill-chain:Delivery"}, {"name": "custom:attr"},
        ]),
        attribute("url", "http://y.example/"),
        tags=["sentinel-threattype:botnet", "kill-chain:Command and Control", "kill-chain:Actions on Objectives",
              "diamond-model:Infrastructure", "misp:confidence-level=\"usually-confident\"", "type:OSINT"],
    )
    own, inherited = result.indicators
    assert own["threatType"] == "Phishing" and own["confidence"] == 25 and own["killChain"] == ["Delivery"]
    assert inherited["threatType"] == "Botnet" and inherited["confidence"] == 75
    assert inherited["killChain"] == ["C2", "Actions"] and inherited["diamondModel"] == "infrastructure"
    assert own["diamondModel"] == "infrastructure"
    assert own["tags"] == ["type:OSINT", "custom:attr"] and inherited["tags"] == ["type:OSINT"]


def test_local_tags_ignored_only_when_configured():
    a = attribute("domain", "a.example", Tag=[{"name": "tlp:green", "local": 1}, {"name": "secret-case", "local": "1"}])
    ignored = GraphTransformer(MappingPolicy(), NOW).transform(event(a, tags=[])).indicators[0]
    assert ignored["tlpLevel"] == "red" and "tags" not in ignored
    kept = GraphTransformer(MappingPolicy(ignore_local_tags=False), NOW).transform(event(a)).indicators[0]
    assert kept["tlpLevel"] == "green" and kept["tags"] == ["secret-case"]


def test_context_attributes_and_galaxies_name_groups_and_families():
    result = run(
        attribute("threat-actor", "APT28", to_ids=False),
        attribute("malware-type", "Sednit", to_ids=False),
        attribute("comment", "Seen in phishing wave", to_ids=False),
        attribute("domain", "a.example", Tag=[{"name": 'misp-galaxy:tool="Mimikatz"'}]),
        tags=['misp-galaxy:threat-actor="Sofacy"', 'misp-galaxy:mitre-intrusion-set="APT28"',
              'misp-galaxy:malpedia="X-Agent"', 'misp-galaxy:ransomware="Locky"', 'misp-galaxy:rat="FALLCHILL"'],
    )
    (indicator,) = result.indicators
    assert indicator["activityGroupNames"] == ["Sofacy", "APT28"]
    assert indicator["malwareFamilyNames"] == ["X-Agent", "Locky", "Sednit", "Mimikatz"]
    assert indicator["tags"] == ['misp-galaxy:rat="FALLCHILL"']
    assert "Seen in phishing wave" in indicator["additionalInformation"]
    assert sorted(s.reason for s in result.skips) == [SkipReason.CONTEXT] * 3


def test_object_attributes_deleted_and_not_ids_are_accounted():
    objects = [
        {"name": "file", "Attribute": [attribute("sha256", SHA256), attribute("filename", "a.exe", to_ids=False)]},
        {"name": "file", "deleted": True, "Attribute": [attribute("md5", MD5)]},
    ]
    result = run(attribute("domain", "a.example", deleted=True), attribute("ip-dst", "1.2.3.4", to_ids="1"), Object=objects)
    assert result.attributes == 5
    assert [observable(i) for i in result.indicators] == [
        {"networkDestinationIPv4": "1.2.3.4"}, {"fileHashType": "sha256", "fileHashValue": SHA256},
    ]
    assert sorted(s.reason.value for s in result.skips) == ["deleted", "deleted", "not-to-ids"]


@pytest.mark.parametrize("broken", [
    None, [], "event", {"Event": None}, {"Event": {"Attribute": "nope"}},
    {"Event": {"Attribute": [None, 1, {"type": "domain"}, {"uuid": "x", "type": 5}], "Tag": "x"}},
    {"Event": {"Attribute": [{"uuid": "u1", "type": "domain", "value": ["a"], "to_ids": True}], "Tag": [None, {"name": 3}]}},
    {"Event": {"Object": [{"Attribute": None}, None], "Galaxy": [{"GalaxyCluster": [None, {"tag_name": 5}]}]}},
])
def test_malformed_events_never_raise(broken):
    result = GraphTransformer(MappingPolicy(), NOW).transform(broken)
    assert result.indicators == []
    assert all(skip.reason in (SkipReason.MALFORMED, SkipReason.INVALID_VALUE) for skip in result.skips)


def test_real_public_events_transform_with_every_attribute_accounted(fixture_events):
    transformer = GraphTransformer(MappingPolicy(), NOW)
    for wrapped in fixture_events:
        result = transformer.transform(wrapped)
        assert len(result.indicators) + len(result.skips) == result.attributes > 0
        assert all(i["tlpLevel"] == "white" for i in result.indicators if wrapped["Event"].get("Tag"))


def test_unicode_junk_and_huge_values_are_invalid_not_crashes():
    assert skip_reason("domain", "bad\udcffhost.example") is SkipReason.INVALID_VALUE
    assert skip_reason("url", "http://x.example/" + "a" * 5000) is SkipReason.INVALID_VALUE
    indicator = GraphTransformer(MappingPolicy(), NOW).transform(
        event(attribute("domain", "ok.example", comment="broken \udcff byte"), info="info\x00")).indicators[0]
    assert indicator["description"] == "info\ufffd - broken \ufffd byte"


@pytest.mark.parametrize("timestamp", ["-30610224001", "99999999999999", "not-a-time", ""])
def test_out_of_range_event_timestamps_are_left_out(timestamp):
    indicator = GraphTransformer(MappingPolicy(), NOW).transform(event(attribute("domain", "a.example"), timestamp=timestamp)).indicators[0]
    assert "lastReportedDateTime" not in indicator


@pytest.mark.parametrize(("misp_type", "value"), [
    ("AS", "AS\u00b2"), ("AS", "\u0661\u0662"), ("AS", "AS\uff16\uff14\uff15\uff10\uff10"), ("AS", "+64500"),
    ("ip-dst|port", "1.2.3.4|\u00b2"), ("ip-src|port", "1.2.3.4|\uff18\uff10"), ("hostname|port", "h.example|\u0663"),
    ("ip-dst|port", "1.2.3.4|8_0"), ("ip-dst|port", "1.2.3.4|" + "9" * 4000),
])
def test_numbers_are_ascii_digits_only(misp_type, value):
    assert skip_reason(misp_type, value) is SkipReason.INVALID_VALUE


def test_weak_numbers_and_timestamps_are_ascii_digits_only():
    allowed = MappingPolicy(allow_weak_observables=True)
    assert skip_reason("size-in-bytes", "\u0663", allowed) is SkipReason.INVALID_VALUE
    assert skip_reason("size-in-bytes", str(2**63), allowed) is SkipReason.INVALID_VALUE
    assert skip_reason("port", "\u00b2", allowed) is SkipReason.INVALID_VALUE
    assert skip_reason("ssdeep", "\u0663:abc:def") is SkipReason.INVALID_VALUE
    assert observable(one("port", "0080", allowed)) == {"networkPort": 80}
    for timestamp in ("\u0661\u0665\u0661\u0660", "1510922092\u00b2", "1_510_922_092"):
        indicator = run(attribute("domain", "a.example"), timestamp=timestamp).indicators[0]
        assert "lastReportedDateTime" not in indicator
    indicator = run(attribute("domain", "a.example"), timestamp=1510922092).indicators[0]
    assert indicator["lastReportedDateTime"] == "2017-11-17T12:34:52Z"


def failing(*args):
    raise RuntimeError("a bug in one builder")


def test_an_exception_in_one_attribute_becomes_an_internal_error_skip(monkeypatch):
    monkeypatch.setitem(misp_transformer.OBSERVABLE_TYPES, "domain", failing)
    bad = attribute("domain", "x" * 3000 + ".example")
    result = run(attribute("ip-dst", "198.51.100.7"), bad, attribute("url", "http://ok.example/"))
    assert [observable(i) for i in result.indicators] == [{"networkDestinationIPv4": "198.51.100.7"}, {"url": "http://ok.example/"}]
    (skip,) = result.skips
    assert (skip.reason, skip.attribute_uuid, skip.event_uuid) == (SkipReason.INTERNAL_ERROR, bad["uuid"], event()["Event"]["uuid"])
    assert skip.detail == "RuntimeError while transforming"


def test_an_event_whose_context_fails_counts_every_attribute_and_is_not_taken_as_read(monkeypatch):
    monkeypatch.setattr(misp_transformer, "event_context", failing)
    result = run(attribute("ip-dst", "198.51.100.7"), Object=[{"Attribute": [attribute("md5", MD5)]}])
    assert result.indicators == [] and result.attributes == 2 and result.event_uuid == ""
    assert [(s.reason, s.detail) for s in result.skips] == [(SkipReason.INTERNAL_ERROR, "RuntimeError while reading the event")] * 2
    assert {s.event_uuid for s in result.skips} == {event()["Event"]["uuid"]}


EVENT_UUID = "5a0d5bf4-99c8-4f15-9879-22b1950d210f"


def comment_flood(count: int = 900, size: int = 1000) -> list[dict]:
    """About count × size characters of distinct comment attributes (0.9 MB by default)."""
    return [attribute("comment", f"note {n:04d} " + "c" * (size - 10), to_ids=False) for n in range(count)]


def test_long_free_text_is_cut_to_4096_characters_and_keeps_the_event_line():
    result = run(attribute("domain", "a.example", comment="k" * 9000), *comment_flood(30), info="i" * 9000)
    (indicator,) = result.indicators
    information = indicator["additionalInformation"]
    assert len(information) == 4096 and information.endswith(f"\u2026\nMISP event: {EVENT_UUID}")
    assert reconcile.event_uuid_of(indicator) == EVENT_UUID
    assert len(indicator["description"]) == 100


def test_event_comments_are_distinct_capped_and_in_every_indicator():
    notes = [attribute("comment", f"note {n % 30}", to_ids=False) for n in range(60)]
    result = run(*notes, attribute("domain", "a.example"), attribute("domain", "b.example"))
    first, second = (i["additionalInformation"] for i in result.indicators)
    assert first == second == "\n".join(["Test event", *(f"note {n}" for n in range(20)), f"MISP event: {EVENT_UUID}"])


def test_context_names_are_capped_per_event():
    actors = [attribute("threat-actor", f"actor {n}", to_ids=False) for n in range(50)]
    (indicator,) = run(*actors, attribute("domain", "a.example")).indicators
    assert indicator["activityGroupNames"] == [f"actor {n}" for n in range(20)]


def test_a_09_mb_event_of_comments_gives_small_indicators_for_both_targets():
    flooded = event(*comment_flood(), *(attribute("domain", f"d{n}.example") for n in range(30)))
    for transformer in (GraphTransformer(MappingPolicy(), NOW), StixTransformer(MappingPolicy(), NOW)):
        result = transformer.transform(flooded)
        assert len(result.indicators) == 30 and result.attributes == 930
        assert all(json_bytes(i) <= INDICATOR_MAX_BYTES for i in result.indicators)
        assert all(len(i.get("additionalInformation", i.get("description", ""))) <= 4096 for i in result.indicators)


def test_an_indicator_over_16_kb_loses_just_enough_free_text():
    value = "\\" * 2000  # a backslash is two bytes in JSON, four in a STIX pattern
    a = attribute("mutex", value, comment="\x01" * 4000)  # six bytes each in JSON
    (graph,) = run(a).indicators
    assert INDICATOR_MAX_BYTES - 12 < json_bytes(graph) <= INDICATOR_MAX_BYTES and graph["fileMutexName"] == value
    assert graph["additionalInformation"].endswith(f"\x01\u2026\nMISP event: {EVENT_UUID}")
    assert reconcile.event_uuid_of(graph) == EVENT_UUID
    (stix,) = StixTransformer(MappingPolicy(), NOW).transform(event(a)).indicators
    assert INDICATOR_MAX_BYTES - 12 < json_bytes(stix) <= INDICATOR_MAX_BYTES and stix["name"] == value
    assert stix["description"].endswith("\x01\u2026")


def test_an_indicator_still_over_16_kb_loses_tags_from_the_end_never_its_observable():
    tags = [{"name": f"tag-{n:04d}-" + "t" * 40} for n in range(400)]  # 20 kB of names
    value = "\\" * 1500
    a = attribute("mutex", value, comment="note", Tag=tags)
    (graph,) = run(a).indicators
    assert json_bytes(graph) <= INDICATOR_MAX_BYTES and graph["fileMutexName"] == value
    assert graph["additionalInformation"] == f"MISP event: {EVENT_UUID}" and reconcile.event_uuid_of(graph) == EVENT_UUID
    assert 0 < len(graph["tags"]) < 400 and graph["tags"] == [t["name"] for t in tags[:len(graph["tags"])]]
    (stix,) = StixTransformer(MappingPolicy(), NOW).transform(event(a)).indicators
    assert json_bytes(stix) <= INDICATOR_MAX_BYTES and stix["pattern"] == f"[mutex:name = '{value * 2}']"
    assert "description" not in stix and 0 < len(stix["labels"]) < 400 and stix["name"] == value


def test_the_stix_name_goes_last():
    value = "\\" * 2000 + "\x01" * 700  # the pattern alone takes 12.2 kB, name and pattern 20.4 kB
    (stix,) = StixTransformer(MappingPolicy(), NOW).transform(event(attribute("mutex", value))).indicators
    assert json_bytes(stix) <= INDICATOR_MAX_BYTES and "description" not in stix and stix["name"].endswith("\u2026")


def test_an_observable_too_big_for_16_kb_is_invalid_value():
    a = attribute("mutex", "\x01" * 4000)  # 24 kB of JSON escapes in the value alone
    for transformer in (GraphTransformer(MappingPolicy(), NOW), StixTransformer(MappingPolicy(), NOW)):
        result = transformer.transform(event(a))
        assert result.indicators == [] and [s.reason for s in result.skips] == [SkipReason.INVALID_VALUE]
        assert result.skips[0].detail == "indicator over 16384 bytes even with its free text, names and tags cut"


def test_a_skip_gives_every_field_by_name():
    a = attribute("ip-dst", "198.51.100.7", to_ids=False)
    (skip,) = run(a).skips
    assert skip.as_dict() == {"reason": SkipReason.NOT_TO_IDS, "event_uuid": EVENT_UUID, "attribute_uuid": a["uuid"],
                              "attribute_type": "ip-dst", "detail": "", "value": "198.51.100.7"}


def test_event_texts_of_emoji_are_measured_and_cut_to_fit():
    """Texts are measured only when their 12-bytes-a-character bound leaves a value too little
    room: an emoji takes all 12, so event comments of emoji must still be cut to 16 kB."""
    comments = [attribute("comment", "\U0001f600" * 900, to_ids=False) for _ in range(4)]
    for transformer in (GraphTransformer(MappingPolicy(), NOW), StixTransformer(MappingPolicy(), NOW)):
        result = transformer.transform(event(*comments, attribute("domain", "example.com", comment="\U0001f600" * 3000)))
        (indicator,) = result.indicators
        assert json_bytes(indicator) <= INDICATOR_MAX_BYTES and json_bytes(indicator) > INDICATOR_MAX_BYTES - 1000

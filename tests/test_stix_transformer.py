"""The STIX half of the mapping contract: one single-comparison pattern per indicator, every
object accepted by the OASIS stix2 parser (no custom content) and the stix2-patterns validator."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import stix2
from hypothesis import HealthCheck, given, settings
from stix2patterns.pattern import Pattern
from stix2patterns.validator import run_validator

import misp_transformer
from constants import SkipReason
from misp_transformer import MappingPolicy, StixTransformer, stix_id
from standins.sentinel import validate_stix_object
from tests.test_transformer import MD5, SHA1, SHA256, attribute, event
from tests.test_transformer_fuzz import POLICIES, events

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
POLICY = MappingPolicy(misp_url="https://misp.example.org/")


def objects(*attributes: dict, policy: MappingPolicy = POLICY, **event_kw) -> list[dict]:
    result = StixTransformer(policy, NOW).transform(event(*attributes, **event_kw))
    for obj in result.indicators:
        assert_valid(obj)
    return result.indicators


def assert_valid(obj: dict) -> None:
    assert validate_stix_object(obj) == []  # the OASIS JSON schemas, as the Sentinel stand-in checks them
    stix2.parse(obj, allow_custom=False)
    assert run_validator(obj["pattern"], stix_version="2.1") == []
    assert len(Pattern(obj["pattern"]).inspect().comparisons) == 1
    assert obj["valid_until"] > obj["valid_from"]


STIX_ROWS = [
    ("ip-dst", "198.51.100.7", "[ipv4-addr:value = '198.51.100.7']"),
    ("ip-src", "2001:db8::1", "[ipv6-addr:value = '2001:db8::1']"),
    ("ip-dst", "10.0.0.0/16", "[ipv4-addr:value = '10.0.0.0/16']"),
    ("ip-src|port", "203.0.113.9|8080", "[ipv4-addr:value = '203.0.113.9']"),
    ("domain", "Evil.Example.", "[domain-name:value = 'evil.example']"),
    ("hostname", "c2.example.net", "[domain-name:value = 'c2.example.net']"),
    ("hostname|port", "c2.example.net|443", "[domain-name:value = 'c2.example.net']"),
    ("url", "evil.example/a?b='c'", "[url:value = 'http://evil.example/a?b=\\'c\\'']"),
    ("email-src", "bad@phish.example", "[email-addr:value = 'bad@phish.example']"),
    ("email-dst", "victim@example.org", "[email-addr:value = 'victim@example.org']"),
    ("email-subject", "Invoice", "[email-message:subject = 'Invoice']"),
    ("filename", "C:\\Temp\\evil.exe", "[file:name = 'C:\\\\Temp\\\\evil.exe']"),
    ("md5", MD5, f"[file:hashes.'MD5' = '{MD5}']"),
    ("sha1", SHA1, f"[file:hashes.'SHA-1' = '{SHA1}']"),
    ("sha256", SHA256, f"[file:hashes.'SHA-256' = '{SHA256}']"),
    ("sha512", "a" * 128, f"[file:hashes.'SHA-512' = '{'a' * 128}']"),
    ("sha3-256", "b" * 64, f"[file:hashes.'SHA3-256' = '{'b' * 64}']"),
    ("sha3-512", "c" * 128, f"[file:hashes.'SHA3-512' = '{'c' * 128}']"),
    ("ssdeep", "96:s4Ud1Lj96tHHlZDrwciQmA:s4Ud1Lj96tHHlZDrwciQmA",
     "[file:hashes.'SSDEEP' = '96:s4Ud1Lj96tHHlZDrwciQmA:s4Ud1Lj96tHHlZDrwciQmA']"),
    ("tlsh", "T1" + "A" * 70, f"[file:hashes.'TLSH' = '{'a' * 70}']"),
    ("sha224", "d" * 56, f"[file:hashes.'SHA-224' = '{'d' * 56}']"),
    ("sha384", "e" * 96, f"[file:hashes.'SHA-384' = '{'e' * 96}']"),
    ("imphash", MD5, f"[file:hashes.'IMPHASH' = '{MD5}']"),
    ("filename|sha256", f"evil.exe|{SHA256}", f"[file:hashes.'SHA-256' = '{SHA256}']"),
    ("malware-sample", f"dropper.bin|{MD5}", f"[file:hashes.'MD5' = '{MD5}']"),
    ("mutex", "Global\\Evil", "[mutex:name = 'Global\\\\Evil']"),
    ("AS", "AS64500", "[autonomous-system:number = 64500]"),
    ("mac-address", "AA-BB-CC-DD-EE-FF", "[mac-addr:value = 'aa:bb:cc:dd:ee:ff']"),
    ("regkey", "HKLM\\Software\\Run", "[windows-registry-key:key = 'HKEY_LOCAL_MACHINE\\\\Software\\\\Run']"),
    ("x509-fingerprint-sha1", SHA1, f"[x509-certificate:hashes.'SHA-1' = '{SHA1}']"),
    ("x509-fingerprint-sha256", SHA256, f"[x509-certificate:hashes.'SHA-256' = '{SHA256}']"),
    ("x509-fingerprint-md5", MD5, f"[x509-certificate:hashes.'MD5' = '{MD5}']"),
    ("user-agent", "Mozilla/5.0 (EvilBot)",
     "[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent'[*] = 'Mozilla/5.0 (EvilBot)']"),
]


@pytest.mark.parametrize(("misp_type", "value", "pattern"), STIX_ROWS, ids=[f"{t}:{v[:16]}" for t, v, _ in STIX_ROWS])
def test_every_stix_mapping_row(misp_type, value, pattern):
    (obj,) = objects(attribute(misp_type, value))
    assert obj["pattern"] == pattern and obj["pattern_type"] == "stix" and obj["name"] == value.strip()


def test_domain_ip_gives_two_indicators_with_stable_distinct_ids():
    a = attribute("domain|ip", "evil.example|198.51.100.7")
    first = objects(a)
    assert [o["pattern"] for o in first] == ["[domain-name:value = 'evil.example']", "[ipv4-addr:value = '198.51.100.7']"]
    again = objects(dict(a, uuid=a["uuid"].upper()))
    assert [o["id"] for o in first] == [o["id"] for o in again] == [stix_id(a["uuid"] + "|domain"), stix_id(a["uuid"] + "|ip")]


def test_ids_are_deterministic_even_for_non_v4_uuids():
    legacy = attribute("domain", "a.example", uuid="57153590-F73C-11E5-BE4B-4737950D210F")
    (obj,) = objects(legacy)
    assert obj["id"] == stix_id("57153590-f73c-11e5-be4b-4737950d210f")
    assert obj["id"].startswith("indicator--") and obj["id"][len("indicator--") + 14] == "5"


def test_context_becomes_markings_phases_labels_and_references():
    (obj,) = objects(
        attribute("domain", "a.example", Tag=[{"name": "tlp:amber+strict"}, {"name": "misp:confidence-level=\"usually-confident\""}]),
        attribute("threat-actor", "APT28", to_ids=False),
        tags=["tlp:green", "kill-chain:Command and Control", "sentinel-threattype:Botnet", "diamond-model:Infrastructure",
              "type:OSINT", 'misp-galaxy:ransomware="Locky"'],
    )
    assert obj["object_marking_refs"] == ["marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"]
    assert obj["confidence"] == 75 and obj["indicator_types"] == ["botnet"]
    assert obj["kill_chain_phases"] == [{"kill_chain_name": "lockheed-martin-cyber-kill-chain", "phase_name": "command-and-control"}]
    assert obj["labels"] == ["type:OSINT", "diamond-model:infrastructure", "threat-actor:APT28", "malware:Locky"]
    assert obj["external_references"] == [{
        "source_name": "MISP", "external_id": obj["external_references"][0]["external_id"],
        "url": "https://misp.example.org/events/view/5a0d5bf4-99c8-4f15-9879-22b1950d210f",
    }]
    assert obj["valid_until"] == "2027-01-27T12:00:00.000Z" and obj["valid_from"] == "2026-11-28T12:00:00.000Z"


@pytest.mark.parametrize("misp_type", ["yara", "regkey|value"])
def test_types_without_a_stix_pattern_are_unsupported(misp_type):
    result = StixTransformer(POLICY, NOW).transform(event(attribute(misp_type, "x|y")))
    assert result.indicators == [] and result.skips[0].reason is SkipReason.UNSUPPORTED_TYPE


@pytest.mark.parametrize(("misp_type", "value"), [
    ("email-x-mailer", "EvilMailer 1.0"), ("email-src-display-name", "Boss"), ("port", "443"), ("size-in-bytes", "1024"),
])
def test_observables_without_a_stix_pattern_are_not_for_this_target(misp_type, value):
    """Read and valid, but STIX has no single-comparison pattern for them (Graph has a field)."""
    policy = dataclasses.replace(POLICY, allow_weak_observables=True)
    result = StixTransformer(policy, NOW).transform(event(attribute(misp_type, value)))
    assert result.indicators == [] and result.skips[0].reason is SkipReason.NOT_FOR_TARGET


def test_invalid_values_are_counted_for_stix_too():
    result = StixTransformer(POLICY, NOW).transform(event(attribute("mac-address", "not-a-mac"), attribute("sha1", "xyz")))
    assert [s.reason for s in result.skips] == [SkipReason.INVALID_VALUE] * 2


def test_real_public_events_all_parse(fixture_events):
    transformer = StixTransformer(POLICY, NOW)
    produced = [obj for wrapped in fixture_events for obj in transformer.transform(wrapped).indicators]
    assert len(produced) > 250
    for obj in produced:
        assert_valid(obj)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wrapped=events)
def test_generated_events_give_only_valid_stix(wrapped):
    for policy in POLICIES:
        for obj in StixTransformer(policy, NOW).transform(wrapped).indicators:
            assert_valid(obj)


@pytest.mark.parametrize(("misp_type", "value"), [
    ("AS", "AS\u00b2"), ("AS", "\u0661\u0662"), ("ip-dst|port", "1.2.3.4|\u00b2"), ("ip-src|port", "1.2.3.4|70000"),
    ("hostname|port", "h.example|\uff18\uff10"), ("ssdeep", "\u0663:abc:def"),
])
def test_numbers_are_ascii_digits_only_for_stix_too(misp_type, value):
    result = StixTransformer(POLICY, NOW).transform(event(attribute(misp_type, value)))
    assert result.indicators == [] and [s.reason for s in result.skips] == [SkipReason.INVALID_VALUE]


def test_an_exception_in_one_attribute_becomes_an_internal_error_skip_for_stix_too(monkeypatch):
    def failing(value, policy):
        raise RuntimeError("a bug in one reader")
    monkeypatch.setitem(misp_transformer.OBSERVABLE_TYPES, "md5", failing)
    bad = attribute("md5", MD5)
    result = StixTransformer(POLICY, NOW).transform(event(attribute("domain", "a.example"), bad, attribute("sha1", SHA1)))
    assert [o["pattern"].split(":")[0] for o in result.indicators] == ["[domain-name", "[file"]
    assert [(s.reason, s.attribute_uuid, s.detail) for s in result.skips] == [
        (SkipReason.INTERNAL_ERROR, bad["uuid"], "RuntimeError while transforming")]


def test_created_and_valid_from_come_from_the_misp_attribute_not_the_run():
    """They must not depend on the local store: the same object on every machine and after a
    lost state. A timestamp later than the run (a skewed MISP clock) is clamped to the run."""
    stamped, future, unstamped = objects(
        attribute("ip-dst", "198.51.100.1", timestamp="1500000000"),
        attribute("ip-dst", "198.51.100.2", timestamp=str(int(NOW.timestamp()) + 3600)),
        attribute("ip-dst", "198.51.100.3", timestamp="²"))
    assert stamped["created"] == stamped["valid_from"] == "2017-07-14T02:40:00.000Z"
    assert future["created"] == unstamped["created"] == future["modified"] == misp_transformer.stix_time(NOW)
    for obj in (stamped, future, unstamped):
        assert_valid(obj)


def test_ids_are_the_uuid5_they_always_were():
    """stix_id writes uuid5 out by hand for speed: every id must stay what uuid.uuid5 gives, or a
    new version would orphan the indicators its state holds."""
    import uuid

    namespace = uuid.UUID("6b1c5e3a-5f0e-4e1f-9a51-3d2b6c7f8e90")
    for key in ("57153590-f73c-11e5-be4b-4737950d210f", "5a0d5bf4-99c8-4f15-9879-22b1950d210f|domain", "x|ip", "é", ""):
        assert stix_id(key) == f"indicator--{uuid.uuid5(namespace, key)}"

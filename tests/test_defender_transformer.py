"""mapping.md "Defender for Endpoint indicator", row by row, and the per-target policy filters
(tlp_max, min_confidence) every target honours."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest

import constants as C
from constants import SkipReason
from misp_transformer import DefenderTransformer, GraphTransformer, MappingPolicy, StixTransformer

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
MD5, SHA1, SHA256 = "a" * 32, "b" * 40, "c" * 64
EVENT_UUID = "5a0d5bf4-99c8-4f15-9879-22b1950d210f"
DEFAULT = MappingPolicy()


def attribute(misp_type: str, value: str, **extra: object) -> dict:
    return {"uuid": str(uuid.uuid4()), "type": misp_type, "value": value, "to_ids": True, **extra}


def event(*attributes: dict, threat_level: str = "2", tags: tuple[str, ...] = ()) -> dict:
    return {"Event": {"uuid": EVENT_UUID, "info": "Test event", "timestamp": "1510922092", "threat_level_id": threat_level,
                      "Attribute": list(attributes), "Tag": [{"name": name} for name in tags]}}


def defender(misp_type: str, value: str, policy: MappingPolicy = DEFAULT, **extra: object) -> list[dict]:
    result = DefenderTransformer(policy, NOW).transform(event(attribute(misp_type, value, **extra)))
    assert not result.skips, result.skips
    return result.indicators


def skipped(misp_type: str, value: str, policy: MappingPolicy = DEFAULT) -> SkipReason:
    result = DefenderTransformer(policy, NOW).transform(event(attribute(misp_type, value)))
    assert result.indicators == []
    return result.skips[0].reason


@pytest.mark.parametrize(("misp_type", "value", "expected"), [
    ("md5", MD5, ("FileMd5", MD5)),
    ("sha1", SHA1.upper(), ("FileSha1", SHA1)),
    ("sha256", SHA256, ("FileSha256", SHA256)),
    ("filename|sha1", f"a.exe|{SHA1}", ("FileSha1", SHA1)),
    ("malware-sample", f"a,b.exe|{MD5}", ("FileMd5", MD5)),
    ("x509-fingerprint-sha1", SHA1, ("CertificateThumbprint", SHA1)),
    ("x509-fingerprint-sha256", SHA256, ("CertificateThumbprint", SHA256)),
    ("ip-dst", "198.51.100.7", None),  # documentation range: not public, below
    ("ip-src", "8.8.8.8", ("IpAddress", "8.8.8.8")),
    ("ip-dst|port", "8.8.4.4|443", ("IpAddress", "8.8.4.4")),
    ("ip-dst", "2606:4700:4700::1111", ("IpAddress", "2606:4700:4700::1111")),
    ("ip-dst", "::ffff:8.8.8.8", ("IpAddress", "8.8.8.8")),
    ("domain", "Evil.Example.com", ("DomainName", "evil.example.com")),
    ("hostname|port", "c2.example.com|8080", ("DomainName", "c2.example.com")),
    ("url", "http://evil.example.com/a", ("Url", "http://evil.example.com/a")),
])
def test_each_row_of_the_mapping_table(misp_type, value, expected):
    if expected is None:
        assert skipped(misp_type, value) is SkipReason.NOT_FOR_TARGET
        return
    (indicator,) = defender(misp_type, value)
    assert (indicator["indicatorType"], indicator["indicatorValue"]) == expected


@pytest.mark.parametrize(("misp_type", "value"), [
    ("ip-dst", "8.8.8.0/24"), ("ip-dst", "10.0.0.1"), ("sha512", "d" * 128), ("x509-fingerprint-md5", MD5),
    ("email-src", "a@evil.example"), ("filename", "a.exe"), ("mutex", "Global\\x"), ("AS", "AS64500"),
    ("user-agent", "EvilBot"), ("regkey", "HKLM\\Software\\Run"),
])
def test_anything_else_is_not_for_target(misp_type, value):
    assert skipped(misp_type, value) is SkipReason.NOT_FOR_TARGET


def test_a_domain_ip_gives_two_indicators_and_keeps_its_domain_when_the_address_is_private():
    assert [(i["indicatorType"], i["indicatorValue"]) for i in defender("domain|ip", "evil.example|8.8.8.8")] == [
        ("DomainName", "evil.example"), ("IpAddress", "8.8.8.8")]
    assert [i["indicatorType"] for i in defender("domain|ip", "evil.example|10.1.2.3")] == ["DomainName"]


@pytest.mark.parametrize(("level", "severity"), [("1", "High"), ("2", "Medium"), ("3", "Low"), ("4", "Informational"),
                                                  ("", "Informational")])
def test_common_fields_follow_the_event_and_the_target_policy(level, severity):
    a = attribute("domain", "evil.example", comment="C2 panel")
    (indicator,) = DefenderTransformer(MappingPolicy(), NOW).transform(event(a, threat_level=level)).indicators
    assert indicator["severity"] == severity
    assert indicator["action"] == "Audit" and indicator["generateAlert"] is True
    assert indicator["externalID"] == a["uuid"] and indicator["title"] == "Test event"
    assert indicator["description"] == f"Test event - C2 panel\nMISP event: {EVENT_UUID}"
    assert indicator["expirationTime"] == "2027-01-27T12:00:00Z"
    assert indicator["rbacGroupNames"] == [] and indicator["recommendedActions"] == ""


def test_a_configured_policy_overrides_the_event():
    policy = MappingPolicy(defender_action="Block", defender_severity="High", defender_rbac_groups=("Servers",),
                           defender_recommended_actions="Isolate the device", default_confidence=70)
    (indicator,) = defender("domain", "evil.example", policy)
    assert (indicator["action"], indicator["severity"], indicator["rbacGroupNames"], indicator["recommendedActions"]) == (
        "Block", "High", ["Servers"], "Isolate the device")
    assert indicator[C.DEFENDER_RANK_FIELD] == [C.DEFENDER_ACTIONS.index("Block"), 70, 2, 1510922092]


def test_a_long_title_is_cut_to_100_characters():
    result = DefenderTransformer(MappingPolicy(), NOW).transform(
        {"Event": {**event()["Event"], "info": "x" * 300, "Attribute": [attribute("domain", "evil.example")]}})
    assert len(result.indicators[0]["title"]) == 100


TRANSFORMERS = [GraphTransformer, StixTransformer, DefenderTransformer]


@pytest.mark.parametrize("transformer", TRANSFORMERS)
def test_every_target_honours_its_tlp_ceiling(transformer):
    policy = MappingPolicy(tlp_max="amber")
    attributes = [attribute("domain", "green.example", Tag=[{"name": "tlp:green"}]),
                  attribute("domain", "strict.example", Tag=[{"name": "tlp:amber+strict"}]),
                  attribute("domain", "red.example", Tag=[{"name": "tlp:red"}]),
                  attribute("domain", "untagged.example")]
    result = transformer(policy, NOW).transform(event(*attributes))
    assert len(result.indicators) == 1  # green; AMBER+STRICT is above amber (TLP 2.0)
    assert [(s.value, s.reason) for s in result.skips] == [("strict.example", SkipReason.ABOVE_TLP_MAX),
                                                            ("red.example", SkipReason.ABOVE_TLP_MAX),
                                                            ("untagged.example", SkipReason.ABOVE_TLP_MAX)]


@pytest.mark.parametrize("transformer", TRANSFORMERS)
def test_every_target_honours_its_confidence_floor(transformer):
    policy = MappingPolicy(min_confidence=60, default_confidence=50)
    attributes = [attribute("domain", "sure.example", Tag=[{"name": "misp:confidence-level=\"usually-confident\""}]),
                  attribute("domain", "unrated.example")]
    result = transformer(policy, NOW).transform(event(*attributes))
    assert len(result.indicators) == 1
    assert [(s.value, s.reason) for s in result.skips] == [("unrated.example", SkipReason.BELOW_MIN_CONFIDENCE)]


def test_the_event_tlp_counts_for_an_attribute_without_its_own():
    result = StixTransformer(MappingPolicy(tlp_max="green"), NOW).transform(
        event(attribute("domain", "a.example"), tags=("tlp:amber",)))
    assert result.skips[0].reason is SkipReason.ABOVE_TLP_MAX

"""mapping.md "Values, as the real specifications define them", row by row: each test holds a
value the tool got wrong before the observable model (IDNA 2003, raw URLs, defanged values sent
as typed, zone ids, 0.0.0.0/0, ...). Every STIX object here also passes the pinned OASIS JSON
schemas, stix2.parse and the pattern validator (assert_valid), and every Graph indicator the
Graph stand-in's CSDL value checks."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest

import constants as C
from constants import SkipReason
from misp_transformer import (
    OBSERVABLE_TYPES,
    DefenderTransformer,
    EventResult,
    GraphTransformer,
    MappingPolicy,
    StixTransformer,
    Transformer,
    json_bytes,
    stix_quote,
)
from standins.graph import validate_indicator
from standins.sentinel import validate_stix_object
from tests.test_stix_transformer import assert_valid
from tests.test_transformer import MD5, SHA1, SHA256, attribute, event, observable

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
POLICY = MappingPolicy(misp_url="https://misp.example.org/")
Outcome = list[dict] | SkipReason


def graph(misp_type: str, value: str, policy: MappingPolicy = POLICY) -> Outcome:
    """Graph's observable fields for one attribute, or why it has none."""
    result = GraphTransformer(policy, NOW).transform(event(attribute(misp_type, value)))
    for indicator in result.indicators:
        assert validate_indicator(indicator) is None
    return [observable(i) for i in result.indicators] or result.skips[0].reason


def stix(misp_type: str, value: str, policy: MappingPolicy = POLICY) -> Outcome:
    """The STIX patterns for one attribute, or why it has none."""
    result = StixTransformer(policy, NOW).transform(event(attribute(misp_type, value)))
    for obj in result.indicators:
        assert_valid(obj)
    return [{"pattern": o["pattern"]} for o in result.indicators] or result.skips[0].reason


def pattern(misp_type: str, value: str) -> str:
    """The one STIX pattern of an attribute that must have one."""
    outcome = stix(misp_type, value)
    assert isinstance(outcome, list) and len(outcome) == 1, outcome
    return str(outcome[0]["pattern"])


def refanged(transformer: type[GraphTransformer] | type[StixTransformer], *attributes: dict) -> EventResult:
    return transformer(POLICY, NOW).transform(event(*attributes))


# --- host names: IDNA 2008 with UTS #46, underscore labels ------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("faß.de", "xn--fa-hia.de"),  # IDNA 2003 (Python's codec) made it fass.de, another domain
    ("FASS.de", "fass.de"),
    ("Bücher.Example.", "xn--bcher-kva.example"),
    ("_dmarc.example.com", "_dmarc.example.com"),
    ("_dmarc.bücher.example", "_dmarc.xn--bcher-kva.example"),
])
def test_host_names_are_idna_2008_a_labels(value, expected):
    assert graph("domain", value) == [{"domainName": expected}]
    assert stix("hostname", value) == [{"pattern": f"[domain-name:value = '{expected}']"}]


@pytest.mark.parametrize("value", ["ex ample.com", "exa\"mple.com", "-bad.example", "a..b.example", "☃\u200d.example"])
def test_what_is_not_a_host_name_is_invalid(value):
    assert graph("domain", value) == stix("domain", value) == SkipReason.INVALID_VALUE


# --- URLs: absolute RFC 3986 --------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("example.com/path", "http://example.com/path"),
    ("smb://Files.Example/share", "smb://files.example/share"),  # scheme kept, host as host names are
    ("tcp://198.51.100.7:4444", "tcp://198.51.100.7:4444"),
    ("http://faß.de/x", "http://xn--fa-hia.de/x"),
    ("http://example.com/café?q=ü#frag", "http://example.com/caf%C3%A9?q=%C3%BC#frag"),
    ("http://example.com/a b|{}^\\`\"<>", "http://example.com/a%20b%7C%7B%7D%5E%5C%60%22%3C%3E"),
    ("http://example.com/100%/ok%20", "http://example.com/100%25/ok%20"),
    ("http://user:pw@[2001:DB8::1]:8080/x", "http://user:pw@[2001:db8::1]:8080/x"),
    ("HTTPS://Example.COM/Path", "HTTPS://example.com/Path"),
])
def test_urls_are_absolute_rfc_3986(value, expected):
    assert graph("url", value) == [{"url": expected}]
    assert stix("url", value) == [{"pattern": f"[url:value = '{expected}']"}]


@pytest.mark.parametrize("value", ["http://exa'mple.com/", "http://[evil].example/", "http://a b/", "http:///path",
                                   "http://example.com:http/", "http://[198.51.100.7]/"])
def test_a_url_whose_host_is_not_a_host_is_invalid(value):
    assert graph("url", value) == stix("url", value) == SkipReason.INVALID_VALUE


# --- defanged values ------------------------------------------------------------------------------

@pytest.mark.parametrize(("misp_type", "value", "expected"), [
    ("url", "hxxp://evil[.]example/x", {"url": "http://evil.example/x"}),
    ("url", "HXXPS[:]//evil(.)example/x", {"url": "https://evil.example/x"}),
    ("domain", "evil[dot]example", {"domainName": "evil.example"}),
    ("ip-dst", "198.51.100[.]7", {"networkDestinationIPv4": "198.51.100.7"}),
    ("email-src", "bad@evil[.]example", {"emailSenderAddress": "bad@evil.example", "emailSourceDomain": "evil.example"}),
    ("domain|ip", "evil[.]example|198[.]51.100.7", {"domainName": "evil.example", "networkIPv4": "198.51.100.7"}),
])
def test_defanged_network_values_are_refanged_and_counted(misp_type, value, expected):
    assert graph(misp_type, value) == [expected]
    for transformer in (GraphTransformer, StixTransformer):
        result = refanged(transformer, attribute(misp_type, value), attribute("domain", "plain.example"))
        assert result.skips == [] and result.refanged == 1


def test_only_network_values_are_refanged():
    assert graph("filename", "report[.]pdf") == [{"fileName": "report[.]pdf"}]
    assert graph("email-subject", "see hxxp://x[.]y") == [{"emailSubject": "see hxxp://x[.]y"}]
    assert refanged(GraphTransformer, attribute("filename", "report[.]pdf")).refanged == 0


def test_a_defanged_value_that_is_still_invalid_is_not_counted():
    result = refanged(StixTransformer, attribute("domain", "evil[.]exa mple"))
    assert [s.reason for s in result.skips] == [SkipReason.INVALID_VALUE] and result.refanged == 0


# --- IP addresses: no zone id, no broad CIDR blocks ----------------------------------------------

@pytest.mark.parametrize(("misp_type", "value"), [("ip-dst", "fe80::1%eth0"), ("ip-src|port", "fe80::1%25|80"),
                                                  ("domain|ip", "a.example|fe80::1%1")])
def test_zone_ids_are_invalid(misp_type, value):
    assert graph(misp_type, value) == stix(misp_type, value) == SkipReason.INVALID_VALUE


@pytest.mark.parametrize("value", ["0.0.0.0/0", "10.0.0.0/8", "192.0.0.0/15", "::/0", "2001:db8::/31"])
def test_broad_cidr_blocks_are_weak_unless_allowed(value):
    assert graph("ip-dst", value) == stix("ip-dst", value) == SkipReason.WEAK_OBSERVABLE
    allowed = dataclasses.replace(POLICY, allow_broad_cidr=True)
    assert graph("ip-dst", value, allowed) == [{"networkDestinationCidrBlock": value}]
    assert stix("ip-dst", value, allowed) != SkipReason.WEAK_OBSERVABLE


@pytest.mark.parametrize("value", ["192.0.2.0/16", "2001:db8::/32", "198.51.100.0/24"])
def test_narrower_cidr_blocks_are_sent(value):
    assert graph("ip-src", value) != SkipReason.WEAK_OBSERVABLE and stix("ip-src", value) != SkipReason.WEAK_OBSERVABLE


# --- e-mail addresses -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a@b@example.com", "a..b@example.com", ".a@example.com", "a b@example.com",
                                   "\"quoted\"@example.com", "x" * 65 + "@example.com", "a@exa_mple!.com", "@example.com"])
def test_e_mail_addresses_have_one_at_a_local_part_and_a_host(value):
    assert graph("email-dst", value) == stix("email-dst", value) == SkipReason.INVALID_VALUE


@pytest.mark.parametrize(("value", "expected"), [
    ("Bad.Guy+tag@Example.COM", "Bad.Guy+tag@example.com"), ("user@faß.de", "user@xn--fa-hia.de"),
    ("o'hara@example.com", "o'hara@example.com"),
])
def test_e_mail_hosts_are_read_as_host_names(value, expected):
    assert graph("email-dst", value) == [{"emailRecipient": expected}]
    assert stix("email-src", value) == [{"pattern": "[email-addr:value = " + stix_quote(expected) + "]"}]


# --- STIX: User-Agent, registry hives, hash names -------------------------------------------------

def test_stix_user_agent_compares_any_of_the_header_values():
    assert stix("user-agent", "Mozilla/5.0 (EvilBot)") == [
        {"pattern": "[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent'[*] = 'Mozilla/5.0 (EvilBot)']"}]


@pytest.mark.parametrize(("value", "expected"), [
    ("HKLM\\Software\\Run", "HKEY_LOCAL_MACHINE\\Software\\Run"), ("hkcu\\Software", "HKEY_CURRENT_USER\\Software"),
    ("HKCR\\.exe", "HKEY_CLASSES_ROOT\\.exe"), ("HKU\\S-1-5-18", "HKEY_USERS\\S-1-5-18"),
    ("HKCC\\System", "HKEY_CURRENT_CONFIG\\System"), ("HKEY_LOCAL_MACHINE\\X", "HKEY_LOCAL_MACHINE\\X"),
])
def test_stix_registry_keys_have_the_hive_written_out(value, expected):
    assert stix("regkey", value) == [{"pattern": "[windows-registry-key:key = " + stix_quote(expected) + "]"}]


@pytest.mark.parametrize(("misp_type", "value", "name"), [
    ("sha512/256", "a" * 64, "SHA-512-256"), ("sha512/224", "b" * 56, "SHA-512-224"), ("sha224", "c" * 56, "SHA-224"),
    ("imphash", MD5, "IMPHASH"), ("sha3-512", "d" * 128, "SHA3-512"), ("tlsh", "T1" + "E" * 70, "TLSH"),
])
def test_stix_hash_names_are_vocabulary_or_valid_custom_keys(misp_type, value, name):
    assert pattern(misp_type, value).startswith(f"[file:hashes.'{name}' = ")


def test_every_hash_type_has_a_stix_name_in_the_allowed_alphabet():
    for misp_type in C.HASH_TYPES:
        assert re.fullmatch(r"\[file:hashes\.'[a-zA-Z0-9_-]{3,250}' = '[^']+'\]", pattern(misp_type, HASH_SAMPLES[misp_type]))


def test_tlsh_is_sent_without_its_version_prefix():
    assert stix("tlsh", "T1" + "AB" * 35) == [{"pattern": f"[file:hashes.'TLSH' = '{'ab' * 35}']"}]
    assert graph("tlsh", "t1" + "ab" * 35) == [{"fileHashType": "unknown", "fileHashValue": "ab" * 35}]


# --- MAC addresses --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["AA-BB-CC-DD-EE-FF", "aabb.ccdd.eeff", "AABBCCDDEEFF", "aa:bb:cc:dd:ee:ff"])
def test_mac_addresses_are_lower_case_and_colon_separated(value):
    assert stix("mac-address", value) == [{"pattern": "[mac-addr:value = 'aa:bb:cc:dd:ee:ff']"}]


@pytest.mark.parametrize("value", ["aa:bb-cc:dd:ee:ff", "aabb.ccdd", "gg:bb:cc:dd:ee:ff"])
def test_what_is_not_a_mac_address_is_invalid(value):
    assert stix("mac-address", value) == SkipReason.INVALID_VALUE


# --- Graph: fileName without commas, Int64 ASNs ---------------------------------------------------

@pytest.mark.parametrize(("misp_type", "value"), [
    ("filename", "invoice,final.exe"), ("filename|sha256", f"invoice,final.exe|{SHA256}"), ("malware-sample", f"a,b.bin|{MD5}"),
])
def test_a_file_name_with_a_comma_is_not_for_graph_but_for_stix(misp_type, value):
    assert graph(misp_type, value) == SkipReason.NOT_FOR_TARGET
    assert isinstance(stix(misp_type, value), list)


@pytest.mark.parametrize(("value", "asn"), [("AS4200000000", 4200000000), ("4294967295", 4294967295), ("AS2147483648", 2**31)])
def test_graph_asns_are_int64(value, asn):
    assert graph("AS", value) == [{"networkSourceAsn": asn}]
    assert stix("AS", value) == [{"pattern": f"[autonomous-system:number = {asn}]"}]


def test_asns_beyond_32_bits_are_invalid_for_every_target():
    assert graph("AS", "AS4294967296") == stix("AS", "AS4294967296") == SkipReason.INVALID_VALUE


# --- free text ------------------------------------------------------------------------------------

def test_free_text_is_capped_with_an_ellipsis():
    texts = event(attribute("domain", "a.example", comment="c" * 5000), info="i" * 5000)
    (indicator,) = GraphTransformer(POLICY, NOW).transform(texts).indicators
    assert len(indicator["description"]) == C.GRAPH_DESCRIPTION_MAX and indicator["description"].endswith(C.ELLIPSIS)
    assert len(indicator["additionalInformation"]) <= C.TEXT_FIELD_MAX and C.ELLIPSIS in indicator["additionalInformation"]
    (obj,) = StixTransformer(POLICY, NOW).transform(texts).indicators
    assert len(obj["description"]) == C.TEXT_FIELD_MAX and obj["description"].endswith(C.ELLIPSIS)
    assert_valid(obj)


def test_no_indicator_body_is_over_16_kb():
    tags = [{"name": "t" * 4000 + str(n)} for n in range(8)]
    flooded = event(attribute("domain", "a.example", comment="ü" * 5000, Tag=tags), info="i" * 5000)
    for transformer in (GraphTransformer(POLICY, NOW), StixTransformer(POLICY, NOW)):
        (indicator,) = transformer.transform(flooded).indicators
        assert json_bytes(indicator) <= C.INDICATOR_MAX_BYTES


# --- the Sentinel stand-in rejects what the OASIS schemas reject ----------------------------------

@pytest.mark.parametrize(("pattern", "problem"), [
    ("[windows-registry-key:key = 'HKLM\\\\Software']", "['key']"),
    ("[file:hashes.'SHA-512/256' = 'aa']", "['hashes']"),
    ("[file:hashes.'TLSH' = 'T1" + "a" * 70 + "']", "['hashes']"),
    ("[mac-addr:value = 'AA-BB-CC-DD-EE-FF']", "['value']"),
    ("[url:value = 'http://example.com/a b']", "['value']"),
])
def test_the_sentinel_stand_in_rejects_what_the_schemas_reject(pattern, problem):
    (obj,) = StixTransformer(POLICY, NOW).transform(event(attribute("domain", "a.example"))).indicators
    assert validate_stix_object(obj) == []
    problems = validate_stix_object({**obj, "pattern": pattern})
    assert problems and problem in problems[0] and "STIX 2.1 schema" in problems[0]


def test_the_sentinel_stand_in_rejects_what_stix2_rejects():
    (obj,) = StixTransformer(POLICY, NOW).transform(event(attribute("domain", "a.example"))).indicators
    problems = validate_stix_object({**obj, "x_custom": 1})
    assert any("Not valid STIX 2.1" in problem for problem in problems)


# --- one reading: Graph skips an attribute iff STIX does, for the same reason ---------------------

HASH_SAMPLES = {
    **{name: "ab" * (lengths[0] // 2) for name, lengths in C.HEX_HASH_LENGTHS.items()},
    "ssdeep": "96:s4Ud1Lj96tHHlZDrwciQmA:s4Ud1Lj96tHHlZDrwciQmA", "impfuzzy": "3:aaa:bbb", "vhash": "0150366d1570z4hz1lz",
}
VALUES = [
    "", "  ", "x", "anything at all", "|", "a|", "|b", "a|b", "198.51.100.7", "2001:db8::1", "fe80::1%eth0", "0.0.0.0/0",
    "10.0.0.0/8", "198.51.100.0/24", "1.2.3", "999.1.1.1", "::ffff:1.2.3.4", "198.51.100.7|443", "198.51.100.7|99999",
    "198.51.100.7|http", "198.51.100.7|\u00b2", "evil.example", "faß.de", "_dmarc.example.com", "evil[.]example",
    "evil.example|443", "evil.example|http", "evil.example|198.51.100.7", "evil.example|10.0.0.0/8",
    "hxxp://evil[.]example/a b", "http://exa'mple.com/", "bad@evil.example", "a@b@evil.example", "invoice,final.exe",
    "report.pdf", f"report.pdf|{MD5}", f"a,b.exe|{SHA1}", f"a.exe|{SHA256}", MD5, SHA1, SHA256, *HASH_SAMPLES.values(),
    "AS64500", "AS4200000000", "AS4294967296", "AS\u00b2", "443", "70000", "1024", "00:11:22:33:44:55", "aabb.ccdd.eeff",
    "HKLM\\Software\\Run", "Mozilla/5.0 (EvilBot)",
]
POLICIES = [POLICY, dataclasses.replace(POLICY, allow_weak_observables=True, allow_broad_cidr=True)]
# The documented target-specific cases (mapping.md): kinds one target has no field or pattern for,
# and Graph's fileName commas.
GRAPH_ONLY = {"email-x-mailer", "email-src-display-name", "port", "size-in-bytes"}
STIX_ONLY = {"mac-address", "regkey", *C.X509_FINGERPRINTS}


def _outcome(transformer: Transformer, misp_type: str, value: str) -> SkipReason | None:
    result = transformer.transform(event(attribute(misp_type, value)))
    return result.skips[0].reason if result.skips else None


@pytest.mark.parametrize("policy", POLICIES, ids=["default", "allowing"])
def test_graph_skips_an_attribute_iff_stix_does_for_the_same_reason(policy):
    graph_side, stix_side = GraphTransformer(policy, NOW), StixTransformer(policy, NOW)
    differences = set()
    for misp_type in OBSERVABLE_TYPES:
        for value in VALUES:
            got = _outcome(graph_side, misp_type, value), _outcome(stix_side, misp_type, value)
            if got[0] is got[1]:
                continue
            documented = (
                (got == (SkipReason.NOT_FOR_TARGET, None) and (misp_type in STIX_ONLY or "," in value))
                or (got == (None, SkipReason.NOT_FOR_TARGET) and misp_type in GRAPH_ONLY)
            )
            if not documented:
                differences.add((misp_type, value, *got))
    assert differences == set()


@pytest.mark.parametrize("policy", POLICIES, ids=["default", "allowing"])
def test_defender_skips_what_stix_skips_for_the_same_reason_and_only_adds_not_for_target(policy):
    """One reading for every target: Defender refuses nothing STIX takes but for want of an
    indicator type (mapping.md "Defender for Endpoint indicator")."""
    defender_side, stix_side = DefenderTransformer(policy, NOW), StixTransformer(policy, NOW)
    differences = set()
    for misp_type in OBSERVABLE_TYPES:
        for value in VALUES:
            got = _outcome(defender_side, misp_type, value), _outcome(stix_side, misp_type, value)
            if got[0] is not got[1] and got != (SkipReason.NOT_FOR_TARGET, None):
                differences.add((misp_type, value, *got))
    assert differences == set()

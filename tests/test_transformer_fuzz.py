"""Generated MISP events, shaped and misshaped, with arbitrary Unicode in every field: neither
transformer ever raises, every attribute becomes indicators or one skip, no indicator is over
its size limits, and every Graph indicator passes the Graph stand-in's tiIndicator rules."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import idna
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import misp_transformer
from constants import HOSTNAME_LABEL_RE, INDICATOR_MAX_BYTES, TEXT_FIELD_MAX, SkipReason
from misp_transformer import (
    GraphTransformer,
    MappingPolicy,
    StixTransformer,
    event_attributes,
    event_context,
    json_bytes,
    merged_facts,
    name_chars,
    stix_id,
    tag_names,
)
from standins.graph import validate_indicator

TYPES = (Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "misp-attribute-types.txt")
MISP_TYPES = sorted(set(TYPES.read_text().split())) if TYPES.exists() else []
KNOWN = ["ip-dst", "ip-src", "ip-dst|port", "domain", "hostname", "domain|ip", "url", "email-src", "md5",
         "sha256", "filename|sha1", "ssdeep", "AS", "port", "mutex", "user-agent", "malware-sample", "tlsh"]
TAGS = ["tlp:red", "TLP:Amber+Strict", "tlp:clear", "tlp:ex:chr", "sentinel-threattype:c2", "kill-chain:Delivery",
        "kill-chain:bogus", "diamond-model:Victim", 'misp:confidence-level="unconfident"', 'misp-galaxy:tool="X"',
        "misp-galaxy:malware=", "plain", ""]

junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
# Every category: controls, lone surrogates, digits int() reads ('٣') and refuses ('²').
text = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=80)
long_text = st.text(min_size=40, max_size=160)
# Texts at and over the 4,096-character cap, in characters of 1 to 6 JSON bytes.
huge_text = st.sampled_from(["c" * 5000, "\x01" * 4500, "\u00e9" * 4096, "\\" * 4000, "\U0001f600" * 3000])
DIGITS = "0123456789\u00b2\u00b3\u00b9\u0660\u0663\u06f4\u07c0\u0969\u09e9\u0e53\uff10\uff19\U0001d7d7\u2460"
numberish = st.text(alphabet=st.sampled_from(DIGITS), min_size=1, max_size=6)
values = st.one_of(
    text, numberish, huge_text,
    st.sampled_from(["1.2.3.4", "2001:db8::1", "10.0.0.0/8", "evil.example.", "a|b", "1.2.3.4|99999", "AS64500",
                     "d41d8cd98f00b204e9800998ecf8427e", "x|d41d8cd98f00b204e9800998ecf8427e", "http://x/ y", "\udcff",
                     "ex\u00e4mple.com", "-.example", "a" * 5000]),
    st.integers(min_value=-10, max_value=70000), junk,
)
tags = st.lists(st.one_of(st.fixed_dictionaries({"name": st.one_of(st.sampled_from(TAGS), text, huge_text, junk)},
                                                 optional={"local": st.one_of(junk, st.sampled_from([0, 1, "0", "1"]))}),
                          junk), max_size=4)
galaxies = st.one_of(st.lists(st.fixed_dictionaries({"GalaxyCluster": st.one_of(st.lists(
    st.fixed_dictionaries({"tag_name": st.one_of(st.sampled_from(TAGS), text, junk)}), max_size=2), junk)}), max_size=2), junk)
attribute = st.fixed_dictionaries(
    {},
    optional={
        "uuid": st.one_of(st.uuids().map(str), text, junk),
        "type": st.one_of(st.sampled_from(KNOWN + MISP_TYPES), text, junk),
        "value": values,
        "to_ids": st.one_of(st.sampled_from([True, False, 1, 0, "1", "0", "true"]), text, junk),
        "deleted": st.one_of(st.booleans(), text, junk),
        "comment": st.one_of(text, long_text, huge_text, junk),
        "Tag": st.one_of(tags, junk),
        "Galaxy": galaxies,
        "timestamp": st.one_of(numberish, text, junk),
    },
)
SAMPLES = [("ip-dst", "1.2.3.4"), ("ip-src", "2001:db8::/48"), ("ip-dst|port", "1.2.3.4|443"), ("domain", "evil.example"),
           ("hostname|port", "h.example|8080"), ("domain|ip", "d.example|::1"), ("url", "x.example/a"),
           ("email-src", "a@b.example"), ("email-subject", "hello"), ("md5", "d41d8cd98f00b204e9800998ecf8427e"),
           ("filename|sha1", "a.exe|da39a3ee5e6b4b0d3255bfef95601890afd80709"), ("AS", "AS1"), ("port", "80"),
           ("size-in-bytes", "100"), ("mutex", "m\\'"), ("user-agent", "ua"), ("sha512", "a" * 128),
           ("filename", "it's \\ evil.exe"), ("regkey", "HKLM\\Run")]
plausible = st.builds(
    lambda sample, uuid, comment, tags: {"type": sample[0], "value": sample[1], "uuid": uuid, "to_ids": True,
                                         "comment": comment, "Tag": tags},
    st.sampled_from(SAMPLES), st.uuids().map(str), st.one_of(text, long_text), tags,
)
# Types whose value holds a number, with the number made of any digits at all.
NUMERIC = [("AS", "AS{}"), ("AS", "{}"), ("port", "{}"), ("size-in-bytes", "{}"), ("ip-dst|port", "1.2.3.4|{}"),
           ("ip-src|port", "2001:db8::1|{}"), ("hostname|port", "h.example|{}"), ("ssdeep", "{}:abc:def")]
numeric = st.builds(
    lambda item, number, uuid: {"type": item[0], "value": item[1].format(number), "uuid": uuid, "to_ids": True},
    st.sampled_from(NUMERIC), numberish, st.uuids().map(str),
)
attribute = st.one_of(attribute, plausible, numeric)
event_body = st.fixed_dictionaries({
    "Attribute": st.lists(attribute, max_size=6),
}, optional={
    "uuid": st.one_of(st.uuids().map(str), text, junk),
    "info": st.one_of(text, long_text, huge_text, junk),
    "timestamp": st.one_of(st.integers(min_value=-2**40, max_value=2**40).map(str), numberish, text, junk),
    "Object": st.one_of(st.lists(st.one_of(st.fixed_dictionaries({"Attribute": st.one_of(st.lists(attribute, max_size=3), junk)},
                                                                 optional={"deleted": st.one_of(st.booleans(), text, junk),
                                                                           "name": text}), junk), max_size=2), junk),
    "Tag": st.one_of(tags, junk),
    "Galaxy": galaxies,
})
events = st.one_of(
    st.fixed_dictionaries({"Event": event_body}),
    event_body,
    st.fixed_dictionaries({"Event": st.one_of(junk, event_body.map(lambda body: {**body, "Attribute": "junk"}))}),
    junk,
)

POLICIES = [MappingPolicy(), MappingPolicy(network_ignore_direction=True,
                                        allow_weak_observables=True, ignore_local_tags=False)]


NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def sources(indicators: list[dict]) -> int:
    """Attributes that gave indicators: the '|ip' half of a STIX domain|ip is not another one."""
    return sum(1 for i in indicators if "external_references" not in i
               or i["id"] != stix_id(i["external_references"][0]["external_id"] + "|ip"))


def assert_sound(result) -> None:
    """Each attribute is indicators or exactly one skip (an event with none has one skip at most),
    no fault needed the internal-error net, and each indicator is within its limits."""
    if result.attributes:
        assert sources(result.indicators) + len(result.skips) == result.attributes
    else:
        assert result.indicators == [] and len(result.skips) <= 1
    assert all(skip.reason is not SkipReason.INTERNAL_ERROR for skip in result.skips), result.skips
    for indicator in result.indicators:
        assert json_bytes(indicator) <= INDICATOR_MAX_BYTES
        assert all(len(indicator.get(field, "")) <= TEXT_FIELD_MAX for field in ("additionalInformation", "description"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wrapped=events, policy=st.sampled_from(POLICIES))
def test_generated_events_never_raise_are_accounted_and_pass_graph_rules(wrapped, policy):
    assert_sound(StixTransformer(policy, NOW).transform(wrapped))
    result = GraphTransformer(policy, NOW).transform(wrapped)
    assert_sound(result)
    for indicator in result.indicators:
        assert validate_indicator(indicator) is None, (indicator, validate_indicator(indicator))



@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wrapped=events, policy=st.sampled_from(POLICIES), own=tags)
def test_the_common_fields_hold_no_free_text_but_the_tag_names(wrapped, policy, own):
    """The size check counts the common fields by their tag names (name_chars): the rest of them
    must stay within half of the fixed allowance (the other half is for the other fields)."""
    event = wrapped.get("Event", wrapped) if isinstance(wrapped, dict) else None
    assume(isinstance(event, dict))
    assert isinstance(event, dict)
    context = event_context(event, [attribute for attribute, _ in event_attributes(event)], policy)
    facts = merged_facts(context, tag_names(own, ignore_local=False))
    for transformer in (GraphTransformer(policy, NOW), StixTransformer(policy, NOW)):
        common = transformer.common_fields(context, facts)
        assert json_bytes(common) <= misp_transformer._FIXED_BYTES // 2 + misp_transformer._BYTES_PER_CHAR * name_chars(facts)


def _codec_hostname(value: str) -> str:
    """normalize_hostname as it would be without its fast paths: every name through ipaddress
    and IDNA 2008 with UTS #46 (the reference the fast paths must agree with)."""
    import ipaddress
    host = value.strip().rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "IP"
    mapped = idna.uts46_remap(host, std3_rules=False, transitional=False).rstrip(".")
    ascii_host = ".".join(label if label.isascii() else idna.alabel(label).decode() for label in mapped.split("."))
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(HOSTNAME_LABEL_RE.match(label) for label in labels) or labels[-1].isdigit():
        raise ValueError
    for label in labels:
        if label.startswith("xn--"):
            idna.ulabel(label)
    return ascii_host


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("abcXYZ019.-_:% ²٣\u00e4"), min_size=1, max_size=70))
@example("192.0.2.1")
@example("192.0.2.1.")
@example("::1")
@example("1.2.3")
@example("².1.1.1")
def test_hostname_fast_paths_agree_with_the_codec(value):
    """The ASCII shortcut and the could-be-an-IP pre-check give what the codec path gives."""
    expected: str | None
    try:
        expected = _codec_hostname(value)
    except (UnicodeError, ValueError, idna.IDNAError):
        expected = None
    assume(value.strip().rstrip("."))
    got: str | None
    try:
        got = misp_transformer.normalize_hostname(value)
    except misp_transformer.InvalidValue as exc:
        got = "IP" if "IP address" in str(exc) else None
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.tuples(st.text(), st.text()),
                 st.text(alphabet=st.sampled_from('ab \n"\\\t~\x7f\u00e9'))))
def test_text_bytes_is_json_bytes(texts):
    """The shortcut for the usual texts counts what encoding them counts."""
    assert misp_transformer.text_bytes(texts) == json_bytes(texts)

"""Red-team review of issue 12's change: values that still break mapping.md's "Values, as the
real specifications define them" (or the real specifications behind it). Each test failed on
the reviewed commit (4ee64f4) and holds its fix."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

import constants as C
from constants import INDICATOR_MAX_BYTES, SkipReason
from misp_transformer import DefenderTransformer, GraphTransformer, MappingPolicy, StixTransformer
from request_log import RequestLog
from standins.graph import validate_indicator
from standins.sentinel import validate_stix_object
from tests.support import run_cli, sentinel_config, uploads, write_config

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
POLICY = MappingPolicy(misp_url="https://misp.example.org/")
EVENT_UUID = "5f0c1b1e-0000-4000-8000-000000000001"
ATTRIBUTE_UUID = "5f0c1b1e-0000-4000-8000-000000000002"


def _event(misp_type: str, value: str) -> dict[str, Any]:
    attribute = {"uuid": ATTRIBUTE_UUID, "type": misp_type, "category": "Network activity", "value": value,
                 "to_ids": True, "timestamp": "1764000000", "deleted": False}
    return {"Event": {"uuid": EVENT_UUID, "info": "review", "threat_level_id": "2", "analysis": "2",
                      "timestamp": "1764000000", "publish_timestamp": "1764000000", "published": True,
                      "Attribute": [attribute], "Object": [], "Tag": []}}


def outcomes(misp_type: str, value: str) -> tuple[Any, Any]:
    """(Graph, STIX) for one attribute: the observable values each target would send (every one
    checked by its stand-in's validator), or the reason the attribute was skipped."""
    graph = GraphTransformer(POLICY, NOW).transform(_event(misp_type, value))
    stix = StixTransformer(POLICY, NOW).transform(_event(misp_type, value))
    for indicator in graph.indicators:
        assert validate_indicator(indicator) is None
    for obj in stix.indicators:
        assert validate_stix_object(obj) == [], obj["pattern"]
    return ([{k: v for k, v in i.items() if k.startswith(("domain", "email", "url", "network"))} for i in graph.indicators]
            or graph.skips[0].reason,
            [o["pattern"] for o in stix.indicators] or stix.skips[0].reason)


# --- a line break inside a value: `$` in a regex matches before a final "\n" -----------------

@pytest.mark.parametrize(("misp_type", "value"), [
    ("domain", "evil\n.example"),           # Graph sent domainName 'evil\n.example'
    ("hostname|port", "evil\n.example|443"),
    ("email-src", "a\n@example.com"),       # both targets sent the address with its line break
    ("email-dst", "a@evil\n.example"),
    ("url", "http://evil\n.example/x"),
    ("url", "http://198.51.100.7\n:80/x"),  # the IPv4 fast path took '198.51.100.7\n' as an address
])
def test_a_line_break_inside_a_network_value_is_invalid(misp_type, value):
    assert outcomes(misp_type, value) == (SkipReason.INVALID_VALUE, SkipReason.INVALID_VALUE)


# --- secrets: a record is scrubbed after JSON encoding ---------------------------------------

@pytest.mark.parametrize("secret", ['Ab1"Cd2~Ef3.Gh4', "Ab1\\Cd2~Ef3.Gh4", "Ab1\tCd2~Ef3.Gh4"])
def test_a_secret_json_escapes_is_still_redacted(tmp_path, secret):
    """A client secret or key holding a quote, a backslash or a control character is written
    escaped; the scrub looked only for its raw text, so the file held it (escaped, but whole)."""
    log = RequestLog(tmp_path, True, False, secrets=(secret,))
    log.write("probe", {"client_secret": secret, "echo": f"invalid key {secret}"})
    log.request("token", "POST", "https://login.example/token", {"client_secret": secret}, 400, {"echo": secret}, 0.1)
    files = list(tmp_path.iterdir())
    assert len(files) == 2
    for path in files:
        text = path.read_text()
        assert secret[:4] not in text and "Cd2" not in text, text
        assert "[redacted]" in text


# --- the 16 kB cap holds on the wire -----------------------------------------------------------

def _at_the_cap(standins: Any) -> None:
    """One published event whose one indicator the transformer fits to just under 16 kB."""
    wrapped = _event("mutex", "\\" * 2000)
    wrapped["Event"]["Attribute"][0]["comment"] = "\x01" * 4000
    standins.misp.events = [wrapped]


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_an_indicator_fit_to_16_kb_is_sent_within_16_kb(standins, tmp_path, capsys, target):
    """The cap counts compact JSON; requests' json= sends ', ' and ': ', two bytes more per
    member and list item, so an indicator fit to the cap went out over it."""
    _at_the_cap(standins)
    config = write_config(tmp_path, standins) if target == "graph" else sentinel_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == 0
    if target == "graph":
        (sent,) = [r for r in standins.graph.requests_seen if r.path.endswith("/submitTiIndicators")]
        envelope: dict[str, Any] = {"value": []}
    else:
        (sent,) = uploads(standins)
        envelope = {"sourcesystem": sent.json["sourcesystem"], "stixobjects": []}
    (item,) = sent.json["value" if target == "graph" else "stixobjects"]
    assert len(json.dumps(item, separators=(",", ":"))) > INDICATOR_MAX_BYTES - 64  # it is at the cap
    assert len(sent.body) - len(json.dumps(envelope, separators=(",", ":"))) <= INDICATOR_MAX_BYTES


# --- the Sentinel stand-in refuses, never crashes ----------------------------------------------

@pytest.mark.parametrize("name", ["a_b.example.com", "xn--a.example", "evil\n.example"])
def test_the_sentinel_stand_in_refuses_a_name_idna_refuses(name):
    """Its idn-hostname check let idna's exception escape: the stand-in answered with a crash,
    not the per-record rejection Sentinel gives, so such a value failed no test cleanly."""
    obj = StixTransformer(POLICY, NOW).transform(_event("domain", "placeholder.example")).indicators[0]
    problems = validate_stix_object({**obj, "pattern": f"[domain-name:value = '{name}']"})
    assert any("pattern['value']" in problem for problem in problems), problems


# --- values the first observable model still got wrong ---------------------------------------

INVALID = SkipReason.INVALID_VALUE


@pytest.mark.parametrize(("misp_type", "value", "expected"), [
    pytest.param("url", "http://example.com:99999/x", (INVALID, INVALID)),
    pytest.param("url", "tcp://198.51.100.7:65536", (INVALID, INVALID)),
    pytest.param("domain", "xn--a.example", (INVALID, INVALID)),
    pytest.param("domain", "xn--fass-hia.de", (INVALID, INVALID)),
    pytest.param("ip-dst", "::ffff:0.0.0.0/96", (SkipReason.WEAK_OBSERVABLE,) * 2),
    pytest.param("ip-dst", "::ffff:10.0.0.0/104", (SkipReason.WEAK_OBSERVABLE,) * 2),
    pytest.param("domain", "300.1.1.1", (INVALID, INVALID)),
    pytest.param("domain", "1.2.3", (INVALID, INVALID)),
    pytest.param("url", "mailto:a@evil.example", (INVALID, INVALID)),
    pytest.param("url", "//evil.example/x", ([{"url": "http://evil.example/x"}], ["[url:value = 'http://evil.example/x']"])),
])
def test_values_misp_transformer_still_gets_wrong(misp_type, value, expected):
    assert outcomes(misp_type, value) == expected


@pytest.mark.parametrize(("misp_type", "value", "hash_type"), [
    ("filename|sha256", "invoice,final.exe|" + "a" * 64, "sha256"),
    ("malware-sample", "invoice,final.exe|" + "b" * 32, "md5"),
])
def test_defender_still_gets_the_hash_of_a_file_name_with_a_comma(misp_type, value, hash_type):
    (indicator,) = DefenderTransformer(MappingPolicy(misp_url=POLICY.misp_url), NOW).transform(_event(misp_type, value)).indicators
    assert (indicator["indicatorType"], indicator["indicatorValue"]) == (C.DEFENDER_HASH_TYPES[hash_type], value.rpartition("|")[2])


def test_a_refusal_that_quotes_a_value_holding_revoked_is_no_revocation(standins, tmp_path, capsys):
    """The stand-in refuses 'revoked_c2.example.com' (an underscore inside a label breaks the
    schema's idn-hostname) and quotes it; the engine took that for 'already revoked', recorded
    the id as revoked and sent the indicator again under a new id."""
    standins.misp.events = [_event("domain", "revoked_c2.example.com")]
    run_cli(sentinel_config(tmp_path, standins), capsys=capsys)
    sent = [obj["id"] for request in uploads(standins) for obj in request.json["stixobjects"]]
    assert len(sent) == 1, sent

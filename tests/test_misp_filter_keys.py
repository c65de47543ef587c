"""Issue 11 point 1: a filter key MISP's events restSearch would drop is refused before any
request, judged by the name MISP finally receives after PyMISP's renaming; relative times are
frozen once per run.
"""
from __future__ import annotations

import inspect
import time
from typing import Any

import pytest
from pymisp import PyMISP

import constants as C
from constants import ExitCode
from settings import ConfigError, load_settings, misp_wire_name
from tests.support import run_process, search_bodies, write_config

# search() parameters that are not filters: the tool sets them, or they shape the Python answer.
_NOT_FILTERS = {"self", "controller", "return_format", "limit", "page", "pythonify", "kwargs"}
# A value each keyword accepts, for sending it once through the real PyMISP.
_SAMPLE: dict[str, Any] = {"to_ids": 1, "date_from": "2024-01-01", "date_to": "2024-01-02"}


def _search_keywords() -> list[str]:
    return [name for name in inspect.signature(PyMISP.search).parameters if name not in _NOT_FILTERS]


def _keywords(name: str, value: Any) -> dict[str, Any]:
    """One search() keyword, typed loosely: the tests send values PyMISP's hints do not list."""
    return {name: value}


@pytest.mark.parametrize("keyword", _search_keywords())
def test_wire_names_are_what_pymisp_really_sends(standins, keyword):
    """The renaming table is checked against the installed PyMISP: the stand-in records the
    body PyMISP posts for each search() keyword."""
    misp = PyMISP(standins.misp.url, standins.misp_key, ssl=True, tool="test")
    misp.search(controller="events")
    misp.search(controller="events", **_keywords(keyword, _SAMPLE.get(keyword, "1")))
    plain, sent = search_bodies(standins)
    assert {key for key in sent if sent[key] != plain.get(key)} == {misp_wire_name(keyword)}


@pytest.mark.parametrize("name", sorted(C.PYMISP_OVERWRITTEN))
def test_names_pymisp_overwrites_never_reach_misp(standins, name):
    misp = PyMISP(standins.misp.url, standins.misp_key, ssl=True, tool="test")
    misp.search(controller="events")
    misp.search(controller="events", **_keywords(name, "1"))
    plain, sent = search_bodies(standins)
    assert sent == plain
    assert misp_wire_name(name) is None


@pytest.mark.parametrize(("key", "says"), [
    ("quick_filter", "use value (with % wildcards) or searchall"),
    ("quickFilter", "use value (with % wildcards) or searchall"),
    ("object_name", "events restSearch has no object filter"),
    ("include_event_uuid", "(sent as 'includeEventUuid')"),
    ("decayingModel", "attributes restSearch only"),
    ("exclude_decayed", "attributes restSearch only"),
    ("excludeDecayed", "is dropped by PyMISP's search(); use 'exclude_decayed'"),
    ("from", "is dropped by PyMISP's search(); use 'date_from'"),
    ("publish_timestmp", "did you mean 'publish_timestamp'?"),
])
def test_a_key_misp_ignores_stops_the_run_before_any_request(standins, tmp_path, key, says):
    config = write_config(tmp_path, standins, misp_event_filters={"published": True, key: "x"})
    run = run_process(config, "--quiet")
    assert run.code == ExitCode.CONFIG, run.err
    assert says in run.err and f"misp_event_filters[0]: {key!r}" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert standins.misp.requests_seen == [] and standins.graph.requests_seen == []


@pytest.mark.parametrize("key", ["galaxy.synonyms", "org.sector", "threat_level_id", "date", "event_uuid"])
def test_keys_misp_applies_without_a_pymisp_keyword_pass(standins, tmp_path, key):
    settings = load_settings(write_config(tmp_path, standins, misp_event_filters={key: "1"}), environ={})
    assert key in settings.misp_event_filters[0]


def test_metadata_is_the_tools_own_key(standins, tmp_path):
    with pytest.raises(ConfigError, match="must not set metadata"):
        load_settings(write_config(tmp_path, standins, misp_event_filters={"metadata": True}), environ={})


@pytest.mark.parametrize(("value", "seconds"), [("14d", 14 * 86400), ("12H", 12 * 3600), ("30m", 1800), ("1.5d", 129600)])
def test_relative_times_are_frozen_once(standins, tmp_path, value, seconds):
    before = time.time()
    settings = load_settings(write_config(tmp_path, standins, misp_event_filters={"publish_timestamp": value}), environ={})
    frozen = settings.misp_event_filters[0]["publish_timestamp"]
    assert isinstance(frozen, int) and before - seconds - 1 <= frozen <= time.time() - seconds


def test_a_relative_range_is_frozen_and_absolute_values_kept(standins, tmp_path):
    filters = {"timestamp": ["7d", "1d"], "last": "1700000000", "date": "2024-05-01"}
    settings = load_settings(write_config(tmp_path, standins, misp_event_filters=filters), environ={})
    frozen = settings.misp_event_filters[0]
    now = time.time()
    assert [now - 7 * 86400 - 2, now - 86400 - 2] < frozen["timestamp"] <= [now - 7 * 86400, now - 86400]
    assert (frozen["last"], frozen["date"]) == ("1700000000", "2024-05-01")


@pytest.mark.parametrize("value", ["yesterday", "1 week ago", "14x", True])
def test_a_time_misp_would_read_differently_each_hour_is_refused(standins, tmp_path, value):
    with pytest.raises(ConfigError, match="misp_event_filters\\[0\\]: timestamp must be an epoch"):
        load_settings(write_config(tmp_path, standins, misp_event_filters={"timestamp": value}), environ={})


def test_every_page_of_a_run_asks_for_the_same_window(standins, tmp_path):
    """Each page and the listing carry one epoch: MISP never resolves "14d" itself."""
    config = write_config(tmp_path, standins, misp_event_filters={"published": True, "publish_timestamp": "3650d"})
    run = run_process(config, "--quiet")
    assert run.code == ExitCode.OK, run.err
    windows = {body["publish_timestamp"] for body in search_bodies(standins)}
    assert len(windows) == 1 and isinstance(windows.pop(), int)



@pytest.mark.parametrize(("first", "second", "wire"), [
    ("last", "publish_timestamp", "publish_timestamp"),
    ("type", "type_attribute", "type"),
    ("enforce_warninglist", "enforceWarninglist", "enforceWarninglist"),
])
def test_two_keys_misp_receives_under_one_name_are_refused(standins, tmp_path, first, second, wire):
    """PyMISP sends one value per name (`last` replaces `publish_timestamp`, the camelCase
    synonym wins): the other key narrows nothing, so the run stops before any request."""
    filters = {"published": True, first: "1700000000" if wire == "publish_timestamp" else "1", second: "1"}
    run = run_process(write_config(tmp_path, standins, misp_event_filters=filters), "--quiet")
    assert run.code == ExitCode.CONFIG, run.err
    assert f"{first!r} and {second!r} both reach MISP as {wire!r}" in run.err
    assert standins.misp.requests_seen == []


def test_a_relative_date_from_is_frozen_to_an_epoch_misp_reads_as_its_day(standins, tmp_path):
    """MISP compares `from` with the event's date as text: "1d" would stand below every date
    and select everything. Frozen to an epoch, MISP reads it as that day."""
    config = write_config(tmp_path, standins, misp_event_filters={"published": True, "date_from": "1d"})
    run = run_process(config, "--quiet")
    assert run.code == ExitCode.OK, run.err
    assert {type(body["from"]) for body in search_bodies(standins)} == {int}
    assert run.logs("run-report")[-1]["indicators"] == 0 and standins.graph.indicators == {}


@pytest.mark.parametrize("value", [[0, 1], "yes", 2])
def test_a_to_ids_pymisp_would_refuse_is_a_config_error(standins, tmp_path, value):
    """PyMISP raises ValueError at the first search for any to_ids but 0 or 1: that was exit 3
    after the run had started; it is a config error now."""
    with pytest.raises(ConfigError, match=r"misp_event_filters\[0\]: to_ids must be 0 or 1"):
        load_settings(write_config(tmp_path, standins, misp_event_filters={"to_ids": value}), environ={})


@pytest.mark.parametrize(("value", "sent"), [(True, True), (False, 0), (1, 1), ("0", "0")])
def test_the_to_ids_values_pymisp_takes_pass(standins, tmp_path, value, sent):
    settings = load_settings(write_config(tmp_path, standins, misp_event_filters={"to_ids": value}), environ={})
    assert settings.misp_event_filters[0]["to_ids"] == sent

"""MISP's decaying model end to end (issue 14): the MISP stand-in scores each attribute with the
Polynomial formula from the sightings it stores; tests move MISP's time (every clock of an event
goes back, as if days passed) and add sightings, and watch confidence, expiry and removal follow
on Graph, Sentinel and Defender."""
from __future__ import annotations

import datetime as dt
import json
import time
import tracemalloc
import uuid

import pytest

import constants as C
import targets
from constants import ExitCode
from request_log import RequestLog
from settings import load_settings
from standins.misp_search import DecayingModel
from state_store import StateStore
from sync import make_engine
from tests.support import run_cli, write_config

DAY = 86400
# The stand-in's default model: NIDS Simple Decaying Model (lifetime 120 d, speed 2, threshold 30, base 80).
CROSSING_DAYS = 120 * (1 - 30 / 80) ** 2  # 46.875 days after the reference time


def attribute(value: str, misp_type: str, age_days: float, **extra: object) -> dict:
    return {"uuid": str(uuid.uuid4()), "type": misp_type, "category": "Network activity", "value": value,
            "to_ids": True, "deleted": False, "timestamp": str(int(time.time() - age_days * DAY)), "comment": "",
            **extra}


def decay_event(*attributes: dict) -> dict:
    return {"Event": {"uuid": str(uuid.uuid4()), "info": "decay test", "published": True, "org_id": "1",
                      "orgc_id": "1", "date": "2026-11-01", "threat_level_id": "2", "analysis": "2",
                      "timestamp": str(int(time.time()) - 60 * DAY), "publish_timestamp": str(int(time.time()) - 60 * DAY),
                      "Attribute": list(attributes), "Object": [], "Tag": []}}


def age(standins, days: float) -> None:
    """Move MISP's time forward by `days`: every attribute timestamp and sighting goes back (not
    an edit: the stand-in must not move the event's timestamp), so each crossing comes closer."""
    standins.misp.track_edits = False
    shift = int(days * DAY)
    for wrapped in standins.misp.events:
        for item in wrapped["Event"]["Attribute"]:
            item["timestamp"] = str(int(item["timestamp"]) - shift)
    standins.misp.sightings = {key: [moment - shift for moment in moments] for key, moments in standins.misp.sightings.items()}


def sight(standins, item: dict, days_ago: float = 0) -> None:
    standins.misp.sightings.setdefault(item["uuid"], []).append(int(time.time() - days_ago * DAY))


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def graph_by_value(standins) -> dict[str, dict]:
    return {item.get("domainName") or item.get("networkDestinationIPv4") or item.get("url") or item.get("fileHashValue"): item
            for item in standins.graph.indicators.values()}


def report_of(result) -> dict:
    return result.logs("run-report")[-1]


@pytest.fixture
def fresh_misp(standins):
    """A MISP with one event: a fresh domain, a domain past its crossing, a hash the model does
    not cover, and an old address refreshed by a sighting two days ago."""
    fresh = attribute("fresh.example.com", "domain", age_days=1)
    stale = attribute("stale.example.com", "domain", age_days=50)
    hashed = attribute("a" * 64, "sha256", age_days=80)
    sighted = attribute("198.51.100.7", "ip-dst", age_days=90)
    standins.misp.events = [decay_event(fresh, stale, hashed, sighted)]
    sight(standins, sighted, days_ago=2)
    return {"fresh": fresh, "stale": stale, "hashed": hashed, "sighted": sighted}


def test_scores_skip_the_decayed_and_set_confidence_and_the_predicted_expiry(standins, tmp_path, capsys, fresh_misp):
    config = write_config(tmp_path, standins, misp_decay_model="NIDS Simple Decaying Model")
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    held = graph_by_value(standins)
    assert set(held) == {"fresh.example.com", "a" * 64, "198.51.100.7"}
    fresh, sighted = fresh_misp["fresh"], fresh_misp["sighted"]
    assert held["fresh.example.com"]["confidence"] == round(80 * (1 - (1 / 120) ** 0.5))  # 73
    assert held["fresh.example.com"]["expirationDateTime"] == iso(int(fresh["timestamp"]) + round(CROSSING_DAYS * DAY))
    reference = standins.misp.sightings[sighted["uuid"]][-1]
    assert held["198.51.100.7"]["expirationDateTime"] == iso(reference + round(CROSSING_DAYS * DAY))
    assert held["a" * 64]["confidence"] == 50  # unscored: defaultConfidenceLevel and days_to_expire
    assert seconds(held["a" * 64]["expirationDateTime"]) == pytest.approx(time.time() + 60 * DAY, abs=120)
    report = report_of(result)
    assert report["decay"] == {"model": "NIDS Simple Decaying Model", "scored": 3, "unscored": 1, "decayed": 1,
                               "expiry_from_decay": 2, "removed_decayed": 0}
    assert report["skipped"]["decayed"] == 1 and "decay (NIDS Simple Decaying Model)" in result.out
    [skip] = [json.loads(line) for path in result.log_dir.glob("*_skipped-*") for line in path.read_text().splitlines()
              if json.loads(line)["reason"] == "decayed"]
    assert skip["attribute_uuid"] == fresh_misp["stale"]["uuid"] and "below the threshold 30" in skip["detail"]
    searches = [r.json for r in standins.misp.requests_seen if r.path == "/events/restSearch" and not r.json.get("metadata")]
    assert searches and all(body.get("includeDecayScore") in (1, True, "1") for body in searches)


def test_time_passing_removes_what_decayed_and_a_sighting_moves_the_expiry(standins, tmp_path, capsys, fresh_misp):
    config = write_config(tmp_path, standins, misp_decay_model="1", decay_as_confidence=False, max_delete_fraction=0.5)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    age(standins, 20)  # the sighted address (sighted 22 days ago now) stays fresh; so does the domain (21 days)
    sighted = fresh_misp["sighted"]
    sight(standins, sighted)  # seen again today: its clock restarts
    second = run_cli(config, capsys=capsys)
    assert second.code == ExitCode.OK, second.out + second.err
    held = graph_by_value(standins)
    assert held["198.51.100.7"]["expirationDateTime"] == iso(standins.misp.sightings[sighted["uuid"]][-1] + round(CROSSING_DAYS * DAY))
    assert held["fresh.example.com"]["expirationDateTime"] == iso(int(fresh_misp["fresh"]["timestamp"]) + round(CROSSING_DAYS * DAY))
    assert report_of(second)["renew"] == 2 and report_of(second)["update"] == 0  # both crossings moved, the hash stays
    assert report_of(second)["run_kind"] == "full"
    age(standins, 30)  # the domain is now 51 days old: past its crossing
    third = run_cli(config, capsys=capsys)
    assert third.code == ExitCode.OK, third.out + third.err
    assert "fresh.example.com" not in graph_by_value(standins) and "198.51.100.7" in graph_by_value(standins)
    report = report_of(third)
    assert report["deleted"] == 1 and report["decay"]["removed_decayed"] == 1
    [deleted] = [json.loads(line) for path in third.log_dir.glob("*_deleted-graph*") for line in path.read_text().splitlines()]
    assert deleted["key"] == fresh_misp["fresh"]["uuid"] and deleted["reason"].startswith("decayed")


def test_an_unchanged_score_sends_nothing_and_a_capped_expiry_is_not_renewed_nightly(standins, tmp_path, capsys):
    item = attribute("calm.example.com", "domain", age_days=1)
    standins.misp.events = [decay_event(item)]
    standins.misp.decaying_models = [DecayingModel(lifetime=400, decay_speed=2)]  # crossing after 156 days: capped at 60
    config = write_config(tmp_path, standins, misp_decay_model="1", decay_as_confidence=False)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    sent = graph_by_value(standins)["calm.example.com"]
    assert sent["confidence"] == 50 and seconds(sent["expirationDateTime"]) == pytest.approx(time.time() + 60 * DAY, abs=120)
    again = run_cli(config, capsys=capsys)
    assert report_of(again)["unchanged"] == 1 and report_of(again)["accepted"] == 0


def test_decayed_indicators_are_removed_under_the_safety_valve(standins, tmp_path, capsys):
    items = [attribute(f"host{n}.example.com", "domain", age_days=1) for n in range(5)]
    standins.misp.events = [decay_event(*items)]
    config = write_config(tmp_path, standins, misp_decay_model="1", target="sentinel")
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert {obj["confidence"] for obj in standins.sentinel.objects.values()} == {73}
    age(standins, 60)
    blocked = run_cli(config, capsys=capsys)
    assert blocked.code == ExitCode.SAFETY_VALVE
    assert not any(obj.get("revoked") for obj in standins.sentinel.objects.values())
    allowed = run_cli(config, "--allow-mass-delete", capsys=capsys)
    assert allowed.code == ExitCode.OK, allowed.out + allowed.err
    assert all(obj.get("revoked") for obj in standins.sentinel.objects.values())
    assert report_of(allowed)["decay"]["removed_decayed"] == 5


def test_defender_ranks_by_score_and_expires_at_the_crossing(standins, tmp_path, capsys):
    item = attribute("ranked.example.com", "domain", age_days=10)
    standins.misp.events = [decay_event(item)]
    config = write_config(tmp_path, standins, misp_decay_model="1", target="defender")
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    [held] = standins.defender.held(standins.client_id)
    assert held["expirationTime"] == iso(int(item["timestamp"]) + round(CROSSING_DAYS * DAY))


def test_another_formula_uses_misps_score_with_the_fixed_expiry_and_says_so(standins, tmp_path, capsys):
    item = attribute("other.example.com", "domain", age_days=1)
    standins.misp.events = [decay_event(item)]
    standins.misp.decaying_models = [DecayingModel(formula="Sightings")]
    config = write_config(tmp_path, standins, misp_decay_model="1", decay_threshold=0)
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert result.err.count("warning: misp_decay_model '1'") == 1 and "'Sightings' formula" in result.err
    sent = graph_by_value(standins)["other.example.com"]
    assert sent["confidence"] == 0  # the stand-in scores only Polynomial: another formula's score here is 0
    assert seconds(sent["expirationDateTime"]) == pytest.approx(time.time() + 60 * DAY, abs=120)


@pytest.mark.parametrize(("models", "wanted", "message"), [
    ([DecayingModel()], "No such model", "is not one of MISP's decaying models (1 'NIDS Simple Decaying Model')"),
    ([DecayingModel(enabled=False)], "1", "is disabled in MISP"),
    ([DecayingModel(id="1", name="twin"), DecayingModel(id="2", name="Twin")], "twin", "names more than one"),
])
def test_a_model_misp_cannot_apply_is_a_config_error(standins, tmp_path, capsys, models, wanted, message):
    standins.misp.decaying_models = models
    result = run_cli(write_config(tmp_path, standins, misp_decay_model=wanted), capsys=capsys)
    assert result.code == ExitCode.CONFIG and message in result.err and "Traceback" not in result.err
    assert not standins.graph.indicators


def test_check_names_the_model_and_what_it_drives(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins, misp_decay_model="nids simple decaying model")
    result = run_cli(config, "--check", capsys=capsys)
    assert "MISP decaying model: 1 'NIDS Simple Decaying Model', threshold 30; Polynomial, lifetime 120 days" in result.out
    standins.misp.decaying_models = [DecayingModel(enabled=False)]
    failed = run_cli(config, "--check", capsys=capsys)
    assert failed.code == ExitCode.CONFIG and "is disabled in MISP" in failed.out


# --- review of issue 14: defects found and fixed -------------------------------------------------

def test_a_crossing_inside_renew_days_is_not_renewed_nightly_for_nothing(standins, tmp_path, capsys):
    """A renewal cannot move an expiry that is the predicted crossing: the last renew_days (15) of
    a decaying indicator's life must not re-send it every night with the same expiry."""
    item = attribute("closing.example.com", "domain", age_days=40)  # crosses in 6.9 days
    standins.misp.events = [decay_event(item)]
    config = write_config(tmp_path, standins, misp_decay_model="1", decay_as_confidence=False)
    assert report_of(run_cli(config, capsys=capsys))["new"] == 1
    for _ in range(2):
        again = report_of(run_cli(config, capsys=capsys))
        assert (again["renew"], again["unchanged"], again["accepted"]) == (0, 1, 0)


def test_a_partners_sighting_misp_does_not_count_does_not_extend_the_expiry(standins, tmp_path, capsys):
    """Events carry every organisation's sightings; MISP's score, under its default
    Sightings_policy, counts the user's and the host's only. The expiry follows MISP's score."""
    item = attribute("partner.example.com", "domain", age_days=30)
    standins.misp.events = [decay_event(item)]
    standins.misp.partner_sightings = {item["uuid"]: [int(time.time() - DAY)]}
    config = write_config(tmp_path, standins, misp_decay_model="1")
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    sent = seconds(graph_by_value(standins)["partner.example.com"]["expirationDateTime"])
    misp_crossing = int(item["timestamp"]) + CROSSING_DAYS * DAY
    assert misp_crossing - C.DECAY_SCORE_STEP_SECONDS <= sent <= misp_crossing
    assert report_of(run_cli(config, capsys=capsys))["unchanged"] == 1


@pytest.mark.parametrize("count", [50, 60, 101])
def test_the_model_is_found_beyond_the_first_page_of_misps_index(standins, tmp_path, capsys, count):
    """MISP's index lists 50 models a page, newest first: MISP's own models, the oldest, are on
    the last page of an instance with many (a page past the last is a 404)."""
    standins.misp.decaying_models = [DecayingModel()] + [DecayingModel(id=str(n), name=f"custom {n}") for n in range(2, count + 1)]
    item = attribute("paged.example.com", "domain", age_days=1)
    standins.misp.events = [decay_event(item)]
    result = run_cli(write_config(tmp_path, standins, misp_decay_model="NIDS Simple Decaying Model"), capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert report_of(result)["decay"]["scored"] == 1
    pages = [r.path for r in standins.misp.requests_seen if r.path.startswith("/decayingModel/index")]
    assert len(pages) == count // 50 + 1  # a short page is the last; after a full one, the next is asked


def test_an_index_that_ignores_page_is_read_once_not_forever(standins, tmp_path, capsys):
    standins.misp.decaying_models = [DecayingModel(id=str(n), name=f"custom {n}") for n in range(1, 51)]
    standins.misp.decay_index_pages = False
    result = run_cli(write_config(tmp_path, standins, misp_decay_model="custom 50"), capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    assert len([r for r in standins.misp.requests_seen if r.path.startswith("/decayingModel/index")]) == 2


@pytest.mark.parametrize("target", ["graph", "sentinel", "defender"])
def test_decayed_attributes_never_sent_take_no_memory(standins, tmp_path, target):
    """Most of a long-lived MISP has decayed: the engine remembers only what its state holds."""
    settings = load_settings(write_config(tmp_path, standins, misp_decay_model="1", target=target))
    log = RequestLog(tmp_path / "logs", False, False, ())
    store = StateStore(tmp_path / "state.db")
    engine = make_engine(settings, targets.adapter(settings, settings.targets[0], log, online=False), store, log,
                         dt.datetime.now(dt.UTC), online=False)
    engine.start()
    never_sent = [str(uuid.uuid4()) for _ in range(20_000)]
    tracemalloc.start()
    try:
        engine.note_decayed(never_sent)
        grown = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        store.close()
    assert grown < 100_000  # it was 3.8 (Defender) to 11.7 MB (Sentinel): every uuid and key, kept to the end of the run


def test_defender_lists_what_decayed_with_its_reason(standins, tmp_path, capsys):
    item = attribute("leaving.example.com", "domain", age_days=40)
    standins.misp.events = [decay_event(item, attribute("staying.example.com", "domain", age_days=1))]
    config = write_config(tmp_path, standins, misp_decay_model="1", target="defender", max_delete_fraction=0.5)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    age(standins, 10)
    result = run_cli(config, capsys=capsys)
    assert result.code == ExitCode.OK, result.out + result.err
    [deleted] = [json.loads(line) for path in result.log_dir.glob("*_deleted-defender*") for line in path.read_text().splitlines()]
    assert deleted["reason"].startswith("decayed") and report_of(result)["decay"]["removed_decayed"] == 1


def churn(result) -> tuple[int, ...]:
    report = report_of(result)
    return tuple(report[name] for name in ("new", "update", "replace", "renew", "deleted"))


@pytest.fixture
def mixed_misp(standins):
    """Fresh, inside renew_days, refreshed by a sighting, and unscored."""
    items = [attribute("a.example.com", "domain", age_days=1), attribute("b.example.com", "domain", age_days=40),
             attribute("8.8.4.4", "ip-dst", age_days=90), attribute("c" * 64, "sha256", age_days=3)]
    sight(standins, items[2], days_ago=3)
    standins.misp.events = [decay_event(*items)]


@pytest.mark.parametrize("target", ["graph", "sentinel", "defender"])
def test_a_rebuilt_state_then_a_decay_run_sends_nothing(standins, tmp_path, capsys, mixed_misp, target):
    config = write_config(tmp_path, standins, misp_decay_model="1", target=target)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    assert run_cli(config, "--rebuild-state", capsys=capsys).code == ExitCode.OK
    again = run_cli(config, capsys=capsys)
    assert again.code == ExitCode.OK and churn(again) == (0, 0, 0, 0, 0) and report_of(again)["accepted"] == 0


def test_decay_on_off_on_moves_only_the_expiries_that_must_move(standins, tmp_path, capsys, mixed_misp):
    """Off, a crossing stays until its usual renewal; on again, only what the fixed expiry
    overshot comes back to its crossing. No run repeats the one before it."""
    plain = write_config(tmp_path, standins).read_text()
    decaying = write_config(tmp_path, standins, misp_decay_model="1", decay_as_confidence=False).read_text()
    config = tmp_path / "config.py"
    seen = []
    for text in (plain, decaying, decaying, plain, plain, decaying, decaying):
        config.write_text(text)
        seen.append(churn(run_cli(config, capsys=capsys)))
    # new, update, replace, renew, deleted: b.example.com is inside renew_days, so off renews it to the fixed expiry
    assert seen == [(4, 0, 0, 0, 0), (0, 0, 0, 3, 0), (0,) * 5, (0, 0, 0, 1, 0), (0,) * 5, (0, 0, 0, 1, 0), (0,) * 5]

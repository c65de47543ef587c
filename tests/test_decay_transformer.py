"""The pure half of decay (issue 14): which score is read, when an attribute is decayed, the
reference time, and the predicted crossing, checked against the MISP stand-in's own formula."""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest

import constants as C
from constants import SkipReason
from misp_source import decay_policy_of
from misp_transformer import (
    DecayPolicy,
    DefenderTransformer,
    GraphTransformer,
    MappingPolicy,
    StixTransformer,
    decay_reference,
    stix_time,
)
from settings import ConfigError
from standins.misp_search import DecayingModel

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
DAY = 86400
NIDS = DecayPolicy("1", "NIDS", threshold=30, lifetime_days=120, decay_speed=2)


def scored(score: object, base: object = 80, model: str = "1", **attribute: object) -> dict:
    return {"uuid": "6f2f2a7e-1d3b-4c5e-9a1b-2c3d4e5f6a7b", "type": "domain", "value": "decay.example.com",
            "to_ids": True, "timestamp": str(int(NOW.timestamp()) - 10 * DAY),
            "decay_score": [{"score": score, "base_score": base, "decayed": False,
                             "DecayingModel": {"id": model, "name": "NIDS"}}], **attribute}


def event(*attributes: dict) -> dict:
    return {"Event": {"uuid": "0b6d6c1e-3f4a-4b5c-8d9e-0f1a2b3c4d5e", "info": "decay", "timestamp": str(int(NOW.timestamp())),
                      "threat_level_id": "2", "Attribute": list(attributes), "Tag": []}}


def transform(item: dict, transformer: Any = GraphTransformer, **policy: Any) -> Any:
    return transformer(MappingPolicy(decay=NIDS, **policy), NOW).transform(event(item))


def as_misp_scores(item: dict, sightings: list[int], model: DecayingModel | None = None) -> dict:
    """The item with the score the stand-in's MISP gives it at NOW, counting from `sightings`."""
    entry = (model or DecayingModel()).score(item, sightings, NOW.timestamp())
    assert entry is not None
    return {**item, "decay_score": [entry]}


def test_the_predicted_crossing_is_where_the_stand_ins_score_meets_the_threshold():
    model = DecayingModel()
    item = as_misp_scores(scored(0), [])
    [indicator] = transform(item).indicators
    crossing = dt.datetime.fromisoformat(indicator["expirationDateTime"].replace("Z", "+00:00")).timestamp()
    reference = int(item["timestamp"])
    before, after = model.score(item, [], crossing - 1), model.score(item, [], crossing + 1)
    assert before is not None and after is not None and before["score"] > 30 > after["score"]
    assert crossing - reference == pytest.approx(120 * DAY * (1 - 30 / 80) ** 2, abs=1)


@pytest.mark.parametrize(("score", "confidence"), [(72.5, 73), (72.49, 72), (30, 30), (250, 100)])
def test_confidence_is_the_score_rounded_half_up_within_0_to_100(score, confidence):
    [indicator] = transform(scored(score)).indicators
    assert indicator["confidence"] == confidence


def test_a_score_below_the_threshold_is_decayed_and_another_models_score_is_not_read():
    [skip] = transform(scored(29.99)).skips
    assert skip.reason is SkipReason.DECAYED and "29.99 is below" in skip.detail and "below the threshold 30" in skip.detail
    result = transform(scored(5, model="2"))
    assert result.indicators[0]["confidence"] == 50 and result.decay == {"unscored": 1}


@pytest.mark.parametrize("score", ["72", None, True, math.nan, math.inf])
def test_a_score_that_is_not_a_finite_number_is_malformed_not_fresh(score):
    [skip] = transform(scored(score)).skips
    assert skip.reason is SkipReason.MALFORMED and "decay score" in skip.detail


def test_the_reference_is_the_last_true_sighting_unless_an_edit_came_later():
    stamp = int(NOW.timestamp()) - 10 * DAY
    sightings = [{"date_sighting": str(stamp + DAY), "type": "0"}, {"date_sighting": str(stamp + 3 * DAY), "type": "1"}]
    assert decay_reference({"timestamp": str(stamp), "Sighting": sightings}) == stamp + DAY  # a false positive is no sighting
    assert decay_reference({"timestamp": str(stamp + 2 * DAY), "Sighting": sightings}) == stamp + 2 * DAY
    seen = "2026-11-30T10:00:00.123456+00:00"
    assert decay_reference({"timestamp": str(stamp), "last_seen": seen}) == int(dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC).timestamp())
    assert decay_reference({"timestamp": str(stamp), "last_seen": "garbage", "Sighting": "junk"}) == stamp


def test_misps_fresher_score_wins_over_a_crossing_its_fields_put_in_the_past():
    item = scored(79.0, timestamp=str(int(NOW.timestamp()) - 100 * DAY))  # the fields say decayed 53 days ago
    [indicator] = transform(item).indicators
    expires = dt.datetime.fromisoformat(indicator["expirationDateTime"].replace("Z", "+00:00"))
    assert expires - NOW > dt.timedelta(days=40)  # read from the score: little of its life is gone


def test_a_crossing_after_days_to_expire_keeps_the_fixed_expiry():
    far = DecayPolicy("1", "NIDS", threshold=30, lifetime_days=4000, decay_speed=2)
    result = GraphTransformer(MappingPolicy(decay=far), NOW).transform(event(scored(79.0)))
    assert result.indicators[0]["expirationDateTime"] == "2027-01-31T12:00:00Z"  # NOW + 60 days
    assert result.decay == {"scored": 1}


def test_every_target_carries_the_score_and_the_crossing_in_its_own_fields():
    item = as_misp_scores(scored(0), [])  # 56.9, ten days old
    crossing = dt.datetime.fromtimestamp(int(item["timestamp"]) + round(120 * DAY * (1 - 30 / 80) ** 2), dt.UTC)
    [stix] = transform(item, StixTransformer).indicators
    assert stix["confidence"] == 57 and stix["valid_until"] == stix_time(crossing)
    [defender] = transform(item, DefenderTransformer).indicators
    assert defender[C.DEFENDER_RANK_FIELD][1] == 57 and defender["expirationTime"] == crossing.strftime("%Y-%m-%dT%H:%M:%SZ")
    other = {**scored(90.0), "uuid": "7f2f2a7e-1d3b-4c5e-9a1b-2c3d4e5f6a7b", "value": "b.example.com"}
    shared = DefenderTransformer(MappingPolicy(decay=NIDS), NOW).transform(event(scored(60.0), other))
    assert [i[C.DEFENDER_RANK_FIELD][1] for i in shared.indicators] == [60, 90]  # the template's rank is not shared


def test_min_confidence_weighs_the_score_when_it_is_the_confidence():
    assert transform(scored(45.0), min_confidence=50).skips[0].reason is SkipReason.BELOW_MIN_CONFIDENCE
    as_tags = DecayPolicy("1", "NIDS", threshold=30, as_confidence=False, lifetime_days=120, decay_speed=2)
    result = GraphTransformer(MappingPolicy(decay=as_tags, min_confidence=50), NOW).transform(event(scored(45.0)))
    assert result.indicators and result.indicators[0]["confidence"] == 50


def model_entry(**fields: Any) -> dict:
    return DecayingModel(**fields).index_entry()["DecayingModel"]


def test_the_model_is_found_by_id_or_name_and_its_parameters_read():
    models = [model_entry(), model_entry(id="5", name="Fast", lifetime=3, decay_speed=0.3, threshold=50)]
    policy, warning = decay_policy_of(models, "fast", None, True)
    assert policy == DecayPolicy("5", "Fast", 50.0, True, 3.0, 0.3) and warning == ""
    policy, _ = decay_policy_of(models, "1", 42.5, False)
    assert policy.threshold == 42.5 and not policy.as_confidence and policy.lifetime_days == 120


@pytest.mark.parametrize("fields", [{"formula": "PolynomialExtended"}, {"lifetime": 0}, {"decay_speed": "2"}])
def test_a_model_the_tool_cannot_predict_falls_back_with_a_warning(fields):
    policy, warning = decay_policy_of([model_entry(**fields)], "1", None, True)
    assert policy.lifetime_days is None and "expiries stay days_to_expire" in warning


def test_a_model_without_a_threshold_needs_decay_threshold():
    entry = model_entry()
    del entry["parameters"]["threshold"]
    with pytest.raises(ConfigError, match="set decay_threshold"):
        decay_policy_of([entry], "1", None, True)
    assert decay_policy_of([entry], "1", 20, True)[0].threshold == 20


# --- review of issue 14: defects found and fixed -------------------------------------------------

@pytest.mark.parametrize(("policy", "item"), [
    (DecayPolicy("1", "NIDS", threshold=30, lifetime_days=1e300, decay_speed=2), scored(79.0)),  # "never decays"
    (DecayPolicy("1", "NIDS", threshold=30, lifetime_days=1e306, decay_speed=2), scored(79.0)),  # × 86400 is inf
    (DecayPolicy("1", "NIDS", threshold=0, lifetime_days=120, decay_speed=2),  # MISP scores a future reference 0
     scored(0, last_seen="9999-12-31T23:59:59+14:00")),
    (DecayPolicy("1", "NIDS", threshold=0, lifetime_days=120, decay_speed=2), scored(0, Sighting=[{"date_sighting": "253402300799"}])),
])
def test_a_crossing_too_far_for_a_date_keeps_the_fixed_expiry_instead_of_failing(policy, item):
    result = GraphTransformer(MappingPolicy(decay=policy), NOW).transform(event(item))
    assert not result.skips and result.indicators[0]["expirationDateTime"] == "2027-01-31T12:00:00Z"  # NOW + 60 days


def test_expiry_from_decay_counts_only_what_is_sent():
    private = scored(60.0, type="ip-dst", value="10.1.2.3")  # Defender takes no non-public address
    result = transform(private, DefenderTransformer)
    assert result.skips[0].reason is SkipReason.NOT_FOR_TARGET
    assert result.decay == {"scored": 1}
    assert transform(scored(60.0), DefenderTransformer).decay == {"scored": 1, "expiry_from_decay": 1}


def test_a_crossing_read_from_the_score_does_not_move_with_the_moment_misp_scored_it():
    """MISP scores an event when its page is fetched, minutes into a run, and may count from a
    sighting the event does not carry (MISP.disable_sighting_loading). The time left read from
    that score must not move with the fetch's delay, or every such indicator is renewed nightly."""
    model = DecayingModel()
    item = {**scored(0), "timestamp": str(int(NOW.timestamp()) - 100 * DAY)}  # its fields say decayed long ago
    sighting = int(NOW.timestamp()) - 10 * DAY + 1800  # MISP's reference, which the event does not carry
    expiries = set()
    for delay in (0, 5, 300, 900):
        entry = model.score(item, [sighting], NOW.timestamp() + delay)
        assert entry is not None
        [indicator] = transform({**item, "decay_score": [entry]}).indicators
        expiries.add(dt.datetime.fromisoformat(indicator["expirationDateTime"].replace("Z", "+00:00")).timestamp())
    [expiry] = expiries
    true_crossing = sighting + 120 * DAY * (1 - 30 / 80) ** 2
    assert true_crossing - C.DECAY_SCORE_STEP_SECONDS <= expiry <= true_crossing


def test_a_sighting_misp_does_not_count_does_not_put_the_expiry_after_misps_crossing():
    """Under MISP's default Sightings_policy (event owner), the score counts from the last sighting
    of the user's and the host's organisations only (Sighting::getLastSightingForAttribute), while
    the event carries every organisation's: a partner's sighting two days ago must not promise
    18 more days of life than MISP gives."""
    stamp, counted = int(NOW.timestamp()) - 30 * DAY, int(NOW.timestamp()) - 20 * DAY
    item = as_misp_scores(scored(0, timestamp=str(stamp), Sighting=[
        {"date_sighting": str(counted), "type": "0", "org_id": "1"},
        {"date_sighting": str(int(NOW.timestamp()) - 2 * DAY), "type": "0", "org_id": "7"}]), [counted])
    [indicator] = transform(item).indicators
    expiry = dt.datetime.fromisoformat(indicator["expirationDateTime"].replace("Z", "+00:00")).timestamp()
    misp_crossing = counted + 120 * DAY * (1 - 30 / 80) ** 2
    assert misp_crossing - C.DECAY_SCORE_STEP_SECONDS <= expiry <= misp_crossing


def test_with_threshold_0_nothing_crosses_so_an_old_attribute_keeps_the_fixed_expiry():
    """A score never falls below 0: an attribute past its lifetime (score 0) was sent with an
    expiry an hour away, again on every run."""
    zero = DecayPolicy("1", "NIDS", threshold=0, lifetime_days=120, decay_speed=2)
    item = as_misp_scores(scored(0, timestamp=str(int(NOW.timestamp()) - 200 * DAY)), [])
    result = GraphTransformer(MappingPolicy(decay=zero), NOW).transform(event(item))
    assert result.indicators[0]["expirationDateTime"] == "2027-01-31T12:00:00Z"  # NOW + 60 days


def test_a_score_too_flat_to_date_its_reference_keeps_the_crossing_of_the_fields():
    """With a small decay_speed the score stays at its base, to the last bit, for days: it says
    nothing of when MISP started counting, and the crossing must not move a day each night."""
    flat = DecayPolicy("1", "NIDS", threshold=30, lifetime_days=50, decay_speed=0.05)
    model = DecayingModel(lifetime=50, decay_speed=0.05)
    item = scored(0, timestamp=str(int(NOW.timestamp()) - 2 * DAY))
    expiries = set()
    for night in range(3):
        now = NOW + dt.timedelta(days=night)
        entry = model.score(item, [], now.timestamp())
        assert entry is not None and entry["score"] == 80
        result = GraphTransformer(MappingPolicy(decay=flat), now).transform(event({**item, "decay_score": [entry]}))
        expiries.add(result.indicators[0]["expirationDateTime"])
    crossing = int(item["timestamp"]) + round(50 * DAY * (1 - 30 / 80) ** 0.05)
    assert expiries == {dt.datetime.fromtimestamp(crossing, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

"""Planning rules (pure) and the state store's transactional rows."""
from __future__ import annotations

import datetime as dt
import os
import stat

import pytest

from graph_client import GRAPH_HASH_RULES, renew_body, update_body
from reconcile import Action, content_hash, event_uuid_of, immutable_hash, mass_delete_blocked, plan
from state_store import PENDING, StateRow, StateStore, StoreLocked, target_lock

NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
INDICATOR = {
    "externalId": "a1", "targetProduct": "Azure Sentinel", "action": "alert", "threatType": "WatchList",
    "tlpLevel": "red", "description": "d", "domainName": "evil.example", "expirationDateTime": "2027-01-27T00:00:00Z",
    "additionalInformation": "d\nMISP event: 5a0d5bf4-99c8-4f15-9879-22b1950d210f", "tags": ["x"],
}


def known(indicator=INDICATOR, expires="2027-01-27T00:00:00Z") -> StateRow:
    return StateRow("a1", "g1", content_hash(indicator, GRAPH_HASH_RULES), immutable_hash(indicator, GRAPH_HASH_RULES), expires,
                    "e1", "2026-11-28T00:00:00Z", "")


def test_plan_covers_every_case():
    renew_before = NOW + dt.timedelta(days=15)
    assert plan(None, INDICATOR, renew_before, GRAPH_HASH_RULES) is Action.NEW
    assert plan(known(), INDICATOR, renew_before, GRAPH_HASH_RULES) is Action.UNCHANGED
    assert plan(known(), {**INDICATOR, "expirationDateTime": "2030-01-01T00:00:00Z"}, renew_before, GRAPH_HASH_RULES) is Action.UNCHANGED
    assert plan(known(), {**INDICATOR, "tags": ["y"]}, renew_before, GRAPH_HASH_RULES) is Action.UPDATE
    assert plan(known(), {**INDICATOR, "tlpLevel": "green"}, renew_before, GRAPH_HASH_RULES) is Action.UPDATE
    assert plan(known(), {**INDICATOR, "domainName": "other.example"}, renew_before, GRAPH_HASH_RULES) is Action.REPLACE
    assert plan(known(), {**INDICATOR, "threatType": "C2"}, renew_before, GRAPH_HASH_RULES) is Action.REPLACE
    assert plan(known(expires="2026-12-01T00:00:00Z"), INDICATOR, renew_before, GRAPH_HASH_RULES) is Action.RENEW
    assert plan(known(expires="garbage"), INDICATOR, renew_before, GRAPH_HASH_RULES) is Action.RENEW


def test_graph_echo_hashes_like_what_was_sent():
    echo = {**INDICATOR, "id": "g1", "azureTenantId": "t", "ingestedDateTime": "2026-11-28T00:00:00Z",
            "@odata.type": "#microsoft.graph.tiIndicator", "expirationDateTime": "2027-02-01T00:00:00Z"}
    assert content_hash(echo, GRAPH_HASH_RULES) == content_hash(INDICATOR, GRAPH_HASH_RULES)
    assert immutable_hash(echo, GRAPH_HASH_RULES) == immutable_hash(INDICATOR, GRAPH_HASH_RULES)


def test_update_bodies_clear_removed_fields_and_renewal_is_minimal():
    body = update_body("g1", {**INDICATOR, "tags": []})
    assert body["id"] == "g1" and body["targetProduct"] == "Azure Sentinel" and body["description"] == "d"
    assert body["knownFalsePositives"] is None  # an optional text the indicator does not have
    assert body["tags"] == [] and body["killChain"] == []  # collections are not nullable (mapping.md "Graph collections")
    assert "domainName" not in body and "threatType" not in body
    assert renew_body("g1", INDICATOR) == {"id": "g1", "expirationDateTime": INDICATOR["expirationDateTime"],
                                           "targetProduct": "Azure Sentinel"}


def test_event_uuid_is_read_back_from_additional_information():
    assert event_uuid_of(INDICATOR) == "5a0d5bf4-99c8-4f15-9879-22b1950d210f"
    assert event_uuid_of({"additionalInformation": "nothing here"}) == ""


@pytest.mark.parametrize(("deleting", "owned", "blocked"), [(0, 0, False), (2, 10, False), (3, 10, True), (1, 1, True)])
def test_safety_valve_threshold(deleting, owned, blocked):
    assert mass_delete_blocked(deleting, owned, 0.2) is blocked


def test_store_rows_move_pending_to_sent_and_survive_reopening(tmp_path):
    path = tmp_path / "state" / "graph_t.sqlite"
    store = StateStore(path)
    run, previous = store.begin_run("2026-12-01T00:00:00Z")
    assert previous is None
    store.mark_pending([StateRow("a1", "", "c", "f", "2027-01-01T00:00:00Z", "e1", "now", ""),
                        StateRow("a2", "", "c", "f", "x", "e1", "now", "")], run)
    assert [(p.external_id, p.status) for p in store.unfinished()] == [("a1", PENDING), ("a2", PENDING)]
    store.record_sent([("a1", "g1")], failed=["a2"])
    store.close()
    reopened = StateStore(path)
    assert reopened.known("a1") == StateRow("a1", "g1", "c", "f", "2027-01-01T00:00:00Z", "e1", "now", "")
    assert reopened.known("a2") is None and reopened.unfinished() == []
    assert reopened.begin_run("2026-12-02T00:00:00Z") == (run + 1, "2026-12-01T00:00:00Z")
    assert [row.external_id for row in reopened.unseen(run + 1)] == ["a1"]
    reopened.mark_seen([("a1", "e1")], run + 1)
    assert list(reopened.unseen(run + 1)) == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_a_failed_transaction_leaves_the_store_as_it_was(tmp_path):
    store = StateStore(tmp_path / "s.sqlite")
    store.mark_pending([StateRow("a1", "", "c", "f", "x", "e1", "now", "")], 1)
    with pytest.raises(RuntimeError), store.transaction():
        store.db.execute("DELETE FROM indicators")
        raise RuntimeError("crash inside")
    assert [p.external_id for p in store.unfinished()] == ["a1"]


def test_lock_is_exclusive(tmp_path):
    lock = tmp_path / "graph.lock"
    with target_lock(lock), pytest.raises(StoreLocked), target_lock(lock):
        pass
    with target_lock(lock):
        pass

"""The engine with fake in-memory adapters, no HTTP: planning, batching, recovery after a kill,
removal, the safety valve, and what each typed outcome does to the state."""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import constants as C
from constants import ErrorCause, Outcome
from engine import Engine, Limits
from misp_transformer import GraphTransformer, Transformer
from ms_client import ItemResult, MicrosoftError
from rebuild import Rebuilt, Survey
from reconcile import Action, HashRules
from report import RunReport
from request_log import RequestLog
from state_store import StateRow, StateStore
from targets import ADAPTERS, Adapter, Purging

NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
LATER = "2027-01-27T00:00:00Z"
LIMITS = Limits(renew_days=15, days_to_expire=60, full_resync_days=7, max_delete_fraction=0.5, concurrency=2)


def indicator(key: str, value: str | None = None, description: str = "d", expires: str = LATER) -> dict[str, Any]:
    """`value` is fixed (a change replaces), `description` updatable, `expirationDateTime` the expiry."""
    return {"key": key, "value": value or f"{key}.example", "description": description, "expirationDateTime": expires}


class FakeAdapter:
    """A service whose creates are idempotent (ids are our keys, as STIX ids are): it holds
    service id -> indicator and records every call."""

    kind = "fake"
    label = "fake target"
    transformer: type[Transformer] = GraphTransformer
    max_batch = 3
    hash_rules = HashRules(volatile=frozenset({"id", "expirationDateTime"}), updatable=frozenset({"description"}))
    keeps_body = False
    retires_ids = False
    permission = "the fake role"
    permission_fix = "grant the fake role"
    listing_columns: tuple[tuple[str, int], ...] = (("key", 10),)

    def __init__(self, held: dict[str, dict[str, Any]] | None = None) -> None:
        self.held = {} if held is None else held
        self.calls: list[tuple[str, int]] = []  # (operation, items)
        self.refused: dict[str, str] = {}  # value -> the service's reason
        self.retired: set[str] = set()  # service ids revoked outside the state
        self.lose: set[str] = set()  # operations the service does whose answer never arrives (a kill)

    # pure
    def key_of(self, item: dict[str, Any]) -> str:
        return str(item["key"])

    def keys_of_attribute(self, attribute_uuid: str) -> list[str]:
        return [attribute_uuid]

    def attribute_of(self, item: dict[str, Any]) -> str:
        return str(item["key"])

    def expiry_of(self, item: dict[str, Any]) -> str:
        return str(item["expirationDateTime"])

    def value_of(self, item: dict[str, Any]) -> str:
        return str(item["value"])

    def row_value(self, row: StateRow) -> str:
        return ""

    def prepare(self, key: str, item: dict[str, Any], row: StateRow | None,
                revoked_id: str | None) -> tuple[dict[str, Any], str | None]:
        remote = row.remote_id if row else (f"{revoked_id}+" if revoked_id else key)
        return {**item, "id": remote}, remote

    def owns_id(self, remote_id: str) -> bool:
        return True

    def listing_cell(self, item: dict[str, Any], column: str) -> Any:
        return item.get(column, "")

    # the service
    @property
    def requests_sent(self) -> int:
        return len(self.calls)

    def token(self) -> str:
        return "fake"

    def probe(self) -> Iterator[dict[str, Any]]:
        return self.listing()

    def listing(self) -> Iterator[dict[str, Any]]:
        yield {"value": list(self.held.values())}

    def read_back(self, now: dt.datetime) -> Rebuilt:
        return Rebuilt()

    def _answer(self, operation: str, results: list[ItemResult]) -> list[ItemResult]:
        self.calls.append((operation, len(results)))
        if operation in self.lose:
            raise MicrosoftError(f"{operation}: killed before the answer", ErrorCause.TRANSPORT, fatal=True)
        return results

    def _store(self, remote_id: str, item: dict[str, Any]) -> ItemResult:
        if item["value"] in self.refused:
            return ItemResult(remote_id, None, Outcome.REJECTED, self.refused[item["value"]])
        if remote_id in self.retired:
            return ItemResult(remote_id, None, Outcome.ALREADY_REVOKED, "revoked")
        self.held[remote_id] = item
        return ItemResult(remote_id, remote_id)

    def create(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        return self._answer("create", [self._store(item["id"], item) for item in items])

    def change(self, action: Action, items: list[tuple[str, dict[str, Any]]]) -> list[ItemResult]:
        results = [self._store(remote, item) if remote in self.held or remote in self.retired
                   else ItemResult(remote, None, Outcome.GONE, "not found") for remote, item in items]
        return self._answer(action.value, results)

    def remove(self, rows: list[StateRow]) -> list[ItemResult]:
        results = [ItemResult(row.remote_id, row.remote_id) if self.held.pop(row.remote_id, None)
                   else ItemResult(row.remote_id, None, Outcome.GONE, "not found") for row in rows]
        return self._answer("remove", results)

    def close(self) -> None:
        pass


class CopyingAdapter(FakeAdapter):
    """A service like Graph: every create makes a new copy under a fresh id, so the engine
    must purge by key."""

    late_copy_minutes = 10

    def create(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        return self._answer("create", [self._store(f"copy-{len(self.calls)}-{index}", item) for index, item in enumerate(items)])

    def prepare(self, key: str, item: dict[str, Any], row: StateRow | None,
                revoked_id: str | None) -> tuple[dict[str, Any], str | None]:
        return item, row.remote_id if row else None

    def purge(self, keys: list[str]) -> list[ItemResult]:
        results = []
        for key in keys:
            copies = [remote for remote, held in self.held.items() if held["key"] == key]
            for remote in copies:
                del self.held[remote]
            results.append(ItemResult(key, key) if copies else ItemResult(key, None, Outcome.GONE, "none"))
        return self._answer("purge", results)

    def copies(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for remote, held in self.held.items():
            found.setdefault(held["key"], []).append(remote)
        return found

    def delete_copies(self, remote_ids: list[str]) -> list[ItemResult]:
        return self._answer("delete", [ItemResult(r, r) if self.held.pop(r, None) else ItemResult(r, None, Outcome.GONE)
                                       for r in remote_ids])

    def keys_held(self) -> list[str]:
        return sorted(item["key"] for item in self.held.values())


def test_the_fakes_are_adapters() -> None:
    adapter: Adapter = FakeAdapter()
    copying: Adapter = CopyingAdapter()
    assert not isinstance(adapter, Purging) and isinstance(copying, Purging)


@pytest.fixture
def log(tmp_path: Path) -> RequestLog:
    return RequestLog(tmp_path / "logs", False, False, ())


def sync(adapter: FakeAdapter, store: StateStore, log: RequestLog, events: dict[str, list[dict[str, Any]]],
         allow_mass_delete: bool = False, now: dt.datetime = NOW) -> Engine:
    """One run as sync.run_all drives it: recover, offer every indicator, send, remove what is gone."""
    engine = Engine(adapter, store, log, RunReport("fake"), now, LIMITS, online=True)
    try:
        engine.start()
        engine.recover()
        for event_uuid, items in events.items():
            for item in items:
                engine.offer(item, event_uuid)
            engine.commit_seen()
        engine.flush_all()
        engine.remove_gone(events.keys(), events.keys(), set, allow_mass_delete)
        engine.fill(allow_mass_delete)
    finally:
        engine.close()
    return engine


def actions(engine: Engine) -> dict[str, int]:
    return {action.value: engine.report.actions[action.value] for action in Action if engine.report.actions[action.value]}


@pytest.mark.parametrize("adapter_class", [FakeAdapter, CopyingAdapter])
def test_planning_new_unchanged_update_replace_renew(adapter_class: type[FakeAdapter], log: RequestLog) -> None:
    adapter, store = adapter_class(), StateStore(None)
    first = [indicator("a"), indicator("b"), indicator("c"), indicator("d")]
    assert actions(sync(adapter, store, log, {"e1": first})) == {"new": 4}
    assert actions(sync(adapter, store, log, {"e1": first})) == {"unchanged": 4}
    assert adapter.calls[-1][0] == "create"  # the unchanged run sent nothing
    changed = [indicator("a", description="other"), indicator("b", value="moved.example"), indicator("c"), indicator("d")]
    engine = sync(adapter, store, log, {"e1": changed})
    assert actions(engine) == {"update": 1, "replace": 1, "unchanged": 2}
    assert engine.report.accepted == 2 and engine.report.rejected == 0
    held = {item["key"]: item for item in adapter.held.values()}
    assert len(adapter.held) == 4 and held["a"]["description"] == "other" and held["b"]["value"] == "moved.example"
    renewed = [{**item, "expirationDateTime": "2027-03-28T00:00:00Z"} for item in changed]
    later = NOW + dt.timedelta(days=50)  # the expiry sent first is now within renew_days
    assert actions(sync(adapter, store, log, {"e1": renewed}, now=later)) == {"renew": 4}
    assert {item["expirationDateTime"] for item in adapter.held.values()} == {"2027-03-28T00:00:00Z"}


def test_a_replacement_purges_every_copy_first_where_creates_copy(log: RequestLog) -> None:
    adapter, store = CopyingAdapter(), StateStore(None)
    sync(adapter, store, log, {"e1": [indicator("a")]})
    sync(adapter, store, log, {"e1": [indicator("a", value="moved.example")]})
    # the first create purges too: this run did not read the service's listing (a restored state)
    assert [call[0] for call in adapter.calls] == ["purge", "create", "purge", "create"]
    assert adapter.keys_held() == ["a"] and store.known("a") is not None
    assert store.known("a").remote_id in adapter.held  # type: ignore[union-attr]


def test_batches_hold_at_most_the_adapters_limit(log: RequestLog) -> None:
    adapter = FakeAdapter()
    sync(adapter, StateStore(None), log, {"e1": [indicator(f"k{n}") for n in range(7)]})
    assert adapter.calls == [("create", 3), ("create", 3), ("create", 1)]


def test_a_killed_create_is_purged_and_sent_once_where_creates_copy(log: RequestLog) -> None:
    adapter, store = CopyingAdapter(), StateStore(None)
    adapter.lose = {"create"}
    with pytest.raises(MicrosoftError):
        sync(adapter, store, log, {"e1": [indicator("a"), indicator("b")]})
    assert [row.status for row in store.unfinished()] == ["pending", "pending"] and len(adapter.held) == 2
    adapter.lose = set()
    engine = sync(adapter, store, log, {"e1": [indicator("a"), indicator("b")]})
    assert engine.report.recovered == 2 and actions(engine) == {"new": 2}
    assert adapter.keys_held() == ["a", "b"]  # one copy each, not two
    assert store.unfinished() == [] and store.suspects() == {"a", "b"}


def test_a_killed_create_stays_owned_where_creates_are_idempotent(log: RequestLog) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    adapter.lose = {"create"}
    with pytest.raises(MicrosoftError):
        sync(adapter, store, log, {"e1": [indicator("a")]})
    adapter.lose = set()
    engine = sync(adapter, store, log, {"e2": []}, allow_mass_delete=True)  # MISP dropped it: the maybe-sent row goes
    assert engine.report.recovered == 1 and engine.report.deleted == 1 and adapter.held == {}
    assert [call[0] for call in adapter.calls] == ["create", "remove"]


def test_a_killed_removal_is_finished_by_the_next_run(log: RequestLog) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    sync(adapter, store, log, {"e1": [indicator("a")], "e2": [indicator("b"), indicator("c"), indicator("d")]})
    adapter.lose = {"remove"}
    with pytest.raises(MicrosoftError):
        sync(adapter, store, log, {"e2": [indicator("b"), indicator("c"), indicator("d")]})
    assert [(row.external_id, row.status) for row in store.unfinished()] == [("a", "deleting")]
    adapter.lose = set()
    engine = sync(adapter, store, log, {"e2": [indicator("b"), indicator("c"), indicator("d")]})
    assert engine.report.recovered == 1 and store.unfinished() == [] and store.known("a") is None


def test_indicators_of_gone_events_are_removed(log: RequestLog) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    kept = [indicator("a"), indicator("b"), indicator("c")]
    sync(adapter, store, log, {"e1": kept, "e2": [indicator("x")]})
    engine = sync(adapter, store, log, {"e1": kept})
    assert engine.report.deleted == 1 and sorted(adapter.held) == ["a", "b", "c"]
    assert store.known("x") is None and engine.report.named_deleted[0][0] == "attribute x"


def test_the_safety_valve_blocks_a_mass_removal(log: RequestLog) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    sync(adapter, store, log, {"e1": [indicator("a"), indicator("b")], "e2": [indicator("c"), indicator("d")]})
    blocked = sync(adapter, store, log, {"e1": [indicator("a")]})  # 3 of 4 would go, more than half
    assert blocked.report.deletions_blocked == 3 and blocked.report.deleted == 0 and len(adapter.held) == 4
    allowed = sync(adapter, store, log, {"e1": [indicator("a")]}, allow_mass_delete=True)
    assert allowed.report.deleted == 3 and list(adapter.held) == ["a"]


def test_rejected_items_stay_out_of_the_state(log: RequestLog) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    adapter.refused["bad.example"] = "the service says no"
    engine = sync(adapter, store, log, {"e1": [indicator("a"), indicator("b", value="bad.example")]})
    assert engine.report.accepted == 1 and engine.report.rejected == 1
    assert engine.report.named_rejected == [("bad.example", "the service says no")]
    assert store.known("b") is None and store.known("a") is not None
    assert actions(sync(adapter, store, log, {"e1": [indicator("a"), indicator("b", value="bad.example")]})) == {
        "unchanged": 1, "new": 1}


def test_a_gone_indicator_is_created_again(log: RequestLog) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    sync(adapter, store, log, {"e1": [indicator("a")]})
    adapter.held.clear()  # deleted on the service's side
    engine = sync(adapter, store, log, {"e1": [indicator("a", description="new")]})
    assert [call[0] for call in adapter.calls] == ["create", "update", "create"]
    assert engine.report.accepted == 1 and engine.report.rejected == 0 and adapter.held["a"]["description"] == "new"


def test_an_id_revoked_elsewhere_moves_to_a_fresh_id_once(log: RequestLog) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    sync(adapter, store, log, {"e1": [indicator("a")]})
    adapter.retired.add("a")
    engine = sync(adapter, store, log, {"e1": [indicator("a", description="new")]})
    assert store.revoked_id("a") == "a" and store.known("a").remote_id == "a+"  # type: ignore[union-attr]
    assert adapter.held["a+"]["description"] == "new" and engine.report.rejected == 0
    adapter.retired |= {"a+", "a++"}
    again = sync(adapter, store, log, {"e1": [indicator("a", description="newer")]})
    assert again.report.rejected == 1 and store.known("a") is None  # one fresh id per run, not a loop


def test_delete_ids_forgets_what_the_service_removed(log: RequestLog) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    sync(adapter, store, log, {"e1": [indicator("a"), indicator("b")]})
    engine = Engine(adapter, store, log, RunReport("fake"), NOW, LIMITS, online=True)
    results = engine.delete_ids(["a", "nowhere"])
    engine.close()
    assert [(r.key, r.outcome) for r in results] == [("a", Outcome.ACCEPTED), ("nowhere", Outcome.GONE)]
    assert store.known("a") is None and store.known("b") is not None and list(adapter.held) == ["b"]


def test_a_dry_run_sends_nothing_and_keeps_the_state(log: RequestLog, tmp_path: Path) -> None:
    adapter, store = FakeAdapter(), StateStore(None)
    engine = Engine(adapter, store, log, RunReport("fake"), NOW, LIMITS, online=False)
    engine.start()
    engine.offer(indicator("a"), "e1")
    engine.flush_all()
    engine.close()
    assert adapter.calls == [] and store.known("a") is None
    assert list((tmp_path / "logs").glob("*_dry-run-new_*.json"))


def test_the_registry_has_an_adapter_for_every_target_the_settings_accept() -> None:
    assert tuple(ADAPTERS) == C.TARGET_KINDS


def test_a_purged_unconfirmed_create_is_forgotten_not_removed_again(log: RequestLog) -> None:
    adapter, store = CopyingAdapter(), StateStore(None)
    adapter.lose = {"create"}
    with pytest.raises(MicrosoftError):
        sync(adapter, store, log, {"e1": [indicator("a")]})
    adapter.lose = set()
    engine = sync(adapter, store, log, {"e2": []}, allow_mass_delete=True)  # MISP dropped it meanwhile
    assert adapter.held == {} and store.known("a") is None and engine.report.deleted == 0
    assert [call[0] for call in adapter.calls] == ["purge", "create", "purge"]  # the recovery's purge is enough


# --- a budget (a service holding a limited number of indicators: Defender) ---------------------

class BudgetedAdapter(FakeAdapter):
    """A capped service: `budget` is our share, `room` what the tenant still takes (others' too)."""

    hash_rules = HashRules(volatile=frozenset({"id", "expirationDateTime", "rank"}), updatable=frozenset({"description"}))

    def __init__(self, budget: int, room: int = 100) -> None:
        super().__init__()
        self.budget = budget
        self.room = room

    def rank_of(self, item: dict[str, Any]) -> tuple[int, ...]:
        return tuple(item["rank"])

    def survey(self) -> Survey:
        self.calls.append(("survey", 0))
        return Survey(self.room - len(self.held), frozenset())

    def keys_held(self) -> list[str]:
        return sorted(item["key"] for item in self.held.values())


def ranked(key: str, confidence: int, when: int = 1, threat: int = 2) -> dict[str, Any]:
    return {**indicator(key), "rank": [1, confidence, threat, when]}


def test_a_budget_keeps_the_most_valuable_and_counts_the_rest(log: RequestLog) -> None:
    adapter, store = BudgetedAdapter(budget=3), StateStore(None)
    wanted = [ranked("low", 10), ranked("top", 90), ranked("mid", 50, when=5), ranked("mid-old", 50, when=1), ranked("high", 70)]
    engine = sync(adapter, store, log, {"e1": wanted})
    assert adapter.keys_held() == ["high", "mid", "top"]
    assert engine.report.skipped[C.SkipReason.OVER_BUDGET.value] == 2
    assert actions(engine) == {"new": 3}
    records = [json.loads(line) for path in (log.directory).glob("*over-budget-fake*") for line in path.read_text().splitlines()]
    assert sorted(record["key"] for record in records) == ["low", "mid-old"]
    assert store.meta("budget_full") == "1"
    store.set_meta("full_read", "2026-11-28T00:00:00Z")
    store.set_meta("fingerprint", "same settings")
    assert engine.read_plan({}, "", "same settings")[0] == "the budget was full in the last run: every event competes for it"


def test_the_choice_is_stable_and_only_a_clearly_better_newcomer_displaces(log: RequestLog) -> None:
    adapter, store = BudgetedAdapter(budget=2), StateStore(None)
    sync(adapter, store, log, {"e1": [ranked("a", 50), ranked("b", 50)]})
    calls = len(adapter.calls)
    newer = ranked("newer", 50, when=99)  # better by age alone: never displaces what is in
    for _ in range(2):
        engine = sync(adapter, store, log, {"e1": [ranked("a", 50), ranked("b", 50)], "e2": [newer]})
        assert adapter.keys_held() == ["a", "b"] and actions(engine) == {"unchanged": 2}
        assert engine.report.skipped[C.SkipReason.OVER_BUDGET.value] == 1
    assert [call[0] for call in adapter.calls[calls:]] == ["survey", "survey"]  # nothing sent, nothing removed
    sync(adapter, store, log, {"e1": [ranked("a", 50), ranked("b", 50)]})
    assert [call[0] for call in adapter.calls[calls + 2:]] == []  # no newcomer: the service is not even listed
    engine = sync(adapter, store, log, {"e1": [ranked("a", 50), ranked("b", 40)], "e2": [ranked("better", 60)]})
    assert adapter.keys_held() == ["a", "better"]
    deleted = [json.loads(line) for path in log.directory.glob("*deleted-fake*") for line in path.read_text().splitlines()]
    assert [(record["key"], record["reason"]) for record in deleted] == [("b", "over budget: more valuable indicators took its place")]
    assert engine.report.skipped[C.SkipReason.OVER_BUDGET.value] == 1 and actions(engine) == {"unchanged": 1, "new": 1}


def test_the_tenant_room_caps_what_is_added(log: RequestLog) -> None:
    adapter, store = BudgetedAdapter(budget=10, room=2), StateStore(None)
    engine = sync(adapter, store, log, {"e1": [ranked("a", 90), ranked("b", 80), ranked("c", 70)]})
    assert adapter.keys_held() == ["a", "b"]
    assert engine.report.skipped[C.SkipReason.OVER_BUDGET.value] == 1


def test_a_lowered_budget_removes_the_weakest_under_the_safety_valve(log: RequestLog) -> None:
    adapter, store = BudgetedAdapter(budget=4), StateStore(None)
    four = [ranked("a", 90), ranked("b", 80), ranked("c", 70), ranked("d", 60)]
    sync(adapter, store, log, {"e1": four})
    adapter.budget = 1  # 3 of 4 would go: more than max_delete_fraction 50%
    sync(adapter, store, log, {"e1": four})
    assert len(adapter.held) == 4
    sync(adapter, store, log, {"e1": four}, allow_mass_delete=True)
    assert adapter.keys_held() == ["a"]


def test_an_incumbent_whose_event_was_not_read_keeps_its_place(log: RequestLog) -> None:
    adapter, store = BudgetedAdapter(budget=2), StateStore(None)
    sync(adapter, store, log, {"e1": [ranked("a", 10)], "e2": [ranked("b", 10)]})
    engine = Engine(adapter, store, log, RunReport("fake"), NOW, LIMITS, online=True)
    engine.start()
    engine.keep_unchanged({"e1"})  # an incremental run: e1 did not change, so it is not read
    engine.offer(ranked("c", 99), "e3")
    engine.offer(ranked("b", 10), "e2")
    engine.flush_all()
    engine.remove_gone({"e2", "e3"}, {"e1", "e2", "e3"}, set, False)
    engine.fill(False)
    engine.close()
    assert adapter.keys_held() == ["a", "c"]  # b, ranked and weaker, made room; a, unranked, stayed


def test_the_safety_valve_weighs_removals_and_displacements_of_one_run_together(log: RequestLog) -> None:
    adapter, store = BudgetedAdapter(budget=4), StateStore(None)
    sync(adapter, store, log, {"e1": [ranked("a", 90), ranked("b", 80), ranked("c", 70), ranked("d", 60)]})
    adapter.budget = 1  # d leaves MISP (1 of 4), and the budget would displace b and c: 3 of 4 in one run
    engine = sync(adapter, store, log, {"e1": [ranked("a", 90), ranked("b", 80), ranked("c", 70)]})
    assert adapter.keys_held() == ["a", "b", "c"] and engine.report.deletions_blocked == 2

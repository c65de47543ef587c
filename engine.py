"""The engine of one target: plans desired indicators against the state, sends them in batches
through the target's adapter, writes state around every call so a kill can be recovered, and
removes what MISP no longer wants, once (and only once) the whole read has succeeded.

It knows no service: no field names, no HTTP. The adapter (targets.Adapter) says what a key is,
speaks the service, and answers each item with a typed outcome; this module turns outcomes into
state. A target whose creates are not idempotent (targets.Purging) gets its unconfirmed sends and
its replacements purged by key, so no kill or retry leaves a duplicate behind.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Set
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import constants as C
from constants import Outcome, SkipReason
from misp_source import EventStamp
from misp_transformer import iso_utc
from ms_client import ItemResult, MicrosoftError
from reconcile import (
    Action,
    DecayExpiry,
    changed_events,
    clock_problem,
    content_hash,
    full_read_reason,
    immutable_hash,
    mass_delete_blocked,
    parse_expiry,
    plan,
    renewal_threshold,
)
from report import RunReport, shown_value
from request_log import JsonLines, RequestLog
from settings import ConfigError, Settings
from state_store import DELETING, SENT, StateRow, StateStore
from targets import Adapter, Budgeted, Purging

# Outcomes after which the service holds nothing of a removed item.
REMOVED = frozenset({Outcome.ACCEPTED, Outcome.GONE, Outcome.ALREADY_REVOKED})
Item = TypeVar("Item")


@dataclasses.dataclass(frozen=True)
class Limits:
    """The slice of the settings the engine needs."""

    renew_days: float
    days_to_expire: int
    full_resync_days: int
    max_delete_fraction: float
    concurrency: int
    decay: bool = False  # misp_decay_model is set: expiries may be predicted crossings

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.renew_days, settings.days_to_expire, settings.full_resync_days,
                   settings.max_delete_fraction, settings.max_concurrent_requests, bool(settings.misp_decay_model))


@dataclasses.dataclass
class Queued:
    """A desired indicator waiting for its batch: our key, what to send, the service's id."""

    key: str
    indicator: dict[str, Any]
    event_uuid: str
    remote_id: str | None = None
    was_pending: bool = False  # an earlier run sent it without an answer: it may be in the service


@dataclasses.dataclass(frozen=True)
class _Job:
    """What to do on this thread once a worker's call returns."""

    operation: str
    keys: list[str]
    finish: Callable[[Any], None]


class Engine:
    """One target's run. `online=False` (a dry run, `--explain`) plans and writes the batches
    to logs/ instead of sending them, and leaves the state as it is."""

    def __init__(self, adapter: Adapter, store: StateStore, log: RequestLog, report: RunReport, now: dt.datetime,
                 limits: Limits, online: bool) -> None:
        self.adapter = adapter
        self.store = store
        self.log = log
        self.report = report
        self.now = now
        self.limits = limits
        self.online = online
        self.renew_before = renewal_threshold(now, limits.renew_days)
        self.queues: dict[Action, list[Queued]] = {action: [] for action in Action if action is not Action.UNCHANGED}
        self.run_number = 0
        self.owned_at_start = 0
        self.listing_read = False  # the service's whole listing was read back in this run
        self._seen: list[tuple[str, str]] = []  # this page's desired (key, event), marked in the store per page
        self._page_keys: dict[str, str] = {}  # key -> event that offered it on this page
        self._queued_keys: dict[str, str] = {}  # offered on an earlier page, still waiting for a batch
        self._revived: set[str] = set()  # keys moved to a fresh id in this run (their id was retired)
        self._pool = ThreadPoolExecutor(limits.concurrency, thread_name_prefix="upload") if online else None
        self._in_flight: list[tuple[Future[Any], _Job]] = []
        self._fetched_events: Set[str] | None = None  # known once removal starts: says why a row goes
        self.unsettled: set[str] = set()  # events with an indicator this run did not settle: read again next run
        self._deleted_file: JsonLines | None = None
        self._budget = adapter if isinstance(adapter, Budgeted) else None
        self._candidates: list[tuple[Any, ...]] = []  # this page's, for a budgeted target; stored per page
        self._candidate_keys: dict[str, str] = {}  # key -> event, this page's candidates
        self._over_budget: set[str] = set()  # incumbents removed to make room for better ones
        self._decayed_keys: set[str] = set()  # keys the state holds of attributes the decaying model skipped in this run
        self._decayed_attributes: set[str] = set()  # their attribute uuids, where keys are values
        self._held_attributes: set[str] | None = None  # where keys are values: the attributes of rows held at first need

    @property
    def dry_run(self) -> bool:
        return not self.online

    @property
    def _purger(self) -> Purging | None:
        return self.adapter if isinstance(self.adapter, Purging) else None

    def start(self) -> None:
        """Take a run number and check the clock against the previous run's start."""
        if self.dry_run:
            self.store.open_dry_marks()
            self.run_number, previous = self.store.next_run(), self.store.meta("started")
        else:
            self.run_number, previous = self.store.begin_run(iso_utc(self.now))
        if self._budget is not None:
            self.store.open_candidates()
        self.report.clock_problem = clock_problem(previous, self.now, self.limits.days_to_expire)
        self.owned_at_start = self.store.owned_count()

    def adopt(self, note: str) -> None:
        """A store with no history (first run, lost or unreadable file): read what the service
        holds of ours before anything is sent, so nothing is sent twice."""
        try:
            rebuilt = self.adapter.read_back(self.now)
        except ConfigError as exc:
            raise ConfigError(f"no state, and it cannot be rebuilt from the service (nothing is sent blind): {exc}") from None
        self.listing_read = True
        if not rebuilt.rows and not rebuilt.revoked and not note:
            return
        purger = self._purger
        if rebuilt.surplus and purger is not None:  # before the rows are written: a kill in between leaves the store fresh
            failed = [r for r in purger.delete_copies(rebuilt.surplus) if r.outcome not in REMOVED]
            if failed:
                self.log.error("remove duplicate copies", f"{len(failed)} duplicate copies not deleted", results=_records(failed))
        self.store.replace_all(rebuilt.rows, rebuilt.revoked)
        self.report.rebuilt = (f"{len(rebuilt.rows)} indicators, {len(rebuilt.revoked)} revoked ids, "
                               f"{len(rebuilt.surplus)} duplicate copies removed" + (f" ({note})" if note else ""))

    # --- planning -----------------------------------------------------------------------
    def queued(self, key: str, indicator: dict[str, Any], event_uuid: str, row: StateRow | None) -> Queued:
        """What to send for a key: the adapter keeps the service's id (or moves a retired one on)."""
        sent, remote_id = self.adapter.prepare(key, indicator, row, self.store.revoked_id(key) if row is None else None)
        return Queued(key, sent, event_uuid, remote_id, row is not None and row.status != SENT)

    def offer(self, indicator: dict[str, Any], event_uuid: str) -> None:
        key = self.adapter.key_of(indicator)
        if self._already_offered(key):
            self.report.indicators -= 1
            self.report.skipped[SkipReason.DUPLICATE.value] += 1
            self._shared(key, event_uuid)
            return
        row = self.store.known(key)
        if row is not None and row.event_uuid != event_uuid:  # moved, or shared with an event not read now
            self.unsettled.update({event_uuid, row.event_uuid} - {""})
        if self._budget is not None and row is None:  # a newcomer waits for `fill`, once all of MISP is read
            self._candidate(key, event_uuid, indicator, self._budget, None)
            return
        action = plan(row, indicator, self.renew_before, self.adapter.hash_rules, self.decay_expiry(indicator))
        if self._budget is not None:
            self._candidate(key, event_uuid, indicator, self._budget, action)
        self.report.actions[action.value] += 1
        self._seen.append((key, event_uuid))
        self._page_keys[key] = event_uuid
        if action is Action.UNCHANGED:
            return
        queue = self.queues[action]
        queue.append(self.queued(key, indicator, event_uuid, row))
        self._queued_keys[key] = event_uuid
        if len(queue) >= self.adapter.max_batch:
            self._flush(action)

    def decay_expiry(self, indicator: dict[str, Any]) -> DecayExpiry | None:
        """With a decaying model, the indicator's expiry as the plan weighs it."""
        if not self.limits.decay:
            return None
        return DecayExpiry(parse_expiry(self.adapter.expiry_of(indicator)), self.now + dt.timedelta(days=self.limits.days_to_expire))

    def note_decayed(self, attribute_uuids: list[str]) -> None:
        """Attributes the model calls decayed: what was sent for them is removed with that reason.
        Only those the state holds are remembered: most of a long-lived MISP has decayed, and
        memory must not grow with it."""
        for uuid in attribute_uuids:
            uuid = uuid.strip().lower()
            keys = self.adapter.keys_of_attribute(uuid)
            if keys is not None:
                self._decayed_keys.update(row.external_id for row in self.store.rows(keys))
            elif uuid in self._attributes_held():
                self._decayed_attributes.add(uuid)

    def _attributes_held(self) -> set[str]:
        """The attributes of the rows held, where keys are values (a budgeted target: few)."""
        if self._held_attributes is None:
            self._held_attributes = {self.adapter.attribute_of(json.loads(row.body))
                                     for row in self.store.unseen(self.run_number) if row.body}
        return self._held_attributes

    def _decayed(self, row: StateRow) -> bool:
        if row.external_id in self._decayed_keys:
            return True
        if not row.body or not self._decayed_attributes:
            return False
        return self.adapter.attribute_of(json.loads(row.body)) in self._decayed_attributes

    def _candidate(self, key: str, event_uuid: str, indicator: dict[str, Any], budget: Budgeted, planned: Action | None) -> None:
        """Rank an indicator of a budgeted target; a newcomer (no plan yet) keeps its body."""
        rank = budget.rank_of(indicator)
        if len(rank) != C.BUDGET_RANK_PARTS:
            raise ValueError(f"a budget rank has {C.BUDGET_RANK_PARTS} parts, not {len(rank)}")
        body = json.dumps(indicator) if planned is None else ""
        self._candidates.append((key, event_uuid, *rank, planned is not None, planned.value if planned else "", body))
        self._candidate_keys[key] = event_uuid

    def _candidate_event(self, key: str) -> str | None:
        """The event that offered `key` to the budget in this run (None: not a candidate): a
        newcomer has no row to name it until `fill`."""
        if self._budget is None:
            return None
        return self._candidate_keys[key] if key in self._candidate_keys else self.store.candidate_event(key)

    def _already_offered(self, key: str) -> bool:
        """The same attribute twice in one run (in two events): the store remembers what this
        run has seen, so memory does not grow with the size of the MISP."""
        if key in self._page_keys or key in self._queued_keys:
            return True
        if self._candidate_event(key) is not None:
            return True
        return self.store.seen_dry(key) if self.dry_run else self.store.seen_in_run(key, self.run_number)

    def _shared(self, key: str, event_uuid: str) -> None:
        """A key two events yield: its row names one of them, so an incremental run reading
        only that one (after it dropped the key) would remove what the other still wants.
        Both stay unsettled, read on every run while they share it (a row naming another
        event than the one yielding it now does the same in `offer`, for runs that read only
        one of the two)."""
        row = self.store.known(key)
        first = (self._page_keys.get(key) or self._queued_keys.get(key) or self._candidate_event(key)
                 or (row.event_uuid if row else ""))
        self.unsettled.update({event_uuid, first} - {""})

    def keep(self, attribute_uuids: list[str], event_uuid: str) -> None:
        """Attributes of `event_uuid` this run could not transform (a bug, not MISP's wish):
        whatever was sent for them stays, as if seen, and the event is read again next run."""
        if not attribute_uuids:
            return
        self.unsettled.add(event_uuid)
        keys = [self.adapter.keys_of_attribute(uuid.strip().lower()) for uuid in attribute_uuids if uuid]
        if any(found is None for found in keys):  # keys are values: keep all the event holds
            self.keep_unchanged({event_uuid})
        self._seen.extend((key, event_uuid) for found in keys for key in found or ())

    def commit_seen(self) -> None:
        """Mark this page's desired indicators as seen (what is unseen at the end is removed);
        a dry run keeps them in a temporary table and leaves the state file untouched."""
        if self.dry_run:
            self.store.mark_seen_dry(key for key, _ in self._seen)
        else:
            self.store.mark_seen(self._seen, self.run_number)
        if self._candidates:
            self.store.add_candidates(self._candidates)
        self._seen, self._candidates, self._candidate_keys = [], [], {}
        self._page_keys = {}

    def flush_all(self) -> None:
        """Send every queued batch and wait for all answers (an answer may queue more)."""
        self.commit_seen()
        while True:
            for action in list(self.queues):
                self._flush(action)
            self.drain()
            if not any(self.queues.values()):
                return

    def _flush(self, action: Action) -> None:
        batch, self.queues[action] = self.queues[action], []
        if not batch:
            return
        for item in batch:
            self._queued_keys.pop(item.key, None)
        if self.dry_run:
            self.log.write(f"dry-run-{action.value}", [item.indicator for item in batch])
        elif action is Action.NEW:
            self._create(batch)
        elif action is Action.REPLACE and self._purger is not None:
            self._recreate(batch, self._purger)
        else:
            self._change(action, batch)

    # --- requests in flight -------------------------------------------------------------
    def dispatch(self, operation: str, keys: list[str], call: Callable[[], Any], finish: Callable[[Any], None]) -> None:
        """Run `call` (the adapter's HTTP only) on a worker thread; `finish` (state, counts)
        runs later on this thread. At most `concurrency` calls are in flight."""
        if self._pool is None:
            raise RuntimeError("a dry run sends nothing")
        while len(self._in_flight) >= self.limits.concurrency:
            self._complete(wait_for_all=False)
        self._in_flight.append((self._pool.submit(call), _Job(operation, keys, finish)))

    def drain(self) -> None:
        while self._in_flight:
            self._complete(wait_for_all=True)

    def _complete(self, wait_for_all: bool) -> None:
        futures = [future for future, _ in self._in_flight]
        done, _ = wait(futures, return_when=ALL_COMPLETED if wait_for_all else FIRST_COMPLETED)
        finished = [(future, job) for future, job in self._in_flight if future in done]
        self._in_flight = [(future, job) for future, job in self._in_flight if future not in done]
        for future, job in finished:
            try:
                outcome = future.result()
            except MicrosoftError as exc:
                if exc.fatal:
                    raise
                self.report.failed += len(job.keys)
                self.unsettled.update(row.event_uuid for row in self.store.rows(job.keys))
                self.log.error(f"{self.adapter.kind} {job.operation}", str(exc), keys=job.keys, cause=exc.cause.value)
                continue
            job.finish(outcome)

    def close(self) -> None:
        """Stop the workers; answers still in flight after a fatal error are not waited for."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._deleted_file is not None:
            self._deleted_file.close()
        self.adapter.close()

    # --- sending --------------------------------------------------------------------------
    def _create(self, batch: list[Queued]) -> None:
        """Rows are `pending` until the service answers; a failed batch stays pending for the
        next run to settle. A service whose creates are not idempotent first loses any copy
        the state does not know of (a state restored from a backup), unless this run read its
        whole listing: a create never makes a second copy."""
        self.store.mark_pending([self.row(q) for q in batch], self.run_number)
        purger = None if self.listing_read else self._purger

        def call() -> list[ItemResult]:
            if purger is not None:
                purger.purge([q.key for q in batch])
            return self.adapter.create([q.indicator for q in batch])

        self.dispatch(Action.NEW.value, [q.key for q in batch], call, lambda results: self._created(batch, results))

    def _created(self, batch: list[Queued], results: list[ItemResult]) -> None:
        """Record the answer. A refused row an earlier run left pending stays owned (that send
        may have arrived)."""
        paired = _paired(batch, results)
        if self._purger is not None:
            self.store.mark_suspects([q.key for q, r in paired if r.ambiguous], iso_utc(dt.datetime.now(dt.UTC)))
        refused = self._revive(paired)
        self.store.record_sent([(q.key, r.remote_id or q.remote_id or "") for q, r in paired if r.accepted],
                               [q.key for q, _ in refused if not q.was_pending])
        self.count(batch, Action.NEW.value, sum(r.accepted for _, r in paired), refused)

    def _recreate(self, batch: list[Queued], purger: Purging) -> None:
        """An indicator the service cannot change in place: every copy under the key goes, then
        the new one is created (both on the worker; the rows stay `deleting` until this thread
        records the outcome, so a kill in between is finished by the next run's recovery)."""
        self.store.mark_deleting(q.key for q in batch)

        def call() -> tuple[list[ItemResult], list[Queued], list[ItemResult]]:
            purged = purger.purge([q.key for q in batch])
            fresh = [q for q, r in _paired(batch, purged) if r.outcome in REMOVED]
            return purged, fresh, self.adapter.create([q.indicator for q in fresh]) if fresh else []

        def finish(outcome: tuple[list[ItemResult], list[Queued], list[ItemResult]]) -> None:
            purged, fresh, created = outcome
            stuck = [(q, r.reason) for q, r in _paired(batch, purged) if r.outcome not in REMOVED]
            self.store.remove(q.key for q in fresh)
            self.store.mark_pending([self.row(q) for q in fresh], self.run_number)
            self._created(fresh, created)
            if stuck:  # still `deleting`: the next run's recovery removes every copy and sends it again
                self.unsettled.update(q.event_uuid for q, _ in stuck)
                self.log.error(Action.REPLACE.value, f"{len(stuck)} old copies not removed; the next run retries",
                               rejected=[{"key": q.key, "reason": reason} for q, reason in stuck])

        self.dispatch(Action.REPLACE.value, [q.key for q in batch], call, finish)

    def _change(self, action: Action, batch: list[Queued]) -> None:
        self.dispatch(action.value, [q.key for q in batch],
                      lambda: self.adapter.change(action, [(q.remote_id or "", q.indicator) for q in batch]),
                      lambda results: self._changed(action, batch, results))

    def _changed(self, action: Action, batch: list[Queued], results: list[ItemResult]) -> None:
        """An indicator the service no longer holds (deleted or purged there) is created again.
        The id the answer names is kept: an upsert recreates what was deleted under a new one."""
        paired = _paired(batch, results)
        self.store.record_updated([self.row(q, r.remote_id) for q, r in paired if r.accepted])
        gone = [q for q, r in paired if r.outcome is Outcome.GONE]
        refused = self._revive([(q, r) for q, r in paired if r.outcome is not Outcome.GONE])
        self.count(batch, action.value, sum(r.accepted for _, r in paired), refused)
        if gone:
            self.store.remove(q.key for q in gone)
            self.queues[Action.NEW] += [self.queued(q.key, q.indicator, q.event_uuid, None) for q in gone]

    def _revive(self, paired: list[tuple[Queued, ItemResult]]) -> list[tuple[Queued, str]]:
        """An id retired outside this state (the portal, another host's -d) moves its key to a
        fresh id, once per run; returns the items refused (with the service's reason)."""
        retired = [q for q, r in paired if r.outcome is Outcome.ALREADY_REVOKED and q.key not in self._revived]
        self.store.record_revoked((q.key, q.remote_id or "") for q in retired)
        for q in retired:
            self._revived.add(q.key)
            self.queues[Action.NEW].append(self.queued(q.key, q.indicator, q.event_uuid, None))
        return [(q, r.reason) for q, r in paired if not r.accepted and q not in retired]

    # --- shared bookkeeping -------------------------------------------------------------
    def row(self, queued: Queued, remote_id: str | None = None) -> StateRow:
        """The state row for a queued indicator once sent."""
        indicator = queued.indicator
        body = json.dumps(indicator, sort_keys=True) if self.adapter.keeps_body else ""
        return StateRow(external_id=queued.key, remote_id=remote_id or queued.remote_id or "",
                        content_hash=content_hash(indicator, self.adapter.hash_rules),
                        immutable_hash=immutable_hash(indicator, self.adapter.hash_rules),
                        expires_at=self.adapter.expiry_of(indicator), event_uuid=queued.event_uuid,
                        sent_at=iso_utc(self.now), body=body)

    def count(self, batch: list[Queued], operation: str, accepted: int, rejected: list[tuple[Queued, str]]) -> None:
        self.report.accepted += accepted
        self.report.rejected += len(rejected)
        self.report.progress.update(accepted + len(rejected))
        for queued, reason in rejected:
            self.unsettled.add(queued.event_uuid)
            self.report.name(self.report.named_rejected, shown_value(self.log, self.adapter.value_of(queued.indicator)),
                             shown_value(self.log, reason))
        if rejected:
            self.log.error(f"{self.adapter.kind} {operation}", f"{len(rejected)} of {len(batch)} indicators rejected", rejected=[
                {"key": queued.key, "reason": reason, "indicator": queued.indicator} for queued, reason in rejected
            ])

    # --- recovery -------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish what a killed run left. Where creates are idempotent, unconfirmed sends stay
        owned as `pending` (planned again, or removed if MISP dropped them) and interrupted
        removals are done again. Elsewhere every copy the service may hold of an unconfirmed
        create, replacement or removal is purged, and those indicators are planned afresh."""
        unfinished = self.store.unfinished()
        purger = self._purger
        if purger is None:
            removing = [row for row in unfinished if row.status == DELETING]
            if removing:
                self.remove_all(removing)
            self.report.recovered = len(unfinished)
            return
        keys = [row.external_id for row in unfinished]
        if keys:  # the service may still be working on a killed run's request: check again next run
            self.store.mark_suspects(keys, iso_utc(self.now))
            purged = purger.purge(keys)
            self.store.remove(key for key, r in zip(keys, purged, strict=True) if r.outcome in REMOVED)
        self.report.recovered = len(unfinished) + self._remove_late_copies(purger)

    def _remove_late_copies(self, purger: Purging) -> int:
        """Only while some create had an ambiguous answer: one listing finds the copies the
        service made too late for the retry's purge, and every copy not the one the store
        recorded is deleted. Suspects are cleared once a listing this long after their answer
        was clean."""
        suspects = self.store.suspects()
        if not suspects:
            return 0
        copies = purger.copies()
        candidates = suspects | {key for key, ids in copies.items() if len(ids) > 1}
        recorded = {row.external_id: row.remote_id for row in self.store.rows(candidates)}
        surplus = surplus_copies(copies, recorded, suspects)
        results = purger.delete_copies(surplus) if surplus else []
        if all(r.outcome in REMOVED for r in results):
            self.store.clear_suspects(iso_utc(self.now - dt.timedelta(minutes=purger.late_copy_minutes)))
        return sum(r.accepted for r in results)

    # --- incremental reads ----------------------------------------------------------------
    def read_plan(self, listed: Mapping[str, EventStamp], asked: str, fingerprint: str) -> tuple[str, set[str]]:
        """Why this target needs every listed event read in full ("" if not), and the listed
        events it needs read in full (all of them, or only the changed and the due ones)."""
        reason = full_read_reason(asked, self.store.meta("full_read"), self.store.meta("fingerprint"), fingerprint,
                                  self.now, self.limits.full_resync_days, self.report.clock_problem)
        if not reason and self._budget is not None and self.store.meta("budget_full"):
            reason = "the budget was full in the last run: every event competes for it"
        if not reason and self.limits.decay:
            reason = "misp_decay_model is set: scores and sightings change without moving any timestamp"
        if reason:
            return reason, set(listed)
        return "", changed_events(listed, self.store.event_stamps(), self.store.events_due(iso_utc(self.renew_before)))

    def keep_unchanged(self, event_uuids: Set[str]) -> None:
        """Indicators of listed events left unread because they did not change: still wanted."""
        if self.dry_run:
            self.store.mark_events_seen_dry(event_uuids)
        else:
            self.store.mark_events_seen(event_uuids, self.run_number)

    def settle(self, read: Mapping[str, EventStamp], listed: Set[str], reading: str, fingerprint: str) -> None:
        """After removal, record the clocks of the events whose indicators are all settled
        (sent, unchanged or removed): the next incremental run skips them while they keep those
        clocks. `reading`: "full" (the record becomes what was read), "incremental" or "event"."""
        if self.dry_run:
            return
        unsettled = self.unsettled | (self.store.unsettled_events(self.run_number) & read.keys())
        stamps = {uuid: (stamp.timestamp, stamp.publish_timestamp) for uuid, stamp in read.items() if uuid not in unsettled}
        keep_only: Iterable[str] | None = {"full": (), "incremental": listed, "event": None}[reading]
        meta = {"full_read": iso_utc(self.now), "fingerprint": fingerprint} if reading == "full" else {}
        self.store.settle_events(stamps, unsettled, keep_only, meta)

    # --- removal ------------------------------------------------------------------------
    def remove_gone(self, fetched_events: Set[str], listed_events: Set[str], alive_events: Callable[[], set[str] | None],
                    allow_mass_delete: bool, scope: set[str] | None = None) -> None:
        """Remove what MISP no longer wants; keep what merely left the filter window (it expires).

        Membership comes from the listing taken at the start: an event it lists that this run
        could not read (unpublished or edited meanwhile) keeps its indicators. With a `scope`
        (one event re-run), only that event's indicators are considered. After a clock jump
        nothing is forgotten or removed: expiry and age would be judged wrongly."""
        if self.report.clock_problem:
            self.log.error("clock", f"{self.report.clock_problem}: nothing forgotten or removed in this run")
            return
        self._fetched_events = fetched_events
        if scope is None:
            self.report.forgotten_expired = self.store.forget_expired(self.run_number, iso_utc(self.now), dry_run=self.dry_run)
        gone: list[StateRow] = []
        alive: set[str] | None = None
        for row in self.store.unseen(self.run_number):
            if (self.dry_run and self.store.seen_dry(row.external_id)) or (scope is not None and row.event_uuid not in scope):
                continue
            if row.event_uuid in fetched_events:
                gone.append(row)
                continue
            if row.event_uuid in listed_events:
                self.report.kept_not_read += 1
                continue
            if alive is None:
                alive = alive_events() or set()
            if row.event_uuid in alive:
                self.report.kept_outside_window += 1
            else:
                gone.append(row)
        if mass_delete_blocked(len(gone), self.owned_at_start, self.limits.max_delete_fraction) and not allow_mass_delete:
            self.report.deletions_blocked = len(gone)
            self.log.error("safety-valve", (
                f"would remove {len(gone)} of {self.owned_at_start} owned indicators, more than "
                f"max_delete_fraction {self.limits.max_delete_fraction:.0%}; removed nothing (use --allow-mass-delete)"
            ), keys=[row.external_id for row in gone])
            return
        if gone and self.dry_run:
            self.record_deleted(gone)
            self.log.write("dry-run-delete", [row.external_id for row in gone])
        elif gone:
            self.remove_all(gone)

    def remove_all(self, rows: list[StateRow]) -> None:
        """Remove in batches the service takes, and wait for the answers."""
        for start in range(0, len(rows), self.adapter.max_batch):
            self._remove(rows[start:start + self.adapter.max_batch])
        self.drain()

    def _remove(self, rows: list[StateRow]) -> None:
        """Rows stay `deleting` until the service confirms; a refused removal is done again by
        the next run's recovery."""
        self.store.mark_deleting(row.external_id for row in rows)

        def finish(results: list[ItemResult]) -> None:
            paired = _paired(rows, results)
            done = [row for row, r in paired if r.outcome in REMOVED]
            self._forget(done)
            self.record_deleted(done)
            failed = [r for _, r in paired if r.outcome not in REMOVED]
            if failed:
                self.log.error(f"{self.adapter.kind} remove", f"{len(failed)} removals rejected", rejected=_records(failed))

        self.dispatch("remove", [row.external_id for row in rows], lambda: self.adapter.remove(rows), finish)

    def _forget(self, rows: list[StateRow]) -> None:
        """Rows the service no longer holds; a retired id is remembered for good."""
        if self.adapter.retires_ids:
            self.store.record_revoked((row.external_id, row.remote_id) for row in rows)
        else:
            self.store.remove(row.external_id for row in rows)

    def record_deleted(self, rows: list[StateRow]) -> None:
        """Count removed indicators, list each in logs/ (a dry run has its dry-run-delete file)
        and name the first ones in the summary."""
        self.report.deleted += len(rows)
        records = [self._deleted_record(row) for row in rows]
        for record in records:
            self.report.name(self.report.named_deleted, record["value"] or f"attribute {record['key']}", record["reason"])
        if records and not self.dry_run:
            self._deleted_file = self._deleted_file or JsonLines(self.log, f"deleted-{self.adapter.kind}")
            self._deleted_file.write(records)

    def _deleted_record(self, row: StateRow) -> dict[str, str]:
        return {"key": row.external_id, "id": row.remote_id, "event_uuid": row.event_uuid,
                "value": shown_value(self.log, self.adapter.row_value(row)), "reason": self._why_gone(row)}

    def _why_gone(self, row: StateRow) -> str:
        if row.external_id in self._over_budget:
            return "over budget: more valuable indicators took its place"
        if self._fetched_events is None:
            return "finishing a removal an interrupted run started"
        if self._decayed(row):
            self.report.decay["removed_decayed"] += 1
            return f"decayed: its score in misp_decay_model fell below decay_threshold (MISP event {row.event_uuid})"
        if row.event_uuid in self._fetched_events:
            return f"its MISP event {row.event_uuid} no longer yields it (attribute deleted, changed or not to_ids)"
        return f"its MISP event {row.event_uuid} is no longer selected (deleted, unpublished or filtered out)"

    # --- a budget ---------------------------------------------------------------------------
    def fill(self, allow_mass_delete: bool) -> None:
        """A budgeted target, once the whole read is known (and after removal, which frees
        room): keep the most valuable within the budget, send the newcomers that made it while
        the service has room, and count the rest as over-budget. An incumbent the read did not
        rank (its event was not read) keeps its place."""
        budget = self._budget
        if budget is None:
            return
        self.commit_seen()
        held, incumbents = self._held(), self.store.incumbent_candidates()
        newcomers = self.store.candidate_count() - incumbents
        survey = budget.survey() if self.online and newcomers else None  # one listing, only when something may be added
        foreign = survey.foreign if survey else frozenset()
        slots = max(budget.budget - (held - incumbents), 0)
        chosen: list[tuple[str, str, str]] = []
        refused: list[tuple[str, str, str]] = []  # held by another source: never sent, and no slot taken
        displaced: list[tuple[str, str]] = []
        over: list[tuple[str, str, str]] = []
        place = 0
        for key, event_uuid, incumbent, planned, body in self.store.ranked_candidates():
            if not incumbent and key in foreign:
                refused.append((key, event_uuid, body))
                continue
            if incumbent and place >= slots:
                displaced.append((key, planned))
            elif not incumbent:
                (chosen if place < slots else over).append((key, event_uuid, body))
            place += 1
        self._displace(displaced, allow_mass_delete)
        held_now = self._held()
        room = budget.budget - held_now
        if survey is not None:
            room = min(room, survey.room + held - held_now)  # what the removals just freed, too
        over = chosen[max(room, 0):] + over
        for key, event_uuid, body in refused + chosen[:max(room, 0)]:  # the adapter refuses the former, with the reason
            self.report.actions[Action.NEW.value] += 1
            self.queues[Action.NEW].append(self.queued(key, json.loads(body), event_uuid, None))
            if len(self.queues[Action.NEW]) >= self.adapter.max_batch:
                self._flush(Action.NEW)
        self.flush_all()
        self._count_over_budget(over, len(self._over_budget))
        if not self.dry_run:
            self.store.set_meta("budget_full", "1" if over or self._over_budget else "")

    def _held(self) -> int:
        """How many of ours the service holds: every row (one whose removal failed still takes
        its place there), less those a dry run only planned to remove."""
        return self.store.held_count() - (self.report.deleted if self.dry_run else 0)

    def _displace(self, displaced: list[tuple[str, str]], allow_mass_delete: bool) -> None:
        """Remove the incumbents better ones outrank (under the safety valve, which says so in
        the exit code as for any blocked removal)."""
        if not displaced or self.report.clock_problem:
            return
        removing = len(displaced) + self.report.deleted  # with this run's removals: the valve weighs the whole run
        if mass_delete_blocked(removing, self.owned_at_start, self.limits.max_delete_fraction) and not allow_mass_delete:
            self.report.deletions_blocked += len(displaced)
            self.log.error("safety-valve", f"the budget would remove {len(displaced)} of {self.owned_at_start} owned "
                           f"indicators for better ones, more than max_delete_fraction {self.limits.max_delete_fraction:.0%}; "
                           "removed nothing (use --allow-mass-delete)", keys=[key for key, _ in displaced])
            return
        rows = self.store.rows(key for key, _ in displaced)
        self._over_budget = {row.external_id for row in rows}
        self.unsettled.update(row.event_uuid for row in rows)  # read again until they are back in, as over-budget newcomers
        for _, planned in displaced:
            self.report.actions[planned] -= 1
        if self.dry_run:
            self.record_deleted(rows)
            self.log.write("dry-run-delete", [row.external_id for row in rows])
        else:
            self.remove_all(rows)

    def _count_over_budget(self, over: list[tuple[str, str, str]], displaced: int) -> None:
        """Over-budget candidates are skipped attributes: counted, their events read again next
        run, and each one listed in logs/ with its value."""
        if not over and not displaced:
            return
        self.report.indicators -= len(over) + displaced
        self.report.skipped[SkipReason.OVER_BUDGET.value] += len(over) + displaced
        self.unsettled.update(event_uuid for _, event_uuid, _ in over)
        if over:
            records = [{"key": key, "event_uuid": event_uuid,
                        "value": shown_value(self.log, self.adapter.value_of(json.loads(body)))} for key, event_uuid, body in over]
            file = JsonLines(self.log, f"over-budget-{self.adapter.kind}")
            file.write(records)
            file.close()

    # --- -d -------------------------------------------------------------------------------
    def delete_ids(self, remote_ids: list[str]) -> list[ItemResult]:
        """-d: remove by service id, and forget the rows, so the next sync sends the indicator
        again (under a fresh id where ids are retired) if MISP still wants it. Where a removal
        repeats the last object sent, an id the state does not know is read from the service."""
        keys = self.store.keys_of_remote(remote_ids)
        rows = {row.remote_id: row for row in self.store.rows(keys.values())}
        unknown = [remote for remote in remote_ids if remote not in rows]
        if unknown and self.adapter.keeps_body:
            rows.update({row.remote_id: row for row in self.adapter.read_back(self.now).rows if row.remote_id in unknown})
        elif unknown:
            rows.update({remote: StateRow("", remote, "", "", "", "", "", "") for remote in unknown})
        found = [rows[remote] for remote in remote_ids if remote in rows]
        self.store.mark_deleting(keys[row.remote_id] for row in found if row.remote_id in keys)  # a kill: the next run finishes it
        results: list[ItemResult] = []
        for start in range(0, len(found), self.adapter.max_batch):
            results += self.adapter.remove(found[start:start + self.adapter.max_batch])
        paired = [(dataclasses.replace(row, external_id=keys.get(row.remote_id) or row.external_id), r)
                  for row, r in _paired(found, results)]
        self._forget([row for row, r in paired if r.outcome in REMOVED and row.external_id])
        self.store.record_sent([(keys[row.remote_id], row.remote_id) for row, r in paired
                                if r.outcome not in REMOVED and row.remote_id in keys], [])
        missing = [ItemResult(remote, None, Outcome.REJECTED, "not in the state, nor live in the service")
                   for remote in remote_ids if remote not in rows]
        return results + missing


def _paired(items: list[Item], results: list[ItemResult]) -> list[tuple[Item, ItemResult]]:
    """Each item with its outcome: adapters answer one result per item, in the order sent."""
    return list(zip(items, results, strict=True))


def _records(results: list[ItemResult]) -> list[dict[str, Any]]:
    return [{"id": r.key, "outcome": r.outcome.value, "reason": r.reason} for r in results]


def surplus_copies(copies: dict[str, list[str]], recorded: dict[str, str], suspects: set[str]) -> list[str]:
    """Service ids (`copies`: key -> ids listed) that are not the copy the store recorded:
    every other copy of a suspect (all of them when none is recorded: we own none), and the
    extra copies of any key listed twice whose recorded copy is among them."""
    surplus: list[str] = []
    for key, ids in copies.items():
        keep = recorded.get(key)
        if key in suspects or (len(ids) > 1 and keep in ids):
            surplus += [remote for remote in ids if remote != keep]
    return surplus

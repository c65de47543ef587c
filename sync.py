"""One reconciling run per target: MISP pages -> transform -> plan -> batches -> report.

The state store says what we own; `reconcile.plan` says what each desired indicator needs; this
module batches the work, writes state around every Graph call so a crash can be recovered, and
removes what MISP no longer wants once (and only once) the whole fetch has succeeded.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import re
import sqlite3
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Set
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

import constants as C
from constants import ExitCode, SkipReason
from graph_client import GraphClient
from misp_source import EventStamp, MispError, MispSource, stamp_of
from misp_transformer import EventResult, GraphTransformer, MappingPolicy, Skip, StixTransformer, Transformer, iso_utc, stix_id, stix_time
from ms_client import ItemResult, MicrosoftError
from rebuild import Rebuilt, graph_rows, sentinel_rows
from reconcile import (
    Action,
    changed_events,
    clock_problem,
    content_hash,
    fixed_hash,
    full_read_reason,
    mass_delete_blocked,
    next_modified,
    plan,
    renew_body,
    renewal_threshold,
    update_body,
)
from request_log import JsonLines, LogWriteError, RequestLog, strip_url_credentials
from sentinel_client import SentinelClient
from settings import ConfigError, Settings, TargetSettings
from state_store import DELETING, SENT, Known, StateStore, StoreError, StoreLocked, StoreUnavailable, StoreUnsafe, sqlite_fix, target_lock

# Skips that only confirm MISP's own filtering: not candidates, and capped in the skipped file.
ROUTINE_SKIPS = frozenset({SkipReason.NOT_TO_IDS, SkipReason.CONTEXT, SkipReason.DELETED})


@dataclasses.dataclass
class RunReport:
    """Counts of one run; printed as the summary and written as JSON for monitoring."""

    target: str
    events: int = 0
    attributes: int = 0
    indicators: int = 0
    actions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    deleted: int = 0
    kept_outside_window: int = 0
    kept_not_read: int = 0
    forgotten_expired: int = 0
    recovered: int = 0
    refanged: int = 0
    rebuilt: str = ""
    clock_problem: str = ""
    full_read: str = ""  # why every listed event was read in full; "" for an incremental run
    events_listed: int = 0
    events_read_in_full: int = 0
    deletions_blocked: int = 0
    requests: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    named_deleted: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (value, reason), the first few
    named_rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)
    progress: tqdm = dataclasses.field(default_factory=lambda: tqdm(disable=True), repr=False)

    def add_event(self, result: EventResult) -> None:
        self.events += 1
        self.attributes += result.attributes
        self.indicators += len(result.indicators)
        self.refanged += result.refanged
        self.skipped.update(skip.reason.value for skip in result.skips)

    def name(self, named: list[tuple[str, str]], value: str, reason: str) -> None:
        """Keep the first SUMMARY_NAMED for the summary; the logs hold every one."""
        if len(named) < C.SUMMARY_NAMED:
            named.append((value, reason))

    @property
    def candidates(self) -> int:
        """Attributes that could have become indicators (routine skips excluded)."""
        return self.indicators + sum(n for reason, n in self.skipped.items() if SkipReason(reason) not in ROUTINE_SKIPS)

    def as_dict(self, dry_run: bool) -> dict[str, Any]:
        return {
            "target": self.target, "dry_run": dry_run, "events": self.events, "attributes": self.attributes,
            "candidates": self.candidates, "indicators": self.indicators,
            **{action.value: self.actions[action.value] for action in Action},
            "accepted": self.accepted, "rejected": self.rejected, "failed": self.failed, "deleted": self.deleted,
            "kept_outside_window": self.kept_outside_window, "kept_not_read": self.kept_not_read,
            "forgotten_expired": self.forgotten_expired,
            "run_kind": "full" if self.full_read else "incremental", "full_read_reason": self.full_read or None,
            "events_listed": self.events_listed, "events_read_in_full": self.events_read_in_full,
            "recovered": self.recovered, "refanged": self.refanged, "state_rebuilt": self.rebuilt or None, "clock_problem": self.clock_problem or None,
            "deletions_blocked": self.deletions_blocked, "requests": self.requests,
            "skipped": dict(sorted(self.skipped.items())), "seconds": round(time.monotonic() - self.started, 3),
        }

    def summary(self, dry_run: bool) -> str:
        data = self.as_dict(dry_run)
        skipped = ", ".join(f"{reason} {count}" for reason, count in data["skipped"].items()) or "none"
        planned = " (planned, nothing sent)" if dry_run else ""
        return (
            ("Dry run: nothing was sent and the state was not changed\n" if dry_run else "")
            + f"target: {data['target']}\n{self._run_kind()}\n"
            f"events read: {data['events']}\nattributes read: {data['attributes']}\n"
            f"candidates: {data['candidates']}\nindicators: {data['indicators']}\n"
            f"new: {data['new']}, updated: {data['update']}, replaced: {data['replace']}, renewed: {data['renew']}, "
            f"unchanged: {data['unchanged']}{planned}\n"
            f"accepted: {data['accepted']}\nrejected: {data['rejected']}\nfailed (not delivered): {data['failed']}\n"
            f"deleted: {data['deleted']}{planned}\nkept until they expire (event outside the filter window): "
            f"{data['kept_outside_window']}\n"
            + (f"kept, event listed but not readable in this run: {data['kept_not_read']}\n" if data["kept_not_read"] else "")
            + (f"DELETIONS BLOCKED by the safety valve: {data['deletions_blocked']}\n" if data["deletions_blocked"] else "")
            + (f"recovered from an interrupted run: {data['recovered']}\n" if data["recovered"] else "")
            + (f"refanged (defanged in MISP, sent as real values): {data['refanged']}\n" if data["refanged"] else "")
            + (f"STATE REBUILT from the service: {data['state_rebuilt']}\n" if data["state_rebuilt"] else "")
            + (f"NOTHING FORGOTTEN OR REMOVED: {data['clock_problem']}\n" if data["clock_problem"] else "")
            + _named("deleted", self.named_deleted, self.deleted) + _named("rejected", self.named_rejected, self.rejected)
            + f"requests to the service: {data['requests']}\nskipped: {skipped}\ntime: {data['seconds']:.2f} s\n"
        )


    def _run_kind(self) -> str:
        kind = f"full read ({self.full_read})" if self.full_read else "incremental read (only changed events)"
        return f"run: {kind}, {self.events_read_in_full} of {self.events_listed} listed events read in full"


def _named(what: str, named: list[tuple[str, str]], total: int) -> str:
    """Summary lines naming the first indicators of a kind, and where the others are."""
    lines = "".join(f"  {what}: {value}: {reason}\n" for value, reason in named)
    rest = f"  ... and {total - len(named)} more {what} (see logs/)\n" if total > len(named) else ""
    return lines + rest


def shown_value(log: RequestLog, value: str) -> str:
    """A MISP value fit for a log record or a summary line: secrets scrubbed first, then cut."""
    text = log.scrub(value)
    return text if len(text) <= C.VALUE_CUT else text[:C.VALUE_CUT] + "…"


def indicator_value(indicator: dict[str, Any]) -> str:
    """The observable an indicator carries: Graph's observable field, or the STIX name."""
    return str(next((indicator[name] for name in C.GRAPH_OBSERVABLE_FIELDS if name in indicator), indicator.get("name", "")))


def policy_from(settings: Settings) -> MappingPolicy:
    return MappingPolicy(
        target_product=settings.target_product, action=settings.action, passive_only=settings.passive_only,
        days_to_expire=settings.days_to_expire, network_ignore_direction=settings.network_ignore_direction,
        ignore_local_tags=settings.ignore_local_tags, default_confidence=settings.default_confidence,
        allow_weak_observables=settings.allow_weak_observables, allow_broad_cidr=settings.allow_broad_cidr, misp_url=strip_url_credentials(settings.misp_url),
    )


def state_paths(settings: Settings, target: TargetSettings) -> tuple[Path, Path]:
    """The lock and the store of one target: per tenant and app for Graph, per workspace for
    Sentinel, so two targets never share state. Ids are GUIDs, compared without case: a client
    id written in capitals finds the same store (a file an older version named in capitals is
    taken over)."""
    raw = f"graph_{settings.tenant}_{settings.client_id}" if target.kind == "graph" else f"sentinel_{target.workspace_id}"
    name = re.sub(r"[^a-z0-9_-]+", "-", raw.lower())
    return settings.state_dir / f"{name}.lock", settings.state_dir / f"{name}.sqlite"


def adopt_case_variant(store: Path) -> None:
    """Rename a store file whose name differs only in letter case to the canonical name."""
    if store.exists() or not store.parent.is_dir():
        return
    variant = next((path for path in store.parent.glob("*.sqlite") if path.name.lower() == store.name), None)
    if variant is not None:
        variant.rename(store)


def open_store(path: Path, dry_run: bool, now: dt.datetime) -> tuple[StateStore, str]:
    """The target's store, and a note when an unreadable file had to be moved aside (the run
    then rebuilds from the service). A dry run never moves anything."""
    adopt_case_variant(path)
    if dry_run:
        return StateStore(path if path.exists() else None), ""
    try:
        return StateStore(path), ""
    except (StoreUnavailable, StoreUnsafe):  # sound but unusable now, or refused: never moved aside
        raise
    except StoreError as exc:
        aside = path.with_name(f"{path.name}.unreadable-{now.strftime('%Y%m%dT%H%M%SZ')}")
        path.rename(aside)
        return StateStore(path), f"{exc}; moved to {aside.name}"


@dataclasses.dataclass(frozen=True)
class _Job:
    """What to do on this thread once a worker's call returns."""

    operation: str
    keys: list[str]
    finish: Callable[[Any], None]


@dataclasses.dataclass
class _Queued:
    """A desired indicator waiting for its batch: our key, what to send, the service's id."""

    key: str
    indicator: dict[str, Any]
    event_uuid: str
    remote_id: str | None = None
    was_pending: bool = False  # an earlier run sent it without an answer: it may be in the service


class Target:
    """Plans desired indicators against the state and applies them in batches, writing state
    around every call. Subclasses speak their service's operations."""

    kind = ""

    def __init__(self, settings: Settings, client: Any, store: StateStore, log: RequestLog,
                 report: RunReport, now: dt.datetime) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.log = log
        self.report = report
        self.now = now
        self.renew_before = renewal_threshold(now, settings.renew_days)
        self.queues: dict[Action, list[_Queued]] = {action: [] for action in Action if action is not Action.UNCHANGED}
        self.run = 0
        self.owned_at_start = 0
        self.listing_read = False  # the service's whole listing was read back in this run
        self._seen: list[tuple[str, str]] = []  # this page's desired (key, event), marked in the store per page
        self._page_keys: dict[str, str] = {}  # key -> event that offered it on this page
        self._queued_keys: dict[str, str] = {}  # offered on an earlier page, still waiting for a batch
        self._seen_in_dry_run: set[str] = set()
        self.concurrency = settings.max_concurrent_requests
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="upload") if client is not None else None
        self._in_flight: list[tuple[Future[Any], _Job]] = []
        self._fetched_events: Set[str] | None = None  # known once removal starts: says why a row goes
        self.unsettled: set[str] = set()  # events with an indicator this run did not settle: read again next run
        self._deleted_file: JsonLines | None = None

    @property
    def dry_run(self) -> bool:
        return self.client is None

    def start(self) -> None:
        """Take a run number and check the clock against the previous run's start."""
        if self.dry_run:
            self.run, previous = self.store.next_run(), self.store.meta("started")
        else:
            self.run, previous = self.store.begin_run(iso_utc(self.now))
        self.report.clock_problem = clock_problem(previous, self.now, self.settings.days_to_expire)
        self.owned_at_start = self.store.owned_count()

    def adopt(self, note: str) -> None:
        """A store with no history (first run, lost or unreadable file): read what the service
        holds of ours before anything is sent, so nothing is sent twice."""
        try:
            rebuilt = self.read_back()
        except ConfigError as exc:
            raise ConfigError(f"no state, and it cannot be rebuilt from the service (nothing is sent blind): {exc}") from None
        self.listing_read = True
        if not rebuilt.rows and not rebuilt.revoked and not note:
            return
        if rebuilt.surplus:  # before the rows are written: a kill in between leaves the store fresh
            self.remove_surplus(rebuilt.surplus)
        self.store.replace_all(rebuilt.rows, rebuilt.revoked)
        self.report.rebuilt = (f"{len(rebuilt.rows)} indicators, {len(rebuilt.revoked)} revoked ids, "
                               f"{len(rebuilt.surplus)} duplicate copies removed" + (f" ({note})" if note else ""))

    # --- what subclasses define ---------------------------------------------------------
    def read_back(self) -> Rebuilt:
        raise NotImplementedError

    def remove_surplus(self, remote_ids: list[str]) -> None:
        raise NotImplementedError

    def key_of(self, indicator: dict[str, Any]) -> str:
        raise NotImplementedError

    def expiry_of(self, indicator: dict[str, Any]) -> str:
        raise NotImplementedError

    def prepare(self, key: str, indicator: dict[str, Any], event_uuid: str, known: Known | None) -> _Queued:
        return _Queued(key, indicator, event_uuid, known.remote_id if known else None)

    def recover(self) -> None:
        raise NotImplementedError

    def send(self, action: Action, batch: list[_Queued]) -> None:
        raise NotImplementedError

    def remove(self, rows: list[Known]) -> None:
        raise NotImplementedError

    # --- planning -----------------------------------------------------------------------
    def offer(self, indicator: dict[str, Any], event_uuid: str) -> None:
        key = self.key_of(indicator)
        if self._already_offered(key):
            self.report.indicators -= 1
            self.report.skipped[SkipReason.DUPLICATE.value] += 1
            self._shared(key, event_uuid)
            return
        known = self.store.known(key)
        if known is not None and known.event_uuid != event_uuid:  # moved, or shared with an event not read now
            self.unsettled.update({event_uuid, known.event_uuid} - {""})
        action = plan(known, indicator, self.renew_before)
        self.report.actions[action.value] += 1
        self._seen.append((key, event_uuid))
        self._page_keys[key] = event_uuid
        if action is Action.UNCHANGED:
            return
        queue = self.queues[action]
        queue.append(self.prepare(key, indicator, event_uuid, known))
        self._queued_keys[key] = event_uuid
        if len(queue) >= C.GRAPH_MAX_BATCH:
            self._flush(action)

    def _already_offered(self, key: str) -> bool:
        """The same attribute twice in one run (in two events): the store remembers what this
        run has seen, so memory does not grow with the size of the MISP."""
        if key in self._page_keys or key in self._queued_keys or key in self._seen_in_dry_run:
            return True
        return self.store.seen_in_run(key, self.run)

    def _shared(self, key: str, event_uuid: str) -> None:
        """A key two events yield: its row names one of them, so an incremental run reading
        only that one (after it dropped the key) would remove what the other still wants.
        Both stay unsettled, read on every run while they share it (a row naming another
        event than the one yielding it now does the same in `offer`, for runs that read only
        one of the two)."""
        known = self.store.known(key)
        first = self._page_keys.get(key) or self._queued_keys.get(key) or (known.event_uuid if known else "")
        self.unsettled.update({event_uuid, first} - {""})

    def keep(self, attribute_uuids: list[str], event_uuid: str) -> None:
        """Attributes of `event_uuid` this run could not transform (a bug, not MISP's wish):
        whatever was sent for them stays, as if seen, and the event is read again next run."""
        if attribute_uuids:
            self.unsettled.add(event_uuid)
        self._seen.extend((key, event_uuid) for uuid in attribute_uuids if uuid
                          for key in self.keys_of_attribute(uuid.strip().lower()))

    def keys_of_attribute(self, attribute_uuid: str) -> list[str]:
        raise NotImplementedError

    def commit_seen(self) -> None:
        """Mark this page's desired indicators as seen (what is unseen at the end is removed);
        a dry run keeps the marks in memory and leaves the store untouched."""
        if self.dry_run:
            self._seen_in_dry_run.update(key for key, _ in self._seen)
        else:
            self.store.mark_seen(self._seen, self.run)
        self._seen = []
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

    # --- requests in flight -------------------------------------------------------------
    def dispatch(self, operation: str, keys: list[str], call: Callable[[], Any], finish: Callable[[Any], None]) -> None:
        """Run `call` (HTTP only) on a worker thread; `finish` (state, counts) runs later on this
        thread. At most `max_concurrent_requests` calls are in flight."""
        while len(self._in_flight) >= self.concurrency:
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
                self.log.error(job.operation, str(exc), keys=job.keys)
                continue
            job.finish(outcome)

    def close(self) -> None:
        """Stop the workers; answers still in flight after a fatal error are not waited for."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._deleted_file is not None:
            self._deleted_file.close()

    def _flush(self, action: Action) -> None:
        batch, self.queues[action] = self.queues[action], []
        if not batch:
            return
        for item in batch:
            self._queued_keys.pop(item.key, None)
        if self.dry_run:
            self.log.write(f"dry-run-{action.value}", [item.indicator for item in batch])
        else:
            self.send(action, batch)

    # --- shared bookkeeping -------------------------------------------------------------
    def row(self, queued: _Queued, remote_id: str | None = None) -> Known:
        """The state row for a queued indicator once sent."""
        indicator = queued.indicator
        body = json.dumps(indicator, sort_keys=True) if "pattern" in indicator else ""
        return Known(external_id=queued.key, remote_id=remote_id or queued.remote_id or "",
                     content_hash=content_hash(indicator), fixed_hash=fixed_hash(indicator),
                     expires_at=self.expiry_of(indicator), event_uuid=queued.event_uuid, sent_at=iso_utc(self.now), body=body)

    def count(self, batch: list[_Queued], operation: str, accepted: int, rejected: list[tuple[_Queued, str | None]]) -> None:
        self.report.accepted += accepted
        self.report.rejected += len(rejected)
        self.report.progress.update(accepted + len(rejected))
        for queued, reason in rejected:
            self.unsettled.add(queued.event_uuid)
            self.report.name(self.report.named_rejected, shown_value(self.log, indicator_value(queued.indicator)),
                             shown_value(self.log, str(reason)))
        if rejected:
            self.log.error(operation, f"{len(rejected)} of {len(batch)} indicators rejected", rejected=[
                {"key": queued.key, "reason": reason, "indicator": queued.indicator} for queued, reason in rejected
            ])

    # --- incremental reads ----------------------------------------------------------------
    def read_plan(self, listed: Mapping[str, EventStamp], asked: str, fingerprint: str) -> tuple[str, set[str]]:
        """Why this target needs every listed event read in full ("" if not), and the listed
        events it needs read in full (all of them, or only the changed and the due ones)."""
        reason = full_read_reason(asked, self.store.meta("full_read"), self.store.meta("fingerprint"), fingerprint,
                                  self.now, self.settings.full_resync_days, self.report.clock_problem)
        if reason:
            return reason, set(listed)
        return "", changed_events(listed, self.store.event_stamps(), self.store.events_due(iso_utc(self.renew_before)))

    def keep_unchanged(self, event_uuids: Set[str]) -> None:
        """Indicators of listed events left unread because they did not change: still wanted."""
        if self.dry_run:
            self._seen_in_dry_run.update(self.store.keys_of_events(event_uuids))
        else:
            self.store.mark_events_seen(event_uuids, self.run)

    def settle(self, read: Mapping[str, EventStamp], listed: Set[str], kind: str, fingerprint: str) -> None:
        """After removal, record the clocks of the events whose indicators are all settled
        (sent, unchanged or removed): the next incremental run skips them while they keep those
        clocks. `kind`: "full" (the record becomes what was read), "incremental" or "event"."""
        if self.dry_run:
            return
        unsettled = self.unsettled | (self.store.unsettled_events(self.run) & read.keys())
        stamps = {uuid: (stamp.timestamp, stamp.publish_timestamp) for uuid, stamp in read.items() if uuid not in unsettled}
        keep_only = {"full": (), "incremental": listed, "event": None}[kind]
        meta = {"full_read": iso_utc(self.now), "fingerprint": fingerprint} if kind == "full" else {}
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
            self.report.forgotten_expired = self.store.forget_expired(self.run, iso_utc(self.now), dry_run=self.dry_run)
        gone: list[Known] = []
        alive: set[str] | None = None
        for row in self.store.unseen(self.run):
            if row.external_id in self._seen_in_dry_run or (scope is not None and row.event_uuid not in scope):
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
        if mass_delete_blocked(len(gone), self.owned_at_start, self.settings.max_delete_fraction) and not allow_mass_delete:
            self.report.deletions_blocked = len(gone)
            self.log.error("safety-valve", (
                f"would remove {len(gone)} of {self.owned_at_start} owned indicators, more than "
                f"max_delete_fraction {self.settings.max_delete_fraction:.0%}; removed nothing (use --allow-mass-delete)"
            ), keys=[row.external_id for row in gone])
            return
        if gone and self.dry_run:
            self.record_deleted(gone)
            self.log.write("dry-run-delete", [row.external_id for row in gone])
        elif gone:
            self.remove_all(gone)

    def record_deleted(self, rows: list[Known]) -> None:
        """Count removed indicators, list each in logs/ (a dry run has its dry-run-delete file)
        and name the first ones in the summary."""
        self.report.deleted += len(rows)
        records = [self._deleted_record(row) for row in rows]
        for record in records:
            self.report.name(self.report.named_deleted, record["value"] or f"attribute {record['key']}", record["reason"])
        if records and not self.dry_run:
            self._deleted_file = self._deleted_file or JsonLines(self.log, f"deleted-{self.kind}")
            self._deleted_file.write(records)

    def _deleted_record(self, row: Known) -> dict[str, str]:
        """Graph rows keep no value (the state holds hashes only): their key names them."""
        value = json.loads(row.body).get("name", "") if row.body else ""
        return {"key": row.external_id, "id": row.remote_id, "event_uuid": row.event_uuid,
                "value": shown_value(self.log, str(value)), "reason": self._why_gone(row)}

    def _why_gone(self, row: Known) -> str:
        if self._fetched_events is None:
            return "finishing a removal an interrupted run started"
        if row.event_uuid in self._fetched_events:
            return f"its MISP event {row.event_uuid} no longer yields it (attribute deleted, changed or not to_ids)"
        return f"its MISP event {row.event_uuid} is no longer selected (deleted, unpublished or filtered out)"

    def remove_all(self, rows: list[Known]) -> None:
        """Remove in batches the services take (100 ids or objects) and wait for the answers."""
        for start in range(0, len(rows), C.GRAPH_MAX_BATCH):
            self.remove(rows[start:start + C.GRAPH_MAX_BATCH])
        self.drain()


class GraphTarget(Target):
    """Graph tiIndicators: submit, update in place when Graph allows it, delete by Graph id."""

    client: GraphClient
    kind = "graph"

    def key_of(self, indicator: dict[str, Any]) -> str:
        return indicator["externalId"]

    def keys_of_attribute(self, attribute_uuid: str) -> list[str]:
        return [attribute_uuid]

    def expiry_of(self, indicator: dict[str, Any]) -> str:
        return indicator["expirationDateTime"]

    def read_back(self) -> Rebuilt:
        return graph_rows((item for page in self.client.list_pages() for item in page["value"]), self.now)

    def remove_surplus(self, remote_ids: list[str]) -> None:
        failed = [r for r in self.client.delete(remote_ids) if not r.accepted]
        if failed:
            self.log.error("deleteTiIndicators", f"{len(failed)} duplicate copies not deleted",
                           results=[dataclasses.asdict(r) for r in failed])

    def delete_ids(self, graph_ids: list[str]) -> list[ItemResult]:
        """-d: delete by Graph id, and forget the rows, so the next sync sends the indicator
        again if MISP still wants it."""
        keys = self.store.keys_of_remote(graph_ids)
        self.store.mark_deleting(keys.values())  # a kill before the answer: the next run finishes it
        results = self.client.delete(graph_ids)
        gone = self._forget_deleted(results, keys)
        self.store.record_sent([(key, remote) for remote, key in keys.items() if key not in gone], [])
        return results

    def recover(self) -> None:
        """Finish what a killed run left: remove every copy Graph may hold of an unconfirmed
        submit, replacement or delete; those indicators are then planned afresh."""
        unfinished = [row.external_id for row in self.store.unfinished()]
        if unfinished:  # Graph may still be working on a killed run's request: check again next run
            self.store.mark_suspects(unfinished, iso_utc(self.now))
            self._forget_deleted(self.client.delete_by_external_id(unfinished), {key: key for key in unfinished})
        self.report.recovered = len(unfinished) + self._remove_late_copies()

    def _remove_late_copies(self) -> int:
        """Only while some submit had an ambiguous answer: one listing finds the copies Graph
        made too late for the retry's removal, and every copy not the one the store recorded
        is deleted. Suspects are cleared once a listing this long after their answer was clean."""
        suspects = self.store.suspects()
        if not suspects:
            return 0
        copies: dict[str, list[str]] = collections.defaultdict(list)
        for page in self.client.list_pages():
            for item in page["value"]:
                if item.get("externalId"):
                    copies[str(item["externalId"]).lower()].append(str(item["id"]))
        candidates = suspects | {key for key, ids in copies.items() if len(ids) > 1}
        recorded = {row.external_id: row.remote_id for row in self.store.rows(candidates)}
        surplus = surplus_copies(copies, recorded, suspects)
        results = self.client.delete(surplus) if surplus else []
        if all(map(_gone_from_graph, results)):
            self.store.clear_suspects(iso_utc(self.now - dt.timedelta(minutes=C.GRAPH_LATE_COPY_MINUTES)))
        return sum(r.accepted for r in results)

    def _forget_deleted(self, results: list[ItemResult], keys: dict[str, str]) -> list[str]:
        """Drop the rows Graph no longer holds (deleted now, or already gone: 404)."""
        gone = [keys[r.key] for r in results if _gone_from_graph(r) and r.key in keys]
        self.store.remove(gone)
        return gone

    def send(self, action: Action, batch: list[_Queued]) -> None:
        if action is Action.NEW:
            self._submit(batch)
        elif action is Action.REPLACE:
            self._replace(batch)
        else:
            self._update(batch, renew=action is Action.RENEW)

    def _submit(self, batch: list[_Queued]) -> None:
        """Rows are `pending` until Graph answers; a failed batch stays pending, and the next run
        removes any copy Graph made before submitting again. Unless this run read Graph's whole
        listing, a copy the state does not know of (a state restored from a backup or a
        snapshot) is removed first: the submit never makes a second copy."""
        self.store.mark_pending([self.row(q) for q in batch], self.run)
        keys = [q.key for q in batch]

        def call() -> list[ItemResult]:
            if not self.listing_read:
                self.client.delete_by_external_id(keys)
            return self.client.submit([q.indicator for q in batch])

        self.dispatch("submitTiIndicators", keys, call, lambda results: self._submitted(batch, results))

    def _submitted(self, batch: list[_Queued], results: list[ItemResult]) -> None:
        by_key = {q.key: q for q in batch}
        self.store.mark_suspects([r.key for r in results if r.ambiguous], iso_utc(dt.datetime.now(dt.UTC)))
        self.store.record_sent([(r.key, r.remote_id) for r in results if r.accepted], [r.key for r in results if not r.accepted])
        self.count(batch, "submitTiIndicators", sum(r.accepted for r in results),
                   [(by_key[r.key], r.error) for r in results if not r.accepted])

    def _replace(self, batch: list[_Queued]) -> None:
        """Graph cannot update observables: delete every copy under the externalId, then submit
        the new one (both on the worker; the rows stay `deleting` until this thread records the
        outcome)."""
        self.store.mark_deleting(q.key for q in batch)

        def call() -> tuple[list[ItemResult], list[_Queued], list[ItemResult]]:
            deleted = self.client.delete_by_external_id([q.key for q in batch])
            gone = {r.key for r in deleted if _gone_from_graph(r)}
            fresh = [q for q in batch if q.key in gone]
            return deleted, fresh, self.client.submit([q.indicator for q in fresh]) if fresh else []

        def finish(outcome: tuple[list[ItemResult], list[_Queued], list[ItemResult]]) -> None:
            deleted, fresh, submitted = outcome
            self._forget_deleted(deleted, {q.key: q.key for q in batch})
            self.store.mark_pending([self.row(q) for q in fresh], self.run)
            self._submitted(fresh, submitted)

        self.dispatch("replace", [q.key for q in batch], call, finish)

    def _update(self, batch: list[_Queued], renew: bool) -> None:
        body = renew_body if renew else update_body
        self.dispatch("updateTiIndicators", [q.key for q in batch],
                      lambda: self.client.update([body(q.remote_id, q.indicator) for q in batch]),
                      lambda results: self._updated(batch, results))

    def _updated(self, batch: list[_Queued], results: list[ItemResult]) -> None:
        by_remote = {q.remote_id: q for q in batch}
        self.store.record_updated([self.row(by_remote[r.key]) for r in results if r.accepted])
        vanished = [by_remote[r.key] for r in results if not r.accepted and "not found" in str(r.error).lower()]
        rejected = [(by_remote[r.key], r.error) for r in results if not r.accepted and by_remote[r.key] not in vanished]
        self.count(batch, "updateTiIndicators", sum(r.accepted for r in results), rejected)
        if vanished:  # deleted or purged on the Graph side: submit it again
            self.store.remove(q.key for q in vanished)
            self._submit(vanished)

    def remove(self, rows: list[Known]) -> None:
        self.store.mark_deleting(row.external_id for row in rows)

        def finish(results: list[ItemResult]) -> None:
            gone = set(self._forget_deleted(results, {row.remote_id: row.external_id for row in rows}))
            self.record_deleted([row for row in rows if row.external_id in gone])

        self.dispatch("deleteTiIndicators", [row.external_id for row in rows],
                      lambda: self.client.delete([row.remote_id for row in rows]), finish)


class SentinelTarget(Target):
    """A Sentinel workspace: every change is an upload of the same STIX id with a newer
    `modified`; removal re-uploads it with `revoked: true` (revocation is permanent)."""

    client: SentinelClient
    kind = "sentinel"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._revived: set[str] = set()  # keys moved to their next id in this run

    def key_of(self, indicator: dict[str, Any]) -> str:
        return indicator["id"]

    def keys_of_attribute(self, attribute_uuid: str) -> list[str]:
        return [stix_id(attribute_uuid + suffix) for suffix in C.STIX_PART_SUFFIXES]

    def expiry_of(self, indicator: dict[str, Any]) -> str:
        return indicator["valid_until"]

    def prepare(self, key: str, indicator: dict[str, Any], event_uuid: str, known: Known | None) -> _Queued:
        """Keep the first upload's id, `created` and `valid_from`, and send a `modified` later
        than the last version's even when the clock is behind; a key whose id was revoked gets
        a new id derived from the revoked one (still the same on every machine)."""
        if known is not None:
            last = json.loads(known.body) if known.body else indicator
            indicator = {**indicator, "id": known.remote_id, "created": last["created"], "valid_from": last["valid_from"],
                         "modified": next_modified(indicator["modified"], last.get("modified"))}
        elif (revoked := self.store.revoked_id(key)) is not None:
            indicator = {**indicator, "id": stix_id(revoked)}
        return _Queued(key, indicator, event_uuid, indicator["id"], known is not None and known.status != SENT)

    def read_back(self) -> Rebuilt:
        """The workspace's indicators from our sourcesystem (needs the management settings)."""
        return sentinel_rows((item for page in self.client.query_pages() for item in page["value"]), self.now)

    def delete_ids(self, stix_ids: list[str]) -> list[ItemResult]:
        """-d: revoke by STIX id, from the state's last version or, for an id the state does not
        know, from the workspace's copy; the key then gets a fresh id if MISP still wants it."""
        keys = self.store.keys_of_remote(stix_ids)
        last = {row.remote_id: (row.external_id, json.loads(row.body)) for row in self.store.rows(keys.values())}
        unknown = [stix for stix in stix_ids if stix not in last]
        if unknown:
            rebuilt = self.read_back()
            last.update({row.remote_id: (row.external_id, json.loads(row.body)) for row in rebuilt.rows if row.remote_id in unknown})
        found = [stix for stix in stix_ids if stix in last]
        self.store.mark_deleting(keys[stix] for stix in found if stix in keys)  # a kill: the next run revokes again
        objects = [revocation(last[stix][1], self.now) for stix in found]
        results = [ItemResult(r.key, r.key) if _says_revoked(r.error) else r
                   for start in range(0, len(objects), C.SENTINEL_MAX_BATCH)
                   for r in self.client.upload(objects[start:start + C.SENTINEL_MAX_BATCH])]
        self.store.record_revoked((last[r.key][0], r.key) for r in results if r.accepted)
        self.store.record_sent([(keys[r.key], r.key) for r in results if not r.accepted and r.key in keys], [])
        missing = [ItemResult(stix, None, "not in the state, nor live in the workspace") for stix in stix_ids if stix not in last]
        return results + missing

    def recover(self) -> None:
        """Uploads are idempotent (same id, newer modified): unconfirmed uploads stay owned as
        `pending` (planned again, or revoked if MISP dropped them); finish interrupted revocations."""
        unfinished = self.store.unfinished()
        revoking = self.store.rows(row.external_id for row in unfinished if row.status == DELETING)
        if revoking:
            self.remove_all(revoking)
        self.report.recovered = len(unfinished)

    def send(self, action: Action, batch: list[_Queued]) -> None:
        if action is Action.NEW:
            self.store.mark_pending([self.row(q) for q in batch], self.run)
        self.dispatch("upload", [q.key for q in batch], lambda: self.client.upload([q.indicator for q in batch]),
                      lambda results: self._uploaded(action, batch, results))

    def _uploaded(self, action: Action, batch: list[_Queued], results: list[ItemResult]) -> None:
        """Record the answer. A refused row an earlier run left pending stays owned (that upload
        may have arrived). An id revoked outside this state (the portal, another host's -d)
        moves the key to its next id, once per run."""
        by_remote = {q.remote_id: q for q in batch}
        accepted = [by_remote[r.key] for r in results if r.accepted]
        refused = [(by_remote[r.key], r.error) for r in results if not r.accepted]
        revoked = [q for q, error in refused if _says_revoked(error) and q.key not in self._revived]
        refused = [(q, error) for q, error in refused if q not in revoked]
        if action is Action.NEW:
            self.store.record_sent([(q.key, q.remote_id) for q in accepted], [q.key for q, _ in refused if not q.was_pending])
        else:
            self.store.record_updated([self.row(q) for q in accepted])
        self.store.record_revoked((q.key, q.remote_id) for q in revoked)
        for q in revoked:
            self._revived.add(q.key)
            self.queues[Action.NEW].append(self.prepare(q.key, q.indicator, q.event_uuid, None))
        self.count(batch, "upload", len(accepted), refused)

    def remove(self, rows: list[Known]) -> None:
        """Revoke: the last object sent, again, with `revoked: true` and a newer `modified`."""
        self.store.mark_deleting(row.external_id for row in rows)
        objects = [revocation(json.loads(row.body), self.now) for row in rows]
        self.dispatch("upload", [row.external_id for row in rows], lambda: self.client.upload(objects),
                      lambda results: self._revoked(rows, results))

    def _revoked(self, rows: list[Known], results: list[ItemResult]) -> None:
        key_of_remote = {row.remote_id: row.external_id for row in rows}
        revoked = {r.key for r in results if r.accepted or _says_revoked(r.error)}
        self.store.record_revoked((key_of_remote[remote], remote) for remote in revoked)
        self.record_deleted([row for row in rows if row.remote_id in revoked])
        failed = [r for r in results if r.key not in revoked]
        if failed:
            self.log.error("revoke", f"{len(failed)} revocations rejected", rejected=[{"id": r.key, "reason": r.error} for r in failed])


def _gone_from_graph(result: ItemResult) -> bool:
    """A delete Graph did, or one it did not need (404: already gone)."""
    return result.accepted or str(result.error).startswith("404")


def _says_revoked(error: str | None) -> bool:
    """Sentinel refused an object because its id is already revoked (revocation is final)."""
    return "revoked" in str(error).lower()


def revocation(last: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The last version sent, again, revoked, with a `modified` later than that version's."""
    return {**last, "revoked": True, "modified": next_modified(stix_time(now), last.get("modified"))}


def skipped_records(skips: list[Skip], log: RequestLog) -> list[dict[str, Any]]:
    return [dataclasses.asdict(skip) | {"reason": skip.reason.value, "value": shown_value(log, skip.value)} for skip in skips]


def surplus_copies(copies: dict[str, list[str]], recorded: dict[str, str], suspects: set[str]) -> list[str]:
    """Graph ids (`copies`: externalId -> ids listed) that are not the copy the store recorded:
    every other copy of a suspect (all of them when none is recorded: we own none), and the
    extra copies of any externalId listed twice whose recorded copy is among them."""
    surplus: list[str] = []
    for key, ids in copies.items():
        keep = recorded.get(key)
        if key in suspects or (len(ids) > 1 and keep in ids):
            surplus += [graph_id for graph_id in ids if graph_id != keep]
    return surplus


def classify(exc: BaseException, log: RequestLog | None) -> tuple[ExitCode, str, str]:
    """The exit code, the one-line message and the error file's context ("" for none) of an
    exception that ended the run."""
    scrub = log.scrub if log else str
    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG, f"configuration: {exc}", ""
    if isinstance(exc, MispError):
        return ExitCode.MISP, scrub(str(exc)), "misp"
    if isinstance(exc, MicrosoftError):
        return ExitCode.MICROSOFT, scrub(str(exc)), "microsoft"
    if isinstance(exc, StoreLocked):
        return ExitCode.LOCKED, f"{exc}; nothing done", ""
    if isinstance(exc, StoreError):
        return ExitCode.CONFIG, f"state_dir: {exc}", "state"
    if isinstance(exc, LogWriteError):
        return ExitCode.CONFIG, f"log_dir: {exc}", ""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted", ""
    if isinstance(exc, OSError) and exc.filename:  # a file or folder, not a connection
        return ExitCode.CONFIG, f"{exc.filename}: {exc.strerror}: {C.OS_ERROR_FIXES.get(exc.errno, C.OS_ERROR_FIX)}", ""
    if isinstance(exc, sqlite3.OperationalError) and sqlite_fix(exc):
        return ExitCode.CONFIG, f"state_dir: {exc}{sqlite_fix(exc)}", "state"
    return ExitCode.INTERNAL, f"internal error {type(exc).__name__}: {scrub(str(exc))[:300]} (please report)", "internal"


@dataclasses.dataclass
class TargetRun:
    """One target's part of a run. A failure stops this target only; the others go on, and the
    run's exit code is the most serious outcome among them."""

    spec: TargetSettings
    report: RunReport
    target: Target | None = None
    transformer: Transformer | None = None
    skipped_file: JsonLines | None = None
    routine_logged: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failure: str = ""
    failure_code: ExitCode = ExitCode.OK
    fingerprint: str = ""  # settings_fingerprint of this run's settings

    def fail(self, log: RequestLog, code: ExitCode, message: str) -> None:
        self.stop(code, log.scrub(message))
        with contextlib.suppress(LogWriteError):  # the failure may be the log folder itself
            log.error(self.spec.label, self.failure)

    def stop(self, code: ExitCode, message: str) -> None:
        """Record a failure that ended the whole run (its error file is written once, by the caller)."""
        if not self.failure:
            self.failure, self.failure_code = message, code

    def guard(self, log: RequestLog, step: Callable[[], Any]) -> None:
        if self.failure:
            return
        try:
            step()
        except Exception as exc:
            code, message, _ = classify(exc, log)
            self.fail(log, code, message)
            if code is ExitCode.INTERNAL:
                with contextlib.suppress(LogWriteError):
                    log.error(f"{self.spec.label} traceback", self.failure, traceback=log.scrub(traceback.format_exc()))

    def logged_skips(self, skips: list[Skip]) -> list[Skip]:
        """Every skip, but at most ROUTINE_SKIPS_LOGGED per routine reason and run, so a MISP
        full of comments or non-IDS attributes does not write a huge file every run."""
        kept = []
        for skip in skips:
            if skip.reason in ROUTINE_SKIPS:
                if self.routine_logged[skip.reason] >= C.ROUTINE_SKIPS_LOGGED:
                    continue
                self.routine_logged[skip.reason] += 1
            kept.append(skip)
        return kept

    def exit_code(self) -> ExitCode:
        if self.failure:
            return self.failure_code
        if self.report.failed:
            return ExitCode.MICROSOFT
        if self.report.deletions_blocked:
            return ExitCode.SAFETY_VALVE
        return ExitCode.REJECTED if self.report.rejected else ExitCode.OK

    def problem(self) -> str:
        """One line for every outcome but 0, so a `--quiet` run under cron still sends mail."""
        report = self.report
        if self.failure:
            return self.failure
        if report.failed:
            return f"{report.failed} indicators not delivered after retries (see logs/)"
        if report.deletions_blocked:
            return (f"safety valve: {report.deletions_blocked} deletions blocked, nothing deleted; "
                    "check MISP, then re-run with --allow-mass-delete if they are real")
        return f"{report.rejected} indicators rejected by the service (see logs/)" if report.rejected else ""

    def record(self, dry_run: bool, started: dt.datetime) -> dict[str, Any]:
        """The run report: outcome, times and version as well as the counts, failed runs included."""
        return self.report.as_dict(dry_run) | {
            "exit_code": int(self.exit_code()), "error": self.problem() or None, "started": iso_utc(started),
            "ended": iso_utc(dt.datetime.now(dt.UTC)), "version": C.VERSION,
        }


def last_run_status(previous: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """`last-run.json` for monitoring: per target the last exit code and when it last succeeded
    (kept from the previous file while the target keeps failing). A previous file that is JSON
    but not this shape (edited by hand, written by something else) is started afresh."""
    status = dict(previous) if isinstance(previous, dict) else {}
    for record in records:
        before = status.get(record["target"])
        before = before if isinstance(before, dict) else {}
        succeeded = record["exit_code"] == ExitCode.OK
        status[record["target"]] = {
            "last_exit_code": record["exit_code"], "last_run": record["ended"], "last_error": record["error"],
            "last_success": record["ended"] if succeeded else before.get("last_success"),
        }
    return status


def settings_fingerprint(settings: Settings, spec: TargetSettings) -> str:
    """A digest of what shapes the indicators of an unchanged event (mapping policy, non-time
    filters, target, tool version): when it changes, every event is read again in full."""
    timeless = [{k: v for k, v in one.items() if k not in C.MISP_TIME_FILTERS} for one in settings.misp_event_filters]
    shape = {"version": C.VERSION, "policy": dataclasses.asdict(policy_from(settings)), "filters": timeless,
             "target": dataclasses.asdict(spec), "sourcesystem": settings.sourcesystem}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def target_label(settings: Settings, spec: TargetSettings) -> str:
    return f"graph tenant {settings.tenant}" if spec.kind == "graph" else spec.label


def make_target(settings: Settings, spec: TargetSettings, log: RequestLog, store: StateStore, now: dt.datetime,
                dry_run: bool = False, report: RunReport | None = None) -> Target:
    """The target object for one configured target; a dry run has no client."""
    report = report or RunReport(target_label(settings, spec))
    if spec.kind == "graph":
        return GraphTarget(settings, None if dry_run else GraphClient(settings, log), store, log, report, now)
    return SentinelTarget(settings, None if dry_run else SentinelClient(settings, spec, log), store, log, report, now)


def new_run(settings: Settings, spec: TargetSettings) -> TargetRun:
    return TargetRun(spec, RunReport(target_label(settings, spec)))


def open_run(settings: Settings, run: TargetRun, log: RequestLog, dry_run: bool, now: dt.datetime,
             stack: contextlib.ExitStack) -> TargetRun:
    """Lock and open the target's state, check its token, and read the service back when the
    state has no history, all before MISP is read. A failure is kept in the TargetRun."""
    spec = run.spec
    lock, path = state_paths(settings, spec)
    try:
        stack.enter_context(target_lock(lock))
        store, note = open_store(path, dry_run, now)
    except StoreLocked as exc:
        run.fail(log, ExitCode.LOCKED, f"{exc}; nothing done for this target")
        return run
    except StoreError as exc:
        run.fail(log, ExitCode.CONFIG, f"state_dir: {exc}")
        return run
    stack.callback(store.close)
    fresh = store.is_fresh()
    target = make_target(settings, spec, log, store, now, dry_run, run.report)
    stack.callback(target.close)
    transformer = GraphTransformer if spec.kind == "graph" else StixTransformer
    run.transformer = transformer(policy_from(settings), now)
    run.fingerprint = settings_fingerprint(settings, spec)
    if target.client is not None:
        run.guard(log, target.client.token)
        if fresh:
            run.guard(log, lambda: target.adopt(note))
    if not run.failure:
        target.start()
        run.target = target
    return run


def run_all(runs: list[TargetRun], source: MispSource, log: RequestLog, allow_mass_delete: bool,
            scope: set[str] | None = None, progress: bool = False, full: bool = False) -> None:
    """List MISP once, read in full what any target needs, feed every target; remove only after
    the whole read succeeded, then record which events are settled.

    `scope` limits reads and removals to those events (a `--event` run); `full` (`--full`)
    reads every listed event; `progress` shows a bar of events read and, per target, of
    indicators answered (on a terminal only).
    """
    runs = [run for run in runs if run.target is not None]
    if not runs:
        return
    for run in runs:
        if not run.target.dry_run:
            run.guard(log, run.target.recover)
    read: dict[str, EventStamp] = {}
    bar = tqdm(desc="MISP events", unit=" events", disable=not progress, leave=False)
    for run in runs:
        run.report.progress = tqdm(desc=f"{run.spec.label}", unit=" indicators", disable=not progress, leave=False)
    asked = "--event" if scope is not None else "--full" if full else ""
    try:
        listed = source.listing()
        plans = _read_plans(runs, listed.events, asked, log)
        full_reasons = sorted({reason for reason, _ in plans.values() if reason})
        if full_reasons:
            _feed_pages(runs, source.pages(listed), read, bar, log)
            _feed_pages(runs, source.fetch_events(listed.events.keys() - read.keys()), read, bar, log)
        else:
            needed = set().union(*(wanted for _, wanted in plans.values()))
            _feed_pages(runs, source.fetch_events(uuid for uuid in listed.events if uuid in needed), read, bar, log)
    finally:
        bar.close()
        for run in runs:
            run.guard(log, run.target.flush_all)  # what was planned is sent even after a MISP error
            if run.skipped_file is not None:
                run.skipped_file.close()
    kind = "event" if scope is not None else "full" if full_reasons else "incremental"
    alive = _once(source.alive_event_uuids)
    for run in runs:
        run.report.full_read, run.report.events_listed, run.report.events_read_in_full = "; ".join(full_reasons), len(listed.events), len(read)
        unchanged = listed.events.keys() - plans.get(id(run), ("", set()))[1] - read.keys()
        run.guard(log, lambda run=run: run.target.keep_unchanged(unchanged))
        run.guard(log, lambda run=run: run.target.remove_gone(read.keys(), listed.events.keys(), alive, allow_mass_delete, scope))
        run.guard(log, lambda run=run: run.target.settle(read, listed.events.keys(), kind, run.fingerprint))
        run.report.progress.close()


def _read_plans(runs: list[TargetRun], listed: Mapping[str, EventStamp], asked: str, log: RequestLog) -> dict[int, tuple[str, set[str]]]:
    """Each target's read plan, by id of its run; a target whose store fails here fails alone."""
    plans: dict[int, tuple[str, set[str]]] = {}
    for run in runs:
        def read_plan(run: TargetRun = run) -> None:
            plans[id(run)] = run.target.read_plan(listed, asked, run.fingerprint)
        run.guard(log, read_plan)
    return plans


def _feed_pages(runs: list[TargetRun], pages: Iterator[list[dict[str, Any]]], read: dict[str, EventStamp], bar: tqdm,
                log: RequestLog) -> None:
    """Transform each page for every target, then mark its indicators seen; `read` gains the
    clocks of each event read (not of one that could not be read as a whole)."""
    for page in pages:
        for event in page:
            uuids = {_feed(run, event, log) for run in runs if not run.failure} - {""}
            read.update((uuid, stamp_of(event)) for uuid in uuids)
        bar.update(len(page))
        for run in runs:
            run.guard(log, run.target.commit_seen)


def _feed(run: TargetRun, event: Any, log: RequestLog) -> str:
    result = run.transformer.transform(event)
    run.report.add_event(result)
    logged = run.logged_skips(result.skips)
    if logged:
        run.skipped_file = run.skipped_file or JsonLines(log, f"skipped-{run.spec.kind}")
        run.skipped_file.write(skipped_records(logged, log))
    failed = [skip for skip in result.skips if skip.reason is SkipReason.INTERNAL_ERROR]
    if failed:  # a bug, not a data problem: it goes to the error files as well
        log.error("transform", f"{len(failed)} attributes of MISP event {failed[0].event_uuid} could not be transformed",
                  event_uuid=failed[0].event_uuid, attributes=[{"uuid": s.attribute_uuid, "error": s.detail} for s in failed])
    run.target.keep([skip.attribute_uuid for skip in failed], result.event_uuid)
    for indicator in result.indicators:
        run.guard(log, lambda indicator=indicator: run.target.offer(indicator, result.event_uuid))
    return result.event_uuid


def _once(compute: Callable[[], set[str] | None]) -> Callable[[], set[str] | None]:
    """The alive-event search is asked by each target; MISP answers it once."""
    cache: list[set[str] | None] = []

    def cached() -> set[str] | None:
        if not cache:
            cache.append(compute())
        return cache[0]
    return cached

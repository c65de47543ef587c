"""One reconciling run for the Graph target: MISP pages -> transform -> plan -> batches -> report.

The state store says what we own; `reconcile.plan` says what each desired indicator needs; this
module batches the work, writes state around every Graph call so a crash can be recovered, and
removes what MISP no longer wants once (and only once) the whole fetch has succeeded.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import re
import time
from collections.abc import Callable
from typing import Any

import constants as C
from constants import SkipReason
from graph_client import GraphClient, GraphError, ItemResult
from misp_transformer import EventResult, GraphPolicy, Skip, iso_utc
from reconcile import (Action, content_hash, event_uuid_of, fixed_hash, mass_delete_blocked, parse_expiry, plan,
                       renew_body, renewal_threshold, update_body)
from request_log import RequestLog
from settings import Settings
from state_store import DELETING, PENDING, Known, StateStore

# Skips that only confirm MISP's own filtering; the others are listed one by one in the logs.
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
    forgotten_expired: int = 0
    recovered: int = 0
    deletions_blocked: int = 0
    requests: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def add_event(self, result: EventResult) -> None:
        self.events += 1
        self.attributes += result.attributes
        self.indicators += len(result.indicators)
        self.skipped.update(skip.reason.value for skip in result.skips)

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
            "kept_outside_window": self.kept_outside_window, "forgotten_expired": self.forgotten_expired,
            "recovered": self.recovered, "deletions_blocked": self.deletions_blocked, "requests": self.requests,
            "skipped": dict(sorted(self.skipped.items())), "seconds": round(time.monotonic() - self.started, 3),
        }

    def summary(self, dry_run: bool) -> str:
        data = self.as_dict(dry_run)
        skipped = ", ".join(f"{reason} {count}" for reason, count in data["skipped"].items()) or "none"
        planned = " (planned, nothing sent)" if dry_run else ""
        return (
            ("Dry run: nothing was sent and the state was not changed\n" if dry_run else "")
            + f"target: {data['target']}\nevents read: {data['events']}\nattributes read: {data['attributes']}\n"
            f"candidates: {data['candidates']}\nindicators: {data['indicators']}\n"
            f"new: {data['new']}, updated: {data['update']}, replaced: {data['replace']}, renewed: {data['renew']}, "
            f"unchanged: {data['unchanged']}{planned}\n"
            f"accepted: {data['accepted']}\nrejected: {data['rejected']}\nfailed (not delivered): {data['failed']}\n"
            f"deleted: {data['deleted']}{planned}\nkept until they expire (event outside the filter window): "
            f"{data['kept_outside_window']}\n"
            + (f"DELETIONS BLOCKED by the safety valve: {data['deletions_blocked']}\n" if data["deletions_blocked"] else "")
            + (f"recovered from an interrupted run: {data['recovered']}\n" if data["recovered"] else "")
            + f"Graph requests: {data['requests']}\nskipped: {skipped}\ntime: {data['seconds']:.2f} s\n"
        )


def policy_from(settings: Settings) -> GraphPolicy:
    return GraphPolicy(
        target_product=settings.target_product, action=settings.action, passive_only=settings.passive_only,
        days_to_expire=settings.days_to_expire, network_ignore_direction=settings.network_ignore_direction,
        ignore_local_tags=settings.ignore_local_tags, default_confidence=settings.default_confidence,
        allow_weak_observables=settings.allow_weak_observables,
    )


def state_name(settings: Settings) -> str:
    """One store per target tenant and app, so two tenants never share state."""
    return "graph_" + re.sub(r"[^A-Za-z0-9-]+", "-", f"{settings.tenant}_{settings.client_id}")


@dataclasses.dataclass
class _Queued:
    """A desired indicator waiting for its batch, with what the plan needs to finish it."""

    indicator: dict[str, Any]
    event_uuid: str
    graph_id: str | None = None


class GraphTarget:
    """Applies plans to one Graph tenant in batches of 100, writing state around every call."""

    def __init__(self, settings: Settings, client: GraphClient | None, store: StateStore, log: RequestLog,
                 report: RunReport, now: dt.datetime) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.log = log
        self.report = report
        self.now = now
        self.renew_before = renewal_threshold(now, settings.renew_days)
        self.queues: dict[Action, list[_Queued]] = {action: [] for action in Action if action is not Action.UNCHANGED}
        self.run = store.next_run() if client is None else store.begin_run()
        self.owned_at_start = store.owned_count()
        self._seen: list[str] = []
        self._seen_in_dry_run: set[str] = set()

    @property
    def dry_run(self) -> bool:
        return self.client is None

    # --- recovery -----------------------------------------------------------------------
    def recover(self) -> None:
        """Finish what a killed run left: undo unconfirmed submits, redo interrupted deletes."""
        unfinished = self.store.unfinished()
        pending = [row.external_id for row in unfinished if row.status == PENDING]
        deleting = {row.graph_id: row.external_id for row in unfinished if row.status == DELETING and row.graph_id}
        if pending:
            self._forget_deleted(self.client.delete_by_external_id(pending), {key: key for key in pending})
        if deleting:
            self._forget_deleted(self.client.delete(list(deleting)), deleting)
        stray = [row.external_id for row in unfinished if row.status == DELETING and not row.graph_id]
        self.store.remove(stray)
        self.report.recovered = len(unfinished)

    def _forget_deleted(self, results: list[ItemResult], external_ids: dict[str, str]) -> list[str]:
        """Drop the rows Graph no longer holds (deleted now, or already gone: 404)."""
        gone = [external_ids[r.key] for r in results if r.accepted or str(r.error).startswith("404")]
        self.store.remove(gone)
        return gone

    # --- planning -----------------------------------------------------------------------
    def offer(self, indicator: dict[str, Any], event_uuid: str) -> None:
        known = self.store.known(indicator["externalId"])
        action = plan(known, indicator, self.renew_before)
        self.report.actions[action.value] += 1
        self._seen.append(indicator["externalId"])
        if action is Action.UNCHANGED:
            return
        queue = self.queues[action]
        queue.append(_Queued(indicator, event_uuid, known.graph_id if known else None))
        if len(queue) >= C.GRAPH_MAX_BATCH:
            self._flush(action)

    def commit_seen(self) -> None:
        """Mark this page's desired indicators as seen (what is unseen at the end is removed);
        a dry run keeps the marks in memory and leaves the store untouched."""
        if self.dry_run:
            self._seen_in_dry_run.update(self._seen)
        else:
            self.store.mark_seen(self._seen, self.run)
        self._seen = []

    def flush_all(self) -> None:
        self.commit_seen()
        for action in list(self.queues):
            self._flush(action)

    def _flush(self, action: Action) -> None:
        batch, self.queues[action] = self.queues[action], []
        if not batch:
            return
        if self.dry_run:
            self.log.write(f"dry-run-{action.value}", [item.indicator for item in batch])
        elif action is Action.NEW:
            self._submit(batch)
        elif action is Action.REPLACE:
            self._replace(batch)
        else:
            self._update(batch, renew=action is Action.RENEW)

    # --- Graph calls with state around them -----------------------------------------------
    def _guarded(self, operation: str, batch: list[_Queued], call: Callable[[], list[ItemResult]]) -> list[ItemResult] | None:
        """Run one Graph call; a non-fatal failure marks the batch failed and the run goes on."""
        try:
            return call()
        except GraphError as exc:
            if exc.fatal:
                raise
            self.report.failed += len(batch)
            self.log.error(operation, str(exc), external_ids=[item.indicator["externalId"] for item in batch])
            return None

    def _submit(self, batch: list[_Queued]) -> None:
        now = iso_utc(self.now)
        self.store.mark_pending([
            (q.indicator["externalId"], content_hash(q.indicator), fixed_hash(q.indicator),
             q.indicator["expirationDateTime"], now, q.event_uuid) for q in batch
        ], self.run)
        results = self._guarded("submitTiIndicators", batch, lambda: self.client.submit([q.indicator for q in batch]))
        if results is None:
            return  # rows stay pending: the next run removes any copy Graph made, then resubmits
        accepted = [(r.key, r.graph_id) for r in results if r.accepted]
        rejected = [r for r in results if not r.accepted]
        self.store.record_sent(accepted, [r.key for r in rejected])
        self._count(batch, "submitTiIndicators", len(accepted), rejected, lambda r: r.key)

    def _replace(self, batch: list[_Queued]) -> None:
        """Graph cannot update observables: delete the old indicator, then submit the new one."""
        self.store.mark_deleting(q.indicator["externalId"] for q in batch)
        results = self._guarded("deleteTiIndicators", batch, lambda: self.client.delete([q.graph_id for q in batch]))
        if results is None:
            return
        by_graph_id = {q.graph_id: q for q in batch}
        removed = set(self._forget_deleted(results, {q.graph_id: q.indicator["externalId"] for q in batch}))
        self._submit([by_graph_id[r.key] for r in results if by_graph_id[r.key].indicator["externalId"] in removed])

    def _update(self, batch: list[_Queued], renew: bool) -> None:
        body = renew_body if renew else update_body
        operation = "updateTiIndicators"
        results = self._guarded(operation, batch, lambda: self.client.update([body(q.graph_id, q.indicator) for q in batch]))
        if results is None:
            return
        by_graph_id = {q.graph_id: q for q in batch}
        now = iso_utc(self.now)
        done = [by_graph_id[r.key] for r in results if r.accepted]
        self.store.record_updated([
            (q.indicator["externalId"], content_hash(q.indicator), fixed_hash(q.indicator), q.indicator["expirationDateTime"], now)
            for q in done
        ])
        vanished = [by_graph_id[r.key] for r in results if not r.accepted and "not found" in str(r.error).lower()]
        rejected = [r for r in results if not r.accepted and by_graph_id[r.key] not in vanished]
        self._count(batch, operation, len(done), rejected, lambda r: by_graph_id[r.key].indicator["externalId"])
        if vanished:  # deleted or purged on the Graph side: submit it again
            self.store.remove(q.indicator["externalId"] for q in vanished)
            self._submit(vanished)

    def _count(self, batch: list[_Queued], operation: str, accepted: int, rejected: list[ItemResult],
               external_id: Callable[[ItemResult], str]) -> None:
        self.report.accepted += accepted
        self.report.rejected += len(rejected)
        if rejected:
            by_id = {q.indicator["externalId"]: q.indicator for q in batch}
            self.log.error(operation, f"Graph rejected {len(rejected)} of {len(batch)} indicators", rejected=[
                {"externalId": external_id(r), "reason": r.error, "indicator": by_id.get(external_id(r))} for r in rejected
            ])

    # --- removal ------------------------------------------------------------------------
    def remove_gone(self, fetched_events: set[str], alive_events: Callable[[], set[str] | None], allow_mass_delete: bool) -> None:
        """Delete what MISP no longer wants; keep what merely left the filter window (it expires)."""
        unseen = [row for row in self.store.unseen(self.run) if row.external_id not in self._seen_in_dry_run]
        elsewhere = [row for row in unseen if row.event_uuid not in fetched_events]
        alive = (alive_events() if elsewhere else None) or set()
        gone = [row for row in unseen if row.event_uuid in fetched_events or row.event_uuid not in alive]
        kept = [row for row in unseen if row.event_uuid not in fetched_events and row.event_uuid in alive]
        expired = [row for row in kept if (parse_expiry(row.expires_at) or self.now) <= self.now]
        self.report.kept_outside_window = len(kept) - len(expired)
        self.report.forgotten_expired = len(expired)
        if not self.dry_run:
            self.store.remove(row.external_id for row in expired)
        if mass_delete_blocked(len(gone), self.owned_at_start, self.settings.max_delete_fraction) and not allow_mass_delete:
            self.report.deletions_blocked = len(gone)
            self.log.error("safety-valve", (
                f"would delete {len(gone)} of {self.owned_at_start} owned indicators, more than "
                f"max_delete_fraction {self.settings.max_delete_fraction:.0%}; deleted nothing (use --allow-mass-delete)"
            ), external_ids=[row.external_id for row in gone])
            return
        self._delete(gone)

    def _delete(self, gone: list[Known]) -> None:
        if not gone:
            return
        if self.dry_run:
            self.report.deleted = len(gone)
            self.log.write("dry-run-delete", [row.external_id for row in gone])
            return
        for start in range(0, len(gone), C.GRAPH_MAX_BATCH):
            chunk = gone[start:start + C.GRAPH_MAX_BATCH]
            self.store.mark_deleting(row.external_id for row in chunk)
            queued = [_Queued({"externalId": row.external_id}, row.event_uuid, row.graph_id) for row in chunk]
            results = self._guarded("deleteTiIndicators", queued, lambda: self.client.delete([row.graph_id for row in chunk]))
            if results is not None:
                self.report.deleted += len(self._forget_deleted(results, {row.graph_id: row.external_id for row in chunk}))


def skipped_records(skips: list[Skip]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(skip) | {"reason": skip.reason.value} for skip in skips]


def rebuild_rows(items: list[dict[str, Any]], now: dt.datetime) -> tuple[list[tuple[str, ...]], list[str], int]:
    """State rows from Graph's listing: (rows, ids of surplus duplicates, items without externalId)."""
    rows: dict[str, tuple[str, ...]] = {}
    duplicates: list[str] = []
    anonymous = 0
    for item in items:
        external_id = str(item.get("externalId") or "").lower()
        if not external_id:
            anonymous += 1
        elif external_id in rows:
            duplicates.append(item["id"])
        else:
            rows[external_id] = (external_id, item["id"], content_hash(item), fixed_hash(item),
                                 str(item.get("expirationDateTime", "")), iso_utc(now), event_uuid_of(item))
    return list(rows.values()), duplicates, anonymous


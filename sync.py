"""One reconciling run over every configured target: MISP is listed once, each page is
transformed for every target and offered to its engine; removal comes only after the whole
read succeeded, then each target records which events are settled.

Orchestration only: the engine (engine.py) plans and sends, the adapters (targets.py) speak the
services, report.py keeps the counts and the outcome.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

import constants as C
import targets
from constants import ExitCode, SkipReason
from engine import Engine, Limits
from misp_source import EventStamp, MispSource, stamp_of
from misp_transformer import DecayPolicy, MappingPolicy
from report import RunReport, TargetRun
from request_log import RequestLog, strip_url_credentials
from settings import Settings, TargetSettings
from state_store import StateStore, StoreError, StoreLocked, open_store, target_lock


def policy_from(settings: Settings, spec: TargetSettings, decay: DecayPolicy | None = None) -> MappingPolicy:
    """One target's mapping policy: the shared settings, that target's own, and the decaying
    model as MISP defines it (MispSource.decay_policy)."""
    return MappingPolicy(
        target_product=settings.target_product, action=settings.action, passive_only=settings.passive_only,
        days_to_expire=settings.days_to_expire, network_ignore_direction=settings.network_ignore_direction,
        ignore_local_tags=settings.ignore_local_tags, default_confidence=settings.default_confidence,
        allow_weak_observables=settings.allow_weak_observables, allow_broad_cidr=settings.allow_broad_cidr,
        misp_url=strip_url_credentials(settings.misp_url), tlp_max=spec.tlp_max, min_confidence=spec.min_confidence,
        defender_action=spec.defender_action, defender_generate_alert=spec.defender_generate_alert,
        defender_severity=spec.defender_severity, defender_rbac_groups=spec.defender_rbac_groups,
        defender_recommended_actions=spec.defender_recommended_actions, decay=decay,
    )


def state_paths(settings: Settings, spec: TargetSettings) -> tuple[Path, Path]:
    """The lock and the store of one target, named by its adapter's state key, so two targets
    never share state. Ids are GUIDs, compared without case: a client id written in capitals
    finds the same store (a file an older version named in capitals is taken over)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", targets.state_key(settings, spec).lower())
    return settings.state_dir / f"{name}.lock", settings.state_dir / f"{name}.sqlite"


def settings_fingerprint(settings: Settings, spec: TargetSettings) -> str:
    """A digest of what shapes the indicators of an unchanged event (mapping policy, non-time
    filters, target, tool version): when it changes, every event is read again in full."""
    timeless = [{k: v for k, v in one.items() if k not in C.MISP_TIME_FILTERS} for one in settings.misp_event_filters]
    shape = {"version": C.VERSION, "policy": dataclasses.asdict(policy_from(settings, spec)), "filters": timeless,
             "target": dataclasses.asdict(spec), "sourcesystem": settings.sourcesystem,
             "decay": [settings.misp_decay_model, settings.decay_threshold, settings.decay_as_confidence]}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def make_engine(settings: Settings, adapter: targets.Adapter, store: StateStore, log: RequestLog, now: dt.datetime,
                online: bool, report: RunReport | None = None) -> Engine:
    return Engine(adapter, store, log, report or RunReport(adapter.label), now, Limits.of(settings), online)


def new_run(settings: Settings, spec: TargetSettings, log: RequestLog, dry_run: bool, now: dt.datetime) -> TargetRun:
    adapter = targets.adapter(settings, spec, log, online=not dry_run)
    return TargetRun(spec, adapter, adapter.transformer(policy_from(settings, spec), now), RunReport(adapter.label),
                     fingerprint=settings_fingerprint(settings, spec))


def apply_decay(settings: Settings, runs: list[TargetRun], decay: DecayPolicy | None, now: dt.datetime) -> None:
    """Give every target the decaying model once MISP has said what it is."""
    if decay is None:
        return
    for run in runs:
        run.transformer = run.adapter.transformer(policy_from(settings, run.spec, decay), now)
        run.report.decay_model = decay.model_name or decay.model_id


def open_run(settings: Settings, run: TargetRun, log: RequestLog, dry_run: bool, now: dt.datetime,
             stack: contextlib.ExitStack) -> None:
    """Lock and open the target's state, check its token, and read the service back when the
    state has no history, all before MISP is read. A failure is kept in the TargetRun."""
    lock, path = state_paths(settings, run.spec)
    try:
        stack.enter_context(target_lock(lock))
        store, note = open_store(path, dry_run, now)
    except StoreLocked as exc:
        return run.fail(log, ExitCode.LOCKED, f"{exc}; nothing done for this target")
    except StoreError as exc:
        return run.fail(log, ExitCode.CONFIG, f"state_dir: {exc}")
    stack.callback(store.close)
    fresh = store.is_fresh()
    engine = make_engine(settings, run.adapter, store, log, now, not dry_run, run.report)
    stack.callback(engine.close)
    if not dry_run:
        run.guard(log, run.adapter.token)
        if fresh:
            run.guard(log, lambda: engine.adopt(note))
    if not run.failure:
        engine.start()
        run.engine = engine


def run_all(runs: list[TargetRun], source: MispSource, log: RequestLog, allow_mass_delete: bool,
            scope: set[str] | None = None, progress: bool = False, full: bool = False) -> None:
    """List MISP once, read in full what any target needs, feed every target; remove only after
    the whole read succeeded, then record which events are settled.

    `scope` limits reads and removals to those events (a `--event` run); `full` (`--full`)
    reads every listed event; `progress` shows a bar of events read and, per target, of
    indicators answered (on a terminal only).
    """
    live = [(run, run.engine) for run in runs if run.engine is not None]
    if not live:
        return
    for run, engine in live:
        if not engine.dry_run:
            run.guard(log, engine.recover)
        run.report.progress = tqdm(desc=f"{run.spec.label}", unit=" indicators", disable=not progress, leave=False)
    read: dict[str, EventStamp] = {}
    bar = tqdm(desc="MISP events", unit=" events", disable=not progress, leave=False)
    asked = "--event" if scope is not None else "--full" if full else ""
    try:
        listed = source.listing()
        plans = _read_plans(live, listed.events, asked, log)
        full_reasons = sorted({reason for reason, _ in plans.values() if reason})
        if full_reasons:
            _feed_pages(live, source.pages(listed), read, bar, log)
            _feed_pages(live, source.fetch_events(listed.events.keys() - read.keys()), read, bar, log)
        else:
            needed = set().union(*(wanted for _, wanted in plans.values()))
            _feed_pages(live, source.fetch_events(uuid for uuid in listed.events if uuid in needed), read, bar, log)
    finally:
        bar.close()
        for run, engine in live:
            run.guard(log, engine.flush_all)  # what was planned is sent even after a MISP error
            if run.skipped_file is not None:
                run.skipped_file.close()
    reading = "event" if scope is not None else "full" if full_reasons else "incremental"
    alive = _once(source.alive_event_uuids)
    for run, engine in live:
        report = run.report
        report.full_read, report.events_listed, report.events_read_in_full = "; ".join(full_reasons), len(listed.events), len(read)
        unchanged = listed.events.keys() - plans.get(id(run), ("", set()))[1] - read.keys()
        run.guard(log, functools.partial(engine.keep_unchanged, unchanged))
        run.guard(log, functools.partial(engine.remove_gone, read.keys(), listed.events.keys(), alive, allow_mass_delete, scope))
        run.guard(log, functools.partial(engine.fill, allow_mass_delete))
        run.guard(log, functools.partial(engine.settle, read, listed.events.keys(), reading, run.fingerprint))
        run.report.progress.close()


def _read_plans(live: list[tuple[TargetRun, Engine]], listed: Mapping[str, EventStamp], asked: str,
                log: RequestLog) -> dict[int, tuple[str, set[str]]]:
    """Each target's read plan, by id of its run; a target whose store fails here fails alone."""
    plans: dict[int, tuple[str, set[str]]] = {}
    for run, engine in live:
        def read_plan(run: TargetRun = run, engine: Engine = engine) -> None:
            plans[id(run)] = engine.read_plan(listed, asked, run.fingerprint)
        run.guard(log, read_plan)
    return plans


def _feed_pages(live: list[tuple[TargetRun, Engine]], pages: Iterator[list[dict[str, Any]]], read: dict[str, EventStamp],
                bar: tqdm[Any], log: RequestLog) -> None:
    """Transform each page for every target, then mark its indicators seen; `read` gains the
    clocks of each event read (not of one that could not be read as a whole)."""
    for page in pages:
        for event in page:
            uuids = {_feed(run, engine, event, log) for run, engine in live if not run.failure} - {""}
            read.update((uuid, stamp_of(event)) for uuid in uuids)
        bar.update(len(page))
        for run, engine in live:
            run.guard(log, engine.commit_seen)


def _feed(run: TargetRun, engine: Engine, event: Any, log: RequestLog) -> str:
    result = run.transformer.transform(event)
    run.report.add_event(result)
    run.log_skips(result.skips, log)
    failed = [skip for skip in result.skips if skip.reason is SkipReason.INTERNAL_ERROR]
    if failed:  # a bug, not a data problem: it goes to the error files as well
        log.error("transform", f"{len(failed)} attributes of MISP event {failed[0].event_uuid} could not be transformed",
                  event_uuid=failed[0].event_uuid, attributes=[{"uuid": s.attribute_uuid, "error": s.detail} for s in failed])
    engine.keep([skip.attribute_uuid for skip in failed], result.event_uuid)
    engine.note_decayed([skip.attribute_uuid for skip in result.skips if skip.reason is SkipReason.DECAYED])
    for indicator in result.indicators:
        run.guard(log, functools.partial(engine.offer, indicator, result.event_uuid))
    return result.event_uuid


def _once(compute: Callable[[], set[str] | None]) -> Callable[[], set[str] | None]:
    """The alive-event search is asked by each target; MISP answers it once."""
    cache: list[set[str] | None] = []

    def cached() -> set[str] | None:
        if not cache:
            cache.append(compute())
        return cache[0]
    return cached

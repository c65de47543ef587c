"""--explain VALUE-or-UUID: why an attribute was (or was not) sent, per target, read-only.

It asks MISP for the matching attributes and their events, runs the same filters and transforms
as a sync, and plans each indicator against the target's state opened read-only: nothing is
sent to Microsoft and no state or lock is written.
"""
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import targets
from constants import ExitCode
from engine import Engine
from misp_source import MispSource
from misp_transformer import DecayPolicy, EventResult, event_attributes
from reconcile import plan
from report import shown_value, skipped_records
from request_log import RequestLog
from settings import ConfigError, Settings, TargetSettings
from state_store import StateStore
from sync import make_engine, policy_from, state_paths


def explain(settings: Settings, log: RequestLog, needle: str, out: TextIO) -> ExitCode:
    """Print the decision for every attribute whose uuid or value is `needle`; a blank one is
    refused (MISP would take an empty value as no filter and return every attribute)."""
    if not needle.strip():
        raise ConfigError("--explain needs an attribute's value or UUID, not an empty text")
    settings.require_misp()
    source = MispSource(settings, log)
    attributes = source.attributes(needle.strip())
    if not attributes:
        out.write(f"no MISP attribute has the uuid or value {shown_value(log, needle)!r}\n")
        return ExitCode.NOT_FOUND
    now = dt.datetime.now(dt.UTC)
    decay, _ = source.decay_policy()
    with contextlib.ExitStack() as stack:
        engines = [_open_target(settings, spec, log, now, stack) for spec in settings.targets]
        for attribute in attributes:
            out.write(_explain_attribute(settings, source, log, engines, attribute, now, decay))
    return ExitCode.OK


def _open_target(settings: Settings, spec: TargetSettings, log: RequestLog, now: dt.datetime,
                 stack: contextlib.ExitStack) -> Engine:
    """A target's engine without a connection (nothing can be sent) over its state opened read-only."""
    store = StateStore.read_only(state_paths(settings, spec)[1])
    stack.callback(store.close)
    engine = make_engine(settings, targets.adapter(settings, spec, log, online=False), store, log, now, online=False)
    stack.callback(engine.close)
    return engine


def _explain_attribute(settings: Settings, source: MispSource, log: RequestLog, engines: list[Engine],
                       attribute: Mapping[str, Any], now: dt.datetime, decay: DecayPolicy | None) -> str:
    uuid = str(attribute.get("uuid", "")).lower()
    event_header = attribute.get("Event")
    header: Mapping[str, Any] = event_header if isinstance(event_header, Mapping) else {}
    event_uuid = str(header.get("uuid", "")).lower()
    lines = [f"attribute {uuid} ({attribute.get('type')}) {shown_value(log, str(attribute.get('value', '')))!r} "
             f"in MISP event {event_uuid} {shown_value(log, str(header.get('info', '')))!r}"]
    synced, notes = _as_synced(settings, source, event_uuid, uuid)
    lines += [f"  NOT SENT: {note}" for note in notes]
    event = synced or source.event(event_uuid, {})
    if event is None:
        return "\n".join([*lines, "  MISP does not return its event (deleted, or not visible to this API key)"]) + "\n"
    if notes:
        lines.append("  were it selected:")
    for spec, engine in zip(settings.targets, engines, strict=True):
        result = engine.adapter.transformer(policy_from(settings, spec, decay), now).transform(event)
        lines += [f"  {engine.report.target}: {decision}" for decision in _decisions(engine, result, uuid, log)]
    return "\n".join(lines) + "\n"


def _as_synced(settings: Settings, source: MispSource, event_uuid: str, uuid: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The event as a sync reads it (the first filter's shape), or why a sync does not read it:
    a filter that does not select the event, or one that leaves the attribute out of it."""
    primary = settings.misp_event_filters[0]
    event = source.event(event_uuid, primary)
    notes = [f"misp_event_filters[{index}] {one!r} does not select MISP event {event_uuid} "
             "(unpublished, outside the time window, or excluded by its tags)"
             for index, one in enumerate(settings.misp_event_filters)
             if (event if index == 0 else source.event(event_uuid, {**one, "metadata": True})) is None]
    if notes or event is None:
        return None, notes
    if uuid not in set(_attribute_uuids(event)):
        return None, [f"misp_event_filters[0] {primary!r} leaves this attribute out of its event "
                      "(not to_ids, on a warninglist, or excluded by a tag)"]
    return event, []


def _attribute_uuids(wrapped: Mapping[str, Any]) -> Iterator[str]:
    for attribute, _ in event_attributes(wrapped.get("Event", wrapped)):
        yield str(attribute.get("uuid", "")).lower()


def _budget_decision(budget: targets.Budgeted, key: str, indicator: dict[str, Any]) -> str:
    """A newcomer to a budgeted target is sent only if the whole read ranks it within the budget,
    which one attribute cannot tell."""
    return (f"sends {key} only if it ranks among the {budget.budget} most valuable (rank {list(budget.rank_of(indicator))}: "
            "action, confidence, threat level, event time); else it is counted over-budget, as the last run's "
            "logs/*_over-budget-* file lists")


def _decisions(engine: Engine, result: EventResult, uuid: str, log: RequestLog) -> list[str]:
    """What a sync would do with this attribute on this target: each indicator's plan, or the skip."""
    skips = skipped_records([skip for skip in result.skips if skip.attribute_uuid.lower() == uuid], log)
    decisions = [f"skipped: {record['reason']}" + (f" ({record['detail']})" if record["detail"] else "") for record in skips]
    for indicator in result.indicators:
        if engine.adapter.attribute_of(indicator) != uuid:
            continue
        key = engine.adapter.key_of(indicator)
        row = engine.store.known(key)
        if row is None and isinstance(engine.adapter, targets.Budgeted):
            decisions.append(_budget_decision(engine.adapter, key, indicator))
            continue
        remote = engine.queued(key, indicator, "", row).remote_id  # a retired id's successor, where ids are retired
        where = f" (service id {remote})" if remote and remote != key else ""
        action = plan(row, indicator, engine.renew_before, engine.adapter.hash_rules, engine.decay_expiry(indicator))
        decisions.append(f"sends {key}{where}: {action.value}")
    return decisions or ["no indicator and no skip (the transform did not see this attribute)"]

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

from constants import ExitCode
from misp_source import MispSource
from misp_transformer import EventResult, GraphTransformer, StixTransformer, event_attributes
from reconcile import plan, renewal_threshold
from request_log import RequestLog
from settings import ConfigError, Settings, TargetSettings
from state_store import StateStore
from sync import Target, make_target, policy_from, shown_value, skipped_records, state_paths


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
    with contextlib.ExitStack() as stack:
        targets = [_open_target(settings, spec, log, now, stack) for spec in settings.targets]
        for attribute in attributes:
            out.write(_explain_attribute(settings, source, log, targets, attribute, now))
    return ExitCode.OK


def _open_target(settings: Settings, spec: TargetSettings, log: RequestLog, now: dt.datetime,
                 stack: contextlib.ExitStack) -> Target:
    """A target without a client (nothing can be sent) over its state opened read-only."""
    store = StateStore.read_only(state_paths(settings, spec)[1])
    stack.callback(store.close)
    target = make_target(settings, spec, log, store, now, dry_run=True)
    stack.callback(target.close)
    return target


def _explain_attribute(settings: Settings, source: MispSource, log: RequestLog, targets: list[Target],
                       attribute: Mapping[str, Any], now: dt.datetime) -> str:
    uuid = str(attribute.get("uuid", "")).lower()
    header = attribute.get("Event") if isinstance(attribute.get("Event"), Mapping) else {}
    event_uuid = str(header.get("uuid", "")).lower()
    lines = [f"attribute {uuid} ({attribute.get('type')}) {shown_value(log, str(attribute.get('value', '')))!r} "
             f"in MISP event {event_uuid} {shown_value(log, str(header.get('info', '')))!r}"]
    synced, notes = _as_synced(settings, source, event_uuid, uuid)
    lines += [f"  NOT SENT: {note}" for note in notes]
    event = synced or source.event(event_uuid, {})
    if event is None:
        return "\n".join(lines + ["  MISP does not return its event (deleted, or not visible to this API key)"]) + "\n"
    if notes:
        lines.append("  were it selected:")
    for target in targets:
        transformer = GraphTransformer if target.kind == "graph" else StixTransformer
        result = transformer(policy_from(settings), now).transform(event)
        lines += [f"  {target.report.target}: {decision}" for decision in _decisions(target, result, uuid, log, now)]
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
    if notes:
        return None, notes
    if uuid not in set(_attribute_uuids(event)):
        return None, [f"misp_event_filters[0] {primary!r} leaves this attribute out of its event "
                      "(not to_ids, on a warninglist, or excluded by a tag)"]
    return event, []


def _attribute_uuids(wrapped: Mapping[str, Any]) -> Iterator[str]:
    for attribute, _ in event_attributes(wrapped.get("Event", wrapped)):
        yield str(attribute.get("uuid", "")).lower()


def _decisions(target: Target, result: EventResult, uuid: str, log: RequestLog, now: dt.datetime) -> list[str]:
    """What a sync would do with this attribute on this target: each indicator's plan, or the skip."""
    skips = skipped_records([skip for skip in result.skips if skip.attribute_uuid.lower() == uuid], log)
    decisions = [f"skipped: {record['reason']}" + (f" ({record['detail']})" if record["detail"] else "") for record in skips]
    renew_before = renewal_threshold(now, target.settings.renew_days)
    for indicator in result.indicators:
        if _attribute_key(indicator) != uuid:
            continue
        key = target.key_of(indicator)
        known = target.store.known(key)
        remote = target.prepare(key, indicator, "", known).remote_id  # Sentinel: a revoked id's successor
        where = f" (service id {remote})" if remote and remote != key else ""
        decisions.append(f"sends {key}{where}: {plan(known, indicator, renew_before).value}")
    return decisions or ["no indicator and no skip (the transform did not see this attribute)"]


def _attribute_key(indicator: Mapping[str, Any]) -> str:
    """The attribute an indicator came from: Graph's externalId, or the STIX MISP reference."""
    if "externalId" in indicator:
        return str(indicator["externalId"]).lower()
    references = indicator.get("external_references") or [{}]
    return str(references[0].get("external_id", "")).lower()

"""Delivery, confirmed: what each service really holds of what the state says was sent.

A 200 from Sentinel's upload API does not mean an analytics rule can match the indicator: a
pattern Sentinel cannot parse is stored with an empty ObservableKey, and ingestion rules may drop
or rewrite objects up to 15 minutes later (lifecycle.md §5). A Sentinel workspace is therefore
checked in its `ThreatIntelIndicators` table through the Log Analytics query API; Graph and
Defender through their own listing (the one `-r` and `--rebuild-state` read), compared with the
state's content hash.

The judging is pure (`judge_table_row`, `judge_listed`); `verify` wires one target: it reads the
state, asks the service, stores each verdict, and logs every unparsed, missing or deleted one.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import constants as C
from constants import Delivery
from loganalytics_client import LogAnalyticsClient, connection, table_id
from misp_transformer import iso_utc, service_moment
from request_log import JsonLines, RequestLog
from settings import Settings, TargetSettings
from state_store import StateRow, StateStore

if TYPE_CHECKING:
    from targets import Adapter


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One indicator's status; `shown` is its pattern (Sentinel) or value (Graph, Defender)."""

    row: StateRow
    status: Delivery
    detail: str = ""
    shown: str = ""


def _same_moment(seen: Any, sent: Any) -> bool:
    """Both the same instant, or both unset; an unreadable one matches nothing."""
    if seen in (None, "") and sent in (None, ""):
        return True
    moment = service_moment(seen)
    return moment is not None and moment == service_moment(sent)


def _flag(value: Any) -> bool:
    """A bool column, also when it arrives as text."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _number(value: Any) -> Any:
    """An int column, also when it arrives as text; anything else as it came."""
    return int(value) if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() else value


def young(row: StateRow, now: dt.datetime, wait: dt.timedelta) -> bool:
    """Sent too recently to call its absence a loss (ingestion lag, ingestion rules)."""
    sent = service_moment(row.sent_at)
    return sent is not None and now - sent < wait


def _absent(row: StateRow, now: dt.datetime, wait: dt.timedelta, why: str, shown: str) -> Verdict:
    return Verdict(row, Delivery.PENDING if young(row, now, wait) else Delivery.MISSING, why, shown)


def judge_table_row(row: StateRow, seen: Mapping[str, Any] | None, now: dt.datetime, wait: dt.timedelta) -> Verdict:
    """A STIX indicator as sent (the state's body) against its latest `ThreatIntelIndicators` row."""
    sent = json.loads(row.body) if row.body else {}
    pattern = str(sent.get("pattern", ""))
    if seen is None:
        return _absent(row, now, wait, "no row in ThreatIntelIndicators", pattern)
    if _flag(seen.get("IsDeleted")):
        return Verdict(row, Delivery.DELETED, "IsDeleted in ThreatIntelIndicators", pattern)
    if not _same_moment(seen.get("Modified"), sent.get("modified")):
        return _absent(row, now, wait, f"the table holds the version modified {seen.get('Modified')}, "
                                       f"not {sent.get('modified')}", pattern)
    if not seen.get("ObservableKey"):  # the pattern Sentinel holds is the one it could not parse
        return Verdict(row, Delivery.UNPARSED, "empty ObservableKey: Sentinel could not parse the pattern",
                       str(seen.get("Pattern") or pattern))
    rewritten = []
    if _number(seen.get("Confidence")) != sent.get("confidence"):
        rewritten.append(f"confidence {seen.get('Confidence')!r} (sent {sent.get('confidence')!r})")
    if not _same_moment(seen.get("ValidUntil"), sent.get("valid_until")):
        rewritten.append(f"expiry {seen.get('ValidUntil')!r} (sent {sent.get('valid_until')!r})")
    if rewritten:
        return Verdict(row, Delivery.REWRITTEN, "; ".join(rewritten), pattern)
    return Verdict(row, Delivery.DELIVERED, "", pattern)


def judge_listed(row: StateRow, listed: StateRow | None, now: dt.datetime, wait: dt.timedelta, shown: str) -> Verdict:
    """A Graph or Defender indicator against what the listing rebuilds of it (same key)."""
    if listed is None:
        return _absent(row, now, wait, "not in the service's listing", shown)
    if listed.content_hash != row.content_hash:
        return Verdict(row, Delivery.DIFFERS, "its content in the service is not what was sent", shown)
    return Verdict(row, Delivery.DELIVERED, "", shown)


def counts(verdicts: list[Verdict]) -> dict[str, int]:
    """Per status, every status named (0 included), in the order of constants.Delivery."""
    found = collections.Counter(verdict.status for verdict in verdicts)
    return {status.value: found[status] for status in Delivery}


def observe_workspace(settings: Settings, spec: TargetSettings, rows: list[StateRow], log: RequestLog,
                      now: dt.datetime, wait: dt.timedelta) -> list[Verdict]:
    """Each row judged by its latest `ThreatIntelIndicators` row."""
    client = LogAnalyticsClient(connection(settings), spec.workspace_id, log)
    try:
        ids = {table_id(settings.sourcesystem, row.remote_id): row for row in rows}
        seen = {str(found["Id"]): found for found in client.latest_rows(settings.sourcesystem, list(ids))}
    finally:
        client.session.close()
    return [judge_table_row(row, seen.get(ident), now, wait) for ident, row in ids.items()]


def observe_listing(adapter: Adapter, rows: list[StateRow], now: dt.datetime, wait: dt.timedelta) -> list[Verdict]:
    """Each row judged by what the adapter's listing rebuilds under the same key."""
    listed = {found.external_id: found for found in adapter.read_back(now).rows}
    return [judge_listed(row, listed.get(row.external_id), now, wait, adapter.row_value(row)) for row in rows]


def verify(settings: Settings, spec: TargetSettings, adapter: Adapter, store: StateStore, log: RequestLog,
           now: dt.datetime) -> dict[str, int]:
    """Check every indicator the state holds; store the verdicts, log the undelivered ones, and
    return the counts. A workspace target is read in its Log Analytics table (only it has one)."""
    wait = dt.timedelta(minutes=settings.verify_after_minutes)
    rows = store.owned_rows()
    verdicts = (observe_workspace(settings, spec, rows, log, now, wait) if spec.workspace_id
                else observe_listing(adapter, rows, now, wait))
    store.record_deliveries(((v.row.external_id, v.row.remote_id, v.status.value, v.detail) for v in verdicts), iso_utc(now))
    lost = JsonLines(log, f"{C.DELIVERY_LOG}-{adapter.kind}")
    try:
        lost.write([{"target": adapter.label, "status": v.status.value, "key": v.row.external_id, "id": v.row.remote_id,
                     "sent_at": v.row.sent_at, "detail": v.detail, ("pattern" if spec.workspace_id else "value"): v.shown}
                    for v in verdicts if v.status in C.UNDELIVERED])
    finally:
        lost.close()
    return counts(verdicts)

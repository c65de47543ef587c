"""Matches in a target come back to MISP as sightings (README "Sightings"; lifecycle.md §4).

A target that can say what its alerts matched (targets.Sighted) yields Match records for a time
window; each is resolved through the state store to the MISP attributes whose indicators it hit,
and each (attribute, UTC day) gets one type-0 sighting, posted by attribute uuid at the earliest
match of that day. The store remembers what was posted (and marks a post `pending` before it is
sent), so a re-run, an overlapping window or a kill -9 never posts twice; when the store cannot
know (a first run, a lost state, a post a kill interrupted) MISP is asked first.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import constants as C
from misp_transformer import iso_utc, service_moment
from request_log import JsonLines, RequestLog
from state_store import StateRow, StateStore

POSTED, PENDING = "posted", "pending"


@dataclasses.dataclass(frozen=True)
class Match:
    """One alert's hit, as the service reports it: the indicator (our key or the service's id)
    when the alert names it, else the observable it matched."""

    moment: dt.datetime | None  # when the service raised the alert (UTC); None: the alert's time is unreadable
    evidence: str  # the service's alert id: one alert may yield several matches
    key: str = ""
    value: str = ""


@runtime_checkable
class Sighted(Protocol):
    """A target whose alerts can be read back as matches of its indicators."""

    kind: str
    label: str
    matches_permission: str  # what reading the alerts needs, in the service's words
    matches_fix: str  # how to grant it

    def matches(self, since: dt.datetime, until: dt.datetime) -> Iterator[Match]:
        """Every match raised in [since, until]."""
        ...

    def probe_matches(self) -> None:
        """`--check`: one harmless read of the alerts (MicrosoftError when it is refused)."""
        ...

    def attribute_of(self, indicator: dict[str, Any]) -> str:
        ...

    def row_value(self, row: StateRow) -> str:
        ...


class SightingSink(Protocol):
    """Where sightings go: MISP (misp_source.MispSource)."""

    def add_sighting(self, attribute_uuid: str, source: str, moment: int) -> str:
        """Post one type-0 sighting by attribute uuid; "" when MISP saved it, else MISP's reason."""
        ...

    def has_sighting(self, attribute_uuid: str, source: str, day: str) -> bool:
        """Whether the attribute already carries a type-0 sighting from `source` on that UTC day."""
        ...


@dataclasses.dataclass
class SightingCounts:
    """What one target's sightings run did; the run report's `sightings`."""

    alerts: int = 0  # alerts read in the window
    posted: int = 0
    duplicates: int = 0  # already posted (by an earlier run, or found in MISP)
    refused: int = 0  # MISP answered that it could not add them (each under logs/)
    not_ours: int = 0  # alerts naming no indicator this target holds for us
    unreadable: int = 0  # alerts whose time cannot be read (never sighted: MISP needs the time)
    recovered: int = 0  # posts a killed run left unconfirmed, found in MISP
    deferred: int = 0  # left for the next run by the volume guard

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def value_key(value: str) -> str:
    """How a matched observable is compared with ours: a URL exactly, anything else without case."""
    text = value.strip()
    return text if "://" in text else text.lower()


def id_key(ident: str) -> str:
    """How an indicator id is compared: a STIX id without case (Sentinel's ids are uuids), any
    other key exactly (Defender's keys are already as Defender compares them: a URL with case)."""
    return ident.lower() if C.STIX_INDICATOR_ID_SEARCH_RE.fullmatch(ident) else ident


class Holdings:
    """Which MISP attribute each indicator the target holds came from: by our key, by the
    service's id, and by its observable (an alert that names no indicator)."""

    def __init__(self, rows: Iterable[StateRow], target: Sighted) -> None:
        self.target = target
        self.by_id: dict[str, set[str]] = collections.defaultdict(set)
        self.by_value: dict[str, set[str]] = collections.defaultdict(set)
        self.add(rows)

    def add(self, rows: Iterable[StateRow]) -> None:
        """More indicators the target holds, or held earlier in this run (a sync removes before its sightings)."""
        target = self.target
        for row in rows:
            attribute = target.attribute_of(json.loads(row.body)) if row.body else ""
            if not attribute:
                continue
            self.by_id[id_key(row.external_id)].add(attribute)
            if row.remote_id:
                self.by_id[id_key(row.remote_id)].add(attribute)
            if value := target.row_value(row):
                self.by_value[value_key(value)].add(attribute)

    def attributes(self, match: Match) -> set[str]:
        if match.key and id_key(match.key) in self.by_id:
            return self.by_id[id_key(match.key)]
        return self.by_value.get(value_key(match.value), set()) if match.value else set()


def day_of(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).date().isoformat()


def window_end(store: StateStore, now: dt.datetime) -> dt.datetime | None:
    """The end of the last complete window; None on a first run, or when it lies in the future
    (the clock went back): then the store's posted days no longer cover the window read."""
    recorded = store.meta(C.SIGHTINGS_WINDOW_META)
    last = dt.datetime.fromisoformat(recorded.replace("Z", "+00:00")) if recorded else None
    return last if last is not None and last <= now else None


def window(store: StateStore, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """From the end of the last complete window (less the overlap for late alerts) to now;
    without one (window_end), SIGHTINGS_FIRST_DAYS back, or from where a first window the
    volume guard left unfinished began."""
    last = window_end(store, now)
    if last is not None:
        return last - C.SIGHTINGS_OVERLAP, now
    started = service_moment(store.meta(C.SIGHTINGS_START_META) or "")
    first = now - dt.timedelta(days=C.SIGHTINGS_FIRST_DAYS)
    return (min(started, first) if started is not None and started <= now else first), now


def wanted_sightings(matches: Iterable[Match], holdings: Holdings, since: dt.datetime, until: dt.datetime,
                     counts: SightingCounts) -> dict[tuple[str, str], dt.datetime]:
    """(attribute uuid, UTC day) -> the earliest match of that day; counts the alerts read, those
    that hit nothing of ours and those without a readable time."""
    wanted: dict[tuple[str, str], dt.datetime] = {}
    hits: dict[str, bool] = {}
    unreadable: set[str] = set()
    for match in matches:
        if match.moment is None:
            unreadable.add(match.evidence)
            continue
        if not since <= match.moment <= until:
            continue
        found = holdings.attributes(match)
        hits[match.evidence] = hits.get(match.evidence, False) or bool(found)
        for attribute in found:
            slot = (attribute, day_of(match.moment))
            if slot not in wanted or match.moment < wanted[slot]:
                wanted[slot] = match.moment
    counts.alerts = len(hits) + len(unreadable)
    counts.not_ours = sum(not hit for hit in hits.values())
    counts.unreadable = len(unreadable)
    return wanted


class Poster:
    """Posts the sightings of one target, one at a time, each recorded before and after."""

    def __init__(self, target: Sighted, store: StateStore, sink: SightingSink, source: str, log: RequestLog,
                 now: dt.datetime) -> None:
        self.target, self.store, self.sink, self.source, self.log = target, store, sink, source, log
        # No trusted window end: the week read may hold days the store pruned, so ask MISP first.
        self.careful = window_end(store, now) is None
        self.counts = SightingCounts()
        self.asked = 0  # read-backs this run
        store.open_sightings()
        self._refused: JsonLines | None = None

    def full(self, reads: bool) -> bool:
        """The volume guard: at most SIGHTINGS_MAX_POSTS posts per run, and as many read-backs
        (after a lost state, every slot of an alert storm would be one restSearch)."""
        return self.counts.posted + self.counts.refused >= C.SIGHTINGS_MAX_POSTS or (reads and self.asked >= C.SIGHTINGS_MAX_POSTS)

    def post(self, attribute: str, day: str, moment: dt.datetime) -> None:
        status = self.store.sighting_status(attribute, day)
        if status == POSTED:
            self.counts.duplicates += 1
            return
        reads = status == PENDING or self.careful
        if self.full(reads):
            self.counts.deferred += 1
            return
        if reads:
            self.asked += 1
            if self.sink.has_sighting(attribute, self.source, day):
                self.store.mark_sighting(attribute, day, moment, POSTED)
                if status == PENDING:
                    self.counts.recovered += 1
                else:
                    self.counts.duplicates += 1
                return
        self.store.mark_sighting(attribute, day, moment, PENDING)
        reason = self.sink.add_sighting(attribute, self.source, int(moment.timestamp()))
        if reason:
            self.store.forget_sighting(attribute, day)
            self.counts.refused += 1
            self._log_refusal(attribute, moment, reason)
        else:
            self.store.mark_sighting(attribute, day, moment, POSTED)
            self.counts.posted += 1

    def _log_refusal(self, attribute: str, moment: dt.datetime, reason: str) -> None:
        self._refused = self._refused or JsonLines(self.log, f"{C.SIGHTINGS_REFUSED_LOG}-{self.target.kind}")
        self._refused.write([{"target": self.target.label, "attribute_uuid": attribute, "moment": iso_utc(moment),
                              "source": self.source, "reason": self.log.scrub(reason)}])

    def close(self) -> None:
        if self._refused is not None:
            self._refused.close()


def report_matches(target: Sighted, store: StateStore, sink: SightingSink, source: str, log: RequestLog,
                   now: dt.datetime, held: Holdings | None = None) -> SightingCounts:
    """Post the sightings of every match since the last complete window. The window moves on
    only when every sighting in it was posted or refused (not when the volume guard deferred
    some, nor when MISP failed: the error propagates and the next run reads the window again).
    `held`: what the target held when the sync began, so a match of an indicator the sync has
    just removed (decayed, deleted in MISP) still reaches MISP."""
    since, until = window(store, now)
    poster = Poster(target, store, sink, source, log, now)
    holdings = held or Holdings((), target)
    holdings.add(store.each_owned())
    try:
        wanted = wanted_sightings(target.matches(since, until), holdings, since, until, poster.counts)
        for attribute, day, moment in store.pending_sightings():
            wanted.setdefault((attribute, day), moment)
        for (attribute, day), moment in sorted(wanted.items(), key=lambda item: (item[1], item[0])):
            poster.post(attribute, day, moment)
    finally:
        poster.close()
    if poster.counts.deferred:  # a first window keeps its start, so the next run posts its oldest matches too
        store.set_meta(C.SIGHTINGS_START_META, iso_utc(since))
    else:
        store.set_meta(C.SIGHTINGS_WINDOW_META, iso_utc(until))
        store.set_meta(C.SIGHTINGS_START_META, "")
        store.prune_sightings(day_of(since - dt.timedelta(days=1)))
    return poster.counts

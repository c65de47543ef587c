"""Decide, per indicator, what a run must do in its target: pure functions over hashes and dates.

The state store remembers what was sent; this module compares it with what MISP wants now.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import constants as C
from misp_transformer import stix_time
from state_store import SENT, StateRow

_EVENT_UUID_RE = re.compile(r"^MISP event: ([0-9a-fA-F-]{36})$", re.MULTILINE)


class Action(enum.Enum):
    NEW = "new"
    UPDATE = "update"
    REPLACE = "replace"
    RENEW = "renew"
    UNCHANGED = "unchanged"


def _digest(fields: Mapping[str, Any]) -> str:
    """An absent field, null and an empty list are the same (Graph echoes a cleared collection as [])."""
    present = {name: value for name, value in fields.items() if value is not None and value != []}
    text = json.dumps(present, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class HashRules:
    """Which of a service's fields count as content: its adapter says, the engine compares."""

    volatile: frozenset[str]  # change without the indicator changing (expiry, ids the service stamps)
    updatable: frozenset[str] = frozenset()  # an update may change them; a change elsewhere is a replacement


def content_hash(indicator: Mapping[str, Any], rules: HashRules) -> str:
    """Hash of everything we send except the volatile fields; the same for our dict and the service's echo."""
    return _digest({k: v for k, v in indicator.items() if k not in rules.volatile and not k.startswith("@")})


def immutable_hash(indicator: Mapping[str, Any], rules: HashRules) -> str:
    """Hash of the fields an update cannot change (Graph's observables, threatType, target):
    when it changes, the indicator is replaced."""
    return _digest({k: v for k, v in indicator.items()
                    if k not in rules.updatable and k not in rules.volatile and not k.startswith("@")})


def parse_expiry(value: Any) -> dt.datetime | None:
    """Graph's expirationDateTime (with Z or an offset) as an aware datetime."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def event_uuid_of(indicator: Mapping[str, Any], field: str = "additionalInformation") -> str:
    """The MISP event an indicator came from, as its long text (`field`) names it."""
    match = _EVENT_UUID_RE.search(str(indicator.get(field, "")))
    return match.group(1).lower() if match else ""


@dataclasses.dataclass(frozen=True)
class DecayExpiry:
    """With a decaying model, an expiry is the moment the score will cross the threshold, when
    that comes before the fixed one (`fixed_until`, now + days_to_expire)."""

    wanted: dt.datetime | None  # the expiry the indicator has now
    fixed_until: dt.datetime

    def due(self, sent: dt.datetime, renew_before: dt.datetime) -> bool:
        """The sent expiry must be sent again. A crossing is moved only when it moved (a sighting
        restarted the clock, the threshold changed): renewing it unmoved, in its last renew_days,
        would re-send it every night for nothing. A fixed expiry gets the usual renewal, and one
        later than wanted (the score will cross sooner) is brought forward."""
        if self.wanted is None:
            return sent <= renew_before
        tolerance = dt.timedelta(seconds=C.DECAY_EXPIRY_TOLERANCE_SECONDS)
        if self.wanted < self.fixed_until - tolerance:
            return abs(self.wanted - sent) > tolerance
        return sent > self.wanted + tolerance or sent <= renew_before


def plan(row: StateRow | None, indicator: Mapping[str, Any], renew_before: dt.datetime, rules: HashRules,
         decay: DecayExpiry | None = None) -> Action:
    """What to do with one desired indicator, given its state row (or None). A row still
    `pending` may never have arrived, so it is sent again as new."""
    if row is None or row.status != SENT:
        return Action.NEW
    if immutable_hash(indicator, rules) != row.immutable_hash:
        return Action.REPLACE
    if content_hash(indicator, rules) != row.content_hash:
        return Action.UPDATE
    expires = parse_expiry(row.expires_at)
    if expires is None:
        return Action.RENEW
    due = decay.due(expires, renew_before) if decay is not None else expires <= renew_before
    return Action.RENEW if due else Action.UNCHANGED


def renewal_threshold(now: dt.datetime, renew_days: float) -> dt.datetime:
    """Indicators expiring before this moment are extended on this run."""
    return now + dt.timedelta(days=renew_days)


def clock_problem(previous_start: str | None, now: dt.datetime, days_to_expire: int) -> str:
    """Why this run must not forget or remove anything because the clock moved (else "").

    A clock that went backwards, or forward by more than an indicator lives, would make every
    removal and expiry decision wrong: the run still sends, but forgets and removes nothing."""
    previous = parse_expiry(previous_start)
    if previous is None:
        return ""
    if now < previous:
        return f"the clock is behind the previous run's start ({previous_start}) by {previous - now}"
    if now - previous > dt.timedelta(days=days_to_expire):
        return (f"the clock is {(now - previous).days} days past the previous run's start ({previous_start}), "
                f"more than days_to_expire {days_to_expire}")
    return ""


def next_modified(candidate: str, previous: str | None) -> str:
    """A STIX `modified` later than the last version sent, even when the local clock is behind
    (the service refuses a version that is not newer)."""
    last = parse_expiry(previous)
    if last is None or (parse_expiry(candidate) or last) > last:
        return candidate
    return stix_time(last + dt.timedelta(milliseconds=1))


def mass_delete_blocked(to_delete: int, owned: int, max_fraction: float) -> bool:
    """The safety valve: deleting more than this share of what we own looks like a broken fetch."""
    return owned > 0 and to_delete > max_fraction * owned


def full_read_reason(asked: str, last_full: str | None, fingerprint_before: str | None, fingerprint: str,
                     now: dt.datetime, every_days: int, clock: str) -> str:
    """Why this run must read every listed event in full ("" when reading only the changed ones
    is enough). `asked` names a command-line request for it. Warning lists and decay change what
    MISP returns without moving any timestamp, so a full read comes round every `every_days`
    (0: every run)."""
    last = parse_expiry(last_full)
    reasons = (
        (bool(asked), asked),
        (last is None, "no record of an earlier full read"),
        (fingerprint_before != fingerprint, "the settings or the tool's version changed"),
        (bool(clock), "the clock moved"),
        (last is not None and now - last >= dt.timedelta(days=every_days), f"the last full read is {every_days} or more days old"),
    )
    return next((reason for applies, reason in reasons if applies), "")


def changed_events(listed: Mapping[str, tuple[int, int]], recorded: Mapping[str, tuple[int, int]], due: set[str]) -> set[str]:
    """Listed events to read in full on an incremental run: new ones, those whose `timestamp` or
    `publish_timestamp` differs from the body last settled (compared per event: a synced event
    keeps an older timestamp, so no global cursor would see it), those without clocks, and
    those holding an indicator due for renewal."""
    return {uuid for uuid, stamp in listed.items()
            if recorded.get(uuid) != stamp or 0 in stamp or uuid in due}

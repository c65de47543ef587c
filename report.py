"""The outcome of one target's run: its counts (RunReport), its failure and exit code (TargetRun),
and the texts and records they make (the summary, the run report, last-run.json)."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import sqlite3
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

import constants as C
from constants import ExitCode, SkipReason
from misp_source import MispError
from misp_transformer import EventResult, Skip, Transformer, iso_utc
from ms_client import MicrosoftError
from reconcile import Action
from request_log import JsonLines, LogWriteError, RequestLog
from settings import ConfigError, TargetSettings
from state_store import StoreError, StoreLocked, sqlite_fix

if TYPE_CHECKING:
    from engine import Engine
    from targets import Adapter

# Skips that only confirm MISP's own filtering: not candidates, and capped in the skipped file.
ROUTINE_SKIPS = frozenset({SkipReason.NOT_TO_IDS, SkipReason.CONTEXT, SkipReason.DELETED})


@dataclasses.dataclass
class RunReport:
    """Counts of one run; printed as the summary and written as JSON for monitoring."""

    target: str
    events: int = 0
    attributes: int = 0
    indicators: int = 0
    actions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
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
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    decay_model: str = ""  # misp_decay_model's name, "" when decay is off
    decay: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # C.DECAY_COUNTS
    named_deleted: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (value, reason), the first few
    named_rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    delivery: dict[str, int] = dataclasses.field(default_factory=dict)  # per status, when a verification ran
    sightings: dict[str, int] = dataclasses.field(default_factory=dict)  # sightings.SightingCounts, when they ran
    started: float = dataclasses.field(default_factory=time.monotonic)
    progress: tqdm[Any] = dataclasses.field(default_factory=lambda: tqdm(disable=True), repr=False)

    def add_event(self, result: EventResult) -> None:
        self.events += 1
        self.attributes += result.attributes
        self.indicators += len(result.indicators)
        self.refanged += result.refanged
        self.skipped.update(skip.reason.value for skip in result.skips)
        self.decay.update(result.decay)

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
            "recovered": self.recovered, "refanged": self.refanged, "state_rebuilt": self.rebuilt or None,
            "clock_problem": self.clock_problem or None,
            "deletions_blocked": self.deletions_blocked, "requests": self.requests,
            "skipped": dict(sorted(self.skipped.items())), "decay": self._decay_counts(),
            "seconds": round(time.monotonic() - self.started, 3), "delivery": self.delivery or None,
            "sightings": self.sightings or None,
        }

    def _decay_counts(self) -> dict[str, Any] | None:
        """The run report's `decay`: the model and C.DECAY_COUNTS (None when decay is off)."""
        if not self.decay_model:
            return None
        counts = {**self.decay, "decayed": self.skipped[SkipReason.DECAYED.value]}
        return {"model": self.decay_model, **{name: counts.get(name, 0) for name in C.DECAY_COUNTS}}

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
            + _decay_line(data["decay"])
            + (f"STATE REBUILT from the service: {data['state_rebuilt']}\n" if data["state_rebuilt"] else "")
            + (f"NOTHING FORGOTTEN OR REMOVED: {data['clock_problem']}\n" if data["clock_problem"] else "")
            + _named("deleted", self.named_deleted, self.deleted) + _named("rejected", self.named_rejected, self.rejected)
            + (f"{delivery_line(self.delivery)}\n" if self.delivery else "")
            + (f"{sightings_line(self.sightings)}\n" if self.sightings else "")
            + f"requests to the service: {data['requests']}\nskipped: {skipped}\ntime: {data['seconds']:.2f} s\n"
        )

    def _run_kind(self) -> str:
        kind = f"full read ({self.full_read})" if self.full_read else "incremental read (only changed events)"
        return f"run: {kind}, {self.events_read_in_full} of {self.events_listed} listed events read in full"


def _decay_line(decay: dict[str, Any] | None) -> str:
    if decay is None:
        return ""
    return (f"decay ({decay['model']}): scored {decay['scored']}, decayed {decay['decayed']}, removed as decayed "
            f"{decay['removed_decayed']}, expiry from the model {decay['expiry_from_decay']}, unscored {decay['unscored']}\n")


def delivery_line(found: dict[str, int]) -> str:
    """The summary's line of a verification's counts."""
    return "delivery checked: " + ", ".join(f"{status} {count}" for status, count in found.items())


def sightings_line(counts: dict[str, int]) -> str:
    """The summary's line of a sightings run's counts (sightings.SightingCounts)."""
    extra = "".join(f", {name.replace('_', ' ')} {counts[name]}" for name in ("unreadable", "recovered", "deferred")
                    if counts.get(name))
    return (f"sightings to MISP: posted {counts['posted']}, duplicates {counts['duplicates']}, refused {counts['refused']}"
            f" (alerts read {counts['alerts']}, not ours {counts['not_ours']}{extra})")


def sightings_problem(counts: dict[str, int]) -> str:
    """One line when MISP refused sightings, else ""."""
    refused = counts.get("refused", 0)
    return f"{refused} sightings refused by MISP (each under logs/*_{C.SIGHTINGS_REFUSED_LOG}-*.jsonl)" if refused else ""


def undelivered(found: dict[str, int]) -> int:
    """How many a cron job must hear of: unparsed, missing or deleted."""
    return sum(found.get(status.value, 0) for status in C.UNDELIVERED)


def _named(what: str, named: list[tuple[str, str]], total: int) -> str:
    """Summary lines naming the first indicators of a kind, and where the others are."""
    lines = "".join(f"  {what}: {value}: {reason}\n" for value, reason in named)
    rest = f"  ... and {total - len(named)} more {what} (see logs/)\n" if total > len(named) else ""
    return lines + rest


def shown_value(log: RequestLog, value: str) -> str:
    """A MISP value fit for a log record or a summary line: secrets scrubbed first, then cut."""
    text = log.scrub(value)
    return text if len(text) <= C.VALUE_CUT else text[:C.VALUE_CUT] + "…"


def skipped_records(skips: list[Skip], log: RequestLog) -> list[dict[str, Any]]:
    return [skip.as_dict() | {"reason": skip.reason.value, "value": shown_value(log, skip.value)} for skip in skips]



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
        return ExitCode.CONFIG, f"{exc.filename}: {exc.strerror}: {C.OS_ERROR_FIXES.get(exc.errno or 0, C.OS_ERROR_FIX)}", ""
    if isinstance(exc, sqlite3.OperationalError) and sqlite_fix(exc):
        return ExitCode.CONFIG, f"state_dir: {exc}{sqlite_fix(exc)}", "state"
    return ExitCode.INTERNAL, f"internal error {type(exc).__name__}: {scrub(str(exc))[:300]} (please report)", "internal"


@dataclasses.dataclass
class TargetRun:
    """One target's part of a run. A failure stops this target only; the others go on, and the
    run's exit code is the most serious outcome among them."""

    spec: TargetSettings
    adapter: Adapter
    transformer: Transformer
    report: RunReport
    engine: Engine | None = None  # once its state is open and its token checked
    skipped_file: JsonLines | None = None
    routine_logged: collections.Counter[SkipReason] = dataclasses.field(default_factory=collections.Counter)
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

    def log_skips(self, skips: list[Skip], log: RequestLog) -> None:
        """Every skip goes to this target's skipped file, routine ones capped."""
        logged = self.logged_skips(skips)
        if logged:
            self.skipped_file = self.skipped_file or JsonLines(log, f"skipped-{self.adapter.kind}")
            self.skipped_file.write(skipped_records(logged, log))

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
        if undelivered(self.report.delivery):  # README's order: 9 is more serious than 1
            return ExitCode.UNDELIVERED
        return ExitCode.REJECTED if self.report.rejected or self.report.sightings.get("refused") else ExitCode.OK

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
        rejected = f"{report.rejected} indicators rejected by the service (see logs/)" if report.rejected else ""
        return "; ".join(line for line in (undelivered_problem(report.delivery), rejected, sightings_problem(report.sightings))
                         if line)

    def record(self, dry_run: bool, started: dt.datetime) -> dict[str, Any]:
        """The run report: outcome, times and version as well as the counts, failed runs included."""
        return self.report.as_dict(dry_run) | {
            "exit_code": int(self.exit_code()), "error": self.problem() or None, "started": iso_utc(started),
            "ended": iso_utc(dt.datetime.now(dt.UTC)), "version": C.VERSION,
        }


def undelivered_problem(found: dict[str, int]) -> str:
    """One line when a verification found indicators analytics cannot use, else ""."""
    if not undelivered(found):
        return ""
    named = ", ".join(f"{status.value} {found.get(status.value, 0)}" for status in C.UNDELIVERED)
    return f"{undelivered(found)} indicators not usable in the service ({named}; each under logs/*_{C.DELIVERY_LOG}-*.jsonl)"


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

#!/usr/bin/env python3
"""misp2sentinel: sync published MISP events to Microsoft Graph tiIndicators and Sentinel.

The thin shell: parse the command line, load settings, wire MISP pages -> transformers ->
targets, print the summaries and return a documented exit code.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import functools
import itertools
import json
import os
import signal
import sys
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import constants as C
import delivery
import targets
from check import run_checks
from constants import ExitCode, Outcome
from explain import explain
from misp_source import MispSource
from misp_transformer import DecayPolicy, iso_utc
from ms_client import MicrosoftError
from report import TargetRun, classify, delivery_line, last_run_status, sightings_line, sightings_problem, undelivered_problem
from request_log import LogWriteError, RequestLog
from settings import ConfigError, Settings, TargetSettings, load_settings
from sightings import Holdings, Sighted, SightingCounts, report_matches
from state_store import StateStore, open_store, target_lock
from sync import apply_decay, make_engine, new_run, open_run, run_all, state_paths

HERE = Path(__file__).resolve().parent
# When targets end differently, the exit code reports the most serious outcome.
EXIT_SEVERITY = [ExitCode.OK, ExitCode.REJECTED, ExitCode.UNDELIVERED, ExitCode.SAFETY_VALVE, ExitCode.LOCKED, ExitCode.MICROSOFT,
                 ExitCode.MISP, ExitCode.CONFIG, ExitCode.INTERNAL, ExitCode.INTERRUPTED]
# What -d reports as done: the indicator is deleted, or revoked already.
DELETED = frozenset({Outcome.ACCEPTED, Outcome.ALREADY_REVOKED})


def epilog() -> str:
    """The exit-code table of `--help`, from the one list in constants.ExitCode."""
    return "exit codes:\n" + "".join(f"  {code.value:<3} {code.description.replace('`', '')}\n" for code in ExitCode)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="script.py",
        description="Sync published MISP events to Microsoft Graph security/tiIndicators.",
        epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {C.VERSION}")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("-r", "--read", action="store_true", help="list the indicators this app owns in Graph, as JSON")
    action.add_argument("-d", "--delete", nargs="+", metavar="ID",
                        help="delete indicators by Graph id, or revoke them by STIX id (indicator--…)")
    action.add_argument("--dry-run", action="store_true",
                        help="fetch, transform and plan against the state; write what would be sent to the log directory, send nothing")
    action.add_argument("--check", action="store_true",
                        help="check config, MISP, token and permission for every target; print ✓/✗ per line with the fix")
    action.add_argument("--explain", metavar="VALUE-or-UUID",
                        help="say per target why a MISP attribute (by uuid or value) is sent or not; read-only")
    action.add_argument("--rebuild-state", action="store_true", help="recreate each target's local state from what the service holds")
    action.add_argument("--verify", action="store_true",
                        help="check that what the state says was sent is in each target, parsed and unchanged (README, Delivery checks)")
    action.add_argument("--sightings", action="store_true",
                        help="post the matches of our indicators in Sentinel and Defender since the last sightings run to "
                             "MISP as sightings (README, Sightings)")
    parser.add_argument("--allow-mass-delete", action="store_true",
                        help="let this run delete more than max_delete_fraction of the owned indicators")
    parser.add_argument("--full", action="store_true",
                        help="read every listed event in full, not only the changed ones (as every full_resync_days)")
    parser.add_argument("--event", metavar="UUID", help="sync only this MISP event (removals limited to it too)")
    parser.add_argument("--format", choices=("json", "table", "csv"), default="json", help="output of -r (default json)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only (no summary, no progress bars)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every request body and response")
    parser.add_argument("--config", type=Path, default=HERE / "config.py", metavar="PATH",
                        help="settings file (default: config.py beside script.py)")
    return parser.parse_args(argv)


def sync(settings: Settings, log: RequestLog, args: argparse.Namespace, out: TextIO) -> ExitCode:
    """Reconcile MISP's desired indicators with what each target holds; MISP is read once.
    Every target gets a run report, also when the run stops early."""
    started = dt.datetime.now(dt.UTC)
    runs = [new_run(settings, spec, log, args.dry_run, started) for spec in settings.targets]
    try:
        sync_targets(settings, log, args, runs, started)
    except BaseException as exc:
        code, message, _ = classify(exc, log)
        for run in runs:
            run.stop(code, message)
        raise
    finally:
        write_reports(runs, log, args, started, out)
    for run in runs:
        if run.report.clock_problem:
            sys.stderr.write(f"misp2sentinel: warning: {run.spec.label}: {run.report.clock_problem}; nothing was forgotten or removed\n")
        if run.problem():
            sys.stderr.write(f"misp2sentinel: error: {run.spec.label}: {run.problem()}\n")
    return max((run.exit_code() for run in runs), key=EXIT_SEVERITY.index)


def sync_targets(settings: Settings, log: RequestLog, args: argparse.Namespace, runs: list[TargetRun], now: dt.datetime) -> None:
    """Open every target, then read MISP once; failures land in `runs` or are raised to `sync`."""
    settings.require_misp()
    if not args.dry_run:
        settings.require_microsoft()
    scope = None
    if args.event is not None:  # `--event ""` must not widen the run to every event
        if not args.event.strip():
            raise ConfigError("--event needs a MISP event UUID, not an empty text")
        scope = {args.event.strip().lower()}
        primary, *others = settings.misp_event_filters
        settings = dataclasses.replace(settings, misp_event_filters=({**primary, "uuid": args.event.strip()}, *others))
    progress = sys.stderr.isatty() and not args.quiet
    with contextlib.ExitStack() as stack:
        for run in runs:
            open_run(settings, run, log, args.dry_run, now, stack)
        if not any(run.report.clock_problem for run in runs):  # a jumped clock would make every record look old
            log.prune(settings.log_retention_days)
        try:
            source = MispSource(settings, log)
            apply_decay(settings, runs, decay_policy(source, log), now)
            sighting = settings.report_sightings and not args.dry_run and scope is None
            held = held_before(runs) if sighting else {}
            run_all(runs, source, log, args.allow_mass_delete, scope, progress, args.full)
        finally:
            for run in runs:
                run.report.requests = run.adapter.requests_sent
        if settings.verify_after_minutes and not args.dry_run:
            for run in runs:
                run.guard(log, functools.partial(verify_run, settings, run, log))
        if sighting:
            for run in runs:
                run.guard(log, functools.partial(sight_run, settings, run, source, log, held.get(id(run))))


def verify_run(settings: Settings, run: TargetRun, log: RequestLog) -> None:
    """verify_after_minutes: the run ends with a delivery check of its target."""
    if run.engine is not None:
        run.report.delivery = delivery.verify(settings, run.spec, run.adapter, run.engine.store, log, dt.datetime.now(dt.UTC))


def held_before(runs: list[TargetRun]) -> dict[int, Holdings]:
    """What each target holds before the sync removes anything: its sightings come after, and a
    match of an indicator that decayed away in this very sync must still be posted."""
    return {id(run): Holdings(run.engine.store.each_owned(), run.adapter) for run in runs
            if run.engine is not None and isinstance(run.adapter, Sighted)}


def sight_run(settings: Settings, run: TargetRun, source: MispSource, log: RequestLog, held: Holdings | None) -> None:
    """report_sightings: the run ends with its target's sightings (a target without alerts has none)."""
    if run.engine is not None and isinstance(run.adapter, Sighted):
        counts = target_sightings(settings, run.spec, run.adapter, run.engine.store, source, log, held)
        run.report.sightings = counts.as_dict()
        warn_deferred(run.adapter.label, counts)


def target_sightings(settings: Settings, spec: TargetSettings, adapter: Sighted, store: StateStore, source: MispSource,
                     log: RequestLog, held: Holdings | None = None) -> SightingCounts:
    """One target's matches posted as sightings; a Microsoft failure names the target and the step."""
    try:
        return report_matches(adapter, store, source, settings.sighting_source_for(spec), log, dt.datetime.now(dt.UTC), held)
    except MicrosoftError as exc:
        raise MicrosoftError(f"{adapter.label}: sightings: {exc}", exc.cause, exc.fatal, exc.aadsts) from None


def warn_deferred(label: str, counts: SightingCounts) -> None:
    if counts.deferred:
        sys.stderr.write(f"misp2sentinel: warning: {label}: {counts.deferred} sightings wait for the next run (at most "
                         f"{C.SIGHTINGS_MAX_POSTS} are posted, and as many read back from MISP, per run)\n")


def post_sightings(settings: Settings, log: RequestLog, out: TextIO, quiet: bool) -> ExitCode:
    """--sightings: each target's matches since its last sightings run, posted to MISP; the
    counts to stdout (not with --quiet: a cron job hears only of errors) and a `sightings` log
    file, each refusal to a `sightings-refused` JSONL."""
    settings.require_misp()
    settings.require_microsoft()
    source = MispSource(settings, log)
    code = ExitCode.OK
    for spec in settings.targets:
        adapter = targets.adapter(settings, spec, log)
        try:
            counts = sightings_of(settings, spec, adapter, source, log)
        finally:
            adapter.close()
        if counts is None:
            text = f"sightings not read: {C.NO_SIGHTINGS.get(adapter.kind, C.NO_SIGHTINGS_STATE)}"
        else:
            log.write("sightings", {"target": adapter.label, "sightings": counts.as_dict()})
            text = sightings_line(counts.as_dict())
            warn_deferred(adapter.label, counts)
            if problem := sightings_problem(counts.as_dict()):
                sys.stderr.write(f"misp2sentinel: error: {adapter.label}: {problem}\n")
                code = ExitCode.REJECTED
        if not quiet:
            say(out, f"{adapter.label}: {text}\n")
    return code


def sightings_of(settings: Settings, spec: TargetSettings, adapter: targets.Adapter, source: MispSource,
                 log: RequestLog) -> SightingCounts | None:
    """One target's sightings under its lock; None when it has no alerts to read, or no state
    yet (a sync must first say what it holds)."""
    if not isinstance(adapter, Sighted):
        return None
    lock, path = state_paths(settings, spec)
    with target_lock(lock):
        store = StateStore(path)
        try:
            return None if store.is_fresh() else target_sightings(settings, spec, adapter, store, source, log)
        finally:
            store.close()


def decay_policy(source: MispSource, log: RequestLog) -> DecayPolicy | None:
    """The decaying model from MISP; a formula the tool cannot predict is said once, on stderr and in logs/."""
    decay, warning = source.decay_policy()
    if warning:
        sys.stderr.write(f"misp2sentinel: warning: {warning}\n")
        log.error("decay", warning)
    return decay


def write_reports(runs: list[TargetRun], log: RequestLog, args: argparse.Namespace, started: dt.datetime, out: TextIO) -> None:
    """A run report per target and, for a real sync, last-run.json; a log_dir that cannot be
    written has already stopped the run with its own error, so it is not reported twice."""
    records = [run.record(args.dry_run, started) for run in runs]
    with contextlib.suppress(LogWriteError):
        for record in records:
            log.write("run-report", record)
        if not args.dry_run:
            log.replace(C.LAST_RUN_FILE, last_run_status(log.read(C.LAST_RUN_FILE) or {}, records))
    if not args.quiet:
        try:
            for run in runs:
                out.write(run.report.summary(args.dry_run) + (f"STOPPED: {run.failure}\n" if run.failure else "") + "\n")
            out.flush()
        except BrokenPipeError:  # the sync is done: its exit code still counts
            silence_stdout()


def rebuild_state(settings: Settings, log: RequestLog, out: TextIO) -> ExitCode:
    """Recreate every target's state store from the service's own listing (Graph: removing
    duplicate copies; Sentinel: recovering revoked ids and first-upload times)."""
    settings.require_microsoft()
    now = dt.datetime.now(dt.UTC)
    for spec in settings.targets:
        lock, path = state_paths(settings, spec)
        with target_lock(lock):
            store, note = open_store(path, False, now)
            engine = make_engine(settings, targets.adapter(settings, spec, log), store, log, now, online=True)
            try:
                engine.adopt(note or "--rebuild-state")
            finally:
                engine.close()
                store.close()
        say(out, f"{engine.report.target}: state rebuilt from the service: {engine.report.rebuilt}\n")
    return ExitCode.OK


def verify_delivery(settings: Settings, log: RequestLog, out: TextIO) -> ExitCode:
    """--verify: each target's state against what the service holds now; the verdicts go into
    the state (for `-r`), the counts to stdout and a `delivery` log file, each unusable
    indicator to an `undelivered` JSONL."""
    settings.require_microsoft()
    now = dt.datetime.now(dt.UTC)
    code = ExitCode.OK
    for spec in settings.targets:
        lock, path = state_paths(settings, spec)
        adapter = targets.adapter(settings, spec, log)
        with target_lock(lock):
            store = StateStore(path)
            try:
                found = delivery.verify(settings, spec, adapter, store, log, now)
            except MicrosoftError as exc:  # which target's check failed
                raise MicrosoftError(f"{adapter.label}: delivery check: {exc}", exc.cause, exc.fatal, exc.aadsts) from None
            finally:
                adapter.close()
                store.close()
        log.write("delivery", {"target": adapter.label, "checked": iso_utc(now), "delivery": found})
        say(out, f"{adapter.label}: {delivery_line(found)}\n")
        problem = undelivered_problem(found)
        if problem:
            sys.stderr.write(f"misp2sentinel: error: {adapter.label}: {problem}\n")
            code = ExitCode.UNDELIVERED
    return code


def read_indicators(settings: Settings, log: RequestLog, out: TextIO, output: str) -> ExitCode:
    """Each target's holdings: one JSON document per target, naming it (Graph's list answer, or
    the workspace's queryIndicators items from our sourcesystem), or a table or CSV whose rows
    name their target, page by page. The logs get a count per target, not the listing."""
    settings.require_microsoft()
    log.write_requests = False
    for spec in settings.targets:
        adapter = targets.adapter(settings, spec, log)
        verdicts = last_verdicts(settings, spec)
        counted = Counted(adapter.listing())
        if output == "json":
            write_listing(adapter, counted, out, verdicts)
        else:
            write_rows(adapter, counted, out, output, verdicts)
        log.write("listing", {"target": adapter.label, "pages": counted.pages, "indicators": counted.items})
    return ExitCode.OK


def last_verdicts(settings: Settings, spec: Any) -> dict[str, str]:
    """Service id -> the last verification's status (empty when none ran)."""
    _, path = state_paths(settings, spec)
    store = StateStore.read_only(path)
    try:
        return store.deliveries()
    finally:
        store.close()


def service_id(adapter: targets.Adapter, item: dict[str, Any]) -> str:
    """A listed item's service id: every adapter's first listing column."""
    return str(adapter.listing_cell(item, adapter.listing_columns[0][0]))


class Counted:
    """Pages passed through unchanged, counted for the listing's log summary."""

    def __init__(self, pages: Iterator[dict[str, Any]]) -> None:
        self._pages = pages
        self.pages = self.items = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        page = next(self._pages)
        self.pages += 1
        self.items += len(page["value"])
        return page


def write_listing(adapter: targets.Adapter, pages: Iterator[dict[str, Any]], out: TextIO, verdicts: dict[str, str]) -> None:
    """`{"target": ..., "@odata.context": ..., "value": [...]}` across all pages, one item per line;
    each item gains "delivered" (the last verification's status) once a verification ran."""
    label = adapter.label
    first_page = next(pages, None)
    context = first_page.get("@odata.context") if first_page else None
    out.write("{" + f'"target": {json.dumps(label)}, ' + (f'"@odata.context": {json.dumps(context)}, ' if context else "") + '"value": [')
    first = True
    for page in itertools.chain([first_page] if first_page else [], pages):
        for item in page["value"]:
            shown = {**item, "delivered": verdicts.get(service_id(adapter, item), "")} if verdicts else item
            out.write(("" if first else ",") + "\n  " + json.dumps(shown, ensure_ascii=False))
            first = False
    out.write("\n]}\n")


def write_rows(adapter: targets.Adapter, pages: Iterator[dict[str, Any]], out: TextIO, output: str,
               verdicts: dict[str, str]) -> None:
    """The columns an analyst scans for, after the target's name, as CSV (cells a spreadsheet
    would run as formulas are defused) or as a fixed-width table (control characters escaped,
    cut values ending in an ellipsis); a "delivered" column once a verification ran."""
    checked = (("delivered", C.DELIVERED_COLUMN_WIDTH),) if verdicts else ()
    listed = (*adapter.listing_columns, *checked)
    columns = ("target", *(column for column, _ in listed))
    widths = (len(adapter.label), *(width for _, width in listed))
    writer = csv.writer(out)

    def emit(row: Iterable[Any]) -> None:
        if output == "csv":
            writer.writerow([csv_cell(value) for value in row])
        else:
            out.write("  ".join(table_cell(value, width) for value, width in zip(row, widths, strict=True)).rstrip() + "\n")

    emit(columns)
    for page in pages:
        for item in page["value"]:
            cells = [adapter.listing_cell(item, column) for column, _ in adapter.listing_columns]
            emit([adapter.label, *cells, *([verdicts.get(service_id(adapter, item), "")] if verdicts else [])])


def csv_cell(value: Any) -> str:
    """OWASP's CSV-injection rule: a cell a spreadsheet would read as a formula gets a leading '."""
    text = str(value)
    return "'" + text if text.startswith(C.CSV_FORMULA_STARTS) else text


def table_cell(value: Any, width: int) -> str:
    """One fixed-width cell: no raw control character (an ESC would drive the terminal, a
    newline would break the row), and a cut value ends in an ellipsis."""
    text = C.CONTROL_CHARACTERS_RE.sub(lambda match: match.group(0).encode("unicode_escape").decode("ascii"), str(value))
    if len(text) > width:
        text = text[:width - 1] + "\u2026"
    return f"{text:<{width}}"


def delete_indicators(settings: Settings, log: RequestLog, ids: list[str], out: TextIO) -> ExitCode:
    """-d: Graph ids are deleted, STIX ids (indicator--…) revoked, each on the targets of its
    kind, and the state is updated so the next sync re-creates what MISP still wants."""
    settings.require_microsoft()
    adapters = [targets.adapter(settings, spec, log) for spec in settings.targets]
    for wanted in ids:
        if not any(adapter.owns_id(wanted) for adapter in adapters):
            raise ConfigError(f"-d {wanted}: no configured target has ids of this kind; add its target to `target`")
    done: set[str] = set()
    now = dt.datetime.now(dt.UTC)
    for spec, adapter in zip(settings.targets, adapters, strict=True):
        owned = [wanted for wanted in ids if adapter.owns_id(wanted)]
        if not owned:
            continue
        lock, path = state_paths(settings, spec)
        with target_lock(lock):
            store = StateStore(path)
            engine = make_engine(settings, adapter, store, log, now, online=True)
            try:
                results = engine.delete_ids(owned)
            finally:
                engine.close()
                store.close()
        label = adapter.label
        for result in results:
            say(out, f"{label}: {result.key}: {'deleted' if result.outcome in DELETED else 'not deleted: ' + result.reason}\n")
        done.update(r.key for r in results if r.outcome in DELETED)
        failed = [r for r in results if r.outcome not in DELETED]
        if failed:
            message = f"{len(failed)} of {len(results)} ids not deleted"
            log.error(f"delete {label}", message, results=[{"id": r.key, "outcome": r.outcome.value, "reason": r.reason} for r in failed])
            sys.stderr.write(f"misp2sentinel: error: {label}: {message} (details under logs/)\n")  # exit 1 speaks under --quiet too
    return ExitCode.OK if done == set(ids) else ExitCode.REJECTED


def say(out: TextIO, text: str) -> None:
    """A line of an action that changes things (-d, --rebuild-state): a reader of stdout that
    has gone (`| head -1`) must not leave the remaining targets undone or turn exit 1 into 0."""
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        silence_stdout()


def fail(code: ExitCode, message: str, log: RequestLog | None = None, context: str = "") -> ExitCode:
    """One line on stderr (and an error file when a log exists; a bug's holds the traceback),
    then the exit code."""
    if log is not None and context:
        details = {"traceback": log.scrub(traceback.format_exc())} if code is ExitCode.INTERNAL else {}
        with contextlib.suppress(LogWriteError):
            log.error(context, message, **details)
    sys.stderr.write(f"misp2sentinel: error: {message}\n")
    return code


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """The console command: a reader that closes stdout early (`| head -1`) ends the output
    quietly, not as an internal error."""
    replace_closed_streams()
    with contextlib.suppress(ValueError):  # (called from another thread: no handler)
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    out = sys.stdout if out is None else out
    try:
        code = dispatch(argv, out)
        out.flush()
        return code
    except BrokenPipeError:
        silence_stdout()
        return ExitCode.OK


def stop_on_sigterm(signum: int, frame: object) -> None:
    """systemd's stop, or `timeout`, ends the run as Ctrl-C does (exit 130), so it still leaves
    its run report and last-run.json, and the state's open transaction is rolled back."""
    raise KeyboardInterrupt


def replace_closed_streams() -> None:
    """A crontab's `>&-` or `2>&-` starts Python without stdout or stderr (None): that output
    goes nowhere, as into a closed pipe, instead of ending in a traceback and exit 1."""
    for name in ("stdout", "stderr"):  # in fd order, so each takes its own number back
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 (open for the life of the process)


def silence_stdout() -> None:
    """The reader of stdout went away: the rest of the output, and the final flush, go nowhere."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def dispatch(argv: list[str] | None, out: TextIO) -> int:
    """Parse the command line, run the asked action, turn every failure into one line and a code."""
    args = parse_args(argv)
    if args.check:
        try:
            return run_checks(args.config, out)
        except BrokenPipeError:
            raise
        except KeyboardInterrupt:
            return fail(ExitCode.INTERRUPTED, "interrupted")
        except Exception as exc:
            return fail(ExitCode.INTERNAL, f"internal error in --check {type(exc).__name__} (please report)")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return fail(ExitCode.CONFIG, f"configuration: {exc}")
    for warning in settings.warnings:
        sys.stderr.write(f"misp2sentinel: warning: {warning}\n")
    log = RequestLog(settings.log_dir, settings.write_post_json, settings.verbose_log or args.verbose, settings.secrets())
    try:
        if args.read:
            return read_indicators(settings, log, out, args.format)
        if args.delete:
            return delete_indicators(settings, log, args.delete, out)
        if args.rebuild_state:
            return rebuild_state(settings, log, out)
        if args.verify:
            return verify_delivery(settings, log, out)
        if args.sightings:
            return post_sightings(settings, log, out, args.quiet)
        if args.explain is not None:  # `--explain ""` (an unset shell variable) must not fall through to a sync
            return explain(settings, log, args.explain, out)
        return sync(settings, log, args, out)
    except BrokenPipeError:
        raise
    except (Exception, KeyboardInterrupt) as exc:
        code, message, context = classify(exc, log)
        return fail(code, message, log, context)


if __name__ == "__main__":
    sys.exit(main())

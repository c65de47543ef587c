#!/usr/bin/env python3
"""misp2sentinel: sync published MISP events to Microsoft Graph tiIndicators and Sentinel.

The thin shell: parse the command line, load settings, wire MISP pages -> transformers ->
targets, print the summaries and return a documented exit code.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any, TextIO

import constants as C
from check import run_checks
from constants import ExitCode
from explain import explain
from graph_client import GraphClient
from misp_source import MispError, MispSource
from ms_client import MicrosoftError
from request_log import LogWriteError, RequestLog
from sentinel_client import SentinelClient
from settings import ConfigError, Settings, load_settings
from state_store import StateStore, StoreError, StoreLocked, target_lock
from sync import make_target, open_run, open_store, run_all, state_paths, target_label

HERE = Path(__file__).resolve().parent
# When targets end differently, the exit code reports the most serious outcome.
EXIT_SEVERITY = [ExitCode.OK, ExitCode.REJECTED, ExitCode.SAFETY_VALVE, ExitCode.LOCKED, ExitCode.MICROSOFT, ExitCode.CONFIG]

EPILOG = """exit codes:
  0  all good
  1  some indicators were rejected by Graph (see logs/)
  2  configuration or usage error
  3  MISP unreachable, refused the key, or answered something that is not events
  4  Microsoft authentication or Graph API failure, or batches not delivered after retries
  5  internal error (a bug: please report it with the error file from logs/)
  6  safety valve: the run would delete more than max_delete_fraction of what it owns;
     nothing was deleted (re-run with --allow-mass-delete if that is really wanted)
  7  another run holds the lock for this target (cron overlap); nothing was done
  8  --explain: no MISP attribute has that uuid or value
  130 interrupted
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="script.py",
        description="Sync published MISP events to Microsoft Graph security/tiIndicators.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("-r", "--read", action="store_true", help="list the indicators this app owns in Graph, as JSON")
    action.add_argument("-d", "--delete", nargs="+", metavar="ID", help="delete indicators by Graph id, or revoke them by STIX id (indicator--…)")
    action.add_argument("--dry-run", action="store_true", help="fetch, transform and plan against the state; write what would be sent to the log directory, send nothing")
    action.add_argument("--check", action="store_true", help="check config, MISP, token and permission for every target; print ✓/✗ per line with the fix")
    action.add_argument("--explain", metavar="VALUE-or-UUID", help="say per target why a MISP attribute (by uuid or value) is sent or not; read-only")
    action.add_argument("--rebuild-state", action="store_true", help="recreate each target's local state from what the service holds")
    parser.add_argument("--allow-mass-delete", action="store_true", help="let this run delete more than max_delete_fraction of the owned indicators")
    parser.add_argument("--event", metavar="UUID", help="sync only this MISP event (removals limited to it too)")
    parser.add_argument("--format", choices=("json", "table", "csv"), default="json", help="output of -r (default json)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only (no summary, no progress bars)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every request body and response")
    parser.add_argument("--config", type=Path, default=HERE / "config.py", metavar="PATH", help="settings file (default: config.py beside script.py)")
    return parser.parse_args(argv)


def sync(settings: Settings, log: RequestLog, args: argparse.Namespace, out: TextIO) -> ExitCode:
    """Reconcile MISP's desired indicators with what each target holds; MISP is read once."""
    settings.require_misp()
    if not args.dry_run:
        settings.require_microsoft()
    now = dt.datetime.now(dt.timezone.utc)
    scope = None
    if args.event:
        scope = {args.event.strip().lower()}
        primary, *others = settings.misp_event_filters
        settings = dataclasses.replace(settings, misp_event_filters=({**primary, "uuid": args.event.strip()}, *others))
    progress = sys.stderr.isatty() and not args.quiet
    with contextlib.ExitStack() as stack:
        runs = [open_run(settings, spec, log, args.dry_run, now, stack) for spec in settings.targets]
        if not any(run.report.clock_problem for run in runs):  # a jumped clock would make every record look old
            log.prune(settings.log_retention_days)
        try:
            run_all(runs, MispSource(settings, log), log, args.allow_mass_delete, scope, progress)
        finally:
            for run in runs:
                client = run.target.client if run.target else None
                run.report.requests = client.requests_sent if client else 0
                log.write("run-report", run.report.as_dict(args.dry_run) | {"error": run.failure or None})
                if not args.quiet:
                    out.write(run.report.summary(args.dry_run) + (f"STOPPED: {run.failure}\n" if run.failure else "") + "\n")
    for run in runs:
        if run.report.clock_problem:
            sys.stderr.write(f"misp2sentinel: warning: {run.spec.label}: {run.report.clock_problem}; nothing was forgotten or removed\n")
        if run.failure:
            sys.stderr.write(f"misp2sentinel: error: {run.spec.label}: {run.failure}\n")
    return max((run.exit_code() for run in runs), key=EXIT_SEVERITY.index)


def rebuild_state(settings: Settings, log: RequestLog, out: TextIO) -> ExitCode:
    """Recreate every target's state store from the service's own listing (Graph: removing
    duplicate copies; Sentinel: recovering revoked ids and first-upload times)."""
    settings.require_microsoft()
    now = dt.datetime.now(dt.timezone.utc)
    for spec in settings.targets:
        lock, path = state_paths(settings, spec)
        with target_lock(lock):
            store, note = open_store(path, False, now)
            try:
                target = make_target(settings, spec, log, store, now)
                target.adopt(note or "--rebuild-state")
            finally:
                store.close()
        out.write(f"{target.report.target}: state rebuilt from the service: {target.report.rebuilt}\n")
    return ExitCode.OK


def read_indicators(settings: Settings, log: RequestLog, out: TextIO, output: str) -> ExitCode:
    """Each target's holdings: one JSON document per target (Graph's list answer, or the
    workspace's queryIndicators items from our sourcesystem), or a table or CSV, page by page."""
    settings.require_microsoft()
    for spec in settings.targets:
        if spec.kind == "graph":
            pages = GraphClient(settings, log).list_pages()
        else:
            spec.require_management(settings.config_path.name)
            pages = SentinelClient(settings, spec, log).query_pages()
        if output == "json":
            write_listing(pages, out)
        else:
            write_rows(spec.kind, pages, out, output)
    return ExitCode.OK


def write_listing(pages: Iterator[dict[str, Any]], out: TextIO) -> None:
    """`{"@odata.context": ..., "value": [...]}` across all pages, one item per line."""
    first_page = next(pages, None)
    context = first_page.get("@odata.context") if first_page else None
    out.write("{" + (f'"@odata.context": {json.dumps(context)}, ' if context else "") + '"value": [')
    first = True
    for page in itertools.chain([first_page] if first_page else [], pages):
        for item in page["value"]:
            out.write(("" if first else ",") + "\n  " + json.dumps(item, ensure_ascii=False))
            first = False
    out.write("\n]}\n")


def write_rows(kind: str, pages: Iterator[dict[str, Any]], out: TextIO, output: str) -> None:
    """The columns an analyst scans for, as CSV or as a fixed-width table."""
    columns = C.LISTING_COLUMNS[kind]
    writer = csv.writer(out) if output == "csv" else None
    widths = (64, 44, 48, 10, 24) if kind == "graph" else (48, 72, 26, 7)
    emit = writer.writerow if writer else lambda row: out.write("  ".join(f"{str(v)[:w]:<{w}}" for v, w in zip(row, widths)).rstrip() + "\n")
    emit(columns)
    for page in pages:
        for item in page["value"]:
            emit([listing_cell(kind, item, column) for column in columns])


def listing_cell(kind: str, item: dict[str, Any], column: str) -> Any:
    if kind == "sentinel":
        return item.get("properties", {}).get(column, "")
    if column == "observable":
        return next((item[name] for name in C.GRAPH_OBSERVABLE_FIELDS if name in item), "")
    return item.get(column, "")


def delete_indicators(settings: Settings, log: RequestLog, ids: list[str], out: TextIO) -> ExitCode:
    """-d: Graph ids are deleted, STIX ids (indicator--…) revoked, each on the targets of its
    kind, and the state is updated so the next sync re-creates what MISP still wants."""
    settings.require_microsoft()
    by_kind = {"sentinel": [i for i in ids if C.STIX_INDICATOR_ID_RE.fullmatch(i)]}
    by_kind["graph"] = [i for i in ids if i not in by_kind["sentinel"]]
    for kind, wanted in by_kind.items():
        if wanted and not any(spec.kind == kind for spec in settings.targets):
            raise ConfigError(f"-d {wanted[0]} needs a {kind} target in `target`")
    done: set[str] = set()
    now = dt.datetime.now(dt.timezone.utc)
    for spec in settings.targets:
        if not by_kind[spec.kind]:
            continue
        lock, path = state_paths(settings, spec)
        with target_lock(lock):
            store = StateStore(path)
            try:
                results = make_target(settings, spec, log, store, now).delete_ids(by_kind[spec.kind])
            finally:
                store.close()
        label = target_label(settings, spec)
        for result in results:
            out.write(f"{label}: {result.key}: {'deleted' if result.accepted else 'not deleted: ' + str(result.error)}\n")
        done.update(r.key for r in results if r.accepted)
        failed = [r for r in results if not r.accepted]
        if failed:
            log.error(f"delete {label}", f"{len(failed)} of {len(results)} ids not deleted", results=[dataclasses.asdict(r) for r in failed])
    return ExitCode.OK if done == set(ids) else ExitCode.REJECTED


def fail(code: ExitCode, message: str, log: RequestLog | None = None, context: str = "") -> ExitCode:
    """One line on stderr (and an error file when a log exists), then the exit code."""
    if log is not None:
        message = log.scrub(message)
        log.error(context, message)
    sys.stderr.write(f"misp2sentinel: error: {message}\n")
    return code


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if args.check:
        try:
            return run_checks(args.config, out)
        except KeyboardInterrupt:
            return fail(ExitCode.INTERRUPTED, "interrupted")
        except Exception as exc:  # noqa: BLE001 - one line and a code, never a traceback
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
        if args.explain:
            return explain(settings, log, args.explain, out)
        return sync(settings, log, args, out)
    except ConfigError as exc:
        return fail(ExitCode.CONFIG, f"configuration: {exc}")
    except MispError as exc:
        return fail(ExitCode.MISP, str(exc), log, "misp")
    except MicrosoftError as exc:
        return fail(ExitCode.MICROSOFT, str(exc), log, "microsoft")
    except StoreLocked as exc:
        return fail(ExitCode.LOCKED, f"{exc}; nothing done")
    except StoreError as exc:
        return fail(ExitCode.CONFIG, f"state_dir: {exc}", log, "state")
    except LogWriteError as exc:
        return fail(ExitCode.CONFIG, f"log_dir: {exc}")
    except KeyboardInterrupt:
        return fail(ExitCode.INTERRUPTED, "interrupted")
    except Exception as exc:  # noqa: BLE001 - cron gets one line and a code, never a traceback
        return fail(ExitCode.INTERNAL, f"internal error {type(exc).__name__}: {log.scrub(str(exc))[:300]} (please report)", log, "internal")


if __name__ == "__main__":
    sys.exit(main())

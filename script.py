#!/usr/bin/env python3
"""misp2sentinel: sync published MISP events to Microsoft Graph tiIndicators.

The thin shell: parse the command line, load settings, wire MISP pages -> transformer ->
batches -> Graph, print the summary and return a documented exit code.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TextIO

from constants import ExitCode
from graph_client import GraphClient, GraphError, ItemResult
from misp_source import MispError, MispSource
from misp_transformer import GraphTransformer, Skip
from request_log import LogWriteError, RequestLog
from settings import ConfigError, Settings, load_settings
from state_store import StateStore, StoreError, StoreLocked, target_lock
from sync import ROUTINE_SKIPS, GraphTarget, RunReport, policy_from, rebuild_rows, skipped_records, state_name

HERE = Path(__file__).resolve().parent

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
    action.add_argument("-d", "--delete", nargs="+", metavar="ID", help="delete indicators by Graph id")
    action.add_argument("--dry-run", action="store_true", help="fetch, transform and plan against the state; write what would be sent to the log directory, send nothing")
    action.add_argument("--rebuild-state", action="store_true", help="recreate the local state from what Graph holds (after the state was lost)")
    parser.add_argument("--allow-mass-delete", action="store_true", help="let this run delete more than max_delete_fraction of the owned indicators")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every request body and response")
    parser.add_argument("--config", type=Path, default=HERE / "config.py", metavar="PATH", help="settings file (default: config.py beside script.py)")
    return parser.parse_args(argv)


def sync(settings: Settings, log: RequestLog, args: argparse.Namespace, out: TextIO) -> ExitCode:
    """Reconcile MISP's desired indicators with what this app owns in Graph."""
    settings.require_misp()
    client = None
    if not args.dry_run:
        settings.require_microsoft()
        client = GraphClient(settings, log)
        client.token()
    name = state_name(settings)
    now = dt.datetime.now(dt.timezone.utc)
    with target_lock(settings.state_dir / f"{name}.lock"):
        path = settings.state_dir / f"{name}.sqlite"
        store = StateStore(None if args.dry_run and not path.exists() else path)
        report = RunReport(target=f"graph {settings.graph_endpoint} tenant {settings.tenant or '(dry run)'}")
        target = GraphTarget(settings, client, store, log, report, now)
        try:
            if client is not None:
                target.recover()
            source = MispSource(settings, log)
            fetched = fetch_and_plan(settings, source, target, report, log, now)
            target.remove_gone(fetched, source.alive_event_uuids, args.allow_mass_delete)
        finally:
            report.requests = client.requests_sent if client else 0
            log.write("run-report", report.as_dict(args.dry_run))
            out.write(report.summary(args.dry_run))
            store.close()
    if report.failed:
        return ExitCode.MICROSOFT
    if report.deletions_blocked:
        return ExitCode.SAFETY_VALVE
    return ExitCode.REJECTED if report.rejected else ExitCode.OK


def fetch_and_plan(settings: Settings, source: MispSource, target: GraphTarget, report: RunReport,
                   log: RequestLog, now: dt.datetime) -> set[str]:
    """Stream MISP pages through the transformer into the target; the fetched event UUIDs."""
    transformer = GraphTransformer(policy_from(settings), now)
    fetched: set[str] = set()
    notable: list[Skip] = []
    try:
        for page in source.pages():
            for event in page:
                result = transformer.transform(event)
                report.add_event(result)
                fetched.add(result.event_uuid)
                notable.extend(skip for skip in result.skips if skip.reason not in ROUTINE_SKIPS)
                for indicator in result.indicators:
                    target.offer(indicator, result.event_uuid)
            target.commit_seen()
    except MispError:
        target.flush_all()  # send what was planned; nothing is removed after a partial fetch
        raise
    finally:
        if notable:
            log.write("skipped", skipped_records(notable))
    target.flush_all()
    return fetched


def rebuild_state(settings: Settings, log: RequestLog, out: TextIO) -> ExitCode:
    """Recreate the state store from Graph's own listing, removing duplicate copies."""
    settings.require_microsoft()
    client = GraphClient(settings, log)
    items = [item for page in client.list_pages() for item in page["value"]]
    rows, duplicates, anonymous = rebuild_rows(items, dt.datetime.now(dt.timezone.utc))
    name = state_name(settings)
    with target_lock(settings.state_dir / f"{name}.lock"):
        store = StateStore(settings.state_dir / f"{name}.sqlite")
        store.replace_all(rows)
        store.close()
    failed = [r for r in client.delete(duplicates) if not r.accepted] if duplicates else []
    out.write(f"state rebuilt from Graph: {len(rows)} indicators; duplicate copies deleted: "
              f"{len(duplicates) - len(failed)}; without externalId (left alone): {anonymous}\n")
    return ExitCode.REJECTED if failed else ExitCode.OK


def read_indicators(settings: Settings, log: RequestLog, out: TextIO) -> ExitCode:
    """Stream every owned indicator as one JSON document, like Graph's own list answer."""
    settings.require_microsoft()
    client = GraphClient(settings, log)
    context = None
    first = True
    for page in client.list_pages():
        if context is None:
            context = page.get("@odata.context")
            out.write("{" + f'"@odata.context": {json.dumps(context)}, "value": [')
        for item in page["value"]:
            out.write(("" if first else ",") + "\n  " + json.dumps(item, ensure_ascii=False))
            first = False
    out.write(("{\"value\": [" if context is None else "") + "\n]}\n")
    return ExitCode.OK


def delete_indicators(settings: Settings, log: RequestLog, graph_ids: list[str], out: TextIO) -> ExitCode:
    settings.require_microsoft()
    results: list[ItemResult] = GraphClient(settings, log).delete(graph_ids)
    for result in results:
        out.write(f"{result.graph_id}: {'deleted' if result.accepted else 'not deleted: ' + str(result.error)}\n")
    failed = [r for r in results if not r.accepted]
    if failed:
        log.error("deleteTiIndicators", f"{len(failed)} of {len(results)} ids not deleted", results=[dataclasses.asdict(r) for r in failed])
        return ExitCode.REJECTED
    return ExitCode.OK


def fail(code: ExitCode, message: str, log: RequestLog | None = None, context: str = "") -> ExitCode:
    """One line on stderr (and an error file when a log exists), then the exit code."""
    if log is not None:
        message = log.scrub(message)
        log.error(context, message)
    sys.stderr.write(f"misp2sentinel: error: {message}\n")
    return code


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return fail(ExitCode.CONFIG, f"configuration: {exc}")
    for warning in settings.warnings:
        sys.stderr.write(f"misp2sentinel: warning: {warning}\n")
    log = RequestLog(settings.log_dir, settings.write_post_json, settings.verbose_log or args.verbose, settings.secrets())
    log.prune(settings.log_retention_days)
    try:
        if args.read:
            return read_indicators(settings, log, out)
        if args.delete:
            return delete_indicators(settings, log, args.delete, out)
        if args.rebuild_state:
            return rebuild_state(settings, log, out)
        return sync(settings, log, args, out)
    except ConfigError as exc:
        return fail(ExitCode.CONFIG, f"configuration: {exc}")
    except MispError as exc:
        return fail(ExitCode.MISP, str(exc), log, "misp")
    except GraphError as exc:
        return fail(ExitCode.MICROSOFT, str(exc), log, "graph")
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

#!/usr/bin/env python3
"""misp2sentinel: sync published MISP events to Microsoft Graph tiIndicators.

The thin shell: parse the command line, load settings, wire MISP pages -> transformer ->
batches -> Graph, print the summary and return a documented exit code.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import constants as C
from constants import ExitCode, SkipReason
from graph_client import GraphClient, GraphError, ItemResult
from misp_source import MispError, MispSource
from misp_transformer import EventResult, GraphPolicy, GraphTransformer, Skip
from request_log import LogWriteError, RequestLog
from settings import ConfigError, Settings, load_settings

HERE = Path(__file__).resolve().parent
# Skips that only confirm MISP's own filtering; the others are listed one by one in the logs.
ROUTINE_SKIPS = frozenset({SkipReason.NOT_TO_IDS, SkipReason.CONTEXT, SkipReason.DELETED})

EPILOG = """exit codes:
  0  all good
  1  some indicators were rejected by Graph (see logs/)
  2  configuration or usage error
  3  MISP unreachable, refused the key, or answered something that is not events
  4  Microsoft authentication or Graph API failure
  5  internal error (a bug: please report it with the error file from logs/)
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
    action.add_argument("--dry-run", action="store_true", help="fetch and transform, write what would be sent to the log directory, send nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every request body and response")
    parser.add_argument("--config", type=Path, default=HERE / "config.py", metavar="PATH", help="settings file (default: config.py beside script.py)")
    return parser.parse_args(argv)


@dataclasses.dataclass
class RunReport:
    """Counts of one sync run; printed as the summary and written as JSON."""

    events: int = 0
    attributes: int = 0
    indicators: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def add_event(self, result: EventResult) -> None:
        self.events += 1
        self.attributes += result.attributes
        self.indicators += len(result.indicators)
        self.skipped.update(skip.reason.value for skip in result.skips)

    @property
    def candidates(self) -> int:
        """to_ids attributes that could have become indicators (routine skips excluded)."""
        return self.indicators + sum(n for reason, n in self.skipped.items() if SkipReason(reason) not in ROUTINE_SKIPS)

    def as_dict(self, dry_run: bool) -> dict[str, Any]:
        return {
            "dry_run": dry_run, "events": self.events, "attributes": self.attributes,
            "candidates": self.candidates, "indicators": self.indicators, "sent": self.sent,
            "accepted": self.accepted, "rejected": self.rejected, "failed": self.failed,
            "skipped": dict(sorted(self.skipped.items())),
            "seconds": round(time.monotonic() - self.started, 3),
        }

    def print(self, out: TextIO, dry_run: bool) -> None:
        data = self.as_dict(dry_run)
        skipped = ", ".join(f"{reason} {count}" for reason, count in data["skipped"].items()) or "none"
        out.write(
            ("Dry run (nothing sent)\n" if dry_run else "")
            + f"events read: {data['events']}\nattributes read: {data['attributes']}\n"
            f"candidates: {data['candidates']}\nindicators: {data['indicators']}\n"
            f"sent: {data['sent']}\naccepted: {data['accepted']}\nrejected: {data['rejected']}\n"
            f"failed (not delivered): {data['failed']}\nskipped: {skipped}\ntime: {data['seconds']:.2f} s\n"
        )


def policy_from(settings: Settings) -> GraphPolicy:
    return GraphPolicy(
        target_product=settings.target_product, action=settings.action, passive_only=settings.passive_only,
        days_to_expire=settings.days_to_expire, network_ignore_direction=settings.network_ignore_direction,
        ignore_local_tags=settings.ignore_local_tags, default_confidence=settings.default_confidence,
        allow_weak_observables=settings.allow_weak_observables,
    )


def batches(indicators: Iterable[dict[str, Any]], size: int = C.GRAPH_MAX_BATCH) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for indicator in indicators:
        batch.append(indicator)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Sync:
    """One run: MISP pages -> transform -> batches -> Graph (or the dry-run log) -> report."""

    def __init__(self, settings: Settings, log: RequestLog, client: GraphClient | None) -> None:
        self.settings = settings
        self.log = log
        self.client = client
        self.report = RunReport()
        self.notable_skips: list[Skip] = []

    def indicators(self, source: MispSource) -> Iterator[dict[str, Any]]:
        transformer = GraphTransformer(policy_from(self.settings), dt.datetime.now(dt.timezone.utc))
        for page in source.pages():
            for event in page:
                result = transformer.transform(event)
                self.report.add_event(result)
                self.notable_skips.extend(skip for skip in result.skips if skip.reason not in ROUTINE_SKIPS)
                yield from result.indicators

    def run(self, source: MispSource) -> None:
        for batch in batches(self.indicators(source)):
            if self.client is None:
                url = self.settings.graph_endpoint + C.GRAPH_SUBMIT_PATH
                self.log.write("dry-run-submitTiIndicators", {"method": "POST", "url": url, "body": {"value": batch}})
                continue
            self.deliver(batch)

    def deliver(self, batch: list[dict[str, Any]]) -> None:
        """Submit one batch; a non-fatal failure marks it failed and the run goes on."""
        assert self.client is not None
        self.report.sent += len(batch)
        try:
            results = self.client.submit(batch)
        except GraphError as exc:
            if exc.fatal:
                raise
            self.report.failed += len(batch)
            self.log.error("submitTiIndicators", str(exc), external_ids=[item["externalId"] for item in batch])
            return
        rejected = [result for result in results if not result.accepted]
        self.report.accepted += len(results) - len(rejected)
        self.report.rejected += len(rejected)
        if rejected:
            self.log.error("submitTiIndicators", f"Graph rejected {len(rejected)} of {len(batch)} indicators", rejected=[
                {"externalId": r.external_id, "reason": r.error, "indicator": _find(batch, r.external_id)} for r in rejected
            ])

    def finish(self, dry_run: bool, out: TextIO) -> None:
        if self.notable_skips:
            self.log.write("skipped", [dataclasses.asdict(skip) | {"reason": skip.reason.value} for skip in self.notable_skips])
        self.log.write("run-report", self.report.as_dict(dry_run))
        self.report.print(out, dry_run)


def _find(batch: list[dict[str, Any]], external_id: str) -> dict[str, Any] | None:
    return next((item for item in batch if item["externalId"] == external_id), None)


def sync(settings: Settings, log: RequestLog, dry_run: bool, out: TextIO) -> ExitCode:
    settings.require_misp()
    client = None
    if not dry_run:
        settings.require_microsoft()
        client = GraphClient(settings, log)
        client.token()
    job = Sync(settings, log, client)
    try:
        job.run(MispSource(settings, log))
    finally:
        job.finish(dry_run, out)
    if job.report.failed:
        return ExitCode.MICROSOFT
    return ExitCode.REJECTED if job.report.rejected else ExitCode.OK


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
    try:
        if args.read:
            return read_indicators(settings, log, out)
        if args.delete:
            return delete_indicators(settings, log, args.delete, out)
        return sync(settings, log, args.dry_run, out)
    except ConfigError as exc:
        return fail(ExitCode.CONFIG, f"configuration: {exc}")
    except MispError as exc:
        return fail(ExitCode.MISP, str(exc), log, "misp")
    except GraphError as exc:
        return fail(ExitCode.MICROSOFT, str(exc), log, "graph")
    except LogWriteError as exc:
        return fail(ExitCode.CONFIG, f"log_dir: {exc}")
    except KeyboardInterrupt:
        return fail(ExitCode.INTERRUPTED, "interrupted")
    except Exception as exc:  # noqa: BLE001 - cron gets one line and a code, never a traceback
        return fail(ExitCode.INTERNAL, f"internal error {type(exc).__name__}: {log.scrub(str(exc))[:300]} (please report)", log, "internal")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Performance benchmark: prints one Markdown table (README "Performance").

    .venv/bin/python bench/run.py            # full run, a few minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # smaller sizes, to check the script itself
    .venv/bin/python bench/run.py --only transform dry-run    # some groups of rows only

The stand-ins run in this process; script.py runs as a separate process, as cron starts it,
so its peak RSS (bench/measure.py) and wall time are its own. The Defender rows' scaled load runs
it through bench/scaled_script.py, which scales the tool's rate limits as this process scales the
stand-in's.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymisp import PyMISP  # noqa: E402

import constants as C  # noqa: E402
import standins.defender  # noqa: E402
from bench.corpus import FIXTURES, defender_corpus, generate  # noqa: E402
from bench.scaled_script import scaled_limits  # noqa: E402
from misp_transformer import GraphTransformer, MappingPolicy, StixTransformer  # noqa: E402
from ms_client import WINDOW_SECONDS  # noqa: E402
from standins import StandIns, seed_events  # noqa: E402

LATENCY = 0.3
TRANSFORMERS = (("graph", GraphTransformer), ("sentinel", StixTransformer))
# Measured on commit 16ad094 (before issue 12) by this script: issue 12's targets are relative to them.
REAL_EVENTS_BASELINE = {"graph": 257_500, "sentinel": 121_100}  # attributes/s
DRY_RUN_BASELINE_CPU = 3.7  # CPU seconds of the 100k --dry-run
SCRIPT = (str(ROOT / "script.py"),)
# The scaled load: a 2 s window and each limit ÷ 10 (import 3 per window), so that the limit
# binds on 20 imports; latency shrinks with the window (300 ms × 2/60), the same scale for all time.
SCALED_WINDOW = 4.0  # long enough that the fixed ~1.5 s start-up and tail weigh ~6% of the 24 s floor
SCALED_DIVISOR = 10
SCALED_LATENCY = LATENCY * SCALED_WINDOW / WINDOW_SECONDS


def transform_rate(attributes: int) -> dict[str, float]:
    """Attributes per second through each transformer over the synthetic corpus, one thread."""
    events = list(generate(attributes, seed=7))
    rates = {}
    for name, cls in TRANSFORMERS:
        transformer = cls(MappingPolicy(misp_url="https://misp.example/"), dt.datetime.now(dt.UTC))
        started = time.perf_counter()
        for event in events:
            transformer.transform(event)
        rates[name] = attributes / (time.perf_counter() - started)
    return rates


def real_event_rate(passes: int) -> dict[str, Any]:
    """Attributes per second through each transformer over the real CIRCL events in
    tests/fixtures, where per-event work (tag folding, context) weighs most: the median of
    `passes` passes, so one slow moment of the machine does not decide the figure."""
    events = seed_events(FIXTURES)
    attributes = sum(len(e.get("Attribute", [])) + sum(len(o.get("Attribute", [])) for o in e.get("Object", []))
                     for e in (wrapped.get("Event", wrapped) for wrapped in events))
    rates: dict[str, Any] = {"events": len(events), "attributes": attributes}
    for name, cls in TRANSFORMERS:
        transformer = cls(MappingPolicy(misp_url="https://misp.example/"), dt.datetime.now(dt.UTC))
        seconds = []
        for _ in range(passes):
            started = time.perf_counter()
            for event in events:
                transformer.transform(event)
            seconds.append(time.perf_counter() - started)
        rates[name] = attributes / statistics.median(seconds)
    return rates


@dataclasses.dataclass(frozen=True)
class ToolRun:
    """One `script.py` run as bench/measure.py saw it."""

    seconds: float
    cpu_seconds: float
    rss_mb: int
    code: int


def run_tool(config: Path, env: dict[str, str], *args: str, program: tuple[str, ...] = SCRIPT) -> ToolRun:
    """One `script.py` run (or `program`, which passes on script.py's arguments), its wall
    time, CPU time, peak RSS and exit code."""
    started = time.perf_counter()
    command = [sys.executable, str(ROOT / "bench" / "measure.py"), sys.executable, *program, "--config", str(config), *args]
    finished = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    *messages, peak, cpu = finished.stderr.rstrip().split("\n")
    if finished.returncode != 0:
        sys.stderr.write("\n".join(messages) + "\n")
    return ToolRun(seconds, float(cpu.split()[-1]), int(peak.split()[-1]) // 1024, finished.returncode)


def service_requests(servers: StandIns, target: str, since: int = 0) -> int:
    server = servers.graph if target == "graph" else servers.sentinel
    return sum(1 for r in server.requests_seen[since:] if r.method == "POST")


def misp_pages(servers: StandIns, since: int = 0) -> int:
    return sum(1 for r in servers.misp.requests_seen[since:] if r.path == "/events/restSearch")


class Bench:
    """One set of stand-ins and a config directory per measurement."""

    def __init__(self, events: list[dict[str, Any]], latency: float, limits: bool) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="misp2sentinel-bench-"))
        self.servers = StandIns(self.directory, events=events)
        self.servers.misp.track_edits = False  # the benchmark moves the timestamps of what it edits
        if limits:
            self.servers.graph.per_minute = 1000
            self.servers.sentinel.per_minute = 100
        for server in (self.servers.misp, self.servers.graph, self.servers.sentinel, self.servers.defender):
            server.latency = latency
        self.servers.start()
        self.env = {**os.environ, "REQUESTS_CA_BUNDLE": str(self.servers.ca_bundle_path), "NO_PROXY": "127.0.0.1,localhost"}

    def config(self, **settings: Any) -> Path:
        return self.servers.write_tool_config(self.directory, misp_event_limit_per_page=100, write_post_json=False, **settings)

    def close(self) -> None:
        self.servers.close()


def end_to_end(attributes: int, target: str) -> dict[str, Any]:
    """New indicators at 300 ms latency and the documented limits, against the floor they allow."""
    bench = Bench(list(generate(attributes)), LATENCY, limits=True)
    try:
        run = run_tool(bench.config(target=target), bench.env)
        report = _last_report(bench.directory)
        per_minute = 1000 if target == "graph" else 100
        floor = report["new"] / (per_minute * 100) * 60
        server = bench.servers.graph if target == "graph" else bench.servers.sentinel
        return {"indicators": report["new"], "accepted": report["accepted"], "seconds": run.seconds, "floor": floor,
                "requests": service_requests(bench.servers, target), "throttled": server.throttled, "code": run.code}
    finally:
        bench.close()


def second_run(attributes: int, changed_share: float) -> dict[str, Any]:
    """A full read (--full) after 1% of the attributes were edited in MISP (comments, spread over
    most events). Each edit moves its event's timestamp, which every indicator of the event
    carries (lastReportedDateTime), so all of them are updated."""
    bench = Bench(list(generate(attributes)), LATENCY, limits=True)
    try:
        config = bench.config(target="graph")
        run_tool(config, bench.env)
        candidates = [(e["Event"], a) for e in bench.servers.misp.events for a in e["Event"]["Attribute"] if a["to_ids"]]
        changed = random.Random(3).sample(candidates, math.ceil(len(candidates) * changed_share))
        for event, attribute in changed:
            attribute["comment"] = "edited for the benchmark"
            event["timestamp"] = str(int(event["timestamp"]) + 1)
        graph_before, misp_before = len(bench.servers.graph.requests_seen), len(bench.servers.misp.requests_seen)
        run = run_tool(config, bench.env, "--full")
        report = _last_report(bench.directory)
        return {"changed": len(changed), "events": len({id(event) for event, _ in changed}), "updated": report["update"],
                "seconds": run.seconds, "code": run.code,
                "graph_requests": service_requests(bench.servers, "graph", graph_before),
                "misp_pages": misp_pages(bench.servers, misp_before)}
    finally:
        bench.close()


def incremental_night(attributes: int, changed_share: float) -> dict[str, Any]:
    """A nightly (incremental) run after 1% of the events changed (one attribute added to each):
    what it reads from MISP, against those events' own size and the metadata listing."""
    bench = Bench(list(generate(attributes)), LATENCY, limits=True)
    misp = bench.servers.misp
    try:
        config = bench.config(target="graph")
        run_tool(config, bench.env)
        events = [wrapped["Event"] for wrapped in misp.events]
        changed = random.Random(5).sample(events, math.ceil(len(events) * changed_share))
        for number, event in enumerate(changed):
            event["Attribute"].append({"uuid": f"77777777-0000-4000-8000-{number:012d}", "type": "domain",
                                       "value": f"night-{number}.example", "to_ids": True, "timestamp": "1800000000"})
            event["timestamp"] = str(int(event["timestamp"]) + 1)
        graph_before, misp_before = len(bench.servers.graph.requests_seen), len(misp.replies)
        run = run_tool(config, bench.env)
        report = _last_report(bench.directory)
        answers = misp.replies[misp_before:]
        changed_bytes = _served_bytes(bench, [event["uuid"] for event in changed])
        listing = sum(size for request, size in answers if isinstance(request.json, dict) and request.json.get("metadata"))
        full = sum(size for request, size in answers if request.path == "/events/restSearch") - listing
        return {"events": len(events), "changed": len(changed), "read_in_full": report["events_read_in_full"],
                "new": report["new"], "updated": report["update"], "seconds": run.seconds, "code": run.code,
                "listing_bytes": listing, "full_bytes": full,
                "changed_bytes": changed_bytes, "misp_requests": sum(1 for request, _ in answers if request.path == "/events/restSearch"),
                "graph_requests": service_requests(bench.servers, "graph", graph_before)}
    finally:
        bench.close()


def peak_rss(attributes: int) -> dict[str, Any]:
    """Peak RSS of a whole sync (Graph target), services fast and unthrottled so it ends soon."""
    bench = Bench(list(generate(attributes)), 0.0, limits=False)
    try:
        run = run_tool(bench.config(target="graph", graph_requests_per_minute=100000), bench.env)
        return {"attributes": attributes, "rss_mb": run.rss_mb, "seconds": run.seconds, "code": run.code,
                "indicators": _last_report(bench.directory)["accepted"]}
    finally:
        bench.close()


def dry_run(attributes: int) -> dict[str, Any]:
    """CPU time and peak RSS of a whole `--dry-run` (Graph target, no state yet): fetch,
    transform, plan, and the dry-run files written instead of any request."""
    bench = Bench(list(generate(attributes)), 0.0, limits=False)
    try:
        run = run_tool(bench.config(target="graph"), bench.env, "--dry-run")
        files = list((bench.directory / "logs").glob("*_dry-run-*"))
        return {"attributes": attributes, "cpu": run.cpu_seconds, "rss_mb": run.rss_mb, "seconds": run.seconds, "code": run.code,
                "planned": _last_report(bench.directory)["new"], "files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    finally:
        bench.close()


def rate_floor(calls: Mapping[str, int], limits: Mapping[str, int], window: float) -> float:
    """The least wall time the limits allow: a sliding window lets `limit` calls go at once,
    and each further `limit` waits one more window; the slowest operation decides."""
    return max([(math.ceil(count / limits[operation]) - 1) * window for operation, count in calls.items() if count],
               default=0.0)


@contextlib.contextmanager
def scaled_defender(bench: Bench) -> Iterator[dict[str, int]]:
    """The Defender stand-in with the window and limits bench/scaled_script.py gives the tool
    (the stand-in's CALL_LIMITS is a module constant: restored afterwards); yields the limits."""
    limits = {name.lower(): limit for name, limit in scaled_limits(SCALED_DIVISOR).items()}
    saved = dict(standins.defender.CALL_LIMITS)
    if set(limits) != set(saved):
        raise RuntimeError(f"the tool's Defender operations {sorted(limits)} are not the stand-in's {sorted(saved)}")
    standins.defender.CALL_LIMITS.update(limits)
    bench.servers.defender.window_seconds = SCALED_WINDOW
    try:
        yield limits
    finally:
        standins.defender.CALL_LIMITS.update(saved)


def defender_load(bench: Bench, config: Path, window: float, limits: Mapping[str, int],
                  program: tuple[str, ...] = SCRIPT) -> dict[str, Any]:
    """A first sync into an empty tenant: wall time against the floor `limits` per `window` allow."""
    defender = bench.servers.defender
    run = run_tool(config, bench.env, program=program)
    report = _last_report(bench.directory)
    return {"indicators": report["new"], "seconds": run.seconds, "code": run.code,
            "held": len(defender.held(bench.servers.client_id)), "calls": dict(defender.calls),
            "floor": rate_floor(defender.calls, limits, window), "throttled": defender.throttled}


def defender_night(bench: Bench, config: Path, changed_share: float) -> dict[str, Any]:
    """After the full load, `changed_share` of the attributes get a new comment in MISP (their
    events' and their own timestamps move, as a MISP edit moves them); one nightly run."""
    defender = bench.servers.defender
    attributes = [(wrapped["Event"], attribute) for wrapped in bench.servers.misp.events
                  for attribute in wrapped["Event"]["Attribute"] + [a for o in wrapped["Event"]["Object"] for a in o["Attribute"]]]
    changed = random.Random(3).sample(attributes, math.ceil(len(attributes) * changed_share))
    for event, attribute in changed:
        attribute["comment"] = "edited for the benchmark"
        event["timestamp"] = attribute["timestamp"] = str(int(event["timestamp"]) + 1)
    calls, throttled = collections.Counter(defender.calls), defender.throttled
    run = run_tool(config, bench.env)
    report = _last_report(bench.directory)
    made = defender.calls - calls
    return {"changed": len(changed), "of": len(attributes), "events": len({id(event) for event, _ in changed}),
            "updated": report["update"], "new": report["new"], "seconds": run.seconds, "code": run.code,
            "imports": made["import"], "lists": made["list"], "deletes": made["batchdelete"] + made["delete"],
            "throttled": defender.throttled - throttled}


def defender_runs(indicators: int, changed_share: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The full load at the documented limits and the night after it; the full load scaled."""
    settings = {"target": "defender", "defender_max_indicators": C.DEFENDER_DEFAULT_SHARE}
    bench = Bench(list(defender_corpus(indicators)), LATENCY, limits=True)
    try:
        config = bench.config(**settings)
        load = defender_load(bench, config, WINDOW_SECONDS, standins.defender.CALL_LIMITS)
        night = defender_night(bench, config, changed_share)
    finally:
        bench.close()
    bench = Bench(list(defender_corpus(indicators)), SCALED_LATENCY, limits=True)
    try:
        with scaled_defender(bench) as limits:
            program = (str(ROOT / "bench" / "scaled_script.py"), str(SCALED_WINDOW), str(SCALED_DIVISOR))
            scaled = defender_load(bench, bench.config(**settings), SCALED_WINDOW, limits, program)
    finally:
        bench.close()
    return load, night, scaled


def _served_bytes(bench: Bench, uuids: list[str]) -> int:
    """What MISP serves for these events alone with the default filters, one search each."""
    misp = PyMISP(bench.servers.misp.url, bench.servers.misp_key, ssl=str(bench.servers.ca_bundle_path), tool="bench")
    before = len(bench.servers.misp.replies)
    filters: dict[str, Any] = dict(C.DEFAULT_MISP_EVENT_FILTERS)  # PyMISP's stubs take no bool through **kwargs
    for uuid in uuids:
        misp.search(controller="events", uuid=uuid, **filters)
    return sum(size for _, size in bench.servers.misp.replies[before:]) - len(uuids) * len('{"response": []}')


def _last_report(directory: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(sorted((directory / "logs").glob("*_run-report_*.json"))[-1].read_text())
    return report


Rows = tuple[list[tuple[str, str, str]], set[int]]


def transform_rows(scale: float) -> Rows:
    rates = transform_rate(int(200_000 * scale))
    real = real_event_rate(max(20, int(400 * scale)))
    return [
        ("Transform, Graph target, one core", f"{rates['graph']:,.0f} attributes/s", "≥ 200,000 attributes/s"),
        ("Transform, Sentinel (STIX) target, one core", f"{rates['sentinel']:,.0f} attributes/s", "(no target)"),
        (f"Transform of the {real['events']} real events ({real['attributes']:,} attributes), Graph target, one core",
         f"{real['graph']:,.0f} attributes/s", f"≥ 2× {REAL_EVENTS_BASELINE['graph']:,} attributes/s"),
        (f"Transform of the {real['events']} real events, Sentinel (STIX) target, one core",
         f"{real['sentinel']:,.0f} attributes/s", f"≥ 2× {REAL_EVENTS_BASELINE['sentinel']:,} attributes/s"),
    ], set()


def upload_rows(scale: float) -> Rows:
    graph = end_to_end(int(70_000 * scale), "graph")
    sentinel = end_to_end(int(28_000 * scale), "sentinel")
    second = second_run(int(70_000 * scale), 0.01)
    night = incremental_night(int(70_000 * scale), 0.01)
    return [
        (f"Graph: {graph['indicators']:,} new indicators, 300 ms latency, 1000 req/min",
         f"{graph['seconds']:.1f} s ({graph['seconds'] / graph['floor']:.2f}× the {graph['floor']:.1f} s floor), "
         f"{graph['requests']} requests, {graph['throttled']} × 429", "≤ 1.15× floor, 0 × 429"),
        (f"Sentinel: {sentinel['indicators']:,} new indicators, 300 ms latency, 100 req/min",
         f"{sentinel['seconds']:.1f} s ({sentinel['seconds'] / sentinel['floor']:.2f}× the {sentinel['floor']:.1f} s floor), "
         f"{sentinel['requests']} requests, {sentinel['throttled']} × 429", "≤ 1.15× floor, 0 × 429"),
        (f"Second run, full read (--full), {second['changed']} attributes (1%) edited in {second['events']} events",
         f"{second['seconds']:.1f} s, {second['graph_requests']} Graph requests for {second['updated']:,} updated "
         f"+ {second['misp_pages']} MISP pages", f"≤ {math.ceil(second['updated'] / 100)} + MISP pages"),
        (f"Nightly incremental run, {night['changed']} of {night['events']} events changed (1%), one new attribute each",
         f"{night['seconds']:.1f} s; {night['read_in_full']} events read in full; MISP read {night['full_bytes']:,} B of bodies "
         f"({night['full_bytes'] / night['changed_bytes']:.3f}× the changed events' {night['changed_bytes']:,} B) + "
         f"{night['listing_bytes']:,} B listing in {night['misp_requests']} requests; {night['graph_requests']} Graph requests "
         f"for {night['new']} new + {night['updated']} updated",
         f"{night['changed']} read; ≤ 1.1× + listing; ≤ {2 * math.ceil(night['new'] / 100) + math.ceil(night['updated'] / 100)} Graph"),
    ], {graph["code"], sentinel["code"], second["code"], night["code"]}


def rss_rows(scale: float) -> Rows:
    small, large = peak_rss(int(100_000 * scale)), peak_rss(int(1_000_000 * scale))
    return [
        (f"Peak RSS, sync of {small['attributes']:,} attributes", f"{small['rss_mb']} MB ({small['seconds']:.0f} s)", ""),
        (f"Peak RSS, sync of {large['attributes']:,} attributes", f"{large['rss_mb']} MB ({large['seconds']:.0f} s), "
         f"{large['rss_mb'] / small['rss_mb']:.2f}× the smaller", "< 200 MB, ≤ 1.2×"),
    ], {small["code"], large["code"]}


def dry_run_rows(scale: float) -> Rows:
    small, large = dry_run(int(100_000 * scale)), dry_run(int(1_000_000 * scale))
    return [
        (f"--dry-run of {small['attributes']:,} attributes ({small['planned']:,} planned, {small['files']} files, "
         f"{small['bytes'] / 1e6:.0f} MB)", f"{small['cpu']:.1f} CPU s, {small['rss_mb']} MB peak RSS ({small['seconds']:.0f} s)",
         f"≤ ½ × {DRY_RUN_BASELINE_CPU} CPU s"),
        (f"--dry-run of {large['attributes']:,} attributes ({large['planned']:,} planned)",
         f"{large['cpu']:.1f} CPU s, {large['rss_mb']} MB peak RSS ({large['seconds']:.0f} s), "
         f"{large['rss_mb'] / small['rss_mb']:.2f}× the smaller's RSS", "≤ 1.2× the smaller's RSS"),
    ], {small["code"], large["code"]}


def verdict(met: bool) -> str:
    return "met" if met else "missed"


def load_row(run: dict[str, Any], conditions: str) -> tuple[str, str, str]:
    """A full load against its floor, and the seconds over it (start-up and the last answer,
    which no window scales); a floor of 0 s (every call fits one window) has no multiple, and
    then only the 429s and the indicators held are judged."""
    floor, seconds = run["floor"], run["seconds"]
    ratio = (f"{seconds / floor:.2f}× the {floor:.1f} s floor, {seconds - floor:.1f} s over it" if floor
             else "floor 0 s: every call fits one window")
    met = (not floor or seconds / floor <= 1.15) and run["throttled"] == 0 and run["held"] == run["indicators"] and run["code"] == 0
    return (f"Defender: {run['indicators']:,} new indicators, {conditions}",
            f"{seconds:.1f} s ({ratio}), {run['calls'].get('import', 0)} × import, {run['calls'].get('list', 0)} × list, "
            f"{run['held']:,} held, {run['throttled']} × 429: {verdict(met)}",
            "≤ 1.15× floor, 0 × 429" if floor else "0 × 429")


def defender_rows(scale: float) -> Rows:
    load, night, scaled = defender_runs(int(C.DEFENDER_DEFAULT_SHARE * scale), 0.01)
    limits = scaled_limits(SCALED_DIVISOR)
    most = math.ceil(night["changed"] / C.DEFENDER_MAX_BATCH)
    night_met = night["imports"] <= most and night["throttled"] == 0 and night["code"] == 0
    return [
        load_row(load, f"{LATENCY * 1000:.0f} ms latency, documented limits (import "
                       f"{C.DEFENDER_REQUESTS_PER_MINUTE['import']} per {WINDOW_SECONDS:g} s)"),
        load_row(scaled, f"scaled: {SCALED_WINDOW:g} s window, limits ÷ {SCALED_DIVISOR} (import {limits['import']}, "
                         f"list {limits['list']} per window), {SCALED_LATENCY * 1000:.0f} ms latency"),
        (f"Defender night: {night['changed']} of {night['of']:,} attributes (1%) edited in {night['events']} events",
         f"{night['seconds']:.1f} s, {night['imports']} × import for {night['updated']} updated + {night['new']} new, "
         f"{night['lists']} × list, {night['deletes']} × delete, {night['throttled']} × 429: {verdict(night_met)}",
         f"≤ {most} × import, 0 × 429"),
    ], {load["code"], night["code"], scaled["code"]}


GROUPS = {"transform": transform_rows, "upload": upload_rows, "rss": rss_rows, "dry-run": dry_run_rows,
          "defender": defender_rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--only", nargs="+", choices=list(GROUPS), default=list(GROUPS), help="measure only these groups of rows")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    started = time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    codes: set[int] = set()
    for name in args.only:
        group_rows, group_codes = GROUPS[name](scale)
        rows += group_rows
        codes |= group_codes
    print("| measurement | result | target |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{'quick ' if args.quick else ''}benchmark took {time.perf_counter() - started:.0f} s; tool exit codes {sorted(codes)}")
    return 0 if codes <= {0} else 1


if __name__ == "__main__":
    sys.exit(main())

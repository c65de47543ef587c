"""Helpers shared by the tests: a config pointing at the stand-ins, the CLI, what MISP holds and
was asked, and what the targets should and do hold. Test modules import from here, never from
each other."""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msal
import pymisp
import requests

import script
from defender_client import defender_key
from misp_transformer import DefenderTransformer, GraphTransformer, MappingPolicy, StixTransformer
from sentinel_client import key_and_generation, misp_reference
from standins import StandIns

ROOT = Path(__file__).resolve().parent.parent


def write_config(directory: Path, standins: Any, **overrides: Any) -> Path:
    """The stand-ins' tool config with small MISP pages, so every test pages several times."""
    return standins.write_tool_config(directory, **{"misp_event_limit_per_page": 2, **overrides})


@dataclasses.dataclass
class Run:
    code: int
    out: str
    err: str
    log_dir: Path

    def logs(self, name: str) -> list[Any]:
        """Parsed JSON files in the log directory of one kind (`<time>_<name>_<sequence>.json`)."""
        return [json.loads(p.read_text()) for p in sorted(self.log_dir.glob(f"*_{name}_*.json"))]

    def log_text(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("*.json")))


def run_cli(config: Path, *args: str, capsys: Any) -> Run:
    """script.main in this process (the stand-ins' CA is trusted through REQUESTS_CA_BUNDLE)."""
    out = io.StringIO()
    code = script.main(["--config", str(config), *args], out=out)
    captured = capsys.readouterr()
    return Run(code, out.getvalue() + captured.out, captured.err, config.parent / "logs")


def run_process(config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """script.py as cron runs it: a separate process, its own environment; a run that outlives
    `timeout` seconds fails the test (subprocess.TimeoutExpired)."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "script.py"), "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd="/",
    )
    return Run(completed.returncode, completed.stdout, completed.stderr, config.parent / "logs")


def start(config: Path, *args: str) -> subprocess.Popen[bytes]:
    """script.py started in the background (to be killed or raced), output discarded."""
    return subprocess.Popen([sys.executable, str(ROOT / "script.py"), "--config", str(config), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def sentinel_config(tmp_path: Path, standins: Any, **overrides: Any) -> Path:
    return write_config(tmp_path, standins, target="sentinel", **overrides)


def store_file(tmp_path: Path, prefix: str) -> Path:
    """The one state file of a target kind under the test's state folder."""
    (path,) = (tmp_path / "state").glob(f"{prefix}_*.sqlite")
    return path


def shift_previous_run(path: Path, days: float, expired: bool) -> None:
    """What a clock jump leaves behind: the previous start (and, far ahead, every expiry) on the
    other side of this run's clock."""
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'started'", (moment.strftime("%Y-%m-%dT%H:%M:%SZ"),))
        if expired:
            db.execute("UPDATE indicators SET expires_at = '2000-01-01T00:00:00Z'")


# --- what MISP holds and what it was asked ------------------------------------------------------

def published(standins: Any) -> list[dict[str, Any]]:
    """The published events in the stand-in's (database) order."""
    return [wrapped["Event"] for wrapped in standins.misp.events if wrapped["Event"].get("published") is True]


def first_published(standins: Any) -> dict[str, Any]:
    return published(standins)[0]


def search_bodies(standins: Any) -> list[dict[str, Any]]:
    return [r.json for r in standins.misp.requests_seen if r.path == "/events/restSearch"]


def misp(s: StandIns) -> pymisp.PyMISP:
    return pymisp.PyMISP(s.misp.url, s.misp_key, ssl=True)


def search(client: pymisp.PyMISP, **filters: Any) -> Any:
    return client.search(controller="events", **{"return_format": "json", **filters})


# --- what the targets should and do hold --------------------------------------------------------

def expected_external_ids(events: list[dict[str, Any]]) -> set[str]:
    """What Graph should hold after a sync: indicators of the published events only."""
    transformer = GraphTransformer(MappingPolicy(), dt.datetime.now(dt.UTC))
    return {
        indicator["externalId"]
        for wrapped in events if wrapped["Event"].get("published") is True
        for indicator in transformer.transform(wrapped).indicators
    }


def expected_stix_ids(events: list[dict[str, Any]]) -> set[str]:
    """What Sentinel should hold live after a sync: indicators of the published events only."""
    transformer = StixTransformer(MappingPolicy(), dt.datetime.now(dt.UTC))
    return {obj["id"] for wrapped in events if wrapped["Event"].get("published") is True
            for obj in transformer.transform(wrapped).indicators}


def expected_defender_keys(events: list[dict[str, Any]], policy: MappingPolicy | None = None) -> set[str]:
    """What Defender should hold after a sync: one indicator per type and value."""
    transformer = DefenderTransformer(policy or MappingPolicy(), dt.datetime.now(dt.UTC))
    return {defender_key(indicator["indicatorType"], indicator["indicatorValue"])
            for wrapped in events if wrapped["Event"].get("published") is True
            for indicator in transformer.transform(wrapped).indicators}


def held_defender_keys(standins: Any, creator: str | None = None) -> collections.Counter[str]:
    """The tenant's indicators by type and value (ours: `creator` = the app's client id)."""
    return collections.Counter(defender_key(item["indicatorType"], item["indicatorValue"])
                               for item in standins.defender.held(creator or standins.client_id))


def defender_config(tmp_path: Path, standins: Any, **overrides: Any) -> Path:
    return write_config(tmp_path, standins, target="defender", **overrides)


def kill_during_defender_import(config: Path, standins: Any) -> None:
    """A run killed (-9) while Defender's answer to its first import is on its way: the import
    is done there, the state holds the rows as `pending` without Defender's ids."""
    standins.defender.delay_next(30, path_suffix="/import")
    process = start(config)
    wait_for(lambda: standins.defender.calls["import"] >= 1)
    process.send_signal(signal.SIGKILL)
    process.wait()


def held_external_ids(standins: Any) -> set[str]:
    return {item["externalId"] for item in standins.graph.indicators.values()}


def assert_no_duplicates(standins: Any) -> None:
    counts = collections.Counter(item["externalId"] for item in standins.graph.indicators.values())
    assert [key for key, n in counts.items() if n > 1] == []


def graph_calls(standins: Any, since: int = 0) -> collections.Counter[str]:
    """Graph POSTs by action name (submitTiIndicators, ...), from request `since` on."""
    return collections.Counter(r.path.rsplit("/", 1)[1] for r in standins.graph.requests_seen[since:] if r.method == "POST")


def active_ids(standins: Any) -> set[str]:
    return {oid for oid, obj in standins.sentinel.objects.items() if not obj.get("revoked")}


def active_keys(standins: Any) -> collections.Counter[str]:
    """Live workspace objects per MISP key (base STIX id), whatever their revival generation."""
    keys: collections.Counter[str] = collections.Counter()
    for stix, obj in standins.sentinel.objects.items():
        if not obj.get("revoked"):
            attribute_uuid, _ = misp_reference(obj)
            found = key_and_generation(stix, attribute_uuid)
            keys[found[0] if found else stix] += 1
    return keys


def uploads(standins: Any, since: int = 0) -> list[Any]:
    return [r for r in standins.sentinel.requests_seen[since:] if r.path.endswith(":upload")]


# --- talking to the stand-ins directly -----------------------------------------------------------

def msal_app(s: StandIns, *, client_id: str | None = None,
             secret: str | None = None) -> msal.ConfidentialClientApplication:
    """A fresh app per call: MSAL caches tokens and (for 60 s) HTTP 400 errors per app."""
    return msal.ConfidentialClientApplication(
        client_id or s.client_id, client_credential=secret or s.client_secret,
        authority=s.entra.authority, instance_discovery=False, azure_region=False)


def graph_session(s: StandIns, resource: str | None = None, client_id: str | None = None,
                  secret: str | None = None) -> requests.Session:
    result = msal_app(s, client_id=client_id, secret=secret).acquire_token_for_client(
        [f"{resource or s.graph.url}/.default"])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {result['access_token']}"
    return session


def query_url(s: StandIns) -> str:
    return (f"{s.sentinel.url}{s.sentinel.management_path}/queryIndicators"
            "?api-version=2025-09-01")


# --- delivery checks (issue 14) -------------------------------------------------------------------

def delivery_counts(run: Run) -> dict[str, int]:
    """The counts of the run's last verification: `--verify`'s delivery file, else the run report's."""
    found = run.logs("delivery") or run.logs("run-report")
    return found[-1]["delivery"]


def undelivered_records(run: Run) -> list[dict[str, Any]]:
    """Every unparsed, missing or deleted indicator logged so far (logs/*_undelivered-<kind>_*.jsonl)."""
    return [json.loads(line) for path in sorted(run.log_dir.glob("*_undelivered-*.jsonl"))
            for line in path.read_text().splitlines()]

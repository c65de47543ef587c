"""Issue 9 "done when": kill storms. MISP changes between runs, each run is stopped at a random
moment by kill -9, SIGTERM or SIGINT, and one clean run afterwards converges on exactly what
MISP wants: no duplicate, no orphan, no lost indicator, for each target.
"""
from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

from constants import ExitCode
from tests.support import ROOT, active_keys, expected_external_ids, expected_stix_ids, run_process, write_config

RUNS = 30
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def ids_attributes(events: list[dict]) -> list[dict]:
    return [a for e in events for a in e["Event"].get("Attribute", []) if a.get("to_ids") is True]


def mutate(rng: random.Random, events: list[dict]) -> None:
    """One change an analyst could make between two nightly runs."""
    attributes = ids_attributes(events)
    change = rng.choice(("delete", "revive", "add", "comment", "value", "publish"))
    if change == "delete":
        rng.choice(attributes)["deleted"] = True
    elif change == "revive":
        dead = [a for a in attributes if a.get("deleted")]
        if dead:
            rng.choice(dead)["deleted"] = False
    elif change == "add":
        event = rng.choice(events)["Event"]
        event.setdefault("Attribute", []).append({"uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "type": "ip-dst",
                                   "category": "Network activity", "to_ids": True, "timestamp": str(int(time.time())),
                                   "value": f"198.51.100.{rng.randrange(1, 255)}"})
    elif change == "comment":
        rng.choice(attributes)["comment"] = f"edited {rng.random():.6f}"
    elif change == "value":
        domains = [a for a in attributes if a["type"] == "domain"]
        if domains:
            rng.choice(domains)["value"] = f"changed-{rng.randrange(10**6)}.example"
    else:
        event = rng.choice(events)["Event"]
        event["published"] = not event.get("published")


def storm(config, rng: random.Random, events: list[dict]) -> collections.Counter:
    """RUNS runs, each after a MISP change and each signalled at a random moment."""
    outcomes: collections.Counter = collections.Counter()  # exit code (-N: killed by signal N)
    for number in range(RUNS):
        for _ in range(3):
            mutate(rng, events)
        process = subprocess.Popen([sys.executable, str(ROOT / "script.py"), "--config", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 2.0))
        process.send_signal(SIGNALS[number % len(SIGNALS)])
        outcomes[process.wait(timeout=60)] += 1
    return outcomes


@pytest.mark.parametrize("target", ["graph", "sentinel"])
def test_kill_storm_then_one_clean_run_converges(standins, tmp_path, target):
    rng = random.Random(f"storm-{target}")
    standins.misp.latency, standins.graph.latency, standins.sentinel.latency = 0.05, 0.4, 0.4  # a run lasts ~2 s
    standins.sentinel.per_minute = None  # 30 processes each pace themselves; the service limit is not under test
    config = write_config(tmp_path, standins, target=target, max_delete_fraction=1.0)
    outcomes = storm(config, rng, standins.misp.events)
    stopped = sum(n for code, n in outcomes.items() if code < 0 or code == ExitCode.INTERRUPTED)
    assert stopped >= RUNS // 2, outcomes
    standins.misp.latency = standins.graph.latency = standins.sentinel.latency = 0.0
    clean = run_process(config)
    assert clean.code == ExitCode.OK, clean.err
    if target == "graph":
        held = collections.Counter(item["externalId"] for item in standins.graph.indicators.values())
        assert set(held) == expected_external_ids(standins.misp.events) and set(held.values()) == {1}
    else:
        live = active_keys(standins)
        assert set(live) == expected_stix_ids(standins.misp.events) and set(live.values()) == {1}
    services = (standins.graph, standins.sentinel)
    before = [len(service.requests_seen) for service in services]
    settled = run_process(config)
    writes = [r for service, since in zip(services, before, strict=True) for r in service.requests_seen[since:] if r.method == "POST"]
    assert settled.code == ExitCode.OK and writes == []  # (a Graph run after kills may read the listing once)

#!/usr/bin/env python3
"""Demo: the whole sync against local HTTPS stand-ins of MISP, Entra ID and Graph.

MISP is seeded with real CIRCL OSINT events. script.py runs as a separate process, exactly as
cron would start it, trusting the stand-ins' private CA through REQUESTS_CA_BUNDLE.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from standins import StandIns, seed_events

HERE = Path(__file__).resolve().parent
WORKDIR = HERE / "demo-run"
EVENTS = HERE / "tests" / "fixtures" / "misp_events"


def run_tool(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HERE / "script.py"), "--config", str(config), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def main() -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()
    with StandIns(WORKDIR, events=seed_events(EVENTS)) as servers:
        config = servers.write_tool_config(WORKDIR)
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(servers.ca_bundle_path), "NO_PROXY": "127.0.0.1,localhost"}
        print(f"MISP stand-in  {servers.misp.url}  ({len(servers.misp.events)} real CIRCL OSINT events)")
        print(f"Entra stand-in {servers.entra.url}\nGraph stand-in {servers.graph.url}\n")
        print(f"$ python script.py --config {config.relative_to(HERE)}")
        sync = run_tool(config, env)
        print(sync.stdout + sync.stderr, end="")
        print(f"exit code {sync.returncode}\n")
        print("$ python script.py   # again: MISP unchanged, so nothing to send")
        again = run_tool(config, env)
        print(again.stdout + again.stderr, end="")
        print(f"exit code {again.returncode}\n")
        print(f"$ python script.py -r --config {config.relative_to(HERE)}")
        listing = run_tool(config, env, "-r")
        if listing.returncode != 0:
            print(listing.stderr, end="")
            return listing.returncode
        indicators = json.loads(listing.stdout)["value"]
        print(f"Graph holds {len(indicators)} indicators owned by this app; the first one:")
        print(json.dumps(indicators[0], indent=2) if indicators else "(none)")
        print(f"\nConfig, .env and logs/ are in {WORKDIR.relative_to(HERE)}/")
        return sync.returncode


if __name__ == "__main__":
    sys.exit(main())

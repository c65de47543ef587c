#!/usr/bin/env python3
"""Demo: the whole sync against local HTTPS stand-ins of MISP, Entra ID, Graph and Sentinel.

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


def json_documents(text: str) -> list[dict]:
    """`-r` prints one JSON document per target, one after the other."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while text[position:].strip():
        document, end = decoder.raw_decode(text, len(text) - len(text[position:].lstrip()))
        documents.append(document)
        position = end
    return documents


def main() -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()
    with StandIns(WORKDIR, events=seed_events(EVENTS)) as servers:
        config = servers.write_tool_config(WORKDIR, target=["graph", "sentinel"])
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(servers.ca_bundle_path), "NO_PROXY": "127.0.0.1,localhost"}
        print(f"MISP stand-in  {servers.misp.url}  ({len(servers.misp.events)} real CIRCL OSINT events)")
        print(f"Entra stand-in {servers.entra.url}\nGraph stand-in {servers.graph.url}")
        print(f"Sentinel stand-in {servers.sentinel.url} (upload API and management API)\n")
        print(f"$ python script.py --config {config.relative_to(HERE)}")
        sync = run_tool(config, env)
        print(sync.stdout + sync.stderr, end="")
        print(f"exit code {sync.returncode}\n")
        print(f"$ python script.py --config {config.relative_to(HERE)}   # again: MISP unchanged, nothing to send")
        again = run_tool(config, env)
        print(again.stdout + again.stderr, end="")
        print(f"exit code {again.returncode}\n")
        print(f"$ python script.py -r --config {config.relative_to(HERE)}")
        listing = run_tool(config, env, "-r")
        if listing.returncode != 0:
            print(listing.stderr, end="")
            return listing.returncode
        graph_listing, sentinel_listing = json_documents(listing.stdout)
        print(f"Graph holds {len(graph_listing['value'])} indicators owned by this app; the first one:")
        print(json.dumps(graph_listing["value"][:1], indent=2))
        print(f"The Sentinel workspace holds {len(sentinel_listing['value'])} indicators from source MISP; the first one:")
        print(json.dumps(sentinel_listing["value"][:1], indent=2))
        print(f"\nConfig, .env and logs/ are in {WORKDIR.relative_to(HERE)}/")
        return sync.returncode


if __name__ == "__main__":
    sys.exit(main())

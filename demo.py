#!/usr/bin/env python3
"""Demo: the whole sync against local HTTPS stand-ins of MISP, Entra ID, Graph, Sentinel and
Defender for Endpoint.

MISP is seeded with real CIRCL OSINT events; after the sync, one scripted match in Sentinel
and one in Defender go back to MISP as sightings. script.py runs as a separate process, exactly as
cron would start it, trusting the stand-ins' private CA through REQUESTS_CA_BUNDLE.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from standins import StandIns, seed_events
from standins.alerts import domain_evidence, file_evidence, ip_evidence, url_evidence

HERE = Path(__file__).resolve().parent
WORKDIR = HERE / "demo-run"
EVENTS = HERE / "tests" / "fixtures" / "misp_events"


def run_tool(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HERE / "script.py"), "--config", str(config), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def json_documents(text: str) -> list[dict[str, Any]]:
    """`-r` prints one JSON document per target, one after the other."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while text[position:].strip():
        document, end = decoder.raw_decode(text, len(text) - len(text[position:].lstrip()))
        documents.append(document)
        position = end
    return documents


def show(title: str, config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Print the command as an operator would type it, then what it printed and its exit code."""
    command = " ".join(["$ python script.py", *args, "--config", str(config.relative_to(HERE))])
    print(command + (f"   # {title}" if title else ""))
    result = run_tool(config, env, *args)
    print(result.stdout + result.stderr, end="")
    print(f"exit code {result.returncode}\n")
    return result


def script_matches(servers: StandIns, sentinel_item: dict[str, Any], defender_item: dict[str, Any]) -> None:
    """An hour ago a "TI map" rule in Sentinel and a custom indicator in Defender matched."""
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    servers.loganalytics.add_alert("TI map IP entity to CommonSecurityLog", [],
                                   {"IndicatorId": sentinel_item["properties"]["externalId"]}, at=moment)
    evidence = {"IpAddress": ip_evidence, "Url": url_evidence, "DomainName": domain_evidence}
    value, kind = defender_item["indicatorValue"], defender_item["indicatorType"]
    built = evidence[kind](value) if kind in evidence else file_evidence(**{kind.removeprefix("File").lower(): value})
    servers.graph.add_alert([built], created=moment)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the misp2sentinel demo against local stand-ins.")
    parser.add_argument("--serve", action="store_true", help="after the demo, keep the stand-ins running for your own "
                                                              "commands until Ctrl-C")
    serve = parser.parse_args().serve
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()
    with StandIns(WORKDIR, events=seed_events(EVENTS)) as servers:
        config = servers.write_tool_config(WORKDIR, target=["graph", "sentinel", {"type": "defender", "tlp_max": "amber"}])
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(servers.ca_bundle_path), "NO_PROXY": "127.0.0.1,localhost"}
        print(f"MISP stand-in  {servers.misp.url}  ({len(servers.misp.events)} real CIRCL OSINT events)")
        print(f"Entra stand-in {servers.entra.url}\nGraph stand-in {servers.graph.url}")
        print(f"Sentinel stand-in {servers.sentinel.url} (upload API and management API)")
        print(f"Defender stand-in {servers.defender.url} (indicators API)\n")
        show("is everything set up?", config, env, "--check")
        sync = show("", config, env)
        show("again: MISP unchanged, nothing to send", config, env)
        print(f"$ python script.py -r --config {config.relative_to(HERE)}")
        listing = run_tool(config, env, "-r")
        if listing.returncode != 0:
            print(listing.stderr, end="")
            return listing.returncode
        graph_listing, sentinel_listing, defender_listing = json_documents(listing.stdout)
        print(f"Graph holds {len(graph_listing['value'])} indicators owned by this app; the first one:")
        print(json.dumps(graph_listing["value"][:1], indent=2))
        print(f"The Sentinel workspace holds {len(sentinel_listing['value'])} indicators from source MISP; the first one:")
        print(json.dumps(sentinel_listing["value"][:1], indent=2))
        print(f"Defender holds {len(defender_listing['value'])} indicators this app created (TLP up to amber); the first one:")
        print(json.dumps(defender_listing["value"][:1], indent=2) + "\n")
        script_matches(servers, sentinel_listing["value"][0], defender_listing["value"][0])
        show("what matched in Sentinel and Defender goes back to MISP as sightings", config, env, "--sightings")
        dotenv = (WORKDIR / ".env").read_text()
        (WORKDIR / ".env").write_text(dotenv.replace(f"AZURE_CLIENT_SECRET={servers.client_secret}",
                                                     "AZURE_CLIENT_SECRET=pasted-the-secret-id-by-mistake"))
        show("with a wrong client secret in demo-run/.env", config, env, "--check")
        (WORKDIR / ".env").write_text(dotenv)
        print(f"Config, .env, logs/ and state/ are in {WORKDIR.relative_to(HERE)}/")
        if serve:
            print(f"\nStand-ins running. In another shell:\n  export REQUESTS_CA_BUNDLE={servers.ca_bundle_path}\n"
                  f"  .venv/bin/python script.py --config {config} --check\nCtrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return sync.returncode


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: real MISP events and a fresh set of HTTPS stand-ins per test."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standins import StandIns, seed_events

FIXTURE_EVENTS_DIR = Path(__file__).parent / "fixtures" / "misp_events"
_PROXY_AND_CA_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                           "ALL_PROXY", "all_proxy", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE",
                           "MISP_KEY", "MISP_URL", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")


@pytest.fixture(scope="session")
def _fixture_events_once() -> list[dict[str, Any]]:
    """Parse the event files once per session; tests only ever get copies of this list."""
    return seed_events(FIXTURE_EVENTS_DIR)


@pytest.fixture
def fixture_events(_fixture_events_once: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The real events from tests/fixtures/misp_events, each {"Event": ...}, safe to mutate."""
    return copy.deepcopy(_fixture_events_once)


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             fixture_events: list[dict[str, Any]]) -> Iterator[StandIns]:
    """Started MISP/Entra/Graph stand-ins seeded with the fixture events.

    For the test's duration only, requests (hence PyMISP and MSAL) trust the stand-ins' CA
    via REQUESTS_CA_BUNDLE, and no proxy or other CA override can interfere.
    """
    for name in _PROXY_AND_CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with StandIns(tmp_path, events=fixture_events) as servers:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(servers.ca_bundle_path))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        yield servers

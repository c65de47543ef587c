"""The seam between the engine and the services: what every target adapter provides, and the
registry that maps `target = "…"` to its adapter.

The engine (engine.py) plans, batches, writes state, recovers and removes; an adapter knows one
service: its protocol, its state key, its listing, its `--check` probe and its rebuild. Adding a
target means one adapter module and one line in ADAPTERS; nothing else branches on a kind.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from defender_client import DefenderAdapter
from graph_client import GraphAdapter
from misp_transformer import Transformer
from ms_client import ItemResult
from rebuild import Rebuilt, Survey
from reconcile import Action, HashRules
from request_log import RequestLog
from sentinel_client import SentinelAdapter
from settings import Settings, TargetSettings
from state_store import StateRow


class Adapter(Protocol):
    """One configured target. The first group is pure (a dry run and `--explain` use it without
    a connection); the second speaks to the service (HTTP only, on worker threads: it returns
    typed outcomes, one ItemResult per item sent and in the order sent, and never writes state)."""

    kind: str  # the `target = "…"` name; names its log files
    label: str  # how reports and messages name this target
    transformer: type[Transformer]  # MISP events -> this service's indicators
    max_batch: int  # items per bulk request
    hash_rules: HashRules  # which fields are content, and which an update may change
    keeps_body: bool  # the state keeps the last object sent (a removal repeats it)
    retires_ids: bool  # a removed id is never reused: the state remembers it for good
    permission: str  # what the app must be granted, as the service's portal names it
    permission_fix: str  # how to grant it
    listing_columns: tuple[tuple[str, int], ...]  # `-r --format table|csv`: (column, width)

    def key_of(self, indicator: dict[str, Any]) -> str:
        """Our key of an indicator: the same for every version of it."""
        ...

    def keys_of_attribute(self, attribute_uuid: str) -> list[str] | None:
        """Every key a MISP attribute can yield (None: keys are values, the uuid cannot tell)."""
        ...

    def attribute_of(self, indicator: dict[str, Any]) -> str:
        """The MISP attribute an indicator came from."""
        ...

    def expiry_of(self, indicator: dict[str, Any]) -> str:
        ...

    def value_of(self, indicator: dict[str, Any]) -> str:
        """The observable an indicator carries, to name it in the summary."""
        ...

    def row_value(self, row: StateRow) -> str:
        """The observable a state row names ("" when the state keeps none)."""
        ...

    def prepare(self, key: str, indicator: dict[str, Any], row: StateRow | None,
                revoked_id: str | None) -> tuple[dict[str, Any], str | None]:
        """The indicator to send for `key`, and the service id it goes under (None: the
        service names it), given its state row and the id last retired for the key."""
        ...

    def owns_id(self, remote_id: str) -> bool:
        """Whether a service id given to `-d` is of this kind of target."""
        ...

    def listing_cell(self, item: dict[str, Any], column: str) -> Any:
        ...

    @property
    def requests_sent(self) -> int:
        ...

    def token(self) -> str:
        """Fail now (MicrosoftError) when no token can be had; returns the token's audience."""
        ...

    def probe(self) -> Iterator[dict[str, Any]]:
        """`--check`'s harmless read: the listing, after any setting it needs is checked."""
        ...

    def listing(self) -> Iterator[dict[str, Any]]:
        """Pages (`{"value": [...]}`) of what the service holds of ours."""
        ...

    def read_back(self, now: dt.datetime) -> Rebuilt:
        """State rows recovered from the service's listing."""
        ...

    def create(self, indicators: list[dict[str, Any]]) -> list[ItemResult]:
        ...

    def change(self, action: Action, items: list[tuple[str, dict[str, Any]]]) -> list[ItemResult]:
        """Update, renew (or, where the service can, replace) indicators it holds: (service id, indicator)."""
        ...

    def remove(self, rows: list[StateRow]) -> list[ItemResult]:
        ...

    def close(self) -> None:
        ...


@runtime_checkable
class Purging(Protocol):
    """A service whose creates are not idempotent and whose observables cannot change in place:
    every copy held under a key can be removed (a retry, a kill or a replacement would else
    leave a duplicate), and a listing shows the copies a late answer made."""

    late_copy_minutes: int  # a create the client gave up on can still make its copy this late

    def purge(self, keys: list[str]) -> list[ItemResult]:
        """Remove every copy held under each key (GONE: there was none)."""
        ...

    def copies(self) -> dict[str, list[str]]:
        """Key -> service ids, from the whole listing."""
        ...

    def delete_copies(self, remote_ids: list[str]) -> list[ItemResult]:
        ...


@runtime_checkable
class Budgeted(Protocol):
    """A service that holds a limited number of indicators, shared with other sources: the
    engine keeps the most valuable within `budget`, and never adds beyond the room left."""

    budget: int  # the most indicators this target may hold

    def rank_of(self, indicator: dict[str, Any]) -> tuple[int, ...]:
        """The indicator's value for the budget, compared as a tuple: larger is better."""
        ...

    def survey(self) -> Survey:
        """A fresh reading of the service, taken before newcomers are ranked."""
        ...


class AdapterClass(Protocol):
    """An adapter module's class: it makes the adapter, and names the target's state."""

    def __call__(self, settings: Settings, spec: TargetSettings, log: RequestLog, online: bool) -> Adapter:
        ...

    def state_key(self, settings: Settings, spec: TargetSettings) -> str:
        """The name of this target's state and lock files: the same service, the same state."""
        ...


ADAPTERS: dict[str, AdapterClass] = {
    "graph": GraphAdapter,
    "sentinel": SentinelAdapter,
    "defender": DefenderAdapter,
}


def adapter(settings: Settings, spec: TargetSettings, log: RequestLog, online: bool = True) -> Adapter:
    """The adapter of one configured target; `online=False` (a dry run, `--explain`) makes one
    that cannot call its service."""
    return ADAPTERS[spec.kind](settings, spec, log, online)


def state_key(settings: Settings, spec: TargetSettings) -> str:
    return ADAPTERS[spec.kind].state_key(settings, spec)

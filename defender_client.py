"""Microsoft Defender for Endpoint's indicators API: the HTTP client and the Defender adapter.

Defender keeps one indicator per (indicatorType, value): `import` creates or updates it, so a
retry or a re-run after a kill updates the same indicator, never a copy. The key of an indicator
is therefore its type and value, and a value two MISP attributes share is sent once. Indicators
are addressed by their numeric id, never by value (a URL breaks an OData key). Only indicators
this app created (`createdBy` = its client id) and tied to MISP (`externalID` = the attribute
UUID) are ever changed or removed; a value another source holds is left alone.

The tenant holds at most 15,000 indicators from every source: the adapter is budgeted
(targets.Budgeted), and the engine keeps the most valuable within `defender_max_indicators`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import constants as C
from alerts_client import AlertsClient
from constants import Outcome
from misp_transformer import DefenderTransformer, Transformer, iso_utc, service_moment
from ms_client import (
    WINDOW_SECONDS,
    Connection,
    ItemResult,
    MicrosoftAdapter,
    MicrosoftClient,
    MicrosoftError,
    RateLimiter,
    connected,
    error_text,
    response_body,
)
from rebuild import Rebuilt, Survey
from reconcile import Action, HashRules, content_hash, event_uuid_of, immutable_hash
from request_log import RequestLog
from settings import ConfigError, Settings, TargetSettings
from sightings import Match
from state_store import StateRow

DEFENDER_HASH_RULES = HashRules(volatile=C.DEFENDER_VOLATILE, updatable=C.DEFENDER_UPDATABLE)
# The fields this tool sends: a listed indicator read back in this form hashes as it was built.
SENT_FIELDS = C.DEFENDER_UPDATABLE | {"indicatorType", "indicatorValue"}


def defender_key(indicator_type: str, value: str) -> str:
    """Defender's identity of an indicator, as our key: the type and the value, compared as
    Defender compares them (a URL exactly, an address canonically, anything else without case)."""
    if indicator_type == "Url":
        return f"{indicator_type}:{value}"
    if indicator_type == "IpAddress":
        try:
            return f"{indicator_type}:{ipaddress.ip_address(value.strip())}"
        except ValueError:
            pass
    return f"{indicator_type}:{value.strip().lower()}"


def key_of_item(item: Mapping[str, Any]) -> str:
    return defender_key(str(item.get("indicatorType", "")), str(item.get("indicatorValue", "")))


def documented_import(count: int) -> Callable[[Any], bool]:
    """import's documented 200: `{"value": [...]}`, one result per indicator sent, each saying
    whether it failed."""
    def documented(body: Any) -> bool:
        value = body.get("value") if isinstance(body, dict) else None
        return (isinstance(value, list) and len(value) == count
                and all(isinstance(item, dict) and isinstance(item.get("isFailed"), bool) for item in value))
    return documented


def no_content(body: Any) -> bool:
    """A 204's body: nothing."""
    return isinstance(body, str) and not body.strip()


class DefenderClient(MicrosoftClient):
    """One tenant's indicators, as seen by this app (Ti.ReadWrite: its own; .All: every one)."""

    service = "Defender for Endpoint"
    permission = "the application permission Ti.ReadWrite (WindowsDefenderATP) with admin consent"

    def __init__(self, connection: Connection, log: RequestLog) -> None:
        super().__init__(connection, log)
        # Each operation has its own documented limit; the client never exceeds one (no 429).
        self.limiters = {name: RateLimiter(per_minute, WINDOW_SECONDS)
                         for name, per_minute in C.DEFENDER_REQUESTS_PER_MINUTE.items()}

    def limiter_for(self, name: str) -> RateLimiter | None:
        return self.limiters.get(name)

    def import_indicators(self, indicators: list[dict[str, Any]]) -> list[ItemResult]:
        """≤500 indicators; one ItemResult per indicator (keyed by defender_key), in order."""
        if len(indicators) > C.DEFENDER_MAX_BATCH:
            raise ValueError(f"a Defender import holds at most {C.DEFENDER_MAX_BATCH} indicators")
        response = self._call("import", "POST", self.resource + C.DEFENDER_IMPORT_PATH, {"Indicators": indicators},
                              documented_import(len(indicators)))
        if response.status_code == 400:
            reason = error_text(response_body(response), "HTTP 400")
            return [ItemResult(key_of_item(item), None, Outcome.REJECTED, f"import refused: {reason}") for item in indicators]
        answers = self._check("import", response, (200,))["value"]
        return [_imported(sent, answer) for sent, answer in zip(indicators, answers, strict=True)]

    def list_pages(self) -> Iterator[dict[str, Any]]:
        """Every indicator the app may see, in pages: @odata.nextLink is followed, and a last
        page that came back full is followed by `$skip` (the docs promise no nextLink)."""
        listed: set[str] = set()
        while True:
            url = f"{self.resource}{C.DEFENDER_TI_PATH}?$top={C.DEFENDER_LIST_PAGE_SIZE}&$skip={len(listed)}"
            full = False
            for page in self.pages("list", url, "@odata.nextLink"):
                ids = {str(item["id"]) for item in page["value"]}
                if ids and ids <= listed:
                    raise MicrosoftError("list: Defender for Endpoint returned a page of indicators already listed",
                                         C.ErrorCause.PAGING_LOOP)
                listed |= ids
                full = len(page["value"]) >= C.DEFENDER_LIST_PAGE_SIZE and not page.get("@odata.nextLink")
                yield page
            if not full:
                return

    def batch_delete(self, ids: list[str]) -> list[ItemResult]:
        """BatchDelete in batches of 500. Its 404 ("any id not found") and 403 (an id outside
        the app's device groups) do not say which ids went: each id is then settled alone."""
        results: list[ItemResult] = []
        for start in range(0, len(ids), C.DEFENDER_MAX_BATCH):
            chunk = ids[start:start + C.DEFENDER_MAX_BATCH]
            response = self._call("BatchDelete", "POST", self.resource + C.DEFENDER_BATCH_DELETE_PATH,
                                  {"IndicatorIds": chunk}, no_content)
            if response.status_code in (403, 404):
                results += [self.delete_one(remote_id) for remote_id in chunk]
            elif response.status_code == 400:
                reason = error_text(response_body(response), "HTTP 400")
                results += [ItemResult(remote_id, remote_id, Outcome.REJECTED, f"BatchDelete refused: {reason}")
                            for remote_id in chunk]
            else:
                self._check("BatchDelete", response, (200, 204))
                results += [ItemResult(remote_id, remote_id) for remote_id in chunk]
        return results

    def delete_one(self, remote_id: str) -> ItemResult:
        response = self._call("delete", "DELETE", f"{self.resource}{C.DEFENDER_TI_PATH}/{remote_id}", None, no_content)
        if response.status_code == 404:
            return ItemResult(remote_id, remote_id, Outcome.GONE, "not found")
        if response.status_code == 403:
            return ItemResult(remote_id, remote_id, Outcome.REJECTED, error_text(response_body(response), "HTTP 403"))
        self._check("delete", response, (200, 204))
        return ItemResult(remote_id, remote_id)


def _imported(sent: Mapping[str, Any], answer: Mapping[str, Any]) -> ItemResult:
    """One import result. The answer names the value it is about: one that names another value
    leaves this indicator's fate unknown (rejected: the next run sends it again)."""
    key = key_of_item(sent)
    named = answer.get("indicator")
    if isinstance(named, str) and defender_key(str(sent["indicatorType"]), named) != key:
        return ItemResult(key, None, Outcome.REJECTED, "Defender answered for another indicator")
    if answer["isFailed"]:
        return ItemResult(key, None, Outcome.REJECTED, str(answer.get("failureReason") or "failed without a reason"))
    remote_id = answer.get("id")
    if not isinstance(remote_id, (str, int)) or not str(remote_id):
        return ItemResult(key, None, Outcome.REJECTED, "Defender returned no id")
    return ItemResult(key, str(remote_id))


@dataclasses.dataclass
class TenantView:
    """What one listing of the tenant showed: ours by key, the values others hold, the total."""

    ours: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    foreign: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> who created it
    total: int = 0


def sent_form(item: Mapping[str, Any]) -> dict[str, Any]:
    """A listed indicator in the form this tool sends it (Defender adds its own fields)."""
    return {name: item[name] for name in sorted(SENT_FIELDS) if item.get(name) is not None}


def defender_rows(items: Iterable[Mapping[str, Any]], now: dt.datetime) -> Rebuilt:
    """State rows from our indicators in the listing."""
    rebuilt = Rebuilt()
    for item in items:
        body = sent_form(item)
        rebuilt.rows.append(StateRow(key_of_item(item), str(item["id"]), content_hash(body, DEFENDER_HASH_RULES),
                                     immutable_hash(body, DEFENDER_HASH_RULES), str(item.get("expirationTime") or ""),
                                     event_uuid_of(item, "description"), iso_utc(now), json.dumps(body, sort_keys=True)))
    return rebuilt


# fileDetails' hash properties -> Defender's indicator types.
_HASH_TYPES = (("sha1", "FileSha1"), ("sha256", "FileSha256"), ("md5", "FileMd5"))


def _url_host(url: str) -> str:
    """A URL's host (Defender's DomainName indicators match connections to it); "" if none."""
    try:
        return urllib.parse.urlsplit(url if "://" in url else f"//{url}").hostname or ""
    except ValueError:
        return ""


def evidence_keys(evidence: Mapping[str, Any]) -> Iterator[str]:
    """The indicator keys one alert evidence can have matched: its address, URL (and the URL's
    host), domain, or file hashes (a file's, or a process's image file)."""
    for field, indicator_type in (("ipAddress", "IpAddress"), ("url", "Url"), ("domainName", "DomainName")):
        if isinstance(value := evidence.get(field), str) and value.strip():
            yield defender_key(indicator_type, value)
            if field == "url" and (host := _url_host(value)):
                yield defender_key("DomainName", host)
    for details in (evidence.get("fileDetails"), evidence.get("imageFile")):
        if isinstance(details, Mapping):
            for field, indicator_type in _HASH_TYPES:
                if isinstance(value := details.get(field), str) and value.strip():
                    yield defender_key(indicator_type, value)


def alert_matches(alert: Mapping[str, Any]) -> Iterator[Match]:
    """One Match per key the alert's evidence (a list) can have matched; one without a key when
    it names none (so the alert is still counted). An alert without a readable creation time is
    one Match without a time: counted as unreadable, never sighted."""
    moment = service_moment(alert.get("createdDateTime"))
    evidence = str(alert.get("id", ""))
    if moment is None:
        yield Match(None, evidence)
        return
    items = alert.get("evidence")
    keys = sorted({key for item in items if isinstance(item, Mapping) for key in evidence_keys(item)}
                  if isinstance(items, list) else ())
    yield from (Match(moment, evidence, key=key) for key in keys or [""])


class DefenderAdapter(MicrosoftAdapter[DefenderClient]):
    """The Defender tenant as a budgeted target: import creates and updates, BatchDelete removes."""

    kind = "defender"
    transformer: type[Transformer] = DefenderTransformer
    max_batch = C.DEFENDER_MAX_BATCH
    hash_rules = DEFENDER_HASH_RULES
    keeps_body = True
    retires_ids = False
    permission = DefenderClient.permission
    permission_fix = ("add the application permission Ti.ReadWrite of WindowsDefenderATP (APIs my organization uses) "
                      "and grant admin consent")
    listing_columns: tuple[tuple[str, int], ...] = C.DEFENDER_LISTING_COLUMNS
    matches_permission = AlertsClient.permission
    matches_fix = (f"add the Microsoft Graph application permission {C.GRAPH_ALERTS_PERMISSION} (Microsoft Graph, not "
                   "WindowsDefenderATP) and grant admin consent")

    def __init__(self, settings: Settings, spec: TargetSettings, log: RequestLog, online: bool) -> None:
        self.label = f"defender tenant {settings.tenant}" if settings.tenant else "defender"
        self.budget = spec.defender_max_indicators
        self._owner = self.owner(settings)
        if online and not self._owner:
            raise ConfigError("target defender with a system-assigned managed identity needs graph_auth['client_id'] set "
                              "to the identity's client id: only indicators it created (createdBy) are ever changed")
        connection = Connection.of(settings, spec.defender_endpoint, C.DEFENDER_REQUESTS_PER_MINUTE["list"],
                                   audience=spec.defender_scope)
        self._alerts = AlertsClient(Connection.of(settings, settings.graph_endpoint, settings.graph_requests_per_minute),
                                    log) if online else None
        super().__init__(DefenderClient(connection, log) if online else None, self._alerts)
        self._view: TenantView | None = None
        self._view_lock = threading.Lock()  # creates run on worker threads: one listing at a time

    @staticmethod
    def owner(settings: Settings) -> str:
        """The client id Defender records as `createdBy`: a user-assigned identity's own, else
        the app's (a system-assigned identity's must be set as client_id; "" when unknown)."""
        if settings.managed_identity not in ("", "system"):
            return settings.managed_identity.lower()
        return settings.client_id.lower()

    # --- pure -------------------------------------------------------------------------------
    @staticmethod
    def state_key(settings: Settings, spec: TargetSettings) -> str:
        """Per tenant and app: what this app created in the tenant."""
        return f"defender_{settings.tenant}_{DefenderAdapter.owner(settings)}"

    def key_of(self, indicator: dict[str, Any]) -> str:
        return key_of_item(indicator)

    def keys_of_attribute(self, attribute_uuid: str) -> list[str] | None:
        """Keys are values: an attribute's cannot be told without its value."""
        return None

    def attribute_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator.get("externalID", "")).lower()

    def expiry_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator["expirationTime"])

    def value_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator.get("indicatorValue", ""))

    def row_value(self, row: StateRow) -> str:
        return str(json.loads(row.body).get("indicatorValue", "")) if row.body else ""

    def prepare(self, key: str, indicator: dict[str, Any], row: StateRow | None,
                revoked_id: str | None) -> tuple[dict[str, Any], str | None]:
        """The indicator without its rank (never sent), under the id Defender gave it."""
        sent = {name: value for name, value in indicator.items() if name != C.DEFENDER_RANK_FIELD}
        return sent, row.remote_id if row else None

    def rank_of(self, indicator: dict[str, Any]) -> tuple[int, ...]:
        """(action, confidence, threat level, event time): larger is more valuable."""
        return tuple(int(part) for part in indicator[C.DEFENDER_RANK_FIELD])

    def owns_id(self, remote_id: str) -> bool:
        """Defender's ids are numbers."""
        return bool(C.ASCII_NUMBER_RE.fullmatch(remote_id))

    def listing_cell(self, item: dict[str, Any], column: str) -> Any:
        return item.get(column, "")

    # --- the service ------------------------------------------------------------------------
    def view(self, fresh: bool = False) -> TenantView:
        """One listing of the tenant, kept for the run (`fresh`: list again)."""
        with self._view_lock:
            return self._listed_view(fresh)

    def _listed_view(self, fresh: bool) -> TenantView:
        if self._view is None or fresh:
            view = TenantView()
            for page in self.client.list_pages():
                for item in page["value"]:
                    view.total += 1
                    if self._is_ours(item):
                        view.ours[key_of_item(item)] = item
                    else:
                        view.foreign[key_of_item(item)] = str(item.get("createdBy") or "another source")
            self._view = view
        return self._view

    def _is_ours(self, item: Mapping[str, Any]) -> bool:
        """Created by this app and tied to a MISP attribute: Ti.ReadWrite.All shows every
        source's indicators, and none of theirs is ever touched."""
        return (str(item.get("createdBy") or "").lower() == self._owner
                and bool(C.UUID_RE.fullmatch(str(item.get("externalID") or ""))))

    def survey(self) -> Survey:
        """The tenant's room and the values other sources hold, from a fresh listing (with
        Ti.ReadWrite it shows only ours, and the service's own refusal is the last guard)."""
        view = self.view(fresh=True)
        return Survey(max(C.DEFENDER_TENANT_MAX - view.total, 0), frozenset(view.foreign))

    def probe(self) -> Iterator[dict[str, Any]]:
        return self.listing()

    def listing(self) -> Iterator[dict[str, Any]]:
        """Pages of our own indicators."""
        for page in self.client.list_pages():
            yield {"value": [item for item in page["value"] if self._is_ours(item)]}

    def read_back(self, now: dt.datetime) -> Rebuilt:
        view = self.view(fresh=True)
        rebuilt = defender_rows(view.ours.values(), now)
        rebuilt.foreign = len(view.foreign)
        return rebuilt

    def create(self, indicators: list[dict[str, Any]]) -> list[ItemResult]:
        """Import, except values another source holds: import would take them over."""
        foreign = self.view().foreign
        results: dict[int, ItemResult] = {}
        sendable: list[tuple[int, dict[str, Any]]] = []
        for index, indicator in enumerate(indicators):
            key = key_of_item(indicator)
            if key in foreign:
                results[index] = ItemResult(key, None, Outcome.REJECTED, (
                    f"the tenant already holds this indicator from {foreign[key]}; misp2sentinel never changes an "
                    "indicator it did not create"))
            else:
                sendable.append((index, indicator))
        if sendable:
            imported = self.client.import_indicators([indicator for _, indicator in sendable])
            results.update((index, result) for (index, _), result in zip(sendable, imported, strict=True))
        return [results[index] for index in range(len(indicators))]

    def change(self, action: Action, items: list[tuple[str, dict[str, Any]]]) -> list[ItemResult]:
        """import updates the indicator Defender holds under the same type and value."""
        return self.client.import_indicators([indicator for _, indicator in items])

    def matches(self, since: dt.datetime, until: dt.datetime) -> Iterator[Match]:
        """What custom indicators matched: Graph's alerts_v2 with detectionSource customTi."""
        for alert in connected(self._alerts, self).custom_ti_alerts(since, until):
            yield from alert_matches(alert)

    def probe_matches(self) -> None:
        connected(self._alerts, self).probe()

    def remove(self, rows: list[StateRow]) -> list[ItemResult]:
        """BatchDelete by id. A row a killed run left `pending` has no id: the listing gives it
        (and when it lists none, that import never landed)."""
        ours = self.view().ours if not all(row.remote_id for row in rows) else {}
        ids = [row.remote_id or str(ours.get(row.external_id, {}).get("id", "")) for row in rows]
        deleted = iter(self.client.batch_delete([remote_id for remote_id in ids if remote_id]))
        return [next(deleted) if remote_id else ItemResult(row.external_id, None, Outcome.GONE, "not in the listing")
                for row, remote_id in zip(rows, ids, strict=True)]

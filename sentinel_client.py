"""Microsoft Sentinel: the STIX objects upload API and the management API that reads a workspace
back (the client), and the Sentinel adapter.

Uploads are paced by the shared sliding-window limiter so the documented per-minute limit is
never exceeded, and a 429 still gets the same objects resent after the wait it names. Every change
is an upload of the same STIX id with a newer `modified`; removal re-uploads it with `revoked:
true` (revocation is permanent: a revived key gets the next id, derived from the revoked one).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import constants as C
import loganalytics_client as loganalytics
from constants import ErrorCause, Outcome
from loganalytics_client import LogAnalyticsClient
from misp_transformer import StixTransformer, Transformer, iso_utc, service_moment, stix_id, stix_time
from ms_client import (
    Connection,
    ItemResult,
    MicrosoftAdapter,
    MicrosoftClient,
    MicrosoftError,
    connected,
    error_text,
    response_body,
)
from rebuild import Rebuilt
from reconcile import Action, HashRules, content_hash, immutable_hash, next_modified
from request_log import RequestLog
from settings import ConfigError, Settings, TargetSettings
from sightings import Match
from state_store import StateRow

_EVENT_URL_RE = re.compile(r"/events/view/([0-9a-fA-F-]{36})$")
# A revoked id that comes back gets stix_id(revoked id); no key is revived more often than this.
MAX_GENERATIONS = 64
# Sentinel documents no error codes, only messages: this one says the id is revoked for good.
REVOKED_MESSAGE_RE = re.compile(r"\brevoked\b")  # how a refusal of an already revoked object reads


@dataclasses.dataclass(frozen=True)
class Workspace:
    """The slice of the settings that names one workspace in the upload and management APIs."""

    upload_url: str
    query_url: str
    sourcesystem: str

    @classmethod
    def of(cls, settings: Settings, spec: TargetSettings) -> Workspace:
        upload = C.SENTINEL_UPLOAD_PATH.format(workspace_id=spec.workspace_id)
        query = C.SENTINEL_QUERY_PATH.format(subscription_id=spec.subscription_id, resource_group=spec.resource_group,
                                             workspace_name=spec.workspace_name)
        return cls(f"{settings.sentinel_endpoint}{upload}?api-version={settings.sentinel_api_version}",
                   f"{settings.management_endpoint}{query}?api-version={settings.management_api_version}",
                   settings.sourcesystem)


STIX_HASH_RULES = HashRules(volatile=C.STIX_VOLATILE, updatable=C.STIX_UPDATABLE)


class SentinelClient(MicrosoftClient):
    """One workspace: upload STIX objects, list what our sourcesystem holds there."""

    service = "Sentinel"
    permission = "the Microsoft Sentinel Contributor role on the workspace"
    limited_operations = frozenset({"upload"})  # the management API has its own, separate limits

    def __init__(self, connection: Connection, workspace: Workspace, log: RequestLog) -> None:
        super().__init__(connection, log)
        self.workspace = workspace

    def upload(self, objects: list[dict[str, Any]]) -> list[ItemResult]:
        """≤100 objects; every index the service does not list in `errors` was accepted."""
        if len(objects) > C.SENTINEL_MAX_BATCH:
            raise ValueError(f"a Sentinel upload holds at most {C.SENTINEL_MAX_BATCH} objects")
        body = {"sourcesystem": self.workspace.sourcesystem, "stixobjects": objects}
        documented = documented_upload(len(objects))
        response = self._call("upload", "POST", self.workspace.upload_url, body, documented)
        answer = response_body(response)
        if response.status_code in (200, 400) and isinstance(answer, dict) and documented(answer):
            return _results(objects, answer["errors"])
        if response.status_code == 400:
            reason = error_text(answer, "HTTP 400")
            return [ItemResult(obj["id"], None, Outcome.REJECTED, f"upload refused: {reason}") for obj in objects]
        if response.status_code == 404:
            raise MicrosoftError(f"upload: {error_text(answer, 'HTTP 404')} (check workspace_id)", ErrorCause.NOT_FOUND, fatal=True)
        self._check("upload", response, (200,))
        return [ItemResult(obj["id"], obj["id"]) for obj in objects]

    def query_pages(self) -> Iterator[dict[str, Any]]:
        """Pages of the workspace's indicators from our sourcesystem; nextLink read with GET,
        and a repeated nextLink (a known Azure paging bug) stops the listing with an error."""
        criteria = {"pageSize": C.SENTINEL_QUERY_PAGE_SIZE, "sources": [self.workspace.sourcesystem]}
        return self.pages("queryIndicators", self.workspace.query_url, "nextLink", "POST", criteria)


def documented_upload(count: int) -> Callable[[Any], bool]:
    """Sentinel's documented answer: an empty body (all accepted) or `{"errors": [...]}` whose
    every entry names a `recordIndex` among the `count` objects sent, with its `errorMessages`;
    anything else (a proxy's HTML page, truncated JSON, entries it cannot be sure of) says
    nothing about what arrived."""
    def entry(error: Any) -> bool:
        index = error.get("recordIndex") if isinstance(error, dict) else None
        return (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < count
                and isinstance(error.get("errorMessages", []), list))

    def documented(body: Any) -> bool:
        if isinstance(body, str):
            return not body.strip()
        return isinstance(body, dict) and isinstance(body.get("errors"), list) and all(map(entry, body["errors"]))
    return documented


def _results(objects: list[dict[str, Any]], errors: list[Any]) -> list[ItemResult]:
    """recordIndex is 0-based into the uploaded list."""
    messages: dict[int, str] = {}
    for error in errors:
        texts = error.get("errorMessages") or ["rejected without a reason"]
        messages[error["recordIndex"]] = "; ".join(str(text) for text in texts)
    return [_result(obj, messages.get(index)) for index, obj in enumerate(objects)]


def _result(obj: dict[str, Any], message: str | None) -> ItemResult:
    stix = str(obj["id"])
    if message is None:
        return ItemResult(stix, stix)
    revoked = REVOKED_MESSAGE_RE.search(_without_own_values(message, obj).lower())
    return ItemResult(stix, None, Outcome.ALREADY_REVOKED if revoked else Outcome.REJECTED, message)


def _without_own_values(message: str, obj: dict[str, Any]) -> str:
    """The service's words alone: a message that quotes a value we sent (a refused
    `revoked-c2.example` in its pattern) must not read as "already revoked"."""
    for value in sorted(_strings(obj), key=len, reverse=True):
        message = message.replace(value, "")
    return message


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    """Every string in a JSON value, down to SENTINEL_CELL_DEPTH levels (deeper is hostile)."""
    if depth > C.SENTINEL_CELL_DEPTH:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)


def revocation(last: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The last version sent, again, revoked, with a `modified` later than that version's."""
    return {**last, "revoked": True, "modified": next_modified(stix_time(now), last.get("modified"))}



def stix_object(item: Mapping[str, Any]) -> dict[str, Any]:
    """The STIX indicator a queryIndicators item shows, in the form this tool uploads it, so
    a revocation can repeat it and its content hash matches what the transformer builds."""
    props = properties(item)
    obj: dict[str, Any] = {
        "type": "indicator", "spec_version": "2.1", "id": props.get("externalId"),
        "created": props.get("created"), "modified": props.get("modified"),
        "valid_from": props.get("validFrom"), "pattern_type": props.get("patternType", "stix"),
        "pattern_version": "2.1", "pattern": props.get("pattern"),
    }
    optional = {
        "valid_until": props.get("validUntil"), "name": props.get("displayName"),
        "description": props.get("description"), "indicator_types": props.get("threatTypes"),
        "confidence": props.get("confidence"), "labels": props.get("labels"),
        "object_marking_refs": props.get("objectMarkingRefs"),
        "kill_chain_phases": [{"kill_chain_name": p.get("killChainName"), "phase_name": p.get("phaseName")}
                              for p in _objects(props.get("killChainPhases"))],
        "external_references": [{key: ref[name] for key, name in C.STIX_REFERENCE_FIELDS.items() if name in ref}
                                for ref in _objects(props.get("externalReferences"))],
    }
    obj.update({key: value for key, value in optional.items() if value not in (None, [], "")})
    return obj


def properties(item: Mapping[str, Any]) -> Mapping[str, Any]:
    """A queryIndicators item's properties; junk there makes the item foreign, not a crash."""
    props = item.get("properties")
    return props if isinstance(props, Mapping) else {}


def _objects(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def misp_reference(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(attribute uuid, event uuid) from the object's MISP external reference ("" if absent)."""
    for ref in _objects(obj.get("external_references")):
        if ref.get("source_name") == "MISP" and isinstance(ref.get("external_id"), str):
            match = _EVENT_URL_RE.search(str(ref.get("url", "")))
            return ref["external_id"].lower(), match.group(1).lower() if match else ""
    return "", ""


def key_and_generation(stix: str, attribute_uuid: str) -> tuple[str, int] | None:
    """Which key (base STIX id) and revival generation a STIX id belongs to, or None."""
    for suffix in C.STIX_PART_SUFFIXES:
        key = candidate = stix_id(attribute_uuid + suffix)
        for generation in range(MAX_GENERATIONS):
            if candidate == stix:
                return key, generation
            candidate = stix_id(candidate)
    return None


def sentinel_rows(items: Iterable[Mapping[str, Any]], now: dt.datetime) -> Rebuilt:
    """Sentinel state rows from the workspace: per key, its newest generation; a revoked one
    becomes the key's revoked id (a revival then gets the next id), a live one an owned row."""
    newest: dict[str, tuple[int, dict[str, Any], str, bool]] = {}
    rebuilt = Rebuilt()
    for item in items:
        obj = stix_object(item)
        revoked = properties(item).get("revoked") is True
        attribute_uuid, event_uuid = misp_reference(obj)
        found = key_and_generation(str(obj["id"]), attribute_uuid) if attribute_uuid else None
        if found is None:
            rebuilt.foreign += 1
            continue
        key, generation = found
        if key not in newest or generation > newest[key][0]:
            newest[key] = (generation, obj, event_uuid, revoked)
    for key, (_, obj, event_uuid, revoked) in newest.items():
        if revoked:
            rebuilt.revoked.append((key, obj["id"]))
        else:
            rebuilt.rows.append(StateRow(key, obj["id"], content_hash(obj, STIX_HASH_RULES), immutable_hash(obj, STIX_HASH_RULES),
                                         str(obj.get("valid_until", "")), event_uuid, iso_utc(now), json.dumps(obj, sort_keys=True)))
    return rebuilt


def _texts(value: Any) -> Iterator[str]:
    """Every string in a cell, and in the JSON a string holds (dynamic columns come as JSON text).
    JSON too deep for json to parse is read as its text."""
    for text in _strings(value):
        yield text
        with contextlib.suppress(ValueError, RecursionError):
            parsed = json.loads(text)
            if not isinstance(parsed, str):
                yield from _strings(parsed)


def _entity_values(value: Any) -> Iterator[str]:
    """The observables of an alert's entities (IP Address, URL Url, DNS DomainName, host
    HostName, file hash Value), from the Entities column."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError, RecursionError):
            yield from _entity_values(json.loads(value))
    elif isinstance(value, list):
        for entity in value:
            if isinstance(entity, Mapping):
                yield from (str(entity[field]) for field in C.SENTINEL_ENTITY_VALUES
                            if isinstance(entity.get(field), str) and entity[field].strip())


_PATTERN_LITERAL_RE = re.compile(r"= '((?:[^'\\]|\\.)*)'\]$")


def pattern_value(pattern: str) -> str:
    """The string a single-comparison pattern compares with (misp_transformer.stix_quote undone); "" if none."""
    found = _PATTERN_LITERAL_RE.search(pattern)
    return re.sub(r"\\(.)", r"\1", found.group(1)) if found else ""


def timed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The match query's rows; without TimeGenerated a configuration error (each row would be skipped unseen)."""
    if rows and "TimeGenerated" not in rows[0]:
        raise ConfigError(f"sentinel_match_query returns no TimeGenerated column (it returns {', '.join(rows[0])}): "
                          "keep TimeGenerated in its project")
    return rows


def match_row(row: Mapping[str, Any]) -> Iterator[Match]:
    """The matches of one row of the match query: the STIX indicator ids it names anywhere
    (IndicatorId, ExtendedProperties, Entities), else the observables it names (MatchedValue,
    the entities); the time is TimeGenerated. A row without a readable time is one Match
    without a time: counted as unreadable, never sighted. A row without SystemAlertId is its own alert."""
    moment = service_moment(row.get("TimeGenerated"))
    evidence = str(row.get("SystemAlertId") or "") or json.dumps(row, sort_keys=True, default=str)
    if moment is None:
        yield Match(None, evidence)
        return
    ids = sorted({found.lower() for column in ("IndicatorId", "ExtendedProperties", "Entities")
                  for text in _texts(row.get(column)) for found in C.STIX_INDICATOR_ID_SEARCH_RE.findall(text)})
    if ids:
        yield from (Match(moment, evidence, key=ident) for ident in ids)
        return
    values = sorted({value for value in (*_texts(row.get("MatchedValue")), *_entity_values(row.get("Entities"))) if value.strip()})
    yield from (Match(moment, evidence, value=value) for value in values or [""])


class SentinelAdapter(MicrosoftAdapter[SentinelClient]):
    """A Sentinel workspace as a target."""

    kind = "sentinel"
    transformer: type[Transformer] = StixTransformer
    max_batch = C.SENTINEL_MAX_BATCH
    hash_rules = STIX_HASH_RULES
    keeps_body = True
    retires_ids = True
    permission = SentinelClient.permission
    permission_fix = "assign the app the Microsoft Sentinel Contributor role on the workspace"
    listing_columns: tuple[tuple[str, int], ...] = C.SENTINEL_LISTING_COLUMNS
    matches_permission = LogAnalyticsClient.permission
    matches_fix = ("add the API permission Log Analytics API Data.Read (admin consent) and the Log Analytics Reader role "
                   "on the workspace")

    def __init__(self, settings: Settings, spec: TargetSettings, log: RequestLog, online: bool) -> None:
        self.label = spec.label
        self._spec = spec
        self._config_name = settings.config_path.name
        connection = Connection.of(settings, settings.management_endpoint, settings.max_requests_per_minute)
        self._match_query = settings.sentinel_match_query
        self._analytics = LogAnalyticsClient(loganalytics.connection(settings), spec.workspace_id, log) if online else None
        super().__init__(SentinelClient(connection, Workspace.of(settings, spec), log) if online else None, self._analytics)

    # --- pure -------------------------------------------------------------------------------
    @staticmethod
    def state_key(settings: Settings, spec: TargetSettings) -> str:
        """Per workspace."""
        return f"sentinel_{spec.workspace_id}"

    def key_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator["id"])

    def keys_of_attribute(self, attribute_uuid: str) -> list[str]:
        return [stix_id(attribute_uuid + suffix) for suffix in C.STIX_PART_SUFFIXES]

    def attribute_of(self, indicator: dict[str, Any]) -> str:
        references = indicator.get("external_references") or [{}]
        return str(references[0].get("external_id", "")).lower()

    def expiry_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator["valid_until"])

    def value_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator.get("name", ""))

    def row_value(self, row: StateRow) -> str:
        """The observable the pattern compares (an alert's entity holds that), not `name`: MISP's
        text, which may be defanged or a composite such as domain|ip."""
        return pattern_value(str(json.loads(row.body).get("pattern", ""))) if row.body else ""

    def prepare(self, key: str, indicator: dict[str, Any], row: StateRow | None,
                revoked_id: str | None) -> tuple[dict[str, Any], str | None]:
        """Keep the first upload's id, `created` and `valid_from`, and send a `modified` later
        than the last version's even when the clock is behind; a key whose id was revoked gets
        a new id derived from the revoked one (still the same on every machine)."""
        if row is not None:
            last = json.loads(row.body) if row.body else indicator
            indicator = {**indicator, "id": row.remote_id, "created": last["created"], "valid_from": last["valid_from"],
                         "modified": next_modified(indicator["modified"], last.get("modified"))}
        elif revoked_id is not None:
            indicator = {**indicator, "id": stix_id(revoked_id)}
        return indicator, str(indicator["id"])

    def owns_id(self, remote_id: str) -> bool:
        return bool(C.STIX_INDICATOR_ID_RE.fullmatch(remote_id))

    def listing_cell(self, item: dict[str, Any], column: str) -> Any:
        return item.get("properties", {}).get(column, "")

    # --- the service ------------------------------------------------------------------------
    def probe(self) -> Iterator[dict[str, Any]]:
        return self.listing()

    def listing(self) -> Iterator[dict[str, Any]]:
        """The management API names the workspace by subscription, resource group and name."""
        self._spec.require_management(self._config_name)
        return self.client.query_pages()

    def read_back(self, now: dt.datetime) -> Rebuilt:
        """The workspace's indicators from our sourcesystem (needs the management settings)."""
        return sentinel_rows((item for page in self.listing() for item in page["value"]), now)

    def create(self, indicators: list[dict[str, Any]]) -> list[ItemResult]:
        return self.client.upload(indicators)

    def change(self, action: Action, items: list[tuple[str, dict[str, Any]]]) -> list[ItemResult]:
        """Every change, a replacement too, is an upload of the same id with a newer `modified`."""
        return self.client.upload([indicator for _, indicator in items])

    def matches(self, since: dt.datetime, until: dt.datetime) -> Iterator[Match]:
        """The rows of sentinel_match_query whose TimeGenerated falls in the window. A query
        without that column is a configuration error: each of its rows would be skipped unseen."""
        for row in timed(connected(self._analytics, self).query(self._match_query, f"{iso_utc(since)}/{iso_utc(until)}")):
            yield from match_row(row)

    def probe_matches(self) -> None:
        """`--check` holds the query to what a sightings run needs, so it does not pass one that exits 2."""
        timed(connected(self._analytics, self).query(f"{self._match_query} | take 1", C.SIGHTINGS_PROBE_TIMESPAN))

    def remove(self, rows: list[StateRow]) -> list[ItemResult]:
        """Revoke: the last object sent, again, with `revoked: true` and a newer `modified`."""
        now = dt.datetime.now(dt.UTC)
        return self.client.upload([revocation(json.loads(row.body), now) for row in rows])

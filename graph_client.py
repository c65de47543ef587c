"""Microsoft Graph tiIndicators: the HTTP client for one Entra app, and the Graph adapter.

The client reads each item of a bulk answer (200, or 206 with a JSON error inside a string
per failed item) and pairs it with what was sent, by position checked by key; it turns Graph's
documented codes into outcomes (a delete's resultInfo 404, an update's NotFound: gone).
The adapter (targets.Adapter) holds the rest of what is Graph's: the state key, the update
bodies, the listing's columns, the `--check` probe and the rebuild from Graph's listing.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import constants as C
from constants import Outcome
from misp_transformer import GraphTransformer, Transformer, iso_utc
from ms_client import Connection, ItemResult, MicrosoftAdapter, MicrosoftClient, error_text, response_body, value_list
from rebuild import Rebuilt
from reconcile import Action, HashRules, content_hash, event_uuid_of, immutable_hash
from request_log import RequestLog
from settings import Settings, TargetSettings
from state_store import StateRow

# Graph's per-item error codes that say the indicator is no longer there.
GONE_CODES = frozenset({"NotFound", "ResourceNotFound", "ItemNotFound"})
GRAPH_HASH_RULES = HashRules(volatile=C.GRAPH_VOLATILE, updatable=C.GRAPH_UPDATABLE)
# The CSDL's Collection(Edm.String) properties an update may clear: sent as [], never null.
COLLECTIONS = frozenset({"activityGroupNames", "killChain", "malwareFamilyNames", "tags"})


class GraphClient(MicrosoftClient):
    """tiIndicators owned by this app (ThreatIndicators.ReadWrite.OwnedBy)."""

    service = "Graph"
    permission = "ThreatIndicators.ReadWrite.OwnedBy with admin consent"

    # --- operations -------------------------------------------------------------------------
    def submit(self, indicators: list[dict[str, Any]]) -> list[ItemResult]:
        """submitTiIndicators for ≤100 indicators; one ItemResult per indicator (keyed by externalId),
        `ambiguous` when a retry had to remove what an earlier try may have created."""
        external_ids = [indicator["externalId"] for indicator in indicators]
        retried: list[bool] = []  # this call's own flag: submits run on several threads

        def remove_copies() -> None:
            retried.append(True)
            self.delete_by_external_id(external_ids)

        results = self._bulk("submitTiIndicators", C.GRAPH_SUBMIT_PATH, indicators, "externalId", remove_copies)
        return [dataclasses.replace(result, ambiguous=True) for result in results] if retried else results

    def update(self, bodies: list[dict[str, Any]]) -> list[ItemResult]:
        """updateTiIndicators for ≤100 partial indicators; one ItemResult per body (keyed by id)."""
        return self._bulk("updateTiIndicators", C.GRAPH_UPDATE_PATH, bodies, "id")

    def _bulk(self, name: str, path: str, items: list[dict[str, Any]], key: str,
              before_retry: Callable[[], None] | None = None) -> list[ItemResult]:
        if len(items) > C.GRAPH_MAX_BATCH:
            raise ValueError(f"a Graph batch holds at most {C.GRAPH_MAX_BATCH} items")
        response = self._call(name, "POST", self.resource + path, {"value": items},
                              value_list(len(items)), before_retry)
        if response.status_code == 400:
            reason = error_text(response_body(response), "HTTP 400")
            return [ItemResult(item[key], None, Outcome.REJECTED, f"batch refused: {reason}") for item in items]
        return _match_items(items, self._check(name, response, (200, 206))["value"], key)

    def list_pages(self) -> Iterator[dict[str, Any]]:
        """Pages of this app's indicators, following @odata.nextLink and refusing to loop."""
        url = f"{self.resource}{C.GRAPH_TI_PATH}?$top={C.GRAPH_LIST_PAGE_SIZE}"
        return self.pages("list", url, "@odata.nextLink")

    def delete(self, graph_ids: list[str]) -> list[ItemResult]:
        """deleteTiIndicators in batches of 100; one ItemResult per id."""
        return self._delete("deleteTiIndicators", C.GRAPH_DELETE_PATH, graph_ids)

    def delete_by_external_id(self, external_ids: list[str]) -> list[ItemResult]:
        """deleteTiIndicatorsByExternalId: removes every copy Graph holds under each externalId."""
        return self._delete("deleteTiIndicatorsByExternalId", C.GRAPH_DELETE_BY_EXTERNAL_ID_PATH, external_ids)

    def _delete(self, name: str, path: str, keys: list[str]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for start in range(0, len(keys), C.GRAPH_MAX_BATCH):
            chunk = keys[start:start + C.GRAPH_MAX_BATCH]
            response = self._call(name, "POST", self.resource + path, {"value": chunk}, value_list(len(chunk)))
            infos = self._check(name, response, (200,))["value"]
            results += [_deleted(key, info) for key, info in zip(chunk, infos, strict=True)]
        return results


def _deleted(key: str, info: dict[str, Any]) -> ItemResult:
    """resultInfo code 0 or 2xx: deleted; 404: already gone; anything else carries Graph's message."""
    code = info.get("code")
    if code == 0 or (isinstance(code, int) and 200 <= code < 300):
        return ItemResult(key, key)
    outcome = Outcome.GONE if code == 404 else Outcome.REJECTED
    return ItemResult(key, key, outcome, f"{code}: {info.get('message', '')}".strip())


def _match_items(sent: list[dict[str, Any]], returned: list[dict[str, Any]], key: str) -> list[ItemResult]:
    """Pair each sent item with its answer (one per item, as checked by `value_list`), by
    position and checked by `key` (externalId or id)."""
    by_key = {item.get(key): item for item in returned if item.get(key)}
    results = []
    for sent_item, answer in zip(sent, returned, strict=True):
        wanted = sent_item[key]
        item = answer if answer.get(key) in (None, wanted) else by_key.get(wanted)
        if item is None:
            results.append(ItemResult(wanted, None, Outcome.REJECTED, "Graph returned no result for this item"))
        elif "Error" in item:
            outcome = Outcome.GONE if _error_code(item["Error"]) in GONE_CODES else Outcome.REJECTED
            results.append(ItemResult(wanted, None, outcome, error_text(item["Error"], "rejected without a reason")))
        else:
            results.append(ItemResult(wanted, item.get("id")))
    return results


def _error_code(error: Any) -> str:
    """The `code` of a per-item `{"error": {"code", "message"}}` (JSON inside a string)."""
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except ValueError:
            return ""
    inner = error.get("error") if isinstance(error, dict) else None
    return str(inner.get("code", "")) if isinstance(inner, dict) else ""


def update_body(graph_id: str, indicator: Mapping[str, Any]) -> dict[str, Any]:
    """Every editable field: null for an optional one the indicator no longer has, and [] for a
    collection (the CSDL's collections are not nullable)."""
    body: dict[str, Any] = {"id": graph_id, "targetProduct": indicator["targetProduct"]}
    for name in sorted(C.GRAPH_UPDATABLE):
        body[name] = indicator.get(name, [] if name in COLLECTIONS else None)
    return body


def renew_body(graph_id: str, indicator: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest update Graph accepts: a new expiry."""
    return {"id": graph_id, "expirationDateTime": indicator["expirationDateTime"], "targetProduct": indicator["targetProduct"]}


def graph_rows(items: Iterable[Mapping[str, Any]], now: dt.datetime) -> Rebuilt:
    """State rows from Graph's listing; a second copy of an externalId is surplus."""
    rows: dict[str, StateRow] = {}
    rebuilt = Rebuilt()
    for item in items:
        external_id = str(item.get("externalId") or "").lower()
        if not external_id:
            rebuilt.foreign += 1
        elif external_id in rows:
            rebuilt.surplus.append(str(item["id"]))
        else:
            rows[external_id] = StateRow(external_id, str(item["id"]), content_hash(item, GRAPH_HASH_RULES),
                                         immutable_hash(item, GRAPH_HASH_RULES), str(item.get("expirationDateTime", "")),
                                         event_uuid_of(item), iso_utc(now), "")
    rebuilt.rows = list(rows.values())
    return rebuilt


class GraphAdapter(MicrosoftAdapter[GraphClient]):
    """The Graph tenant as a target: submit, update in place when Graph allows it, delete by
    Graph id; a replacement deletes every copy under the externalId and submits again."""

    kind = "graph"
    transformer: type[Transformer] = GraphTransformer
    max_batch = C.GRAPH_MAX_BATCH
    hash_rules = GRAPH_HASH_RULES
    keeps_body = False
    retires_ids = False
    permission = GraphClient.permission
    permission_fix = "add the application permission ThreatIndicators.ReadWrite.OwnedBy and grant admin consent"
    listing_columns: tuple[tuple[str, int], ...] = C.GRAPH_LISTING_COLUMNS
    late_copy_minutes = C.GRAPH_LATE_COPY_MINUTES

    def __init__(self, settings: Settings, spec: TargetSettings, log: RequestLog, online: bool) -> None:
        self.label = f"graph tenant {settings.tenant}"
        connection = Connection.of(settings, settings.graph_endpoint, settings.graph_requests_per_minute)
        super().__init__(GraphClient(connection, log) if online else None)

    # --- pure -------------------------------------------------------------------------------
    @staticmethod
    def state_key(settings: Settings, spec: TargetSettings) -> str:
        """Per tenant and app: what this app owns in Graph."""
        return f"graph_{settings.tenant}_{settings.client_id}"

    def key_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator["externalId"])

    def keys_of_attribute(self, attribute_uuid: str) -> list[str]:
        return [attribute_uuid]

    def attribute_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator["externalId"]).lower()

    def expiry_of(self, indicator: dict[str, Any]) -> str:
        return str(indicator["expirationDateTime"])

    def value_of(self, indicator: dict[str, Any]) -> str:
        return str(next((indicator[name] for name in C.GRAPH_OBSERVABLE_FIELDS if name in indicator), ""))

    def row_value(self, row: StateRow) -> str:
        """Graph's state keeps hashes only."""
        return ""

    def prepare(self, key: str, indicator: dict[str, Any], row: StateRow | None,
                revoked_id: str | None) -> tuple[dict[str, Any], str | None]:
        return indicator, row.remote_id if row else None

    def owns_id(self, remote_id: str) -> bool:
        """Graph ids are whatever is neither a STIX id nor a number (Defender's)."""
        return not C.STIX_INDICATOR_ID_RE.fullmatch(remote_id) and not C.ASCII_NUMBER_RE.fullmatch(remote_id)

    def listing_cell(self, item: dict[str, Any], column: str) -> Any:
        if column == "observable":
            return self.value_of(item)
        return item.get(column, "")

    # --- the service ------------------------------------------------------------------------
    def probe(self) -> Iterator[dict[str, Any]]:
        return self.client.list_pages()

    def listing(self) -> Iterator[dict[str, Any]]:
        return self.client.list_pages()

    def read_back(self, now: dt.datetime) -> Rebuilt:
        return graph_rows((item for page in self.client.list_pages() for item in page["value"]), now)

    def create(self, indicators: list[dict[str, Any]]) -> list[ItemResult]:
        return self.client.submit(indicators)

    def change(self, action: Action, items: list[tuple[str, dict[str, Any]]]) -> list[ItemResult]:
        body = renew_body if action is Action.RENEW else update_body
        return self.client.update([body(remote_id, indicator) for remote_id, indicator in items])

    def remove(self, rows: list[StateRow]) -> list[ItemResult]:
        return self.client.delete([row.remote_id for row in rows])

    def purge(self, keys: list[str]) -> list[ItemResult]:
        return self.client.delete_by_external_id(keys)

    def copies(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = collections.defaultdict(list)
        for page in self.client.list_pages():
            for item in page["value"]:
                if item.get("externalId"):
                    found[str(item["externalId"]).lower()].append(str(item["id"]))
        return found

    def delete_copies(self, remote_ids: list[str]) -> list[ItemResult]:
        return self.client.delete(remote_ids)

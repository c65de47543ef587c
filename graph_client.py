"""Microsoft Graph tiIndicators: submit, update, list and delete for one Entra app.

The client reads each item of a bulk answer (200, or 206 with a JSON error inside a string
per failed item) and pairs it with what was sent, by position checked by key.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import constants as C
from ms_client import ItemResult, MicrosoftClient, error_text, response_body, value_list
from request_log import RequestLog
from settings import Settings


class GraphClient(MicrosoftClient):
    """tiIndicators owned by this app (ThreatIndicators.ReadWrite.OwnedBy)."""

    service = "Graph"
    permission_hint = "check the app has ThreatIndicators.ReadWrite.OwnedBy with admin consent"

    def __init__(self, settings: Settings, log: RequestLog) -> None:
        super().__init__(settings, log, settings.graph_endpoint, settings.graph_requests_per_minute)

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
        response = self._call(name, "POST", self.settings.graph_endpoint + path, {"value": items},
                              value_list(len(items)), before_retry)
        if response.status_code == 400:
            reason = error_text(response_body(response), "HTTP 400")
            return [ItemResult(item[key], None, f"batch refused: {reason}") for item in items]
        return _match_items(items, self._check(name, response, (200, 206))["value"], key)

    def list_pages(self) -> Iterator[dict[str, Any]]:
        """Pages of this app's indicators, following @odata.nextLink and refusing to loop."""
        url = f"{self.settings.graph_endpoint}{C.GRAPH_TI_PATH}?$top={C.GRAPH_LIST_PAGE_SIZE}"
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
            response = self._call(name, "POST", self.settings.graph_endpoint + path, {"value": chunk}, value_list(len(chunk)))
            infos = self._check(name, response, (200,))["value"]
            results += [ItemResult(key, key, _delete_error(info)) for key, info in zip(chunk, infos)]
        return results


def _delete_error(info: dict[str, Any]) -> str | None:
    """resultInfo code 0 or 2xx means deleted; anything else carries Graph's message."""
    code = info.get("code")
    if code == 0 or (isinstance(code, int) and 200 <= code < 300):
        return None
    return f"{code}: {info.get('message', '')}".strip()


def _match_items(sent: list[dict[str, Any]], returned: list[dict[str, Any]], key: str) -> list[ItemResult]:
    """Pair each sent item with its answer (one per item, as checked by `value_list`), by
    position and checked by `key` (externalId or id)."""
    by_key = {item.get(key): item for item in returned if item.get(key)}
    results = []
    for sent_item, item in zip(sent, returned):
        wanted = sent_item[key]
        if item.get(key) not in (None, wanted):
            item = by_key.get(wanted)
        if item is None:
            results.append(ItemResult(wanted, None, "Graph returned no result for this item"))
        elif "Error" in item:
            results.append(ItemResult(wanted, None, error_text(item["Error"], "rejected without a reason")))
        else:
            results.append(ItemResult(wanted, item.get("id"), None))
    return results

"""Microsoft Graph tiIndicators over HTTPS: an MSAL client-credentials token and a requests.Session.

Only HTTP lives here. The client retries what is worth retrying (429, 5xx, network), reads
each item of a bulk answer, and turns everything else into a GraphError with Graph's reason.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import msal
import requests

import constants as C
from request_log import RequestLog
from settings import Settings

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 5
MAX_WAIT_SECONDS = 120.0


class GraphError(Exception):
    """A Graph call failed for good; `fatal` means no later call can succeed either (auth, permission)."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclasses.dataclass(frozen=True)
class ItemResult:
    """What Graph said about one item of a bulk request; `key` is what the item was sent under."""

    key: str
    graph_id: str | None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.error is None


def _graph_error_text(body: Any, fallback: str) -> str:
    """`{"error": {"code", "message"}}` (possibly JSON inside a string) as `code: message`."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return body.strip()[:300] or fallback
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('code', 'Error')}: {error.get('message', '')}".strip()
    return fallback


def _response_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def _retry_after(response: requests.Response | None, attempt: int) -> float:
    """Retry-After when Graph says it, else capped exponential backoff with jitter."""
    if response is not None:
        header = response.headers.get("Retry-After", "")
        if header.strip().isdigit():
            return min(float(header), MAX_WAIT_SECONDS)
    return min(2.0 ** attempt, MAX_WAIT_SECONDS) * (0.5 + random.random() / 2)


class GraphClient:
    """Submit, list and delete tiIndicators for one Entra app."""

    def __init__(self, settings: Settings, log: RequestLog) -> None:
        self.settings = settings
        self.log = log
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "misp2sentinel"
        self._app: msal.ConfidentialClientApplication | None = None
        self.requests_sent = 0

    # --- token ------------------------------------------------------------------------------
    def _new_app(self) -> msal.ConfidentialClientApplication:
        authority = f"{self.settings.authority_host}/{self.settings.tenant}"
        try:
            return msal.ConfidentialClientApplication(
                self.settings.client_id, client_credential=self.settings.client_secret, authority=authority,
                instance_discovery=False, azure_region=False, timeout=self.settings.http_timeout,
            )
        except ValueError as exc:
            raise GraphError(f"Microsoft Entra authority {authority} refused discovery: {self.log.scrub(str(exc))[:300]}", fatal=True) from None
        except requests.RequestException as exc:
            raise GraphError(f"cannot reach Microsoft Entra at {self.settings.authority_host}: {type(exc).__name__}", fatal=True) from None

    def token(self) -> str:
        """A valid access token; MSAL's cache answers until five minutes before expiry."""
        if self._app is None:
            self._app = self._new_app()
        try:
            result = self._app.acquire_token_for_client([f"{self.settings.graph_endpoint}/.default"])
        except msal.exceptions.MsalServiceError as exc:
            raise GraphError(f"Microsoft Entra token endpoint failed: {exc}", fatal=True) from None
        except requests.RequestException as exc:
            raise GraphError(f"cannot reach Microsoft Entra token endpoint: {type(exc).__name__}", fatal=True) from None
        if "access_token" not in result:
            raise GraphError(self._token_error(result), fatal=True)
        self.log.add_secret(result["access_token"])
        return result["access_token"]

    def _token_error(self, result: dict[str, Any]) -> str:
        codes = result.get("error_codes") or []
        description = str(result.get("error_description", "")).split("\n")[0]
        code = f"AADSTS{codes[0]}" if codes else description.split(":")[0]
        self.log.error("token", "token request refused", error=result.get("error"), error_codes=codes, error_description=description)
        return self.log.scrub(f"Microsoft Entra refused the token request ({result.get('error', 'error')}, {code}): {description}")

    # --- HTTP with retries ------------------------------------------------------------------
    def _call(self, name: str, method: str, url: str, body: Any = None,
              before_retry: Callable[[], None] | None = None) -> requests.Response:
        """One logical call: retried on 429/5xx/network, re-authenticated once on 401.

        `before_retry` runs before a retry whose first try may have reached Graph (a timeout,
        a reset, a 5xx): a submit uses it to remove any copy Graph made, so a retry never
        leaves a duplicate. A 429 was not processed, so it is simply resent.
        """
        reauthenticated = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            response, failure = self._attempt(name, method, url, body)
            if response is not None and response.status_code == 401 and not reauthenticated:
                self._app, reauthenticated = None, True
                continue
            if response is not None and response.status_code not in RETRY_STATUSES:
                return response
            if attempt < MAX_ATTEMPTS:
                time.sleep(_retry_after(response, attempt))
                if before_retry is not None and (response is None or response.status_code != 429):
                    before_retry()
        if response is not None:
            return response
        raise GraphError(f"{name}: Graph unreachable after {MAX_ATTEMPTS} attempts: {failure}")

    def _attempt(self, name: str, method: str, url: str, body: Any) -> tuple[requests.Response | None, str]:
        headers = {"Authorization": f"Bearer {self.token()}"}
        started = time.monotonic()
        self.requests_sent += 1
        try:
            response = self.session.request(method, url, json=body, headers=headers, timeout=self.settings.http_timeout)
        except requests.RequestException as exc:
            failure = f"{type(exc).__name__}"
            self.log.request(name, method, url, body, None, {"exception": failure}, time.monotonic() - started)
            return None, failure
        self.log.request(name, method, url, body, response.status_code, _response_body(response), time.monotonic() - started)
        return response, ""

    def _check(self, name: str, response: requests.Response, ok: tuple[int, ...]) -> Any:
        """The JSON body of a successful answer, or GraphError with Graph's reason."""
        body = _response_body(response)
        if response.status_code in ok:
            return body
        reason = _graph_error_text(body, f"HTTP {response.status_code}")
        if response.status_code in (401, 403):
            hint = "check the app has ThreatIndicators.ReadWrite.OwnedBy with admin consent"
            raise GraphError(f"{name}: Graph refused access (HTTP {response.status_code}, {reason}); {hint}", fatal=True)
        raise GraphError(f"{name}: Graph answered HTTP {response.status_code}: {reason}")

    # --- operations -------------------------------------------------------------------------
    def submit(self, indicators: list[dict[str, Any]]) -> list[ItemResult]:
        """submitTiIndicators for ≤100 indicators; one ItemResult per indicator (keyed by externalId)."""
        external_ids = [indicator["externalId"] for indicator in indicators]
        return self._bulk("submitTiIndicators", C.GRAPH_SUBMIT_PATH, indicators, "externalId",
                          before_retry=lambda: self.delete_by_external_id(external_ids))

    def update(self, bodies: list[dict[str, Any]]) -> list[ItemResult]:
        """updateTiIndicators for ≤100 partial indicators; one ItemResult per body (keyed by id)."""
        return self._bulk("updateTiIndicators", C.GRAPH_UPDATE_PATH, bodies, "id")

    def _bulk(self, name: str, path: str, items: list[dict[str, Any]], key: str,
              before_retry: Callable[[], None] | None = None) -> list[ItemResult]:
        if len(items) > C.GRAPH_MAX_BATCH:
            raise ValueError(f"a Graph batch holds at most {C.GRAPH_MAX_BATCH} items")
        response = self._call(name, "POST", self.settings.graph_endpoint + path, {"value": items}, before_retry)
        if response.status_code == 400:
            reason = _graph_error_text(_response_body(response), "HTTP 400")
            return [ItemResult(item[key], None, f"batch refused: {reason}") for item in items]
        body = self._check(name, response, (200, 206))
        returned = body.get("value") if isinstance(body, dict) else None
        return _match_items(items, returned if isinstance(returned, list) else [], key)

    def list_pages(self) -> Iterator[dict[str, Any]]:
        """Pages of this app's indicators, following @odata.nextLink and refusing to loop."""
        url: str | None = f"{self.settings.graph_endpoint}{C.GRAPH_TI_PATH}?$top={C.GRAPH_LIST_PAGE_SIZE}"
        seen: set[str] = set()
        while url:
            if url in seen:
                raise GraphError(f"list: Graph returned the same @odata.nextLink twice ({url})")
            seen.add(url)
            body = self._check("list", self._call("list", "GET", url), (200,))
            if not isinstance(body, dict) or not isinstance(body.get("value"), list):
                raise GraphError("list: Graph answered without a value list")
            yield body
            url = body.get("@odata.nextLink")

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
            body = self._check(name, self._call(name, "POST", self.settings.graph_endpoint + path, {"value": chunk}), (200,))
            infos = body.get("value") if isinstance(body, dict) else None
            infos = infos if isinstance(infos, list) else []
            for index, key in enumerate(chunk):
                info = infos[index] if index < len(infos) and isinstance(infos[index], dict) else None
                results.append(ItemResult(key, key, _delete_error(info)))
        return results


def _delete_error(info: dict[str, Any] | None) -> str | None:
    """resultInfo code 0 or 2xx means deleted; anything else carries Graph's message."""
    if info is None:
        return "Graph returned no result for this id"
    code = info.get("code")
    if code == 0 or (isinstance(code, int) and 200 <= code < 300):
        return None
    return f"{code}: {info.get('message', '')}".strip()


def _match_items(sent: list[dict[str, Any]], returned: list[Any], key: str) -> list[ItemResult]:
    """Pair each sent item with its answer, by position and checked by `key` (externalId or id)."""
    by_key = {item.get(key): item for item in returned if isinstance(item, dict) and item.get(key)}
    results = []
    for index, sent_item in enumerate(sent):
        wanted = sent_item[key]
        item = returned[index] if index < len(returned) and isinstance(returned[index], dict) else None
        if item is None or item.get(key) not in (None, wanted):
            item = by_key.get(wanted)
        if item is None:
            results.append(ItemResult(wanted, None, "Graph returned no result for this item"))
        elif "Error" in item:
            results.append(ItemResult(wanted, None, _graph_error_text(item["Error"], "rejected without a reason")))
        else:
            results.append(ItemResult(wanted, item.get("id"), None))
    return results

"""Microsoft Sentinel: the STIX objects upload API, and the management API to read a workspace back.

Uploads are paced by the shared sliding-window limiter so the documented per-minute limit is
never exceeded, and a 429 still gets the same objects resent after the wait it names.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import constants as C
from ms_client import ItemResult, MicrosoftClient, MicrosoftError, error_text, response_body
from request_log import RequestLog
from settings import Settings, TargetSettings


class SentinelClient(MicrosoftClient):
    """One workspace: upload STIX objects, list what our sourcesystem holds there."""

    service = "Sentinel"
    permission_hint = "check the app has the Microsoft Sentinel Contributor role on the workspace"
    limited_operations = frozenset({"upload"})  # the management API has its own, separate limits

    def __init__(self, settings: Settings, target: TargetSettings, log: RequestLog) -> None:
        super().__init__(settings, log, settings.management_endpoint, settings.max_requests_per_minute)
        self.target = target

    def upload(self, objects: list[dict[str, Any]]) -> list[ItemResult]:
        """≤100 objects; every index the service does not list in `errors` was accepted."""
        if len(objects) > C.SENTINEL_MAX_BATCH:
            raise ValueError(f"a Sentinel upload holds at most {C.SENTINEL_MAX_BATCH} objects")
        path = C.SENTINEL_UPLOAD_PATH.format(workspace_id=self.target.workspace_id)
        url = f"{self.settings.sentinel_endpoint}{path}?api-version={self.settings.sentinel_api_version}"
        body = {"sourcesystem": self.settings.sourcesystem, "stixobjects": objects}
        documented = documented_upload(len(objects))
        response = self._call("upload", "POST", url, body, documented)
        answer = response_body(response)
        if response.status_code in (200, 400) and isinstance(answer, dict) and documented(answer):
            return _results(objects, answer["errors"])
        if response.status_code == 400:
            reason = error_text(answer, "HTTP 400")
            return [ItemResult(obj["id"], None, f"upload refused: {reason}") for obj in objects]
        if response.status_code == 404:
            raise MicrosoftError(f"upload: {error_text(answer, 'HTTP 404')} (check workspace_id)", fatal=True)
        self._check("upload", response, (200,))
        return [ItemResult(obj["id"], obj["id"]) for obj in objects]

    def query_pages(self) -> Iterator[dict[str, Any]]:
        """Pages of the workspace's indicators from our sourcesystem; nextLink read with GET,
        and a repeated nextLink (a known Azure paging bug) stops the listing with an error."""
        self.target.require_management(self.settings.config_path.name)
        path = C.SENTINEL_QUERY_PATH.format(
            subscription_id=self.target.subscription_id, resource_group=self.target.resource_group,
            workspace_name=self.target.workspace_name,
        )
        url = f"{self.settings.management_endpoint}{path}?api-version={self.settings.management_api_version}"
        criteria = {"pageSize": C.SENTINEL_QUERY_PAGE_SIZE, "sources": [self.settings.sourcesystem]}
        return self.pages("queryIndicators", url, "nextLink", "POST", criteria)


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
    return [ItemResult(obj["id"], None if index in messages else obj["id"], messages.get(index))
            for index, obj in enumerate(objects)]

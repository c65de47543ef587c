"""The Log Analytics query API (lifecycle.md §5): what a Sentinel workspace's
`ThreatIntelIndicators` table really holds, read with the Sentinel target's own credentials.

The endpoint (`api.loganalytics.azure.com`) and the token audience (`api.loganalytics.io`) differ,
as for a regional Defender host. An answer is capped at 500,000 rows and 64 MB, and a cut one is a
200 with a `PartialError`: ids are asked in batches far below both, and a partial answer is an
error, never read as "the rest is missing".
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import Any

import constants as C
from constants import ErrorCause
from ms_client import Connection, MicrosoftClient, MicrosoftError, error_text, response_body
from request_log import RequestLog
from settings import Settings


def connection(settings: Settings) -> Connection:
    return Connection.of(settings, settings.loganalytics_endpoint, C.LOGANALYTICS_REQUESTS_PER_MINUTE,
                         audience=settings.loganalytics_scope)


def kql_string(text: str) -> str:
    """A KQL string literal (double quotes; backslash escapes as in JSON)."""
    return json.dumps(text, ensure_ascii=False)


def table_id(source: str, stix_id: str) -> str:
    """How ThreatIntelIndicators names an object: `<base64(source)>---<STIX id>`."""
    return f"{base64.b64encode(source.encode('utf-8')).decode('ascii')}---{stix_id}"


def indicator_query(source: str, ids: Iterable[str]) -> str:
    """The latest row of each of these table ids (`<base64(source)>---<STIX id>`) from `source`."""
    wanted = ", ".join(kql_string(ident) for ident in ids)
    return (f"{C.LOGANALYTICS_TABLE} | where Source == {kql_string(source)} and Id in ({wanted}) "
            f"| summarize arg_max(TimeGenerated, *) by Id | project {', '.join(C.LOGANALYTICS_COLUMNS)}")


def documented_answer(body: Any) -> bool:
    """`{"tables": [{"name", "columns": [{"name", "type"}], "rows": [[...]]}]}` with every row as
    wide as the columns; "" is the documented empty 204 of a workspace without data."""
    if body == "":
        return True
    tables = body.get("tables") if isinstance(body, dict) else None
    if not isinstance(tables, list) or not tables or not isinstance(tables[0], dict):
        return False
    columns, rows = tables[0].get("columns"), tables[0].get("rows")
    return (isinstance(columns, list) and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in columns)
            and isinstance(rows, list) and all(isinstance(row, list) and len(row) == len(columns) for row in rows))


class LogAnalyticsClient(MicrosoftClient):
    """One workspace's query API."""

    service = "Log Analytics"
    permission = "the API permission Log Analytics API Data.Read and the Log Analytics Reader role on the workspace"

    def __init__(self, connection: Connection, workspace_id: str, log: RequestLog) -> None:
        super().__init__(connection, log)
        self.workspace_id = workspace_id
        self.url = connection.resource + C.LOGANALYTICS_QUERY_PATH.format(workspace_id=workspace_id)

    def query(self, kql: str, timespan: str = C.LOGANALYTICS_TIMESPAN) -> list[dict[str, Any]]:
        """The rows of the primary table, each as column -> value; `timespan` (ISO 8601, a
        duration or `start/end`) limits TimeGenerated."""
        body = {"query": kql, "timespan": timespan}
        response = self._call("query", "POST", self.url, body, documented_answer)
        if response.status_code == 204:
            return []
        if response.status_code == 404:
            raise MicrosoftError(f"query: {error_text(response_body(response), 'HTTP 404')} (check workspace_id "
                                 f"{self.workspace_id})", ErrorCause.NOT_FOUND, fatal=True)
        answer = self._check("query", response, (200,))
        if not isinstance(answer, dict):
            raise MicrosoftError("query: Log Analytics answered HTTP 200 with an empty body", ErrorCause.GARBLED)
        if answer.get("error"):
            raise MicrosoftError(f"query: Log Analytics answered only part of the result ({error_text(answer, 'PartialError')})",
                                 ErrorCause.SERVICE_FAILED)
        table = answer["tables"][0]
        names = [column["name"] for column in table["columns"]]
        return [dict(zip(names, row, strict=True)) for row in table["rows"]]

    def latest_rows(self, source: str, ids: list[str]) -> Iterator[dict[str, Any]]:
        """The latest row of each id, a batch of ids per query; an answer without the columns
        asked for is an error naming them."""
        for start in range(0, len(ids), C.LOGANALYTICS_IDS_PER_QUERY):
            for row in self.query(indicator_query(source, ids[start:start + C.LOGANALYTICS_IDS_PER_QUERY])):
                missing = [name for name in C.LOGANALYTICS_COLUMNS if name not in row]
                if missing:
                    raise MicrosoftError(f"query: Log Analytics answered without the columns {', '.join(missing)}",
                                         ErrorCause.GARBLED)
                yield row

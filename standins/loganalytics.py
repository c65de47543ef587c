"""A Log Analytics stand-in: the query API (`POST /v1/workspaces/{workspaceId}/query`) over the
`ThreatIntelIndicators` table of one Sentinel workspace (lifecycle.md §5), and its
`SecurityAlert` table of the alerts analytics rules raised (scripted by tests: `add_alert`).

Its rows are derived from the Sentinel stand-in's append-only history: one row per accepted
version (an upload, a revocation, an ARM delete with IsDeleted = true), TimeGenerated = when it
was accepted. Columns follow Microsoft's table reference (azure-reference-other
`azure-monitor-ref/tables/includes/threatintelindicators-include.md`) and
`articles/sentinel/work-with-stix-objects-indicators.md` (MicrosoftDocs/azure-docs):

* `Source` is "the name of the source", i.e. the upload's `sourcesystem`; `SourceSystem` is the
  collecting agent's type (the republisher's rows are filtered by it), so a tool finds its own
  indicators by `Source`, never by `SourceSystem`.
* `Id` is `<base64(source)>---<STIX id>` (the doc's queries split it on `---`).
* `ObservableKey` is "the entire left-hand side of an equality comparison" (so a hash reads
  `file:hashes.'SHA-256'`, which the doc's migration KQL matches with `has 'SHA-256'`), and
  `ObservableValue` its right-hand side; a pattern Sentinel cannot reduce to one comparison
  leaves both empty ("sent to Log Analytics with only the unparsed pattern").
* `Data` (dynamic, a JSON string in the API's answer) holds the STIX object, its `description`
  and `pattern` cut at 1,000 characters (microsoft-apis.md §3.4).

The KQL parser is strict: it knows exactly the shapes the tool sends and README's queries (a
table, `where` with `==`, `!=`, `=~`, `in (...)`, `startswith`, `has`, `contains` (the last four
without case), `and` binding tighter than `or`, parentheses, `isempty()`/`isnotempty()`,
`summarize arg_max(TimeGenerated, *) by Id`, `summarize count() [by X, ...]`, `project`, `take`
/`limit`); the timespan limits TimeGenerated in both tables; anything else is
400 BadArgumentError, never a silently wrong answer. Errors have the documented shape
(azure-monitor-docs `logs/api/errors.md`): `{"error": {"message", "code", "correlationId",
"innererror"}}`; 403 InsufficientAccessError without the workspace reader role; 404 for an
unknown workspace; 204 when the workspace holds no data at all.

Test hooks: `lag_seconds` (a row is visible only once its TimeGenerated is that old),
`ingestion_rules` (callables row -> row or None, applied as a row is derived: rewrite
Confidence/ValidUntil, or drop it), `fail_next` (garbled or failed answers), `readers` (the
client ids holding a reader role on the workspace).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .entra import EntraStandIn, TokenInfo
from .sentinel import SentinelStandIn, Version, observable
from .tls import Fault, HttpsStandIn, Reply, SeenRequest, json_reply

__all__ = ["ALERT_COLUMNS", "ALERT_TABLE", "AUDIENCE", "COLUMNS", "TABLE", "KqlError", "LogAnalyticsStandIn", "run_query"]

AUDIENCE = "https://api.loganalytics.io"
TABLE = "ThreatIntelIndicators"
DATA_TEXT_MAX = 1000  # description and pattern inside Data
COLUMNS: dict[str, str] = {
    "TimeGenerated": "datetime", "Id": "string", "TenantId": "string", "SourceSystem": "string", "Source": "string",
    "Pattern": "string", "ObservableKey": "string", "ObservableValue": "string", "IsActive": "bool",
    "IsDeleted": "bool", "Revoked": "bool", "Confidence": "int", "Created": "datetime", "Modified": "datetime",
    "ValidFrom": "datetime", "ValidUntil": "datetime", "LastUpdateMethod": "string", "Data": "dynamic",
    "Type": "string",
}
ALERT_TABLE = "SecurityAlert"
# The SecurityAlert table (azure-reference-other `azure-monitor-ref/tables/securityalert`): the
# alerts analytics rules raise. Entities and ExtendedProperties are JSON text.
ALERT_COLUMNS: dict[str, str] = {
    "TimeGenerated": "datetime", "TenantId": "string", "DisplayName": "string", "AlertName": "string",
    "AlertSeverity": "string", "Description": "string", "ProviderName": "string", "VendorName": "string",
    "VendorOriginalId": "string", "SystemAlertId": "string", "ResourceId": "string", "SourceComputerId": "string",
    "AlertType": "string", "ConfidenceLevel": "string", "ConfidenceScore": "real", "IsIncident": "bool",
    "StartTime": "datetime", "EndTime": "datetime", "ProcessingEndTime": "datetime", "RemediationSteps": "string",
    "ExtendedProperties": "string", "Entities": "string", "SourceSystem": "string", "WorkspaceSubscriptionId": "string",
    "WorkspaceResourceGroup": "string", "ExtendedLinks": "string", "ProductName": "string", "ProductComponentName": "string",
    "AlertLink": "string", "Status": "string", "CompromisedEntity": "string", "Tactics": "string", "Techniques": "string",
    "SubTechniques": "string", "Type": "string",
}
UPLOAD_METHOD = "StixObjectsUploadApi"  # not documented; the republisher's is "LogARepublisher"
_QUERY_PATH = re.compile(r"/v1/workspaces/([^/]+)/query")
_TOKEN = re.compile(r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<number>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)
                        |(?P<symbol>==|!=|=~|[|(),*]))""", re.X)
# String operators (learn.microsoft.com kusto `datatypes-string-operators`): without case, like KQL.
_TEXT_TESTS: dict[str, Callable[[str, str], bool]] = {
    "startswith": lambda have, want: have.lower().startswith(want.lower()),
    "contains": lambda have, want: want.lower() in have.lower(),
    "has": lambda have, want: re.search(rf"(?<![A-Za-z0-9]){re.escape(want)}(?![A-Za-z0-9])", have, re.I) is not None,
    "=~": lambda have, want: have.lower() == want.lower(),
}
_DURATION = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")

Row = dict[str, Any]
IngestionRule = Callable[[Row], Row | None]


class KqlError(Exception):
    """A query the stand-in does not understand; `code` is the innererror's (SyntaxError,
    SemanticError)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class _Tokens:
    items: list[tuple[str, Any]]
    at: int = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.items[self.at] if self.at < len(self.items) else None

    def take(self, kind: str, value: Any = None) -> Any:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            shown = "the end of the query" if token is None else repr(token[1])
            raise KqlError("SyntaxError", f"Query could not be parsed: expected {value or kind}, found {shown}")
        self.at += 1
        return token[1]

    def next_is(self, kind: str, value: Any = None) -> bool:
        token = self.peek()
        return token is not None and token[0] == kind and (value is None or token[1] == value)


def _tokens(text: str) -> _Tokens:
    items: list[tuple[str, Any]] = []
    at = 0
    while text[at:].strip():
        match = _TOKEN.match(text, at)
        if match is None:
            raise KqlError("SyntaxError", f"Query could not be parsed at {text[at:].strip()[:20]!r}")
        kind = match.lastgroup or ""
        raw = match[kind]
        items.append((kind, re.sub(r"\\(.)", r"\1", raw[1:-1]) if kind == "string" else int(raw) if kind == "number" else raw))
        at = match.end()
    return _Tokens(items)


def _column(tokens: _Tokens, columns: list[str]) -> str:
    name = str(tokens.take("name"))
    if name not in columns:
        raise KqlError("SemanticError", f"Failed to resolve scalar expression named '{name}'")
    return name


def _literal(tokens: _Tokens) -> Any:
    if tokens.next_is("name", "true") or tokens.next_is("name", "false"):
        return tokens.take("name") == "true"
    if tokens.next_is("number"):
        return tokens.take("number")
    return tokens.take("string")


def _condition(tokens: _Tokens, columns: list[str]) -> Callable[[Row], bool]:
    """One `where` term: isempty(X), isnotempty(X), X == v, X != v, X in (v, ...)."""
    if tokens.next_is("name", "isempty") or tokens.next_is("name", "isnotempty"):
        empty = tokens.take("name") == "isempty"
        tokens.take("symbol", "(")
        name = _column(tokens, columns)
        tokens.take("symbol", ")")
        return lambda row: (row[name] in (None, "")) is empty
    name = _column(tokens, columns)
    for operator, test in _TEXT_TESTS.items():
        if tokens.next_is("name", operator) or tokens.next_is("symbol", operator):
            tokens.at += 1
            text = str(tokens.take("string"))
            return lambda row: isinstance(row[name], str) and test(row[name], text)
    if tokens.next_is("name", "in"):
        tokens.take("name")
        tokens.take("symbol", "(")
        values = [_literal(tokens)]
        while tokens.next_is("symbol", ","):
            tokens.take("symbol")
            values.append(_literal(tokens))
        tokens.take("symbol", ")")
        wanted = set(values)
        return lambda row: row[name] in wanted
    operator = tokens.take("symbol")
    if operator not in ("==", "!="):
        raise KqlError("SyntaxError", f"Query could not be parsed: unsupported operator {operator!r}")
    value = _literal(tokens)
    return (lambda row: row[name] == value) if operator == "==" else (lambda row: row[name] != value)


def _term(tokens: _Tokens, columns: list[str]) -> Callable[[Row], bool]:
    """A condition, or a parenthesised expression."""
    if not tokens.next_is("symbol", "("):
        return _condition(tokens, columns)
    tokens.take("symbol", "(")
    inner = _expression(tokens, columns)
    tokens.take("symbol", ")")
    return inner


def _joined(tokens: _Tokens, word: str, part: Callable[[], Callable[[Row], bool]],
            combine: Callable[[Iterable[bool]], bool]) -> Callable[[Row], bool]:
    parts = [part()]
    while tokens.next_is("name", word):
        tokens.take("name")
        parts.append(part())
    return parts[0] if len(parts) == 1 else (lambda row: combine(test(row) for test in parts))


def _expression(tokens: _Tokens, columns: list[str]) -> Callable[[Row], bool]:
    """`or` of `and`s of terms: `and` binds tighter, as in KQL."""
    return _joined(tokens, "or", lambda: _joined(tokens, "and", lambda: _term(tokens, columns), all), any)


def _where(tokens: _Tokens, columns: list[str], rows: list[Row]) -> list[Row]:
    test = _expression(tokens, columns)
    return [row for row in rows if test(row)]


def _by(tokens: _Tokens, columns: list[str]) -> list[str]:
    if not tokens.next_is("name", "by"):
        return []
    tokens.take("name")
    names = [_column(tokens, columns)]
    while tokens.next_is("symbol", ","):
        tokens.take("symbol")
        names.append(_column(tokens, columns))
    return names


def _summarize(tokens: _Tokens, columns: list[str], rows: list[Row]) -> tuple[list[str], list[Row]]:
    """`arg_max(TimeGenerated, *) by Id` (the latest row per Id) or `count() [by X, ...]`."""
    function = tokens.take("name")
    tokens.take("symbol", "(")
    if function == "arg_max":
        for kind, value in (("name", "TimeGenerated"), ("symbol", ","), ("symbol", "*"), ("symbol", ")")):
            tokens.take(kind, value)
        if _by(tokens, columns) != ["Id"]:
            raise KqlError("SyntaxError", "Query could not be parsed: arg_max(TimeGenerated, *) is supported by Id only")
        latest: dict[Any, Row] = {}
        for row in rows:
            if row["Id"] not in latest or row["TimeGenerated"] >= latest[row["Id"]]["TimeGenerated"]:
                latest[row["Id"]] = row
        return ["Id", *(c for c in columns if c != "Id")], list(latest.values())
    if function != "count":
        raise KqlError("SyntaxError", f"Query could not be parsed: unsupported aggregation {function!r}")
    tokens.take("symbol", ")")
    by = _by(tokens, columns)
    counts: dict[tuple[Any, ...], int] = {}
    for row in rows:
        key = tuple(row[name] for name in by)
        counts[key] = counts.get(key, 0) + 1
    if not by and not counts:
        counts[()] = 0
    return [*by, "count_"], [{**dict(zip(by, key, strict=True)), "count_": n} for key, n in counts.items()]


def _project(tokens: _Tokens, columns: list[str], rows: list[Row]) -> tuple[list[str], list[Row]]:
    names = [_column(tokens, columns)]
    while tokens.next_is("symbol", ","):
        tokens.take("symbol")
        names.append(_column(tokens, columns))
    return names, [{name: row[name] for name in names} for row in rows]


def run_query(text: str, tables: dict[str, tuple[dict[str, str], list[Row]]]) -> tuple[list[str], list[Row]]:
    """(columns, rows) of a KQL query over one of `tables` (name -> column types, rows); KqlError
    for anything else."""
    tokens = _tokens(text)
    table = tokens.take("name")
    if table not in tables:
        raise KqlError("SemanticError", f"Failed to resolve table or column expression named '{table}'")
    columns, rows = list(tables[table][0]), tables[table][1]
    while tokens.peek() is not None:
        tokens.take("symbol", "|")
        operator = tokens.take("name")
        if operator == "where":
            rows = _where(tokens, columns, rows)
        elif operator == "summarize":
            columns, rows = _summarize(tokens, columns, rows)
        elif operator == "project":
            columns, rows = _project(tokens, columns, rows)
        elif operator in ("take", "limit"):
            rows = rows[:int(tokens.take("number"))]
        else:
            raise KqlError("SyntaxError", f"Query could not be parsed: unsupported operator '{operator}'")
    return columns, rows


def _duration(text: str) -> dt.timedelta | None:
    match = _DURATION.fullmatch(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        return None
    weeks, days, hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return dt.timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def _instant(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def timespan(text: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    """An ISO-8601 duration (ending now) or interval (`start/end`, `start/duration`), or None."""
    start_text, _, end_text = text.partition("/")
    if not end_text:
        length = _duration(text)
        return None if length is None else (now - length, now)
    start, end, length = _instant(start_text), _instant(end_text), _duration(end_text)
    if start is None or (end is None and length is None):
        return None
    return start, end if end is not None else start + (length or dt.timedelta())


def _generated(row: Row) -> dt.datetime:
    return dt.datetime.fromisoformat(row["TimeGenerated"][:26] + "Z")


def _stamp(value: Any) -> str | None:
    """A STIX timestamp as Log Analytics writes datetimes (UTC, seven decimals, `Z`)."""
    if not isinstance(value, str):
        return None
    moment = dt.datetime.fromisoformat(value)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _data(obj: dict[str, Any]) -> str:
    cut = {name: obj[name][:DATA_TEXT_MAX] for name in ("description", "pattern") if isinstance(obj.get(name), str)}
    return json.dumps({**obj, **cut})


def derive_row(version: Version, ident: str, workspace_id: str, now: dt.datetime) -> Row:
    """The `ThreatIntelIndicators` row one accepted version makes."""
    obj = version.obj
    key, value = observable(obj["pattern"])
    revoked = obj.get("revoked") is True
    valid_until = obj.get("valid_until")
    expired = isinstance(valid_until, str) and dt.datetime.fromisoformat(valid_until) <= now
    return {
        "TimeGenerated": version.at.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        "Id": f"{base64.b64encode(version.source.encode()).decode()}---{ident}", "TenantId": workspace_id,
        "SourceSystem": UPLOAD_METHOD, "Source": version.source, "Pattern": obj["pattern"],
        "ObservableKey": key, "ObservableValue": value,
        "IsActive": not (revoked or version.deleted or expired), "IsDeleted": version.deleted, "Revoked": revoked,
        "Confidence": obj.get("confidence"), "Created": _stamp(obj.get("created")), "Modified": _stamp(obj.get("modified")),
        "ValidFrom": _stamp(obj.get("valid_from")), "ValidUntil": _stamp(valid_until),
        "LastUpdateMethod": UPLOAD_METHOD, "Data": _data(obj), "Type": TABLE,
    }


def _error(status: int, code: str, message: str, inner: dict[str, str] | None = None) -> Reply:
    error: dict[str, Any] = {"message": message, "code": code, "correlationId": str(uuid.uuid4())}
    if inner:
        error["innererror"] = inner
    return json_reply(status, {"error": error})


class LogAnalyticsStandIn(HttpsStandIn):
    """The query API of the Sentinel stand-in's workspace; accepts tokens the Entra stand-in
    issued for AUDIENCE (`https://api.loganalytics.io`, not this server's URL) to a client id
    in `readers`."""

    def __init__(self, entra: EntraStandIn, sentinel: SentinelStandIn) -> None:
        super().__init__(entra.ca)
        self.entra, self.sentinel = entra, sentinel
        self.readers: set[str] = set()
        self.lag_seconds = 0.0
        self.ingestion_rules: list[IngestionRule] = []
        self.alerts: list[Row] = []  # the SecurityAlert table, as tests script it

    def fail_next(self, status: int, body: dict[str, Any] | str | None = None, times: int = 1) -> None:
        """Answer the next `times` queries with `status` and `body` (a str goes as text/html:
        a proxy's page, or a garbled 200)."""
        self._queue_fault(Fault(status, body, {}, times))

    def add_alert(self, name: str, entities: list[dict[str, Any]], extended: dict[str, Any] | None = None, *,
                  at: dt.datetime | None = None) -> Row:
        """Script one SecurityAlert row, as an analytics rule named `name` raises it at `at` (now)."""
        moment = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
        row: Row = dict.fromkeys(ALERT_COLUMNS)
        row.update({
            "TimeGenerated": moment, "TenantId": self.sentinel.workspace_id, "DisplayName": name, "AlertName": name,
            "AlertSeverity": "Medium", "Description": "", "ProviderName": "ASI Scheduled Alerts", "VendorName": "Microsoft",
            "SystemAlertId": str(uuid.uuid4()), "AlertType": f"{self.sentinel.workspace_id}_{uuid.uuid4()}",
            "IsIncident": False, "StartTime": moment, "EndTime": moment, "ProcessingEndTime": moment,
            "ExtendedProperties": json.dumps({"Analytic Rule Name": name, **(extended or {})}),
            "Entities": json.dumps(entities), "SourceSystem": "Detection", "ProductName": "Azure Sentinel",
            "ProductComponentName": "Scheduled Alerts", "Status": "New", "Tactics": "", "Techniques": "", "Type": ALERT_TABLE,
        })
        with self.lock:
            self.alerts.append(row)
        return row

    def rows(self, now: dt.datetime | None = None) -> list[Row]:
        """Every row visible now: each indicator version old enough for the lag, after the
        ingestion rules."""
        now = now or dt.datetime.now(dt.UTC)
        with self.sentinel.lock:
            history = [(ident, version) for ident, versions in self.sentinel.history.items() for version in versions]
        return list(self._derived(history, now))

    def _derived(self, history: list[tuple[str, Version]], now: dt.datetime) -> Iterator[Row]:
        visible_before = now - dt.timedelta(seconds=self.lag_seconds)
        for ident, version in history:
            if version.obj.get("type") != "indicator" or version.at > visible_before:
                continue
            row: Row | None = derive_row(version, ident, self.sentinel.workspace_id, now)
            for rule in self.ingestion_rules:
                row = rule(row) if row is not None else None
            if row is not None:
                yield row

    def respond(self, request: SeenRequest) -> Reply:
        fault = self._take_fault(request.path)
        if fault is not None:
            if isinstance(fault.body, str):
                return Reply(fault.status, fault.body.encode(), "text/html", fault.headers)
            return json_reply(fault.status, fault.body or {"error": {"message": "injected", "code": "InternalError"}})
        return self._serve(request)

    def _serve(self, request: SeenRequest) -> Reply:
        query = _QUERY_PATH.fullmatch(request.path)
        if query is None or request.method != "POST":
            return _error(404, "PathNotFoundError", "The requested path does not exist")
        grant = self._authenticate(request)
        if isinstance(grant, Reply):
            return grant
        if query[1].lower() != self.sentinel.workspace_id.lower():
            return _error(404, "WorkspaceNotFoundError", f"The workspace could not be found: {query[1]}")
        if grant.client_id not in self.readers:
            return _error(403, "InsufficientAccessError",
                          "The provided credentials have insufficient access to perform the requested operation")
        return self._query(request)

    def _authenticate(self, request: SeenRequest) -> TokenInfo | Reply:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        info = self.entra.validate(token.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            return _error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing or invalid.")
        if info.resource != AUDIENCE:
            return _error(403, "InvalidAuthenticationTokenAudience",
                          f"The access token has been obtained from wrong audience or resource '{info.resource}'. "
                          f"It should exactly match with one of the allowed audiences '{AUDIENCE}'.")
        return info

    def _query(self, request: SeenRequest) -> Reply:
        body = request.json
        text = body.get("query") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return _error(400, "BadArgumentError", "The request had some invalid properties",
                          {"code": "QueryMissing", "message": "The 'query' property is required"})
        now = dt.datetime.now(dt.UTC)
        window = timespan(body["timespan"], now) if isinstance(body.get("timespan"), str) else None
        if "timespan" in body and window is None:
            return _error(400, "BadArgumentError", "The request had some invalid properties",
                          {"code": "InvalidTimespan", "message": f"Invalid timespan {body['timespan']!r}"})
        with self.sentinel.lock, self.lock:
            if not self.sentinel.history and not self.alerts:
                return Reply(204)
            alerts = list(self.alerts)
        tables = {TABLE: (COLUMNS, self.rows(now)), ALERT_TABLE: (ALERT_COLUMNS, alerts)}
        inside = {name: (columns, [row for row in rows if window is None or window[0] <= _generated(row) <= window[1]])
                  for name, (columns, rows) in tables.items()}
        try:
            columns, result = run_query(text, inside)
        except KqlError as exc:
            return _error(400, "BadArgumentError", "The request had some invalid properties",
                          {"code": exc.code, "message": str(exc)})
        types = {**COLUMNS, **ALERT_COLUMNS, "count_": "long"}
        return json_reply(200, {"tables": [{
            "name": "PrimaryResult", "columns": [{"name": name, "type": types[name]} for name in columns],
            "rows": [[row[name] for name in columns] for row in result]}]})

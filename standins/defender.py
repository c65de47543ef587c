"""A Microsoft Defender for Endpoint indicators API stand-in (defender.md).

It follows MicrosoftDocs/defender-docs `defender-endpoint/api/` import-ti-indicators.md,
get-ti-indicators-collection.md, batch-delete-ti-indicators.md, delete-ti-indicator-by-id.md and
ti-indicator.md: bearer tokens issued by the Entra stand-in for `self.url`, the `Ti.ReadWrite`
(own indicators only) and `Ti.ReadWrite.All` application permissions, import with per-item
results, at most 15,000 active indicators per tenant shared by every source, listing with
`$filter`/`$top`/`$skip` and `@odata.nextLink`, BatchDelete and single DELETE by numeric id, and
the per-app call limits (import 30, BatchDelete 30, list 100, delete 100 per minute).

Where the documents are silent, this stand-in chooses (and a client must cope with it):
- Errors are `{"error": {"code", "message", "target"}}` with a fresh request id as `target`.
- An indicator's identity is (indicatorType, value): hashes, thumbprints and domains compared
  lower-case, IPs in canonical form, URLs exactly. Importing an existing identity updates it in
  place (same id) with every sent property except `application`, which only a new indicator
  takes. Each item is checked as sent: every required property on every item, and `Audit`
  needs `generateAlert: true` in the same item.
- Any property outside the documented ones is an item failure "unknown property X"; an optional
  property sent as null means its default. `recommendedActions` ≤ 4096 characters,
  `externalID` ≤ 255, `title` ≤ 100, `description` ≤ 4096; `expirationTime` must end in `Z`.
- An `expirationTime` in the past is accepted; such an indicator is not active: it is not listed,
  not counted against the cap and is gone (a re-import creates a new id). Ids are never reused.
- BatchDelete is all or nothing: when any id is unknown or not visible to the caller the answer
  is 404 naming those ids and nothing is deleted (a client must then settle each id with the
  single DELETE).
- `$filter` knows only `eq` on createdBy, indicatorValue, indicatorType, action, severity and
  externalID, joined by ` and `, compared exactly; any other query parameter, a repeated one or
  another filter is 400.
- `calls` counts the requests each operation served (after authentication, permission and rate
  limit; 400 answers included); the 429s the limits sent are counted in `throttled` instead.
- `preload_foreign` ignores the cap: it stands for what other sources already hold.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import math
import re
import time
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from .entra import EntraStandIn, TokenInfo
from .graph import _garbled
from .tls import Fault, HttpsStandIn, Reply, SeenRequest, json_reply

__all__ = ["CALL_LIMITS", "FOREIGN_CREATOR", "PERMISSIONS", "DefenderStandIn", "item_problem"]

BASE_PATH = "/api/indicators"
BATCH_LIMIT = 500  # indicators per import, ids per BatchDelete
MAX_TOP = 10000
FIRST_ID = 5001
FOREIGN_CREATOR = "ffffffff-0000-0000-0000-000000000000"
PERMISSIONS = ("Ti.ReadWrite", "Ti.ReadWrite.All")
CALL_LIMITS = {"import": 30, "batchdelete": 30, "list": 100, "delete": 100}  # per app and window
_HEX_LENGTHS = {"FileSha1": (40,), "FileSha256": (64,), "FileMd5": (32,), "CertificateThumbprint": (40, 64)}
_INDICATOR_TYPES = (*_HEX_LENGTHS, "IpAddress", "DomainName", "Url")
_ACTIONS = ("Warn", "Block", "Audit", "Alert", "AlertAndBlock", "BlockAndRemediate", "Allowed")
_SEVERITIES = ("Informational", "Low", "Medium", "High")
_REQUIRED_STRINGS = {"indicatorValue": None, "title": 100, "description": 4096}  # name -> max length
_OPTIONAL_STRINGS = {"recommendedActions": 4096, "externalID": 255, "application": None, "educateUrl": None}
_OPTIONAL = (*_OPTIONAL_STRINGS, "severity", "expirationTime", "generateAlert", "rbacGroupNames")
_PROPERTIES = frozenset({*_REQUIRED_STRINGS, "indicatorType", "action", *_OPTIONAL})
_DEFAULTS: dict[str, Any] = {"application": None, "severity": None, "expirationTime": None,
                             "generateAlert": False, "recommendedActions": None, "rbacGroupNames": [],
                             "rbacGroupIds": [], "externalID": None, "educateUrl": None}
_FILTERABLE = frozenset({"createdBy", "indicatorValue", "indicatorType", "action", "severity", "externalID"})
_COMPARISON = re.compile(r"\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DECIMAL = re.compile(r"[0-9]+")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _expiry(value: str | None) -> datetime | None:
    """The moment an `expirationTime` (already validated) passes, None for never."""
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _domain_problem(value: str) -> str | None:
    try:
        ascii_name = value.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return f"'{value}' is not a valid domain name"
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        return f"'{value}' is not a valid domain name"
    return None


def _value_problem(kind: str, value: str) -> str | None:
    """Why `value` cannot be an indicator of type `kind`, or None."""
    if kind in _HEX_LENGTHS:
        if len(value) not in _HEX_LENGTHS[kind] or not re.fullmatch(r"[0-9a-fA-F]+", value):
            lengths = " or ".join(str(n) for n in _HEX_LENGTHS[kind])
            return f"a {kind} value must be {lengths} hexadecimal characters"
        return None
    if kind == "IpAddress":
        if "/" in value:
            return "CIDR notation for IPs isn't supported"
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return f"'{value}' is not a valid IP address"
        return None if address.is_global else f"'{value}' is not a public IP address"
    if kind == "DomainName":
        return _domain_problem(value)
    if not value or len(value) > 2048 or any(c.isspace() for c in value):
        return "a Url value must be 1 to 2048 characters without white space"
    return None


def _string_problem(name: str, value: Any, limit: int | None) -> str | None:
    if not isinstance(value, str):
        return f"property '{name}' must be a string"
    if limit is not None and len(value) > limit:
        return f"property '{name}' must be at most {limit} characters, got {len(value)}"
    return None


def _optional_problem(name: str, value: Any) -> str | None:
    """Why a non-null optional property's value is refused, or None."""
    if name in _OPTIONAL_STRINGS:
        return _string_problem(name, value, _OPTIONAL_STRINGS[name])
    if name == "severity":
        return None if value in _SEVERITIES else f"severity must be one of {', '.join(_SEVERITIES)}"
    if name == "generateAlert":
        return None if isinstance(value, bool) else "property 'generateAlert' must be a boolean"
    if name == "rbacGroupNames":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else "property 'rbacGroupNames' must be a list of strings"
    if not isinstance(value, str) or not value.endswith("Z"):
        return "expirationTime must be an ISO 8601 UTC date-time ending in Z"
    try:
        _expiry(value)
    except ValueError:
        return "expirationTime must be an ISO 8601 UTC date-time ending in Z"
    return None


def item_problem(item: Any) -> str | None:
    """The first documented rule an import item breaks, or None."""
    if not isinstance(item, dict):
        return "an indicator must be a JSON object"
    unknown = sorted(set(item) - _PROPERTIES)
    if unknown:
        return f"unknown property {unknown[0]}"
    for name, limit in _REQUIRED_STRINGS.items():
        problem = _string_problem(name, item.get(name), limit)
        if problem:
            return problem
    if item.get("indicatorType") not in _INDICATOR_TYPES:
        return f"indicatorType must be one of {', '.join(_INDICATOR_TYPES)}"
    if item.get("action") not in _ACTIONS:
        return f"action must be one of {', '.join(_ACTIONS)}"
    problem = next((p for name in _OPTIONAL if item.get(name) is not None
                    for p in [_optional_problem(name, item[name])] if p), None)
    if problem:
        return problem
    if item["action"] == "Audit" and item.get("generateAlert") is not True:
        return "action Audit requires generateAlert true"
    return _value_problem(item["indicatorType"], item["indicatorValue"])


def _identity(kind: str, value: str) -> tuple[str, str]:
    """The key two indicators share when the service treats them as one."""
    if kind == "IpAddress":
        return kind, str(ipaddress.ip_address(value))
    return kind, value if kind == "Url" else value.lower()


def _parse_filter(text: str) -> list[tuple[str, str]] | None:
    """`name eq 'value'` comparisons joined by ` and `, or None when `text` is anything else."""
    comparisons, position = [], 0
    while True:
        match = _COMPARISON.match(text, position)
        if match is None or match.group(1) not in _FILTERABLE:
            return None
        comparisons.append((match.group(1), match.group(2).replace("''", "'")))
        position = match.end()
        if position == len(text):
            return comparisons
        if not text.startswith("and ", position):
            return None
        position += 4


class DefenderStandIn(HttpsStandIn):
    """Defender for Endpoint `/api/indicators`; accepts tokens the Entra stand-in issued for
    `self.url` to apps given a permission with `grant`."""

    def __init__(self, entra: EntraStandIn, *, tenant_cap: int = 15000, page_size: int = 10000,
                 window_seconds: float = 60.0) -> None:
        super().__init__(entra.ca)
        self.entra = entra
        self.tenant_cap = tenant_cap
        self.page_size = page_size
        self.window_seconds = window_seconds
        self.calls: collections.Counter[str] = collections.Counter()
        self._grants: dict[str, str] = {}
        self._indicators: dict[str, dict[str, Any]] = {}  # id -> stored, in id order
        self._ids: dict[tuple[str, str], str] = {}  # identity -> id
        self._next_id = FIRST_ID
        self._expiring: dict[str, datetime] = {}  # id -> expirationTime, for indicators that have one
        self._windows: dict[tuple[str, str], collections.deque[float]] = {}
        self._garbles: list[Fault] = []
        self._slow_answers: list[tuple[float, str]] = []  # (seconds, path suffix)

    # --- test controls ------------------------------------------------------------------

    def grant(self, client_id: str, permission: str) -> None:
        """Give the app `client_id` one of PERMISSIONS (admin consent done)."""
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}; expected one of {PERMISSIONS}")
        with self.lock:
            self._grants[client_id] = permission

    def preload_foreign(self, count: int, creator: str = FOREIGN_CREATOR) -> list[str]:
        """Add `count` valid FileSha256 Block indicators created by the app `creator` (another
        source sharing the tenant's cap); returns their ids."""
        with self.lock:
            return [self._create(_foreign_item(self._next_id), creator) for _ in range(count)]

    def held(self, creator: str | None = None) -> list[dict[str, Any]]:
        """Copies of the active indicators (of `creator` only, when given), in id order."""
        with self.lock:
            self._purge_expired()
            return [_copy(item) for item in self._indicators.values()
                    if creator is None or item["createdBy"] == creator]

    def fail_next(self, status: int, body: dict[str, Any] | str | None = None,
                  headers: dict[str, str] | None = None, times: int = 1,
                  path_suffix: str = "") -> None:
        """Answer the next `times` requests whose path ends with `path_suffix` with `status`
        (a str body is sent as HTML, None as the error envelope) without doing their work."""
        self._queue_fault(Fault(status, body, dict(headers or {}), times, path_suffix))

    def garble_next(self, html: str | None = None, times: int = 1, path_suffix: str = "") -> None:
        """Do the next requests' work, then answer a 200 HTML page `html` (a proxy), or without
        `html` the real answer's body cut in half: the client cannot tell what happened."""
        with self.lock:
            self._garbles.append(Fault(200, html, {}, times, path_suffix))

    def delay_next(self, seconds: float, times: int = 1, path_suffix: str = "") -> None:
        """Do the next requests' work (those whose path ends with `path_suffix`), then wait
        `seconds` before answering (client timeouts, a kill while an answer is on its way)."""
        with self.lock:
            self._slow_answers.extend([(seconds, path_suffix)] * times)

    # --- wire -----------------------------------------------------------------------------

    def respond(self, request: SeenRequest) -> Reply:
        """The answer, garbled or late when a test armed that: the work is done either way."""
        reply = self._answer(request)
        garble = self._take_armed(self._garbles, request.path)
        with self.lock:
            armed = next((entry for entry in self._slow_answers if request.path.endswith(entry[1])), None)
            if armed is not None:
                self._slow_answers.remove(armed)
        delay = armed[0] if armed is not None else 0.0
        time.sleep(delay)  # outside the lock: other requests go on meanwhile
        return reply if garble is None else _garbled(reply, garble)

    def _answer(self, request: SeenRequest) -> Reply:
        fault = self._take_fault(request.path)
        if fault:
            return _fault_reply(fault)
        grant = self._authenticate(request)
        if isinstance(grant, Reply):
            return grant
        with self.lock:
            permission = self._grants.get(grant.client_id)
        if permission is None:
            return _error(403, "Forbidden", f"The application {grant.client_id} has no Ti.ReadWrite "
                          "or Ti.ReadWrite.All permission.")
        operation, indicator_id = self._route(request)
        if operation is None:
            return _error(404, "NotFound", f"No {request.method} operation at {request.path}.")
        wait = self._admit(grant.client_id, operation)
        if wait:
            return _error(429, "TooManyRequests", f"Rate limit of {CALL_LIMITS[operation]} {operation} calls "
                          f"per {self.window_seconds:g} s exceeded; retry in {wait} s.", {"Retry-After": str(wait)})
        with self.lock:
            self.calls[operation] += 1
            self._purge_expired()
            every = permission == "Ti.ReadWrite.All"
            if operation == "import":
                return self._import(request, grant.client_id, every)
            if operation == "list":
                return self._list(request, grant.client_id, every)
            if operation == "batchdelete":
                return self._batch_delete(request, grant.client_id, every)
            return self._delete(indicator_id, grant.client_id, every)

    def _authenticate(self, request: SeenRequest) -> TokenInfo | Reply:
        """The grant behind a valid bearer token issued for this API, else the 401."""
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        info = self.entra.validate(token.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            problem = "Bearer token is missing, unknown or expired."
        elif info.resource != self.url:
            problem = f"Bearer token was issued for {info.resource}, not for {self.url}."
        else:
            return info
        return _error(401, "Unauthorized", problem)

    @staticmethod
    def _route(request: SeenRequest) -> tuple[str | None, str]:
        """The operation name (a key of CALL_LIMITS) and the id segment of a single DELETE."""
        path = request.path.rstrip("/")
        lowered = path.lower()
        if request.method == "POST" and lowered == f"{BASE_PATH}/import":
            return "import", ""
        if request.method == "POST" and lowered == f"{BASE_PATH}/batchdelete":
            return "batchdelete", ""
        if request.method == "GET" and lowered == BASE_PATH:
            return "list", ""
        head, _, tail = path.rpartition("/")
        if request.method == "DELETE" and head.lower() == BASE_PATH and tail:
            return "delete", tail
        return None, ""

    def _admit(self, client_id: str, operation: str) -> int:
        """0 when the call fits the app's sliding window for `operation` (and is counted), else
        the whole seconds until a slot frees."""
        with self.lock:
            now = self.clock()
            window = self._windows.setdefault((client_id, operation), collections.deque())
            while window and window[0] <= now - self.window_seconds:
                window.popleft()
            if len(window) < CALL_LIMITS[operation]:
                window.append(now)
                return 0
            self.throttled += 1
            return max(1, math.ceil(window[0] + self.window_seconds - now))

    # --- operations (called with self.lock held) --------------------------------------------

    def _import(self, request: SeenRequest, client_id: str, every: bool) -> Reply:
        items = request.json.get("Indicators") if isinstance(request.json, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= BATCH_LIMIT:
            return _error(400, "BadRequest", "The body must be {\"Indicators\": [...]} with 1 to "
                          f"{BATCH_LIMIT} indicators.")
        results = []
        for item in items:
            problem = item_problem(item)
            indicator_id, problem = (None, problem) if problem else self._upsert(item, client_id, every)
            if indicator_id is not None:
                self._note_expiry(indicator_id)
            results.append({"id": indicator_id, "indicator": item.get("indicatorValue") if isinstance(item, dict)
                            else None, "isFailed": problem is not None, "failureReason": problem})
        return json_reply(200, {"value": results})

    def _upsert(self, item: dict[str, Any], client_id: str, every: bool) -> tuple[str | None, str | None]:
        """(id, None) of the indicator a valid `item` created or updated, or (None, why not)."""
        existing = self._ids.get(_identity(item["indicatorType"], item["indicatorValue"]))
        if existing is None:
            if len(self._indicators) >= self.tenant_cap:
                return None, f"the tenant holds the maximum of {self.tenant_cap} active indicators"
            return self._create(item, client_id), None
        stored = self._indicators[existing]
        if not every and stored["createdBy"] != client_id:
            return None, "indicator exists and was created by another application"
        stored.update({name: _DEFAULTS[name] if value is None else value
                       for name, value in item.items() if name != "application"})
        stored.update(lastUpdateTime=_iso(_now()), lastUpdatedBy=client_id)
        return existing, None

    def _create(self, item: dict[str, Any], client_id: str) -> str:
        indicator_id = str(self._next_id)
        self._next_id += 1
        now = _iso(_now())
        sent = {name: _DEFAULTS[name] if value is None else value for name, value in item.items()}
        self._indicators[indicator_id] = {
            "id": indicator_id, **_copy(_DEFAULTS), **sent, "createdBy": client_id,
            "createdBySource": f"app {client_id}", "sourceType": "AadApp",
            "creationTimeDateTimeUtc": now, "lastUpdateTime": now, "lastUpdatedBy": None}
        self._ids[_identity(item["indicatorType"], item["indicatorValue"])] = indicator_id
        return indicator_id

    def _purge_expired(self) -> None:
        """Drop indicators whose expirationTime passed: they are no longer active anywhere."""
        now = _now()
        for indicator_id in [i for i, moment in self._expiring.items() if moment <= now]:
            self._forget(indicator_id)

    def _note_expiry(self, indicator_id: str) -> None:
        """Track when an indicator just created or updated expires; one already past its
        expirationTime was accepted and is inactive at once."""
        moment = _expiry(self._indicators[indicator_id]["expirationTime"])
        if moment is None:
            self._expiring.pop(indicator_id, None)
        elif moment <= _now():
            self._forget(indicator_id)
        else:
            self._expiring[indicator_id] = moment

    def _forget(self, indicator_id: str) -> None:
        self._expiring.pop(indicator_id, None)
        item = self._indicators.pop(indicator_id)
        del self._ids[_identity(item["indicatorType"], item["indicatorValue"])]

    def _visible(self, client_id: str, every: bool) -> dict[str, dict[str, Any]]:
        return {i: item for i, item in self._indicators.items() if every or item["createdBy"] == client_id}

    def _list(self, request: SeenRequest, client_id: str, every: bool) -> Reply:
        query = request.query
        unknown = sorted(set(query) - {"$top", "$skip", "$filter"})
        repeated = sorted(name for name, values in query.items() if len(values) > 1)
        if unknown or repeated:
            return _error(400, "BadRequest", f"Unsupported or repeated query option {(unknown or repeated)[0]}.")
        top_text, skip_text = query.get("$top", [str(self.page_size)])[0], query.get("$skip", ["0"])[0]
        if not _DECIMAL.fullmatch(top_text) or not 1 <= int(top_text) <= MAX_TOP:
            return _error(400, "BadRequest", f"$top must be an integer from 1 to {MAX_TOP}, got {top_text!r}.")
        if not _DECIMAL.fullmatch(skip_text):
            return _error(400, "BadRequest", f"$skip must be a non-negative integer, got {skip_text!r}.")
        comparisons = _parse_filter(query["$filter"][0]) if "$filter" in query else []
        if comparisons is None:
            return _error(400, "BadRequest", f"Unsupported $filter {query['$filter'][0]!r}.")
        top, skip = int(top_text), int(skip_text)
        matching = [item for item in self._visible(client_id, every).values()
                    if all(item.get(name) == value for name, value in comparisons)]
        payload: dict[str, Any] = {"@odata.context": f"{self.url}/api/$metadata#Indicators",
                                   "value": [_copy(item) for item in matching[skip:skip + top]]}
        if skip + top < len(matching):
            following = {**{name: values[0] for name, values in query.items()}, "$skip": str(skip + top)}
            payload["@odata.nextLink"] = f"{self.url}{BASE_PATH}?" + "&".join(
                f"{name}={quote(value, safe='')}" for name, value in following.items())
        return json_reply(200, payload)

    def _batch_delete(self, request: SeenRequest, client_id: str, every: bool) -> Reply:
        ids = request.json.get("IndicatorIds") if isinstance(request.json, dict) else None
        if (not isinstance(ids, list) or not 1 <= len(ids) <= BATCH_LIMIT
                or not all(isinstance(i, str) and _DECIMAL.fullmatch(i) for i in ids)):
            return _error(400, "BadRequest", "The body must be {\"IndicatorIds\": [...]} with 1 to "
                          f"{BATCH_LIMIT} decimal id strings.")
        visible = self._visible(client_id, every)
        missing = sorted({i for i in ids if i not in visible}, key=int)
        if missing:
            return _error(404, "NotFound", f"Indicators not found: {', '.join(missing)}; nothing was deleted.")
        for indicator_id in set(ids):
            self._forget(indicator_id)
        return Reply(204, content_type="text/plain")

    def _delete(self, indicator_id: str, client_id: str, every: bool) -> Reply:
        if indicator_id not in self._visible(client_id, every):
            return _error(404, "NotFound", f"Indicator {indicator_id} not found.")
        self._forget(indicator_id)
        return Reply(204, content_type="text/plain")


def _foreign_item(number: int) -> dict[str, Any]:
    """A valid indicator whose value no other call produces: `number` is the id it will get."""
    return {"indicatorValue": hashlib.sha256(f"foreign/{number}".encode()).hexdigest(),
            "indicatorType": "FileSha256", "action": "Block", "title": f"foreign indicator {number}",
            "description": "preloaded: another source sharing the tenant's cap"}


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """A copy whose lists are not shared with the store."""
    return {name: list(value) if isinstance(value, list) else value for name, value in item.items()}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(status, {"error": {"code": code, "message": message, "target": str(uuid.uuid4())}}, headers)


def _fault_reply(fault: Fault) -> Reply:
    if isinstance(fault.body, str):
        return Reply(fault.status, fault.body.encode(), "text/html; charset=UTF-8", fault.headers)
    if fault.body is None:
        phrase = HTTPStatus(fault.status).phrase
        return _error(fault.status, phrase.replace(" ", ""), phrase, fault.headers)
    return json_reply(fault.status, fault.body, fault.headers)

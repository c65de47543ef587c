"""A Microsoft Graph beta `security/tiIndicators` stand-in (microsoft-apis.md §1).

It validates bearer tokens against the Entra stand-in, applies the documented tiIndicator
rules per item (so mapping bugs show up as 206 + per-item `Error`, as on the real service),
keeps "OwnedBy" semantics per app, and pages lists with `@odata.nextLink`.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from .alerts import AlertQueryError, list_alerts, make_alert
from .entra import EntraStandIn, TokenInfo
from .tls import Fault, HttpsStandIn, Reply, SeenRequest, html_reply, json_reply

__all__ = ["FAILED_ID", "SUBMIT_LIMIT", "GraphStandIn", "validate_indicator"]

BASE_PATH = "/beta/security/tiindicators"
ALERTS_PATH = "/v1.0/security/alerts_v2"
SUBMIT_LIMIT = 100
MAX_TOP = 1000
FAILED_ID = "Failed to create, check Error element for reason"
_ODATA_JSON = ("application/json;odata.metadata=minimal;odata.streaming=true;"
               "IEEE754Compatible=false;charset=utf-8")
_METADATA = "https://graph.microsoft.com/beta/$metadata#"
_COLLECTION_CONTEXT = _METADATA + "Collection(microsoft.graph.tiIndicator)"
_LIST_CONTEXT = _METADATA + "security/tiIndicators"
_RESULT_CONTEXT = _METADATA + "Collection(microsoft.graph.resultInfo)"
_INT32 = (-2**31, 2**31 - 1)
_INT64 = (-2**63, 2**63 - 1)  # the beta CSDL's Edm.Int64: fileSize and the ASN fields

_ENUMS: dict[str, tuple[str, ...]] = {
    "action": ("unknown", "allow", "block", "alert"),
    "targetProduct": ("Azure Sentinel", "Microsoft Defender ATP"),
    "threatType": ("Botnet", "C2", "CryptoMining", "Darknet", "DDoS", "MaliciousUrl", "Malware",
                   "Phishing", "Proxy", "PUA", "WatchList"),
    "tlpLevel": ("unknown", "white", "green", "amber", "red"),
    "diamondModel": ("unknown", "adversary", "capability", "infrastructure", "victim"),
    "fileHashType": ("unknown", "sha1", "sha256", "md5", "authenticodeHash256", "lsHash", "ctph"),
}
_KILL_CHAIN = ("Actions", "C2", "Delivery", "Exploitation", "Installation", "Reconnaissance",
               "Weaponization")
_INTEGERS: dict[str, tuple[int, int]] = {
    "confidence": (0, 100), "severity": (0, 5), "fileSize": _INT64,
    "networkDestinationAsn": _INT64, "networkDestinationPort": _INT32, "networkPort": _INT32,
    "networkProtocol": _INT32, "networkSourceAsn": _INT64, "networkSourcePort": _INT32,
}
_DATETIMES = frozenset({"expirationDateTime", "lastReportedDateTime", "ingestedDateTime",
                        "fileCompileDateTime", "fileCreatedDateTime"})
_BOOLEANS = frozenset({"isActive", "passiveOnly"})
_STRING_LISTS = frozenset({"activityGroupNames", "killChain", "malwareFamilyNames", "tags"})
_STRINGS = frozenset({"additionalInformation", "azureTenantId", "description", "externalId", "id",
                      "knownFalsePositives"})
_EMAIL = frozenset({"emailEncoding", "emailLanguage", "emailRecipient", "emailSenderAddress",
                    "emailSenderName", "emailSourceDomain", "emailSourceIpAddress", "emailSubject",
                    "emailXMailer"})
_FILE = frozenset({"fileCompileDateTime", "fileCreatedDateTime", "fileHashType", "fileHashValue",
                   "fileMutexName", "fileName", "filePacker", "filePath", "fileSize", "fileType"})
_NETWORK = frozenset({
    "domainName", "networkCidrBlock", "networkDestinationAsn", "networkDestinationCidrBlock",
    "networkDestinationIPv4", "networkDestinationIPv6", "networkDestinationPort", "networkIPv4",
    "networkIPv6", "networkPort", "networkProtocol", "networkSourceAsn", "networkSourceCidrBlock",
    "networkSourceIPv4", "networkSourceIPv6", "networkSourcePort", "url", "userAgent"})
_OBSERVABLES = (_EMAIL | _FILE | _NETWORK) - {"fileHashType"}
_PROPERTIES = (_EMAIL | _FILE | _NETWORK | _STRINGS | _BOOLEANS | _STRING_LISTS | _DATETIMES
               | set(_ENUMS) | set(_INTEGERS))
_UPDATE_REQUIRED = ("id", "expirationDateTime", "targetProduct")
# Properties updateTiIndicators may change for Azure Sentinel (microsoft-apis.md §1.2).
_UPDATABLE = frozenset({
    "id", "targetProduct", "action", "activityGroupNames", "additionalInformation", "confidence",
    "description", "diamondModel", "expirationDateTime", "externalId", "isActive", "killChain",
    "knownFalsePositives", "lastReportedDateTime", "malwareFamilyNames", "passiveOnly", "severity",
    "tags", "tlpLevel"})
_REQUIRED = ("action", "description", "expirationDateTime", "targetProduct", "threatType",
             "tlpLevel")
_DEFENDER = "Microsoft Defender ATP"
_DEFENDER_OBSERVABLES = frozenset({"domainName", "url", "networkDestinationIPv4",
                                   "networkDestinationIPv6", "networkIPv4", "networkIPv6",
                                   "fileHashValue", "fileHashType"})


def _value_error(name: str, value: Any) -> str | None:
    """Why `value` is not acceptable for property `name`, or None."""
    if name in _ENUMS:
        if value not in _ENUMS[name]:
            return (f"Invalid value {json.dumps(value)} for property '{name}'. "
                    f"Allowed values: {', '.join(_ENUMS[name])}.")
    elif name in _INTEGERS:
        low, high = _INTEGERS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return (f"Property '{name}' must be an integer between {low} and {high}, "
                    f"got {json.dumps(value)}.")
    elif name in _DATETIMES:
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return f"Property '{name}' must be an ISO 8601 date-time, got {json.dumps(value)}."
    elif name in _BOOLEANS:
        if not isinstance(value, bool):
            return f"Property '{name}' must be a boolean, got {json.dumps(value)}."
    elif name in _STRING_LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"Property '{name}' must be a list of strings, got {json.dumps(value)}."
        if name == "killChain" and not set(value) <= set(_KILL_CHAIN):
            bad = next(v for v in value if v not in _KILL_CHAIN)
            return (f"Invalid value {json.dumps(bad)} in property 'killChain'. "
                    f"Allowed values: {', '.join(_KILL_CHAIN)}.")
    elif not isinstance(value, str):
        return f"Property '{name}' must be a string, got {json.dumps(value)}."
    elif name == "description" and len(value) > 100:
        return f"Property 'description' must be at most 100 characters, got {len(value)}."
    return None


def _null_collection(name: str) -> str:
    """OData's refusal of null for a property the CSDL declares Collection(Edm.String) (not nullable)."""
    kind = "Collection(Edm.String)[Nullable=False]"
    return (f"A null value was found for the property named '{name}', which has the expected type '{kind}'. "
            f"The expected type '{kind}' does not allow null values.")


def validate_indicator(item: dict[str, Any]) -> str | None:
    """The first documented tiIndicator rule `item` breaks (naming the property), or None."""
    for name in item:
        if name not in _PROPERTIES:
            return (f"The property '{name}' does not exist on type 'microsoft.graph.tiIndicator'. "
                    "Make sure to only use property names that are defined by the type.")
    for name in _REQUIRED:
        if item.get(name) in (None, ""):
            return f"Missing required property '{name}'."
    for name, value in item.items():
        problem = None if value is None else _value_error(name, value)
        if problem:
            return problem
    present = {name for name, value in item.items() if value is not None}
    if not present & _OBSERVABLES:
        return ("Missing indicators value: at least one email, file or network observable "
                "property is required.")
    if "fileHashValue" in present and "fileHashType" not in present:
        return "Property 'fileHashValue' requires property 'fileHashType'."
    if item["targetProduct"] == _DEFENDER:
        unsupported = sorted(present & (_EMAIL | _FILE | _NETWORK) - _DEFENDER_OBSERVABLES)
        if unsupported:
            return f"Property '{unsupported[0]}' is not supported for targetProduct '{_DEFENDER}'."
        if item.get("fileHashType") not in (None, "md5", "sha1", "sha256"):
            return (f"Property 'fileHashType' must be md5, sha1 or sha256 for targetProduct "
                    f"'{_DEFENDER}'.")
    return None


@dataclass
class _LateWork:
    """Hold the next `times` requests whose path ends with `path_suffix` for `seconds` before
    doing their work."""

    seconds: float
    times: int
    path_suffix: str


def _garbled(reply: Reply, garble: Fault) -> Reply:
    """`reply`, whose work is done, as a proxy or a cut connection delivers it: the garble's
    status with its HTML body, or (no body) the same answer with the JSON cut in half."""
    if isinstance(garble.body, str):
        return html_reply(garble.status, garble.body)
    return Reply(reply.status, reply.body[:len(reply.body) // 2], reply.content_type, reply.headers)


class GraphStandIn(HttpsStandIn):
    """Graph beta tiIndicators and v1.0 security/alerts_v2 (standins/alerts.py); accepts tokens
    the Entra stand-in issued for `self.url`.

    `indicators` maps id -> stored indicator; `owners` maps id -> client_id that created it.
    `alerts` are what alerts_v2 lists, to the client ids in `alert_readers` (SecurityAlert.Read.All).
    """

    def __init__(self, entra: EntraStandIn, page_size: int = 100) -> None:
        super().__init__(entra.ca)
        self.entra = entra
        self.page_size = page_size
        self.indicators: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, str] = {}
        self._sequence: dict[str, int] = {}  # creation number, the stable paging key
        self._rejected: dict[object, str] = {}  # observable value -> provider's refusal
        self._slow_answers: list[float] = []  # one-off extra delays, after the work is done
        self._late_work: list[_LateWork] = []  # one-off holds, before the work is done
        self._garbles: list[Fault] = []  # one-off garbled answers, after the work is done
        self._expire_tokens_at: int | None = None
        self.alerts: list[dict[str, Any]] = []  # v1.0 security/alerts_v2, oldest first
        self.alert_readers: set[str] = set()  # client ids granted SecurityAlert.Read.All

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Do the next requests' work, then wait before answering: a client that times out
        cannot know whether Graph acted (the ambiguous case retries must handle)."""
        with self.lock:
            self._slow_answers.extend([seconds] * times)

    def process_late(self, seconds: float, times: int = 1, path_suffix: str = "") -> None:
        """Hold the next requests whose path ends with `path_suffix` for `seconds`, then do their
        work: a client that gave up and retried meanwhile sees its retry land first, and the
        late work (a second copy of a submit) lands after the retry's cleanup."""
        with self.lock:
            self._late_work.append(_LateWork(seconds, times, path_suffix))

    def garble_next(self, html: str | None = None, times: int = 1, path_suffix: str = "") -> None:
        """Do the next requests' work, then answer a 200 HTML page `html` (a proxy), or without
        `html` the real answer's JSON cut in half: the client cannot tell what Graph did."""
        with self.lock:
            self._garbles.append(Fault(200, html, {}, times, path_suffix))

    def expire_tokens_after(self, requests: int) -> None:
        """Revoke every issued token once this many more requests were answered (mid-run expiry)."""
        with self.lock:
            self._expire_tokens_at = len(self.requests_seen) + requests

    def fail_next(self, status: int, body: dict[str, Any] | str | None = None,
                  headers: dict[str, str] | None = None, times: int = 1,
                  path_suffix: str = "") -> None:
        """Answer the next `times` requests whose path ends with `path_suffix` with `status`."""
        self._queue_fault(Fault(status, body, dict(headers or {}), times, path_suffix))

    def add_alert(self, evidence: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """Script one alert (standins.alerts.make_alert's keywords); returns it as listed."""
        alert = make_alert(evidence, tenant=self.entra.tenant, **fields)
        with self.lock:
            self.alerts.append(alert)
        return alert

    def reject_value(self, value: str, message: str) -> None:
        """Refuse (per item, InvalidInput `message`) every valid item with `value` in an observable.

        Stands for the provider-side refusals the documentation cannot predict (allow lists).
        """
        with self.lock:
            self._rejected[value] = message

    def respond(self, request: SeenRequest) -> Reply:
        late = self._take_armed(self._late_work, request.path)
        if late is not None:
            time.sleep(late.seconds)
        reply = self._answer(request)
        garble = self._take_armed(self._garbles, request.path)
        if garble is not None:
            reply = _garbled(reply, garble)
        with self.lock:
            delay = self._slow_answers.pop(0) if self._slow_answers else 0.0
            if self._expire_tokens_at is not None and len(self.requests_seen) >= self._expire_tokens_at:
                self._expire_tokens_at = None
                self.entra.expire_all()
        if delay:
            time.sleep(delay)
        return reply

    def _answer(self, request: SeenRequest) -> Reply:
        fault = self._take_fault(request.path)
        if fault:
            if isinstance(fault.body, str):
                return Reply(fault.status, fault.body.encode(), "text/html", fault.headers)
            if fault.body is None:
                phrase = HTTPStatus(fault.status).phrase
                return _graph_error(request, fault.status, phrase.replace(" ", ""), phrase,
                                    fault.headers)
            return _graph_reply(request, fault.status, fault.body, fault.headers)
        grant = self._authenticate(request)
        if isinstance(grant, str):
            return _graph_error(request, 401, "InvalidAuthenticationToken", grant, {
                "WWW-Authenticate": f'Bearer realm="", authorization_uri="{self.entra.authority}"'})
        client_id = grant.client_id
        wait = self.admit(client_id)
        if wait:  # Graph: 1000 requests per minute per app and tenant on tiIndicator
            return _graph_error(request, 429, "TooManyRequests", "Too many requests.", {"Retry-After": str(wait)})
        path = request.path.lower().rstrip("/")  # Graph URL segments are case-insensitive
        if request.method == "GET" and path == ALERTS_PATH:
            return self._alerts(request, client_id)
        if request.method == "POST" and path == f"{BASE_PATH}/submittiindicators":
            return self._submit(request, grant)
        if request.method == "POST" and path == f"{BASE_PATH}/updatetiindicators":
            return self._update(request, client_id)
        if request.method == "POST" and path == f"{BASE_PATH}/deletetiindicators":
            return self._delete(request, client_id, "id")
        if request.method == "POST" and path == f"{BASE_PATH}/deletetiindicatorsbyexternalid":
            return self._delete(request, client_id, "externalId")
        if request.method == "GET" and path == BASE_PATH:
            return self._list(request, client_id)
        if request.method == "GET" and path.startswith(BASE_PATH + "/") and path.count("/") == 4:
            indicator_id = request.path.rstrip("/").rsplit("/", 1)[1]
            with self.lock:
                found = self.owners.get(indicator_id) == client_id
                item = dict(self.indicators[indicator_id]) if found else None
            if item is None:
                return _graph_error(request, 404, "NotFound", f"Indicator {indicator_id} not found")
            return _graph_reply(request, 200, {"@odata.context": _LIST_CONTEXT + "/$entity", **item})
        return _graph_error(request, 404, "NotFound",
                            f"Resource not found for the segment '{request.path.rsplit('/', 1)[1]}'.")

    def _authenticate(self, request: SeenRequest) -> TokenInfo | str:
        """The grant behind a valid bearer token meant for this Graph, else Graph's 401 message."""
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "Access token is empty."
        info = self.entra.lookup(token)
        if info is None:
            return "Access token validation failure."
        if self.entra.validate(token) is None:
            return "Access token has expired or is not yet valid."
        if info.resource != self.url:
            return "Access token validation failure. Invalid audience."
        return info

    def _body_values(self, request: SeenRequest) -> list[Any] | str:
        """The `value` list of a bulk action body, or why the body cannot be deserialized."""
        if not isinstance(request.json, dict):
            return "The request body is not a valid JSON object."
        values = request.json.get("value")
        if not isinstance(values, list):
            return "The request body must contain a 'value' array."
        return values

    def _submit(self, request: SeenRequest, grant: TokenInfo) -> Reply:
        values = self._body_values(request)
        if isinstance(values, str):
            return _graph_error(request, 400, "BadRequest", values)
        if len(values) > SUBMIT_LIMIT:
            return _graph_error(request, 400, "BadRequest", (
                f"The request contains {len(values)} indicators; submitTiIndicators accepts at "
                f"most {SUBMIT_LIMIT} per request."))
        if not all(isinstance(item, dict) for item in values):
            return _graph_error(request, 400, "BadRequest", "Every item of 'value' must be an object.")
        results = [self._create(item, grant.client_id, grant.tenant) for item in values]
        status = 206 if any("Error" in result for result in results) else 200
        return _graph_reply(request, status, {"@odata.context": _COLLECTION_CONTEXT,
                                              "value": results})

    def _create(self, item: dict[str, Any], client_id: str, tenant: str) -> dict[str, Any]:
        fields = {k: v for k, v in item.items() if k not in ("id", "azureTenantId", "ingestedDateTime")}
        problem = validate_indicator(item)
        with self.lock:
            problem = problem or next((self._rejected[item[name]] for name in sorted(_OBSERVABLES)
                                       if item.get(name) in self._rejected), None)
        if problem:
            error = {"code": "InvalidInput", "message": problem, "target": f"|{uuid.uuid4()}_"}
            return {"id": FAILED_ID, **fields, "Error": json.dumps({"error": error})}
        stored = {"id": secrets.token_hex(32), **fields, "azureTenantId": tenant,
                  "ingestedDateTime": _now_iso() + "Z"}
        with self.lock:
            self.indicators[stored["id"]] = stored
            self.owners[stored["id"]] = client_id
            self._sequence[stored["id"]] = len(self._sequence) + 1
        return dict(stored)

    def _update(self, request: SeenRequest, client_id: str) -> Reply:
        """updateTiIndicators: only the documented editable properties of owned indicators."""
        values = self._body_values(request)
        if isinstance(values, str) or not all(isinstance(item, dict) for item in values):
            return _graph_error(request, 400, "BadRequest", values if isinstance(values, str) else
                                "Every item of 'value' must be an object.")
        results = [self._apply_update(item, client_id) for item in values]
        status = 206 if any("Error" in result for result in results) else 200
        return _graph_reply(request, status, {"@odata.context": _COLLECTION_CONTEXT, "value": results})

    def _apply_update(self, item: dict[str, Any], client_id: str) -> dict[str, Any]:
        problem = next((f"Missing required property '{name}'." for name in _UPDATE_REQUIRED
                        if item.get(name) in (None, "")), None)
        problem = problem or next((f"Property '{name}' cannot be updated." for name in item
                                   if name not in _UPDATABLE), None)
        problem = problem or next((_null_collection(name) for name in sorted(_STRING_LISTS)
                                   if name in item and item[name] is None), None)
        problem = problem or next((_value_error(n, v) for n, v in item.items()
                                   if v is not None and _value_error(n, v)), None)
        with self.lock:
            ident = item.get("id")
            stored = self.indicators.get(ident) if isinstance(ident, str) and self.owners.get(ident) == client_id else None
            if problem is None and stored is None:
                problem = f"Indicator {ident} not found."
            if problem is None and stored is not None:
                stored.update({k: v for k, v in item.items() if v is not None})
                for name in [k for k, v in item.items() if v is None]:
                    stored.pop(name, None)
                return dict(stored)
        assert problem is not None  # every path without one returned above
        error = {"code": "InvalidInput" if "not found" not in problem else "NotFound", "message": problem}
        return {**item, "Error": json.dumps({"error": error})}

    def _delete(self, request: SeenRequest, client_id: str, key: str) -> Reply:
        values = self._body_values(request)
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            return _graph_error(request, 400, "BadRequest", "'value' must be an array of strings.")
        results = []
        with self.lock:
            for wanted in values:
                doomed = [i for i, item in self.indicators.items()
                          if self.owners[i] == client_id and item.get(key) == wanted]
                for indicator_id in doomed:
                    del self.indicators[indicator_id], self.owners[indicator_id]
                results.append({"code": 0, "message": "", "subcode": 0} if doomed else
                               {"code": 404, "message": f"Indicator {wanted} not found", "subcode": 0})
        return _graph_reply(request, 200, {"@odata.context": _RESULT_CONTEXT, "value": results})

    def _alerts(self, request: SeenRequest, client_id: str) -> Reply:
        if client_id not in self.alert_readers:
            return _graph_error(request, 403, "Forbidden", "Missing application roles. API required roles: "
                                "SecurityAlert.Read.All, SecurityAlert.ReadWrite.All.")
        with self.lock:
            alerts = [dict(alert) for alert in self.alerts]
        try:
            return _graph_reply(request, 200, list_alerts(alerts, request.query, self.url))
        except AlertQueryError as exc:
            return _graph_error(request, 400, "BadRequest", str(exc))

    def _list(self, request: SeenRequest, client_id: str) -> Reply:
        try:
            top = int(request.query.get("$top", [self.page_size])[0])
            after = int(request.query.get("$skiptoken", ["0"])[0])
        except ValueError:
            return _graph_error(request, 400, "BadRequest", "Invalid $top or $skiptoken value.")
        if not 1 <= top <= MAX_TOP:
            return _graph_error(request, 400, "BadRequest", f"$top must be between 1 and {MAX_TOP}.")
        with self.lock:
            mine = [(self._sequence[i], dict(item)) for i, item in self.indicators.items()
                    if self.owners[i] == client_id and self._sequence[i] > after]
        page = mine[:top]
        payload: dict[str, Any] = {"@odata.context": _LIST_CONTEXT, "value": [i for _, i in page]}
        if len(mine) > top:
            payload["@odata.nextLink"] = (f"{self.url}/beta/security/tiIndicators"
                                          f"?$top={top}&$skiptoken={page[-1][0]}")
        return _graph_reply(request, 200, payload)


def _now_iso() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _graph_reply(request: SeenRequest, status: int, payload: dict[str, Any],
                 headers: dict[str, str] | None = None, *,
                 error: tuple[str, str] | None = None) -> Reply:
    """A Graph JSON answer with request-id / client-request-id headers like the real service.

    With `error=(code, message)` the payload is Graph's error envelope, whose innerError
    repeats those ids.
    """
    request_id = str(uuid.uuid4())
    ids = {"request-id": request_id,
           "client-request-id": request.headers.get("client-request-id") or request_id}
    if error:
        inner = {"date": _now_iso().split(".")[0], **ids}
        payload = {"error": {"code": error[0], "message": error[1], "innerError": inner}}
    return json_reply(status, payload, {**ids, **(headers or {})}, _ODATA_JSON)


def _graph_error(request: SeenRequest, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> Reply:
    return _graph_reply(request, status, {}, headers, error=(code, message))

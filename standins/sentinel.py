"""A Microsoft Sentinel stand-in: the STIX objects upload API and the management read-back
(microsoft-apis.md §3).

One server plays both hosts the tool talks to: `api.ti.sentinel.azure.com` (upload) and
`management.azure.com` (`queryIndicators`). It validates bearer tokens against the Entra
stand-in, applies the documented per-object rules (so mapping bugs show up as a 200 with
per-record `errors`, as on the real service), keeps STIX versioning and revocation, enforces
the per-user request rate with the documented 429, and pages read-backs with `nextLink`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import functools
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import stix2
import stix2.exceptions
from stix2patterns.v21.pattern import Pattern
from stix2patterns.validator import run_validator

from .entra import EntraStandIn, TokenInfo
from .tls import Fault, HttpsStandIn, Reply, SeenRequest, json_reply

__all__ = [
    "ITEM_TYPE",
    "RESERVED_SOURCE",
    "UPLOAD_API_VERSION",
    "UPLOAD_LIMIT",
    "SentinelStandIn",
    "Version",
    "analyse_pattern",
    "observable",
    "validate_stix_object",
]

UPLOAD_API_VERSION = "2024-02-01-preview"
UPLOAD_LIMIT = 100
RESERVED_SOURCE = "Microsoft Sentinel"
ITEM_TYPE = "Microsoft.SecurityInsights/ThreatIntelligence"  # as in the 2025-09-01 spec examples
_UPLOAD_PATH = re.compile(r"/workspaces/([^/]+)/threat-intelligence-stix-objects:upload", re.I)
_QUERY_PATH = re.compile(
    r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.OperationalInsights"
    r"/workspaces/([^/]+)/providers/Microsoft\.SecurityInsights/threatIntelligence/main"
    r"/queryIndicators", re.I)
_INDICATOR_PATH = re.compile(
    r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.OperationalInsights"
    r"/workspaces/([^/]+)/providers/Microsoft\.SecurityInsights/threatIntelligence/main"
    r"/indicators/([^/]+)", re.I)
_MANAGEMENT_API_VERSION = re.compile(r"20\d\d-\d\d-\d\d(-preview)?")
_TYPES = ("indicator", "attack-pattern", "threat-actor", "identity", "relationship")
_REQUIRED_BY_TYPE = {"attack-pattern": ("name",), "threat-actor": ("name",), "identity": ("name",),
                     "relationship": ("relationship_type", "source_ref", "target_ref")}
# RFC 4122 UUID, lower case, as STIX 2.1 identifiers require.
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_MARKING_ID = re.compile(f"marking-definition--{_UUID}")
# RFC 3339 in the form STIX 2.1 §3.2 prescribes: UTC, "Z", any sub-second precision.
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?Z")
_ITEM_NAMESPACE = uuid.UUID("6f1c2e0a-5b7d-4c1e-9a3f-2d8e4b6c0a17")  # names read-back items
_REFERENCE_KEYS = {"source_name": "sourceName", "description": "description", "url": "url",
                   "external_id": "externalId", "hashes": "hashes"}
_MISSING = object()
# The object path before a comparison: unquoted steps, or quoted ones (`hashes.'SHA-256'`).
_LEFT_HAND_SIDE = re.compile(r"\[\s*((?:[^\s'=!<>]|'(?:[^'\\]|\\.)*')+)\s*=")
# The OASIS STIX 2.1 JSON schemas (tests/stix_schemas/README.md says which commit).
_SCHEMAS = Path(__file__).resolve().parent.parent / "tests" / "stix_schemas"
_SCHEMA_BASE = "http://raw.githubusercontent.com/oasis-open/cti-stix2-json-schemas/stix2.1/schemas/"
_OBSERVABLE_ID = "--00000000-0000-4000-8000-000000000000"  # the schemas require an id; any will do
# RFC 3986 URI (the schema's "uri" format): a scheme, then only the characters the RFC allows,
# '%' only as a percent-encoding; the authority's host a name, an IPv4 address or an [IPv6].
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?://(?:[A-Za-z0-9!$&'()*+,;=:._~-]|%[0-9A-Fa-f]{2})*@?"
                  r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]*)(?::[0-9]*)?)?"
                  r"(?:[A-Za-z0-9!$&'()*+,;=:@/?._~-]|%[0-9A-Fa-f]{2})*(?:#(?:[A-Za-z0-9!$&'()*+,;=:@/?._~-]|%[0-9A-Fa-f]{2})*)?")


def _error(name: str, what: str, value: Any = _MISSING) -> str:
    """One entry of `errorMessages`, worded like the documented example."""
    shown = ("NULL" if value is _MISSING or value is None
             else value if isinstance(value, str) else json.dumps(value))
    return f"Error for Property={name}: {what}. Actual value: {shown}."


def _timestamp(value: Any) -> tuple[datetime, Decimal] | None:
    """A sortable key for a STIX timestamp (full sub-second precision), or None if invalid."""
    match = _TIMESTAMP.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    try:
        seconds = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return seconds, Decimal(f"0.{match[2] or 0}")


def _string_list(value: Any) -> str | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        return "Must be a non-empty list of non-empty strings"
    return None


def _marking_refs(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and _MARKING_ID.fullmatch(v)
                                              for v in value):
        return "Must be a list of 'marking-definition--<UUID>' identifiers"
    return None


def _kill_chain_phases(value: Any) -> str | None:
    if not isinstance(value, list) or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) and p[k]
                                        for k in ("kill_chain_name", "phase_name")) for p in value):
        return "Must be a list of objects with 'kill_chain_name' and 'phase_name'"
    return None


def _external_references(value: Any) -> str | None:
    if not isinstance(value, list) or not all(
            isinstance(r, dict) and isinstance(r.get("source_name"), str) and r["source_name"]
            for r in value):
        return "Must be a list of objects each with a 'source_name'"
    return None


_OPTIONAL: dict[str, Callable[[Any], str | None]] = {
    "spec_version": lambda v: None if v == "2.1" else "Only STIX spec_version '2.1' is supported",
    "revoked": lambda v: None if isinstance(v, bool) else "Must be a boolean",
    "confidence": lambda v: (None if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100
                             else "Must be an integer between 0 and 100"),
    "labels": _string_list,
    "indicator_types": _string_list,
    "object_marking_refs": _marking_refs,
    "kill_chain_phases": _kill_chain_phases,
    "external_references": _external_references,
}


@functools.lru_cache(maxsize=4096)
def analyse_pattern(pattern: str) -> tuple[str | None, str | None]:
    """(why Sentinel refuses `pattern` or None, the value of its single comparison or None).

    Only an invalid STIX pattern is refused. A pattern with more than one comparison (AND, OR,
    FOLLOWEDBY...) is accepted, as the real upload API accepts it (200), but has no single value:
    `ThreatIntelIndicators` then shows it with empty observable columns (§3.4,
    Azure/Azure-Sentinel#12075). The count comes from the parse tree, so quoted values
    containing " AND " are one comparison.
    """
    failures = run_validator(pattern, stix_version="2.1")
    if failures:
        return "Invalid STIX pattern: " + "; ".join(f.removeprefix("FAIL: ") for f in failures), None
    comparisons = _comparisons(pattern)
    if len(comparisons) != 1:
        return None, None
    raw = comparisons[0][2]
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
    return None, raw


def _comparisons(pattern: str) -> list[tuple[Any, ...]]:
    return [c for found in Pattern(pattern).inspect().comparisons.values() for c in found]


@functools.lru_cache(maxsize=4096)
def observable(pattern: str) -> tuple[str, str]:
    """(ObservableKey, ObservableValue) as `ThreatIntelIndicators` shows them: the whole left-hand
    side of the pattern's one equality comparison, as written (`file:hashes.'SHA-256'`), and its
    value; ("", "") for a pattern Sentinel cannot reduce to one (compound, `!=`, `LIKE`)."""
    refusal, value = analyse_pattern(pattern)
    if refusal is not None or value is None or _comparisons(pattern)[0][1] != "=":
        return "", ""
    left = _LEFT_HAND_SIDE.match(pattern)
    return (left[1], value) if left else ("", "")


def _dns_name(value: object) -> bool:
    """The schema's idn-hostname, with what DNS allows beyond IDNA: underscore labels
    (`_dmarc.example.com`)."""
    if not isinstance(value, str):
        return True
    labels = value.split(".")
    idna_part = ".".join(label for label in labels if not label.startswith("_"))
    if any(not re.fullmatch(r"_[A-Za-z0-9_-]{1,62}", label) for label in labels if label.startswith("_")):
        return False
    return not idna_part or bool(_FORMATS.checkers["idn-hostname"][0](idna_part))


_FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
_CHECKS = jsonschema.FormatChecker()
_CHECKS.checkers = dict(_FORMATS.checkers)
_CHECKS.checks("uri")(lambda value: not isinstance(value, str) or bool(_URI.fullmatch(value)))
# with the errors the schema's own checker raises for a refusal (idna's), or they escape it:
# 'a_b.example' or 'evil\n.example' crashed the validator instead of failing the record
_CHECKS.checks("idn-hostname", raises=_FORMATS.checkers["idn-hostname"][1])(_dns_name)


@functools.cache
def _schema_validator(name: str) -> jsonschema.protocols.Validator | None:
    """A validator for one OASIS schema (`sdos/indicator.json`), None when it is not pinned."""
    if not (_SCHEMAS / name).is_file():
        return None
    resources = [(_SCHEMA_BASE + path.relative_to(_SCHEMAS).as_posix(),
                  referencing.Resource.from_contents(json.loads(path.read_text())))
                 for path in _SCHEMAS.rglob("*.json")]
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    schema = registry.contents(_SCHEMA_BASE + name)
    return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=_CHECKS)


def _schema_errors(name: str, obj: dict[str, Any], what: str, values_only: bool = False) -> list[str]:
    """`obj` against one pinned schema; `values_only` keeps the errors of its properties' values
    (a pattern names one property of its observable, not all the required ones)."""
    validator = _schema_validator(name)
    if validator is None:
        return []
    return [_error(what + "".join(f"[{p!r}]" for p in error.absolute_path),
                   f"Does not match the STIX 2.1 schema ({error.message})")
            for error in validator.iter_errors(obj) if error.absolute_path or not values_only]


def _comparison_object(pattern: str) -> dict[str, Any] | None:
    """The observable a single-comparison pattern describes (`[file:hashes.'MD5' = 'x']` is a
    file with that hash), so that the value can be checked against the observable's schema;
    None for list paths (`[*]`), which no one object stands for, and for compound patterns."""
    comparisons = Pattern(pattern).inspect().comparisons.items()
    if len(comparisons) != 1 or len(next(iter(comparisons))[1]) != 1:
        return None
    ((object_type, ((path, _, raw),)),) = comparisons
    if not all(isinstance(step, str) for step in path):
        return None
    value: Any = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith("'") else json.loads(raw)
    for step in reversed(path):
        value = {step: value}
    return {"type": object_type, "id": object_type + _OBSERVABLE_ID, **value}


def _specification_problems(obj: dict[str, Any]) -> list[str]:
    """What the OASIS STIX 2.1 JSON schemas (the indicator's and its pattern's observable's) and
    the stix2 library (no custom content) find wrong in a pattern-valid indicator."""
    problems = _schema_errors("sdos/indicator.json", obj, "stixobject")
    observable = _comparison_object(obj["pattern"])
    if observable is not None:
        problems += _schema_errors(f"observables/{observable['type']}.json", observable, "pattern", values_only=True)
    try:
        stix2.parse(obj, allow_custom=False)
    except (stix2.exceptions.STIXError, ValueError) as exc:
        problems.append(_error("stixobject", f"Not valid STIX 2.1 ({str(exc).splitlines()[0]})"))
    return problems


@functools.lru_cache(maxsize=65536)
def _cached_specification_problems(canonical: str) -> tuple[str, ...]:
    """The same objects are uploaded in test after test: each is checked once."""
    return tuple(_specification_problems(json.loads(canonical)))


def _indicator_problems(obj: dict[str, Any]) -> list[str]:
    problems = []
    pattern = obj.get("pattern", _MISSING)
    if pattern is _MISSING:
        problems.append(_error("pattern", "Required property is missing"))
    elif not isinstance(pattern, str):
        problems.append(_error("pattern", "Must be a string", pattern))
    elif (why := analyse_pattern(pattern)[0]) is not None:
        problems.append(_error("pattern", why, pattern))
    if obj.get("pattern_type") != "stix":
        problems.append(_error("pattern_type", "Required; must be 'stix' for STIX patterns",
                               obj.get("pattern_type", _MISSING)))
    valid_from = _required_timestamp(obj, "valid_from", problems)
    if "valid_until" in obj:
        valid_until = _timestamp(obj["valid_until"])
        if valid_until is None:
            problems.append(_error("valid_until", "Must be an RFC 3339 UTC timestamp",
                                   obj["valid_until"]))
        elif valid_from is not None and valid_until <= valid_from:
            problems.append(_error("valid_until", "Must be later than valid_from", obj["valid_until"]))
    return problems


def _required_timestamp(obj: dict[str, Any], name: str,
                        problems: list[str]) -> tuple[datetime, Decimal] | None:
    if name not in obj:
        problems.append(_error(name, "Required property is missing"))
        return None
    stamp = _timestamp(obj[name])
    if stamp is None:
        problems.append(_error(name, "Must be an RFC 3339 UTC timestamp", obj[name]))
    return stamp


def validate_stix_object(obj: Any) -> list[str]:
    """Every documented rule `obj` breaks, as `errorMessages` entries (empty when valid)."""
    if not isinstance(obj, dict):
        return [_error("stixobject", "Must be a JSON object", obj)]
    problems = []
    kind = obj.get("type", _MISSING)
    if kind is _MISSING:
        problems.append(_error("type", "Required property is missing"))
    elif kind not in _TYPES:
        problems.append(_error("type", f"Must be one of {', '.join(_TYPES)}", kind))
    ident = obj.get("id", _MISSING)
    if ident is _MISSING:
        problems.append(_error("id", "Required property is missing"))
    elif not (isinstance(ident, str) and isinstance(kind, str)
              and re.fullmatch(f"{re.escape(kind)}--{_UUID}", ident)):
        problems.append(_error("id", "Must be '<type>--<UUID>' with the object's type", ident))
    created = _required_timestamp(obj, "created", problems)
    modified = _required_timestamp(obj, "modified", problems)
    if created is not None and modified is not None and modified < created:
        problems.append(_error("modified", "Must not be earlier than created", obj["modified"]))
    problems += [_error(name, why, obj[name]) for name, check in _OPTIONAL.items()
                 if name in obj and (why := check(obj[name])) is not None]
    required = _REQUIRED_BY_TYPE.get(kind, ()) if isinstance(kind, str) else ()
    problems += [_error(name, "Required property is missing", obj.get(name))
                 for name in required if not obj.get(name)]
    if kind == "indicator":
        problems += _indicator_problems(obj)
        if not problems:  # as the service would: the real specifications, once the documented rules pass
            problems += _cached_specification_problems(json.dumps(obj, sort_keys=True))
    return problems


def _earlier(modified: str, stored: str) -> bool:
    """Whether a (validated) `modified` is before the stored version's."""
    mine, theirs = _timestamp(modified), _timestamp(stored)
    return mine is not None and theirs is not None and mine < theirs


def _now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _query_value(request: SeenRequest, name: str) -> str | None:
    """A query parameter's first value; Azure matches parameter names case-insensitively."""
    return next((values[0] for key, values in request.query.items()
                 if key.lower() == name.lower()), None)


def _arm_error(status: int, code: str, message: str,
               headers: dict[str, str] | None = None) -> Reply:
    """Azure Resource Manager's error envelope."""
    return json_reply(status, {"error": {"code": code, "message": message}}, headers)


def _status_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """The upload API's `{"statusCode", "message"}` answer (documented for 429 and 500)."""
    payload: dict[str, Any] = {"statusCode": status, "message": message}
    if status == 500:
        payload["activityId"] = str(uuid.uuid4())
    return json_reply(status, payload, headers)


def _rate_limit_message(seconds: int) -> str:
    return f"Rate limit is exceeded. Try again in {seconds} seconds."


def _fault_reply(fault: Fault) -> Reply:
    """An injected answer; without a body, the upload API's shape for that status."""
    if isinstance(fault.body, str):
        return Reply(fault.status, fault.body.encode(), "text/html", fault.headers)
    if fault.body is not None:
        return json_reply(fault.status, fault.body, fault.headers)
    if fault.status == 429:
        seconds = int(fault.headers.get("Retry-After", 1))
        return _status_reply(429, _rate_limit_message(seconds), fault.headers)
    message = "Internal server error" if fault.status == 500 else HTTPStatus(fault.status).phrase
    return _status_reply(fault.status, message, fault.headers)


def _encode_skip_token(skip: int, page_size: int, sources: list[str] | None) -> str:
    """An opaque token that carries the whole query, so a GET on nextLink needs no body."""
    text = json.dumps({"skip": skip, "pageSize": page_size, "sources": sources})
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_skip_token(token: str) -> tuple[int, int, list[str] | None] | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(data["skip"]), int(data["pageSize"]), data["sources"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        return None


@dataclasses.dataclass(frozen=True)
class Version:
    """One accepted change of an object, in upload order: what `ThreatIntelIndicators` logs a
    row for (`deleted`: an ARM delete, logged with IsDeleted = true)."""

    at: datetime
    source: str
    obj: dict[str, Any]
    deleted: bool = False


class SentinelStandIn(HttpsStandIn):
    """The STIX objects upload API of workspace `workspace_id` plus `queryIndicators` on the
    management path of subscription/resource group/workspace name; accepts tokens the Entra
    stand-in issued for `self.url`.

    `objects` maps STIX id -> latest accepted version (exactly as uploaded); `sources` maps
    STIX id -> the `sourcesystem` it came with. `throttled` counts the 429s the rate limit
    sent (injected faults excluded). `clock` and `window_seconds` let tests shorten the
    per-minute window. `history` maps STIX id -> every Version accepted, append-only (each
    upload, a revocation, an ARM delete), from which the Log Analytics stand-in derives rows.
    """

    def __init__(self, entra: EntraStandIn, workspace_id: str, subscription_id: str,
                 resource_group: str, workspace_name: str, per_minute: int = 100,
                 page_size: int = 100, *, window_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(entra.ca)
        self.entra = entra
        self.workspace_id, self.subscription_id = workspace_id, subscription_id
        self.resource_group, self.workspace_name = resource_group, workspace_name
        self.per_minute, self.page_size = per_minute, page_size
        self.window_seconds, self.clock = window_seconds, clock
        self.retry_after_header = False  # also send `Retry-After: N` with a 429 (undocumented)
        self.repeat_next_link = False  # every page's nextLink is the same URL (Azure paging bug)
        self.objects: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, str] = {}
        self.history: dict[str, list[Version]] = {}
        self._versions: dict[str, tuple[int, str]] = {}  # id -> (etag number, lastUpdatedTimeUtc)
        self._etag = 0
        self._rejected: dict[str, str] = {}  # comparison value -> provider's refusal

    @property
    def management_path(self) -> str:
        """The ARM path of this workspace's `threatIntelligence/main` (no host)."""
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
                f"/providers/Microsoft.OperationalInsights/workspaces/{self.workspace_name}"
                "/providers/Microsoft.SecurityInsights/threatIntelligence/main")

    def fail_next(self, status: int, body: dict[str, Any] | str | None = None,
                  headers: dict[str, str] | None = None, times: int = 1,
                  path_suffix: str = "") -> None:
        """Answer the next `times` requests whose path ends with `path_suffix` with `status`.

        Without a body: `{"statusCode", "message"}` (for 500 the documented
        "Internal server error" with an activityId; for 429 the rate-limit text).
        """
        self._queue_fault(Fault(status, body, dict(headers or {}), times, path_suffix))

    def reject_value(self, value: str, message: str) -> None:
        """Refuse (per record, `message`) every otherwise valid indicator whose pattern compares
        against `value`: the provider-side refusals the documentation cannot predict."""
        with self.lock:
            self._rejected[value] = message

    def respond(self, request: SeenRequest) -> Reply:
        fault = self._take_fault(request.path)
        return _fault_reply(fault) if fault else self._serve(request)

    def _serve(self, request: SeenRequest) -> Reply:
        grant = self._authenticate(request)
        if isinstance(grant, Reply):
            return grant
        upload = _UPLOAD_PATH.fullmatch(request.path)
        if upload and request.method == "POST":
            return self._upload(request, grant, upload[1])
        query = _QUERY_PATH.fullmatch(request.path)
        if query and (request.method == "POST" or (
                request.method == "GET" and _query_value(request, "$skipToken") is not None)):
            return self._query(request, *query.groups())
        indicator = _INDICATOR_PATH.fullmatch(request.path)
        if indicator and request.method == "DELETE":
            return self._delete_indicator(*indicator.groups())
        return _arm_error(404, "NotFound", f"No HTTP resource was found for {request.method} "
                                           f"{request.path}.")

    def _authenticate(self, request: SeenRequest) -> TokenInfo | Reply:
        """The grant behind a valid bearer token for this server, else ARM's 401 answer."""
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        info = self.entra.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            message = "Authentication failed. The 'Authorization' header is missing or invalid."
        elif self.entra.validate(token.strip()) is None:
            message = "The access token has expired."
        elif info.resource != self.url:
            message = (f"The access token has been obtained for wrong audience or resource "
                       f"'{info.resource}'. It should exactly match with one of the allowed "
                       f"audiences '{self.url}'.")
        else:
            return info
        return _arm_error(401, "InvalidAuthenticationToken", message, {
            "WWW-Authenticate": f'Bearer authorization_uri="{self.entra.authority}", '
                                f'error="invalid_token", error_description="{message}"'})

    def _upload(self, request: SeenRequest, grant: TokenInfo, workspace: str) -> Reply:
        if workspace.lower() != self.workspace_id.lower():
            return _arm_error(404, "WorkspaceNotFound", f"Workspace '{workspace}' was not found.")
        version = _query_value(request, "api-version")
        if version != UPLOAD_API_VERSION:
            return _status_reply(400, f"Unsupported api-version '{version}'; "
                                      f"use '{UPLOAD_API_VERSION}'.")
        wait = self.admit(grant.client_id)
        if wait:
            headers = {"Retry-After": str(wait)} if self.retry_after_header else None
            return _status_reply(429, _rate_limit_message(wait), headers)
        body = request.json
        if not isinstance(body, dict):
            return _status_reply(400, "The request body must be a JSON object.")
        source, objects = body.get("sourcesystem"), body.get("stixobjects")
        if not isinstance(source, str) or not source.strip():
            return _status_reply(400, "'sourcesystem' is required and must be a non-empty string.")
        if source.strip().lower() == RESERVED_SOURCE.lower():
            return _status_reply(400, f"'sourcesystem' value '{source}' is reserved; "
                                      "choose another source name.")
        if not isinstance(objects, list) or not objects:
            return _status_reply(400, "'stixobjects' is required and must be a non-empty array.")
        if len(objects) > UPLOAD_LIMIT:
            return _status_reply(400, f"The request contains {len(objects)} STIX objects; at most "
                                      f"{UPLOAD_LIMIT} objects are allowed per request.")
        errors = [{"recordIndex": index, "errorMessages": problems}
                  for index, obj in enumerate(objects) if (problems := self._accept(obj, source))]
        if not errors:
            return Reply(200)
        return json_reply(400 if len(errors) == len(objects) else 200, {"errors": errors})

    def _accept(self, obj: Any, source: str) -> list[str]:
        """Store `obj` as the latest version of its id, or say why not."""
        problems = validate_stix_object(obj)
        if problems:
            return problems
        ident = obj["id"]
        value = analyse_pattern(obj["pattern"])[1] if obj["type"] == "indicator" else None
        with self.lock:
            stored = self.objects.get(ident)
            if value is not None and value in self._rejected:
                return [_error("pattern", self._rejected[value].rstrip("."), obj["pattern"])]
            if stored is not None and stored.get("revoked") is True:
                return [_error("id", "The object is revoked; no later version can be uploaded",
                               ident)]
            if stored is not None and _earlier(obj["modified"], stored["modified"]):
                return [_error("modified", f"Older than the stored version ({stored['modified']})",
                               obj["modified"])]
            self.objects[ident] = copy.deepcopy(obj)
            self.sources[ident] = source
            self._etag += 1
            self._versions[ident] = (self._etag, _now_utc())
            self.history.setdefault(ident, []).append(Version(datetime.now(UTC), source, copy.deepcopy(obj)))
        return []

    def delete(self, ident: str) -> bool:
        """What an ARM DELETE does: the object leaves the workspace's listings, and the table
        gets a row with IsDeleted = true (lifecycle.md §5). False when it is not held."""
        with self.lock:
            obj = self.objects.pop(ident, None)
            if obj is None:
                return False
            self._versions.pop(ident)
            self.history[ident].append(Version(datetime.now(UTC), self.sources[ident], obj, deleted=True))
        return True

    def _delete_indicator(self, *path: str) -> Reply:
        """ARM `DELETE …/threatIntelligence/main/indicators/{name}`, by the read-back item's name."""
        *workspace, name = path
        wanted = (self.subscription_id, self.resource_group, self.workspace_name)
        with self.lock:
            ident = next((i for i in self.objects if str(uuid.uuid5(_ITEM_NAMESPACE, i)) == name.lower()), None)
        if [p.lower() for p in workspace] != [p.lower() for p in wanted] or ident is None or not self.delete(ident):
            return _arm_error(404, "NotFound", f"The indicator '{name}' was not found.")
        return Reply(200)

    def _query(self, request: SeenRequest, subscription: str, group: str, name: str) -> Reply:
        wanted = (self.subscription_id, self.resource_group, self.workspace_name)
        if [p.lower() for p in (subscription, group, name)] != [p.lower() for p in wanted]:
            return _arm_error(404, "ResourceNotFound", (
                f"The Resource 'Microsoft.OperationalInsights/workspaces/{name}' under resource "
                f"group '{group}' was not found."))
        version = _query_value(request, "api-version")
        if version is None:
            return _arm_error(400, "MissingApiVersionParameter", "The api-version query parameter "
                              "(?api-version=) is required for all requests.")
        if not _MANAGEMENT_API_VERSION.fullmatch(version):
            return _arm_error(400, "InvalidApiVersionParameter",
                              f"The api-version '{version}' is invalid.")
        criteria = request.json if request.json is not None else {}
        if not isinstance(criteria, dict):
            return _arm_error(400, "BadRequest", "The request body must be a JSON object.")
        token = _query_value(request, "$skipToken") or criteria.get("skipToken")
        if token:
            decoded = _decode_skip_token(str(token))
            if decoded is None:
                return _arm_error(400, "BadRequest", f"Invalid skip token '{token}'.")
            skip, page_size, sources = decoded
        else:
            skip, sources = 0, criteria.get("sources")
            page_size = criteria.get("pageSize", self.page_size)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            return _arm_error(400, "BadRequest", f"Invalid pageSize {json.dumps(page_size)}.")
        if sources is not None and not (isinstance(sources, list)
                                        and all(isinstance(s, str) for s in sources)):
            return _arm_error(400, "BadRequest", "'sources' must be an array of strings.")
        wanted_sources = None if sources is None else {s.lower() for s in sources}
        with self.lock:
            matching = [ident for ident, obj in self.objects.items() if obj["type"] == "indicator"
                        and (wanted_sources is None or self.sources[ident].lower() in wanted_sources)]
            page = [self._item(ident) for ident in matching[skip:skip + page_size]]
        payload: dict[str, Any] = {"value": page}
        next_skip = page_size if self.repeat_next_link else skip + page_size
        if self.repeat_next_link or next_skip < len(matching):
            payload["nextLink"] = (f"{self.url}{request.path}?api-version={version}"
                                   f"&$skipToken={_encode_skip_token(next_skip, page_size, sources)}")
        return json_reply(200, payload)

    def _item(self, ident: str) -> dict[str, Any]:
        """The management API's view of stored indicator `ident` (caller holds the lock)."""
        obj, (etag, updated) = self.objects[ident], self._versions[ident]
        name = str(uuid.uuid5(_ITEM_NAMESPACE, ident))
        properties = {
            "externalId": ident, "source": self.sources[ident], "displayName": obj.get("name"),
            "description": obj.get("description"), "pattern": obj["pattern"],
            "patternType": obj["pattern_type"], "validFrom": obj["valid_from"],
            "validUntil": obj.get("valid_until"), "revoked": obj.get("revoked", False),
            "confidence": obj.get("confidence"), "threatTypes": obj.get("indicator_types", []),
            "labels": obj.get("labels", []),
            "killChainPhases": [{"killChainName": p["kill_chain_name"], "phaseName": p["phase_name"]}
                                for p in obj.get("kill_chain_phases", [])],
            "created": obj["created"], "modified": obj["modified"], "lastUpdatedTimeUtc": updated,
            "externalReferences": [
                {_REFERENCE_KEYS[k]: v for k, v in ref.items() if k in _REFERENCE_KEYS}
                for ref in obj.get("external_references", [])],
            "objectMarkingRefs": obj.get("object_marking_refs", []),
            "createdByRef": obj.get("created_by_ref"),
        }
        return {"id": f"{self.management_path}/indicators/{name}", "name": name,
                "etag": f'"{etag}"', "type": ITEM_TYPE, "kind": "indicator",
                "properties": {k: v for k, v in properties.items() if v is not None}}

"""Graph v1.0 `security/alerts_v2` for the Graph stand-in: the alerts Defender raised, as
`microsoft.graph.security.alert` resources (learn.microsoft.com `graph/api/security-list-alerts_v2`,
resource `security-alert`), and the evidence builders tests script them with.

List alerts_v2 supports `$filter` on assignedTo, classification, determination, createdDateTime,
lastUpdateDateTime, severity, serviceSource and status only; anything else, `detectionSource`
included, is refused here with 400 BadRequest rather than silently ignored. Comparisons are
`eq ne gt ge lt le` joined by `and`; strings are quoted ('' escapes a quote), date-times are bare
ISO 8601. `$top` is at most 2000 and `$skip` pages on; a page that is not the last carries
`@odata.nextLink`. The default page size is not documented: this stand-in uses 100.
"""
from __future__ import annotations

import datetime as dt
import re
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["ALERT_FILTERABLE", "AlertQueryError", "domain_evidence", "file_evidence", "ip_evidence", "list_alerts",
           "make_alert", "url_evidence"]

ALERT_FILTERABLE = frozenset({"assignedTo", "classification", "determination", "createdDateTime", "lastUpdateDateTime",
                              "severity", "serviceSource", "status"})
_DATETIMES = frozenset({"createdDateTime", "lastUpdateDateTime"})
MAX_TOP = 2000
DEFAULT_TOP = 100
_OPTIONS = frozenset({"$filter", "$top", "$skip"})
_CLAUSE = re.compile(r"\s*(\w+)\s+(eq|ne|gt|ge|lt|le)\s+('(?:[^']|'')*'|null|\d{4}-\d\d-\d\dT[0-9:.]+Z?)\s*")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a is not None and a > b,
    "ge": lambda a, b: a is not None and a >= b, "lt": lambda a, b: a is not None and a < b,
    "le": lambda a, b: a is not None and a <= b,
}


class AlertQueryError(Exception):
    """A query Graph refuses with 400 BadRequest; the message is Graph's kind of text."""


def _evidence(kind: str, **fields: Any) -> dict[str, Any]:
    return {"@odata.type": f"#microsoft.graph.security.{kind}", "createdDateTime": _iso(dt.datetime.now(dt.UTC)),
            "verdict": "suspicious", "remediationStatus": "none", "roles": [], "tags": [], **fields}


def ip_evidence(address: str) -> dict[str, Any]:
    return _evidence("ipEvidence", ipAddress=address, countryLetterCode=None)


def url_evidence(url: str) -> dict[str, Any]:
    return _evidence("urlEvidence", url=url)


def domain_evidence(name: str) -> dict[str, Any]:
    """A DNS lookup of the domain (dnsEvidence carries it as `domainName`)."""
    return _evidence("dnsEvidence", domainName=name, dnsServerIp=None, hostIpAddress=None)


def file_evidence(sha1: str | None = None, sha256: str | None = None, md5: str | None = None) -> dict[str, Any]:
    details = {"fileName": "sample.bin", "filePath": "C:\\Users\\Public", "sha1": sha1, "sha256": sha256, "md5": md5,
               "fileSize": 4096, "filePublisher": None, "signer": None, "issuer": None}
    return _evidence("fileEvidence", fileDetails=details, detectionStatus="detected")


def make_alert(evidence: list[dict[str, Any]], *, detection_source: str = "customTi",
               service_source: str = "microsoftDefenderForEndpoint", created: dt.datetime | None = None,
               last_update: dt.datetime | None = None, title: str = "A custom indicator matched",
               status: str = "new", tenant: str = "") -> dict[str, Any]:
    """One alert resource as alerts_v2 lists it."""
    created = created or dt.datetime.now(dt.UTC)
    ident = f"da{uuid.uuid4().hex[:18]}"
    return {
        "id": ident, "providerAlertId": ident[2:], "incidentId": str(uuid.uuid4().int % 100000),
        "status": status, "severity": "medium", "classification": None, "determination": None,
        "serviceSource": service_source, "detectionSource": detection_source, "productName": "Microsoft Defender for Endpoint",
        "detectorId": str(uuid.uuid4()), "tenantId": tenant, "title": title, "description": title,
        "recommendedActions": "", "category": "SuspiciousActivity", "assignedTo": None,
        "alertWebUrl": f"https://security.microsoft.com/alerts/{ident}", "incidentWebUrl": "", "actorDisplayName": None,
        "threatDisplayName": None, "threatFamilyName": None, "mitreTechniques": [], "createdDateTime": _iso(created),
        "lastUpdateDateTime": _iso(last_update or created), "resolvedDateTime": None,
        "firstActivityDateTime": _iso(created), "lastActivityDateTime": _iso(created), "comments": [],
        "evidence": evidence, "systemTags": [], "alertPolicyId": None, "additionalData": {},
    }


def _iso(moment: dt.datetime) -> str:
    """Graph's DateTimeOffset as alerts show it: UTC, seven fractional digits."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _literal(text: str, name: str) -> Any:
    if text == "null":
        return None
    if text.startswith("'"):
        if name in _DATETIMES:
            raise AlertQueryError(f"Invalid filter clause: {name} takes a DateTimeOffset, not a string.")
        return text[1:-1].replace("''", "'")
    if name not in _DATETIMES:
        raise AlertQueryError(f"Invalid filter clause: {name} takes a string literal.")
    return _instant(text)


def _instant(text: str) -> dt.datetime:
    """An ISO 8601 time with up to seven fractional digits (Python reads six)."""
    head, dot, fraction = text.rstrip("Z").partition(".")
    try:
        moment = dt.datetime.fromisoformat(head + (dot + fraction[:6] if dot else ""))
    except ValueError:
        raise AlertQueryError(f"Invalid filter clause: {text!r} is not a DateTimeOffset.") from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """An alert predicate from `$filter`, or AlertQueryError for anything Graph refuses."""
    tests = []
    for clause in re.split(r"\s+and\s+", text.strip()):
        found = _CLAUSE.fullmatch(clause)
        if found is None:
            raise AlertQueryError(f"Invalid filter clause: syntax error in {clause!r}.")
        name, operator, value = found.groups()
        if name not in ALERT_FILTERABLE:
            raise AlertQueryError(f"Invalid filter clause: filtering on '{name}' is not supported.")
        tests.append((name, _COMPARE[operator], _literal(value, name)))

    def selects(alert: dict[str, Any]) -> bool:
        for name, compare, wanted in tests:
            have = alert.get(name)
            if name in _DATETIMES and have is not None:
                have = _instant(have)
            if not compare(have, wanted):
                return False
        return True
    return selects


def list_alerts(alerts: list[dict[str, Any]], query: dict[str, list[str]], url: str) -> dict[str, Any]:
    """One page of the alerts `query` selects, with the nextLink to the rest."""
    unknown = sorted(set(query) - _OPTIONS)
    if unknown:
        raise AlertQueryError(f"Query option '{unknown[0]}' is not allowed.")
    try:
        top = int(query.get("$top", [str(DEFAULT_TOP)])[0])
        skip = int(query.get("$skip", ["0"])[0])
    except ValueError:
        raise AlertQueryError("Invalid $top or $skip value.") from None
    if not 1 <= top <= MAX_TOP or skip < 0:
        raise AlertQueryError(f"$top must be between 1 and {MAX_TOP}, $skip at least 0.")
    selects = parse_filter(query["$filter"][0]) if "$filter" in query else (lambda alert: True)
    chosen = [alert for alert in alerts if selects(alert)]
    page: dict[str, Any] = {"@odata.context": f"{url}/v1.0/$metadata#security/alerts_v2", "value": chosen[skip:skip + top]}
    if skip + top < len(chosen):
        rest = {**{name: values[0] for name, values in query.items()}, "$top": str(top), "$skip": str(skip + top)}
        page["@odata.nextLink"] = f"{url}/v1.0/security/alerts_v2?{urllib.parse.urlencode(rest, quote_via=urllib.parse.quote)}"
    return page

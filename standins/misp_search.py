"""What MISP 2.5.1's `POST /events/restSearch` selects and returns, for the MISP stand-in.

Based on MISP/MISP @bb0909a (2.5.1). A search runs in MISP's two phases:

1. Selection (`Event::filterEventIds`, app/Model/Event.php 1519-1645): which events match.
   Event-scope filters test the event row; each attribute-scope filter (`type`, `category`,
   `object_relation`, `to_ids`, `deleted`) is its own subquery "the event has at least one
   attribute with ..." over all its attributes, deleted ones and those of objects included.
   A filter whose value is JSON `false` is skipped (`$paramData !== false`).
2. Fetch (`Event::fetchEvent`, Event.php 1758-2310) of the selected page: `published` again,
   attributes trimmed by `to_ids` and `deleted` only (never by `type` or `category`: the event
   comes back whole), attributes carrying a `NOT` tag dropped (`blockedAttributeTags`,
   Event.php 7542-7546, 2610-2650), warninglist hits dropped with `enforceWarninglist`
   (2228-2231; an event left without attributes is still returned), `decay_score` attached with
   `includeDecayScore` (2239-2245). The JSON export then drops objects left without attributes
   (app/Lib/Tools/JSONConverterTool.php `__cleanObjects`, 209-219).

Only keys in `RestSearchComponent::$paramArray['Event']` (RestSearchComponent.php 75-) reach
MISP (`AppController::_harvestParameters`, which also trims strings and splits `a||b`); the
others (`quickFilter`, `object_name`, `includeEventUuid`, `excludeDecayed`, ...) are never
looked at here, as MISP never sees them.

MISP quirks kept on purpose, since the tool meets them on a real MISP: `published: false` is
skipped by the selection but applied by the fetch (a page may come back short or empty before
the last one); a `tags` NOT also drops events none of whose attributes is free of the tag (the
attribute-scope subquery, MispAttribute.php 1152-1182); an AND tag pattern matching several
tags selects nothing (1107-1111); `deleted: "only"` selects like `deleted = 0` (MySQL casts
'only' to 0) but fetches only deleted attributes of the user's own org's events.

Simplifications (the stand-in's, not MISP's):
- Tags are identified by name without case (MISP: `Tag.name LIKE`, case-insensitive collation);
  the tag table is every tag on any stored event or attribute. Numeric tag ids are not resolved.
- Organisations are known by the `Orgc` of stored events; a name or uuid resolves to that org.
- String comparisons (type, category, org name, uuid) ignore case, as MySQL's default collation.
- Relative and absolute times: epoch numbers, `<n>d|h|m|s`, and ISO dates or date-times (UTC)
  for PHP's `strtotime`; anything else matches nothing, as MISP's `time() + 1`.
- `date`/`from`/`to` compare `Event.date` (YYYY-MM-DD) in UTC.
- `value` compares whole halves, or `%` patterns, without MISP's IPv6 compression.
- Not applied: `searchall`, `sharinggroup`, `distribution`, `comment`,
  `excludeLocalTags`, sharing rules (the user sees every event), proposals, correlations.
- Decay: one Polynomial model with a fixed `default_base_score` (no taxonomy ratios).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

__all__ = ["USER_ORG_ID", "DecayingModel", "Search", "Warninglist", "event_attributes", "sighting_record"]

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
# The stand-in's user (standins/misp.py _ME): its org sees its own events' soft-deleted data.
USER_ORG_ID = "1"
PARTNER_ORG_ID = "7"  # another organisation, whose sightings the user sees but MISP's score does not count
_SIGHTING_ORGS = {USER_ORG_ID: {"id": USER_ORG_ID, "uuid": "5f6c3f7e-0000-4000-8000-000000000001", "name": "StandIn Org"},
                  PARTNER_ORG_ID: {"id": PARTNER_ORG_ID, "uuid": "5f6c3f7e-0000-4000-8000-000000000007", "name": "Partner Org"}}
_SKIPPED = object()
# What metadata=1 leaves out (fetchEvent 2049-2054).
_NOT_IN_METADATA = frozenset({"Attribute", "Object", "ShadowAttribute", "EventReport"})


@dataclasses.dataclass
class Warninglist:
    """A MISP warninglist: `type` is string, substring, hostname, cidr or regex; `types`
    the attribute types it applies to ("ALL" for every type)."""

    name: str
    type: str
    entries: list[str]
    types: list[str] = dataclasses.field(default_factory=lambda: ["ALL"])
    enabled: bool = True

    def hit(self, attribute: dict[str, Any]) -> bool:
        """Warninglist::checkForWarning (Warninglist.php 603-633): to_ids attributes only;
        composite and malware-sample values are checked half by half (checkValue 635-668)."""
        kind = str(attribute.get("type", ""))
        if not (self.enabled and _php_truthy(attribute.get("to_ids"))
                and ("ALL" in self.types or kind in self.types)):
            return False
        value = str(attribute.get("value", ""))
        parts = value.split("|", 1) if kind == "malware-sample" or "|" in kind else [value]
        return any(self._matches(part) for part in parts)

    def _matches(self, value: str) -> bool:
        if self.type == "string":
            return value in self.entries
        if self.type == "substring":
            return any(entry in value for entry in self.entries)
        if self.type == "hostname":
            return _hostname_hit(self.entries, value)
        if self.type == "cidr":
            return _cidr_hit(self.entries, value)
        if self.type == "regex":
            return any(_php_regex(entry).search(value) for entry in self.entries)
        return False


# The attribute types of MISP's "NIDS Simple Decaying Model" (misp-decaying-models, version 2).
NIDS_TYPES = ("domain", "domain|ip", "hostname", "hostname|port", "ip-dst", "ip-dst|port", "ip-src", "ip-src|port",
              "url", "snort", "suricata", "zeek", "bro")


@dataclasses.dataclass
class DecayingModel:
    """A decaying model as MISP stores it (DecayingModel.php; defaults: the parameters of the
    NIDS Simple Decaying Model, enabled here although MISP installs it disabled); `lifetime` in
    days. `attribute_types` None: the model is associated with every type. The base score is
    always `default_base_score` (the taxonomy weights of `base_score_config` are not modelled).
    Only the Polynomial formula scores here; a model with another `formula` is listed but gives
    no score, as the tool must then not rely on predicting one."""

    id: str = "1"
    name: str = "NIDS Simple Decaying Model"
    lifetime: float = 120
    decay_speed: float = 2
    threshold: float = 30
    default_base_score: float = 80
    attribute_types: list[str] | None = dataclasses.field(default_factory=lambda: list(NIDS_TYPES))
    enabled: bool = True
    formula: str = "Polynomial"

    def index_entry(self) -> dict[str, Any]:
        """The model as `GET /decayingModel/index` lists it (afterFind decodes the JSON columns)."""
        return {"DecayingModel": {
            "id": self.id, "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"decaying-model:{self.id}")), "name": self.name,
            "description": "", "parameters": {"lifetime": self.lifetime, "decay_speed": self.decay_speed,
                                              "threshold": self.threshold, "default_base_score": self.default_base_score,
                                              "base_score_config": {}},
            "attribute_types": list(self.attribute_types or []), "org_id": "1", "enabled": self.enabled,
            "all_orgs": True, "ref": [], "formula": self.formula, "version": "2", "default": True}}

    def score(self, attribute: dict[str, Any], sightings: list[int], now: float) -> dict[str, Any] | None:
        """DecayingModel::attachScoresToAttribute (DecayingModel.php 625-662) for one model."""
        if not self.enabled or (self.attribute_types is not None and attribute.get("type") not in self.attribute_types):
            return None
        elapsed = now - _reference_time(attribute, sightings)
        score = self._polynomial(elapsed)
        return {"score": score, "base_score": self.default_base_score, "decayed": self.threshold > score,
                "DecayingModel": {"id": self.id, "name": self.name}}

    def _polynomial(self, elapsed: float) -> float:
        """Polynomial::computeScore: base × (1 − (t/lifetime)^(1/decay_speed)), floored at 0."""
        if elapsed < 0 or self.formula.lower() != "polynomial":
            return 0
        lifetime = self.lifetime * 86400
        score = self.default_base_score * (1 - (elapsed / lifetime) ** (1 / self.decay_speed))
        return max(score, 0)


def _reference_time(attribute: dict[str, Any], sightings: list[int]) -> int:
    """Base::computeCurrentScore (Base.php 133-155): the last sighting, else last_seen, else the
    attribute timestamp; an edit after the last sighting restarts from last_seen or timestamp."""
    stamp = int(attribute.get("timestamp") or 0)
    last_seen = _iso_epoch(attribute.get("last_seen"))
    reference = max(sightings) if sightings else (last_seen if last_seen is not None else stamp)
    if stamp > reference:
        reference = last_seen if last_seen is not None else stamp
    return reference


class Search:
    """One restSearch body against the stand-in's events, with "now" frozen for the request."""

    def __init__(self, body: dict[str, Any], events: list[dict[str, Any]], now: float | None = None) -> None:
        self.body = _massage(body)
        self.now = time.time() if now is None else now
        self._events = events

    @functools.cached_property
    def _tags(self) -> set[str]:
        """MISP's tag table: here every tag on a stored event or attribute."""
        return _known_tags(self._events)

    @functools.cached_property
    def _orgs(self) -> dict[str, str]:
        return _known_orgs(self._events)

    # --- phase 1: selection ------------------------------------------------------------------

    def selects(self, event: dict[str, Any]) -> bool:
        """Event::filterEventIds for one event."""
        return all(check(event) for check in (
            self._eventid, self._tags_match, self._times, self._org, self._uuid,
            self._published_selects, self._threat_level, self._eventinfo, self._attribute_scope))

    def _given(self, key: str) -> Any:
        """The body's value for `key`, or _SKIPPED when MISP would not apply it."""
        value = self.body.get(key, _SKIPPED)
        return _SKIPPED if value is None or value is False else value

    def _eventid(self, event: dict[str, Any]) -> bool:
        """set_filter_eventid (Event.php 2733-2756): ids or uuids, OR / AND / NOT."""
        value = self._given("eventid")
        if value is _SKIPPED or _php_empty(value) or value == "all":
            return True
        def own(item: object) -> bool:
            field = "uuid" if _UUID_RE.fullmatch(str(item)) else "id"
            return str(event.get(field)).lower() == str(item).lower()
        groups = _convert_filters(value)
        return (all(not own(i) for i in groups.get("NOT", []))
                and (not groups.get("OR") or any(own(i) for i in groups["OR"]))
                and all(own(i) for i in groups.get("AND", [])))

    def _tags_match(self, event: dict[str, Any]) -> bool:
        """Attribute::set_filter_tags (MispAttribute.php 1096-1239) in the event scope, then in
        the attribute scope where only NOT is left (1127: OR and AND are popped)."""
        key = "tags" if not _php_empty(self.body.get("tags")) else "event_tags"
        value = self._given(key)
        if value is _SKIPPED or _php_empty(value):
            return True
        any_of, none_of, all_of = self._tag_groups(value)
        on_event = {_tag_name(t) for t in event.get("Tag", [])}
        on_attributes = [{_tag_name(t) for t in a.get("Tag", [])} for a in event_attributes(event)]
        anywhere = on_event if key == "event_tags" else on_event.union(*on_attributes)
        if any_of is not None and not any_of & anywhere:
            return False
        if all_of is not None and not all(tag in anywhere for tag in all_of):
            return False
        if none_of:
            if none_of & on_event:
                return False
            if key == "tags" and not any(not none_of & tags for tags in on_attributes):
                return False
        return True

    def _tag_groups(self, value: Any) -> tuple[set[str] | None, set[str], set[str] | None]:
        """Tag::fetchTagIdsSimple for OR, NOT and AND: an OR naming no known tag, or an AND
        whose names do not resolve to exactly as many tags, selects nothing (empty set)."""
        groups = _dissect(value)
        any_of = self._resolve(groups["OR"]) if groups["OR"] else None
        none_of = self._resolve(groups["NOT"])
        all_of = self._resolve(groups["AND"]) if groups["AND"] else None
        if all_of is not None and len(all_of) != len(groups["AND"]):
            all_of = {"\0no such tag"}
        return any_of, none_of, all_of

    def _resolve(self, names: list[Any]) -> set[str]:
        """Tag::findTagIdsByTagNames: `Tag.name LIKE name` for each name."""
        return {tag for tag in self._tags if any(_like(str(name), tag) for name in names)}

    def _times(self, event: dict[str, Any]) -> bool:
        """set_filter_timestamp and set_filter_date (Event.php 3031-3087) with
        MispAttribute::setTimestampConditions (2497-2525): inclusive bounds."""
        for key, field in (("timestamp", "timestamp"), ("event_timestamp", "timestamp"),
                           ("publish_timestamp", "publish_timestamp"), ("last", "publish_timestamp")):
            value = self._given(key)
            if value is not _SKIPPED:
                low, high = _time_bounds(value, self.now)
                if not low <= int(event.get(field) or 0) <= high:
                    return False
        return self._dates(str(event.get("date") or ""))

    def _dates(self, date: str) -> bool:
        """`from`/`to` (a date, or an epoch turned into one) and `date` (a time, a relative
        time or a [low, high] pair, compared as dates)."""
        bounds: list[tuple[str, str]] = []
        for key, op in (("from", ">="), ("to", "<=")):
            value = self._given(key)
            if value is not _SKIPPED:
                bounds.append((op, _day(int(float(value))) if _php_numeric(value) else str(value)))
        value = self._given("date")
        if value is not _SKIPPED:
            low, high = _time_bounds(value, self.now)
            bounds.append((">=", _day(low)))
            if isinstance(value, list):
                bounds.append(("<=", _day(high)))
        return all(date >= limit if op == ">=" else date <= limit for op, limit in bounds)

    def _org(self, event: dict[str, Any]) -> bool:
        """set_filter_org (Event.php 2676-2731): Event.orgc_id; names and uuids resolved to
        an org (an unknown one in OR matches nothing, in NOT is dropped)."""
        value = self._given("org")
        if value is _SKIPPED or _php_empty(value):
            return True
        orgc = event.get("Orgc") or {}
        own = {str(event.get("orgc_id") or orgc.get("id") or "").lower(), str(orgc.get("uuid") or "").lower()} - {""}
        groups = _convert_filters(value)
        any_of = [self._org_key(v) for v in groups.get("OR", [])]
        none_of = [self._org_key(v) for v in groups.get("NOT", [])]
        return ((not groups.get("OR") or any(k in own for k in any_of))
                and not any(k in own for k in none_of)
                and (not groups.get("AND") or any(self._org_key(v) in own for v in groups["AND"])))

    def _org_key(self, value: Any) -> str:
        """An org filter value as the stand-in knows orgs: its id or its uuid."""
        text = str(value).lower()
        return text if _php_numeric(value) else self._orgs.get(text, "-1")

    def _uuid(self, event: dict[str, Any]) -> bool:
        """set_filter_uuid (Event.php 2767-2803): the event's uuid or any attribute's."""
        value = self._given("uuid")
        if value is _SKIPPED or _php_empty(value):
            return True
        groups = _convert_filters(value)
        own = {str(event.get("uuid")).lower()} | {str(a.get("uuid")).lower() for a in event_attributes(event)}
        wanted = {str(v).lower() for v in groups.get("OR", [])}
        unwanted = {str(v).lower() for v in groups.get("NOT", [])}
        return (not wanted or bool(wanted & own)) and not unwanted & own

    def _published_selects(self, event: dict[str, Any]) -> bool:
        """set_filter_published (Event.php 2867-2873): Event.published = value (a list: IN)."""
        value = self._given("published")
        return value is _SKIPPED or value == [True, False] or _column_in(event.get("published"), value)

    def _threat_level(self, event: dict[str, Any]) -> bool:
        """set_filter_threat_level_id (Event.php 2875-2881): a plain equality (or IN)."""
        value = self._given("threat_level_id")
        return value is _SKIPPED or _column_in(event.get("threat_level_id"), value)

    def _eventinfo(self, event: dict[str, Any]) -> bool:
        """set_filter_eventinfo (Event.php 2758-2765): generic_add_filter on Event.info."""
        value = self._given("eventinfo")
        return value is _SKIPPED or _php_empty(value) or _generic_filter(_convert_filters(value), str(event.get("info") or ""))

    def _attribute_scope(self, event: dict[str, Any]) -> bool:
        """Each attribute-scope filter: some attribute of the event (any) satisfies it."""
        attributes = event_attributes(event)
        value = self._given("value")
        if value is not _SKIPPED and not _php_empty(value):
            groups = _convert_filters(value)
            if not any(_value_hit(groups, str(a.get("value") or "")) for a in attributes):
                return False
        for key in ("type", "category", "object_relation"):
            value = self._given(key)
            if value is not _SKIPPED and not _php_empty(value):
                groups = _convert_filters(value)
                if key == "type":
                    groups = _with_email(groups)
                if not any(_generic_filter(groups, str(a.get(key) or "")) for a in attributes):
                    return False
        for key in ("to_ids", "deleted"):
            value = self._given(key)
            if value is not _SKIPPED and not any(self._flag_matches(key, value, a) for a in attributes):
                return False
        return True

    @staticmethod
    def _flag_matches(key: str, value: Any, attribute: dict[str, Any]) -> bool:
        """set_filter_to_ids (2839-2848: `exclude` is 0) and set_filter_deleted (2819-2837, a
        generic IN; `"only"` is cast to 0 by MySQL there, unlike in fetchEvent)."""
        if key == "to_ids" and value == "exclude":
            value = 0
        values = _convert_filters(value).get("OR", []) if key == "deleted" else value
        return _column_in(attribute.get(key), values)

    # --- paging and phase 2: fetch --------------------------------------------------------------

    def page(self, selected: list[dict[str, Any]], page: int) -> list[dict[str, Any]]:
        """`limit`/`page` over the selected events (filterEventIds 1610-1616)."""
        limit = self.body.get("limit")
        if not limit:
            return selected
        return selected[int(limit) * (page - 1):int(limit) * page]

    def fetches(self, event: dict[str, Any]) -> bool:
        """fetchEvent's own `published` condition (Event.php 1908-1910): applied even when the
        selection skipped it (JSON false), so such a page holds only unpublished events."""
        value = self.body.get("published")
        return value is None or _column_in(event.get("published"), value)

    def shape(self, event: dict[str, Any], warninglists: Iterable[Warninglist], models: list[DecayingModel],
              sightings: dict[str, list[int]], partner_sightings: dict[str, list[int]]) -> dict[str, Any]:
        """The event as fetchEvent returns it (a copy; `event` is not changed)."""
        if _php_truthy(self.body.get("metadata")):
            return {k: v for k, v in event.items() if k not in _NOT_IN_METADATA}
        lists = [wl for wl in warninglists if wl.enabled] if _php_truthy(self.body.get("enforceWarninglist")) else []
        decay = models if _php_truthy(self.body.get("includeDecayScore")) else []
        def keep(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [self._finish(a, decay, sightings, partner_sightings) for a in items
                    if self._fetched(a, event) and not any(wl.hit(a) for wl in lists)]
        shaped = {**event, "Attribute": keep(event.get("Attribute", []))}
        objects = [{**o, "Attribute": keep(o.get("Attribute", []))}
                   for o in event.get("Object", []) if self._soft_kept(o, event)]
        shaped["Object"] = [o for o in objects if o["Attribute"]]  # JSONConverterTool::__cleanObjects
        return shaped

    def _fetched(self, attribute: dict[str, Any], event: dict[str, Any]) -> bool:
        """fetchEvent's attribute conditions: deleted, to_ids, blocked (NOT) tags."""
        return (self._soft_kept(attribute, event) and self._to_ids_kept(attribute)
                and not self._blocked_tags & {_tag_name(t) for t in attribute.get("Tag", [])})

    def _soft_kept(self, item: dict[str, Any], event: dict[str, Any]) -> bool:
        """fetchEvent 1922-1960 for a user without perm_sync: `deleted` values ("only" is 1)
        apply to the user's own org's events; elsewhere only not-deleted items, if 0 is asked."""
        deleted = 1 if _php_truthy(item.get("deleted")) else 0
        asked = self._deleted_asked
        if asked is None:
            return deleted == 0
        own = str(event.get("org_id")) == USER_ORG_ID and deleted in asked
        return own or (0 in asked and deleted == 0)

    @functools.cached_property
    def _deleted_asked(self) -> set[float] | None:
        value = self.body.get("deleted")
        if value is None:
            return None
        return {1 if v == "only" else _php_int(v) for v in (value if isinstance(value, list) else [value])}

    def _to_ids_kept(self, attribute: dict[str, Any]) -> bool:
        """fetchEvent 1987-1989: `!empty(to_ids) || to_ids === 0` trims (so "0" and false do not)."""
        value = self.body.get("to_ids")
        if value == "exclude":
            value = 0
        if _php_empty(value) and not (value == 0 and type(value) is int):
            return True
        return _column_in(attribute.get("to_ids"), value)

    @functools.cached_property
    def _blocked_tags(self) -> set[str]:
        """restSearch 7542-7546: a `tags` NOT list becomes blockedAttributeTags."""
        value = self._given("tags")
        if value is _SKIPPED or _php_empty(value):
            return set()
        return self._resolve(_dissect(value)["NOT"])

    def _finish(self, attribute: dict[str, Any], models: list[DecayingModel],
                sightings: dict[str, list[int]], partner_sightings: dict[str, list[int]]) -> dict[str, Any]:
        """JSONConverterTool attaches the attribute's sightings, the user's organisation's and
        its partners' (Sighting::attachToEvent shows the event owner all); attachScoresToAttribute
        one score per enabled model associated with its type, counting from the user's own only
        (getLastSightingForAttribute keeps the user's and host's organisations under the default
        Sightings_policy, event owner)."""
        key = str(attribute.get("uuid"))
        seen = sightings.get(key, [])
        scores = [score for model in models if (score := model.score(attribute, seen, self.now)) is not None]
        carried = [(moment, USER_ORG_ID) for moment in seen] + [(moment, PARTNER_ORG_ID) for moment in partner_sightings.get(key, [])]
        extra: dict[str, Any] = {"Sighting": [sighting_record(attribute, moment, org, n) for n, (moment, org) in enumerate(carried, 1)]} \
            if carried else {}
        if scores:
            extra["decay_score"] = scores
        return {**attribute, **extra} if extra else attribute


def sighting_record(attribute: dict[str, Any], moment: int, org_id: str, number: int) -> dict[str, Any]:
    """One type-0 sighting as an event's attribute carries it (misp.md "Sighting")."""
    return {"id": str(number), "attribute_id": str(attribute.get("id", "")), "event_id": str(attribute.get("event_id", "")),
            "org_id": org_id, "date_sighting": str(moment), "type": "0", "source": "",
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sighting:{attribute.get('uuid')}:{moment}:{number}")),
            "attribute_uuid": str(attribute.get("uuid", "")),
            "Organisation": _SIGHTING_ORGS[org_id]}


def event_attributes(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Every attribute row of the event: its own and its objects' (deleted ones included)."""
    return list(event.get("Attribute", [])) + [a for o in event.get("Object", []) for a in o.get("Attribute", [])]


def _massage(body: dict[str, Any]) -> dict[str, Any]:
    """AppController::_harvestParameters (1114-1121: strings trimmed, `a||b` is a list), then
    Event::restSearchFilterMassage (Event.php 7431-7465) for the JSON export: `tag` stands for
    `tags`; no default to_ids/published (JsonExport is a non-restrictive export)."""
    harvested = {key: _harvested(value) for key, value in body.items()}
    if "tag" in harvested and "tags" not in harvested:
        harvested["tags"] = harvested["tag"]
    return harvested


def _harvested(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    value = value.strip()
    return value.split("||") if value.find("||") > 0 else value


def _known_tags(events: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for wrapped in events:
        event = wrapped["Event"]
        names.update(_tag_name(t) for t in event.get("Tag", []))
        names.update(_tag_name(t) for a in event_attributes(event) for t in a.get("Tag", []))
    return names


def _known_orgs(events: list[dict[str, Any]]) -> dict[str, str]:
    """Name or uuid (lower case) -> the org's uuid, else its id."""
    orgs: dict[str, str] = {}
    for wrapped in events:
        orgc = wrapped["Event"].get("Orgc") or {}
        key = str(orgc.get("uuid") or orgc.get("id") or "").lower()
        for alias in (orgc.get("name"), orgc.get("uuid")):
            if alias and key:
                orgs[str(alias).lower()] = key
    return orgs


def _tag_name(tag: Any) -> str:
    return str(tag.get("name", "") if isinstance(tag, dict) else tag).lower()


def _dissect(value: Any) -> dict[str, list[Any]]:
    """MispAttribute::dissectArgs (1397-1426): a string split on `&&`, a list, or an
    OR/NOT/AND dict; a leading `!` negates a string or list element."""
    if isinstance(value, dict):
        return {op: list(_as_list(value.get(op) or [])) for op in ("OR", "NOT", "AND")}
    groups: dict[str, list[Any]] = {"OR": [], "NOT": [], "AND": []}
    for item in (value.split("&&") if isinstance(value, str) else _as_list(value)):
        if isinstance(item, str) and item.startswith("!"):
            groups["NOT"].append(item[1:])
        elif item != "":
            groups["OR"].append(item)
    return groups


def _convert_filters(value: Any) -> dict[str, list[Any]]:
    """AppModel::convert_filters (3596-3632): the same forms, normalised to OR/NOT/AND."""
    if isinstance(value, dict):
        return {op: _as_list(value[op]) for op in ("OR", "NOT", "AND") if op in value}
    groups: dict[str, list[Any]] = {}
    items = value if isinstance(value, list) else [part for part in _php_str(value).split("&&") if part != ""]
    for item in items:
        text = _php_str(item)
        if text.startswith("!"):
            groups.setdefault("NOT", []).append(text[1:])
        elif item is not None:
            groups.setdefault("OR", []).append(item)
    return groups


def _generic_filter(groups: dict[str, list[Any]], column: str) -> bool:
    """AppModel::generic_add_filter (3516-3594) on one column: OR any, NOT none; values with a
    leading or trailing `%` are LIKE patterns. An AND of plain values is MISP's `IN` (any)."""
    def hit(item: Any) -> bool:
        text = str(item)
        return _like(text, column) if text[:1] == "%" or text[-1:] == "%" else text.lower() == column.lower()
    ok = True
    if "OR" in groups:
        ok = any(hit(v) for v in groups["OR"])
    if "NOT" in groups:
        ok = ok and not any(hit(v) for v in groups["NOT"])
    if "AND" in groups:
        plain = [v for v in groups["AND"] if str(v)[:1] != "%" and str(v)[-1:] != "%"]
        patterns = [v for v in groups["AND"] if v not in plain]
        ok = ok and (not plain or any(hit(v) for v in plain)) and all(hit(v) for v in patterns)
    return ok


def _value_hit(groups: dict[str, list[Any]], value: str) -> bool:
    """set_filter_value (Event.php 2956-2977): generic_add_filter over value1 and value2 (the
    halves of a composite `a|b`): a positive group hits either half, a NOT group neither."""
    halves = value.split("|", 1)
    positive: dict[str, list[Any]] = {op: groups[op] for op in ("OR", "AND") if op in groups}
    hit = not positive or any(_generic_filter(positive, half) for half in halves)
    return hit and not ("NOT" in groups and any(_generic_filter({"OR": groups["NOT"]}, half) for half in halves))


def _with_email(groups: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """set_filter_type (Event.php 2891-2919): email-src or email-dst also asks for email."""
    result = dict(groups)
    for op in ("OR", "NOT"):
        values = result.get(op, [])
        if {"email-src", "email-dst"} & set(values) and "email" not in values:
            result[op] = [*values, "email"]
    return result


def _like(pattern: str, text: str) -> bool:
    """SQL LIKE without case: `%` any run, `_` one character, `\\` escapes."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.I | re.S) is not None


def _column_in(column: Any, value: Any) -> bool:
    """`column = value` or `column IN (values)` as MySQL compares a number with a string."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return any(_php_int(column) == _php_int(v) for v in values)


def _time_bounds(value: Any, now: float) -> tuple[int, int]:
    """setTimestampConditions: one time is a lower bound (0 is none, which `>= 0` is too);
    two are [low, high], swapped when reversed. Other lists are refused, as MISP does."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError("Invalid date specification, must be string or array with two elements")
        low, high = sorted((resolve_time(value[0], now), resolve_time(value[1], now)))
        return low, high
    return resolve_time(value, now), 2**63


def resolve_time(value: Any, now: float) -> int:
    """AppModel::resolveTimeDelta (3739-3764): a number, `<n>d|h|m|s` back from now, or a
    date for strtotime (ISO only here); anything else is now + 1 (matches nothing)."""
    if _php_numeric(value):
        return int(float(value))
    text = str(value)
    unit = text[-1:].lower()
    if unit in _UNITS:
        return int(now - float(text[:-1]) * _UNITS[unit]) if _php_numeric(text[:-1]) else int(now) + 1
    parsed = _iso_epoch(text)
    return parsed if parsed is not None else int(now) + 1


def _iso_epoch(value: Any) -> int | None:
    """An ISO date or date-time (UTC unless it carries an offset) as epoch seconds."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _day(epoch: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


def _hostname_hit(entries: list[str], value: str) -> bool:
    """Warninglist::__evalHostname: the host, or any parent domain of it, is listed."""
    listed = {entry.strip(".").lower() for entry in entries}
    pieces = value.split("/")
    host = pieces[2] if "//" in value and len(pieces) > 2 else pieces[0]
    labels = host.rstrip(".").split(".")
    return any(".".join(labels[i:]) in listed for i in range(len(labels)))


def _cidr_hit(entries: list[str], value: str) -> bool:
    """CidrTool::contains: the value is an address inside one of the networks."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(entry, strict=False) for entry in entries
               if ipaddress.ip_network(entry, strict=False).version == address.version)


def _php_regex(pattern: str) -> re.Pattern[str]:
    """A PHP preg pattern `/body/flags` as a Python regex (flags i, m, s, x, u)."""
    body, _, flags = pattern[1:].rpartition(pattern[0])
    bits = 0
    for flag, bit in (("i", re.I), ("m", re.M), ("s", re.S), ("x", re.X)):
        if flag in flags:
            bits |= bit
    return re.compile(body, bits)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _php_str(value: Any) -> str:
    if value is True:
        return "1"
    if value is False or value is None:
        return ""
    return str(value)


def _php_numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", value) is not None


def _php_int(value: Any) -> float:
    """A value as MySQL compares it with a number: leading digits of a string, else 0."""
    if isinstance(value, bool) or value is None:
        return int(bool(value))
    if isinstance(value, (int, float)):
        return value
    match = re.match(r"\s*[+-]?\d+(\.\d+)?", str(value))
    return float(match[0]) if match else 0


def _php_empty(value: Any) -> bool:
    """PHP empty(): null, false, 0, "0", "", and empty arrays."""
    return value is None or value is False or value == 0 or value == "0" or value == "" or value in ([], {})


def _php_truthy(value: Any) -> bool:
    return not _php_empty(value)

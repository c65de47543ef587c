"""State rows recovered from what a target holds: Graph's listing, or a Sentinel workspace's
queryIndicators items. Pure functions: the listing in, rows out.

Used by --rebuild-state and, automatically, by a run that finds its state missing, empty or
unreadable while the service holds indicators of ours: the tool then reads back before it sends,
so a lost state file never duplicates an indicator, never reuses a revoked STIX id and never gives
an object a second `created`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import constants as C
from misp_transformer import iso_utc, stix_id
from reconcile import content_hash, event_uuid_of, fixed_hash
from state_store import Known

_EVENT_URL_RE = re.compile(r"/events/view/([0-9a-fA-F-]{36})$")
# A revoked id that comes back gets stix_id(revoked id); no key is revived more often than this.
MAX_GENERATIONS = 64


@dataclasses.dataclass
class Rebuilt:
    """What a listing says we own: rows, revoked ids per key, copies to delete, items not ours."""

    rows: list[Known] = dataclasses.field(default_factory=list)
    revoked: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    surplus: list[str] = dataclasses.field(default_factory=list)
    foreign: int = 0


def graph_rows(items: Iterable[Mapping[str, Any]], now: dt.datetime) -> Rebuilt:
    """Graph state rows from Graph's listing; a second copy of an externalId is surplus."""
    rows: dict[str, Known] = {}
    rebuilt = Rebuilt()
    for item in items:
        external_id = str(item.get("externalId") or "").lower()
        if not external_id:
            rebuilt.foreign += 1
        elif external_id in rows:
            rebuilt.surplus.append(str(item["id"]))
        else:
            rows[external_id] = Known(external_id, str(item["id"]), content_hash(item), fixed_hash(item),
                                      str(item.get("expirationDateTime", "")), event_uuid_of(item), iso_utc(now), "")
    rebuilt.rows = list(rows.values())
    return rebuilt


def stix_object(item: Mapping[str, Any]) -> dict[str, Any]:
    """The STIX indicator a queryIndicators item shows, in the form this tool uploads it, so
    a revocation can repeat it and its content hash matches what the transformer builds."""
    props = properties(item)
    obj: dict[str, Any] = {
        "type": "indicator", "spec_version": "2.1", "id": props.get("externalId"),
        "created": props.get("created"), "modified": props.get("modified"),
        "valid_from": props.get("validFrom"), "pattern_type": props.get("patternType", "stix"),
        "pattern_version": "2.1", "pattern": props.get("pattern"),
    }
    optional = {
        "valid_until": props.get("validUntil"), "name": props.get("displayName"),
        "description": props.get("description"), "indicator_types": props.get("threatTypes"),
        "confidence": props.get("confidence"), "labels": props.get("labels"),
        "object_marking_refs": props.get("objectMarkingRefs"),
        "kill_chain_phases": [{"kill_chain_name": p.get("killChainName"), "phase_name": p.get("phaseName")}
                              for p in _objects(props.get("killChainPhases"))],
        "external_references": [{key: ref[name] for key, name in C.STIX_REFERENCE_FIELDS.items() if name in ref}
                                for ref in _objects(props.get("externalReferences"))],
    }
    obj.update({key: value for key, value in optional.items() if value not in (None, [], "")})
    return obj


def properties(item: Mapping[str, Any]) -> Mapping[str, Any]:
    """A queryIndicators item's properties; junk there makes the item foreign, not a crash."""
    props = item.get("properties")
    return props if isinstance(props, Mapping) else {}


def _objects(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def misp_reference(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(attribute uuid, event uuid) from the object's MISP external reference ("" if absent)."""
    for ref in _objects(obj.get("external_references")):
        if ref.get("source_name") == "MISP" and isinstance(ref.get("external_id"), str):
            match = _EVENT_URL_RE.search(str(ref.get("url", "")))
            return ref["external_id"].lower(), match.group(1).lower() if match else ""
    return "", ""


def key_and_generation(stix: str, attribute_uuid: str) -> tuple[str, int] | None:
    """Which key (base STIX id) and revival generation a STIX id belongs to, or None."""
    for suffix in C.STIX_PART_SUFFIXES:
        key = candidate = stix_id(attribute_uuid + suffix)
        for generation in range(MAX_GENERATIONS):
            if candidate == stix:
                return key, generation
            candidate = stix_id(candidate)
    return None


def sentinel_rows(items: Iterable[Mapping[str, Any]], now: dt.datetime) -> Rebuilt:
    """Sentinel state rows from the workspace: per key, its newest generation; a revoked one
    becomes the key's revoked id (a revival then gets the next id), a live one an owned row."""
    newest: dict[str, tuple[int, dict[str, Any], str, bool]] = {}
    rebuilt = Rebuilt()
    for item in items:
        obj = stix_object(item)
        revoked = properties(item).get("revoked") is True
        attribute_uuid, event_uuid = misp_reference(obj)
        found = key_and_generation(str(obj["id"]), attribute_uuid) if attribute_uuid else None
        if found is None:
            rebuilt.foreign += 1
            continue
        key, generation = found
        if key not in newest or generation > newest[key][0]:
            newest[key] = (generation, obj, event_uuid, revoked)
    for key, (_, obj, event_uuid, revoked) in newest.items():
        if revoked:
            rebuilt.revoked.append((key, obj["id"]))
        else:
            rebuilt.rows.append(Known(key, obj["id"], content_hash(obj), fixed_hash(obj), str(obj.get("valid_until", "")),
                                      event_uuid, iso_utc(now), json.dumps(obj, sort_keys=True)))
    return rebuilt

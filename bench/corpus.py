"""A synthetic MISP corpus with the type and tag mix of the real CIRCL OSINT events in
tests/fixtures (drawn from them at start-up), deterministic for a given seed.

Values are valid for their type (so the transformer does real work, not early rejects),
about a third of the attributes are not `to_ids`, and a tenth sit inside file objects.

`defender_corpus` is the Defender rows' MISP: every attribute one distinct indicator Defender
takes, so a corpus of N attributes is N indicators for the budget and the rate limits.
"""
from __future__ import annotations

import collections
import hashlib
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from standins import seed_events

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "misp_events"
EXTRA_TAGS = ["tlp:green", "tlp:amber", "kill-chain:Command and Control", "sentinel-threattype:C2",
              'misp:confidence-level="usually-confident"', 'misp-galaxy:threat-actor="Sofacy"',
              'misp-galaxy:malpedia="Emotet"', "diamond-model:Infrastructure"]
ATTRIBUTES_PER_EVENT = 100


def real_mix() -> tuple[list[str], list[int], list[str]]:
    """Attribute types with their weights, and event tag names, from the real events."""
    types: collections.Counter[str] = collections.Counter()
    tags: list[str] = []
    for wrapped in seed_events(FIXTURES):
        event = wrapped["Event"]
        for attribute in event.get("Attribute", []) + [a for o in event.get("Object", []) for a in o.get("Attribute", [])]:
            types[attribute["type"]] += 1
        tags.extend(tag["name"] for tag in event.get("Tag", []))
    names = sorted(types)
    return names, [types[name] for name in names], sorted(set(tags)) + EXTRA_TAGS


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def _host(rng: random.Random) -> str:
    return f"h{rng.getrandbits(40):x}.example{rng.randrange(50)}.com"


def _ip(rng: random.Random) -> str:
    return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


VALUES: dict[str, Callable[[random.Random], str]] = {
    "ip-dst": _ip, "ip-src": _ip,
    "ip-dst|port": lambda rng: f"{_ip(rng)}|{rng.randrange(1, 65536)}",
    "domain": _host, "hostname": _host,
    "url": lambda rng: f"http://{_host(rng)}/p/{rng.getrandbits(32):x}",
    "md5": lambda rng: _hex(rng, 32), "sha1": lambda rng: _hex(rng, 40), "sha256": lambda rng: _hex(rng, 64),
    "sha512": lambda rng: _hex(rng, 128),
    "filename|md5": lambda rng: f"f{rng.getrandbits(24):x}.exe|{_hex(rng, 32)}",
    "filename|sha1": lambda rng: f"f{rng.getrandbits(24):x}.exe|{_hex(rng, 40)}",
    "filename|sha256": lambda rng: f"f{rng.getrandbits(24):x}.exe|{_hex(rng, 64)}",
    "malware-sample": lambda rng: f"s{rng.getrandbits(24):x}.bin|{_hex(rng, 32)}",
    "filename": lambda rng: f"dropper_{rng.getrandbits(24):x}.dll",
    "email-src": lambda rng: f"u{rng.getrandbits(20):x}@{_host(rng)}",
    "email-subject": lambda rng: f"Invoice {rng.getrandbits(20)}",
    "ssdeep": lambda rng: f"{rng.choice([96, 192, 3072])}:{_hex(rng, 20)}:{_hex(rng, 12)}",
    "size-in-bytes": lambda rng: str(rng.randrange(1, 10**7)),
    "port": lambda rng: str(rng.randrange(1, 65536)),
}


def generate(attributes: int, seed: int = 1, published: bool = True) -> Iterator[dict[str, Any]]:
    """Events of about ATTRIBUTES_PER_EVENT attributes until `attributes` are made."""
    rng = random.Random(seed)
    names, weights, tags = real_mix()
    made = 0
    number = 0
    while made < attributes:
        count = min(ATTRIBUTES_PER_EVENT, attributes - made)
        number += 1
        yield _event(rng, number, [_attribute(rng, rng.choices(names, weights)[0]) for _ in range(count)], tags, published)
        made += count


DEFENDER_TYPES = ("ip-dst", "domain", "sha256")


def defender_value(misp_type: str, number: int, rng: random.Random) -> str:
    """The `number`th value of its type, distinct from every other: addresses in 8.0.0.0/8
    (global, which Defender requires), domains and SHA-256 hashes."""
    if misp_type == "ip-dst":
        return f"8.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
    if misp_type == "domain":
        return f"d{number:x}-{rng.getrandbits(24):06x}.bench-defender.net"
    return hashlib.sha256(f"bench/{number}".encode()).hexdigest()


def defender_corpus(indicators: int, seed: int = 11) -> Iterator[dict[str, Any]]:
    """Published events of ATTRIBUTES_PER_EVENT `to_ids` attributes until `indicators` are
    made, each attribute one distinct Defender indicator (address, domain, SHA-256 in turn)."""
    rng = random.Random(seed)
    tags = real_mix()[2]
    for number, start in enumerate(range(0, indicators, ATTRIBUTES_PER_EVENT), 1):
        numbers = range(start + 1, min(start + ATTRIBUTES_PER_EVENT, indicators) + 1)
        kinds = [DEFENDER_TYPES[n % len(DEFENDER_TYPES)] for n in numbers]
        yield _event(rng, number, [_shaped(rng, kind, defender_value(kind, n, rng), 1.0) for kind, n in zip(kinds, numbers, strict=True)],
                     tags, True)


def _event(rng: random.Random, number: int, attributes: list[dict[str, Any]], tags: list[str],
           published: bool) -> dict[str, Any]:
    """An event holding `attributes`, the first tenth of them inside a file object."""
    count = len(attributes)
    in_objects = attributes[: count // 10]
    timestamp = str(1700000000 + number)
    return {"Event": {
        "id": str(number), "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "info": f"OSINT - synthetic report {number}",
        "published": published, "timestamp": timestamp, "publish_timestamp": timestamp, "date": "2026-11-01",
        "Orgc": {"name": "CIRCL", "uuid": "55f6ea5e-2c60-40e5-964f-47a8950d210f"},
        "Tag": [{"name": name, "local": False} for name in rng.sample(tags, 3)],
        "Attribute": attributes[count // 10:],
        "Object": [{"name": "file", "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "Attribute": in_objects}],
    }}


def _attribute(rng: random.Random, misp_type: str) -> dict[str, Any]:
    make = VALUES.get(misp_type)
    return _shaped(rng, misp_type, make(rng) if make else f"text {rng.getrandbits(32):x}", 0.9 if make else None)


def _shaped(rng: random.Random, misp_type: str, value: str, ids_share: float | None) -> dict[str, Any]:
    """An attribute, `to_ids` with the chance `ids_share` (None: never, and no draw)."""
    attribute = {"uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "type": misp_type, "value": value,
                 "to_ids": ids_share is not None and rng.random() < ids_share, "comment": "", "deleted": False,
                 "timestamp": "1700000000", "category": "Network activity"}
    if rng.random() < 0.2:
        attribute["Tag"] = [{"name": rng.choice(["tlp:amber", "kill-chain:Delivery", "type:OSINT"]), "local": 0}]
    return attribute

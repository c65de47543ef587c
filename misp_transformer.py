"""MISP event dict -> Graph tiIndicators or STIX 2.1 indicators, plus a reason for every
attribute left out.

Pure: no I/O, no clock (the caller passes `now`), no settings lookup. This is where the mapping
contract (../shared/reference/mapping.md) lives; the clients only move the result over HTTP.
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import math
import urllib.parse
import uuid as uuid_module
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import idna

import constants as C
from constants import SkipReason


class InvalidValue(ValueError):
    """An attribute value that cannot become an observable; the message says why."""


@dataclasses.dataclass(frozen=True)
class DecayPolicy:
    """MISP's decaying model as a run applies it (`misp_decay_model`): whose score to read, the
    threshold, and the Polynomial parameters that predict when the score crosses it (None for
    another formula: its score is used, its expiry is the fixed one)."""

    model_id: str
    model_name: str
    threshold: float
    as_confidence: bool = True
    lifetime_days: float | None = None
    decay_speed: float | None = None


@dataclasses.dataclass(frozen=True)
class MappingPolicy:
    """The settings that shape an indicator (a slice of the validated Settings)."""

    target_product: str = C.TARGET_SENTINEL
    action: str = "alert"
    passive_only: bool = False
    days_to_expire: int = 60
    network_ignore_direction: bool = False
    ignore_local_tags: bool = True
    default_confidence: int = 50
    default_tlp: str = C.DEFAULT_TLP
    allow_weak_observables: bool = False
    allow_broad_cidr: bool = False
    misp_url: str = ""
    tlp_max: str = ""  # "" or the most restrictive TLP this target takes (C.TLP_RANK's names)
    min_confidence: int | None = None
    defender_action: str = C.DEFENDER_DEFAULT_ACTION
    defender_generate_alert: bool = True
    defender_severity: str = ""  # "" = from the event's threat level
    defender_rbac_groups: tuple[str, ...] = ()
    defender_recommended_actions: str = ""
    decay: DecayPolicy | None = None


class Skip(NamedTuple):
    """One attribute that produced no indicator, with enough context to find it in MISP. A
    NamedTuple, not a frozen dataclass: a third of a real event's attributes are skipped
    (not to_ids), and a tuple is built 3x faster."""

    reason: SkipReason
    event_uuid: str
    attribute_uuid: str
    attribute_type: str
    detail: str = ""
    value: str = ""  # as MISP sent it; whoever writes it out scrubs and cuts it

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, as a log record or report writes them."""
        return self._asdict()


@dataclasses.dataclass
class EventResult:
    """What one event yields: indicators to send and attributes skipped."""

    indicators: list[dict[str, Any]]
    skips: list[Skip]
    attributes: int
    event_uuid: str = ""
    refanged: int = 0  # values sent after undoing defanging (hxxp, [.], ...): counted, not skipped
    decay: dict[str, int] = dataclasses.field(default_factory=dict)  # C.DECAY_COUNTS, with a model


# --- small parsers that accept what real MISP servers and feeds send -------------------------

def is_true(value: Any) -> bool:
    """MISP booleans arrive as bool, 0/1 or "0"/"1" depending on server version and feed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true")
    return False


def as_text(value: Any) -> str:
    """Attribute values are strings in MISP; tolerate plain numbers, refuse anything else."""
    if not isinstance(value, str):
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise InvalidValue(f"value is a {type(value).__name__}, not text")
    if len(value) > C.MAX_VALUE_LENGTH:
        raise InvalidValue(f"value longer than {C.MAX_VALUE_LENGTH} characters")
    if not (value.isascii() and "\x00" not in value) and C.BROKEN_TEXT_RE.search(value):  # ASCII holds no surrogate
        raise InvalidValue("value is not valid Unicode text")
    return value.strip()


def clean_text(value: Any) -> str:
    """Free text (event info, comments) as valid Unicode, broken bytes as U+FFFD, and at most
    TEXT_FIELD_MAX characters: no field holds more, so no more is ever copied or scanned."""
    if not isinstance(value, str):
        return ""
    return cut_text(C.BROKEN_TEXT_RE.sub("\ufffd", value.strip()[: C.TEXT_FIELD_MAX + 1]), C.TEXT_FIELD_MAX)


def cut_text(text: str, limit: int) -> str:
    """At most `limit` characters; a longer text is cut with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + C.ELLIPSIS if limit > 0 else ""


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # built once, not per call


def json_bytes(value: Any) -> int:
    """Size as the indicator limit counts it: compact JSON as requests sends it (non-ASCII
    escaped as \\uXXXX, so é takes 6 bytes and an emoji 12)."""
    return len(_COMPACT_JSON.encode(value))


def text_bytes(texts: str | tuple[str, ...]) -> int:
    """json_bytes of a text or a tuple of texts, each text escaped alone: json escapes character
    by character, so sizes add up, and a tuple through its generic encoder costs far more."""
    if isinstance(texts, str):
        return json_bytes(texts)
    return sum(map(json_bytes, texts)) + len(texts) + 1  # the brackets and commas


def text_bytes_bound(texts: str | tuple[str, ...]) -> int:
    """At least text_bytes(texts), from lengths alone: a character takes at most 12 bytes."""
    if isinstance(texts, str):
        return _BYTES_PER_CHAR * len(texts) + 2
    return _BYTES_PER_CHAR * sum(map(len, texts)) + 3 * len(texts) + 1


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    """A MISP list that may be absent, null or hold junk: keep only the objects."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]  # JSON objects; a Mapping check costs 5× more


def iso_utc(moment: dt.datetime) -> str:
    """Graph wants ISO 8601 UTC with a Z."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def service_moment(value: Any) -> dt.datetime | None:
    """A timestamp as STIX, Graph, the management API or Log Analytics writes it (any sub-second
    digits, `Z` or an offset; none is UTC), or None."""
    match = C.SERVICE_STAMP_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    head, fraction, zone = match.groups()
    offset = "+00:00" if zone is None or zone.upper() == "Z" else zone
    try:
        return dt.datetime.fromisoformat(f"{head}.{((fraction or '') + '000000')[:6]}{offset}")
    except ValueError:
        return None


def ascii_number(text: str, maximum: int) -> int | None:
    """A whole number 0..maximum written in ASCII digits, else None: the one way MISP numbers are
    read. int() alone also takes '٣', '１', '+5' and '1_0', and '²'.isdigit() is true while
    int('²') raises; the length check spares int() a thousand-digit string."""
    text = text.strip()
    if len(text.lstrip("0")) > len(str(maximum)) or not C.ASCII_NUMBER_RE.fullmatch(text):
        return None
    number = int(text)
    return number if number <= maximum else None


def misp_number(value: Any, maximum: int) -> int | None:
    """A MISP number field, a string (or a number) of ASCII digits up to `maximum`; else None."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    return ascii_number(text, maximum) if isinstance(text, str) else None


def epoch_seconds(value: Any) -> int | None:
    """MISP timestamps are epoch seconds; None when absent or unusable, or before 1970 or
    after 9999 (not a real MISP timestamp)."""
    return misp_number(value, C.MAX_EPOCH_SECONDS)


def epoch_to_iso(value: Any) -> str | None:
    seconds = epoch_seconds(value)
    return None if seconds is None else iso_utc(dt.datetime.fromtimestamp(seconds, dt.UTC))


# --- one observable model (mapping.md "Values"): every attribute read once, for every target ---

class _Refused(Exception):
    """A candidate that yields no indicator (for this target), with the reason to count it under."""

    def __init__(self, reason: SkipReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


Kind = C.ObservableKind


class Observable(NamedTuple):
    """One thing to detect, read from a MISP attribute once and with one set of rules. Targets
    only render observables, so no target can take a value another refuses. Immutable and typed
    like a frozen dataclass, but built 3x faster (0.3 µs, not 0.9: one is built per attribute)."""

    kind: Kind
    value: str  # normalised, as every target sends it (an IP: its text, a CIDR block with '/')
    number: int | None = None  # ASN, port or size (kinds ASN, PORT, FILE_SIZE)
    direction: C.Direction | None = None  # the end of the traffic; None: either
    port: int | None = None  # of ip|port and hostname|port
    algorithm: str = ""  # the MISP hash type (FILE_HASH, X509_HASH)
    file_name: str = ""  # of filename|<hash> and malware-sample
    part: str = ""  # which part of the attribute: "" (all of it), or one of C.STIX_PART_SUFFIXES

    @property
    def version(self) -> int:
        """An IP observable's version: ipaddress writes every IPv6 address with a colon."""
        return 6 if ":" in self.value else 4

    @property
    def is_network(self) -> bool:
        return "/" in self.value


Reader = Callable[[str, MappingPolicy], tuple[Observable, ...]]


@dataclasses.dataclass(frozen=True)
class NetworkReader:
    """The reader of a network value (an address, host name, URL or e-mail address): such values
    are refanged before they are read, and only they (a file name may well hold '[.]')."""

    read: Reader


def split_composite(value: str) -> tuple[str, str]:
    """`a|b` composites split on the first `|`; a composite without one is invalid."""
    left, sep, right = value.partition("|")
    if not sep or not left.strip() or not right.strip():
        raise InvalidValue("composite value without its '|' separator")
    return left.strip(), right.strip()


def refang(value: str) -> str:
    """`hxxp://evil[.]example` as `http://evil.example`: feeds defang network values so that no
    one clicks them; the tool reads them as they were."""
    if "[" not in value and "(" not in value and value[1:3].lower() != "xx":
        return value
    text = C.DEFANGED_RE.sub(lambda found: C.REFANGED[found[0].lower()], value)
    return C.DEFANGED_SCHEME_RE.sub(lambda found: "http" + found[1].lower(), text)


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address, or a CIDR block when the value carries a prefix length; never a zone id
    (`fe80::1%eth0` names an interface of one machine, not a host to detect)."""
    if "%" in value:
        raise InvalidValue("an IP address with a zone id (%…)")
    try:
        if "/" in value:
            return ipaddress.ip_network(value, strict=False)
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise InvalidValue(f"not an IP address or CIDR block: {exc}") from None


def ip_text(value: str, policy: MappingPolicy) -> str:
    """An address or CIDR block in canonical text. Plain dotted-quad IPv4, most of what MISP holds,
    is recognised by one exact regex; everything else goes through `ipaddress`. A block broader
    than /16 (IPv4) or /32 (IPv6), 0.0.0.0/0 above all, is weak unless allow_broad_cidr."""
    text = value.strip()
    if C.IPV4_RE.match(text):
        return text
    ip = parse_ip(text)
    if isinstance(ip, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        widest = C.NARROWEST_BROAD_PREFIX[ip.version]
        if isinstance(ip, ipaddress.IPv6Network) and any(ip.overlaps(net) for net in C.IPV4_EMBEDDING_NETWORKS):
            widest += C.IPV4_EMBEDDING_PREFIX - C.NARROWEST_BROAD_PREFIX[4]  # ::ffff:0.0.0.0/96 is 0.0.0.0/0
        if ip.prefixlen < widest and not policy.allow_broad_cidr:
            raise _Refused(SkipReason.WEAK_OBSERVABLE, f"CIDR block broader than /{widest} (allow_broad_cidr)")
    return str(ip)


def address_text(value: str) -> str:
    """A single address (no CIDR block) in canonical text, for fields that hold one host."""
    text = value.strip()
    if C.IPV4_RE.match(text):
        return text
    if "/" in text:
        raise InvalidValue("not an IP address (a CIDR block)")
    return str(parse_ip(text))


def parse_port(value: str) -> int:
    port = ascii_number(value, C.PORT_MAX)
    if port is None:
        raise InvalidValue(f"port is not a number 0-{C.PORT_MAX}")
    return port


def parse_asn(value: str) -> int:
    """`AS64500`, `as64500` and `64500` are the same ASN."""
    text = value.strip()
    asn = ascii_number(text[2:] if text[:2].lower() == "as" else text, C.ASN_MAX)
    if asn is None:
        raise InvalidValue("not an AS number")
    return asn


def normalize_hostname(value: str) -> str:
    """Lower-case A-label host name without a trailing dot, or InvalidValue. Non-ASCII names go
    through IDNA 2008 with UTS #46 mapping (Python's own codec is IDNA 2003: it reads `faß.de` as
    `fass.de`, another domain); ASCII names, nearly all, need only the label checks."""
    host = value.strip().rstrip(".")
    if not host:
        raise InvalidValue("empty host name")
    if _could_be_ip(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            raise InvalidValue("an IP address, not a host name")
    ascii_host = host.lower() if host.isascii() else _a_labels(host)
    labels = ascii_host.split(".")
    if len(ascii_host) > C.HOSTNAME_MAX or not all(map(C.HOSTNAME_LABEL_RE.match, labels)):
        raise InvalidValue("not a valid host name")
    if labels[-1].isdigit():  # RFC 3696 §2: no top-level domain is all digits (300.1.1.1, 1.2.3)
        raise InvalidValue("not a host name: its last label is all digits (RFC 3696)")
    if "xn--" in ascii_host:
        _check_a_labels(labels)
    return ascii_host


def _check_a_labels(labels: list[str]) -> None:
    """An `xn--` label must be a real A-label: punycode of a valid IDNA 2008 U-label."""
    for label in labels:
        if label.startswith("xn--"):
            try:
                idna.ulabel(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                raise InvalidValue(f"not a valid A-label (IDNA 2008): {label}") from None


def _a_labels(host: str) -> str:
    """A non-ASCII host name as A-labels, label by label, so that an ASCII label keeps what DNS
    allows beyond IDNA (`_dmarc`)."""
    try:
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False).rstrip(".")
        return ".".join(label.lower() if label.isascii() else idna.alabel(label).decode("ascii")
                        for label in mapped.split("."))
    except (idna.IDNAError, UnicodeError, ValueError):
        raise InvalidValue("not a valid internationalised host name (IDNA 2008)") from None


def _could_be_ip(host: str) -> bool:
    """ipaddress reads IPv6 only with a colon and IPv4 only as digits and dots: anything else
    is spared its (slow) parse."""
    return ":" in host or host.replace(".", "").isdigit()


def normalize_url(value: str) -> str:
    """An absolute RFC 3986 URI: the scheme as MISP has it (`http://` when there is none, as
    Graph and Sentinel reject relative ones), the host as host names are read, and every
    character RFC 3986 does not allow in the rest (non-ASCII as UTF-8) percent-encoded."""
    url = value.strip()
    if not url:
        raise InvalidValue("empty URL")
    if url.startswith("//"):  # scheme-relative
        url = "http:" + url
    elif C.URL_OPAQUE_RE.match(url):
        raise InvalidValue("not a URL with a host (a scheme without //, such as mailto:)")
    elif not C.URL_SCHEME_RE.match(url):
        url = "http://" + url
    scheme, _, rest = url.partition("://")
    end = C.URL_AUTHORITY_END_RE.search(rest)
    authority, tail = (rest[: end.start()], rest[end.start():]) if end else (rest, "")
    if not C.URL_TAIL_RE.fullmatch(tail):
        path, hash_mark, fragment = C.URL_STRAY_PERCENT_RE.sub("%25", tail).partition("#")
        tail = _quote(path, C.URL_SAFE_CHARACTERS + "%") + hash_mark + _quote(fragment, C.URL_SAFE_CHARACTERS + "%")
    return f"{scheme}://{_authority(authority)}{tail}"


def _quote(text: str, safe: str) -> str:
    return urllib.parse.quote(text, safe=safe, encoding="utf-8", errors="strict")


def _authority(authority: str) -> str:
    """`[userinfo@]host[:port]` with a real host: a name, an IPv4 address or `[IPv6]`."""
    userinfo, at, host_port = authority.rpartition("@")
    if host_port.startswith("["):
        literal, bracket, port = host_port[1:].partition("]")
        if not bracket or port[:1] not in ("", ":"):
            raise InvalidValue("URL host is not a host name or address")
        if ":" not in literal:
            raise InvalidValue("URL host is not a host name or address")
        host = "[" + address_text(literal) + "]"
    else:
        name, colon, port = host_port.partition(":")
        port = colon + port
        host = name if C.IPV4_RE.match(name) else _url_host(name)
    if port[1:] and ascii_number(port[1:], C.PORT_MAX) is None:
        raise InvalidValue("URL port is not a port number (0-65535)")
    userinfo = _quote(C.URL_STRAY_PERCENT_RE.sub("%25", userinfo), C.URL_USERINFO_SAFE_CHARACTERS + "%") + at if at else ""
    return userinfo + host + port


def _url_host(name: str) -> str:
    try:
        return normalize_hostname(name)
    except InvalidValue:
        raise InvalidValue("URL host is not a host name or address") from None


def split_email(value: str) -> tuple[str, str]:
    """Address (local part as sent, host normalised) and its host: exactly one `@`, a dot-atom
    local part (RFC 5322; RFC 6531 allows it non-ASCII letters) and a host name."""
    local, sep, domain = value.strip().partition("@")
    if not sep or "@" in domain or len(local) > C.EMAIL_LOCAL_MAX or not C.EMAIL_LOCAL_RE.match(local):
        raise InvalidValue("not an e-mail address (one '@' after a valid local part)")
    host = normalize_hostname(domain)
    return f"{local}@{host}", host


def normalize_hash(hash_type: str, value: str) -> str:
    """Check a hash against its algorithm's length and alphabet; a TLSH loses its `T1` version
    prefix (the form the OASIS schema takes)."""
    text = value.strip()
    pattern = C.HEX_HASH_RES.get(hash_type)
    if pattern is not None:
        if pattern.match(text):
            lower = text.lower()
            return lower[2:] if hash_type == "tlsh" and lower.startswith(C.TLSH_VERSION_PREFIX) else lower
        lengths = " or ".join(map(str, C.HEX_HASH_LENGTHS[hash_type]))
        raise InvalidValue(f"not a {hash_type} hash ({lengths} hex digits)")
    if C.FUZZY_HASH_PATTERNS[hash_type].match(text):
        return text
    raise InvalidValue(f"not a {hash_type} hash")


def normalize_mac(value: str) -> str:
    """Lower case, colon separated, from the colon, hyphen, dotted and bare forms."""
    mac = value.strip().lower()
    if not C.MAC_ADDRESS_RE.match(mac):
        raise InvalidValue("not a MAC address")
    digits = mac.replace(":", "").replace("-", "").replace(".", "")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def expand_hive(value: str) -> str:
    """`HKLM\\Software` as `HKEY_LOCAL_MACHINE\\Software`: STIX writes registry hives out."""
    hive, sep, rest = value.partition("\\")
    full = C.REGISTRY_HIVES.get(hive.lower())
    return f"{full}{sep}{rest}" if full else value


def require_text(value: str) -> str:
    text = value.strip()
    if not text:
        raise InvalidValue("empty value")
    return text


# --- the MISP type table: one reader per type, for every target (mapping.md) ------------------

# The readers run once per attribute: each takes its kind as a closure variable (an enum member
# looked up on its class costs as much as a dict display) and builds the Observable positionally.

def _ip(direction: C.Direction, kind: Kind = Kind.IP) -> Reader:
    return lambda value, policy: (Observable(kind, ip_text(value, policy), None, direction),)


def _ip_port(direction: C.Direction, kind: Kind = Kind.IP) -> Reader:
    def read(value: str, policy: MappingPolicy) -> tuple[Observable, ...]:
        address, port = split_composite(value)
        return (Observable(kind, ip_text(address, policy), None, direction, parse_port(port)),)
    return read


def _domain(value: str, policy: MappingPolicy, kind: Kind = Kind.DOMAIN) -> tuple[Observable, ...]:
    return (Observable(kind, normalize_hostname(value)),)


def _domain_ip(value: str, policy: MappingPolicy) -> tuple[Observable, ...]:
    """One attribute, two observables: STIX sends them as two indicators, Graph as one."""
    host, address = split_composite(value)
    return (Observable(Kind.DOMAIN, normalize_hostname(host), part="|domain"),
            Observable(Kind.IP, address_text(address), part="|ip"))


def _hostname_port(value: str, policy: MappingPolicy) -> tuple[Observable, ...]:
    host, port = split_composite(value)
    return (Observable(Kind.DOMAIN, normalize_hostname(host), direction=C.Direction.DESTINATION, port=parse_port(port)),)


def _url(value: str, policy: MappingPolicy, kind: Kind = Kind.URL) -> tuple[Observable, ...]:
    return (Observable(kind, normalize_url(value)),)


def _email(direction: C.Direction) -> Reader:
    return lambda value, policy: (Observable(Kind.EMAIL, split_email(value)[0], direction=direction),)


def _text(kind: Kind) -> Reader:
    return lambda value, policy: (Observable(kind, require_text(value)),)


def _hash(algorithm: str, kind: Kind = Kind.FILE_HASH) -> Reader:
    return lambda value, policy: (Observable(kind, normalize_hash(algorithm, value), None, None, None, algorithm),)


def _filename_hash(algorithm: str, kind: Kind = Kind.FILE_HASH) -> Reader:
    def read(value: str, policy: MappingPolicy) -> tuple[Observable, ...]:
        name, digest = split_composite(value)
        return (Observable(kind, normalize_hash(algorithm, digest), None, None, None, algorithm, name),)
    return read


def _weak(read: Reader) -> Reader:
    """Port and size alone match far too much; read them only when the operator allows it."""
    def guarded(value: str, policy: MappingPolicy) -> tuple[Observable, ...]:
        if not policy.allow_weak_observables:
            raise _Refused(SkipReason.WEAK_OBSERVABLE, "too weak alone (allow_weak_observables)")
        return read(value, policy)
    return guarded


def _number(kind: Kind, parse: Callable[[str], int]) -> Reader:
    def read(value: str, policy: MappingPolicy) -> tuple[Observable, ...]:
        number = parse(value)
        return (Observable(kind, str(number), number=number),)
    return read


def parse_size(value: str) -> int:
    size = ascii_number(value, C.GRAPH_INT64_MAX)
    if size is None:
        raise InvalidValue("size is not a whole number of bytes")
    return size


OBSERVABLE_TYPES: dict[str, Reader | NetworkReader] = {
    "ip-dst": NetworkReader(_ip(C.Direction.DESTINATION)),
    "ip-src": NetworkReader(_ip(C.Direction.SOURCE)),
    "ip-dst|port": NetworkReader(_ip_port(C.Direction.DESTINATION)),
    "ip-src|port": NetworkReader(_ip_port(C.Direction.SOURCE)),
    "domain": NetworkReader(_domain),
    "hostname": NetworkReader(_domain),
    "domain|ip": NetworkReader(_domain_ip),
    "hostname|port": NetworkReader(_hostname_port),
    "url": NetworkReader(_url),
    "email-src": NetworkReader(_email(C.Direction.SOURCE)),
    "email-dst": NetworkReader(_email(C.Direction.DESTINATION)),
    "email-subject": _text(Kind.EMAIL_SUBJECT),
    "email-x-mailer": _text(Kind.EMAIL_X_MAILER),
    "email-src-display-name": _text(Kind.EMAIL_DISPLAY_NAME),
    "filename": _text(Kind.FILE_NAME),
    "malware-sample": _filename_hash("md5"),
    "mutex": _text(Kind.MUTEX),
    "user-agent": _text(Kind.USER_AGENT),
    "AS": _number(Kind.ASN, parse_asn),
    "port": _weak(_number(Kind.PORT, parse_port)),
    "size-in-bytes": _weak(_number(Kind.FILE_SIZE, parse_size)),
    "mac-address": lambda value, policy: (Observable(Kind.MAC, normalize_mac(value)),),
    "regkey": lambda value, policy: (Observable(Kind.REGISTRY_KEY, expand_hive(require_text(value))),),
    **{misp_type: _hash(algorithm, Kind.X509_HASH) for misp_type, algorithm in C.X509_FINGERPRINTS.items()},
    **{hash_type: _hash(hash_type) for hash_type in C.HASH_TYPES},
    **{f"filename|{hash_type}": _filename_hash(hash_type) for hash_type in C.HASH_TYPES},
}


# --- observables -> Graph tiIndicator fields (mapping.md "Graph tiIndicator") -----------------

GraphRenderer = Callable[[Observable, MappingPolicy], dict[str, Any]]


# Graph's network field names, by direction (None: the direction-less field) and address kind.
_NETWORK_FIELDS = {(direction, kind): f"network{direction.value if direction else ''}{kind}"
                   for direction in (*C.Direction, None) for kind in ("IPv4", "IPv6", "CidrBlock", "Port")}


def _graph_port(observable: Observable, policy: MappingPolicy) -> dict[str, Any]:
    if observable.port is None:
        return {}
    fields: dict[str, Any] = {_NETWORK_FIELDS[observable.direction or C.Direction.DESTINATION, "Port"]: observable.port}
    if policy.network_ignore_direction:
        fields["networkPort"] = observable.port
    return fields


def _graph_ip(observable: Observable, policy: MappingPolicy) -> dict[str, Any]:
    """`network<Direction><IPv4|IPv6|CidrBlock>`; the direction-less field as well when the
    direction is ignored, or alone when there is none (domain|ip)."""
    kind = "CidrBlock" if observable.is_network else f"IPv{observable.version}"
    fields: dict[str, Any] = {}
    if observable.direction is not None:
        fields[_NETWORK_FIELDS[observable.direction, kind]] = observable.value
    if observable.direction is None or policy.network_ignore_direction:
        fields[_NETWORK_FIELDS[None, kind]] = observable.value
    if observable.port is not None:
        fields.update(_graph_port(observable, policy))
    return fields


def _graph_email(observable: Observable, policy: MappingPolicy) -> dict[str, Any]:
    if observable.direction is C.Direction.SOURCE:
        return {"emailSenderAddress": observable.value, "emailSourceDomain": observable.value.rpartition("@")[2]}
    return {"emailRecipient": observable.value}


def graph_file_name(name: str) -> str:
    """Graph reads a comma in fileName as a separator of several names: such a name is not for
    Graph (Sentinel still takes it)."""
    if "," in name:
        raise _Refused(SkipReason.NOT_FOR_TARGET, "Graph reads a comma in fileName as a separator of several names")
    return name


def _graph_hash(observable: Observable, policy: MappingPolicy) -> dict[str, Any]:
    fields: dict[str, Any] = {"fileHashType": C.GRAPH_HASH_TYPES.get(observable.algorithm, "unknown"),
                              "fileHashValue": observable.value}
    if observable.file_name:
        fields["fileName"] = graph_file_name(observable.file_name)
    return fields


def _graph_text(field: str) -> GraphRenderer:
    return lambda observable, policy: {field: observable.value}


def _graph_number(field: str) -> GraphRenderer:
    return lambda observable, policy: {field: observable.number}


GRAPH_RENDERERS: dict[Kind, GraphRenderer] = {
    Kind.IP: _graph_ip,
    Kind.DOMAIN: lambda observable, policy: {"domainName": observable.value} | _graph_port(observable, policy),
    Kind.URL: _graph_text("url"),
    Kind.EMAIL: _graph_email,
    Kind.EMAIL_SUBJECT: _graph_text("emailSubject"),
    Kind.EMAIL_X_MAILER: _graph_text("emailXMailer"),
    Kind.EMAIL_DISPLAY_NAME: _graph_text("emailSenderName"),
    Kind.FILE_NAME: lambda observable, policy: {"fileName": graph_file_name(observable.value)},
    Kind.FILE_HASH: _graph_hash,
    Kind.MUTEX: _graph_text("fileMutexName"),
    Kind.USER_AGENT: _graph_text("userAgent"),
    Kind.ASN: _graph_number("networkSourceAsn"),
    Kind.PORT: _graph_number("networkPort"),
    Kind.FILE_SIZE: _graph_number("fileSize"),
}


def graph_fields(observables: tuple[Observable, ...], policy: MappingPolicy) -> dict[str, Any]:
    """The observable fields of one tiIndicator; not-for-target when Graph has no field for them."""
    fields: dict[str, Any] = {}
    for observable in observables:
        render = GRAPH_RENDERERS.get(observable.kind)
        if render is None:
            raise _Refused(SkipReason.NOT_FOR_TARGET, f"Graph has no field for a {observable.kind.value} observable")
        fields = render(observable, policy) if not fields else fields | render(observable, policy)
    return fields


# --- observables -> Defender for Endpoint indicators (mapping.md "Defender for Endpoint") -----

def defender_observable(observable: Observable) -> tuple[str, str]:
    """(indicatorType, indicatorValue), or not-for-target: Defender takes file hashes (MD5,
    SHA-1, SHA-256), certificate thumbprints, single public IP addresses, domains and URLs."""
    kind = observable.kind
    if kind is Kind.FILE_HASH and observable.algorithm in C.DEFENDER_HASH_TYPES:
        return C.DEFENDER_HASH_TYPES[observable.algorithm], observable.value
    if kind is Kind.X509_HASH and observable.algorithm in C.DEFENDER_THUMBPRINT_TYPES:
        return "CertificateThumbprint", observable.value
    if kind is Kind.IP:
        if observable.is_network:
            raise _Refused(SkipReason.NOT_FOR_TARGET, "Defender takes single addresses, not CIDR blocks")
        address = ipaddress.ip_address(observable.value)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:8.8.8.8 is what devices see as 8.8.8.8
        if not address.is_global:
            raise _Refused(SkipReason.NOT_FOR_TARGET, "Defender takes public addresses only")
        return "IpAddress", str(address)
    if kind is Kind.DOMAIN:
        return "DomainName", observable.value
    if kind is Kind.URL:
        return "Url", observable.value
    algorithm = f" {observable.algorithm}" if observable.algorithm else ""
    raise _Refused(SkipReason.NOT_FOR_TARGET, f"Defender has no indicator type for a{algorithm} {kind.value} observable")



# --- tags and taxonomies ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TagFacts:
    """What one set of tags (an event's or an attribute's) says, taxonomy by taxonomy."""

    tlp: str | None = None
    threat_type: str | None = None
    kill_chain: tuple[str, ...] = ()
    diamond_model: str | None = None
    confidence: int | None = None
    activity_groups: tuple[str, ...] = ()
    malware_families: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()


def tag_names(tags: Any, ignore_local: bool) -> list[str]:
    """Names of the usable tags in a MISP `Tag` list, local ones dropped when asked."""
    names = []
    for tag in _dicts(tags):
        name = tag.get("name")
        if isinstance(name, str) and name.strip() and not (ignore_local and is_true(tag.get("local"))):
            names.append(_tag_text(name))
    return names


def _tag_text(name: str) -> str:
    """A tag or cluster name as free text: valid Unicode, at most TEXT_FIELD_MAX characters
    (an ASCII name of that length, nearly every tag, is already both)."""
    text = name.strip()
    return text if text.isascii() and len(text) <= C.TEXT_FIELD_MAX else clean_text(text)


def _quoted_value(name: str, prefix_len: int) -> str:
    return name[prefix_len:].strip().strip('"').strip()


def _galaxy_value(lower: str, name: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if lower.startswith(prefix):
            return _quoted_value(name, len(prefix)) or None
    return None


def _more_restrictive(current: str | None, level: str) -> str:
    return level if current is None or C.TLP_RANK[level] > C.TLP_RANK[current] else current


def read_tags(names: Iterable[str]) -> TagFacts:
    """Fold tag names into TagFacts; tags a mapping consumes do not become labels."""
    return _read_tags(tuple(names))


@functools.lru_cache(maxsize=C.TAG_SETS_CACHED)
def _read_tags(names: tuple[str, ...]) -> TagFacts:
    """read_tags, once per distinct tag list: events of one MISP share a few dozen tag lists,
    and folding them is most of what an event costs before its attributes."""
    tlp = threat_type = diamond = None
    confidence: int | None = None
    kill_chain: list[str] = []
    groups: list[str] = []
    families: list[str] = []
    labels: list[str] = []
    for name in names:
        lower = name.lower()
        if lower in C.TLP_TAGS:
            tlp = _more_restrictive(tlp, C.TLP_TAGS[lower])
        elif lower.startswith(C.THREAT_TYPE_PREFIX) and lower[len(C.THREAT_TYPE_PREFIX):] in C.THREAT_TYPE_BY_LOWER:
            threat_type = threat_type or C.THREAT_TYPE_BY_LOWER[lower[len(C.THREAT_TYPE_PREFIX):]]
        elif lower.startswith(C.KILL_CHAIN_PREFIX) and lower[len(C.KILL_CHAIN_PREFIX):] in C.KILL_CHAIN_TO_GRAPH:
            _append_new(kill_chain, C.KILL_CHAIN_TO_GRAPH[lower[len(C.KILL_CHAIN_PREFIX):]])
        elif lower.startswith(C.DIAMOND_MODEL_PREFIX) and lower[len(C.DIAMOND_MODEL_PREFIX):] in C.GRAPH_DIAMOND_MODEL:
            diamond = diamond or lower[len(C.DIAMOND_MODEL_PREFIX):]
        elif lower.startswith(C.CONFIDENCE_PREFIX) and _quoted_value(lower, len(C.CONFIDENCE_PREFIX)) in C.CONFIDENCE_LEVELS:
            if confidence is None:
                confidence = C.CONFIDENCE_LEVELS[_quoted_value(lower, len(C.CONFIDENCE_PREFIX))]
        elif (group := _galaxy_value(lower, name, C.GALAXY_ACTIVITY_GROUPS)) is not None:
            _append_new(groups, group)
        elif (family := _galaxy_value(lower, name, C.GALAXY_MALWARE_FAMILIES)) is not None:
            _append_new(families, family)
        else:
            _append_new(labels, name)
    return TagFacts(tlp, threat_type, tuple(kill_chain), diamond, confidence, tuple(groups), tuple(families), tuple(labels))


def _append_new(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _merge_unique(*groups: Iterable[str]) -> list[str]:
    merged: list[str] = []
    for group in groups:
        for item in group:
            _append_new(merged, item)
    return merged


# --- per-event context -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EventContext:
    """Computed once per event and shared by all its attributes."""

    uuid: str
    info: str
    last_reported: str | None
    tags: TagFacts
    activity_groups: tuple[str, ...]
    malware_families: tuple[str, ...]
    comments: str  # the event's comment attributes, one per line
    threat_level: int | None = None  # MISP threat_level_id: 1 High … 4 Undefined
    timestamp: int = 0  # the event's timestamp (epoch seconds), 0 when unusable


def _context_values(attributes: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Distinct values of the context attributes (threat-actor, malware-type, comment), in one
    pass: per type the first EVENT_CONTEXT_VALUES_MAX, within TEXT_FIELD_MAX characters, so a
    huge event cannot make each of its indicators huge."""
    values: dict[str, list[str]] = {misp_type: [] for misp_type in C.CONTEXT_TYPES}
    room = dict.fromkeys(C.CONTEXT_TYPES, C.TEXT_FIELD_MAX)
    for attribute in attributes:
        misp_type = attribute.get("type")
        if not isinstance(misp_type, str) or misp_type not in C.CONTEXT_TYPES or is_true(attribute.get("deleted")):
            continue
        kept = values[misp_type]
        if len(kept) < C.EVENT_CONTEXT_VALUES_MAX and room[misp_type] > 0:
            value = clean_text(attribute.get("value"))
            if value and value not in kept:
                kept.append(value)
                room[misp_type] -= len(value)
    return values


def event_context(event: Mapping[str, Any], attributes: list[Mapping[str, Any]], policy: MappingPolicy) -> EventContext:
    """Event tags, galaxies and context attributes (threat-actor, malware-type, comment)."""
    facts = read_tags(tag_names(event.get("Tag"), policy.ignore_local_tags) + galaxy_tag_names(event))
    uuid = event.get("uuid")
    context = _context_values(attributes)
    return EventContext(
        uuid=uuid if isinstance(uuid, str) else "",
        info=clean_text(event.get("info")),
        last_reported=epoch_to_iso(event.get("timestamp")),
        tags=facts,
        activity_groups=tuple(_merge_unique(facts.activity_groups, context["threat-actor"])),
        malware_families=tuple(_merge_unique(facts.malware_families, context["malware-type"])),
        comments="\n".join(context["comment"]),
        threat_level=misp_number(event.get("threat_level_id"), 4),
        timestamp=epoch_seconds(event.get("timestamp")) or 0,
    )


def describe(context: EventContext, comment: str) -> tuple[str, str]:
    """Short description (Graph's 100-character limit) and the long one (TEXT_FIELD_MAX), both
    cut with an ellipsis."""
    base = context.info or f"MISP event {context.uuid}"
    full = f"{base} - {comment}" if comment else base
    return cut_text(full, C.GRAPH_DESCRIPTION_MAX), cut_text(full, C.TEXT_FIELD_MAX)


# --- the transformer -------------------------------------------------------------------------

def event_attributes(event: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """Every attribute of the event and of its objects, with whether its object is deleted."""
    for attribute in _dicts(event.get("Attribute")):
        yield attribute, False
    for misp_object in _dicts(event.get("Object")):
        object_deleted = is_true(misp_object.get("deleted"))
        for attribute in _dicts(misp_object.get("Attribute")):
            yield attribute, object_deleted


def merged_facts(context: EventContext, own_tag_names: Iterable[str]) -> TagFacts:
    """The attribute's own tags over the event's, taxonomy by taxonomy; names and labels merged."""
    return _merged_facts(context.tags, context.activity_groups, context.malware_families, tuple(own_tag_names))


@functools.lru_cache(maxsize=C.TAG_SETS_CACHED)
def _merged_facts(event: TagFacts, groups: tuple[str, ...], families: tuple[str, ...], own_tag_names: tuple[str, ...]) -> TagFacts:
    """merged_facts, once per distinct event facts and own tags (across events too)."""
    own = read_tags(own_tag_names)
    return TagFacts(
        tlp=own.tlp or event.tlp,
        threat_type=own.threat_type or event.threat_type,
        kill_chain=own.kill_chain or event.kill_chain,
        diamond_model=own.diamond_model or event.diamond_model,
        confidence=_first_set(own.confidence, event.confidence, None),
        activity_groups=tuple(_merge_unique(groups, own.activity_groups)),
        malware_families=tuple(_merge_unique(families, own.malware_families)),
        labels=tuple(_merge_unique(event.labels, own.labels)),
    )


# An indicator's size without encoding it. Its free-form strings are the value (copied at most
# twice: Graph's direction-less fields, STIX name and pattern), the attribute and event UUIDs,
# the settings' strings, the texts (measured) and the tag names; a character takes at most
# 12 bytes on the wire (an emoji is two \uXXXX escapes). All else (field names, constants, timestamps, ids, host names ≤ 253, the
# MISP link) stays within _FIXED_BYTES, and a name's prefix ('threat-actor:') within _NAME_PREFIX_CHARS.
_BYTES_PER_CHAR = 12
_FIXED_BYTES = 4096
_NAME_PREFIX_CHARS = 16


def name_chars(facts: TagFacts) -> int:
    """Characters the tag names take in the common fields, the only free text these hold."""
    names = (*facts.labels, *facts.activity_groups, *facts.malware_families)
    return sum(map(len, names)) + _NAME_PREFIX_CHARS * len(names)


# The fields an over-size indicator gives up, in this order, each with the end it keeps.
Cuts = tuple[tuple[str, str], ...]


def fit(indicator: dict[str, Any], cuts: Cuts) -> dict[str, Any]:
    """The indicator within INDICATOR_MAX_BYTES: the fields in `cuts` are shortened in turn until
    it fits; InvalidValue when even that is not enough (a huge value)."""
    fitted = dict(indicator)
    for field, tail in cuts:
        excess = json_bytes(fitted) - C.INDICATOR_MAX_BYTES
        if excess <= 0:
            return fitted
        if isinstance(fitted.get(field), (str, list)):
            shorter = _shorter(fitted[field], tail, excess)
            if shorter:
                fitted[field] = shorter
            else:
                del fitted[field]
    if json_bytes(fitted) > C.INDICATOR_MAX_BYTES:
        raise InvalidValue(f"indicator over {C.INDICATOR_MAX_BYTES} bytes even with its free text, names and tags cut")
    return fitted


def _shorter(value: str | list[str], tail: str, excess: int) -> str | list[str]:
    """`value` at least `excess` bytes smaller, or empty: a list loses names from its end, a
    text keeps its `tail` and the longest start that fits, cut with an ellipsis (found by
    bisection, as one character may take 1 to 12 bytes)."""
    if isinstance(value, list):
        kept = list(value)
        freed = 0
        while kept and freed < excess:
            freed += json_bytes(kept.pop())
        return kept
    head = value[: len(value) - len(tail)]
    budget = json_bytes(head) - excess - (json_bytes(C.ELLIPSIS) - 2)  # the ellipsis as sent, without quotes
    keep = bisect.bisect_right(range(len(head) + 1), budget, key=lambda length: json_bytes(head[:length])) - 1
    head = head[:keep].rstrip() + C.ELLIPSIS if keep > 0 else ""
    return head + tail if head else tail.lstrip("\n")


# --- MISP's decaying model (lifecycle.md §3) ---------------------------------------------------

class DecayVerdict(NamedTuple):
    """What the model says of an attribute still above its threshold."""

    score: float
    confidence: int | None  # the score as a confidence (decay_as_confidence), else None
    valid_until: dt.datetime | None  # the predicted crossing when it comes before the fixed expiry


def decay_verdict(attribute: Mapping[str, Any], decay: DecayPolicy, now: dt.datetime,
                  fixed_until: dt.datetime) -> DecayVerdict | None:
    """The model's verdict on one attribute, None when MISP gave it no score for this model (the
    model is not associated with its type). Raises _Refused for a decayed attribute, or a score
    that is not a finite number (a garbled score must not pass as fresh)."""
    entry = _decay_entry(attribute, decay.model_id)
    if entry is None:
        return None
    score = entry.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise _Refused(SkipReason.MALFORMED, f"decay score {score!r} of model {decay.model_name!r} is not a number")
    if score < decay.threshold:
        raise _Refused(SkipReason.DECAYED, f"decay score {score:.2f} is below the threshold {decay.threshold:g} "
                                           f"of model {decay.model_name!r}")
    confidence = min(100, max(0, math.floor(score + 0.5))) if decay.as_confidence else None
    return DecayVerdict(score, confidence, _crossing(attribute, entry, score, decay, now, fixed_until))


def _decay_entry(attribute: Mapping[str, Any], model_id: str) -> Mapping[str, Any] | None:
    """The attribute's `decay_score` entry of the model (one entry per model MISP applied)."""
    for entry in _dicts(attribute.get("decay_score")):
        model = entry.get("DecayingModel")
        if isinstance(model, dict) and str(model.get("id")) == model_id:
            return entry
    return None


def _crossing(attribute: Mapping[str, Any], entry: Mapping[str, Any], score: float, decay: DecayPolicy,
              now: dt.datetime, fixed_until: dt.datetime) -> dt.datetime | None:
    """When the Polynomial score falls below the threshold: lifetime × (1 − threshold/base)^speed
    after the reference time. The score tells how long MISP counted: when the attribute's own
    fields agree (within C.DECAY_SCORE_STEP_SECONDS, or they give the same score: a score still
    at its base to the last bit dates nothing), the crossing is theirs, in whole seconds,
    the same on every run; when they do not (a sighting the event does not carry, one MISP does
    not count, clocks apart), it is read from the score, floored to that step. None when there is
    no crossing (threshold 0) or it comes after `fixed_until`, however far (weighed in seconds:
    a huge lifetime or a reference near year 9999 is no date)."""
    base = entry.get("base_score")
    if decay.lifetime_days is None or decay.decay_speed is None or decay.threshold <= 0 or isinstance(base, bool) \
            or not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 0:
        return None
    lifetime, speed, moment, step = decay.lifetime_days * 86400, decay.decay_speed, now.timestamp(), C.DECAY_SCORE_STEP_SECONDS
    to_threshold = lifetime * max(0.0, 1 - decay.threshold / base) ** speed
    counted = lifetime * max(0.0, 1 - score / base) ** speed  # since MISP's reference, when it scored
    reference = decay_reference(attribute)
    since = moment - reference
    told = base * (1 - (max(0.0, since) / lifetime) ** (1 / speed)) if since < lifetime else 0.0  # the score of the fields
    agree = abs(since - counted) <= step or math.isclose(told, score, rel_tol=C.DECAY_SCORE_RELATIVE_TOLERANCE)
    crossing = reference + to_threshold if agree else (moment - counted + to_threshold) // step * step
    if crossing <= moment:  # MISP still calls it fresh
        crossing = moment + C.DECAY_MIN_SECONDS_LEFT
    if not crossing < fixed_until.timestamp():  # also a NaN (an infinite lifetime times 0)
        return None
    return dt.datetime.fromtimestamp(round(crossing), dt.UTC)


def decay_reference(attribute: Mapping[str, Any]) -> int:
    """The moment the score counts from (MISP's Base::computeCurrentScore): the last sighting
    (type 0), else `last_seen`, else the attribute's timestamp; an edit after the last sighting
    restarts the clock from `last_seen` or the timestamp."""
    stamp = epoch_seconds(attribute.get("timestamp")) or 0
    seen = _iso_seconds(attribute.get("last_seen"))
    sightings = [epoch_seconds(s.get("date_sighting")) for s in _dicts(attribute.get("Sighting"))
                 if str(s.get("type", "0")) == "0"]
    last_sighting = max((moment for moment in sightings if moment is not None), default=None)
    since_edit = seen if seen is not None else stamp
    if last_sighting is None or stamp > last_sighting:
        return since_edit
    return last_sighting


def _iso_seconds(value: Any) -> int | None:
    """MISP's `last_seen` (ISO 8601 with microseconds and an offset) in epoch seconds, floored as
    PHP's DateTime::format('U') does; None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return math.floor((moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp())


class Transformer:
    """What every target shares: candidates, their one reading (OBSERVABLE_TYPES), context and
    skip accounting. It keeps no event's data for the next (the target's state store spots an
    attribute seen twice); only pure memos (tag folding) outlive an event.

    Subclasses render a candidate's observables as the target's indicator(s) in `render`; a new
    target is a new renderer, the reading stays.
    """

    CONFIDENCE_FIELD = "confidence"  # where `decayed` puts the model's confidence and expiry
    EXPIRY_FIELD = "expirationDateTime"

    def __init__(self, policy: MappingPolicy, now: dt.datetime) -> None:
        self.policy = policy
        self.now = now
        self.valid_until = now + dt.timedelta(days=policy.days_to_expire)
        # Per event: what the attributes share, computed once for each distinct input.
        self._facts: dict[tuple[str, ...], TagFacts] = {}  # by the attribute's own tag names
        self._common: dict[int, dict[str, Any]] = {}  # by id() of those facts
        self._texts: dict[str, Any] = {}  # by the attribute's raw comment (usually empty)
        self._templates: dict[tuple[tuple[str, ...], str] | str, dict[str, Any]] = {}  # by own tag names and raw comment
        # For the size check in `_candidate`: bytes left once the fixed parts are counted (per
        # event), the most name characters and text bytes of the tag sets and comments met so
        # far, and so how many characters of value and key an indicator may take unmeasured.
        # Texts are measured only when a value needs it: until then their bound counts.
        settings_chars = sum(map(len, (policy.action, policy.target_product, policy.default_tlp, policy.misp_url,
                                       policy.defender_action, policy.defender_recommended_actions,
                                       *policy.defender_rbac_groups))) + 4 * len(policy.defender_rbac_groups)
        self._fixed_bytes = _FIXED_BYTES + _BYTES_PER_CHAR * settings_chars
        self._room = self._largest_names = self._largest_texts = self._unmeasured_bound = self._spare = 0
        self._unmeasured: list[Any] = []  # texts of this event not measured yet
        self._refanged = 0  # values of this event sent after refanging
        self._decay_counts: dict[str, int] = {}  # of this event (C.DECAY_COUNTS)
        self._filtering = bool(policy.tlp_max) or policy.min_confidence is not None

    def template(self, context: EventContext, attribute: Mapping[str, Any]) -> dict[str, Any]:
        """The fields an indicator shares with the others of its event that have the same own
        tags and comment (nearly all of them): built once per event for each such pair."""
        comment = attribute.get("comment")
        comment = comment if isinstance(comment, str) else ""
        own = self.own_tags(attribute)
        key = (own, comment) if own else comment  # most attributes have no own tags: their key is the comment
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = {**self.common(context, self.facts(context, own)),
                                               **self.text_fields(self.texts(context, comment))}
        return template

    def own_tags(self, attribute: Mapping[str, Any]) -> tuple[str, ...]:
        """The attribute's own tag and galaxy names (most attributes have none)."""
        tags, galaxies = attribute.get("Tag"), attribute.get("Galaxy")
        return tuple(tag_names(tags, self.policy.ignore_local_tags) + galaxy_tag_names(attribute)) if tags or galaxies else ()

    def refused_by_policy(self, context: EventContext, attribute: Mapping[str, Any],
                          verdict: DecayVerdict | None = None) -> Skip | None:
        """The target's own filters: a TLP ceiling (an untagged attribute has default_tlp) and a
        confidence floor (an unrated one has defaultConfidenceLevel; with decay_as_confidence, a
        scored one has its score)."""
        facts = self.facts(context, self.own_tags(attribute))
        policy = self.policy
        tlp = facts.tlp or policy.default_tlp
        if policy.tlp_max and C.TLP_RANK[tlp] > C.TLP_RANK[policy.tlp_max]:
            return _skip(context.uuid, attribute, SkipReason.ABOVE_TLP_MAX, f"TLP {tlp} is above tlp_max {policy.tlp_max}")
        scored = verdict.confidence if verdict is not None else None
        confidence = _first_set(scored, facts.confidence, policy.default_confidence) or 0
        if policy.min_confidence is not None and confidence < policy.min_confidence:
            return _skip(context.uuid, attribute, SkipReason.BELOW_MIN_CONFIDENCE,
                         f"confidence {confidence} is below min_confidence {policy.min_confidence}")
        return None

    def facts(self, context: EventContext, own: tuple[str, ...]) -> TagFacts:
        """An event's attributes mostly share the same few tag sets (often none): each set is
        folded once per event."""
        facts = self._facts.get(own)
        if facts is None:
            facts = self._facts[own] = merged_facts(context, own)
        return facts

    def common(self, context: EventContext, facts: TagFacts) -> dict[str, Any]:
        """The indicator fields that depend on the event and the tags, once per tag set."""
        common = self._common.get(id(facts))
        if common is None:
            common = self._common[id(facts)] = self.common_fields(context, facts)
            self._largest_names = max(self._largest_names, name_chars(facts))
            self._count_spare()
        return common

    def texts(self, context: EventContext, raw: str) -> Any:
        """The description text(s) for an attribute's raw comment, once per distinct comment."""
        texts = self._texts.get(raw)
        if texts is None:
            texts = self._texts[raw] = self.describe(context, clean_text(raw))
            self._unmeasured.append(texts)
            self._unmeasured_bound = max(self._unmeasured_bound, text_bytes_bound(texts))
            self._count_spare()
        return texts

    def _measured_spare(self, context: EventContext) -> int:
        """The spare with every text of the event measured, for a value too big for the bound:
        twelve bytes a character leave room enough for nearly every value, unmeasured."""
        for texts in self._unmeasured:
            self._largest_texts = max(self._largest_texts, self.texts_bytes(context, texts))
        self._unmeasured, self._unmeasured_bound = [], 0
        self._count_spare()
        return self._spare

    def texts_bytes(self, context: EventContext, texts: Any) -> int:
        """text_bytes of `describe`'s texts, for the size check."""
        return text_bytes(texts)

    def _count_spare(self) -> None:
        """Characters of value and key that fit in any indicator of the event made so far."""
        self._spare = (self._room - max(self._largest_texts, self._unmeasured_bound)) // _BYTES_PER_CHAR - self._largest_names

    def cuts(self, context: EventContext) -> Cuts:
        raise NotImplementedError

    def common_fields(self, context: EventContext, facts: TagFacts) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, context: EventContext, comment: str) -> Any:
        raise NotImplementedError

    def text_fields(self, texts: Any) -> dict[str, str]:
        """The fields `describe`'s texts go to."""
        raise NotImplementedError

    def transform(self, wrapped: Any) -> EventResult:
        """One restSearch item (`{"Event": {...}}` or a bare event) to indicators and skips."""
        event = wrapped.get("Event", wrapped) if isinstance(wrapped, Mapping) else None
        if not isinstance(event, Mapping):
            return EventResult([], [Skip(SkipReason.MALFORMED, "", "", "", "event is not a JSON object")], 0)
        pairs: list[tuple[Mapping[str, Any], bool]] = []
        try:
            pairs = list(event_attributes(event))
            context = event_context(event, [attribute for attribute, _ in pairs], self.policy)
        except Exception as exc:
            return _unreadable(event, pairs, SkipReason.INTERNAL_ERROR, f"{type(exc).__name__} while reading the event")
        if not C.UUID_RE.fullmatch(context.uuid.strip()):
            return _unreadable(event, pairs, SkipReason.MALFORMED, "event without a valid uuid")
        self._facts, self._common, self._texts, self._templates = {}, {}, {}, {}
        self._room = C.INDICATOR_MAX_BYTES - self._fixed_bytes - _BYTES_PER_CHAR * len(context.uuid)
        self._largest_names = self._largest_texts = self._unmeasured_bound = self._refanged = 0
        self._decay_counts = {}
        self._unmeasured = []
        self._count_spare()
        result = EventResult([], [], len(pairs), context.uuid.strip().lower())
        indicators, skips = result.indicators, result.skips
        for attribute, object_deleted in pairs:
            try:
                outcome = self._candidate(context, attribute, object_deleted)
            except Exception as exc:  # a bug costs this attribute (internal-error, without its value), never the run
                outcome = _skip(context.uuid, attribute, SkipReason.INTERNAL_ERROR, f"{type(exc).__name__} while transforming")
            if isinstance(outcome, list):
                indicators.extend(outcome)
            else:
                skips.append(outcome)
        result.refanged, result.decay = self._refanged, self._decay_counts
        return result

    def _candidate(self, context: EventContext, attribute: Mapping[str, Any], object_deleted: bool) -> list[dict[str, Any]] | Skip:
        get = attribute.get  # looked up once: this runs for every attribute
        misp_type = get("type")
        uuid = get("uuid")
        key = uuid.strip().lower() if isinstance(uuid, str) else ""
        if not isinstance(misp_type, str) or not C.UUID_RE.fullmatch(key):
            return _skip(context.uuid, attribute, SkipReason.MALFORMED, "attribute without a type or a valid uuid")
        deleted = get("deleted")  # nearly always False or absent: is_true only for a truthy one
        if object_deleted or (deleted and is_true(deleted)):
            return _skip(context.uuid, attribute, SkipReason.DELETED)
        if misp_type in C.CONTEXT_TYPES:
            return _skip(context.uuid, attribute, SkipReason.CONTEXT, "used as event context")
        to_ids = get("to_ids")
        if to_ids is not True and not (to_ids and is_true(to_ids)):
            return _skip(context.uuid, attribute, SkipReason.NOT_TO_IDS)
        verdict = None
        if self.policy.decay is not None:
            try:
                verdict = self.decay_of(attribute, self.policy.decay)
            except _Refused as refused:
                return _skip(context.uuid, attribute, refused.reason, str(refused))
        if self._filtering:
            unwanted = self.refused_by_policy(context, attribute, verdict)
            if unwanted is not None:
                return unwanted
        try:
            value = as_text(get("value"))
            reader = OBSERVABLE_TYPES.get(misp_type)  # the one reading, that every target renders
            if reader is None:
                raise _Refused(SkipReason.UNSUPPORTED_TYPE, f"no observable for MISP type {misp_type}")
            if isinstance(reader, NetworkReader):
                text = refang(value)
                refanged, observables = text != value, reader.read(text, self.policy)
            else:
                refanged, observables = False, reader(value, self.policy)
            indicators = self.render(context, attribute, observables, value, key)
            if verdict is not None:
                indicators = [self.decayed(indicator, verdict) for indicator in indicators]
            size = 2 * len(value) + len(key)
            if size > self._spare and size > self._measured_spare(context):
                indicators = [fit(indicator, self.cuts(context)) for indicator in indicators]  # worst case too big: measure
        except InvalidValue as exc:
            return _skip(context.uuid, attribute, SkipReason.INVALID_VALUE, str(exc))
        except _Refused as refused:
            return _skip(context.uuid, attribute, refused.reason, str(refused))
        if refanged:
            self._refanged += 1
        if verdict is not None and verdict.valid_until is not None:
            self._decay_counts["expiry_from_decay"] = self._decay_counts.get("expiry_from_decay", 0) + 1
        return indicators

    def render(self, context: EventContext, attribute: Mapping[str, Any], observables: tuple[Observable, ...], value: str,
               key: str) -> list[dict[str, Any]]:
        """The target's indicator(s) for the attribute's observables."""
        raise NotImplementedError

    def decay_of(self, attribute: Mapping[str, Any], decay: DecayPolicy) -> DecayVerdict | None:
        """decay_verdict, counted per event (C.DECAY_COUNTS; a decayed attribute was scored too;
        `expiry_from_decay` is counted once the attribute's indicators are made)."""
        counts = self._decay_counts
        try:
            verdict = decay_verdict(attribute, decay, self.now, self.valid_until)
        except _Refused as refused:
            if refused.reason is SkipReason.DECAYED:
                counts["scored"] = counts.get("scored", 0) + 1
            raise
        if verdict is None:
            counts["unscored"] = counts.get("unscored", 0) + 1
        else:
            counts["scored"] = counts.get("scored", 0) + 1
        return verdict

    def decayed(self, indicator: dict[str, Any], verdict: DecayVerdict) -> dict[str, Any]:
        """The indicator with the model's confidence and predicted expiry in the target's fields."""
        if verdict.confidence is not None:
            indicator[self.CONFIDENCE_FIELD] = verdict.confidence
        if verdict.valid_until is not None:
            indicator[self.EXPIRY_FIELD] = self.expiry_text(verdict.valid_until)
        return indicator

    def expiry_text(self, moment: dt.datetime) -> str:
        """The target's spelling of an expiry."""
        return iso_utc(moment)


class EventLineTransformer(Transformer):
    """A target whose indicators carry a short text (≤ 100 characters) and a long one that ends
    with the line naming the MISP event, which --rebuild-state reads back (Graph, Defender)."""

    def __init__(self, policy: MappingPolicy, now: dt.datetime) -> None:
        super().__init__(policy, now)
        self._expiration = iso_utc(self.valid_until)
        self._tail: tuple[EventContext | None, str, int] = (None, "", 0)  # see texts_bytes

    def describe(self, context: EventContext, comment: str) -> tuple[str, str]:
        """The short text (≤ 100 characters) and the long one: the full text and the event
        comments, cut to fit TEXT_FIELD_MAX before the event UUID line that --rebuild-state reads."""
        description, full_text = describe(context, comment)
        line = self._event_line(context)
        free = f"{full_text}\n{context.comments}" if context.comments else full_text
        return description, f"{cut_text(free, C.TEXT_FIELD_MAX - len(line) - 1)}\n{line}"

    def texts_bytes(self, context: EventContext, texts: tuple[str, str]) -> int:
        """text_bytes of the texts, with the part every text of the event ends with (its comments
        and UUID line, most of their length) measured once per event: escaped sizes add up."""
        if self._tail[0] is not context:
            tail = f"\n{context.comments}\n{self._event_line(context)}" if context.comments else f"\n{self._event_line(context)}"
            self._tail = (context, tail, json_bytes(tail) - 2)
        _, tail, tail_bytes = self._tail
        description, information = texts
        if not information.endswith(tail):  # cut within the comments
            return text_bytes(texts)
        return text_bytes((description, information[: -len(tail)])) + tail_bytes

    @staticmethod
    def _event_line(context: EventContext) -> str:
        return f"MISP event: {context.uuid}"


class GraphTransformer(EventLineTransformer):
    """MISP events to Graph tiIndicators (mapping.md "Graph tiIndicator")."""

    def render(self, context: EventContext, attribute: Mapping[str, Any], observables: tuple[Observable, ...], value: str,
               key: str) -> list[dict[str, Any]]:
        return [{**self.template(context, attribute), "externalId": key, **graph_fields(observables, self.policy)}]

    def text_fields(self, texts: tuple[str, str]) -> dict[str, str]:
        return {"description": texts[0], "additionalInformation": texts[1]}

    def cuts(self, context: EventContext) -> Cuts:
        """The free text goes first (the event UUID line stays), then tags, then names."""
        return (("additionalInformation", "\n" + self._event_line(context)), ("tags", ""),
                ("malwareFamilyNames", ""), ("activityGroupNames", ""))

    def common_fields(self, context: EventContext, facts: TagFacts) -> dict[str, Any]:
        """The fields that depend on the event and the tags, not on the attribute's value."""
        common: dict[str, Any] = {
            "action": self.policy.action,
            "targetProduct": self.policy.target_product,
            "passiveOnly": self.policy.passive_only,
            "isActive": True,
            "expirationDateTime": self._expiration,
            "tlpLevel": C.TLP_SENT[facts.tlp or self.policy.default_tlp],
            "threatType": facts.threat_type or C.DEFAULT_THREAT_TYPE,
            "confidence": _first_set(facts.confidence, self.policy.default_confidence),
        }
        optional = {
            "lastReportedDateTime": context.last_reported,
            "killChain": list(facts.kill_chain),
            "diamondModel": facts.diamond_model,
            "activityGroupNames": list(facts.activity_groups),
            "malwareFamilyNames": list(facts.malware_families),
            "tags": list(facts.labels),
        }
        common.update({key: value for key, value in optional.items() if value})
        return common


class DefenderTransformer(EventLineTransformer):
    """MISP events to Defender for Endpoint indicators (mapping.md "Defender for Endpoint
    indicator"): one per observable Defender has a type for (two for a domain|ip), each with the
    rank the budget orders them by (C.DEFENDER_RANK_FIELD, never sent)."""

    def render(self, context: EventContext, attribute: Mapping[str, Any], observables: tuple[Observable, ...], value: str,
               key: str) -> list[dict[str, Any]]:
        """Every part Defender takes (a domain|ip with a private address keeps its domain);
        not-for-target when it takes none."""
        template = self.template(context, attribute)
        indicators: list[dict[str, Any]] = []
        refusal: _Refused | None = None
        for observable in observables:
            try:
                kind, text = defender_observable(observable)
            except _Refused as refused:
                refusal = refusal or refused
                continue
            indicators.append({**template, "indicatorType": kind, "indicatorValue": text, "externalID": key})
        if refusal is not None and not indicators:
            raise refusal
        return indicators

    def decayed(self, indicator: dict[str, Any], verdict: DecayVerdict) -> dict[str, Any]:
        """Defender has no confidence field: the model's confidence ranks the indicator instead."""
        if verdict.confidence is not None:
            rank = list(indicator[C.DEFENDER_RANK_FIELD])
            rank[1] = verdict.confidence
            indicator[C.DEFENDER_RANK_FIELD] = rank
        if verdict.valid_until is not None:
            indicator["expirationTime"] = iso_utc(verdict.valid_until)
        return indicator

    def describe(self, context: EventContext, comment: str) -> tuple[str, str]:
        """The title is the event's (≤ 100 characters); the comment goes to the description."""
        title = cut_text(context.info or f"MISP event {context.uuid}", C.DEFENDER_TITLE_MAX)
        return title, super().describe(context, comment)[1]

    def text_fields(self, texts: tuple[str, str]) -> dict[str, str]:
        return {"title": texts[0], "description": texts[1]}

    def cuts(self, context: EventContext) -> Cuts:
        """Only the free text can give way (the event UUID line stays)."""
        return (("description", "\n" + self._event_line(context)),)

    def common_fields(self, context: EventContext, facts: TagFacts) -> dict[str, Any]:
        """The target's policy, the severity from the threat level, and the rank: action,
        confidence, threat level, recency (README, The Defender budget)."""
        policy = self.policy
        level = context.threat_level
        confidence = _first_set(facts.confidence, policy.default_confidence) or 0
        common: dict[str, Any] = {
            "action": policy.defender_action,
            "severity": policy.defender_severity or C.DEFENDER_SEVERITY_BY_THREAT_LEVEL.get(level or 4, "Informational"),
            "expirationTime": self._expiration,
            "generateAlert": policy.defender_generate_alert,
            "rbacGroupNames": list(policy.defender_rbac_groups),
            "recommendedActions": policy.defender_recommended_actions,
            C.DEFENDER_RANK_FIELD: [C.DEFENDER_ACTIONS.index(policy.defender_action), confidence,
                                    4 - level if level in (1, 2, 3) else 0, context.timestamp],
        }
        return common


# --- observables -> STIX patterns (mapping.md "STIX 2.1 indicator") --------------------------

StixRenderer = Callable[[Observable], str]


def stix_quote(value: str) -> str:
    """A STIX pattern string literal: backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def stix_hash_name(algorithm: str) -> str:
    """The STIX vocabulary's name, else a custom key within the schema's ^[a-zA-Z0-9_-]{3,250}$."""
    return C.STIX_HASH_NAMES.get(algorithm) or algorithm.upper()


def _comparison(path: str) -> StixRenderer:
    return lambda observable: f"[{path} = {stix_quote(observable.value)}]"


def _hashes(object_type: str) -> StixRenderer:
    return lambda observable: f"[{object_type}:hashes.{stix_quote(stix_hash_name(observable.algorithm))} = {stix_quote(observable.value)}]"


STIX_RENDERERS: dict[Kind, StixRenderer] = {
    Kind.IP: lambda observable: f"[ipv{observable.version}-addr:value = {stix_quote(observable.value)}]",
    Kind.DOMAIN: _comparison("domain-name:value"),
    Kind.URL: _comparison("url:value"),
    Kind.EMAIL: _comparison("email-addr:value"),
    Kind.EMAIL_SUBJECT: _comparison("email-message:subject"),
    Kind.FILE_NAME: _comparison("file:name"),
    Kind.FILE_HASH: _hashes("file"),
    Kind.X509_HASH: _hashes("x509-certificate"),
    Kind.MUTEX: _comparison("mutex:name"),
    Kind.ASN: lambda observable: f"[autonomous-system:number = {observable.number}]",
    Kind.MAC: _comparison("mac-addr:value"),
    Kind.REGISTRY_KEY: _comparison("windows-registry-key:key"),
    # header values are lists in STIX 2.1: the comparison holds for any of them
    Kind.USER_AGENT: _comparison("network-traffic:extensions.'http-request-ext'.request_header.'User-Agent'[*]"),
}


def stix_patterns(observables: tuple[Observable, ...]) -> list[tuple[str, str]]:
    """(part, pattern) per observable: Sentinel reads one observable per pattern, so a domain|ip
    is two indicators. Not-for-target when STIX has no pattern for one of them."""
    patterns = []
    for observable in observables:
        render = STIX_RENDERERS.get(observable.kind)
        if render is None:
            raise _Refused(SkipReason.NOT_FOR_TARGET, f"no STIX pattern for a {observable.kind.value} observable")
        patterns.append((observable.part, render(observable)))
    return patterns


def stix_time(moment: dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds, as STIX 2.1 timestamps are written."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_STIX_ID_NAMESPACE = uuid_module.UUID(C.STIX_ID_NAMESPACE).bytes


def stix_id(key: str) -> str:
    """The same MISP attribute (and part) gives the same id on every machine: the RFC 4122
    UUIDv5 of the key, as uuid.uuid5 makes it, written out here from the hex digest (4x faster,
    for every indicator): the version nibble is 5, the variant's top bits are 10."""
    text = hashlib.sha1(_STIX_ID_NAMESPACE + key.encode()).hexdigest()
    return f"indicator--{text[:8]}-{text[8:12]}-5{text[13:16]}-{_RFC4122_VARIANT[text[16]]}{text[17:20]}-{text[20:32]}"


_RFC4122_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}  # a hex digit with its top bits 10


class StixTransformer(Transformer):
    """MISP events to STIX 2.1 indicators with single-comparison patterns, for Sentinel.

    `created` and `valid_from` are MISP's own time for the attribute (its `timestamp`, never later
    than this run), so they do not depend on the local store; `modified` is this run's time. The
    Sentinel target keeps the first upload's `created` and `valid_from` for indicators it owns.
    """

    def render(self, context: EventContext, attribute: Mapping[str, Any], observables: tuple[Observable, ...], value: str,
               key: str) -> list[dict[str, Any]]:
        patterns = stix_patterns(observables)
        template = self.template(context, attribute)
        reported = self.reported(attribute)
        indicators = []
        for suffix, pattern in patterns:  # a copy and assignments, in the same key order: a ** display builds a second dict
            indicator = template.copy()
            indicator["created"] = indicator["valid_from"] = reported
            indicator["id"], indicator["name"], indicator["pattern"] = stix_id(key + suffix), value, pattern
            indicator["external_references"] = [self._reference(context, key)]
            indicators.append(indicator)
        return indicators

    EXPIRY_FIELD = "valid_until"

    def __init__(self, policy: MappingPolicy, now: dt.datetime) -> None:
        super().__init__(policy, now)
        self._now_stix, self._now_seconds = stix_time(now), int(now.timestamp())
        self._valid_until_stix = stix_time(self.valid_until)

    def expiry_text(self, moment: dt.datetime) -> str:
        return stix_time(moment)

    def text_fields(self, texts: str) -> dict[str, str]:
        return {"description": texts}

    def reported(self, attribute: Mapping[str, Any]) -> str:
        """When MISP last stamped the attribute, or this run's time when it has no usable or a
        future timestamp (`created` may not be later than `modified`)."""
        raw = attribute.get("timestamp")
        return (_stix_reported(raw, self._now_seconds) if isinstance(raw, (str, int)) else None) or self._now_stix

    def describe(self, context: EventContext, comment: str) -> str:
        return describe(context, comment)[1]

    def cuts(self, context: EventContext) -> Cuts:
        """The description goes first, then labels, then the name (the pattern holds the value)."""
        return (("description", ""), ("labels", ""), ("name", ""))

    def common_fields(self, context: EventContext, facts: TagFacts) -> dict[str, Any]:
        """Everything but the id, name, description, pattern and reference; once per tag set."""
        now = self._now_stix
        common: dict[str, Any] = {
            "type": "indicator", "spec_version": "2.1",
            "created": now, "modified": now, "valid_from": now, "valid_until": self._valid_until_stix,
            "pattern_type": "stix", "pattern_version": "2.1",
            "indicator_types": [(facts.threat_type or C.DEFAULT_THREAT_TYPE).lower()],
            "confidence": _first_set(facts.confidence, self.policy.default_confidence),
            "object_marking_refs": [C.STIX_TLP_MARKINGS[C.TLP_SENT[facts.tlp or self.policy.default_tlp]]],
        }
        labels = _merge_unique(
            facts.labels, [f"diamond-model:{facts.diamond_model}"] if facts.diamond_model else [],
            [f"threat-actor:{name}" for name in facts.activity_groups], [f"malware:{name}" for name in facts.malware_families],
        )
        phases = [{"kill_chain_name": C.STIX_KILL_CHAIN_NAME, "phase_name": C.STIX_KILL_CHAIN_PHASES[p]} for p in facts.kill_chain]
        common.update({key: val for key, val in (("labels", labels), ("kill_chain_phases", phases)) if val})
        return common

    def _reference(self, context: EventContext, uuid: str) -> dict[str, str]:
        reference = {"source_name": "MISP", "external_id": uuid}
        if self.policy.misp_url and context.uuid:
            reference["url"] = f"{self.policy.misp_url}events/view/{context.uuid}"
        return reference


@functools.lru_cache(maxsize=4096)
def _stix_reported(raw: str | int, now_seconds: int) -> str | None:
    """A MISP timestamp as a STIX one, None if unusable or after `now_seconds`; cached, as an
    event's attributes mostly share a few timestamps."""
    seconds = epoch_seconds(raw)
    if seconds is None or seconds >= now_seconds:
        return None
    return stix_time(dt.datetime.fromtimestamp(seconds, dt.UTC))


def galaxy_tag_names(holder: Mapping[str, Any]) -> list[str]:
    """Cluster tag names from a resolved `Galaxy` block (feeds may carry them only there)."""
    return [
        _tag_text(cluster["tag_name"])
        for galaxy in _dicts(holder.get("Galaxy"))
        for cluster in _dicts(galaxy.get("GalaxyCluster"))
        if isinstance(cluster.get("tag_name"), str) and cluster["tag_name"].strip()
    ]


def _first_set(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)


def _skip(event_uuid: str, attribute: Mapping[str, Any], reason: SkipReason, detail: str = "") -> Skip:
    """A Skip naming the attribute as far as it can be named."""
    uuid, misp_type, value = attribute.get("uuid"), attribute.get("type"), attribute.get("value")
    return Skip(reason, event_uuid, uuid if isinstance(uuid, str) else "", misp_type if isinstance(misp_type, str) else "", detail,
                value if isinstance(value, str) else "")


def _unreadable(event: Mapping[str, Any], pairs: list[tuple[Mapping[str, Any], bool]], reason: SkipReason,
                detail: str) -> EventResult:
    """An event that cannot be read as a whole (its shared context failed, or it has no valid
    uuid): every attribute is skipped, and the result names no event, so the run does not take
    the event as read (nothing of it is removed)."""
    uuid = event.get("uuid")
    uuid = clean_text(uuid) if isinstance(uuid, str) else ""
    skips = [_skip(uuid, attribute, reason, detail) for attribute, _ in pairs]
    return EventResult([], skips or [Skip(reason, uuid, "", "", detail)], len(pairs))

"""Read config.py (without executing it) and the environment into one validated Settings.

Every setting is one row of SETTINGS: its name, how it is read and validated, its default, its
environment variable and its one-line doc. Validation, the known names (and the did-you-mean
for a typo), and README's settings table (`python settings.py --readme-table`, tested to agree)
all come from that table. Everything the tool can get wrong about its configuration is found
here, at start-up, before any network call, and reported as one line naming the setting.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import io
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from dotenv import dotenv_values

import constants as C
from request_log import redact_url_credentials


class ConfigError(Exception):
    """A setting is missing, of the wrong type or out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class TargetSettings:
    """One place indicators go (the Graph tenant, one Sentinel workspace, the Defender tenant)
    and the policy that applies to it alone."""

    kind: str
    workspace_id: str = ""
    subscription_id: str = ""
    resource_group: str = ""
    workspace_name: str = ""
    tlp_max: str = ""  # "" (none), or the most restrictive TLP sent: white, green, amber or red
    min_confidence: int | None = None
    defender_endpoint: str = ""
    defender_scope: str = ""  # the token audience, without "/.default"
    defender_max_indicators: int = C.DEFENDER_DEFAULT_SHARE
    defender_action: str = C.DEFENDER_DEFAULT_ACTION
    defender_generate_alert: bool = True
    defender_severity: str = ""  # "" = from the event's threat level
    defender_rbac_groups: tuple[str, ...] = ()
    defender_recommended_actions: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind} workspace {self.workspace_id}" if self.workspace_id else self.kind

    def require_management(self, config_name: str) -> None:
        """Reading back a workspace goes through ARM, which names it differently from the upload API."""
        missing = [name for name in ("subscription_id", "resource_group", "workspace_name") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"listing {self.label} needs {', '.join(missing)} in {config_name} (the management API "
                              "addresses a workspace by subscription, resource group and name)")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated settings. Secrets are kept out of repr so they never reach a log line."""

    config_path: Path
    tenant: str
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    graph_endpoint: str
    authority_host: str
    target_product: str
    action: str
    passive_only: bool
    days_to_expire: int
    default_confidence: int
    network_ignore_direction: bool
    allow_weak_observables: bool
    allow_broad_cidr: bool
    misp_url: str
    misp_key: str = dataclasses.field(repr=False)
    misp_verifycert: bool | str
    misp_event_filters: tuple[dict[str, Any], ...]
    misp_page_size: int
    ignore_local_tags: bool
    log_dir: Path
    write_post_json: bool
    verbose_log: bool
    http_timeout: float
    state_dir: Path
    max_delete_fraction: float
    renew_days: float
    log_retention_days: int
    full_resync_days: int
    targets: tuple[TargetSettings, ...]
    sentinel_endpoint: str
    sentinel_api_version: str
    management_endpoint: str
    management_api_version: str
    sourcesystem: str
    max_requests_per_minute: int
    graph_requests_per_minute: int
    max_concurrent_requests: int
    client_certificate_path: Path | None = None
    client_certificate_password: str = dataclasses.field(default="", repr=False)
    managed_identity: str = ""  # "", "system", or a user-assigned identity's client id
    misp_allow_plain_http: bool = False
    misp_decay_model: str = ""  # a decaying model's name or id; "" = decay off
    decay_threshold: float | None = None  # None: the model's own threshold
    decay_as_confidence: bool = True
    unknown_settings: tuple[str, ...] = ()  # one message per name this version does not know
    warnings: tuple[str, ...] = ()
    verify_after_minutes: int = 0
    loganalytics_endpoint: str = C.DEFAULT_LOGANALYTICS_ENDPOINT
    loganalytics_scope: str = C.DEFAULT_LOGANALYTICS_SCOPE.removesuffix("/.default")  # the audience
    report_sightings: bool = False
    sighting_source: str = ""  # "": misp2sentinel:<target kind>
    sentinel_match_query: str = C.SENTINEL_MATCH_QUERY

    def sighting_source_for(self, target: TargetSettings) -> str:
        """The `source` of the sightings a target's matches become. MISP tells targets apart only
        by it (the read-back before a post compares it), so with several workspaces each names its id."""
        if self.sighting_source:
            return self.sighting_source
        shared = target.workspace_id and sum(other.kind == target.kind for other in self.targets) > 1
        return f"{C.SIGHTING_SOURCE_PREFIX}{target.kind}" + (f":{target.workspace_id}" if shared else "")

    def secrets(self) -> tuple[str, ...]:
        """Values that must never be written anywhere (used to scrub error text)."""
        values = (getattr(self, row.attribute) for row in SETTINGS if row.secret and row.attribute)
        return tuple(value for value in values if value)

    @property
    def credential_kind(self) -> str:
        """How the app proves who it is: "managed identity", "certificate" or "secret"."""
        if self.managed_identity:
            return "managed identity"
        return "certificate" if self.client_certificate_path else "secret"

    def require_microsoft(self) -> None:
        """Fail before any network call when the Entra app settings are missing."""
        needed = {"managed identity": (), "certificate": ("tenant", "client_id")}.get(
            self.credential_kind, ("tenant", "client_id", "client_secret"))
        self._require(*needed)

    def require_misp(self) -> None:
        """Fail before any network call when MISP cannot be reached or authenticated."""
        self._require("misp_url", "misp_key")

    def _require(self, *attributes: str) -> None:
        for row in SETTINGS:
            if row.attribute in attributes and not getattr(self, row.attribute):
                raise ConfigError(f"{row.label} is empty: set it in {self.config_path.name} or {row.env}")


class Scope(enum.Enum):
    """Where a setting may be written."""

    GLOBAL = "global"  # at the top level of config.py only
    TARGET = "per-target"  # at the top level (for every workspace) or in one `target` dict


# Reads one setting's value as written (or its default) into the typed value Settings holds.
Kind = Callable[["Setting", Any, "_Context"], Any]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str
    kind: Kind
    default: Any
    doc: str  # README's meaning column
    field: str | None = ""  # the Settings attribute it fills: "" for `name`, None when it only feeds others
    env: str = ""  # an environment variable (or .env line) that overrides the file when set
    within: str = ""  # the dict setting it is a key of, such as graph_auth
    scope: Scope = Scope.GLOBAL
    kinds: frozenset[str] = frozenset()  # the target kinds a per-target setting applies to (empty: all)
    secret: bool = False  # never echoed in an error, scrubbed from every log
    shown: str = ""  # README's default column when the default is worked out (Markdown)

    @property
    def label(self) -> str:
        """The name as the operator writes it, used in every message."""
        return f"{self.within}['{self.name}']" if self.within else self.name

    @property
    def attribute(self) -> str | None:
        return self.name if self.field == "" else self.field


class _Context:
    """One config file being read: raw values, environment, and each setting once validated.

    Settings are validated on first use, so one that depends on another (renew_days on
    days_to_expire) reads it whatever the order of the table.
    """

    def __init__(self, raw: Mapping[str, Any], config_path: Path, env: Mapping[str, str], now: float) -> None:
        self.raw = raw
        self.source = config_path.name
        self.base = config_path.parent
        self.env = env
        self.now = now
        self._values: dict[str, Any] = {}

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{message} (in {self.source})")

    def given(self, row: Setting) -> Any:
        """The value as written: the environment variable when set, else config.py, else the default."""
        if row.env and self.env.get(row.env):
            return self.env[row.env]
        return self._container(row.within).get(row.name, row.default)

    def value(self, label: str) -> Any:
        if label not in self._values:
            row = SETTING[label]
            self._values[label] = row.kind(row, self.given(row), self)
        return self._values[label]

    def _container(self, within: str) -> Mapping[str, Any]:
        if not within:
            return self.raw
        value = self.raw.get(within, {})
        if not isinstance(value, dict):
            keys = [row.name for row in SETTINGS if row.within == within]
            raise self.error(f"{within} must be a dict with {', '.join(keys[:-1])} and {keys[-1]}")
        return value


# --- Kinds: each reads one value or raises a ConfigError naming the setting -------------------

def _flag(row: Setting, value: Any, ctx: _Context) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(f"{row.label} must be True or False, not {value!r}")
    return value


def _whole(low: int, high: int) -> Kind:
    def whole(row: Setting, value: Any, ctx: _Context) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ctx.error(f"{row.label} must be a whole number from {low} to {high}, not {value!r}")
        return value
    return whole


def _number(low: float, high: float) -> Kind:
    def number(row: Setting, value: Any, ctx: _Context) -> float:
        return _in_range(row, value, low, high, ctx)
    return number


def _in_range(row: Setting, value: Any, low: float, high: float, ctx: _Context) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ctx.error(f"{row.label} must be a number from {low} to {high}, not {value!r}")
    return float(value)


def _text(row: Setting, value: Any, ctx: _Context) -> str:
    if not isinstance(value, str):
        shown = "an unquoted value (put it in quotes)" if row.secret else repr(value)
        raise ctx.error(f"{row.label} must be a string, not {shown}")
    return value.strip()


def _text_max(limit: int) -> Kind:
    def bounded(row: Setting, value: Any, ctx: _Context) -> str:
        text = _text(row, value, ctx)
        if len(text) > limit:
            raise ctx.error(f"{row.label} must be at most {limit} characters, not {len(text)}")
        return text
    return bounded


def _choice(*allowed: str) -> Kind:
    def choice(row: Setting, value: Any, ctx: _Context) -> str:
        text = _text(row, value, ctx)
        if text not in allowed:
            raise ctx.error(f"{row.label} must be one of {', '.join(map(repr, allowed))}, not {text!r}")
        return text
    return choice


def _https_url(row: Setting, value: Any, ctx: _Context) -> str:
    url = _text(row, value, ctx).rstrip("/")
    if not url.startswith("https://") or len(url) <= len("https://"):
        raise ctx.error(f"{row.label} must be an https:// URL, not {redact_url_credentials(url)!r}")
    return url


def _endpoint(row: Setting, value: Any, ctx: _Context) -> str:
    """An API host: the `cloud` profile's unless set."""
    return _https_url(row, C.CLOUDS[ctx.value("cloud")][row.name] if value is None else value, ctx)


def _scope(row: Setting, value: Any, ctx: _Context) -> str:
    """A token scope `https://…/.default`, kept as its audience ("" when unset)."""
    text = _text(row, value, ctx)
    return _https_url(row, text.removesuffix("/.default"), ctx) if text else ""


def _target_product(row: Setting, value: Any, ctx: _Context) -> str:
    """Graph's Defender ATP path cannot update or delete what it sends: refused, with the way out."""
    if isinstance(value, str) and value.strip() == C.TARGET_DEFENDER_ATP:
        raise ctx.error(f"{row.label} {C.TARGET_DEFENDER_ATP!r} is no longer supported: Graph can neither update nor "
                        "delete Defender indicators, so they would expire or keep blocking. Use target = \"defender\" "
                        "(Defender for Endpoint's indicators API; see README, Upgrading)")
    return str(_choice(*C.GRAPH_TARGET_PRODUCTS)(row, value, ctx))


def _tlp(row: Setting, value: Any, ctx: _Context) -> str:
    """A TLP level as MISP's taxonomy or Graph names it (`amber+strict`, `tlp:clear`), as its rank name."""
    text = _text(row, value, ctx).lower()
    level = C.TLP_TAGS.get(text if text.startswith("tlp:") else f"tlp:{text}") if text else ""
    if level is None:
        raise ctx.error(f"{row.label} must be one of clear, white, green, amber, amber+strict or red, not {value!r}")
    return level


def _optional_whole(low: int, high: int) -> Kind:
    def optional(row: Setting, value: Any, ctx: _Context) -> int | None:
        return None if value is None else int(_whole(low, high)(row, value, ctx))
    return optional


def _optional_number(low: float, high: float) -> Kind:
    def optional(row: Setting, value: Any, ctx: _Context) -> float | None:
        return None if value is None else _in_range(row, value, low, high, ctx)
    return optional


def _decay_model(row: Setting, value: Any, ctx: _Context) -> str:
    """A decaying model's name, or its id (a whole number, also written as one)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    return _text(row, value, ctx)


def _optional_flag(row: Setting, value: Any, ctx: _Context) -> bool | None:
    return None if value is None else _flag(row, value, ctx)


def _strings(row: Setting, value: Any, ctx: _Context) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ctx.error(f"{row.label} must be a list of names, not {value!r}")
    return tuple(item.strip() for item in value)


def _folder(row: Setting, value: Any, ctx: _Context) -> Path:
    """A folder the tool writes; a relative one is beside the config file, an empty one the default."""
    path = Path(_text(row, value, ctx) or row.default)
    return path if path.is_absolute() else ctx.base / path


def _renew_days(row: Setting, value: Any, ctx: _Context) -> float:
    """A quarter of days_to_expire unless set, and never more than it."""
    days: int = ctx.value("days_to_expire")
    return _in_range(row, days / 4 if value is None else value, 0, days, ctx)


def _misp_url(row: Setting, value: Any, ctx: _Context) -> str:
    """https:// only: the key travels in every request. Plain http:// needs misp_allow_plain_http.
    A trailing / is added, so urljoin keeps a sub-path install."""
    url = _text(row, value, ctx)
    shown = redact_url_credentials(url)
    if url and not url.startswith(("https://", "http://")):
        raise ctx.error(f"{row.label} must start with https://, not {shown!r}")
    if url.startswith("http://") and not ctx.value("misp_allow_plain_http"):
        raise ctx.error(f"{row.label} {shown!r} is plain http: the API key would cross the network in clear; use "
                        "https:// or set misp_allow_plain_http = True")
    return url if url.endswith("/") or not url else url + "/"


def _ca_bundle(row: Setting, value: Any, ctx: _Context) -> str:
    """A CA file that MISP's certificate alone is checked against, or ""."""
    if not value:
        return ""
    if ctx.given(SETTING["misp_verifycert"]) is not True:
        raise ctx.error(f"set {row.label} or misp_verifycert, not both")
    if not isinstance(value, str):
        raise ctx.error(f"{row.label} must be the path of a PEM CA file, not {value!r}")
    return _ca_file(row, value, ctx)


def _verifycert(row: Setting, value: Any, ctx: _Context) -> bool | str:
    """True (system CAs, or REQUESTS_CA_BUNDLE from the real environment), False, or a CA file
    that MISP's certificate alone is checked against: misp_ca_bundle, or a path here."""
    bundle: str = ctx.value("misp_ca_bundle")
    if bundle:
        return bundle
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() not in ("true", "false", ""):
        return _ca_file(row, value, ctx)
    raise ctx.error(f"{row.label} must be True, False or the path of a CA bundle, not {value!r}")


def _ca_file(row: Setting, value: str, ctx: _Context) -> str:
    """A CA bundle path, relative to the config file's folder, that must exist."""
    path = (ctx.base / value.strip()).resolve()
    if path.exists():
        return str(path)
    raise ctx.error(f"{row.label}: CA bundle {value!r} does not exist")


def _event_filters(row: Setting, value: Any, ctx: _Context) -> tuple[dict[str, Any], ...]:
    """A dict (one search) or the seed's list of dicts (events matching every one of them).

    Published events only unless a filter says otherwise: PyMISP sends no `published` itself.
    """
    entries = [value] if isinstance(value, dict) else value
    if not isinstance(entries, list):
        raise ctx.error(f"{row.label} must be a dict or a list of dicts")
    filters = [_filter(entry, index, ctx.source, ctx.now) for index, entry in enumerate(entries)] or [{}]
    if not any("published" in entry for entry in filters):
        filters[0] = {"published": True, **filters[0]}
    return tuple(filters)


def _targets(row: Setting, value: Any, ctx: _Context) -> tuple[TargetSettings, ...]:
    """`target` is "graph", "sentinel", or a list of those and of dicts naming other workspaces."""
    entries = value if isinstance(value, list) else [value]
    targets = [_target(entry, f"{row.label}[{index}]" if isinstance(value, list) else row.label, ctx)
               for index, entry in enumerate(entries)]
    labels = [target.label for target in targets]
    if not targets or len(set(labels)) != len(labels):
        raise ctx.error(f"{row.label} must name at least one target, each once, not {value!r}")
    _distinct_management_names([target for target in targets if target.workspace_id], ctx)
    return tuple(targets)


def _target(entry: Any, where: str, ctx: _Context) -> TargetSettings:
    """One target; it takes each per-target setting of its kind from its dict, else from the top level."""
    spec = {"type": entry} if isinstance(entry, str) else entry
    if not isinstance(spec, dict) or spec.get("type") not in C.TARGET_KINDS:
        kinds = ", ".join(map(repr, C.TARGET_KINDS))
        raise ctx.error(f"{where} must be one of {kinds} or a dict whose type is one of them, not {entry!r}")
    kind = spec["type"]
    rows = [row for row in PER_TARGET if not row.kinds or kind in row.kinds]
    unknown = sorted(spec.keys() - {"type", *(row.name for row in rows)}, key=repr)
    if unknown:
        raise ctx.error(f"{where}: a {kind} target takes only {', '.join(row.name for row in rows)}, not {unknown}")
    fields = {row.name: row.kind(dataclasses.replace(row, within=where), spec[row.name], ctx) if row.name in spec
              else ctx.value(row.label) for row in rows}
    if kind == "sentinel":
        _check_workspace(fields["workspace_id"], where, ctx)
    if kind == "defender":
        _check_defender(fields, where, ctx)
    return TargetSettings(kind, **fields)


def _check_workspace(workspace_id: str, where: str, ctx: _Context) -> None:
    if not workspace_id:
        raise ctx.error(f"{where} is sentinel but workspace_id is empty: set the Log Analytics workspace id (a GUID)")
    if not C.GUID_RE.fullmatch(workspace_id):
        raise ctx.error(f"{where}: workspace_id {workspace_id!r} is not a GUID: copy the Log Analytics "
                        "workspace's Workspace ID, not its name")


def _check_defender(fields: dict[str, Any], where: str, ctx: _Context) -> None:
    """The service's own rules, found now: Audit raises nothing without an alert; the scope
    follows the endpoint unless set."""
    if fields["defender_generate_alert"] is None:
        fields["defender_generate_alert"] = fields["defender_action"] != "Allowed"
    if fields["defender_action"] == "Audit" and not fields["defender_generate_alert"]:
        raise ctx.error(f"{where}: defender_action 'Audit' needs defender_generate_alert True (Defender refuses "
                        "an Audit indicator that raises no alert)")
    fields["defender_scope"] = fields["defender_scope"] or fields["defender_endpoint"]


def _distinct_management_names(workspaces: list[TargetSettings], ctx: _Context) -> None:
    """Two workspaces inheriting the same subscription, resource group and name would read each
    other back: the second would adopt the first one's indicators and receive nothing."""
    seen: dict[tuple[str, ...], str] = {}
    for workspace in workspaces:
        names = tuple(getattr(workspace, name).lower() for name in ("subscription_id", "resource_group", "workspace_name"))
        if all(names) and names in seen:
            raise ctx.error(f"target: workspaces {seen[names]} and {workspace.workspace_id} have the same subscription_id, "
                            "resource_group and workspace_name; set them in each workspace's dict")
        seen[names] = workspace.workspace_id


def _certificate(row: Setting, value: Any, ctx: _Context) -> Path | None:
    """A PEM file holding the private key and the certificate (readable by the tool's user only)."""
    text = _text(row, value, ctx)
    if not text:
        return None
    path = (ctx.base / text).resolve()
    if not path.is_file():
        raise ctx.error(f"{row.label}: {text!r} is not a file")
    try:
        key, certificate = split_pem(path.read_bytes())
    except OSError as exc:
        raise ctx.error(f"{row.label}: cannot read {path}: {exc.strerror}") from None
    if not key or not certificate:
        missing = "private key" if not key else "certificate"
        raise ctx.error(f"{row.label}: {path} has no PEM {missing}; the file must hold the private key and its certificate")
    _check_pem(row, path, key, certificate, ctx)
    return path


def _check_pem(row: Setting, path: Path, key: str, certificate: str, ctx: _Context) -> None:
    """Load the key and the certificate now: MSAL would fail on them only at the token request,
    in words that blame the tenant (a wrong password) or as a bug (a missing password)."""
    password: str = ctx.value("client_certificate_password")
    try:
        serialization.load_pem_private_key(key.encode("ascii"), password.encode("utf-8") or None)
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise ctx.error(f"{row.label}: the private key in {path} cannot be loaded ({exc}): check "
                        "client_certificate_password or AZURE_CLIENT_CERTIFICATE_PASSWORD") from None
    try:
        x509.load_pem_x509_certificates(certificate.encode("ascii"))
    except ValueError:
        raise ctx.error(f"{row.label}: the certificate in {path} is damaged: copy it again from where it was made") from None


def _managed_identity(row: Setting, value: Any, ctx: _Context) -> str:
    if value is False or value == "":
        return ""
    if value is True:
        return "system"
    if isinstance(value, str):
        return value.strip()
    raise ctx.error(f"{row.label} must be False, True (system-assigned) or a user-assigned identity's client id, "
                    f"not {value!r}")


def _kql(row: Setting, value: Any, ctx: _Context) -> str:
    """One KQL query: not empty, not a pasted document."""
    text = _text_max(C.SENTINEL_MATCH_QUERY_MAX)(row, value, ctx)
    if not text:
        raise ctx.error(f"{row.label} is empty: remove it to use the default query, or write a KQL query")
    return text


def _sourcesystem(row: Setting, value: Any, ctx: _Context) -> str:
    text = _text(row, value, ctx)
    if not text or text.lower() == C.RESERVED_SOURCESYSTEM:
        raise ctx.error(f"{row.label} must be a name of your own: {text!r} is reserved by Microsoft")
    return text


# --- The table: one row per setting, in README's order -----------------------------------------
_MANAGEMENT_NAMES = ("how the management API names the workspace. `-r`, `--check`, `--rebuild-state`, `-d` of an id "
                     "the state does not know, and a sync that finds no state (a first run, or a lost state file: it "
                     "reads the workspace back before sending) need them, and say which are missing")

SETTINGS: tuple[Setting, ...] = (
    Setting("target", _targets, "graph",
        '`graph`, `sentinel`, `defender`, or a list of targets such as `["graph", "sentinel", "defender"]`. A'
        ' list item can also be a dict `{"type": "sentinel", "workspace_id": …, "workspace_name": …}` for a'
        ' further workspace, or `{"type": "defender", "defender_action": "Block", "tlp_max": "amber"}`: a dict'
        " can carry any per-target setting of its kind for that target alone, and what it leaves out comes "
        "from the top level. MISP is read once, and each target keeps its own policy, state, lock and report",
        field="targets"),
    Setting("workspace_id", _text, "",
        "the Log Analytics workspace id (a GUID) that uploads go to. Required for `sentinel`",
        field=None, scope=Scope.TARGET, kinds=frozenset({"sentinel"})),
    Setting("subscription_id", _text, "",
        _MANAGEMENT_NAMES,
        field=None, scope=Scope.TARGET, kinds=frozenset({"sentinel"})),
    Setting("resource_group", _text, "",
        _MANAGEMENT_NAMES,
        field=None, scope=Scope.TARGET, kinds=frozenset({"sentinel"})),
    Setting("workspace_name", _text, "",
        _MANAGEMENT_NAMES,
        field=None, scope=Scope.TARGET, kinds=frozenset({"sentinel"})),
    Setting("sourcesystem", _sourcesystem, C.DEFAULT_SOURCESYSTEM,
        "the source name the indicators carry in Sentinel. `Microsoft Sentinel` is reserved and refused"),
    Setting("cloud", _choice(*C.CLOUDS), "public",
        "`public`, `gcc`, `gcc-high` or `dod`: picks the Entra authority and the Graph, management, Sentinel "
        "and Defender hosts at once (README, Clouds). Each endpoint setting still overrides its own host",
        field=None),
    Setting("sentinel_endpoint", _endpoint, None,
        "the STIX objects upload API",
        shown="from `cloud`"),
    Setting("sentinel_api_version", _text, C.DEFAULT_SENTINEL_API_VERSION,
        "its api-version"),
    Setting("management_endpoint", _endpoint, None,
        "the management API for `-r`. The Sentinel token scope is `{management_endpoint}/.default`",
        shown="from `cloud`"),
    Setting("management_api_version", _text, C.DEFAULT_MANAGEMENT_API_VERSION,
        "api-version for `queryIndicators`"),
    Setting("verify_after_minutes", _whole(0, 10080), 0,
        "`0`: off. Otherwise every run ends with a delivery check of the uploads older than this many minutes, "
        "and `--verify` counts younger ones as `pending` (README, Delivery checks)"),
    Setting("loganalytics_endpoint", _https_url, C.DEFAULT_LOGANALYTICS_ENDPOINT,
        "the Log Analytics query API that checks delivery to Sentinel (`/v1/workspaces/{workspace_id}/query`)"),
    Setting("loganalytics_scope", _scope, C.DEFAULT_LOGANALYTICS_SCOPE,
        "its token scope (not the endpoint's host: the API takes tokens for `https://api.loganalytics.io`)"),
    Setting("report_sightings", _flag, False,
        "every sync ends as `--sightings` does: the matches of our indicators in Sentinel and Defender since the "
        'last sightings run become MISP sightings (README, Sightings). Needs the read permissions README lists'),
    Setting("sighting_source", _text_max(C.SIGHTING_SOURCE_MAX), "",
        "the `source` of the sightings posted to MISP. Set, it is every target's: MISP then shows one source for "
        "all of them, and a target's first sightings run takes a sighting another target posted that day as its own",
        shown="`misp2sentinel:<target>` (`misp2sentinel:sentinel`, `misp2sentinel:defender`; with several workspaces "
              "`misp2sentinel:sentinel:<workspace_id>`)"),
    Setting("sentinel_match_query", _kql, C.SENTINEL_MATCH_QUERY,
        "the KQL that finds matches in a Sentinel workspace. Its rows must carry the time (`TimeGenerated`) and "
        "the indicator id (a STIX id anywhere in `IndicatorId`, `Entities` or `ExtendedProperties`) or the matched "
        "value (`MatchedValue`, or the `Entities`)",
        shown='alerts of the "TI map" analytics rules (README, Sightings)'),
    Setting("max_requests_per_minute", _whole(1, 100000), C.SENTINEL_REQUESTS_PER_MINUTE,
        "the client-side pace for Sentinel uploads. It never sends more than this many in any 60 s and waits "
        "only when the window is full"),
    Setting("graph_requests_per_minute", _whole(1, 100000), C.GRAPH_REQUESTS_PER_MINUTE,
        "the same pace for every Graph call (Graph allows 1000 tiIndicator requests per minute per app and "
        "tenant)"),
    Setting("max_concurrent_requests", _whole(1, 64), C.DEFAULT_CONCURRENT_REQUESTS,
        "batches in flight per target. At 300 ms per answer, 1000 requests per minute need 5 in flight, so 8 "
        "leaves room. The limiter still caps the rate"),
    Setting("tlp_max", _tlp, "",
        "per-target policy: the most restrictive TLP a target receives (`clear`/`white`, `green`, `amber`, "
        "`amber+strict`, `red`). An attribute whose TLP is above it is skipped as `above-tlp-max`. Unset: no "
        "ceiling",
        field=None, scope=Scope.TARGET),
    Setting("min_confidence", _optional_whole(0, 100), None,
        "per-target policy: an attribute whose confidence (its `misp:confidence-level` tag, else "
        "`defaultConfidenceLevel`) is below this is skipped as `below-min-confidence`",
        field=None, scope=Scope.TARGET),
    Setting("defender_endpoint", _endpoint, None,
        "the Defender for Endpoint API base, or a regional host (`https://eu.api.security.microsoft.com`)",
        field=None, scope=Scope.TARGET, kinds=frozenset({"defender"}), shown="from `cloud`"),
    Setting("defender_scope", _scope, "",
        "the Defender token scope, for a regional host or another cloud",
        field=None, scope=Scope.TARGET, kinds=frozenset({"defender"}), shown="`{defender_endpoint}/.default`"),
    Setting("defender_max_indicators", _whole(1, C.DEFENDER_TENANT_MAX), C.DEFENDER_DEFAULT_SHARE,
        "this tool's share of the tenant's 15,000 indicators. When MISP wants more, the most valuable are kept "
        "(README, The Defender budget) and the rest are counted as `over-budget`",
        field=None, scope=Scope.TARGET, kinds=frozenset({"defender"})),
    Setting("defender_action", _choice(*C.DEFENDER_ACTIONS), C.DEFENDER_DEFAULT_ACTION,
        "what Defender does on a match: `Audit` (alert only), `Warn`, `Block`, `BlockAndRemediate`, `Allowed`,"
        " or the legacy `Alert` and `AlertAndBlock`. `Block` is the operator's explicit choice",
        field=None, scope=Scope.TARGET, kinds=frozenset({"defender"})),
    Setting("defender_generate_alert", _optional_flag, None,
        "`generateAlert`. `Audit` requires `True`",
        field=None, scope=Scope.TARGET, kinds=frozenset({"defender"}), shown="`True` unless the action is `Allowed`"),
    Setting("defender_severity", _choice("", *C.DEFENDER_SEVERITIES), "",
        "one fixed `severity` (`Informational`, `Low`, `Medium`, `High`) instead of the event's threat level "
        "(1 High, 2 Medium, 3 Low, 4 Informational)",
        field=None, scope=Scope.TARGET, kinds=frozenset({"defender"}), shown="from the threat level"),
    Setting("defender_rbac_groups", _strings, [],
        "`rbacGroupNames`: the device groups the indicators apply to. Empty: every device",
        field=None, scope=Scope.TARGET, kinds=frozenset({"defender"})),
    Setting("defender_recommended_actions", _text_max(C.TEXT_FIELD_MAX), "",
        "`recommendedActions`, shown to the analyst with an alert",
        field=None, scope=Scope.TARGET, kinds=frozenset({"defender"})),
    Setting("tenant", _text, "",
        "the Entra app registration's directory (tenant) id",
        env="AZURE_TENANT_ID", within="graph_auth"),
    Setting("client_id", _text, "",
        "its application (client) id",
        env="AZURE_CLIENT_ID", within="graph_auth"),
    Setting("client_secret", _text, "",
        "its client secret. Not needed with a certificate or a managed identity",
        env="AZURE_CLIENT_SECRET", within="graph_auth", secret=True),
    Setting("client_certificate_path", _certificate, "",
        "a PEM file with the app's private key and certificate, used instead of the secret (or "
        "`AZURE_CLIENT_CERTIFICATE_PATH`; relative to the config file)",
        env="AZURE_CLIENT_CERTIFICATE_PATH"),
    Setting("client_certificate_password", _text, "",
        "the key's password. Better in `AZURE_CLIENT_CERTIFICATE_PASSWORD`",
        env="AZURE_CLIENT_CERTIFICATE_PASSWORD", secret=True),
    Setting("managed_identity", _managed_identity, False,
        "`True` for the host's system-assigned identity, or a user-assigned identity's client id. Then no "
        "tenant, client id or secret is needed"),
    Setting("graph_endpoint", _endpoint, None,
        "Graph root. The token scope is `{graph_endpoint}/.default`",
        shown="from `cloud`"),
    Setting("authority_host", _endpoint, None,
        "Entra authority host. The tenant is appended to it",
        shown="from `cloud`"),
    Setting("targetProduct", _target_product, C.TARGET_SENTINEL,
        "the Graph target's product. `Microsoft Defender ATP` is refused (exit 2): Graph cannot update or "
        'delete Defender indicators; use `target = "defender"` (README, Upgrading)',
        field="target_product"),
    Setting("action", _choice(*C.GRAPH_ACTIONS), "alert",
        "`alert`, `allow`, `block` or `unknown`"),
    Setting("passiveOnly", _flag, False,
        "Graph `passiveOnly`",
        field="passive_only"),
    Setting("days_to_expire", _whole(1, 3650), 60,
        "`expirationDateTime` is now + this many days"),
    Setting("defaultConfidenceLevel", _whole(0, 100), 50,
        "the confidence used when no `misp:confidence-level` tag applies",
        field="default_confidence"),
    Setting("network_ignore_direction", _flag, False,
        "also fill the direction-less `networkIPv4`/`IPv6`/`CidrBlock`/`Port` fields"),
    Setting("allow_weak_observables", _flag, False,
        "send lone `port` and `size-in-bytes` attributes. By default they are `weak-observable`"),
    Setting("allow_broad_cidr", _flag, False,
        "send CIDR blocks broader than /16 (IPv4) or /32 (IPv6). By default they are `weak-observable`: "
        "`0.0.0.0/0` must never reach a block list"),
    Setting("misp_domain", _misp_url, "",
        "the MISP URL. A trailing `/` is added, so sub-path installs work",
        field="misp_url", env="MISP_URL"),
    Setting("misp_key", _text, "",
        "the MISP automation key (prefer `MISP_KEY`)",
        env="MISP_KEY", secret=True),
    Setting("misp_allow_plain_http", _flag, False,
        "a plain `http://` `misp_domain` is refused (exit 2), because the key would cross the network in "
        'clear. `True` allows it, and `--check` then shows a ✗ `MISP transport` line saying "not TLS"'),
    Setting("misp_ca_bundle", _ca_bundle, "",
        "a PEM file with the CA that signed the MISP server's certificate. It is used for MISP only and used "
        "alone: MISP's certificate is checked against this file, not against the system CAs as well. Entra, "
        "Graph and Sentinel keep the system CAs. Not together with `misp_verifycert`",
        field=None),
    Setting("misp_verifycert", _verifycert, True,
        "TLS verification for MISP: `True` (system CAs, or `REQUESTS_CA_BUNDLE` from the real environment), "
        "or the path of a CA bundle (prefer `misp_ca_bundle`). `False` turns verification off; don't. With "
        "`False`, each run prints one warning line instead of urllib3's warning on every request"),
    Setting("misp_event_filters", _event_filters, C.DEFAULT_MISP_EVENT_FILTERS,
        "keywords passed to PyMISP `search()`. It can also be a list of such dicts, as in the 2018 Microsoft "
        "sample: an event must then match every dict. `published: True` is added unless a filter sets "
        "`published`. The sample's old names `values`, `not_values` and `not_tags` are translated. Each key "
        "is checked by the name MISP finally receives, after PyMISP's renaming (`type_attribute` → `type`, "
        "`date_from` → `from`, `last` → `publish_timestamp`), against the keys MISP 2.5's events restSearch "
        "applies. A key MISP would drop without a word stops the run with exit 2, naming it and what to use "
        "instead: `quick_filter` (use `value` with `%` or `searchall`), `object_name`, `include_event_uuid`, "
        "the decay filters (`excludeDecayed`, `decayingModel`, `score`: attributes restSearch only), and "
        "names PyMISP overwrites (`from`: use `date_from`). Two keys MISP would receive under one name "
        "(`last` and `publish_timestamp`, `type` and `type_attribute`, a snake_case and a camelCase synonym) "
        "are refused too: PyMISP sends only one of them. Relative times (`'14d'`, `'12h'`, or a `[from, to]` "
        "pair) in `publish_timestamp`, `last`, `timestamp`, `event_timestamp` and `date`, and a relative "
        "`date_from` or `date_to` (one value, which MISP reads as its day), are turned into an epoch once, at"
        " start-up, so the window cannot slide across the pages of a long run; English forms such as "
        "`'yesterday'` are refused. A `False` value is sent as `0`, because MISP's event selection skips a "
        "JSON `false` while its fetch applies it (`published: False` would read nothing). `to_ids` must be 0 "
        "or 1, as PyMISP requires. `limit`, `page` and `metadata` are refused because the tool sets them "
        "itself",
        shown=f"`{C.DEFAULT_MISP_EVENT_FILTERS!r}` (`--check` prints the filters in effect)"),
    Setting("misp_event_limit_per_page", _whole(1, 10000), C.MISP_DEFAULT_PAGE_SIZE,
        "events per MISP request. Memory holds one page",
        field="misp_page_size"),
    Setting("misp_ignore_localtags", _flag, True,
        "ignore local tags (`local` true or 1)",
        field="ignore_local_tags"),
    Setting("misp_decay_model", _decay_model, "",
        "a MISP decaying model, by name or id: each run then asks MISP for the attributes' decay scores "
        "(`includeDecayScore`) and reads every listed event in full, since scores and sightings change "
        'without moving any timestamp (see "Decay"). The model must be enabled in MISP. Unset: decay off'),
    Setting("decay_threshold", _optional_number(0, 100), None,
        "an attribute whose score is below this is skipped as `decayed`, and what was sent for it is removed",
        shown="the model's own threshold"),
    Setting("decay_as_confidence", _flag, True,
        "the score, rounded to a whole number from 0 to 100, is the indicator's confidence (for Defender, "
        "its rank in the budget). `False` keeps the confidence of the tags"),
    Setting("log_dir", _folder, "logs",
        "where the JSON files go (relative to the config file)"),
    Setting("write_post_json", _flag, True,
        "one JSON file per request (body sent and response)"),
    Setting("verbose_log", _flag, False,
        "print every request body and response"),
    Setting("http_timeout", _number(1, 3600), 60,
        "seconds, for every HTTP request (MISP, Entra, Graph)"),
    Setting("state_dir", _folder, "state",
        "where the state store lives (relative to the config file): one SQLite file and one lock file per "
        "target tenant and app"),
    Setting("max_delete_fraction", _number(0, 1), 0.2,
        "the safety valve: a run that would delete more than this share of the owned indicators deletes "
        "nothing"),
    Setting("renew_days", _renew_days, None,
        "an unchanged indicator whose expiry is less than this many days away gets a new `expirationDateTime`"
        " (`updateTiIndicators`)",
        shown="`days_to_expire / 4`"),
    Setting("log_retention_days", _whole(1, 3650), 30,
        "this tool's files in `log_dir` older than this are removed at the start of each run"),
    Setting("full_resync_days", _whole(0, 3650), C.DEFAULT_FULL_RESYNC_DAYS,
        "days between full reads of every listed event; the runs in between read in full only the events that"
        ' changed (see "Incremental nights"). `0` reads everything on every run'),
)

SETTING = {row.label: row for row in SETTINGS}
PER_TARGET = tuple(row for row in SETTINGS if row.scope is Scope.TARGET)
KNOWN_SETTINGS = frozenset(row.within or row.name for row in SETTINGS)
# Dict settings and the keys each holds (graph_auth: tenant, client_id, client_secret).
_CONTAINERS = {within: frozenset(row.name for row in SETTINGS if row.within == within)
               for within in sorted({row.within for row in SETTINGS} - {""})}


# --- Reading ------------------------------------------------------------------------------------

def load_settings(config_path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate every setting; raise ConfigError naming the first bad one."""
    config_path = config_path.resolve()
    raw = read_assignments(config_path)
    environ = os.environ if environ is None else environ
    _check_ca_environment(environ)
    ctx = _Context(raw, config_path, _env(config_path, environ), time.time())
    values = {row.label: ctx.value(row.label) for row in SETTINGS}  # each one, used or not
    fields = {row.attribute: values[row.label] for row in SETTINGS if row.attribute}
    return Settings(config_path=config_path, **fields, unknown_settings=_unknown_settings(raw, config_path.name),
                    warnings=_warnings(raw, config_path, environ))


def _warnings(raw: Mapping[str, Any], config_path: Path, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Ignored setting names, a MISP whose certificate is not checked (said once per run:
    urllib3's warning on every request is silenced), and trust set where it is not read."""
    unverified = ["misp_verifycert = False: the MISP server's certificate is not checked"] if raw.get("misp_verifycert") is False else []
    return (*_unknown_settings(raw, config_path.name), *unverified, *_ignored_dotenv(config_path, environ))


def _unknown_settings(raw: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """Names this version does not read, top-level or inside a dict setting such as graph_auth,
    with the known name a typo most likely meant."""
    def message(shown: str, name: str, known: Iterable[str]) -> str:
        close = _did_you_mean(name, known)
        return f"{source}: setting {shown} is not used by this version and is ignored" + (f" ({close})" if close else "")
    found = [message(repr(name), name, KNOWN_SETTINGS) for name in sorted(raw.keys() - KNOWN_SETTINGS)]
    for within, keys in _CONTAINERS.items():
        inner = raw.get(within)
        if isinstance(inner, dict):
            found += [message(f"{within}[{key!r}]", str(key), keys) for key in sorted(inner.keys() - keys, key=repr)]
    return tuple(found)


def read_assignments(path: Path) -> dict[str, Any]:
    """Literal `name = value` assignments of a config.py, without running any of its code."""
    source = read_text(path, "config file")
    if source.startswith("\ufeff"):
        raise ConfigError(f"{path} starts with a byte-order mark: save it as UTF-8 without BOM") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"{path.name} line {exc.lineno}: not valid Python syntax ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{path} is nested too deeply to read: write the value flat") from None
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{path.name} line {node.lineno}: only `name = value` assignments are allowed")
        name = node.targets[0].id
        try:
            values[name] = ast.literal_eval(node.value)
        except ValueError:
            raise ConfigError(f"{path.name} line {node.lineno}: {name} must be a literal value (no code)") from None
        except RecursionError:
            raise ConfigError(f"{path.name} line {node.lineno}: {name} is nested too deeply to read") from None
    return values


def read_text(path: Path, what: str) -> str:
    """A UTF-8 file the operator wrote; an unreadable or mis-encoded one is a config error."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}: make it readable by the user running "
                          "misp2sentinel (owner www-data, mode 0600)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} byte {exc.start} is not UTF-8: save the file as UTF-8") from None


def _env(config_path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """Real environment over a `.env` beside the config file (python-dotenv, not loaded into os.environ)."""
    dotenv_file = config_path.parent / ".env"
    if not dotenv_file.is_file():
        return dict(environ)
    text = read_text(dotenv_file, "secrets file")
    if text.startswith("\ufeff"):  # it would hide the first line's name: "misp_key is empty" while it is set
        raise ConfigError(f"{dotenv_file} starts with a byte-order mark: save it as UTF-8 without BOM")
    values = dotenv_values(stream=io.StringIO(text))
    from_file = {k: v for k, v in values.items() if v is not None}
    return {**from_file, **environ}


def _filter(entry: Any, index: int, source: str, now: float) -> dict[str, Any]:
    """One search() keyword dict: legacy seed names translated, keys MISP would ignore refused,
    relative times frozen to `now`."""
    where = f"misp_event_filters[{index}]"
    if not isinstance(entry, dict) or not all(isinstance(key, str) for key in entry):
        raise ConfigError(f"{where} must be a dict of PyMISP search() keywords (in {source})")
    reserved = sorted(C.MISP_RESERVED_FILTERS & entry.keys())
    if reserved:
        raise ConfigError(f"{where} must not set {', '.join(reserved)}: the tool sets it itself (page size: "
                          f"misp_event_limit_per_page) (in {source})")
    keywords: dict[str, Any] = entry
    result: dict[str, Any] = {}
    negated: dict[str, list[Any]] = {}
    sent_by: dict[str, str] = {}
    for key, value in keywords.items():
        if key in C.MISP_LEGACY_NEGATED_FILTERS:
            negated[C.MISP_LEGACY_NEGATED_FILTERS[key]] = value if isinstance(value, list) else [value]
            continue
        keyword = C.MISP_LEGACY_FILTERS.get(key, key)
        _check_applied(keyword, f"{where}: {key!r}", source)
        _check_single(sent_by, key, keyword, where, source)
        result[keyword] = _filter_value(keyword, value, now, f"{where}: {key}", source)
    for target, excluded in negated.items():
        included = result.get(target)
        if included is not None and not isinstance(included, (str, list)):
            raise ConfigError(f"{where}: cannot combine not_{target} with a complex {target} query (in {source})")
        query: dict[str, Any] = {"NOT": excluded}
        if included is not None:
            query["OR"] = included if isinstance(included, list) else [included]
        result[target] = query
    return result


def _filter_value(keyword: str, value: Any, now: float, where: str, source: str) -> Any:
    """A filter's value as MISP will read it the same way on every page, or a ConfigError."""
    if keyword in C.MISP_DAY_FILTERS and isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} takes one day, not a pair; use date for a range (in {source})")
    if keyword == "to_ids" and value not in C.PYMISP_TO_IDS_VALUES:
        raise ConfigError(f"{where} must be 0 or 1 (PyMISP's search() refuses anything else) (in {source})")
    if keyword in C.MISP_RELATIVE_TIME_FILTERS | C.MISP_DAY_FILTERS:
        value = _frozen_time(value, now, where, source)
    # MISP's event selection skips a JSON false while its fetch applies it, so pages would
    # come back short or empty (`published: False` would read nothing): 0 is applied by both
    return 0 if value is False else value


_FILTER_KEYWORDS = C.MISP_EVENT_SEARCH_KEYS | C.PYMISP_WIRE_NAMES.keys()


def misp_wire_name(keyword: str) -> str | None:
    """The key MISP receives for a search() keyword after PyMISP's renaming; None when PyMISP
    overwrites it with its own (empty) value and so never sends it."""
    if keyword in C.PYMISP_OVERWRITTEN:
        return None
    return C.PYMISP_WIRE_NAMES.get(keyword, keyword)


def _check_applied(keyword: str, where: str, source: str) -> None:
    """Refuse a filter MISP would drop without a word: it would narrow nothing, and every
    published event would be synced."""
    wire = misp_wire_name(keyword)
    if wire is None:
        raise ConfigError(f"{where} is dropped by PyMISP's search(); use {C.PYMISP_OVERWRITTEN[keyword]!r} (in {source})")
    if wire in C.MISP_EVENT_SEARCH_KEYS or wire.startswith(C.MISP_EVENT_SEARCH_KEY_PREFIXES):
        return
    hint = C.MISP_IGNORED_FILTER_HINTS.get(wire) or _did_you_mean(keyword, _FILTER_KEYWORDS) or "remove it"
    sent_as = f" (sent as {wire!r})" if wire != keyword else ""
    raise ConfigError(f"{where}{sent_as} is not applied by MISP's events restSearch, which would ignore it "
                      f"silently and sync every event; {hint} (in {source})")


def _check_single(sent_by: dict[str, str], key: str, keyword: str, where: str, source: str) -> None:
    """Refuse a second key reaching MISP under a name already sent (`last` replaces
    `publish_timestamp`, a camelCase synonym wins): PyMISP sends one value, the other narrows
    nothing. `sent_by` maps each wire name to the key that set it."""
    wire = misp_wire_name(keyword) or keyword
    if wire in sent_by:
        raise ConfigError(f"{where}: {sent_by[wire]!r} and {key!r} both reach MISP as {wire!r}, which takes only one "
                          f"of them; keep one (in {source})")
    sent_by[wire] = key


def _frozen_time(value: Any, now: float, where: str, source: str) -> Any:
    """A time filter with MISP's relative form ("14d", or a [from, to] pair) resolved once."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return [_frozen_time(part, now, where, source) for part in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else None
    relative = C.MISP_RELATIVE_TIME_RE.fullmatch(text) if text is not None else None
    if relative:
        return int(now - float(relative.group(1)) * C.MISP_TIME_UNITS[relative.group(2).lower()])
    if text is not None and C.MISP_ABSOLUTE_TIME_RE.fullmatch(text):
        return text
    raise ConfigError(f"{where} must be an epoch, a date (YYYY-MM-DD), a relative time like '14d' or '12h', "
                      f"or a [from, to] pair of them (in {source})")


def split_pem(pem: bytes) -> tuple[str, str]:
    """The private key block and the certificate block(s) of one PEM file."""
    blocks = [match.group(0) for match in C.PEM_BLOCK_RE.finditer(pem.decode("ascii", "replace"))]
    key = "".join(block + "\n" for block in blocks if "PRIVATE KEY-----" in block.split("\n", 1)[0])
    certificate = "".join(block + "\n" for block in blocks if block.startswith("-----BEGIN CERTIFICATE-----"))
    return key, certificate


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    """"did you mean 'x'?" for the known name a typo most likely meant, else ""."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _ignored_dotenv(config_path: Path, environ: Mapping[str, str]) -> list[str]:
    """.env feeds settings only: a CA variable there reaches no connection, unless systemd's
    EnvironmentFile= (the shipped unit) put it in the environment, where it reaches them all."""
    dotenv_file = config_path.parent / ".env"
    names = dotenv_values(dotenv_file).keys() if dotenv_file.is_file() else ()
    return [f".env: {_dotenv_ca_effect(name, environ)}; set misp_ca_bundle in the config for the MISP CA"
            for name in C.CA_ENVIRONMENT_VARIABLES if name in names]


def _dotenv_ca_effect(name: str, environ: Mapping[str, str]) -> str:
    if name in environ:
        return (f"{name} is in the environment too (systemd's EnvironmentFile= loads .env), so it applies to every "
                "connection, Microsoft's too")
    return f"{name} is not honoured there (it would apply to Microsoft too)"


def _check_ca_environment(environ: Mapping[str, str]) -> None:
    """requests fails on a CA bundle variable naming a missing file only when it connects, with
    an OSError that read as a bug (exit 5)."""
    name = next((name for name in C.REQUESTS_CA_VARIABLES if environ.get(name)), None)
    if name and not os.path.exists(environ[name]):
        raise ConfigError(f"the environment variable {name} names {environ[name]!r}, which does not exist: "
                          f"correct the path or unset {name}")


# --- README's settings section, made from the table ---------------------------------------------
README_START = "<!-- settings: made by `python settings.py --readme-table` from settings.SETTINGS; a test keeps them equal -->"
README_END = "<!-- end of settings -->"


def readme_table() -> str:
    """README's environment paragraph and settings table; rows with the same default and doc share a line."""
    names = ", ".join(f"`{row.env}`" for row in SETTINGS if row.env)
    lines = [README_START, *textwrap.wrap(
        "Secrets should not live in `config.py`. These environment variables override it, and so does a `.env` "
        f"file beside the config file (read with python-dotenv; the real environment wins): {names}.", 96,
        break_on_hyphens=False), "", "| setting | default | meaning |", "|---|---|---|"]
    groups: list[tuple[list[str], str, str]] = []
    for row in SETTINGS:
        default = row.shown or _shown_default(row.default)
        if groups and groups[-1][1:] == (default, row.doc):
            groups[-1][0].append(row.label)
        else:
            groups.append(([row.label], default, row.doc))
    lines += [f"| {', '.join(f'`{label}`' for label in labels)} | {default} | {doc} |" for labels, default, doc in groups]
    return "\n".join([*lines, README_END]) + "\n"


def _shown_default(value: Any) -> str:
    """A default as README shows it: a word bare, an empty string as '', anything else as Python."""
    return f"`{value}`" if isinstance(value, str) and value else f"`{value!r}`"


def main(argv: Sequence[str]) -> int:
    if list(argv) != ["--readme-table"]:
        sys.stderr.write("usage: python settings.py --readme-table\n")
        return C.ExitCode.CONFIG
    sys.stdout.write(readme_table())
    return C.ExitCode.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Read config.py (without executing it) and the environment into one validated Settings.

Everything the tool can get wrong about its configuration is found here, at start-up, before
any network call, and reported as one line naming the setting.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from dotenv import dotenv_values

import constants as C
from request_log import redact_url_credentials

KNOWN_SETTINGS = frozenset({
    "graph_auth", "graph_endpoint", "authority_host", "targetProduct", "action", "passiveOnly",
    "days_to_expire", "defaultConfidenceLevel", "network_ignore_direction", "allow_weak_observables", "allow_broad_cidr",
    "misp_domain", "misp_key", "misp_verifycert", "misp_event_filters", "misp_event_limit_per_page",
    "misp_ignore_localtags", "log_dir", "write_post_json", "verbose_log", "http_timeout",
    "state_dir", "max_delete_fraction", "renew_days", "log_retention_days", "full_resync_days",
    "target", "workspace_id", "subscription_id", "resource_group", "workspace_name", "sentinel_endpoint",
    "sentinel_api_version", "management_endpoint", "management_api_version", "sourcesystem",
    "max_requests_per_minute", "graph_requests_per_minute", "max_concurrent_requests",
    "client_certificate_path", "client_certificate_password", "managed_identity",
    "misp_allow_plain_http", "misp_ca_bundle",
})
_WORKSPACE_FIELDS = ("workspace_id", "subscription_id", "resource_group", "workspace_name")

ENV_OVERRIDES = {
    "MISP_KEY": "misp_key",
    "MISP_URL": "misp_domain",
    "AZURE_TENANT_ID": "tenant",
    "AZURE_CLIENT_ID": "client_id",
    "AZURE_CLIENT_SECRET": "client_secret",
}


class ConfigError(Exception):
    """A setting is missing, of the wrong type or out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class TargetSettings:
    """One place indicators go: the Graph tenant, or one Sentinel workspace."""

    kind: str
    workspace_id: str = ""
    subscription_id: str = ""
    resource_group: str = ""
    workspace_name: str = ""

    @property
    def label(self) -> str:
        return "graph" if self.kind == "graph" else f"sentinel workspace {self.workspace_id}"

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
    unknown_settings: tuple[str, ...] = ()  # one message per name this version does not know
    warnings: tuple[str, ...] = ()

    def secrets(self) -> tuple[str, ...]:
        """Values that must never be written anywhere (used to scrub error text)."""
        return tuple(value for value in (self.client_secret, self.misp_key, self.client_certificate_password) if value)

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
        for name in needed:
            if not getattr(self, name):
                env = next(key for key, field in ENV_OVERRIDES.items() if field == name)
                raise ConfigError(f"graph_auth['{name}'] is empty: set it in {self.config_path.name} or {env}")

    def require_misp(self) -> None:
        """Fail before any network call when MISP cannot be reached or authenticated."""
        if not self.misp_url:
            raise ConfigError(f"misp_domain is empty: set it in {self.config_path.name} or MISP_URL")
        if not self.misp_key:
            raise ConfigError(f"misp_key is empty: set it in {self.config_path.name} or MISP_KEY")


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


class _Reader:
    """Typed access to the raw settings; each getter names the setting when it refuses a value."""

    def __init__(self, raw: Mapping[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source

    def _get(self, name: str, default: Any) -> Any:
        return self.raw.get(name, default)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, not {value!r} (in {self.source})")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{name} must be a whole number from {low} to {high}, not {value!r} (in {self.source})")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{name} must be a number from {low} to {high}, not {value!r} (in {self.source})")
        return float(value)

    def text(self, name: str, default: str) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            shown = "an unquoted value (put it in quotes)" if name in C.SECRET_SETTINGS else repr(value)
            raise ConfigError(f"{name} must be a string, not {shown} (in {self.source})")
        return value.strip()

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r} (in {self.source})")
        return value

    def https_url(self, name: str, default: str) -> str:
        value = self.text(name, default).rstrip("/")
        if not value.startswith("https://") or len(value) <= len("https://"):
            raise ConfigError(f"{name} must be an https:// URL, not {redact_url_credentials(value)!r} (in {self.source})")
        return value


def _graph_auth(raw: Mapping[str, Any], env: Mapping[str, str], source: str) -> dict[str, str]:
    auth = raw.get("graph_auth", {})
    if not isinstance(auth, dict):
        raise ConfigError(f"graph_auth must be a dict with tenant, client_id and client_secret (in {source})")
    result = {}
    for name in ("tenant", "client_id", "client_secret"):
        value = auth.get(name, "")
        if not isinstance(value, str):
            raise ConfigError(f"graph_auth['{name}'] must be a string (in {source})")
        result[name] = value.strip()
    for env_name, field in ENV_OVERRIDES.items():
        if field in result and env.get(env_name):
            result[field] = env[env_name].strip()
    return result


def _verifycert(raw: Mapping[str, Any], base: Path, source: str) -> bool | str:
    """True (system CAs, or REQUESTS_CA_BUNDLE from the real environment), False, or a CA file
    that MISP's certificate alone is checked against: misp_ca_bundle, or a path here."""
    bundle = raw.get("misp_ca_bundle", "")
    value = raw.get("misp_verifycert", True)
    if bundle:
        if value is not True:
            raise ConfigError(f"set misp_ca_bundle or misp_verifycert, not both (in {source})")
        if not isinstance(bundle, str):
            raise ConfigError(f"misp_ca_bundle must be the path of a PEM CA file, not {bundle!r} (in {source})")
        return _ca_file("misp_ca_bundle", bundle, base, source)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() not in ("true", "false", ""):
        return _ca_file("misp_verifycert", value, base, source)
    raise ConfigError(f"misp_verifycert must be True, False or the path of a CA bundle, not {value!r} (in {source})")


def _ca_file(name: str, value: str, base: Path, source: str) -> str:
    """A CA bundle path, relative to the config file's folder, that must exist."""
    path = (base / value.strip()).resolve()
    if path.exists():
        return str(path)
    raise ConfigError(f"{name}: CA bundle {value!r} does not exist (in {source})")


def _filter(entry: Any, index: int, source: str, now: float) -> dict[str, Any]:
    """One search() keyword dict: legacy seed names translated, keys MISP would ignore refused,
    relative times frozen to `now`."""
    where = f"misp_event_filters[{index}]"
    if not isinstance(entry, dict) or not all(isinstance(key, str) for key in entry):
        raise ConfigError(f"{where} must be a dict of PyMISP search() keywords (in {source})")
    reserved = sorted(C.MISP_RESERVED_FILTERS & entry.keys())
    if reserved:
        raise ConfigError(f"{where} must not set {', '.join(reserved)}: the tool sets it itself (page size: misp_event_limit_per_page) (in {source})")
    result: dict[str, Any] = {}
    negated: dict[str, list[Any]] = {}
    sent_by: dict[str, str] = {}
    for key, value in entry.items():
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


def _event_filters(raw: Mapping[str, Any], source: str, now: float) -> tuple[dict[str, Any], ...]:
    """A dict (one search) or the seed's list of dicts (events matching every one of them).

    Published events only unless a filter says otherwise: PyMISP sends no `published` itself.
    """
    value = raw.get("misp_event_filters", C.DEFAULT_MISP_EVENT_FILTERS)
    entries = [value] if isinstance(value, dict) else value
    if not isinstance(entries, list):
        raise ConfigError(f"misp_event_filters must be a dict or a list of dicts (in {source})")
    filters = [_filter(entry, index, source, now) for index, entry in enumerate(entries)] or [{}]
    if not any("published" in entry for entry in filters):
        filters[0] = {"published": True, **filters[0]}
    return tuple(filters)


def _targets(raw: Mapping[str, Any], read: _Reader, source: str) -> tuple[TargetSettings, ...]:
    """`target` is "graph", "sentinel", or a list of those and of dicts naming other workspaces."""
    value = raw.get("target", "graph")
    entries = value if isinstance(value, list) else [value]
    defaults = {name: read.text(name, "") for name in _WORKSPACE_FIELDS}
    targets = []
    for index, entry in enumerate(entries):
        where = "target" if not isinstance(value, list) else f"target[{index}]"
        spec = {"type": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, dict) or spec.get("type") not in C.TARGET_KINDS:
            raise ConfigError(f"{where} must be 'graph', 'sentinel' or a dict with type 'sentinel', not {entry!r} (in {source})")
        unknown = sorted(spec.keys() - {"type", *_WORKSPACE_FIELDS})
        if unknown or not all(isinstance(spec.get(name, ""), str) for name in _WORKSPACE_FIELDS):
            raise ConfigError(f"{where}: only string {', '.join(_WORKSPACE_FIELDS)} may be set, not {unknown or spec} (in {source})")
        fields = {name: spec.get(name, defaults[name]).strip() for name in _WORKSPACE_FIELDS} if spec["type"] == "sentinel" else {}
        if spec["type"] == "sentinel" and not fields["workspace_id"]:
            raise ConfigError(f"{where} is sentinel but workspace_id is empty: set the Log Analytics workspace id (a GUID) (in {source})")
        if spec["type"] == "sentinel" and not C.GUID_RE.fullmatch(fields["workspace_id"]):
            raise ConfigError(f"{where}: workspace_id {fields['workspace_id']!r} is not a GUID: copy the Log Analytics "
                              f"workspace's Workspace ID, not its name (in {source})")
        targets.append(TargetSettings(spec["type"], **fields))
    labels = [target.label for target in targets]
    if not targets or len(set(labels)) != len(labels):
        raise ConfigError(f"target must name at least one target, each once, not {value!r} (in {source})")
    _distinct_management_names([target for target in targets if target.kind == "sentinel"], source)
    return tuple(targets)


def _distinct_management_names(workspaces: list[TargetSettings], source: str) -> None:
    """Two workspaces inheriting the same subscription, resource group and name would read each
    other back: the second would adopt the first one's indicators and receive nothing."""
    seen: dict[tuple[str, ...], str] = {}
    for workspace in workspaces:
        names = tuple(getattr(workspace, name).lower() for name in ("subscription_id", "resource_group", "workspace_name"))
        if all(names) and names in seen:
            raise ConfigError(f"target: workspaces {seen[names]} and {workspace.workspace_id} have the same subscription_id, "
                              f"resource_group and workspace_name; set them in each workspace's dict (in {source})")
        seen[names] = workspace.workspace_id


def _certificate(read: _Reader, base: Path, env: Mapping[str, str]) -> Path | None:
    """A PEM file holding the private key and the certificate (readable by the tool's user only)."""
    value = env.get("AZURE_CLIENT_CERTIFICATE_PATH") or read.text("client_certificate_path", "")
    if not value:
        return None
    path = (base / value).resolve()
    if not path.is_file():
        raise ConfigError(f"client_certificate_path: {value!r} is not a file (in {read.source})")
    try:
        key, certificate = split_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"client_certificate_path: cannot read {path}: {exc.strerror} (in {read.source})") from None
    if not key or not certificate:
        missing = "private key" if not key else "certificate"
        raise ConfigError(f"client_certificate_path: {path} has no PEM {missing}; the file must hold the private key "
                          f"and its certificate (in {read.source})")
    _check_pem(path, key, certificate, _certificate_password(read, env), read.source)
    return path


def _certificate_password(read: _Reader, env: Mapping[str, str]) -> str:
    return env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD") or read.text("client_certificate_password", "")


def _check_pem(path: Path, key: str, certificate: str, password: str, source: str) -> None:
    """Load the key and the certificate now: MSAL would fail on them only at the token request,
    in words that blame the tenant (a wrong password) or as a bug (a missing password)."""
    try:
        serialization.load_pem_private_key(key.encode("ascii"), password.encode("utf-8") or None)
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"client_certificate_path: the private key in {path} cannot be loaded ({exc}): check "
                          f"client_certificate_password or AZURE_CLIENT_CERTIFICATE_PASSWORD (in {source})") from None
    try:
        x509.load_pem_x509_certificates(certificate.encode("ascii"))
    except ValueError:
        raise ConfigError(f"client_certificate_path: the certificate in {path} is damaged: copy it again from where "
                          f"it was made (in {source})") from None


def split_pem(pem: bytes) -> tuple[str, str]:
    """The private key block and the certificate block(s) of one PEM file."""
    blocks = [match.group(0) for match in C.PEM_BLOCK_RE.finditer(pem.decode("ascii", "replace"))]
    key = "".join(block + "\n" for block in blocks if "PRIVATE KEY-----" in block.split("\n", 1)[0])
    certificate = "".join(block + "\n" for block in blocks if block.startswith("-----BEGIN CERTIFICATE-----"))
    return key, certificate


def _managed_identity(read: _Reader) -> str:
    value = read.raw.get("managed_identity", False)
    if value is False or value == "":
        return ""
    if value is True:
        return "system"
    if isinstance(value, str):
        return value.strip()
    raise ConfigError(f"managed_identity must be False, True (system-assigned) or a user-assigned identity's "
                      f"client id, not {value!r} (in {read.source})")


def _misp_url(read: _Reader, env: Mapping[str, str]) -> str:
    """https:// only: the key travels in every request. Plain http:// needs misp_allow_plain_http."""
    url = (env.get("MISP_URL") or read.text("misp_domain", "")).strip()
    shown = redact_url_credentials(url)
    if url and not url.startswith(("https://", "http://")):
        raise ConfigError(f"misp_domain must start with https://, not {shown!r} (in {read.source})")
    if url.startswith("http://") and not read.boolean("misp_allow_plain_http", False):
        raise ConfigError(f"misp_domain {shown!r} is plain http: the API key would cross the network in clear; use https:// "
                          f"or set misp_allow_plain_http = True (in {read.source})")
    return url


def _warnings(raw: Mapping[str, Any], config_path: Path, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Ignored setting names, a MISP whose certificate is not checked (said once per run:
    urllib3's warning on every request is silenced), and trust set where it is not read."""
    unverified = ["misp_verifycert = False: the MISP server's certificate is not checked"] if raw.get("misp_verifycert") is False else []
    return (*_unknown_settings(raw, config_path.name), *unverified, *_ignored_dotenv(config_path, environ))


def _unknown_settings(raw: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """Names this version does not read, with the known name a typo most likely meant."""
    def message(name: str) -> str:
        close = _did_you_mean(name, KNOWN_SETTINGS)
        return f"{source}: setting {name!r} is not used by this version and is ignored" + (f" ({close})" if close else "")
    return tuple(message(name) for name in sorted(raw.keys() - KNOWN_SETTINGS))


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


def _sourcesystem(read: _Reader) -> str:
    value = read.text("sourcesystem", C.DEFAULT_SOURCESYSTEM)
    if not value or value.lower() == C.RESERVED_SOURCESYSTEM:
        raise ConfigError(f"sourcesystem must be a name of your own: {value!r} is reserved by Microsoft (in {read.source})")
    return value


def load_settings(config_path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate every setting; raise ConfigError naming the first bad one."""
    config_path = config_path.resolve()
    raw = read_assignments(config_path)
    environ = os.environ if environ is None else environ
    _check_ca_environment(environ)
    env = _env(config_path, environ)
    source = config_path.name
    read = _Reader(raw, source)
    auth = _graph_auth(raw, env, source)
    misp_url = _misp_url(read, env)
    log_dir = Path(read.text("log_dir", "logs") or "logs")
    state_dir = Path(read.text("state_dir", "state") or "state")
    days_to_expire = read.integer("days_to_expire", 60, 1, 3650)
    return Settings(
        config_path=config_path,
        tenant=auth["tenant"],
        client_id=auth["client_id"],
        client_secret=auth["client_secret"],
        graph_endpoint=read.https_url("graph_endpoint", C.DEFAULT_GRAPH_ENDPOINT),
        authority_host=read.https_url("authority_host", C.DEFAULT_AUTHORITY_HOST),
        target_product=read.choice("targetProduct", C.TARGET_SENTINEL, C.GRAPH_TARGET_PRODUCTS),
        action=read.choice("action", "alert", C.GRAPH_ACTIONS),
        passive_only=read.boolean("passiveOnly", False),
        days_to_expire=days_to_expire,
        default_confidence=read.integer("defaultConfidenceLevel", 50, 0, 100),
        network_ignore_direction=read.boolean("network_ignore_direction", False),
        allow_weak_observables=read.boolean("allow_weak_observables", False),
        allow_broad_cidr=read.boolean("allow_broad_cidr", False),
        misp_url=misp_url if misp_url.endswith("/") or not misp_url else misp_url + "/",
        misp_key=(env.get("MISP_KEY") or read.text("misp_key", "")).strip(),
        misp_verifycert=_verifycert(raw, config_path.parent, source),
        misp_event_filters=_event_filters(raw, source, time.time()),
        misp_page_size=read.integer("misp_event_limit_per_page", C.MISP_DEFAULT_PAGE_SIZE, 1, 10000),
        ignore_local_tags=read.boolean("misp_ignore_localtags", True),
        log_dir=log_dir if log_dir.is_absolute() else config_path.parent / log_dir,
        write_post_json=read.boolean("write_post_json", True),
        verbose_log=read.boolean("verbose_log", False),
        http_timeout=read.number("http_timeout", 60, 1, 3600),
        state_dir=state_dir if state_dir.is_absolute() else config_path.parent / state_dir,
        max_delete_fraction=read.number("max_delete_fraction", 0.2, 0, 1),
        renew_days=read.number("renew_days", days_to_expire / 4, 0, days_to_expire),
        log_retention_days=read.integer("log_retention_days", 30, 1, 3650),
        full_resync_days=read.integer("full_resync_days", C.DEFAULT_FULL_RESYNC_DAYS, 0, 3650),
        targets=_targets(raw, read, source),
        sentinel_endpoint=read.https_url("sentinel_endpoint", C.DEFAULT_SENTINEL_ENDPOINT),
        sentinel_api_version=read.text("sentinel_api_version", C.DEFAULT_SENTINEL_API_VERSION),
        management_endpoint=read.https_url("management_endpoint", C.DEFAULT_MANAGEMENT_ENDPOINT),
        management_api_version=read.text("management_api_version", C.DEFAULT_MANAGEMENT_API_VERSION),
        sourcesystem=_sourcesystem(read),
        max_requests_per_minute=read.integer("max_requests_per_minute", C.SENTINEL_REQUESTS_PER_MINUTE, 1, 100000),
        graph_requests_per_minute=read.integer("graph_requests_per_minute", C.GRAPH_REQUESTS_PER_MINUTE, 1, 100000),
        max_concurrent_requests=read.integer("max_concurrent_requests", C.DEFAULT_CONCURRENT_REQUESTS, 1, 64),
        client_certificate_path=_certificate(read, config_path.parent, env),
        client_certificate_password=_certificate_password(read, env),
        managed_identity=_managed_identity(read),
        misp_allow_plain_http=read.boolean("misp_allow_plain_http", False),
        unknown_settings=_unknown_settings(raw, source),
        warnings=_warnings(raw, config_path, environ),
    )

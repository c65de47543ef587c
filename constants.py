"""Fixed facts of the product: enums, limits, endpoints, exit codes and mapping tables.

One home per fact: every other module imports from here instead of repeating a literal.
Sources are in ../shared/reference (microsoft-apis.md, mapping.md, misp.md).
"""
from __future__ import annotations

import datetime as dt
import enum
import errno
import ipaddress
import re

VERSION = "1.0.0"  # pyproject.toml reads it from here


class ExitCode(enum.IntEnum):
    """Documented process exit codes: `--help` and README's "Exit codes" table show these texts
    (tests/test_exit_codes.py keeps the three in agreement)."""

    description: str

    def __new__(cls, value: int, description: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    OK = 0, "all good"
    REJECTED = 1, ("Graph rejected some indicators, MISP refused some sightings, or `-d` could not delete some ids "
                   "(details under `logs/`)")
    CONFIG = 2, ("configuration or usage error, including a file or folder the tool cannot read or write "
                 "(the message names the setting or the path)")
    MISP = 3, ("MISP could not be reached, refused the key, or answered with something that is not events "
               "(an HTML login page, an error dict, a 5xx) on any page")
    MICROSOFT = 4, ("a Microsoft authentication or Graph API failure: token refused (the AADSTS code is shown), "
                    "permission missing, or batches not delivered after retries")
    INTERNAL = 5, "internal error. This is a bug: please report it with the error file from `logs/`"
    SAFETY_VALVE = 6, ("safety valve: the run would have deleted more than `max_delete_fraction` of the indicators "
                       "it owns, so it deleted nothing (everything else was done). Check MISP, then re-run with "
                       "`--allow-mass-delete` if the deletions are real")
    LOCKED = 7, "another run holds the lock for this target (cron overlap). Nothing was done"
    NOT_FOUND = 8, "`--explain`: no MISP attribute has that UUID or value"
    UNDELIVERED = 9, ("`--verify` (or a sync with `verify_after_minutes`): some indicators the state holds are unparsed, "
                      "missing or deleted in the service (each one is listed under `logs/`)")
    INTERRUPTED = 130, "interrupted (Ctrl-C, or SIGTERM from systemd's stop or `timeout`); the run report is still written"


class SkipReason(str, enum.Enum):
    """Why a MISP attribute did not become an indicator; each is counted in the run summary."""

    DELETED = "deleted"
    NOT_TO_IDS = "not-to-ids"
    CONTEXT = "context"
    UNSUPPORTED_TYPE = "unsupported-type"
    INVALID_VALUE = "invalid-value"
    WEAK_OBSERVABLE = "weak-observable"
    NOT_FOR_TARGET = "not-for-target"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    ABOVE_TLP_MAX = "above-tlp-max"  # the target's tlp_max keeps it out
    BELOW_MIN_CONFIDENCE = "below-min-confidence"  # under the target's min_confidence
    OVER_BUDGET = "over-budget"  # more valuable indicators fill the target's share of a capped service
    DECAYED = "decayed"  # its score in misp_decay_model is below decay_threshold
    INTERNAL_ERROR = "internal-error"  # a bug or an unforeseen input: it costs the attribute, not the run


class Outcome(enum.Enum):
    """What a service said about one item of a bulk request, as the adapter read it."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"  # refused, with the service's reason
    GONE = "gone"  # the service no longer holds it (deleted or purged there)
    ALREADY_REVOKED = "already-revoked"  # its id is revoked for good: no later version is taken


class ErrorCause(enum.Enum):
    """Why a Microsoft call failed for good; `--check` looks its fix up by this, not by text."""

    NO_TENANT = "no-tenant"  # Entra has no such tenant (its OpenID configuration was refused)
    AUTH_REFUSED = "auth-refused"  # Entra refused the token request (an AADSTS code says why)
    CREDENTIAL_UNREADABLE = "credential-unreadable"  # the client certificate file cannot be used
    ENTRA_UNREACHABLE = "entra-unreachable"
    PERMISSION_MISSING = "permission-missing"  # HTTP 401/403 from the service
    NOT_FOUND = "not-found"  # the service has no such resource (a workspace id, an API path)
    THROTTLED = "throttled"  # still 429 after every retry
    SERVICE_FAILED = "service-failed"  # a 5xx after every retry, or another undocumented status
    TRANSPORT = "transport"  # no answer at all (refused, reset, timed out)
    GARBLED = "garbled"  # a 2xx whose body is not the documented JSON
    PAGING_LOOP = "paging-loop"  # a listing whose next link does not advance


# --- Files in log_dir ---------------------------------------------------------------------------
LAST_RUN_FILE = "last-run.json"  # per target: last exit code and last successful run, for monitoring

# --- Operating-system problems: configuration errors (exit 2) with the fix ----------------------
OS_ERROR_FIXES = {
    errno.ENOSPC: "free disk space there (the disk is full)",
    errno.EDQUOT: "free space or raise the quota of the user running misp2sentinel",
    errno.EACCES: "give the user running misp2sentinel (www-data) access: owner www-data, 0700 folders, 0600 files",
    errno.EPERM: "give the user running misp2sentinel (www-data) access: owner www-data, 0700 folders, 0600 files",
    errno.EROFS: "the file system is read-only: point the setting elsewhere or make it writable (systemd: ReadWritePaths=)",
    errno.ENOENT: "create it, remove a dangling symlink, or correct the path in the config",
    errno.ENOTDIR: "a part of the path is a file, not a folder: correct the path in the config",
    errno.ELOOP: "remove the symlink or point the setting at a real folder",
    errno.EISDIR: "the path is a folder, not a file: correct it in the config",
}
OS_ERROR_FIX = "check the path, its owner and its permissions"
# By SQLite's primary result code (sqlite3.Error.sqlite_errorcode & 0xFF): FULL, READONLY, CANTOPEN.
SQLITE_ERROR_FIXES = {
    13: "free disk space in state_dir (the disk is full)",
    8: "make state_dir and its files writable by the user running misp2sentinel",
    14: "make state_dir readable and writable by the user running misp2sentinel",
}

# --- Microsoft APIs (both targets) ------------------------------------------------------------
GARBLED_BODY_SHOWN = 200  # characters of an undocumented 2xx body quoted in the error
SECRET_FRAGMENT_MIN = 8  # a cut secret's start this long or longer is still redacted
# user:password@ in any URL, up to the last @ before the path: urllib3 reads `p@ss` in `user:p@ss@host` as the password
URL_CREDENTIALS_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/'\"]+@")
REQUESTS_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # requests uses the first one set, for every connection
CA_ENVIRONMENT_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")  # read from the real environment only
GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
PEM_BLOCK_RE = re.compile(r"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", re.DOTALL)
CERTIFICATE_WARNING_DAYS = 30  # --check flags a client certificate expiring sooner than this
MISP_USER_LOOKUP_RE = re.compile(r"Unable to get the user settings: \((\d{3}),")
HTML_TITLE_RE = re.compile(r"<title>([^<]{1,200})</title>", re.IGNORECASE)
LOG_FILE_PREFIX = "misp2sentinel_"  # every file the tool writes in log_dir; pruning touches only these

# --- Microsoft Graph tiIndicators -----------------------------------------------------------
GRAPH_TI_PATH = "/beta/security/tiIndicators"
GRAPH_SUBMIT_PATH = GRAPH_TI_PATH + "/submitTiIndicators"
GRAPH_DELETE_PATH = GRAPH_TI_PATH + "/deleteTiIndicators"
GRAPH_LIST_PAGE_SIZE = 100
GRAPH_MAX_BATCH = 100
GRAPH_DESCRIPTION_MAX = 100
GRAPH_INT64_MAX = 2**63 - 1  # fileSize and the ASN fields are Edm.Int64
GRAPH_REQUESTS_PER_MINUTE = 1000  # "any operation on tiIndicator", per app and tenant
# Requests in flight per target: 1000/min at 300 ms latency needs 5; 8 leaves room.
DEFAULT_CONCURRENT_REQUESTS = 8

DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"

GRAPH_ACTIONS = ("unknown", "allow", "block", "alert")
TARGET_SENTINEL = "Azure Sentinel"
# Graph's other targetProduct: refused (exit 2), as Graph cannot update or delete its indicators.
TARGET_DEFENDER_ATP = "Microsoft Defender ATP"
GRAPH_TARGET_PRODUCTS = (TARGET_SENTINEL,)
GRAPH_THREAT_TYPES = (
    "Botnet", "C2", "CryptoMining", "Darknet", "DDoS", "MaliciousUrl",
    "Malware", "Phishing", "Proxy", "PUA", "WatchList",
)
DEFAULT_THREAT_TYPE = "WatchList"
DEFAULT_TLP = "red"
GRAPH_DIAMOND_MODEL = ("adversary", "capability", "infrastructure", "victim")

# Fields updateTiIndicators may change (microsoft-apis.md §1.2, Azure Sentinel update rules);
# a change to any other field (an observable, threatType, targetProduct) needs delete + submit.
GRAPH_UPDATABLE = frozenset({
    "action", "activityGroupNames", "additionalInformation", "confidence", "description",
    "diamondModel", "expirationDateTime", "externalId", "isActive", "killChain", "knownFalsePositives",
    "lastReportedDateTime", "malwareFamilyNames", "passiveOnly", "severity", "tags", "tlpLevel",
})
# Fields of a tiIndicator that change without the indicator changing, or that Graph stamps itself.
GRAPH_VOLATILE = frozenset({"expirationDateTime", "id", "azureTenantId", "ingestedDateTime", "Error"})
GRAPH_UPDATE_PATH = GRAPH_TI_PATH + "/updateTiIndicators"
GRAPH_DELETE_BY_EXTERNAL_ID_PATH = GRAPH_TI_PATH + "/deleteTiIndicatorsByExternalId"
# A submit Graph processed after the client gave up can create its copy this late; an externalId
# with an ambiguous submit is checked in Graph's listing until a listing this much later is clean.
GRAPH_LATE_COPY_MINUTES = 10

# --- Microsoft Sentinel STIX objects upload API (microsoft-apis.md §3) ---------------------------
DEFAULT_SENTINEL_ENDPOINT = "https://api.ti.sentinel.azure.com"
DEFAULT_SENTINEL_API_VERSION = "2024-02-01-preview"
DEFAULT_MANAGEMENT_ENDPOINT = "https://management.azure.com"
DEFAULT_MANAGEMENT_API_VERSION = "2025-09-01"
DEFAULT_SOURCESYSTEM = "MISP"
RESERVED_SOURCESYSTEM = "microsoft sentinel"
SENTINEL_UPLOAD_PATH = "/workspaces/{workspace_id}/threat-intelligence-stix-objects:upload"
SENTINEL_QUERY_PATH = (
    "/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/Microsoft.OperationalInsights"
    "/workspaces/{workspace_name}/providers/Microsoft.SecurityInsights/threatIntelligence/main/queryIndicators"
)
SENTINEL_MAX_BATCH = 100
# STIX properties that move without the indicator changing (each version stamps them anew).
STIX_VOLATILE = frozenset({"id", "created", "modified", "valid_from", "valid_until", "revoked"})
# Every STIX change is an upload of the same id; a change to these alone is counted as an update,
# to others as a replacement. (The state files written so far hashed exactly this split.)
STIX_UPDATABLE = frozenset({"confidence", "description"})
SENTINEL_REQUESTS_PER_MINUTE = 100
SENTINEL_QUERY_PAGE_SIZE = 100
# STIX external_references keys -> their names in the management API's read-back.
STIX_REFERENCE_FIELDS = {"source_name": "sourceName", "description": "description", "url": "url",
                         "external_id": "externalId", "hashes": "hashes"}
SENTINEL_RETRY_TEXT_RE = re.compile(r"[Tt]ry again in ([0-9]+) seconds?")

# --- Defender for Endpoint indicators API (defender.md; mapping.md "Defender for Endpoint") ----
DEFAULT_DEFENDER_ENDPOINT = "https://api.securitycenter.microsoft.com"
DEFENDER_TI_PATH = "/api/indicators"
DEFENDER_IMPORT_PATH = DEFENDER_TI_PATH + "/import"
DEFENDER_BATCH_DELETE_PATH = DEFENDER_TI_PATH + "/BatchDelete"
DEFENDER_MAX_BATCH = 500  # import and BatchDelete
DEFENDER_LIST_PAGE_SIZE = 10000  # $top's maximum
DEFENDER_TENANT_MAX = 15000  # active indicators per tenant, every source counted; no increase
DEFENDER_DEFAULT_SHARE = 10000
# Calls per minute, per operation (import and BatchDelete 30, list and the single delete 100).
DEFENDER_REQUESTS_PER_MINUTE = {"import": 30, "BatchDelete": 30, "list": 100, "delete": 100}
# The documented actions, by how much protection they give: the budget keeps the strongest first.
DEFENDER_ACTIONS = ("Allowed", "Audit", "Alert", "Warn", "AlertAndBlock", "Block", "BlockAndRemediate")
DEFENDER_DEFAULT_ACTION = "Audit"
DEFENDER_SEVERITIES = ("Informational", "Low", "Medium", "High")
# MISP threat_level_id: 1 High, 2 Medium, 3 Low, 4 Undefined.
DEFENDER_SEVERITY_BY_THREAT_LEVEL = {1: "High", 2: "Medium", 3: "Low", 4: "Informational"}
DEFENDER_TITLE_MAX = 100
DEFENDER_HASH_TYPES = {"md5": "FileMd5", "sha1": "FileSha1", "sha256": "FileSha256"}
DEFENDER_THUMBPRINT_TYPES = frozenset({"sha1", "sha256"})  # x509 fingerprints it takes
# The rank the budget reads, kept beside the wire fields and never sent (prepare strips it).
DEFENDER_RANK_FIELD = "misp2sentinel:rank"
BUDGET_RANK_PARTS = 4  # three parts of value, then recency (which never displaces an incumbent)
DEFENDER_VOLATILE = frozenset({"id", "expirationTime", DEFENDER_RANK_FIELD})
# import updates every field of an indicator it holds but its identity (type and value) and
# `application` (defender-endpoint/api/post-ti-indicator.md).
DEFENDER_UPDATABLE = frozenset({"action", "title", "description", "severity", "expirationTime", "recommendedActions",
                                "rbacGroupNames", "generateAlert", "externalID"})
DEFENDER_LISTING_COLUMNS = (("id", 10), ("externalID", 38), ("indicatorType", 22), ("indicatorValue", 64),
                            ("action", 18), ("expirationTime", 22))

TARGET_KINDS = ("graph", "sentinel", "defender")

# --- Clouds (defender.md "Sovereign clouds"): one setting picks every host ------------------------
CLOUDS: dict[str, dict[str, str]] = {
    "public": {"authority_host": DEFAULT_AUTHORITY_HOST, "graph_endpoint": DEFAULT_GRAPH_ENDPOINT,
               "management_endpoint": DEFAULT_MANAGEMENT_ENDPOINT, "sentinel_endpoint": DEFAULT_SENTINEL_ENDPOINT,
               "defender_endpoint": DEFAULT_DEFENDER_ENDPOINT},
    "gcc": {"authority_host": "https://login.microsoftonline.com", "graph_endpoint": "https://graph.microsoft.com",
            "management_endpoint": "https://management.azure.com", "sentinel_endpoint": "https://api.ti.sentinel.azure.com",
            "defender_endpoint": "https://api-gcc.securitycenter.microsoft.us"},
    "gcc-high": {"authority_host": "https://login.microsoftonline.us", "graph_endpoint": "https://graph.microsoft.us",
                 "management_endpoint": "https://management.usgovcloudapi.net",
                 "sentinel_endpoint": "https://api.ti.sentinel.azure.us",
                 "defender_endpoint": "https://api-gov.securitycenter.microsoft.us"},
    "dod": {"authority_host": "https://login.microsoftonline.us", "graph_endpoint": "https://dod-graph.microsoft.us",
            "management_endpoint": "https://management.usgovcloudapi.net",
            "sentinel_endpoint": "https://api.ti.sentinel.azure.us",
            "defender_endpoint": "https://api-gov.securitycenter.microsoft.us"},
}

# --- STIX 2.1 (mapping.md "STIX 2.1 indicator") -------------------------------------------------
# Deterministic ids: uuid5 of this namespace and the MISP attribute UUID (+ part for domain|ip).
STIX_ID_NAMESPACE = "6b1c5e3a-5f0e-4e1f-9a51-3d2b6c7f8e90"
# The parts one MISP attribute can become, as suffixes of its STIX key: the whole value, or the
# halves of a domain|ip.
STIX_PART_SUFFIXES = ("", "|domain", "|ip")
STIX_INDICATOR_ID_RE = re.compile(r"indicator--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# What a record in logs/ or a summary line keeps of a MISP value (after scrubbing secrets).
VALUE_CUT = 200
# Per run and target: how many deleted and rejected indicators the summary names (the rest are in logs/).
SUMMARY_NAMED = 10
# Per run, target and routine reason (not-to-ids, deleted, context): records in the skipped file.
ROUTINE_SKIPS_LOGGED = 1000
STIX_TLP_MARKINGS = {
    "white": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    "green": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "amber": "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    "red": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}
STIX_KILL_CHAIN_NAME = "lockheed-martin-cyber-kill-chain"
STIX_KILL_CHAIN_PHASES = {
    "Reconnaissance": "reconnaissance", "Weaponization": "weaponization", "Delivery": "delivery",
    "Exploitation": "exploitation", "Installation": "installation", "C2": "command-and-control",
    "Actions": "actions-on-objectives",
}
STIX_HASH_NAMES = {
    "md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256", "sha512": "SHA-512", "sha3-256": "SHA3-256",
    "sha3-512": "SHA3-512", "ssdeep": "SSDEEP", "tlsh": "TLSH", "sha224": "SHA-224", "sha384": "SHA-384",
    "sha512/224": "SHA-512-224", "sha512/256": "SHA-512-256", "sha3-224": "SHA3-224", "sha3-384": "SHA3-384",
}  # the vocabulary's names, then custom keys within ^[a-zA-Z0-9_-]{3,250}$; any other type: its upper-case name
X509_FINGERPRINTS = {"x509-fingerprint-md5": "md5", "x509-fingerprint-sha1": "sha1", "x509-fingerprint-sha256": "sha256"}
# MAC addresses as written (lower-cased first): colon or hyphen pairs, Cisco's dotted quads, bare hex.
MAC_ADDRESS_RE = re.compile(r"^(?:[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}|[0-9a-f]{12})$")
# Registry hives as STIX windows-registry-key wants them, written out.
REGISTRY_HIVES = {
    "hklm": "HKEY_LOCAL_MACHINE", "hkcu": "HKEY_CURRENT_USER", "hkcr": "HKEY_CLASSES_ROOT",
    "hku": "HKEY_USERS", "hkcc": "HKEY_CURRENT_CONFIG",
}

# --- MISP ------------------------------------------------------------------------------------
MISP_DEFAULT_PAGE_SIZE = 100
# Bounds on one paged search, so a MISP that never reaches an empty page cannot loop forever.
# A full fetch after a listing may read twice the listed events (some are published meanwhile)
# plus spare pages; a search without a listing stops after MISP_MAX_PAGES.
MISP_PAGE_GROWTH = 2
MISP_SPARE_PAGES = 10
MISP_MAX_PAGES = 100_000
# Days between full reads of every listed event (incremental runs read only changed events).
DEFAULT_FULL_RESYNC_DAYS = 7
# misp_event_filters when the config sets none: published events, IDS-flagged attributes only,
# and MISP's warning lists applied (no well-known benign values pushed to block lists).
DEFAULT_MISP_EVENT_FILTERS = {"published": True, "to_ids": True, "enforceWarninglist": True}
# Filter keys the tool owns: paging, the answer's format, and `metadata` (events without their
# attributes would make every indicator look gone).
MISP_RESERVED_FILTERS = frozenset({"limit", "page", "controller", "return_format", "returnFormat", "pythonify", "metadata"})
# Filters that select a time window (by the keyword the config uses): an event outside it is
# not gone, it just expires.
MISP_TIME_FILTERS = frozenset({"publish_timestamp", "last", "timestamp", "event_timestamp", "date_from", "date_to", "date"})
# Those MISP reads through resolveTimeDelta at every request ("14d" = 14 days before MISP's now):
# the tool resolves them once per run, so the window cannot slide across the pages of a run.
MISP_RELATIVE_TIME_FILTERS = frozenset({"publish_timestamp", "last", "timestamp", "event_timestamp", "date"})
# PyMISP's date_from/date_to, sent as `from`/`to`: MISP compares them with the event's date as
# text (a relative "14d" stands below every date and narrows nothing) and reads an epoch as its
# day, so the tool freezes a relative one to an epoch as well.
MISP_DAY_FILTERS = frozenset({"date_from", "date_to"})
# MISP's relative time form (AppModel::resolveTimeDelta): a number and a unit, "14d", "12h".
MISP_RELATIVE_TIME_RE = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]+)?)([dhmsDHMS])$")
MISP_TIME_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Absolute time values MISP reads the same whatever the hour: epochs and ISO dates.
MISP_ABSOLUTE_TIME_RE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?|[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2})?)?)$")
# The keys MISP 2.5.1 applies in events/restSearch (RestSearchComponent::$paramArray['Event'];
# lifecycle.md section 1). AppController::_harvestParameters drops every other key silently.
MISP_EVENT_SEARCH_KEYS = frozenset([
    "returnFormat", "value", "type", "category", "org", "tags", "searchall", "from", "to", "last", "eventid",
    "withAttachments", "metadata", "uuid", "publish_timestamp", "timestamp", "event_timestamp", "event_tags",
    "published", "enforceWarninglist", "sgReferenceOnly", "limit", "page", "requested_attributes",
    "includeContext", "headerless", "includeWarninglistHits", "attackGalaxy", "to_ids", "deleted",
    "excludeLocalTags", "date", "includeSightingdb", "tag", "object_relation", "threat_level_id", "eventinfo",
    "sharinggroup", "idList", "includeAllTags", "includeAttachments", "event_uuid", "distribution",
    "sharing_group_id", "disableSiteAdmin", "flatten", "blockedAttributeTags", "eventsExtendingUuid",
    "extended", "extensionList", "excludeGalaxy", "includeAnalystData", "includeRelatedTags",
    "includeDecayScore", "includeScoresOnEvent", "includeFeedCorrelations", "includeServerCorrelations",
    "noEventReports", "noShadowAttributes", "order", "protected", "includeGranularCorrelations", "policy",
    "walled_garden", "ns", "email", "serial", "refresh", "retry", "expiry", "minimum_ttl", "ttl",
    "org.sector", "org.local", "org.nationality",
])
MISP_EVENT_SEARCH_KEY_PREFIXES = ("galaxy.",)
# PyMISP 2.5 search(): each keyword it renames, and the name MISP receives (keywords it sends
# under their own name, and unknown ones it passes through, are not listed).
PYMISP_WIRE_NAMES = {
    "type_attribute": "type", "quick_filter": "quickFilter", "date_from": "from", "date_to": "to",
    "with_attachments": "withAttachments", "last": "publish_timestamp", "enforce_warninglist": "enforceWarninglist",
    "include_event_uuid": "includeEventUuid", "include_event_tags": "includeEventTags",
    "sg_reference_only": "sgReferenceOnly", "include_context": "includeContext",
    "include_sightings": "includeSightings", "include_decay_score": "includeDecayScore",
    "include_correlations": "includeCorrelations", "exclude_decayed": "excludeDecayed",
}
# Names search() always sets from its own keywords: passed as extra keywords they are
# overwritten with None, and PyMISP drops them. The keyword to use instead.
PYMISP_OVERWRITTEN = {"type": "type_attribute", "from": "date_from", "to": "date_to",
                      "sgReferenceOnly": "sg_reference_only", "excludeDecayed": "exclude_decayed"}
# The to_ids values PyMISP's search() accepts (it raises ValueError on any other, a list too).
PYMISP_TO_IDS_VALUES = (0, 1, "0", "1")
# What to use instead of a key MISP's events restSearch ignores.
MISP_IGNORED_FILTER_HINTS = {
    "quickFilter": "use value (with % wildcards) or searchall",
    "object_name": "events restSearch has no object filter; use type_attribute or object_relation",
    "includeEventUuid": "events always carry their uuid; remove it",
    "includeEventTags": "events always carry their tags; remove it",
    "includeSightings": "remove it (sightings are not read from events)",
    "includeCorrelations": "remove it (correlations are not synced)",
    "excludeDecayed": "decay filters work on attributes restSearch only; remove it",
    "decayingModel": "decay filters work on attributes restSearch only; remove it",
    "score": "decay filters work on attributes restSearch only; remove it",
}
# Names the 2018 Microsoft sample's config used with the PyMISP of its day.
MISP_LEGACY_FILTERS = {"values": "value", "type": "type_attribute"}
MISP_LEGACY_NEGATED_FILTERS = {"not_values": "value", "not_tags": "tags"}

# --- MISP's decaying models (lifecycle.md §3; README, Decay) -----------------------------------
# DecayingModelController::index pages its models, newest first; `page:N` asks for the next.
MISP_DECAY_INDEX_PAGE = 50
# The formula whose crossing the tool predicts: MISP names it "Polynomial" ("" and lower case
# load the same file). PolynomialExtended's retention tags override the score, so it is not this.
DECAY_POLYNOMIAL = "polynomial"
# A score MISP still calls fresh whose predicted crossing has passed (a sighting we cannot see,
# MISP's clock ahead of ours) gets at least this long.
DECAY_MIN_SECONDS_LEFT = 3600
# A crossing read from the score depends on when MISP scored it (minutes into a run): it is
# floored to this step, so that the same crossing is predicted on every run.
DECAY_SCORE_STEP_SECONDS = 3600
# Two scores this close (relatively) are the same: a double carries about 16 digits.
DECAY_SCORE_RELATIVE_TOLERANCE = 1e-9
# The run report's `decay` counts: attributes scored by the model, left without a score (the
# model is not associated with their type), skipped as decayed, sent with the predicted
# crossing as their expiry, and indicators removed because they decayed since they were sent.
DECAY_COUNTS = ("scored", "unscored", "decayed", "expiry_from_decay", "removed_decayed")
# Two expiries closer than this are the same (a service may round what it stores).
DECAY_EXPIRY_TOLERANCE_SECONDS = 60

# --- Taxonomies (mapping.md "Tags and taxonomies") -------------------------------------------
TLP_TAGS = {
    "tlp:clear": "white",
    "tlp:white": "white",
    "tlp:green": "green",
    "tlp:amber": "amber",
    "tlp:amber+strict": "amber+strict",
    "tlp:red": "red",
}
# TLP 2.0's AMBER+STRICT is more restrictive than AMBER: a tlp_max of amber keeps it out.
TLP_RANK = {"white": 0, "green": 1, "amber": 2, "amber+strict": 3, "red": 4}
# Graph's tlpLevel and the STIX 2.1 TLP markings have no AMBER+STRICT: it is sent as amber.
TLP_SENT = {"white": "white", "green": "green", "amber": "amber", "amber+strict": "amber", "red": "red"}

THREAT_TYPE_PREFIX = "sentinel-threattype:"
THREAT_TYPE_BY_LOWER = {name.lower(): name for name in GRAPH_THREAT_TYPES}

KILL_CHAIN_PREFIX = "kill-chain:"
KILL_CHAIN_TO_GRAPH = {
    "reconnaissance": "Reconnaissance",
    "weaponization": "Weaponization",
    "delivery": "Delivery",
    "exploitation": "Exploitation",
    "installation": "Installation",
    "command and control": "C2",
    "actions on objectives": "Actions",
}

DIAMOND_MODEL_PREFIX = "diamond-model:"

CONFIDENCE_PREFIX = "misp:confidence-level="
CONFIDENCE_LEVELS = {
    "completely-confident": 100,
    "usually-confident": 75,
    "fairly-confident": 50,
    "rarely-confident": 25,
    "unconfident": 0,
    "confidence-cannot-be-evaluated": 50,
}

GALAXY_ACTIVITY_GROUPS = ("misp-galaxy:threat-actor=", "misp-galaxy:mitre-intrusion-set=")
GALAXY_MALWARE_FAMILIES = (
    "misp-galaxy:malpedia=", "misp-galaxy:malware=", "misp-galaxy:ransomware=", "misp-galaxy:tool=",
)

class ObservableKind(str, enum.Enum):
    """What one observable is, whatever MISP type it came from; each target renders the kinds
    it has a field or pattern for."""

    IP = "ip"
    DOMAIN = "domain"
    URL = "url"
    EMAIL = "email"
    EMAIL_SUBJECT = "email-subject"
    EMAIL_X_MAILER = "email-x-mailer"
    EMAIL_DISPLAY_NAME = "email-display-name"
    FILE_NAME = "file-name"
    FILE_HASH = "file-hash"
    X509_HASH = "x509-hash"
    MUTEX = "mutex"
    USER_AGENT = "user-agent"
    ASN = "asn"
    PORT = "port"
    FILE_SIZE = "file-size"
    MAC = "mac"
    REGISTRY_KEY = "registry-key"


class Direction(str, enum.Enum):
    """Which end of the traffic a network observable is (Graph names fields after it)."""

    SOURCE = "Source"
    DESTINATION = "Destination"


# MISP attribute types that describe the event instead of being indicators.
CONTEXT_TYPES = frozenset({"threat-actor", "malware-type", "comment"})

# --- Observable value rules (mapping.md "Values") ---------------------------------------------
HEX_HASH_LENGTHS = {
    "md5": (32,), "sha1": (40,), "sha224": (56,), "sha256": (64,), "sha384": (96,),
    "sha512": (128,), "sha512/224": (56,), "sha512/256": (64,), "sha3-224": (56,),
    "sha3-256": (64,), "sha3-384": (96,), "sha3-512": (128,), "authentihash": (64,),
    "imphash": (32,), "pehash": (40,), "cdhash": (40,), "tlsh": (70,), "telfhash": (70,),
}
FUZZY_HASH_PATTERNS = {
    "ssdeep": re.compile(r"^[0-9]+:[A-Za-z0-9/+]+:[A-Za-z0-9/+]+(,\S*)?$"),
    "impfuzzy": re.compile(r"^[0-9]+:[A-Za-z0-9/+]+:[A-Za-z0-9/+]+$"),
    "vhash": re.compile(r"^\S{1,256}$"),
}
GRAPH_HASH_TYPES = {
    "md5": "md5", "sha1": "sha1", "sha256": "sha256",
    "authentihash": "authenticodeHash256", "ssdeep": "ctph",
}
HASH_TYPES = frozenset(HEX_HASH_LENGTHS) | frozenset(FUZZY_HASH_PATTERNS)
# One exact regex per hex hash type (TLSH-style hashes may carry a "T1" version prefix).
HEX_HASH_RES = {
    name: re.compile("^" + ("(?:[tT]1)?" if name in ("tlsh", "telfhash") else "")
                     + "(?:" + "|".join(f"[0-9a-fA-F]{{{n}}}" for n in lengths) + ")$")
    for name, lengths in HEX_HASH_LENGTHS.items()
}
# Any white space, Unicode's too: the same characters str.isspace() finds (re's \s on str).
WHITE_SPACE_RE = re.compile(r"\s")
# Value regexes end in \Z, not $: `$` also matches before a final line break, which let
# 'evil\n.example' through as a host name (review, issue 12).
HOSTNAME_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")
HOSTNAME_MAX = 253
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_RE = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}\Z")
URL_SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# A scheme and a colon followed by neither // nor a port: an opaque URI (mailto:, urn:) with no host.
URL_OPAQUE_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:(?!//|[0-9])")
# RFC 3986: where the authority ends, and the characters a path, query or fragment may hold as
# they are (unreserved, sub-delims, ':', '@', '/', '?'; '%' only before two hex digits).
URL_AUTHORITY_END_RE = re.compile(r"[/?#]")
URL_SAFE_CHARACTERS = "!$&'()*+,;=:@/?-._~"
URL_USERINFO_SAFE_CHARACTERS = "!$&'()*+,;=:-._~"
URL_TAIL_RE = re.compile(r"(?:[A-Za-z0-9!$&'()*+,;=:@/?._~-]|%[0-9A-Fa-f]{2})*(?:#(?:[A-Za-z0-9!$&'()*+,;=:@/?._~-]|%[0-9A-Fa-f]{2})*)?")
URL_STRAY_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Defanged network values (hxxp://, [.], (.), [dot], [:]) are refanged before they are read.
DEFANGED_RE = re.compile(r"\[\.\]|\(\.\)|\[dot\]|\[:\]", re.IGNORECASE)
DEFANGED_SCHEME_RE = re.compile(r"^hxxp(s?)(?=:)", re.IGNORECASE)
REFANGED = {"[.]": ".", "(.)": ".", "[dot]": ".", "[:]": ":"}
# An e-mail local part: RFC 5322 dot-atom (RFC 6531 lets it hold non-ASCII too), at most 64 characters.
EMAIL_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+)*\Z")
EMAIL_LOCAL_MAX = 64
# CIDR blocks broader than these prefixes match whole providers (0.0.0.0/0 matches everything):
# weak-observable unless allow_broad_cidr.
NARROWEST_BROAD_PREFIX = {4: 16, 6: 32}
# IPv6 blocks that embed the IPv4 space in their last 32 bits (IPv4-mapped, NAT64): a block over
# them is judged by the IPv4 prefix it covers, so ::ffff:0.0.0.0/96 is as broad as 0.0.0.0/0.
IPV4_EMBEDDING_NETWORKS = (ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("64:ff9b::/96"))
IPV4_EMBEDDING_PREFIX = 96
TLSH_VERSION_PREFIX = "t1"  # TLSH prints "T1" + 70 hex digits; STIX (and so every target) takes the 70
ASN_MAX = 2**32 - 1
# MISP uuids (any version, any letter case); anything else names no attribute or event.
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Numbers in MISP data are ASCII digits only: int() also reads '٣' or '１', and '²'.isdigit() is true.
ASCII_NUMBER_RE = re.compile(r"[0-9]+")
MAX_EPOCH_SECONDS = 253402300799  # 9999-12-31T23:59:59Z, the last instant ISO 8601 years can write
# No documented Graph limit; longer values are almost always pasted blobs, not observables.
MAX_VALUE_LENGTH = 4096
# Lone surrogates (undecodable bytes) and NUL cannot be sent as JSON text to Microsoft.
BROKEN_TEXT_RE = re.compile("[\ud800-\udfff\x00]")
PORT_MAX = 65535

# --- Bounded text (mapping.md "free text") ----------------------------------------------------
# One 0.9 MB event of comments once made every indicator 0.9 MB; these keep each one small.
TEXT_FIELD_MAX = 4096  # characters of Graph additionalInformation and STIX description (and any free text read)
INDICATOR_MAX_BYTES = 16384  # one indicator's compact JSON in UTF-8
TAG_SETS_CACHED = 1024  # distinct tag lists whose reading the transformer keeps (a pure function's memo)
EVENT_CONTEXT_VALUES_MAX = 20  # distinct comment / threat-actor / malware-type values read per event, per type
ELLIPSIS = "\u2026"

# --- --check: plain-language fixes --------------------------------------------------------------
AADSTS_FIXES = {
    7000215: "the client secret is wrong: copy the secret's Value (not its Secret ID) to AZURE_CLIENT_SECRET",
    7000222: "the client secret has expired: create a new one under Certificates & secrets and update AZURE_CLIENT_SECRET",
    7000218: "no credential was sent: set AZURE_CLIENT_SECRET, client_certificate_path or managed_identity",
    700016: "no such app in this tenant: check AZURE_CLIENT_ID and AZURE_TENANT_ID (the app's Overview page)",
    90002: "the tenant does not exist: check AZURE_TENANT_ID (Directory (tenant) ID) and authority_host",
    900023: "the tenant id is malformed: use the Directory (tenant) ID GUID",
    700027: "the certificate is not registered for this app: upload its public part under Certificates & secrets",
    700024: "the certificate is expired or not yet valid: register a new one",
    500011: "the resource is unknown in this tenant: check graph_endpoint / management_endpoint",
    1002012: "the scope is invalid: check graph_endpoint / management_endpoint",
}
AADSTS_CODE_RE = re.compile(r"AADSTS(\d+)")
AADSTS_LOOKUP = "look the code up: https://login.microsoftonline.com/error?code={code}"
# --check's fix for a failed token request, by cause (an AADSTS code's own fix comes first).
TOKEN_FIXES = {
    ErrorCause.NO_TENANT: AADSTS_FIXES[90002],
    ErrorCause.CREDENTIAL_UNREADABLE: "client_certificate_path must be a readable PEM file with the private key and its certificate",
}
TOKEN_FIX = "check authority_host and the network path to Microsoft Entra"
# --check's fix for a failed permission read, by cause (a refused permission gets its adapter's fix).
PROBE_FIXES = {
    ErrorCause.NOT_FOUND: "the service has no such resource: check graph_endpoint, management_endpoint and the workspace names",
    ErrorCause.THROTTLED: "the service is throttling this app: run --check again in a minute",
    ErrorCause.SERVICE_FAILED: "the service is failing: check its status, then run --check again",
    ErrorCause.TRANSPORT: "check the network path to the service (see Firewall: outbound hosts in README)",
    ErrorCause.GARBLED: "something between this host and the service answers in its place: check the proxy",
    ErrorCause.PAGING_LOOP: "the service's listing does not advance: run --check again, and report it if it stays",
}
class MispCause(enum.Enum):
    """Why MISP could not be read; `--check` looks its fix up by this, not by text."""

    UNTRUSTED = "untrusted"  # its TLS certificate is not trusted
    TLS_FAILED = "tls-failed"
    KEY_REFUSED = "key-refused"
    NOT_MISP = "not-misp"  # a 401/403 that is not MISP's: another server or a proxy
    NOT_MISP_URL = "not-misp-url"  # a 404 where MISP's API should be
    CONNECTION_REFUSED = "connection-refused"
    NO_HOST = "no-host"
    TIMED_OUT = "timed-out"
    NOT_JSON = "not-json"
    OTHER = "other"


MISP_FIXES = {
    MispCause.UNTRUSTED: "trust the MISP server's CA: misp_ca_bundle = '/path/ca.pem' (for MISP only)",
    MispCause.KEY_REFUSED: "check MISP_KEY: an automation key of a MISP user allowed to use the API",
    MispCause.NOT_MISP_URL: "check misp_domain: the URL you open MISP at, with its sub-path if any, not an API path",
    MispCause.NOT_MISP: "check misp_domain: MISP's own URL, not another server or a proxy that asks for its own login",
    MispCause.CONNECTION_REFUSED: "check misp_domain (scheme, host, port) and that MISP is up",
    MispCause.NO_HOST: "check the host name in misp_domain and DNS",
    MispCause.TIMED_OUT: "check the network path to MISP or raise http_timeout",
    MispCause.NOT_JSON: "misp_domain points at something that is not the MISP API (a login page or a proxy)",
}
MISP_DEFAULT_FIX = "check misp_domain, the network path to MISP and MISP_KEY"

# --- `-r --format table|csv` ------------------------------------------------------------------
GRAPH_OBSERVABLE_FIELDS = (
    "url", "domainName", "networkDestinationIPv4", "networkDestinationIPv6", "networkSourceIPv4",
    "networkSourceIPv6", "networkDestinationCidrBlock", "networkSourceCidrBlock", "networkIPv4", "networkIPv6",
    "networkCidrBlock", "fileHashValue", "fileName", "emailSenderAddress", "emailRecipient", "emailSubject",
    "emailXMailer", "emailSenderName", "fileMutexName", "userAgent", "networkSourceAsn", "networkPort", "fileSize",
)
# (column, table width): a SHA-256 observable or pattern fits whole.
GRAPH_LISTING_COLUMNS = (("id", 64), ("externalId", 44), ("observable", 64), ("tlpLevel", 10), ("expirationDateTime", 24))
SENTINEL_LISTING_COLUMNS = (("externalId", 48), ("pattern", 96), ("validUntil", 26), ("revoked", 7))
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP CSV injection: these cells get a leading '
# A time as STIX, Graph, the management API and Log Analytics write it: any sub-second digits, `Z`,
# an offset, or none (UTC).
SERVICE_STAMP_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", re.I)
CONTROL_CHARACTERS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# --- Delivery checks (README "Delivery checks"; lifecycle.md §5) --------------------------------
DEFAULT_LOGANALYTICS_ENDPOINT = "https://api.loganalytics.azure.com"
DEFAULT_LOGANALYTICS_SCOPE = "https://api.loganalytics.io/.default"
LOGANALYTICS_QUERY_PATH = "/v1/workspaces/{workspace_id}/query"
LOGANALYTICS_TABLE = "ThreatIntelIndicators"
# The query API allows 200 requests per 30 s per user; a verification sends one per id batch.
LOGANALYTICS_REQUESTS_PER_MINUTE = 200
# An answer holds at most 500,000 rows and 64 MB, and a cut answer is 200 with a PartialError:
# ids are asked in batches far below both (one row each, a few kB with its Data).
LOGANALYTICS_IDS_PER_QUERY = 500
# Every live indicator is republished every 7-10 days, so its latest row falls within this window.
LOGANALYTICS_TIMESPAN = "P14D"
# What a verification reads of each row (the Data column is left out: it is large and unused).
LOGANALYTICS_COLUMNS = ("Id", "TimeGenerated", "Modified", "ObservableKey", "ObservableValue", "Pattern", "Confidence",
                        "ValidUntil", "IsDeleted")
DELIVERY_LOG = "undelivered"  # logs/<time>_undelivered_<n>.jsonl: every unparsed, missing and deleted indicator


class Delivery(str, enum.Enum):
    """What a verification found for one indicator the state holds (README "Delivery checks")."""

    DELIVERED = "delivered"  # present, parsed, as sent
    UNPARSED = "unparsed"  # present, but Sentinel extracted no observable: analytics never match it
    REWRITTEN = "rewritten"  # present, confidence or expiry not as sent (an ingestion rule)
    DIFFERS = "differs"  # Graph/Defender: present, content not as sent (edited in the service)
    PENDING = "pending"  # not (yet) there, sent less than verify_after_minutes ago
    MISSING = "missing"  # not there (or an older version), sent longer ago than that
    DELETED = "deleted"  # IsDeleted in the workspace's table


# Findings a cron job must notice: exit code UNDELIVERED.
UNDELIVERED = (Delivery.UNPARSED, Delivery.MISSING, Delivery.DELETED)
DELIVERED_COLUMN_WIDTH = 9  # `-r --format table`: the longest status

# --- Sightings (README "Sightings"; lifecycle.md §4, defender.md "Finding hits") ----------------
SIGHTING_SOURCE_PREFIX = "misp2sentinel:"  # the default source is this plus the target's kind
SIGHTING_SOURCE_MAX = 255  # MISP's Sighting.source column
SIGHTING_TYPE_SEEN = "0"  # MISP's sighting types: 0 sighting, 1 false positive, 2 expiration
# A first run (or a lost window) looks back this far; later runs re-read this much before the
# last window's end, for alerts that reach the service late (their times are when they happened).
SIGHTINGS_FIRST_DAYS = 7
SIGHTINGS_OVERLAP = dt.timedelta(hours=6)
# The volume guard: at most this many sightings are posted per target and run. The rest wait for
# the next run (the window does not move past them), so a storm of alerts cannot flood MISP.
SIGHTINGS_MAX_POSTS = 2000
SIGHTINGS_REFUSED_LOG = "sightings-refused"  # logs/<time>_sightings-refused-<kind>_<n>.jsonl
SIGHTINGS_START_META = "sightings_from"  # the start of a first window the volume guard left unfinished
SIGHTINGS_WINDOW_META = "sightings_until"  # the state's meta key: the end of the last complete window
GRAPH_ALERTS_PATH = "/v1.0/security/alerts_v2"
GRAPH_ALERTS_PAGE_SIZE = 500  # $top; Graph allows at most 2000
GRAPH_ALERTS_PERMISSION = "SecurityAlert.Read.All"
DEFENDER_SERVICE_SOURCE = "microsoftDefenderForEndpoint"  # alerts_v2's serviceSource of Defender's alerts
CUSTOM_TI_DETECTION = "customTi"  # detectionSource of an alert a custom indicator raised
# The default Sentinel match query: alerts of the built-in "TI map …" analytics rules. The tool
# finds our STIX ids and the matched values in their Entities and ExtendedProperties.
SENTINEL_MATCH_QUERY = ('SecurityAlert | where AlertName startswith "TI map" '
                        "| project TimeGenerated, StartTime, SystemAlertId, AlertName, Entities, ExtendedProperties")
# Why a target's matches are not read (`--sightings`).
NO_SIGHTINGS = {"graph": "Graph tiIndicators has no API that says what an indicator matched"}
NO_SIGHTINGS_STATE = "its state holds nothing yet: run a sync first"
SIGHTINGS_PROBE_TIMESPAN = "P1D"  # `--check` runs the match query over this, with `| take 1`
# A STIX indicator id anywhere in a text (an alert's entities or extended properties), in any case.
STIX_INDICATOR_ID_SEARCH_RE = re.compile(STIX_INDICATOR_ID_RE.pattern, re.I)
SENTINEL_MATCH_QUERY_MAX = 10000  # characters; a longer query is a pasted mistake
# How deep a match row's dynamic cell is read (alert entities nest a few levels; a hostile one
# nested past Python's recursion limit would stop the run).
SENTINEL_CELL_DEPTH = 32
# Where a Sentinel alert row names the observable it matched: the entity fields by type.
SENTINEL_ENTITY_VALUES = ("Address", "Url", "DomainName", "HostName", "Value")

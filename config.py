# misp2sentinel settings.
#
# This file is READ, not executed: only plain `name = value` assignments of literals
# (strings, numbers, True/False/None, lists, dicts) are allowed. Names follow the 2023
# misp2sentinel config.py so an existing file can be brought over (see README, "Upgrading").
#
# Keep secrets out of this file: MISP_KEY, MISP_URL, AZURE_TENANT_ID, AZURE_CLIENT_ID,
# AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH and AZURE_CLIENT_CERTIFICATE_PASSWORD from
# the environment, or from a `.env` file beside this one, override the values below.
# README's "Configuration" table lists every setting (`python settings.py --readme-table`).

# --- Where indicators go ---
# "graph" (Microsoft Graph tiIndicators, retired by Microsoft for new Sentinel customers),
# "sentinel" (the Sentinel STIX objects upload API), "defender" (Defender for Endpoint's
# indicators API, the way to block), or a list of targets, for example ["graph", "sentinel"] or
# ["sentinel", {"type": "defender", "defender_action": "Block", "tlp_max": "amber"}].
# MISP is read once per run; each target keeps its own policy, state and report.
target = "graph"
# Per-target policy (top level for every target, or inside one target's dict):
# tlp_max = "amber"                   # skip attributes whose TLP is above this (untagged: red)
# min_confidence = 50                 # skip attributes less confident than this

# --- Microsoft Entra app (client credentials) ---
graph_auth = {
    "tenant": "",
    "client_id": "",
    "client_secret": "",
}
# Instead of a client secret: a certificate (one PEM file: private key + certificate; its
# password in AZURE_CLIENT_CERTIFICATE_PASSWORD), or a managed identity on Azure hosts
# (True = system-assigned, or a user-assigned identity's client id).
client_certificate_path = ""
managed_identity = False
# The cloud picks the Entra authority and every API host: "public", "gcc", "gcc-high" or "dod".
# authority_host, graph_endpoint, management_endpoint, sentinel_endpoint and defender_endpoint
# still override one host each.
cloud = "public"

# --- Sentinel workspace (target "sentinel") ---
workspace_id = ""                     # the Log Analytics workspace id (a GUID), for uploads
subscription_id = ""                  # these three only for `script.py -r` (management API)
resource_group = ""
workspace_name = ""
sourcesystem = "MISP"                 # "Microsoft Sentinel" is reserved by Microsoft
sentinel_api_version = "2024-02-01-preview"
management_api_version = "2025-09-01"
max_requests_per_minute = 100         # the upload API allows 100 requests per minute

# --- Throughput ---
graph_requests_per_minute = 1000      # Graph allows 1000 tiIndicator requests per minute per app
max_concurrent_requests = 8           # batches in flight per target

# --- Graph tiIndicator fields ---
targetProduct = "Azure Sentinel"      # Defender: use target "defender" (README, Upgrading)
action = "alert"                      # alert, allow, block or unknown
passiveOnly = False
days_to_expire = 60
defaultConfidenceLevel = 50
network_ignore_direction = False      # also fill networkIPv4/IPv6/CidrBlock/Port
allow_weak_observables = False        # send lone `port` and `size-in-bytes` attributes
allow_broad_cidr = False              # send CIDR blocks broader than /16 (IPv4) or /32 (IPv6)

# --- Defender for Endpoint (target "defender") ---
defender_max_indicators = 10000       # this tool's share of the tenant's 15,000 indicators
defender_action = "Audit"             # Audit (alert only), Warn, Block, BlockAndRemediate, Allowed
defender_severity = ""                # "" = from the event's threat level
# defender_rbac_groups = ["Servers"]  # device groups (default: every device)
defender_recommended_actions = ""

# --- MISP ---
misp_domain = ""                      # https://misp.example.org/ (or MISP_URL)
misp_key = ""                         # prefer MISP_KEY in the environment or .env
misp_verifycert = True                # True, or the path of a CA bundle; never turn off lightly
misp_event_filters = {
    "published": True,
    "to_ids": True,
    "enforceWarninglist": True,
    "publish_timestamp": "14d",
}
misp_event_limit_per_page = 100
misp_ignore_localtags = True

# --- Reconciliation ---
state_dir = "state"                   # one SQLite file per target tenant; relative to this file
max_delete_fraction = 0.2             # refuse to delete more than this share of what we own
# renew_days = 15                     # extend the expiry of unchanged indicators this many days
                                      # before it (default: a quarter of days_to_expire)

# --- Output ---
log_dir = "logs"                      # relative paths are beside this file
write_post_json = True                # one JSON file per request in log_dir
verbose_log = False                   # print every request body and response
http_timeout = 60                     # seconds, for every HTTP request
log_retention_days = 30               # files in log_dir older than this are removed

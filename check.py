"""`script.py --check`: the checklist an operator runs after installing or editing the config.

Each line is ✓ or ✗ with what was found and, for ✗, the fix. Checks run in order and a line
that others depend on stops the list (no token check without a valid config). Nothing here
prints a secret or a token: messages go through the log's scrubber.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from cryptography import x509

import constants as C
import targets
from constants import ErrorCause, ExitCode
from loganalytics_client import LogAnalyticsClient, connection, kql_string
from misp_source import MispError, MispSource
from ms_client import MicrosoftError
from private_files import UnsafePath, private_dir
from request_log import RequestLog
from settings import ConfigError, Settings, TargetSettings, load_settings, split_pem
from sightings import Sighted
from state_store import StateStore, StoreError, StoreUnsafe, refuse_symlinks
from sync import state_paths


@dataclasses.dataclass(frozen=True)
class Line:
    ok: bool
    label: str
    detail: str
    fix: str = ""


class Checklist:
    """Collects lines, prints each as it is decided, remembers the first failure's exit code."""

    def __init__(self, out: TextIO, scrub: Callable[[str], str] = lambda text: text) -> None:
        self.out = out
        self.scrub = scrub
        self.code = ExitCode.OK

    def add(self, line: Line, code: ExitCode) -> bool:
        mark = "\u2713" if line.ok else "\u2717"
        text = f"{mark} {line.label}: {line.detail}\n" + (f"    fix: {line.fix}\n" if line.fix else "")
        self.out.write(self.scrub(text))
        if not line.ok and self.code is ExitCode.OK:
            self.code = code
        return line.ok


def run_checks(config_path: Path, out: TextIO) -> ExitCode:
    checklist = Checklist(out)
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        checklist.add(Line(False, "config", str(exc), "edit that setting and run --check again"), ExitCode.CONFIG)
        return checklist.code
    targets = ", ".join(target.label for target in settings.targets)
    checklist.add(Line(True, "config", f"{settings.config_path} is valid; targets: {targets}"), ExitCode.CONFIG)
    for unknown in settings.unknown_settings:
        checklist.add(Line(False, "setting", unknown, "rename or remove it"), ExitCode.CONFIG)
    log = RequestLog(settings.log_dir, False, False, settings.secrets())
    checklist.scrub = log.scrub
    checklist.add(folders_line(settings), ExitCode.CONFIG)
    check_misp(settings, log, checklist)
    try:
        settings.require_microsoft()
    except ConfigError as exc:
        checklist.add(Line(False, "Microsoft credentials", str(exc), "set the Entra app's tenant and client id, and "
                           "a secret, a certificate or a managed identity"), ExitCode.CONFIG)
        return checklist.code
    if settings.client_certificate_path:
        checklist.add(certificate_line(settings.client_certificate_path), ExitCode.CONFIG)
    for target in settings.targets:
        check_target(settings, target, log, checklist)
    return checklist.code


def check_misp(settings: Settings, log: RequestLog, checklist: Checklist) -> None:
    if settings.misp_url.startswith("http://"):
        checklist.add(Line(False, "MISP transport", f"{settings.misp_url} is not TLS: the API key crosses the network in clear "
                           "(misp_allow_plain_http = True)", "use an https:// misp_domain"), ExitCode.CONFIG)
    try:
        settings.require_misp()
    except ConfigError as exc:
        checklist.add(Line(False, "MISP", str(exc), "set MISP_URL and MISP_KEY in .env"), ExitCode.CONFIG)
        return
    source = MispSource(settings, log)
    try:
        misp = source.connect()
    except MispError as exc:
        checklist.add(Line(False, "MISP", str(exc), C.MISP_FIXES.get(exc.cause, C.MISP_DEFAULT_FIX)), ExitCode.MISP)
        return
    instance = misp.misp_instance_version
    version = instance.get("version", "unknown") if isinstance(instance, dict) else "unknown"
    tls = misp_transport(settings)
    checklist.add(Line(True, "MISP", f"{settings.misp_url} reachable, {tls}, key accepted, MISP {version}"), ExitCode.MISP)
    try:
        events = source.count_matching()
    except MispError as exc:
        checklist.add(Line(False, "MISP filters", str(exc), "check misp_event_filters"), ExitCode.MISP)
        return
    fix = "" if events else "no event matches: check misp_event_filters (published, time window, tags)"
    checklist.add(Line(bool(events), "MISP filters", f"{events} events match misp_event_filters {filter_text(settings)}", fix),
                  ExitCode.MISP)
    if settings.misp_decay_model:
        check_decay(source, checklist)
    if settings.report_sightings:
        checklist.add(sighting_permission_line(source), ExitCode.MISP)


def sighting_permission_line(source: MispSource) -> Line:
    """report_sightings posts to MISP: the key's role needs perm_sighting (getVersion says)."""
    if source.can_sight():
        return Line(True, "MISP sightings", "the key's role may add sightings (perm_sighting)")
    return Line(False, "MISP sightings", "the key's role may not add sightings (perm_sighting is off)",
                "give the key's user a role with the Sighting permission (Administration > Roles), or set report_sightings = False")


def check_decay(source: MispSource, checklist: Checklist) -> None:
    """The decaying model exists, is enabled, and whether its crossing can be predicted."""
    try:
        decay, warning = source.decay_policy()
    except (ConfigError, MispError) as exc:
        code = ExitCode.CONFIG if isinstance(exc, ConfigError) else ExitCode.MISP
        checklist.add(Line(False, "MISP decaying model", str(exc), "name an enabled model MISP lists under Decaying Models"), code)
        return
    if decay is None:  # misp_decay_model is unset: nothing to check
        return
    what = warning or (f"Polynomial, lifetime {decay.lifetime_days:g} days, decay_speed {decay.decay_speed:g}: "
                       "expiry at the predicted crossing")
    checklist.add(Line(True, "MISP decaying model", f"{decay.model_id} {decay.model_name!r}, threshold {decay.threshold:g}; {what}"),
                  ExitCode.CONFIG)


def filter_text(settings: Settings) -> str:
    """The filters in effect, defaults included, as the operator would write them in config.py."""
    filters = settings.misp_event_filters
    return repr(filters[0]) if len(filters) == 1 else repr(list(filters))


def misp_transport(settings: Settings) -> str:
    """How the key travels to MISP, in the words the check line uses."""
    if settings.misp_url.startswith("http://"):
        return "not TLS"
    return "TLS verified" if settings.misp_verifycert else "TLS NOT verified (misp_verifycert = False)"


def check_target(settings: Settings, target: TargetSettings, log: RequestLog, checklist: Checklist) -> None:
    adapter = targets.adapter(settings, target, log)
    try:
        check_service(settings, target, adapter, checklist)
        if settings.report_sightings and isinstance(adapter, Sighted):
            checklist.add(*matches_line(adapter))
    finally:
        adapter.close()
    if settings.verify_after_minutes and target.workspace_id:
        checklist.add(delivery_check_line(settings, target, log), ExitCode.MICROSOFT)


def matches_line(adapter: Sighted) -> tuple[Line, ExitCode]:
    """report_sightings reads the target's alerts: one harmless read shows the permission works
    and the match query returns what a sightings run needs."""
    label = f"{adapter.label}: sightings"
    try:
        adapter.probe_matches()
    except MicrosoftError as exc:
        refused = exc.cause in (ErrorCause.PERMISSION_MISSING, ErrorCause.AUTH_REFUSED)
        fix = adapter.matches_fix if refused else C.PROBE_FIXES.get(exc.cause, adapter.matches_fix)
        return Line(False, label, str(exc), fix), ExitCode.MICROSOFT
    except ConfigError as exc:
        return Line(False, label, str(exc), "edit sentinel_match_query and run --check again"), ExitCode.CONFIG
    return Line(True, label, f"the alerts can be read ({adapter.matches_permission})"), ExitCode.MICROSOFT


def delivery_check_line(settings: Settings, target: TargetSettings, log: RequestLog) -> Line:
    """verify_after_minutes reads the workspace's table: one harmless query shows the token, the
    API permission and the reader role all work."""
    label = f"{target.label}: delivery checks"
    client = LogAnalyticsClient(connection(settings), target.workspace_id, log)
    try:
        client.query(f"{C.LOGANALYTICS_TABLE} | where Source == {kql_string(settings.sourcesystem)} | summarize count()")
    except MicrosoftError as exc:
        fix = ("add the API permission Log Analytics API Data.Read (admin consent) and the Log Analytics Reader role on "
               "the workspace" if exc.cause in (ErrorCause.PERMISSION_MISSING, ErrorCause.AUTH_REFUSED)
               else C.PROBE_FIXES.get(exc.cause, f"check loganalytics_endpoint and {client.permission}"))
        return Line(False, label, str(exc), fix)
    finally:
        client.session.close()
    return Line(True, label, f"the workspace's {C.LOGANALYTICS_TABLE} table can be read ({client.permission})")


def check_service(settings: Settings, target: TargetSettings, adapter: targets.Adapter, checklist: Checklist) -> None:
    """The token, the permission (one harmless read) and, when the service holds indicators of
    ours, the local state."""
    try:
        audience = adapter.token()
    except MicrosoftError as exc:
        checklist.add(Line(False, f"{target.label}: token", str(exc), token_fix(exc)), ExitCode.MICROSOFT)
        return
    checklist.add(Line(True, f"{target.label}: token", f"issued for {audience} ({settings.credential_kind})"),
                  ExitCode.MICROSOFT)
    line, held = permission_line(target, adapter)
    if checklist.add(line, ExitCode.MICROSOFT) and held:
        checklist.add(state_line(settings, target), ExitCode.CONFIG)


def folders_line(settings: Settings) -> Line:
    """log_dir and state_dir exist (or can be made), are private and take a new file."""
    for setting, folder in (("log_dir", settings.log_dir), ("state_dir", settings.state_dir)):
        try:
            private_dir(folder)
            tempfile.TemporaryFile(dir=folder).close()
        except (OSError, UnsafePath) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            return Line(False, "folders", f"{setting} {folder} cannot be written: {reason}",
                        f"create it owned by the tool's user with mode 0700, or change {setting}")
    try:
        for target in settings.targets:
            for path in state_paths(settings, target):
                refuse_symlinks(path)
    except StoreUnsafe as exc:
        return Line(False, "folders", f"state_dir: {exc}", "a sync refuses it too: remove the link")
    return Line(True, "folders", f"log_dir {settings.log_dir} and state_dir {settings.state_dir} are writable")


def certificate_line(path: Path) -> Line:
    """The client certificate's expiry: Entra refuses an expired one, so say so a month ahead."""
    _, pem = split_pem(path.read_bytes())
    expires = x509.load_pem_x509_certificate(pem.encode("ascii")).not_valid_after_utc
    left = expires - dt.datetime.now(dt.UTC)
    detail = f"{path} expires {expires:%Y-%m-%d}"
    if left.total_seconds() <= 0:
        return Line(False, "certificate", f"{path} expired on {expires:%Y-%m-%d}",
                    "create a new certificate and upload it to the app registration")
    if left.days < C.CERTIFICATE_WARNING_DAYS:
        return Line(False, "certificate", f"{detail}, in {left.days} days", "renew it now and upload the new one to the app registration")
    return Line(True, "certificate", detail)


def state_line(settings: Settings, target: TargetSettings) -> Line:
    """The service holds this app's indicators: an empty local state means they were sent from
    elsewhere or the state was lost."""
    _, path = state_paths(settings, target)
    try:
        store = StateStore(path if path.exists() else None)
    except StoreError as exc:
        return Line(False, f"{target.label}: state", str(exc), "run --rebuild-state")
    try:
        fresh = store.is_fresh()
    finally:
        store.close()
    if not fresh:
        return Line(True, f"{target.label}: state", f"{path.name} holds this target's indicators")
    return Line(False, f"{target.label}: state", f"{path.name} is empty but the service already holds indicators of this app",
                "run --rebuild-state to take them over now; a normal sync also rebuilds the state from the service by itself")


def permission_line(target: TargetSettings, adapter: targets.Adapter) -> tuple[Line, bool]:
    """One harmless read: the first page of what the service holds of ours. Also says whether
    that page held any indicator."""
    label = f"{target.label}: permission"
    try:
        page = next(adapter.probe(), None)
    except ConfigError as exc:
        return Line(False, label, str(exc), f"set them so --check can verify {adapter.permission}"), False
    except MicrosoftError as exc:
        return Line(False, label, str(exc), C.PROBE_FIXES.get(exc.cause, adapter.permission_fix)), False
    return Line(True, label, f"the listing can be read ({adapter.permission})"), bool(page and page.get("value"))


def token_fix(exc: MicrosoftError) -> str:
    """A plain-language fix: the AADSTS codes users really hit, else by the error's cause."""
    if exc.aadsts is not None:
        return C.AADSTS_FIXES.get(exc.aadsts) or C.AADSTS_LOOKUP.format(code=exc.aadsts)
    return C.TOKEN_FIXES.get(exc.cause, C.TOKEN_FIX)

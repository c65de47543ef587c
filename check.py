"""`script.py --check`: the checklist an operator runs after installing or editing the config.

Each line is ✓ or ✗ with what was found and, for ✗, the fix. Checks run in order and a line
that others depend on stops the list (no token check without a valid config). Nothing here
prints a secret or a token: messages go through the log's scrubber.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import constants as C
from constants import ExitCode
from graph_client import GraphClient
from misp_source import MispError, MispSource
from ms_client import MicrosoftClient, MicrosoftError
from request_log import RequestLog
from sentinel_client import SentinelClient
from settings import ConfigError, Settings, TargetSettings, load_settings


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
    log = RequestLog(settings.log_dir, False, False, settings.secrets())
    checklist.scrub = log.scrub
    check_misp(settings, log, checklist)
    try:
        settings.require_microsoft()
    except ConfigError as exc:
        checklist.add(Line(False, "Microsoft credentials", str(exc), "set the Entra app's tenant and client id, and "
                           "a secret, a certificate or a managed identity"), ExitCode.CONFIG)
        return checklist.code
    for target in settings.targets:
        check_target(settings, target, log, checklist)
    return checklist.code


def check_misp(settings: Settings, log: RequestLog, checklist: Checklist) -> None:
    if settings.misp_url.startswith("http://"):
        checklist.add(Line(False, "MISP transport", f"{settings.misp_url} is not TLS: the API key crosses the network in clear "
                           "(misp_allow_plain_http = True)", "use an https:// misp_domain"), ExitCode.CONFIG)
    try:
        settings.require_misp()
        source = MispSource(settings, log)
        misp = source.connect()
    except (ConfigError, MispError) as exc:
        checklist.add(Line(False, "MISP", str(exc), misp_fix(str(exc))), ExitCode.MISP)
        return
    version = (misp.misp_instance_version or {}).get("version", "unknown")
    tls = misp_transport(settings)
    checklist.add(Line(True, "MISP", f"{settings.misp_url} reachable, {tls}, key accepted, MISP {version}"), ExitCode.MISP)
    try:
        events = source.count_matching()
    except MispError as exc:
        checklist.add(Line(False, "MISP filters", str(exc), "check misp_event_filters"), ExitCode.MISP)
        return
    fix = "" if events else "no event matches: check misp_event_filters (published, time window, tags)"
    checklist.add(Line(bool(events), "MISP filters", f"{events} events match misp_event_filters", fix), ExitCode.MISP)


def misp_transport(settings: Settings) -> str:
    """How the key travels to MISP, in the words the check line uses."""
    if settings.misp_url.startswith("http://"):
        return "not TLS"
    return "TLS verified" if settings.misp_verifycert else "TLS NOT verified (misp_verifycert = False)"


def misp_fix(message: str) -> str:
    for marker, fix in C.MISP_FIXES:
        if marker in message:
            return fix
    return "check misp_domain, the network path to MISP and MISP_KEY"


def check_target(settings: Settings, target: TargetSettings, log: RequestLog, checklist: Checklist) -> None:
    client: MicrosoftClient = GraphClient(settings, log) if target.kind == "graph" else SentinelClient(settings, target, log)
    try:
        client.token()
    except MicrosoftError as exc:
        checklist.add(Line(False, f"{target.label}: token", str(exc), token_fix(str(exc))), ExitCode.MICROSOFT)
        return
    checklist.add(Line(True, f"{target.label}: token", f"issued for {client.resource} ({settings.credential_kind})"),
                  ExitCode.MICROSOFT)
    checklist.add(permission_line(settings, target, client), ExitCode.MICROSOFT)


def permission_line(settings: Settings, target: TargetSettings, client: Any) -> Line:
    """One harmless read: Graph lists this app's indicators; Sentinel queries the workspace."""
    label = f"{target.label}: permission"
    if target.kind == "graph":
        read, granted, fix = client.list_pages, "ThreatIndicators.ReadWrite.OwnedBy works (list read)", \
            "add the application permission ThreatIndicators.ReadWrite.OwnedBy and grant admin consent"
    else:
        try:
            target.require_management(settings.config_path.name)
        except ConfigError as exc:
            return Line(False, label, str(exc), "set them so --check can verify the Microsoft Sentinel Contributor role")
        read, granted, fix = client.query_pages, "the workspace can be read (Microsoft Sentinel Contributor)", \
            "assign the app the Microsoft Sentinel Contributor role on the workspace"
    try:
        next(read(), None)
    except MicrosoftError as exc:
        return Line(False, label, str(exc), fix)
    return Line(True, label, granted)


def token_fix(message: str) -> str:
    """A plain-language fix for the AADSTS codes users really hit."""
    if "has no tenant" in message:
        return C.AADSTS_FIXES[90002]
    code = re.search(r"AADSTS(\d+)", message)
    if code and int(code.group(1)) in C.AADSTS_FIXES:
        return C.AADSTS_FIXES[int(code.group(1))]
    if code:
        return f"look the code up: https://login.microsoftonline.com/error?code={code.group(1)}"
    return "check authority_host and the network path to Microsoft Entra"

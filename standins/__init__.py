"""Local HTTPS stand-ins for MISP, Entra ID, Microsoft Graph, Microsoft Sentinel (and its
workspace's Log Analytics query API), Microsoft Defender for Endpoint and an App Service managed
identity endpoint, for tests and the demo.

`StandIns` starts all seven behind one private CA:

    with StandIns(tmp_dir, events=seed_events("tests/fixtures/misp_events")) as s:
        os.environ["REQUESTS_CA_BUNDLE"] = str(s.ca_bundle_path)
        ...  # point the tool at s.misp.url, s.entra.authority_host, s.graph.url,
             # s.sentinel.url (upload and management API), s.loganalytics.url, s.defender.url
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any

from .defender import DefenderStandIn
from .entra import ClientCertificate, EntraStandIn, TokenInfo, make_client_certificate
from .graph import GraphStandIn
from .identity import ManagedIdentityStandIn
from .loganalytics import AUDIENCE as LOGANALYTICS_AUDIENCE
from .loganalytics import LogAnalyticsStandIn
from .misp import MispStandIn, load_event_file
from .sentinel import SentinelStandIn
from .tls import HttpsStandIn, PrivateCA, SeenRequest

__all__ = ["ClientCertificate", "DefenderStandIn", "EntraStandIn", "GraphStandIn", "HttpsStandIn",
           "LogAnalyticsStandIn", "ManagedIdentityStandIn", "MispStandIn", "PrivateCA", "SeenRequest", "SentinelStandIn",
           "StandIns", "TokenInfo", "load_event_file", "make_client_certificate", "seed_events"]

DEFAULT_MISP_KEY = "demo-misp-key-0123456789abcdef0123456789"
DEFAULT_TENANT = "11111111-2222-3333-4444-555555555555"
DEFAULT_CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DEFAULT_CLIENT_SECRET = "demo-secret-value"
DEFAULT_USER_ASSIGNED_CLIENT_ID = "bbbbbbbb-cccc-dddd-eeee-ffffffffffff"
DEFAULT_WORKSPACE_ID = "99999999-8888-7777-6666-555555555555"
DEFAULT_SUBSCRIPTION_ID = "00000000-1111-2222-3333-444444444444"
DEFAULT_RESOURCE_GROUP = "rg-soc"
DEFAULT_WORKSPACE_NAME = "law-soc"


def seed_events(directory: Path | str) -> list[dict[str, Any]]:
    """Every `*.json` event in `directory` (sorted by name), each as {"Event": ...}."""
    return [load_event_file(path) for path in sorted(Path(directory).glob("*.json"))]


class StandIns:
    """MISP, Entra, Graph, Sentinel and Defender stand-ins sharing one CA; the Graph, Sentinel
    and Defender URLs are Entra resources (Sentinel serves both the upload and the management
    API; `client_id` holds Ti.ReadWrite on Defender). `loganalytics` queries the Sentinel
    workspace's table; its token audience is `https://api.loganalytics.io` (an Entra resource
    too), and `client_id` holds the workspace reader role. `identity`
    is the managed identity endpoint of an app whose system-assigned identity is `client_id`
    and which has one user-assigned identity, DEFAULT_USER_ASSIGNED_CLIENT_ID; its
    IDENTITY_HEADER value is `identity.header_secret`, random per instance.

    The CA bundle is written to `directory` at construction; servers listen from then on
    and answer once started (`start()` or `with`).
    """

    def __init__(self, directory: Path | str, *, events: list[dict[str, Any]] | None = None,
                 misp_key: str = DEFAULT_MISP_KEY, tenant: str = DEFAULT_TENANT,
                 client_id: str = DEFAULT_CLIENT_ID,
                 client_secret: str = DEFAULT_CLIENT_SECRET,
                 workspace_id: str = DEFAULT_WORKSPACE_ID,
                 subscription_id: str = DEFAULT_SUBSCRIPTION_ID,
                 resource_group: str = DEFAULT_RESOURCE_GROUP,
                 workspace_name: str = DEFAULT_WORKSPACE_NAME) -> None:
        self.misp_key, self.tenant = misp_key, tenant
        self.client_id, self.client_secret = client_id, client_secret
        self.ca = PrivateCA()
        self.ca_bundle_path = self.ca.ca_bundle_path(directory)
        self.misp = MispStandIn(misp_key, events or [], ca=self.ca)
        self.entra = EntraStandIn(tenant, {client_id: client_secret}, ca=self.ca)
        self.graph = GraphStandIn(self.entra)
        self.graph.alert_readers.add(client_id)
        self.entra.resources.add(self.graph.url)
        self.sentinel = SentinelStandIn(self.entra, workspace_id, subscription_id, resource_group,
                                        workspace_name)
        self.entra.resources.add(self.sentinel.url)
        self.loganalytics = LogAnalyticsStandIn(self.entra, self.sentinel)
        self.entra.resources.add(LOGANALYTICS_AUDIENCE)
        self.loganalytics.readers.add(client_id)
        self.defender = DefenderStandIn(self.entra)
        self.entra.resources.add(self.defender.url)
        self.defender.grant(client_id, "Ti.ReadWrite")
        self.identity = ManagedIdentityStandIn(
            self.entra, client_id, {DEFAULT_USER_ASSIGNED_CLIENT_ID}, secrets.token_urlsafe(24))

    def write_tool_config(self, directory: Path, **overrides: Any) -> Path:
        """A misp2sentinel config.py aimed at these stand-ins; secrets go to .env beside it,
        as the README tells operators to do."""
        settings = {
            "graph_auth": {"tenant": self.tenant, "client_id": self.client_id, "client_secret": ""},
            "graph_endpoint": self.graph.url,
            "authority_host": self.entra.url,
            "misp_domain": self.misp.url,
            "misp_verifycert": True,
            "log_dir": "logs",
            "sentinel_endpoint": self.sentinel.url,
            "management_endpoint": self.sentinel.url,
            "workspace_id": self.sentinel.workspace_id,
            "subscription_id": self.sentinel.subscription_id,
            "resource_group": self.sentinel.resource_group,
            "workspace_name": self.sentinel.workspace_name,
            "defender_endpoint": self.defender.url,
            "loganalytics_endpoint": self.loganalytics.url,
            **overrides,
        }
        path = Path(directory) / "config.py"
        path.write_text("".join(f"{name} = {value!r}\n" for name, value in settings.items()), encoding="utf-8")
        (path.parent / ".env").write_text(
            f"MISP_KEY={self.misp_key}\nAZURE_CLIENT_SECRET={self.client_secret}\n", encoding="utf-8")
        return path

    def start(self) -> StandIns:
        for server in self._servers:
            server.start()
        return self

    def close(self) -> None:
        """Close the servers side by side: each waits up to one poll interval to stop."""
        closing = [threading.Thread(target=server.close) for server in self._servers]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()

    @property
    def _servers(self) -> tuple[HttpsStandIn, ...]:
        return (self.misp, self.entra, self.graph, self.sentinel, self.loganalytics, self.defender, self.identity)

    def __enter__(self) -> StandIns:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

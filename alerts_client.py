"""Microsoft Graph v1.0 security alerts (`security/alerts_v2`): what Defender's custom indicators
matched, read back for sightings (defender.md "Finding hits").

Graph's `$filter` on alerts_v2 takes only a few properties (assignedTo, classification,
determination, createdDateTime, lastUpdateDateTime, severity, serviceSource, status), not
`detectionSource`: the window and Defender's serviceSource are filtered by Graph, and
`detectionSource eq 'customTi'` (an alert a custom indicator raised) here.
"""
from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Iterator
from typing import Any

import constants as C
from misp_transformer import iso_utc
from ms_client import MicrosoftClient


def alerts_url(resource: str, odata_filter: str, top: int) -> str:
    query = urllib.parse.urlencode({"$filter": odata_filter, "$top": str(top)}, quote_via=urllib.parse.quote)
    return f"{resource}{C.GRAPH_ALERTS_PATH}?{query}"


class AlertsClient(MicrosoftClient):
    """alerts_v2 of the tenant, with the application permission SecurityAlert.Read.All."""

    service = "Graph"
    permission = f"the Microsoft Graph application permission {C.GRAPH_ALERTS_PERMISSION} with admin consent"

    def custom_ti_alerts(self, since: dt.datetime, until: dt.datetime) -> Iterator[dict[str, Any]]:
        """Defender's alerts created in [since, until] that a custom indicator raised."""
        window = (f"serviceSource eq '{C.DEFENDER_SERVICE_SOURCE}' and createdDateTime ge {iso_utc(since)} "
                  f"and createdDateTime le {iso_utc(until)}")
        for page in self.pages("alerts", alerts_url(self.resource, window, C.GRAPH_ALERTS_PAGE_SIZE), "@odata.nextLink"):
            yield from (alert for alert in page["value"] if alert.get("detectionSource") == C.CUSTOM_TI_DETECTION)

    def probe(self) -> None:
        """One alert at most: the token and the permission work."""
        next(self.pages("alerts", alerts_url(self.resource, f"serviceSource eq '{C.DEFENDER_SERVICE_SOURCE}'", 1),
                        "@odata.nextLink"), None)

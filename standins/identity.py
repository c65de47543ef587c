"""A managed identity stand-in: the App Service / Azure Functions token endpoint.

MSAL's `ManagedIdentityClient` (msal/managed_identity.py, `_obtain_token_on_app_service`) uses
it when the environment has IDENTITY_ENDPOINT and IDENTITY_HEADER (and no
IDENTITY_SERVER_THUMBPRINT, which would mean Service Fabric):

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource>
        [&client_id=<id> | &mi_res_id=<ARM id> | &object_id=<id>]   (user-assigned only)
    X-IDENTITY-HEADER: {IDENTITY_HEADER}
    Metadata: true

and reads `access_token` and `expires_on` (epoch seconds; a string on the real service) plus
`resource`, `token_type`; the answer also carries `client_id` as App Service's does. Tokens are
issued through `EntraStandIn.issue`, so the Graph and Sentinel stand-ins accept them.

Errors use App Service's body `{"statusCode", "message", "correlationId"}`; MSAL turns any
answer without `access_token` into `{"error": "invalid_scope", "error_description":
"<statusCode>, <message>"}` whatever the HTTP status. Choices made here:

* X-IDENTITY-HEADER missing → 400, present but wrong → 401 (App Service's exact answers are
  not documented; a 401 for a header mismatch was reported in Azure/azure-sdk-for-js#11595);
* an unknown user-assigned identity (or any `mi_res_id`/`object_id`, as only client ids are
  modelled) → 400 "Unable to load the proper Managed Identity.", App Service's real answer;
* `resource` missing or not one of `entra.resources` → 400 with Entra's AADSTS500011 text
  (MSAL's source notes that App Service really answers a wrong resource with a vague 500);
* an `api-version` other than 2019-08-01 → 400.
"""

from __future__ import annotations

import secrets
import uuid

from .entra import EntraStandIn
from .tls import HttpsStandIn, Reply, SeenRequest, json_reply

__all__ = ["API_VERSION", "ManagedIdentityStandIn"]

API_VERSION = "2019-08-01"
TOKEN_PATH = "/msi/token"
_USER_ASSIGNED_SELECTORS = ("client_id", "mi_res_id", "object_id")


def _app_service_error(status: int, message: str) -> Reply:
    return json_reply(status, {"statusCode": status, "message": message,
                               "correlationId": str(uuid.uuid4())})


class ManagedIdentityStandIn(HttpsStandIn):
    """The identity endpoint of an app with a system-assigned identity (`system_client_id`,
    None for none) and the user-assigned identities `user_assigned` (client ids).

    Point IDENTITY_ENDPOINT at `endpoint` and IDENTITY_HEADER at `header_secret`.
    `tokens_issued` counts the tokens handed out.
    """

    def __init__(self, entra: EntraStandIn, system_client_id: str | None,
                 user_assigned: set[str], header_secret: str) -> None:
        super().__init__(entra.ca)
        self.entra = entra
        self.system_client_id = system_client_id
        self.user_assigned = set(user_assigned)
        self.header_secret = header_secret
        self.tokens_issued = 0

    @property
    def endpoint(self) -> str:
        """The IDENTITY_ENDPOINT value."""
        return f"{self.url}{TOKEN_PATH}"

    def respond(self, request: SeenRequest) -> Reply:
        if request.method != "GET" or request.path != TOKEN_PATH:
            return _app_service_error(404, f"No route for {request.method} {request.path}.")
        header = request.headers.get("X-IDENTITY-HEADER")
        if header is None:
            return _app_service_error(400, "The X-IDENTITY-HEADER header is required.")
        if not secrets.compare_digest(header.encode(), self.header_secret.encode()):
            return _app_service_error(401, "Unauthorized. The X-IDENTITY-HEADER value is invalid.")
        query = {name: values[0] for name, values in request.query.items()}
        if query.get("api-version") != API_VERSION:
            return _app_service_error(400, f"The api-version '{query.get('api-version', '')}' is "
                                           f"not supported; use '{API_VERSION}'.")
        requested = query.get("resource", "").rstrip("/")
        resource = self.entra.known_resource(requested)
        if not requested:
            return _app_service_error(400, "The 'resource' parameter is required.")
        if resource is None:
            return _app_service_error(
                400, f"AADSTS500011: {self.entra.unknown_resource_message(requested)}")
        client_id = self._identity(query)
        if client_id is None:
            return _app_service_error(400, "Unable to load the proper Managed Identity.")
        token = self.entra.issue(client_id, resource)
        grant = self.entra.lookup(token)
        assert grant is not None
        with self.lock:
            self.tokens_issued += 1
        return json_reply(200, {"access_token": token, "expires_on": str(int(grant.expires_at)),
                                "resource": query["resource"], "token_type": "Bearer",
                                "client_id": client_id})

    def _identity(self, query: dict[str, str]) -> str | None:
        """The client id of the identity the query selects, or None when this app has none such."""
        selectors = [(name, query[name]) for name in _USER_ASSIGNED_SELECTORS if query.get(name)]
        if not selectors:
            return self.system_client_id
        if len(selectors) == 1 and selectors[0][0] == "client_id":
            wanted = selectors[0][1].lower()
            return next((c for c in self.user_assigned if c.lower() == wanted), None)
        return None

"""A Microsoft Entra ID (v2.0 endpoint) stand-in for the client-credentials grant.

It serves what MSAL fetches (OIDC discovery, token endpoint; microsoft-apis.md §4.3, §4.5)
and keeps a registry of issued tokens so the Graph stand-in can validate bearer tokens.
Error bodies and HTTP statuses copy what Entra really sends (AADSTS codes).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qs

from .tls import Fault, HttpsStandIn, PrivateCA, Reply, SeenRequest, json_reply

__all__ = ["EntraStandIn", "TokenInfo"]

_NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
_OIDC_PATH = re.compile(r"/([^/]+)/v2\.0/\.well-known/openid-configuration")
_TOKEN_PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token")
_NOT_INSTALLED = ("This can happen if the application has not been installed by the administrator "
                  "of the tenant or consented to by any user in the tenant. You may have sent your "
                  "authentication request to the wrong tenant.")


@dataclass(frozen=True)
class TokenInfo:
    """What a bearer token was issued for; `resource` has no trailing slash."""

    client_id: str
    tenant: str
    resource: str
    expires_at: float


def _aad_error(status: int, error: str, code: int, text: str) -> Reply:
    """Entra's error body: the AADSTS text plus trace ids, as MSAL passes it through."""
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return json_reply(status, {
        "error": error,
        "error_description": (f"AADSTS{code}: {text}\r\nTrace ID: {trace_id}\r\n"
                              f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"),
        "error_codes": [code], "timestamp": stamp, "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }, _NO_STORE)


def _missing(name: str) -> Reply:
    return _aad_error(400, "invalid_request", 900144,
                      f"The request body must contain the following parameter: '{name}'.")


class EntraStandIn(HttpsStandIn):
    """One tenant with app registrations `clients` (client_id -> secret).

    `resources` holds the resource URLs a token may be requested for (scope
    `<resource>/.default`); add the Graph stand-in's url after constructing it.
    """

    def __init__(self, tenant: str, clients: dict[str, str], resources: set[str] | None = None,
                 expires_in: int = 3599, *, ca: PrivateCA | None = None) -> None:
        super().__init__(ca)
        self.tenant = tenant
        self.clients = dict(clients)
        self.resources: set[str] = set(resources or ())
        self.expires_in = expires_in
        self.token_requests = 0  # POSTs to the token endpoint, failed and injected ones included
        self._tokens: dict[str, TokenInfo] = {}

    @property
    def authority_host(self) -> str:
        return self.url

    @property
    def authority(self) -> str:
        """What to pass to MSAL as `authority=`."""
        return f"{self.url}/{self.tenant}"

    def lookup(self, token: str) -> TokenInfo | None:
        """The token's grant even when expired (lets Graph tell "expired" from "unknown")."""
        with self.lock:
            return self._tokens.get(token)

    def validate(self, token: str) -> TokenInfo | None:
        """The token's grant, or None when the token is unknown or expired."""
        info = self.lookup(token)
        return info if info and info.expires_at > time.time() else None

    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far, e.g. to assert none of them leaks into logs."""
        with self.lock:
            return list(self._tokens)

    def expire_all(self) -> None:
        """Simulate every issued token reaching its expiry (MSAL's cache will not know)."""
        with self.lock:
            past = time.time() - 1
            self._tokens = {t: dataclasses.replace(i, expires_at=past) for t, i in self._tokens.items()}

    def fail_token(self, status: int, body: dict[str, object] | None = None,
                   headers: dict[str, str] | None = None, times: int = 1) -> None:
        """Answer the next `times` token requests with `status` (default body: AADSTS50000)."""
        self._queue_fault(Fault(status, body, dict(headers or {}), times, "/oauth2/v2.0/token"))

    def respond(self, request: SeenRequest) -> Reply:
        oidc = _OIDC_PATH.fullmatch(request.path)
        if request.method == "GET" and oidc:
            return self._openid_configuration(oidc[1])
        token = _TOKEN_PATH.fullmatch(request.path)
        if request.method == "POST" and token:
            with self.lock:
                self.token_requests += 1
            fault = self._take_fault(request.path)
            if fault:
                if fault.body is None:
                    return _aad_error(fault.status, "server_error", 50000, "There was an error "
                                      "issuing a token or an issue with our sign-in service.")
                return json_reply(fault.status, fault.body, fault.headers)
            return self._token(token[1], request)
        return json_reply(404, {"error": "not_found", "error_description": request.path})

    def _known_tenant(self, tenant: str) -> bool:
        return tenant.lower() == self.tenant.lower()

    def _tenant_not_found(self, tenant: str) -> Reply:
        return _aad_error(400, "invalid_tenant", 90002, (
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
            "are signing into the correct cloud. Check with your subscription administrator, this "
            "may happen if there are no active subscriptions for the tenant."))

    def _openid_configuration(self, tenant: str) -> Reply:
        if not self._known_tenant(tenant):
            return self._tenant_not_found(tenant)
        base = f"{self.url}/{self.tenant}"
        return json_reply(200, {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{self.url}/{self.tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        })

    def _token(self, tenant: str, request: SeenRequest) -> Reply:
        if not self._known_tenant(tenant):
            return self._tenant_not_found(tenant)
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        grant_type = form.get("grant_type")
        if not grant_type:
            return _missing("grant_type")
        if grant_type != "client_credentials":
            return _aad_error(400, "unsupported_grant_type", 70003,
                              f"The app requested an unsupported grant type '{grant_type}'.")
        client_id = form.get("client_id")
        if not client_id:
            return _missing("client_id")
        if client_id not in self.clients:
            return _aad_error(400, "unauthorized_client", 700016, (
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant}'. {_NOT_INSTALLED}"))
        secret = form.get("client_secret")
        if not secret:
            return _aad_error(401, "invalid_client", 7000218, "The request body must contain the "
                              "following parameter: 'client_assertion' or 'client_secret'.")
        if not secrets.compare_digest(secret, self.clients[client_id]):
            return _aad_error(401, "invalid_client", 7000215, (
                "Invalid client secret provided. Ensure the secret being sent in the request is the "
                "client secret value, not the client secret ID, for a secret added to app "
                f"'{client_id}'."))
        scope = form.get("scope")
        if not scope:
            return _missing("scope")
        if len(scope.split()) != 1 or not scope.endswith("/.default"):
            return _aad_error(400, "invalid_scope", 1002012, (
                f"The provided value for scope {scope} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI)."))
        resource = scope.removesuffix("/.default").rstrip("/")
        if resource not in {r.rstrip("/") for r in self.resources}:
            return _aad_error(400, "invalid_resource", 500011, (
                f"The resource principal named {resource} was not found in the tenant named "
                f"{self.tenant}. {_NOT_INSTALLED}"))
        access_token = secrets.token_urlsafe(32)
        with self.lock:
            self._tokens[access_token] = TokenInfo(client_id, self.tenant, resource,
                                                   time.time() + self.expires_in)
        return json_reply(200, {"token_type": "Bearer", "expires_in": self.expires_in,
                                "ext_expires_in": self.expires_in, "access_token": access_token},
                          _NO_STORE)

"""A Microsoft Entra ID (v2.0 endpoint) stand-in for the client-credentials grant.

It serves what MSAL fetches (OIDC discovery, token endpoint; microsoft-apis.md §4.3, §4.5)
and keeps a registry of issued tokens so the Graph stand-in can validate bearer tokens.
Error bodies and HTTP statuses copy what Entra really sends (AADSTS codes).

Clients authenticate with a secret (`client_secret`) or a certificate: a JWT
`client_assertion` (RFC 7523) signed with the private key of a certificate registered with
`register_certificate`, as MSAL builds it from `client_credential={"private_key": ...,
"thumbprint": ...}` (RS256, header `x5t` = SHA-1 thumbprint) or `{"private_key": ...,
"public_certificate": ...}` (PS256, headers `x5t#S256` and `x5c`). The assertion is checked
for real: iss/sub, aud, time window, then the certificate (by header thumbprint), its
validity period and the signature. An expired certificate answers AADSTS700027 with Entra's
"The key used is expired." reason (not AADSTS700024, which is about the assertion's own
nbf/exp).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from .tls import Fault, HttpsStandIn, PrivateCA, Reply, SeenRequest, json_reply

__all__ = ["CLOCK_SKEW", "JWT_BEARER", "ClientCertificate", "EntraStandIn", "TokenInfo",
           "make_client_certificate"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = 300  # seconds an assertion's nbf/iat may lie ahead (Microsoft.IdentityModel's default)

_NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
_OIDC_PATH = re.compile(r"/([^/]+)/v2\.0/\.well-known/openid-configuration")
_TOKEN_PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token")
_NOT_INSTALLED = ("This can happen if the application has not been installed by the administrator "
                  "of the tenant or consented to by any user in the tenant. You may have sent your "
                  "authentication request to the wrong tenant.")
_CERT_DOCS = ("Review the documentation at "
              "https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")
_ASSERTION_ALGORITHMS = ["RS256", "PS256"]
_DER = serialization.Encoding.DER


@dataclass(frozen=True)
class TokenInfo:
    """What a bearer token was issued for; `resource` has no trailing slash."""

    client_id: str
    tenant: str
    resource: str
    expires_at: float


@dataclass(frozen=True)
class ClientCertificate:
    """An app credential: PEM private key (PKCS#8, encrypted when made with a passphrase),
    PEM certificate and its SHA-1 thumbprint in upper-case hex, as the Azure portal shows it."""

    private_key_pem: bytes
    certificate_pem: bytes
    thumbprint_sha1: str

    def write(self, directory: Path | str) -> Path:
        """One PEM file, private key then certificate (what `client_certificate_path` names)."""
        path = Path(directory) / f"client-{self.thumbprint_sha1.lower()}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(self.private_key_pem + self.certificate_pem)
        return path


def make_client_certificate(ca: PrivateCA | None = None, *, passphrase: bytes | None = None,
                            not_after: datetime | None = None) -> ClientCertificate:
    """A fresh RSA 2048 key and certificate (valid until `not_after`, default in a year),
    self-signed (Entra accepts self-signed app certificates) or, given `ca`, issued by it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    not_after = (not_after or now + timedelta(days=365)).astimezone(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "misp2sentinel stand-in client")])
    issuer = subject
    signing_key: CertificateIssuerPrivateKeyTypes = key
    if ca is not None:  # PrivateCA wraps a trustme.CA, which hands out its key and cert as PEM
        issuer = x509.load_pem_x509_certificate(ca._ca.cert_pem.bytes()).subject
        signing_key = cast(CertificateIssuerPrivateKeyTypes, serialization.load_pem_private_key(ca._ca.private_key_pem.bytes(), None))
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - timedelta(days=1)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256()))
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return ClientCertificate(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption),
        certificate.public_bytes(serialization.Encoding.PEM),
        certificate.fingerprint(hashes.SHA1()).hex().upper())


def _aad_error(status: int, error: str, code: int, text: str) -> Reply:
    """Entra's error body: the AADSTS text plus trace ids, as MSAL passes it through."""
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
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


def _invalid_client(code: int, text: str) -> Reply:
    return _aad_error(401, "invalid_client", code, text)


def _epoch(value: Any) -> float | None:
    """A JWT NumericDate as float; None when absent or not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _entra_time(epoch: float) -> str:
    """Entra's 7-digit-fraction UTC stamp, e.g. 2024-10-02T22:05:03.6755160Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _unbase64(text: str, *, urlsafe: bool) -> bytes:
    """Padding-tolerant base64 (x5t values are base64url; x5c is standard and may hold newlines)."""
    compact = "".join(text.split()).rstrip("=")
    return base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=b"-_" if urlsafe else None,
                            validate=True)


def _key_problem(reason: str, client_id: str, thumbprint: str,
                 certificate: x509.Certificate | None = None) -> Reply:
    """AADSTS700027 as Entra words it: the reason, the client's thumbprint, the key found."""
    found = "" if certificate is None else (
        f"Found key 'Start={certificate.not_valid_before_utc:%m/%d/%Y %H:%M:%S}, "
        f"End={certificate.not_valid_after_utc:%m/%d/%Y %H:%M:%S}', ")
    return _invalid_client(700027, (
        f"Client assertion contains an invalid signature. [Reason - {reason}, Thumbprint of key "
        f"used by client: '{thumbprint}', {found}Please visit the Azure Portal, Graph Explorer or "
        f"directly use MS Graph to see configured keys for app Id '{client_id}'. Review the "
        "documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the "
        "corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/"
        "application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as "
        f"'https://graph.microsoft.com/beta/applications/{client_id}']."))


class EntraStandIn(HttpsStandIn):
    """One tenant with app registrations `clients` (client_id -> secret); `register_certificate`
    adds certificate credentials (an app may have a secret, certificates, or both).

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
        self._certificates: dict[str, list[x509.Certificate]] = {}

    @property
    def authority_host(self) -> str:
        return self.url

    @property
    def authority(self) -> str:
        """What to pass to MSAL as `authority=`."""
        return f"{self.url}/{self.tenant}"

    @property
    def token_endpoint(self) -> str:
        """The v2.0 token endpoint: named by the OIDC document, the `aud` of MSAL's assertions."""
        return f"{self.authority}/oauth2/v2.0/token"

    def register_certificate(self, client_id: str, certificate_pem: bytes) -> None:
        """Upload a certificate (PEM) to app `client_id`, registering the app if it is new."""
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        with self.lock:
            self._certificates.setdefault(client_id, []).append(certificate)

    def known_resource(self, resource: str) -> str | None:
        """`resource` without trailing slash when tokens may be issued for it, else None."""
        resource = resource.rstrip("/")
        return resource if resource and resource in {r.rstrip("/") for r in self.resources} else None

    def unknown_resource_message(self, resource: str) -> str:
        """Entra's AADSTS500011 text (without the code) for a resource not in this tenant."""
        return (f"The resource principal named {resource} was not found in the tenant named "
                f"{self.tenant}. {_NOT_INSTALLED}")

    def issue(self, client_id: str, resource: str, expires_in: int | None = None) -> str:
        """Register and return a new opaque access token of `client_id` for `resource`, valid
        `expires_in` seconds (default `self.expires_in`); every issuer of tokens goes through here."""
        access_token = secrets.token_urlsafe(32)
        lifetime = self.expires_in if expires_in is None else expires_in
        with self.lock:
            self._tokens[access_token] = TokenInfo(client_id, self.tenant, resource.rstrip("/"),
                                                   time.time() + lifetime)
        return access_token

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
            "token_endpoint": self.token_endpoint,
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
        with self.lock:
            registered = client_id in self.clients or client_id in self._certificates
        if not registered:
            return _aad_error(400, "unauthorized_client", 700016, (
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant}'. {_NOT_INSTALLED}"))
        refusal = self._authenticate_client(client_id, form)
        if refusal:
            return refusal
        scope = form.get("scope")
        if not scope:
            return _missing("scope")
        if len(scope.split()) != 1 or not scope.endswith("/.default"):
            return _aad_error(400, "invalid_scope", 1002012, (
                f"The provided value for scope {scope} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI)."))
        resource = self.known_resource(scope.removesuffix("/.default"))
        if resource is None:
            return _aad_error(400, "invalid_resource", 500011, self.unknown_resource_message(
                scope.removesuffix("/.default").rstrip("/")))
        access_token = self.issue(client_id, resource)
        return json_reply(200, {"token_type": "Bearer", "expires_in": self.expires_in,
                                "ext_expires_in": self.expires_in, "access_token": access_token},
                          _NO_STORE)

    def _authenticate_client(self, client_id: str, form: dict[str, str]) -> Reply | None:
        """None when the form proves it is `client_id` (secret or certificate assertion)."""
        assertion_type, assertion = form.get("client_assertion_type"), form.get("client_assertion")
        if assertion_type or assertion:
            if not assertion_type:
                return _missing("client_assertion_type")
            if assertion_type != JWT_BEARER:  # code and wording not observed on the real service
                return _aad_error(400, "invalid_request", 900144,
                                  f"The client_assertion_type '{assertion_type}' is not supported.")
            if not assertion:
                return _missing("client_assertion")
            return self._verify_assertion(client_id, assertion)
        secret = form.get("client_secret")
        if not secret:
            return _invalid_client(7000218, "The request body must contain the following "
                                   "parameter: 'client_assertion' or 'client_secret'.")
        if client_id not in self.clients or not secrets.compare_digest(
                secret.encode(), self.clients[client_id].encode()):
            return _invalid_client(7000215, (
                "Invalid client secret provided. Ensure the secret being sent in the request is the "
                "client secret value, not the client secret ID, for a secret added to app "
                f"'{client_id}'."))
        return None

    def _verify_assertion(self, client_id: str, assertion: str) -> Reply | None:
        """Check a JWT client assertion (RFC 7523) as Entra does; None when it is good."""
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return _invalid_client(50027, "JWT token is invalid or malformed.")
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            return _invalid_client(700021, "Client assertion application identifier doesn't match "
                                   f"'client_id' parameter. {_CERT_DOCS}")
        audience = str(claims.get("aud", "")).rstrip("/").lower()
        if audience not in {self.token_endpoint.lower(), f"{self.authority}/oauth2/token".lower()}:
            return _invalid_client(700023, "Client assertion audience claim does not match Realm "
                                   f"issuer. {_CERT_DOCS}")
        now, times = time.time(), {name: _epoch(claims.get(name)) for name in ("exp", "nbf", "iat")}
        if times["exp"] is None or any(t is None and claims.get(n) is not None
                                       for n, t in times.items()):
            return _invalid_client(50027, "JWT token is invalid or malformed.")
        if times["exp"] <= now or max(times["nbf"] or 0, times["iat"] or 0) > now + CLOCK_SKEW:
            return _invalid_client(700024, (
                f"Client assertion is not within its valid time range. Current time: "
                f"{_entra_time(now)}, assertion valid from {_entra_time(times['nbf'] or 0)}, expiry "
                f"time of assertion {_entra_time(times['exp'])}. {_CERT_DOCS}"))
        return self._verify_signature(client_id, assertion, header)

    def _verify_signature(self, client_id: str, assertion: str,
                          header: dict[str, Any]) -> Reply | None:
        """Find the app's certificate named by the header thumbprint (`x5t#S256`, else `x5t`);
        check `x5c` (when sent) is that certificate, its validity period, and the signature."""
        name, algorithm = (("x5t#S256", hashes.SHA256()) if "x5t#S256" in header
                           else ("x5t", hashes.SHA1()))
        try:
            digest = _unbase64(str(header.get(name, "")), urlsafe=True)
            chain = [_unbase64(str(c), urlsafe=False) for c in header.get("x5c") or []]
        except (binascii.Error, ValueError):
            return _invalid_client(50027, "JWT token is invalid or malformed.")
        thumbprint = digest.hex().upper()
        with self.lock:
            certificate = next((c for c in self._certificates.get(client_id, ())
                                if digest and c.fingerprint(algorithm) == digest), None)
        if certificate is None or chain[:1] not in ([], [certificate.public_bytes(_DER)]):
            return _key_problem("The key was not found.", client_id, thumbprint)
        now = datetime.now(UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            return _key_problem("The key used is expired.", client_id, thumbprint, certificate)
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):  # the assertion algorithms are RSA ones
            return _key_problem("The key was not found.", client_id, thumbprint)
        try:
            jwt.decode(assertion, public_key, algorithms=_ASSERTION_ALGORITHMS,
                       options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                "verify_aud": False, "verify_iss": False, "verify_sub": False,
                                "verify_jti": False})
        except jwt.InvalidTokenError:
            return _key_problem("Key was found, but use of the key to verify the signature failed.",
                                client_id, thumbprint, certificate)
        return None

"""Certificate credentials and managed identity: real MSAL against the Entra and managed
identity stand-ins, and the tokens they issue accepted by the Graph and Sentinel stand-ins."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import jwt
import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from standins import DEFAULT_USER_ASSIGNED_CLIENT_ID, StandIns
from standins.entra import JWT_BEARER, ClientCertificate, make_client_certificate
from tests.support import query_url

UNKNOWN_ID = "cccccccc-dddd-eeee-ffff-000000000000"


def cert_app(s: StandIns, credential: dict[str, Any]) -> msal.ConfidentialClientApplication:
    """A fresh app per call (MSAL caches tokens and HTTP 400 answers per app)."""
    return msal.ConfidentialClientApplication(
        s.client_id, client_credential=credential, authority=s.entra.authority,
        instance_discovery=False, azure_region=False)


def registered(s: StandIns, **options: Any) -> ClientCertificate:
    certificate = make_client_certificate(**options)
    s.entra.register_certificate(s.client_id, certificate.certificate_pem)
    return certificate


def client_of(s: StandIns, token: str) -> str | None:
    """The client id Entra issued the token to (None for a token it never issued)."""
    info = s.entra.lookup(token)
    return info.client_id if info else None


def graph_status(s: StandIns, token: str) -> int:
    return requests.get(f"{s.graph.url}/beta/security/tiIndicators",
                        headers={"Authorization": f"Bearer {token}"}).status_code


def last_token_form(s: StandIns) -> dict[str, str]:
    post = [r for r in s.entra.requests_seen if r.method == "POST"][-1]
    return {k: v[0] for k, v in parse_qs(post.body.decode()).items()}


def assertion_header(form: dict[str, str]) -> dict[str, Any]:
    return jwt.get_unverified_header(form["client_assertion"])


def error_code(result: dict[str, Any]) -> tuple[str, list[int]]:
    return result["error"], result["error_codes"]


# --- certificate credentials -------------------------------------------------------------


def test_thumbprint_credential_signs_rs256_with_x5t_and_graph_accepts_the_token(
        standins: StandIns) -> None:
    certificate = registered(standins)
    result = cert_app(standins, {"private_key": certificate.private_key_pem.decode(),
                                 "thumbprint": certificate.thumbprint_sha1}
                      ).acquire_token_for_client([f"{standins.graph.url}/.default"])

    assert graph_status(standins, result["access_token"]) == 200
    form = last_token_form(standins)
    assert form["client_assertion_type"] == JWT_BEARER and "client_secret" not in form
    header = assertion_header(form)
    assert (header["alg"], sorted(header)) == ("RS256", ["alg", "typ", "x5t"])
    claims = jwt.decode(form["client_assertion"], options={"verify_signature": False})
    assert (claims["aud"], claims["iss"], claims["sub"]) == (
        standins.entra.token_endpoint, standins.client_id, standins.client_id)
    # The app keeps its secret next to the certificate.
    secret_app = msal.ConfidentialClientApplication(
        standins.client_id, client_credential=standins.client_secret,
        authority=standins.entra.authority, instance_discovery=False, azure_region=False)
    assert "access_token" in secret_app.acquire_token_for_client([f"{standins.graph.url}/.default"])


def test_public_certificate_credential_signs_ps256_with_x5t_s256_and_x5c(standins: StandIns) -> None:
    certificate = registered(standins)
    result = cert_app(standins, {"private_key": certificate.private_key_pem.decode(),
                                 "public_certificate": certificate.certificate_pem.decode()}
                      ).acquire_token_for_client([f"{standins.graph.url}/.default"])

    assert graph_status(standins, result["access_token"]) == 200
    header = assertion_header(last_token_form(standins))
    assert (header["alg"], sorted(header)) == ("PS256", ["alg", "typ", "x5c", "x5t#S256"])


def test_encrypted_key_with_passphrase_and_the_written_single_pem_file(standins: StandIns,
                                                                       tmp_path: Any) -> None:
    certificate = registered(standins, passphrase=b"correct horse")
    pem = certificate.write(tmp_path).read_text()
    assert pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert pem.index("-----BEGIN CERTIFICATE-----") > pem.index("-----END ENCRYPTED PRIVATE KEY-----")
    assert (tmp_path / f"client-{certificate.thumbprint_sha1.lower()}.pem").stat().st_mode & 0o077 == 0
    # The whole file serves as both: cryptography skips the PEM blocks of the other kind.
    result = cert_app(standins, {"private_key": pem, "public_certificate": pem,
                                 "passphrase": "correct horse"}
                      ).acquire_token_for_client([f"{standins.sentinel.url}/.default"])

    assert requests.post(query_url(standins), json={},
                         headers={"Authorization": f"Bearer {result['access_token']}"}
                         ).status_code == 200


def test_certificate_issued_by_the_private_ca_has_an_upper_case_sha1_thumbprint(
        standins: StandIns) -> None:
    certificate = make_client_certificate(standins.ca)
    parsed = x509.load_pem_x509_certificate(certificate.certificate_pem)

    assert parsed.issuer != parsed.subject
    assert certificate.thumbprint_sha1 == parsed.fingerprint(hashes.SHA1()).hex().upper()
    standins.entra.register_certificate("dddddddd-0000-0000-0000-000000000001",
                                        certificate.certificate_pem)
    result = msal.ConfidentialClientApplication(
        "dddddddd-0000-0000-0000-000000000001",
        client_credential={"private_key": certificate.private_key_pem,
                           "thumbprint": certificate.thumbprint_sha1},
        authority=standins.entra.authority, instance_discovery=False, azure_region=False,
    ).acquire_token_for_client([f"{standins.graph.url}/.default"])
    assert client_of(standins, result["access_token"]) == (
        "dddddddd-0000-0000-0000-000000000001")


def test_unregistered_certificate_is_700027_key_not_found(standins: StandIns) -> None:
    registered(standins)
    stranger = make_client_certificate()
    result = cert_app(standins, {"private_key": stranger.private_key_pem.decode(),
                                 "thumbprint": stranger.thumbprint_sha1}
                      ).acquire_token_for_client([f"{standins.graph.url}/.default"])

    assert error_code(result) == ("invalid_client", [700027])
    first_line = result["error_description"].split("\r\n")[0]
    assert first_line.startswith("AADSTS700027: Client assertion contains an invalid signature. "
                                 "[Reason - The key was not found., Thumbprint of key used by "
                                 f"client: '{stranger.thumbprint_sha1}'")
    assert "\r\nTrace ID: " in result["error_description"]


def test_expired_certificate_is_700027_key_expired(standins: StandIns) -> None:
    expired = registered(standins, not_after=datetime.now(UTC) - timedelta(days=1))
    result = cert_app(standins, {"private_key": expired.private_key_pem.decode(),
                                 "thumbprint": expired.thumbprint_sha1}
                      ).acquire_token_for_client([f"{standins.graph.url}/.default"])

    assert error_code(result) == ("invalid_client", [700027])
    assert "[Reason - The key used is expired., " in result["error_description"]
    assert "Found key 'Start=" in result["error_description"]


def test_key_that_does_not_match_the_named_certificate_is_700027_signature(standins: StandIns) -> None:
    certificate, other = registered(standins), make_client_certificate()
    result = cert_app(standins, {"private_key": other.private_key_pem.decode(),
                                 "thumbprint": certificate.thumbprint_sha1}
                      ).acquire_token_for_client([f"{standins.graph.url}/.default"])

    assert error_code(result) == ("invalid_client", [700027])
    assert ("Key was found, but use of the key to verify the signature failed"
            in result["error_description"])


def post_assertion(s: StandIns, certificate: ClientCertificate,
                   **claims: Any) -> requests.Response:
    """The token request with a hand-made RS256 assertion: correct but for `claims` (an int is
    seconds from now, a str may name {tenant})."""
    now = time.time()
    payload = {"aud": s.entra.token_endpoint, "iss": s.client_id, "sub": s.client_id,
               "exp": now + 600, "iat": now, "jti": str(uuid.uuid4())}
    for name, value in claims.items():
        payload[name] = now + value if isinstance(value, int) else value.format(tenant=s.tenant)
    x5t = jwt.utils.base64url_encode(bytes.fromhex(certificate.thumbprint_sha1)).decode()
    assertion = jwt.encode(payload, certificate.private_key_pem, algorithm="RS256",
                           headers={"x5t": x5t})
    return requests.post(s.entra.token_endpoint, data={
        "client_id": s.client_id, "grant_type": "client_credentials",
        "scope": f"{s.graph.url}/.default", "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion})


@pytest.mark.parametrize(("claims", "code"), [
    ({"iss": UNKNOWN_ID}, 700021),
    ({"aud": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"}, 700023),
    ({"exp": -60}, 700024),
    ({"nbf": 3600}, 700024),
    ({"iat": 3600}, 700024),
    ({"exp": "tomorrow"}, 50027),
], ids=["iss", "aud", "expired", "nbf-ahead", "iat-ahead", "exp-not-a-number"])
def test_assertion_claims_are_checked(standins: StandIns, claims: dict[str, Any], code: int) -> None:
    answer = post_assertion(standins, registered(standins), **claims)

    assert (answer.status_code, answer.json()["error"], answer.json()["error_codes"]) == (
        401, "invalid_client", [code])


def test_assertion_within_the_clock_skew_is_accepted(standins: StandIns) -> None:
    answer = post_assertion(standins, registered(standins), nbf=120, iat=120)

    assert answer.status_code == 200


# --- managed identity --------------------------------------------------------------------


@pytest.fixture
def app_service(standins: StandIns, monkeypatch: pytest.MonkeyPatch) -> StandIns:
    """The environment App Service gives an app with a managed identity."""
    for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", standins.identity.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", standins.identity.header_secret)
    return standins


def managed_token(identity: msal.ManagedIdentity, resource: str) -> dict[str, Any]:
    return msal.ManagedIdentityClient(identity, http_client=requests.Session()
                                      ).acquire_token_for_client(resource=resource)


def test_system_assigned_identity_token_is_accepted_by_graph_and_sentinel(app_service: StandIns) -> None:
    s = app_service
    graph = managed_token(msal.SystemAssignedManagedIdentity(), s.graph.url)
    sentinel = managed_token(msal.SystemAssignedManagedIdentity(), s.sentinel.url)

    assert graph_status(s, graph["access_token"]) == 200
    assert requests.post(query_url(s), json={},
                         headers={"Authorization": f"Bearer {sentinel['access_token']}"}
                         ).status_code == 200
    assert client_of(s, graph["access_token"]) == s.client_id
    assert 3000 < graph["expires_in"] <= s.entra.expires_in
    assert s.identity.tokens_issued == 2
    seen = s.identity.requests_seen[0]
    assert (seen.method, seen.path, seen.query) == (
        "GET", "/msi/token", {"api-version": ["2019-08-01"], "resource": [s.graph.url]})
    assert seen.headers["X-IDENTITY-HEADER"] == s.identity.header_secret


def test_user_assigned_identity_by_client_id(app_service: StandIns) -> None:
    s = app_service
    known = managed_token(msal.UserAssignedManagedIdentity(
        client_id=DEFAULT_USER_ASSIGNED_CLIENT_ID), s.graph.url)
    unknown = managed_token(msal.UserAssignedManagedIdentity(client_id=UNKNOWN_ID), s.graph.url)

    assert graph_status(s, known["access_token"]) == 200
    assert client_of(s, known["access_token"]) == DEFAULT_USER_ASSIGNED_CLIENT_ID
    assert s.identity.requests_seen[0].query["client_id"] == [DEFAULT_USER_ASSIGNED_CLIENT_ID]
    assert unknown == {"error": "invalid_scope",
                       "error_description": "400, Unable to load the proper Managed Identity."}
    assert s.identity.tokens_issued == 1


def test_wrong_identity_header_and_unknown_resource_fail(app_service: StandIns,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s = app_service
    unknown_resource = managed_token(msal.SystemAssignedManagedIdentity(), "https://vault.azure.net")
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-secret")
    wrong_header = managed_token(msal.SystemAssignedManagedIdentity(), s.graph.url)
    missing_header = requests.get(s.identity.endpoint, params={
        "api-version": "2019-08-01", "resource": s.graph.url})

    assert unknown_resource["error"] == "invalid_scope"
    assert unknown_resource["error_description"].startswith(
        "400, AADSTS500011: The resource principal named https://vault.azure.net was not found")
    assert wrong_header == {"error": "invalid_scope", "error_description":
                            "401, Unauthorized. The X-IDENTITY-HEADER value is invalid."}
    assert missing_header.status_code == 400
    assert s.identity.tokens_issued == 0 and s.entra.issued_tokens() == []

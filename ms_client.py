"""What every Microsoft API call shares: an MSAL client-credentials token, a requests.Session,
retries with backoff, one re-authentication on 401, and one error type with the service's reason.

Only HTTP lives here and in the clients built on it (graph_client, sentinel_client).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import msal
import requests
import requests.adapters

import constants as C
from constants import ErrorCause, Outcome
from request_log import RequestLog
from settings import Settings, split_pem

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
STATUS_CAUSES = {404: ErrorCause.NOT_FOUND, 429: ErrorCause.THROTTLED}
WINDOW_SECONDS = 60.0
MAX_ATTEMPTS = 5
MAX_WAIT_SECONDS = 120.0
# Bodies go out as compact JSON, the form misp_transformer.json_bytes counts for the 16 kB cap
# (requests' json= adds ', ' and ': ', which took an indicator fit to the cap over it).
WIRE_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class MicrosoftError(Exception):
    """A call failed for good. `cause` says why (`--check` finds its fix by it); `fatal` means
    no later call can succeed either (auth, permission); `aadsts` is Entra's error code."""

    def __init__(self, message: str, cause: ErrorCause, fatal: bool = False, aadsts: int | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.fatal = fatal
        self.aadsts = aadsts


@dataclasses.dataclass(frozen=True)
class ItemResult:
    """What the service said about one item of a bulk request; `key` is what it was sent under,
    `reason` the service's words when it was not accepted.

    `ambiguous`: an earlier try of this request may also have been processed (a timeout, a 5xx,
    a garbled 2xx); the copies it made were removed before the retry, but one the service
    creates only later can still appear.
    """

    key: str
    remote_id: str | None
    outcome: Outcome = Outcome.ACCEPTED
    reason: str = ""
    ambiguous: bool = False

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How the Entra app proves who it is: a managed identity, a certificate or a secret."""

    tenant: str
    client_id: str
    authority_host: str
    client_secret: str = dataclasses.field(repr=False)
    certificate_path: Path | None
    certificate_password: str = dataclasses.field(repr=False)
    managed_identity: str  # "", "system", or a user-assigned identity's client id

    @classmethod
    def of(cls, settings: Settings) -> Credentials:
        return cls(settings.tenant, settings.client_id, settings.authority_host, settings.client_secret,
                   settings.client_certificate_path, settings.client_certificate_password, settings.managed_identity)


@dataclasses.dataclass(frozen=True)
class Connection:
    """The slice of the settings one client needs: who it is, which resource, how fast."""

    credentials: Credentials
    resource: str  # the base URL of the calls, and the token audience unless `audience` is set
    per_minute: int
    concurrency: int
    timeout: float
    audience: str = ""  # a token audience other than `resource` (a regional Defender host)

    @classmethod
    def of(cls, settings: Settings, resource: str, per_minute: int, audience: str = "") -> Connection:
        return cls(Credentials.of(settings), resource, per_minute, settings.max_concurrent_requests, settings.http_timeout,
                   audience)


def aadsts_code(text: str) -> int | None:
    """The AADSTS number Entra writes at the start of its error descriptions, if any."""
    match = C.AADSTS_CODE_RE.search(text)
    return int(match.group(1)) if match else None


def error_text(body: Any, fallback: str) -> str:
    """`{"error": {"code", "message"}}` (possibly JSON inside a string) or
    `{"statusCode", "message"}` as one line."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return one_line(body)[:300] or fallback
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return one_line(f"{error.get('code', 'Error')}: {error.get('message', '')}")
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return one_line(body["message"])
    return fallback


def one_line(text: str) -> str:
    """A service's text fit for stderr and the run report: a proxy's HTML page or a multi-line
    message becomes one line, and a control character (ESC) left in it is escaped."""
    return C.CONTROL_CHARACTERS_RE.sub(lambda match: match.group(0).encode("unicode_escape").decode("ascii"),
                                       " ".join(text.split()))


def response_body(response: requests.Response) -> Any:
    """The parsed JSON, else (an HTML page, truncated JSON, an empty body) the start of the text."""
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def value_list(count: int | None = None, identified: bool = False) -> Callable[[Any], bool]:
    """The documented 2xx body of Graph's bulk actions and lists and of queryIndicators pages:
    `{"value": [objects]}`, with one object per item sent when `count` is given (an answer
    missing items leaves their fate unknown, like a timeout), each with a string `id` when
    `identified` (a listing's items are resources)."""
    def documented(body: Any) -> bool:
        value = body.get("value") if isinstance(body, dict) else None
        return (isinstance(value, list) and count in (None, len(value))
                and all(isinstance(item, dict) and (not identified or isinstance(item.get("id"), str)) for item in value))
    return documented


def retry_after(response: requests.Response | None, attempt: int) -> float:
    """Retry-After, else the "Try again in N seconds" of Sentinel's 429 text, else capped
    exponential backoff with jitter."""
    if response is not None:
        header = response.headers.get("Retry-After", "").strip()
        if C.ASCII_NUMBER_RE.fullmatch(header):  # '²'.isdigit() is true, but float('²') raises
            return min(float(header), MAX_WAIT_SECONDS)
        hinted = C.SENTINEL_RETRY_TEXT_RE.search(response.text or "")
        if hinted:
            return min(float(hinted.group(1)), MAX_WAIT_SECONDS)
    return min(2.0 ** attempt, MAX_WAIT_SECONDS) * (0.5 + random.random() / 2)


class RateLimiter:
    """At most `per_minute` calls in any window (60 s), shared by all worker threads; a caller
    waits only when the window is full.

    A call holds its slot while in flight and counts from when its answer arrived: the service
    saw it no later than that, so this window never runs ahead of the service's (no 429).
    """

    def __init__(self, per_minute: int, window: float) -> None:
        self.per_minute = per_minute
        self.window = window
        self._times: list[float] = []  # answer times in the window; inf while in flight
        self._changed = threading.Condition()

    def acquire(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                self._times = [t for t in self._times if t > now - self.window]
                if len(self._times) < self.per_minute:
                    self._times.append(math.inf)
                    return
                earliest = min(self._times)
                self._changed.wait(None if earliest == math.inf else earliest + self.window - now)

    def release(self) -> None:
        with self._changed:
            self._times.remove(math.inf)
            self._times.append(time.monotonic())
            self._changed.notify_all()


class MicrosoftClient:
    """An Entra app calling one Microsoft resource (`connection.resource` is the token audience)."""

    service = "Microsoft"
    permission = ""  # what the app must be granted, in the words of the service's portal
    limited_operations: frozenset[str] | None = None  # calls the per-minute limit covers (None: all)

    def __init__(self, connection: Connection, log: RequestLog) -> None:
        self.connection = connection
        self.credentials = connection.credentials
        self.log = log
        self.resource = connection.resource
        self.audience = connection.audience or connection.resource
        self.limiter = RateLimiter(connection.per_minute, WINDOW_SECONDS)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "misp2sentinel"
        self.session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=connection.concurrency))
        self._app: msal.ConfidentialClientApplication | msal.ManagedIdentityClient | None = None
        self._current = ""  # the last token handed out (never logged: it is a registered secret)
        self._lock = threading.Lock()  # one token request at a time; counters
        self.requests_sent = 0

    # --- token ------------------------------------------------------------------------------
    def _new_app(self) -> msal.ConfidentialClientApplication | msal.ManagedIdentityClient:
        """MSAL for the configured credential: a managed identity (no secret anywhere), a
        certificate, or a client secret."""
        credentials = self.credentials
        if credentials.managed_identity:
            identity = (msal.SystemAssignedManagedIdentity() if credentials.managed_identity == "system"
                        else msal.UserAssignedManagedIdentity(client_id=credentials.managed_identity))
            return msal.ManagedIdentityClient(identity, http_client=self.session)
        authority = f"{credentials.authority_host}/{credentials.tenant}"
        try:
            return msal.ConfidentialClientApplication(
                credentials.client_id, client_credential=self._credential(), authority=authority,
                instance_discovery=False, azure_region=False, timeout=self.connection.timeout,
            )
        except ValueError as exc:
            raise MicrosoftError(f"Microsoft Entra has no tenant {credentials.tenant!r} at {credentials.authority_host} "
                                 f"(its OpenID configuration was refused: {self.log.scrub(str(exc))[:120]})",
                                 ErrorCause.NO_TENANT, fatal=True) from None
        except requests.RequestException as exc:
            raise MicrosoftError(f"cannot reach Microsoft Entra at {credentials.authority_host}: {type(exc).__name__}",
                                 ErrorCause.ENTRA_UNREACHABLE, fatal=True) from None

    def _credential(self) -> str | dict[str, Any]:
        """The secret, or MSAL's certificate form (private key + public certificate: PS256, x5c)."""
        path = self.credentials.certificate_path
        if path is None:
            return self.credentials.client_secret
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise MicrosoftError(f"cannot read client_certificate_path {path}: {exc.strerror}",
                                 ErrorCause.CREDENTIAL_UNREADABLE, fatal=True) from None
        key, certificate = split_pem(pem)
        if not key or not certificate:
            raise MicrosoftError(f"client_certificate_path {path} must hold a PEM private key and its certificate",
                                 ErrorCause.CREDENTIAL_UNREADABLE, fatal=True)
        credential: dict[str, Any] = {"private_key": key, "public_certificate": certificate}
        if self.credentials.certificate_password:
            credential["passphrase"] = self.credentials.certificate_password
        return credential

    def token(self) -> str:
        """A valid access token; MSAL's cache answers until five minutes before expiry."""
        with self._lock:
            return self._token()

    def _token(self) -> str:
        if self._app is None:
            self._app = self._new_app()
        try:
            if isinstance(self._app, msal.ManagedIdentityClient):
                result = self._app.acquire_token_for_client(resource=self.audience)
            else:
                result = self._app.acquire_token_for_client([f"{self.audience}/.default"])
        except msal.exceptions.MsalServiceError as exc:
            raise MicrosoftError(f"Microsoft Entra token endpoint failed: {exc}", ErrorCause.AUTH_REFUSED, fatal=True,
                                 aadsts=aadsts_code(str(exc))) from None
        except requests.RequestException as exc:
            raise MicrosoftError(f"cannot reach Microsoft Entra token endpoint: {type(exc).__name__}",
                                 ErrorCause.ENTRA_UNREACHABLE, fatal=True) from None
        if "access_token" not in result:
            raise self._token_error(result)
        token = str(result["access_token"])
        self.log.add_secret(token)
        self._current = token
        return token

    def _drop_token(self, refused: str) -> None:
        """A 401: a new token on the next call, unless another worker already got one after
        this token was refused (workers that met the same 401 renew it once, not each)."""
        with self._lock:
            if refused == f"Bearer {self._current}":
                self._app = None

    def _token_error(self, result: dict[str, Any]) -> MicrosoftError:
        """One line with the AADSTS code; whoever catches the error writes its error file."""
        codes = result.get("error_codes") or []
        description = str(result.get("error_description", "")).split("\n")[0].strip()  # Entra ends the line with "\r\n"
        code = f"AADSTS{codes[0]}" if codes else description.split(":")[0]
        aadsts = codes[0] if codes and isinstance(codes[0], int) else aadsts_code(description)
        message = self.log.scrub(f"Microsoft Entra refused the token request ({result.get('error', 'error')}, {code}): {description}")
        return MicrosoftError(message, ErrorCause.AUTH_REFUSED, fatal=True, aadsts=aadsts)

    def pages(self, name: str, url: str, next_key: str, method: str = "GET", body: Any = None) -> Iterator[dict[str, Any]]:
        """Pages of a listing, following `next_key` with GET. A link seen twice (a known Azure
        paging bug), or a page of nothing but items already listed (the same page behind ever
        new links), stops the listing with an error instead of looping."""
        seen: set[str] = set()
        listed: set[str] = set()
        next_url: str | None = url
        while next_url:
            if next_url in seen:
                raise MicrosoftError(f"{name}: {self.service} returned the same {next_key} twice ({next_url})",
                                     ErrorCause.PAGING_LOOP)
            seen.add(next_url)
            page = self._check(name, self._call(name, method, next_url, body, value_list(identified=True)), (200,))
            ids = {item["id"] for item in page["value"]}
            if ids and ids <= listed:
                raise MicrosoftError(f"{name}: {self.service} returned a page of items already listed "
                                     f"(its {next_key} does not advance)", ErrorCause.PAGING_LOOP)
            listed |= ids
            yield page
            next_url, method, body = page.get(next_key), "GET", None

    # --- HTTP with retries ------------------------------------------------------------------
    def _call(self, name: str, method: str, url: str, body: Any, documented: Callable[[Any], bool],
              before_retry: Callable[[], None] | None = None) -> requests.Response:
        """One logical call: retried on 429/5xx/network and on a garbled 2xx (a body that
        `documented` does not accept: a proxy's HTML page, truncated JSON), re-authenticated
        once on 401. A 2xx still garbled on the last try is a MicrosoftError, never a success.

        `before_retry` runs before a retry whose first try may have reached Graph (a timeout,
        a reset, a 5xx, a garbled 2xx): a submit uses it to remove any copy Graph made, so a
        retry never leaves a duplicate. A 429 was not processed, so it is simply resent.
        """
        reauthenticated = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            response, failure = self._attempt(name, method, url, body)
            if response is not None and response.status_code == 401 and not reauthenticated:
                self._drop_token(str(response.request.headers.get("Authorization", "")))
                reauthenticated = True
                continue
            if response is not None and response.status_code not in RETRY_STATUSES:
                failure = self._garbled(response, documented)
                if not failure:
                    return response
            if attempt < MAX_ATTEMPTS:
                time.sleep(retry_after(response, attempt))
                if before_retry is not None and (response is None or response.status_code != 429):
                    before_retry()
        if response is None:
            raise MicrosoftError(f"{name}: {self.service} unreachable after {MAX_ATTEMPTS} attempts: {failure}", ErrorCause.TRANSPORT)
        if failure:
            raise MicrosoftError(f"{name}: {self.service} {failure} ({MAX_ATTEMPTS} attempts)", ErrorCause.GARBLED)
        return response

    def _garbled(self, response: requests.Response, documented: Callable[[Any], bool]) -> str:
        """Why a 2xx cannot be trusted, with the start of its body (scrubbed); "" if it can."""
        if not 200 <= response.status_code < 300 or documented(response_body(response)):
            return ""
        start = " ".join(response.text[:2 * C.GARBLED_BODY_SHOWN].split())[:C.GARBLED_BODY_SHOWN]
        kind = response.headers.get("Content-Type") or "no Content-Type"
        return self.log.scrub(f"answered HTTP {response.status_code} with a body that is not the documented JSON "
                              f"({kind}): {start!r}")

    def _attempt(self, name: str, method: str, url: str, body: Any) -> tuple[requests.Response | None, str]:
        headers = {"Authorization": f"Bearer {self.token()}"}
        data = None if body is None else WIRE_JSON.encode(body).encode("ascii")
        if data is not None:
            headers["Content-Type"] = "application/json"
        limiter = self.limiter_for(name)
        if limiter is not None:
            limiter.acquire()
        started = time.monotonic()
        with self._lock:
            self.requests_sent += 1
        try:
            response = self.session.request(method, url, data=data, headers=headers, timeout=self.connection.timeout)
        except requests.RequestException as exc:
            failure = f"{type(exc).__name__}"
            self.log.request(name, method, url, body, None, {"exception": failure}, time.monotonic() - started)
            return None, failure
        finally:
            if limiter is not None:
                limiter.release()
        self.log.request(name, method, url, body, response.status_code, response_body(response), time.monotonic() - started)
        return response, ""

    def limiter_for(self, name: str) -> RateLimiter | None:
        """The pace an operation keeps (None: unpaced)."""
        return self.limiter if self.limited_operations is None or name in self.limited_operations else None

    def _check(self, name: str, response: requests.Response, ok: tuple[int, ...]) -> Any:
        """The JSON body of a successful answer, or MicrosoftError with the service's reason."""
        body = response_body(response)
        if response.status_code in ok:
            return body
        reason = error_text(body, f"HTTP {response.status_code}")
        if response.status_code in (401, 403):
            raise MicrosoftError(f"{name}: {self.service} refused access (HTTP {response.status_code}, {reason}); "
                                 f"check the app has {self.permission}", ErrorCause.PERMISSION_MISSING, fatal=True)
        cause = STATUS_CAUSES.get(response.status_code, ErrorCause.SERVICE_FAILED)
        raise MicrosoftError(f"{name}: {self.service} answered HTTP {response.status_code}: {reason}", cause)


Client = TypeVar("Client", bound=MicrosoftClient)
Other = TypeVar("Other", bound=MicrosoftClient)


def connected(client: Other | None, owner: object) -> Other:
    """The client an online adapter made; an offline one (a dry run, `--explain`) has none."""
    if client is None:
        raise RuntimeError(f"{type(owner).__name__} has no connection (a dry run sends nothing)")
    return client


class MicrosoftAdapter(Generic[Client]):
    """What the adapters of Microsoft services share: a client, or none (a dry run, `--explain`),
    and the clients of other APIs it reads (closed with it)."""

    def __init__(self, client: Client | None, *companions: MicrosoftClient | None) -> None:
        self._client = client
        self._companions = [companion for companion in companions if companion is not None]

    @property
    def client(self) -> Client:
        return connected(self._client, self)

    @property
    def requests_sent(self) -> int:
        return self._client.requests_sent if self._client else 0

    def token(self) -> str:
        """A token now (MicrosoftError if none); returns its audience."""
        self.client.token()
        return self.client.audience

    def close(self) -> None:
        for client in ([self._client] if self._client is not None else []) + self._companions:
            client.session.close()

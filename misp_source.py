"""Published MISP events through PyMISP: a metadata listing, pages of full events, events by uuid.

Every way MISP can fail (refused key, error dict, HTML login page, 5xx, network) becomes one
MispError with a one-line message, so the run stops loudly instead of syncing "0 indicators".
So does a page holding something other than events, or a MISP that ignores `page`.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import queue
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import requests
import urllib3
from pymisp import PyMISP, PyMISPError
from pymisp.exceptions import MISPServerError, PyMISPUnexpectedResponse

import constants as C
from constants import MispCause
from misp_transformer import DecayPolicy, is_true
from request_log import RequestLog
from settings import ConfigError, Settings

# PyMISP logs failed requests (bodies included) on its own logger; we report errors ourselves.
_pymisp_logger = logging.getLogger("pymisp")
_pymisp_logger.addHandler(logging.NullHandler())
_pymisp_logger.propagate = False


class MispError(Exception):
    """MISP could not be reached, refused us, or answered something that is not events; the
    cause lets `--check` give the fix without reading the message."""

    def __init__(self, message: str, cause: MispCause = MispCause.OTHER) -> None:
        super().__init__(message)
        self.cause = cause


def _first_line(text: object, limit: int = 200) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line[:limit]


# Causes buried in PyMISP's long connection errors (it raises them as text only), in the words
# an operator needs. Read here, at the boundary, once; everything after goes by MispCause.
_CAUSES = (
    ("CERTIFICATE_VERIFY_FAILED", MispCause.UNTRUSTED, "TLS certificate not trusted (trust its CA with misp_ca_bundle)"),
    ("Authentication failed", MispCause.KEY_REFUSED, "MISP refused the API key (HTTP 403)"),
    ("Connection refused", MispCause.CONNECTION_REFUSED, "connection refused"),
    ("Name or service not known", MispCause.NO_HOST, "host name not found"),
    ("timed out", MispCause.TIMED_OUT, "timed out"),
    ("SSLError", MispCause.TLS_FAILED, "TLS handshake failed"),
)


def _explain(error: object) -> tuple[MispCause, str]:
    """The cause of a PyMISP/requests error, and one short phrase for it (else its first line)."""
    text = str(error)
    found = next(((cause, phrase) for marker, cause, phrase in _CAUSES if marker in text), None)
    return found or _user_lookup(text) or (MispCause.OTHER, _first_line(text))


def _user_lookup(text: str) -> tuple[MispCause, str] | None:
    """PyMISP's "Unable to get the user settings: (status, body)". MISP refusing a key says
    "Authentication failed" (matched before this); a bare 401/403 comes from another server
    (a wrong host, a proxy asking for its own login), a 404 from a wrong path."""
    found = C.MISP_USER_LOOKUP_RE.search(text)
    if not found:
        return None
    status = int(found.group(1))
    if status in (401, 403):
        return (MispCause.NOT_MISP,
                f"HTTP {status} that is not MISP's answer to a refused key: misp_domain may point at another server")
    return MispCause.NOT_MISP_URL, f"HTTP {status} where MISP's API should be: misp_domain is not a MISP base URL"


def _server_error(error: MISPServerError) -> str:
    """PyMISP reports every 5xx as "Error code 500" followed by the body: the body's title
    (a proxy's "502 Bad Gateway") or MISP's JSON message says what really happened."""
    first, _, body = str(error).partition("\n")
    title = C.HTML_TITLE_RE.search(body)
    detail = title.group(1).strip() if title else _json_message(body) or _first_line(body)
    if first.startswith("Error code 500"):
        first = "HTTP 5xx"
    return f"{first.rstrip(':')}: {detail}" if detail else first.rstrip(":")


def _json_message(body: str) -> str:
    """MISP's own `{"name", "message"}` error text, "" when the body is not that."""
    try:
        answer = json.loads(body)
    except ValueError:
        return ""
    message = answer.get("message") or answer.get("name") if isinstance(answer, dict) else None
    return _first_line(message) if isinstance(message, str) else ""


def _describe_errors(errors: Any) -> str:
    """PyMISP's `{'errors': (status, body)}` or `{'errors': 'text'}` as one line."""
    if isinstance(errors, tuple) and len(errors) == 2:
        status, body = errors
        message = body.get("message") or body.get("name") if isinstance(body, dict) else body
        return f"HTTP {status}: {_first_line(message or '')}"
    return _first_line(errors)


def prefetched(pages: Iterator[list[dict[str, Any]]]) -> Generator[list[dict[str, Any]], None, None]:
    """Fetch page k+1 on a helper thread while page k is transformed and uploaded. At most one
    page waits in the hand-over, so memory stays bounded by a few pages; an error on the
    helper thread is raised here, in order."""
    handover: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(message: str, item: Any) -> bool:
        while not stop.is_set():
            try:
                handover.put((message, item), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        try:
            for page in pages:
                if not hand_over("page", page):
                    return
            hand_over("end", None)
        except BaseException as exc:
            hand_over("error", exc)

    helper = threading.Thread(target=fetch, name="misp-prefetch", daemon=True)
    helper.start()
    try:
        while True:
            message, item = handover.get()
            if message == "end":
                return
            if message == "error":
                raise item
            yield item
    finally:
        stop.set()
        helper.join(timeout=5)


def _event_of(wrapped: Any) -> dict[str, Any] | None:
    """The event inside `{"Event": {...}}` (or a bare event dict); None for anything else."""
    event = wrapped.get("Event", wrapped) if isinstance(wrapped, dict) else None
    return event if isinstance(event, dict) else None


def _event_uuid(wrapped: Any) -> str:
    """The event's uuid in lower case; "" when the item is not an event with a string uuid."""
    uuid = (_event_of(wrapped) or {}).get("uuid")
    return uuid.lower() if isinstance(uuid, str) else ""


def _epoch(value: Any) -> int:
    """MISP sends epochs as strings of digits; anything else (missing, "²", "-1") is 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else 0


class EventStamp(NamedTuple):
    """An event's two clocks: `timestamp` moves on every edit, `publish_timestamp` on every
    (re)publish; 0 when MISP sent none or no plain digits."""

    timestamp: int
    publish_timestamp: int


def stamp_of(wrapped: Any) -> EventStamp:
    event = _event_of(wrapped) or {}
    return EventStamp(_epoch(event.get("timestamp")), _epoch(event.get("publish_timestamp")))


@dataclass(frozen=True)
class Listing:
    """One metadata-only view of what the filters select, taken once: it decides a run's
    membership. `events`: uuid (lower case) -> stamps of the events matching every filter;
    `primary_count`: events the first filter alone selects, which its full fetch pages over."""

    events: Mapping[str, EventStamp]
    primary_count: int


def _non_event_kind(item: Any) -> str:
    return "dict without a string Event.uuid" if isinstance(item, dict) else type(item).__name__


def _check_events(items: list[Any], where: str, limit: int) -> None:
    """A page must hold at most `limit` events, each with a uuid: anything else would read as
    "these events are gone" and delete their indicators."""
    strangers = [_non_event_kind(item) for item in items if not _event_uuid(item)]
    if strangers:
        raise MispError(f"{where} holds {len(strangers)} items that are not events ({', '.join(sorted(set(strangers)))})")
    if len(items) > limit:
        raise MispError(f"{where} holds {len(items)} events, more than the page size {limit}")


class MispSource:
    """Connects once, then reads events: a metadata listing, pages of full events until MISP
    returns an empty page, or chosen events by uuid."""

    def __init__(self, settings: Settings, log: RequestLog) -> None:
        self.settings = settings
        self.log = log
        self._misp: PyMISP | None = None

    def connect(self) -> PyMISP:
        """PyMISP checks version, user and types at construction: that is our reachability test."""
        if self._misp is None:
            if self.settings.misp_verifycert is False:  # settings warned once; not on every request
                warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            try:
                self._misp = PyMISP(
                    self.settings.misp_url, self.settings.misp_key, ssl=self.settings.misp_verifycert,
                    timeout=self.settings.http_timeout, tool="misp2sentinel",
                )
            except PyMISPError as exc:
                cause, phrase = _explain(exc)
                raise MispError(f"cannot connect to MISP at {self.settings.misp_url}: {phrase}", cause) from None
        return self._misp

    def listing(self) -> Listing:
        """The events all filters select, as metadata only (no attributes): one search per
        filter, intersected. Asks MISP every time; the caller keeps it for the run."""
        return self._list_matching_all(list(self.settings.misp_event_filters))

    def pages(self, listing: Listing | None = None) -> Iterator[list[dict[str, Any]]]:
        """Pages of full events from the first filter's search; memory holds a few pages.

        With a listing, only its events are yielded and its count bounds the pages. With
        several filters (the seed's list form) and no listing, one is taken first, so an
        event must match all of them.
        """
        misp = self.connect()
        primary, *others = self.settings.misp_event_filters
        if listing is None and others:
            listing = self.listing()
        max_pages = C.MISP_MAX_PAGES if listing is None else self._page_budget(listing.primary_count)
        for events in prefetched(self._search(misp, primary, "MISP events", max_pages, budgeted=listing is not None)):
            if listing is not None:
                events = [event for event in events if _event_uuid(event) in listing.events]
            if events:
                yield events

    def fetch_events(self, uuids: Iterable[str]) -> Iterator[list[dict[str, Any]]]:
        """Full bodies of chosen events (say, listed ones the paged fetch missed because the
        pages shifted), in batches of the page size, each one search with the first filter.
        An event that no longer matches is simply absent; one not asked for is an error. Read in
        the order given: where two events yield one attribute the first fed wins, so the listing's
        order gives what a paged full read gives."""
        misp = self.connect()
        primary = self.settings.misp_event_filters[0]
        wanted = list(dict.fromkeys(uuid.lower() for uuid in uuids))
        size = self.settings.misp_page_size
        batches = [wanted[start:start + size] for start in range(0, len(wanted), size)]
        for number, batch in enumerate(batches, start=1):
            where = f"MISP events by uuid, batch {number} of {len(batches)}"
            events = self._page(misp, {**primary, "uuid": batch}, 1, where)
            strangers = {_event_uuid(event) for event in events} - set(batch)
            if strangers:
                raise MispError(f"{where} holds {len(strangers)} events not asked for: MISP ignored the uuid filter")
            if events:
                yield events

    def count_matching(self) -> int:
        """How many events the filters select, read as metadata only (for --check)."""
        return len(self.listing().events)

    def alive_event_uuids(self) -> set[str] | None:
        """Events the filters select when their time window is ignored: still published and
        still matching, so their indicators are left to expire. None when the filters have no
        time window (then the fetch itself saw every such event)."""
        filters = self.settings.misp_event_filters
        if not any(C.MISP_TIME_FILTERS & one.keys() for one in filters):
            return None
        timeless = [{k: v for k, v in one.items() if k not in C.MISP_TIME_FILTERS} for one in filters]
        return set(self._list_matching_all(timeless).events)

    def _list_matching_all(self, filters: list[dict[str, Any]]) -> Listing:
        """One metadata search per filter; the first one's stamps, of the uuids all share."""
        misp = self.connect()
        listed = [
            {_event_uuid(event): stamp_of(event)
             for events in self._search(misp, {**one, "metadata": True}, f"MISP filter {index}") for event in events}
            for index, one in enumerate(filters, start=1)
        ]
        common = set(listed[0]).intersection(*listed[1:])
        return Listing({uuid: stamp for uuid, stamp in listed[0].items() if uuid in common}, len(listed[0]))

    def _page_budget(self, listed: int) -> int:
        """Pages a full fetch of `listed` events may take: room for the events published
        during the run, and for the empty page that ends it."""
        return -(-listed * C.MISP_PAGE_GROWTH // self.settings.misp_page_size) + C.MISP_SPARE_PAGES

    def _search(self, misp: PyMISP, filters: dict[str, Any], label: str,
                max_pages: int = C.MISP_MAX_PAGES, budgeted: bool = False) -> Iterator[list[dict[str, Any]]]:
        """Pages until an empty one, each event once: an event published meanwhile shifts the
        rest, so a page may repeat some. A page of nothing but events already seen means MISP
        ignores `page` (it would loop forever), unless a listing's page budget bounds the search
        (then it may also be old events republished meanwhile, and the budget ends a loop);
        more than `max_pages` means it never ends."""
        seen: set[str] = set()
        for page in range(1, max_pages + 1):
            events = self._page(misp, filters, page, f"{label} page {page}")
            if not events:
                return
            fresh = [event for event in events if _event_uuid(event) not in seen]
            if not fresh and budgeted:
                continue
            if not fresh:
                raise MispError(f"{label} page {page} repeats only events of earlier pages: MISP ignores `page`")
            seen.update(_event_uuid(event) for event in fresh)
            yield fresh
        raise MispError(f"{label}: still not at the end after {max_pages} pages; MISP does not page as expected")

    def _page(self, misp: PyMISP, filters: dict[str, Any], page: int, where: str) -> list[dict[str, Any]]:
        """One restSearch answer, checked to be a list of events; `where` names it in errors.
        With a decaying model, full events carry each attribute's scores."""
        limit = self.settings.misp_page_size
        decay = {"include_decay_score": True} if self.settings.misp_decay_model and not filters.get("metadata") else {}
        result = self._ask(misp, "events", {**filters, **decay, "limit": limit, "page": page}, where)
        if not isinstance(result, list):
            raise MispError(f"{where}: expected a list of events, got {type(result).__name__}")
        _check_events(result, where, limit)
        return result

    def attributes(self, needle: str) -> list[dict[str, Any]]:
        """Attributes whose uuid (when `needle` is a UUID) or value is `needle`, each with its
        event's header: MISP's attributes restSearch, for --explain."""
        key = "uuid" if C.UUID_RE.fullmatch(needle) else "value"
        result = self._ask(self.connect(), "attributes", {key: needle}, f"MISP attributes by {key}")
        found = result.get("Attribute") if isinstance(result, dict) else None
        if not isinstance(found, list):
            raise MispError(f"MISP attributes by {key}: expected {{'Attribute': [...]}}, got {type(result).__name__}")
        return [item for item in found if isinstance(item, dict)]

    def event(self, uuid: str, filters: dict[str, Any]) -> dict[str, Any] | None:
        """One event by uuid as `filters` shape it (None when they do not select it)."""
        events = self._page(self.connect(), {**filters, "uuid": uuid}, 1, f"MISP event {uuid}")
        return events[0] if events else None

    def can_sight(self) -> bool:
        """Whether the key's role may add sightings (getVersion's `perm_sighting`)."""
        instance = self.connect().misp_instance_version
        return isinstance(instance, dict) and instance.get("perm_sighting") is True

    def add_sighting(self, attribute_uuid: str, source: str, moment: int) -> str:
        """One type-0 sighting of one attribute, addressed by its uuid (never by value: that would
        sight every attribute with the value). "" when MISP saved it, else MISP's reason: MISP
        answers 200 even when it saved nothing, so only an answer holding the saved Sighting counts."""
        where = f"MISP sighting of attribute {attribute_uuid}"
        body = {"type": C.SIGHTING_TYPE_SEEN, "source": source, "timestamp": moment}
        started = time.monotonic()
        answer = self._call(where, lambda: self.connect().add_sighting(body, attribute_uuid))
        errors = answer.get("errors") if isinstance(answer, dict) else None
        status = errors[0] if isinstance(errors, tuple) and errors and isinstance(errors[0], int) else 200  # PyMISP hides it
        self.log.request("misp-sighting", "POST", f"{self.settings.misp_url}sightings/add/{attribute_uuid}", body, status,
                         answer, time.monotonic() - started)
        saved = answer.get("Sighting") if isinstance(answer, dict) else None
        if isinstance(saved, dict) and saved.get("id"):
            return ""
        if isinstance(answer, dict) and "errors" in answer:  # an HTTP error: ACL's 403 when the role lacks perm_sighting
            raise MispError(f"{where}: MISP refused it ({_describe_errors(answer['errors'])}); the key's role needs "
                            "perm_sighting")
        message = answer.get("message") if isinstance(answer, dict) else None
        return _first_line(message) if isinstance(message, str) and message.strip() else \
            f"MISP answered without a saved sighting: {_first_line(json.dumps(answer))}"

    def has_sighting(self, attribute_uuid: str, source: str, day: str) -> bool:
        """Read back before posting again: the attribute's sightings, by uuid (attributes restSearch)."""
        where = f"MISP sightings of attribute {attribute_uuid}"
        result = self._ask(self.connect(), "attributes", {"uuid": attribute_uuid, "include_sightings": True}, where)
        found = result.get("Attribute") if isinstance(result, dict) else None
        if not isinstance(found, list):
            raise MispError(f"{where}: expected {{'Attribute': [...]}}, got {type(result).__name__}")
        return any(_sighting_day(sighting) == day and str(sighting.get("source")) == source
                   and str(sighting.get("type", C.SIGHTING_TYPE_SEEN)) == C.SIGHTING_TYPE_SEEN
                   for attribute in found if isinstance(attribute, dict)
                   for sighting in attribute.get("Sighting") or () if isinstance(sighting, dict))

    def decay_policy(self) -> tuple[DecayPolicy | None, str]:
        """misp_decay_model as MISP defines it, and a warning when the tool cannot predict its
        crossing (a formula other than Polynomial). A model MISP does not have, or has disabled
        (MISP scores only enabled models), is a config error."""
        wanted = self.settings.misp_decay_model
        if not wanted:
            return None, ""
        models: dict[str, dict[str, Any]] = {}
        for page in range(1, C.MISP_MAX_PAGES + 1):
            listed = self._decaying_models(page)
            fresh = {str(model.get("id")): model for model in listed or () if str(model.get("id")) not in models}
            models.update(fresh)
            if listed is None or len(listed) < C.MISP_DECAY_INDEX_PAGE or not fresh:  # the end, or a MISP that ignores `page`
                break
        return decay_policy_of(list(models.values()), wanted, self.settings.decay_threshold, self.settings.decay_as_confidence)

    def _decaying_models(self, page: int) -> list[dict[str, Any]] | None:
        """One page of MISP's decaying models (its index pages them, newest first); None for
        the 404 Cake answers for a page past the last."""
        where = f"MISP decaying models, page {page}"
        path = f"decayingModel/index/page:{page}"
        started = time.monotonic()
        answer = self._call(where, lambda: _json_only(self.connect().direct_call(path)))
        self.log.request("misp-decayingModel", "GET", f"{self.settings.misp_url}{path}", None, 200,
                         {"models": len(answer) if isinstance(answer, list) else None}, time.monotonic() - started)
        if isinstance(answer, dict) and "errors" in answer:
            errors = answer["errors"]
            if page > 1 and isinstance(errors, tuple) and errors[:1] == (404,):
                return None
            raise MispError(f"{where}: MISP refused the request: {_describe_errors(errors)}")
        if not isinstance(answer, list):
            raise MispError(f"{where}: expected a list of models, got {type(answer).__name__}")
        return [item["DecayingModel"] for item in answer if isinstance(item, dict) and isinstance(item.get("DecayingModel"), dict)]

    def _ask(self, misp: PyMISP, controller: str, body: dict[str, Any], where: str) -> Any:
        """One restSearch, every PyMISP failure turned into a MispError naming `where`."""
        started = time.monotonic()
        result = self._call(where, lambda: misp.search(controller=controller, return_format="json", **body))
        self.log.request(
            "misp-restSearch", "POST", f"{self.settings.misp_url}{controller}/restSearch", body, 200,
            {controller: len(result) if isinstance(result, list) else None}, time.monotonic() - started,
        )
        if isinstance(result, dict) and "errors" in result:
            raise MispError(f"{where}: MISP refused the search: {_describe_errors(result['errors'])}")
        return result

    @staticmethod
    def _call(where: str, request: Callable[[], Any]) -> Any:
        """One PyMISP call, every failure turned into a MispError naming `where`."""
        try:
            return request()
        except PyMISPUnexpectedResponse:
            raise MispError(f"{where}: MISP answered with something that is not JSON (a login page or a proxy?)",
                            MispCause.NOT_JSON) from None
        except MISPServerError as exc:
            raise MispError(f"{where}: MISP server error {_server_error(exc)}") from None
        except (PyMISPError, ValueError) as exc:
            raise MispError(f"{where}: {_first_line(exc)}") from None
        except requests.RequestException as exc:
            cause, phrase = _explain(exc)
            raise MispError(f"{where}: cannot reach MISP: {type(exc).__name__}: {phrase}", cause) from None


def _sighting_day(sighting: dict[str, Any]) -> str:
    """The UTC day of a sighting MISP returns (`date_sighting`, epoch seconds)."""
    try:
        return dt.datetime.fromtimestamp(int(str(sighting.get("date_sighting"))), dt.UTC).date().isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def decay_policy_of(models: list[dict[str, Any]], wanted: str, threshold: float | None,
                    as_confidence: bool) -> tuple[DecayPolicy, str]:
    """The model `wanted` names (its id, or its name without case) among MISP's, as the run
    applies it, and a warning when its formula is not the Polynomial one the tool predicts."""
    found = [m for m in models if str(m.get("id")) == wanted] or \
        [m for m in models if str(m.get("name", "")).strip().lower() == wanted.lower()]
    known = ", ".join(f"{m.get('id')} {m.get('name')!r}" for m in models) or "none"
    if len(found) != 1:
        problem = "names more than one" if found else "is not one of"
        raise ConfigError(f"misp_decay_model {wanted!r} {problem} MISP's decaying models ({known}); use its id")
    model = found[0]
    label = f"misp_decay_model {wanted!r} ({model.get('id')} {model.get('name')!r})"
    if not is_true(model.get("enabled")):
        raise ConfigError(f"{label} is disabled in MISP, which scores enabled models only: enable it there")
    raw = model.get("parameters")
    parameters: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    own = _positive(parameters.get("threshold"), allow_zero=True)
    if threshold is None and own is None:
        raise ConfigError(f"{label} has no numeric threshold in MISP: set decay_threshold")
    lifetime, speed = _positive(parameters.get("lifetime")), _positive(parameters.get("decay_speed"))
    formula = str(model.get("formula") or C.DECAY_POLYNOMIAL).strip().lower()
    predictable = formula == C.DECAY_POLYNOMIAL and lifetime is not None and speed is not None
    policy = DecayPolicy(str(model.get("id")), str(model.get("name", "")), threshold if threshold is not None else own or 0.0,
                         as_confidence, lifetime if predictable else None, speed if predictable else None)
    warning = "" if predictable else (
        f"{label} uses the {model.get('formula')!r} formula, not Polynomial with a positive lifetime and decay_speed: "
        "its scores are used, but expiries stay days_to_expire")
    return policy, warning


def _json_only(answer: Any) -> Any:
    """PyMISP's direct_call gives a page that is not JSON as its text: refuse it as its JSON calls do."""
    if isinstance(answer, str):
        raise PyMISPUnexpectedResponse(f"not JSON ({len(answer)} characters)")
    return answer


def _positive(value: Any, allow_zero: bool = False) -> float | None:
    """A model parameter that is a number above 0 (or 0 itself when allowed), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) if value > 0 or (allow_zero and value == 0) else None

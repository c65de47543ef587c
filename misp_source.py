"""Published MISP events, page by page, through PyMISP.

Every way MISP can fail (refused key, error dict, HTML login page, 5xx, network) becomes one
MispError with a one-line message, so the run stops loudly instead of syncing "0 indicators".
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
from pymisp import PyMISP, PyMISPError
from pymisp.exceptions import MISPServerError, PyMISPUnexpectedResponse

import constants as C
from request_log import RequestLog
from settings import Settings

# PyMISP logs failed requests (bodies included) on its own logger; we report errors ourselves.
_pymisp_logger = logging.getLogger("pymisp")
_pymisp_logger.addHandler(logging.NullHandler())
_pymisp_logger.propagate = False


class MispError(Exception):
    """MISP could not be reached, refused us, or answered something that is not events."""


def _first_line(text: str, limit: int = 200) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line[:limit]


# Causes buried in PyMISP's long connection errors, in the words an operator needs.
_CAUSES = (
    ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted (trust its CA with REQUESTS_CA_BUNDLE or misp_verifycert)"),
    ("Authentication failed", "MISP refused the API key (HTTP 403)"),
    ("Unable to get the user settings", "MISP refused the API key"),
    ("Connection refused", "connection refused"),
    ("Name or service not known", "host name not found"),
    ("timed out", "timed out"),
    ("SSLError", "TLS handshake failed"),
)


def _explain(error: object) -> str:
    """The cause of a PyMISP/requests error in one short phrase, else its first line."""
    text = str(error)
    return next((phrase for marker, phrase in _CAUSES if marker in text), _first_line(text))


def _describe_errors(errors: Any) -> str:
    """PyMISP's `{'errors': (status, body)}` or `{'errors': 'text'}` as one line."""
    if isinstance(errors, tuple) and len(errors) == 2:
        status, body = errors
        message = body.get("message") or body.get("name") if isinstance(body, dict) else body
        return f"HTTP {status}: {_first_line(message or '')}"
    return _first_line(errors)


def prefetched(pages: Iterator[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    """Fetch page k+1 on a helper thread while page k is transformed and uploaded. At most one
    page waits in the hand-over, so memory stays bounded by a few pages; an error on the
    helper thread is raised here, in order."""
    handover: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(kind: str, item: Any) -> bool:
        while not stop.is_set():
            try:
                handover.put((kind, item), timeout=0.1)
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
        except BaseException as exc:  # noqa: BLE001 - re-raised on the consuming thread
            hand_over("error", exc)

    helper = threading.Thread(target=fetch, name="misp-prefetch", daemon=True)
    helper.start()
    try:
        while True:
            kind, item = handover.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        helper.join(timeout=5)


def _event_uuid(wrapped: Any) -> str:
    event = wrapped.get("Event", wrapped) if isinstance(wrapped, dict) else None
    uuid = event.get("uuid") if isinstance(event, dict) else None
    return uuid.lower() if isinstance(uuid, str) else ""


class MispSource:
    """Connects once, then yields pages of `{"Event": ...}` dicts until MISP returns an empty page."""

    def __init__(self, settings: Settings, log: RequestLog) -> None:
        self.settings = settings
        self.log = log
        self._misp: PyMISP | None = None

    def connect(self) -> PyMISP:
        """PyMISP checks version, user and types at construction: that is our reachability test."""
        if self._misp is None:
            try:
                self._misp = PyMISP(
                    self.settings.misp_url, self.settings.misp_key, ssl=self.settings.misp_verifycert,
                    timeout=self.settings.http_timeout, tool="misp2sentinel",
                )
            except PyMISPError as exc:
                raise MispError(f"cannot connect to MISP at {self.settings.misp_url}: {_explain(exc)}") from None
        return self._misp

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        """Pages of events as restSearch returns them; memory holds one page at a time.

        With several filters (the seed's list form) an event must match all of them: the
        others are read first as lightweight metadata, keeping only the event UUIDs.
        """
        misp = self.connect()
        primary, *others = self.settings.misp_event_filters
        allowed = self._uuids_matching_all(misp, others) if others else None
        for events in prefetched(self._search(misp, primary, "MISP events")):
            if allowed is not None:
                events = [event for event in events if _event_uuid(event) in allowed]
            if events:
                yield events

    def count_matching(self) -> int:
        """How many events the filters select, read as metadata only (for --check)."""
        return len(self._uuids_matching_all(self.connect(), list(self.settings.misp_event_filters)))

    def alive_event_uuids(self) -> set[str] | None:
        """Events the filters select when their time window is ignored: still published and
        still matching, so their indicators are left to expire. None when the filters have no
        time window (then the fetch itself saw every such event)."""
        filters = self.settings.misp_event_filters
        if not any(C.MISP_TIME_FILTERS & one.keys() for one in filters):
            return None
        timeless = [{k: v for k, v in one.items() if k not in C.MISP_TIME_FILTERS} for one in filters]
        return self._uuids_matching_all(self.connect(), timeless)

    def _uuids_matching_all(self, misp: PyMISP, filters: list[dict[str, Any]]) -> set[str]:
        matching = [
            {_event_uuid(event) for events in self._search(misp, {**one, "metadata": True}, f"MISP filter {index}") for event in events}
            for index, one in enumerate(filters, start=1)
        ]
        return set.intersection(*matching) - {""}

    def _search(self, misp: PyMISP, filters: dict[str, Any], label: str) -> Iterator[list[dict[str, Any]]]:
        page = 1
        while True:
            events = self._page(misp, filters, page, label)
            if not events:
                return
            yield events
            page += 1

    def _page(self, misp: PyMISP, filters: dict[str, Any], page: int, label: str) -> list[dict[str, Any]]:
        limit = self.settings.misp_page_size
        started = time.monotonic()
        where = f"{label} page {page}"
        try:
            result = misp.search(controller="events", return_format="json", limit=limit, page=page, **filters)
        except PyMISPUnexpectedResponse:
            raise MispError(f"{where}: MISP answered with something that is not JSON (a login page or a proxy?)") from None
        except MISPServerError as exc:
            raise MispError(f"{where}: MISP server error: {_first_line(exc)}") from None
        except (PyMISPError, ValueError) as exc:
            raise MispError(f"{where}: {_first_line(exc)}") from None
        except requests.RequestException as exc:
            raise MispError(f"{where}: cannot reach MISP: {type(exc).__name__}: {_explain(exc)}") from None
        self.log.request(
            "misp-restSearch", "POST", f"{self.settings.misp_url}events/restSearch",
            {**filters, "limit": limit, "page": page}, 200,
            {"events": len(result) if isinstance(result, list) else None}, time.monotonic() - started,
        )
        if isinstance(result, dict) and "errors" in result:
            raise MispError(f"{where}: MISP refused the search: {_describe_errors(result['errors'])}")
        if not isinstance(result, list):
            raise MispError(f"{where}: expected a list of events, got {type(result).__name__}")
        return result

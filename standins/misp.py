"""A MISP 2.5.1 stand-in: what PyMISP needs to construct, `POST /events/restSearch` and
`POST /attributes/restSearch` (by attribute `uuid` or `value`).

Events restSearch selects, pages and shapes events as MISP 2.5.1's Event::restSearch does
(standins/misp_search.py says how, and what it simplifies), so the tool's paging and filtering
are exercised for real.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from .misp_search import USER_ORG_ID, DecayingModel, Search, Warninglist, sighting_record
from .tls import HttpsStandIn, PrivateCA, Reply, SeenRequest, html_reply, json_reply

__all__ = ["FAULT_MODES", "MispStandIn", "load_event_file"]

AUTH_FAILED = ("Authentication failed. Please make sure you pass the API key of an API enabled "
               "user along in the Authorization header.")
FAULT_MODES = frozenset({"500", "502-html", "html-200", "403", "errors-200", "reset", "non-events",
                         "ignore-page"})
# A 200 whose list holds no events: what a broken proxy or plugin has been seen to send.
_NON_EVENTS = ["not an event", {"foo": 1}, 42]
# DecayingModelController's $paginate: 50 models a page; `page:N` asks for another.
DECAY_INDEX_PAGE = 50
_DECAY_INDEX_RE = re.compile(r"/decayingModel/index(?:/page:([1-9][0-9]*))?")
_SIGHTING_ADD_RE = re.compile(r"/sightings/add(?:/([^/]+))?/?")
# ACLComponent's ForbiddenException for a role without the permission an action needs.
NO_PERMISSION = "You do not have permission to use this functionality."
SIGHTING_SOURCE_MAX = 255  # the sightings.source column

_VERSION = {
    "version": "2.5.1", "pymisp_recommended_version": "2.5.34.4", "perm_sync": False,
    "perm_sighting": False, "perm_galaxy_editor": False, "perm_analyst_data": False,
    "uuid": "5f6c3f7e-6a54-4a0c-9a1c-3b8f0d2e7a11", "request_encoding": [],
    "filter_sightings": True,
}
_ME: dict[str, Any] = {
    "User": {"id": "1", "email": "sync@standin.example", "org_id": "1", "role_id": "5",
             "password": "*****", "autoalert": False, "disabled": False, "totp": None},
    "Role": {"id": "5", "name": "sync user", "perm_auth": True, "perm_sync": False,
             "perm_add": False, "perm_modify": False, "perm_site_admin": False},
    "UserSetting": [],
    "Organisation": {"id": "1", "name": "StandIn Org", "uuid": "5f6c3f7e-0000-4000-8000-000000000001",
                     "local": True},
}
_BAD_GATEWAY = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
                "</body>\r\n</html>\r\n")
_LOGIN_PAGE = ("<!DOCTYPE html><html><head><title>Users - MISP</title></head><body>"
               "<form action=\"/users/login\" method=\"post\"><input name=\"data[User][email]\">"
               "<input type=\"password\" name=\"data[User][password]\"></form></body></html>")
# Fields that are an event's clocks and publication state, not its content.
_CLOCKS = frozenset({"timestamp", "publish_timestamp", "published"})


def load_event_file(path: Path | str) -> dict[str, Any]:
    """Read one exported event; exports without the `Event` wrapper get wrapped."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {"Event": data.get("Event", data)}


def _truthy(value: object) -> bool:
    """MISP-style flag: true/1/"1"/"true" are on; false/0/"0"/""/None are off."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true"}
    return bool(value)


def _int(value: object) -> int:
    """An epoch as MISP stores it; "²" and other non-ASCII digits (isdigit() but not int()) are 0."""
    return int(value) if isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit()) else 0


def _as_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


class MispStandIn(HttpsStandIn):
    """MISP server holding `events` (public list of {"Event": ...}; edit it between runs),
    the enabled `warninglists`, the `decaying_models`, and `sightings` (epoch seconds per
    attribute uuid) that restSearch applies; `partner_sightings` are another organisation's,
    which events carry but scores do not count (MISP's default Sightings_policy); tests set them."""

    def __init__(self, key: str, events: list[dict[str, Any]], *, ca: PrivateCA | None = None) -> None:
        super().__init__(ca)
        self.key = key
        self.events: list[dict[str, Any]] = copy.deepcopy(events)
        self._page_faults: dict[int | None, str] = {}
        self._page_hooks: dict[int, Callable[[], None]] = {}
        self.track_edits = True  # False: whoever edits `events` moves timestamps (a benchmark's big MISP)
        self._contents: dict[int, str] = {}  # id(event) -> its content when last seen
        describe = resources.files("pymisp").joinpath("data/describeTypes.json").read_text("utf-8")
        self._describe_types = {"result": json.loads(describe)["result"]}
        self.warninglists: list[Warninglist] = []
        self.decaying_models: list[DecayingModel] = [DecayingModel()]
        self.sightings: dict[str, list[int]] = {}
        self.partner_sightings: dict[str, list[int]] = {}
        self.perm_sighting = True  # the key's role may add sightings
        self.sighting_records: list[dict[str, Any]] = []  # every sighting /sightings/add saved, as stored
        self.refuse_sightings: str | None = None  # a reason: /sightings/add saves nothing and says so
        self.decay_index_pages = True  # False: the decaying model index answers every page with the first
        self._last_search: tuple[dict[str, Any], Search] | None = None

    def fail_page(self, page: int | None, mode: str) -> None:
        """Make every restSearch for `page` (1 when none is sent; None: every page) fail with
        `mode` until cleared. "ignore-page" answers as if page 1 had been asked."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {sorted(FAULT_MODES)}")
        with self.lock:
            self._page_faults[page] = mode

    def on_page(self, page: int, callback: Callable[[], None]) -> None:
        """Call `callback` once, just before answering the next full (not metadata) restSearch
        for `page`: a test edits `events` there, as a MISP user would between two requests."""
        with self.lock:
            self._page_hooks[page] = callback

    def clear_faults(self) -> None:
        """Forget page faults and page hooks not yet run."""
        with self.lock:
            self._page_faults.clear()
            self._page_hooks.clear()

    def respond(self, request: SeenRequest) -> Reply:
        if request.headers.get("Authorization") != self.key:
            return _error(403, AUTH_FAILED, request.path)
        route = (request.method, request.path)
        if route == ("GET", "/servers/getVersion"):
            return json_reply(200, {**_VERSION, "perm_sighting": self.perm_sighting})
        if route == ("GET", "/users/view/me"):
            return json_reply(200, {**_ME, "Role": {**_ME["Role"], "perm_sighting": self.perm_sighting}})
        if request.method == "POST" and (added := _SIGHTING_ADD_RE.fullmatch(request.path)):
            if not self.perm_sighting:
                return _error(403, NO_PERMISSION, request.path)
            return self._add_sighting(request, added.group(1))
        if route == ("GET", "/attributes/describeTypes.json"):
            return json_reply(200, self._describe_types)
        if request.method == "GET" and (listed := _DECAY_INDEX_RE.fullmatch(request.path)):
            return self._decay_index(int(listed.group(1) or 1), request.path)
        if route == ("POST", "/events/restSearch"):
            return self._rest_search(request)
        if route == ("POST", "/attributes/restSearch"):
            return self._attribute_search(request)
        return _error(404, "Not Found", request.path)

    def _decay_index(self, page: int, path: str) -> Reply:
        """DecayingModelController::index: paginated, newest first (`page:N`); a page past the
        last is Cake's NotFoundException."""
        with self.lock:
            models = sorted(self.decaying_models, key=lambda model: int(model.id), reverse=True)
            page = page if self.decay_index_pages else 1
        size = DECAY_INDEX_PAGE
        if page > max(1, -(-len(models) // size)):
            return _error(404, "Not Found", path)
        return json_reply(200, [model.index_entry() for model in models[(page - 1) * size:page * size]])

    def _rest_search(self, request: SeenRequest) -> Reply:
        body = request.json if isinstance(request.json, dict) else {}
        body = body.get("request", body) if isinstance(body.get("request"), dict) else body
        page = int(body.get("page") or 1)
        with self.lock:
            fault = self._page_faults.get(page, self._page_faults.get(None))
            hook = None if _truthy(body.get("metadata")) else self._page_hooks.pop(page, None)
        if hook is not None:
            hook()
        if fault == "ignore-page":
            page = 1
        elif fault:
            return _fault_reply(fault, request.path)
        if str(body.get("returnFormat", "json")) != "json":
            return _error(400, "Invalid return format.", request.path)
        try:
            with self.lock:  # like MISP: select events first, page them, then fetch and trim the page
                if self.track_edits:
                    self._clock_edits()
                search = self._search(body)
                selected = [event for event in self.events if self._selects(event["Event"], body)]
                shaped = [{"Event": copy.deepcopy(search.shape(event["Event"], self.warninglists,
                                                               self.decaying_models, self.sightings, self.partner_sightings))}
                          for event in search.page(selected, page) if search.fetches(event["Event"])]
        except ValueError as error:
            return _error(400, str(error), request.path)
        return json_reply(200, {"response": shaped}, {"X-Result-Count": str(len(selected))})

    def _attribute_search(self, request: SeenRequest) -> Reply:
        """MISP's Attribute::restSearch for `uuid` and `value` (a whole value, or one half of a
        composite `a|b`, without case as MySQL compares): flat attributes, each with its
        `Event` header; deleted ones only when `deleted` is set (misp.md §2)."""
        body = request.json if isinstance(request.json, dict) else {}
        body = body.get("request", body) if isinstance(body.get("request"), dict) else body
        if str(body.get("returnFormat", "json")) != "json":
            return _error(400, "Invalid return format.", request.path)
        uuids = {v.lower() for v in _as_list(body["uuid"])} if body.get("uuid") not in (None, "", []) else None
        values = {v.lower() for v in _as_list(body["value"])} if body.get("value") not in (None, "", []) else None
        deleted, with_sightings = _truthy(body.get("deleted")), _truthy(body.get("includeSightings"))
        with self.lock:
            found = [{**_flat(event["Event"], attribute), **({"Sighting": self._sightings_of(attribute)} if with_sightings else {})}
                     for event in self.events for attribute in _all_attributes(event["Event"], deleted)
                     if (uuids is None or str(attribute.get("uuid")).lower() in uuids)
                     and (values is None or _value_matches(attribute, values))]
        return json_reply(200, {"response": {"Attribute": found}})

    def _sightings_of(self, attribute: dict[str, Any]) -> list[dict[str, Any]]:
        """includeSightings: the attribute's sightings as MISP attaches them, those posted (with
        their source and type) and those a test set in `sightings` (type 0, no source)."""
        key = str(attribute.get("uuid"))
        posted = [{**{k: v for k, v in record.items() if k != "attribute_uuid"}, "Organisation": _ME["Organisation"]}
                  for record in self.sighting_records if record["attribute_uuid"] == key]
        known = {int(record["date_sighting"]) for record in posted if record["type"] == "0"}
        scripted = [sighting_record(attribute, moment, USER_ORG_ID, n) for n, moment in enumerate(self.sightings.get(key, []), 1)
                    if moment not in known]
        return posted + scripted

    def _add_sighting(self, request: SeenRequest, target: str | None) -> Reply:
        """SightingsController::add and Sighting::saveSightings (MISP 2.5) for an API call: the
        attribute from the path, else the body's `uuid` or `id`, else every attribute with the
        body's `value`(s); `date` + `time` or `timestamp` (else now). A saved one is answered with
        the Sighting (RestResponse::viewData); a failure is a 200 whose `message` says why."""
        body = request.json if isinstance(request.json, dict) else {}
        for wrapper in ("request", "Sighting"):
            body = body[wrapper] if isinstance(body.get(wrapper), dict) else body
        reason = self.refuse_sightings or _sighting_problem(body)
        if reason:
            return json_reply(200, {"message": f"Could not add the Sighting. Reason: {reason}"})
        ident = target or body.get("uuid") or body.get("id")
        values = _as_list(body["value"]) if body.get("value") else _as_list(body.get("values"))
        with self.lock:
            found = self._sighted(ident, values)
            if not found:
                return json_reply(200, {"message": "Could not add the Sighting. Reason: No valid attributes found that "
                                                   "match the sighting criteria."})
            saved = [self._save_sighting(event, attribute, body) for event, attribute in found]
        return json_reply(200, {"Sighting": {key: value for key, value in saved[-1].items() if key != "attribute_uuid"}})

    def _sighted(self, ident: Any, values: list[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(event, attribute) pairs a sighting hits: one by id or uuid, or all with a value."""
        pairs = [(event["Event"], attribute) for event in self.events for attribute in _all_attributes(event["Event"], False)]
        if ident:
            wanted = str(ident).lower()
            return [(e, a) for e, a in pairs if wanted in (str(a.get("uuid")).lower(), str(a.get("id")))]
        lowered = {value.lower() for value in values}
        return [(e, a) for e, a in pairs if lowered and _value_matches(a, lowered)]

    def _save_sighting(self, event: dict[str, Any], attribute: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        moment = _sighting_moment(body)
        record = {"id": str(len(self.sighting_records) + 1), "attribute_id": str(attribute.get("id", "")),
                  "event_id": str(event.get("id", "")), "org_id": "1", "date_sighting": str(moment),
                  "uuid": str(uuid.uuid4()), "source": str(body.get("source", "")).strip(),
                  "type": str(body.get("type", "0")), "attribute_uuid": str(attribute.get("uuid"))}
        self.sighting_records.append(record)
        if record["type"] == "0":
            self.sightings.setdefault(record["attribute_uuid"], []).append(moment)
        return record

    def _clock_edits(self) -> None:
        """Move the `timestamp` of every event a test edited since the last request, as MISP does
        on any change to an event's attributes, objects or tags (publishing moves only
        `publish_timestamp`, which tests set themselves)."""
        for wrapped in self.events:
            event = wrapped["Event"]
            content = json.dumps({k: v for k, v in event.items() if k not in _CLOCKS}, sort_keys=True, default=str)
            last = self._contents.get(id(event))
            if last is not None and last != content:
                event["timestamp"] = str(max(int(time.time()), _int(event.get("timestamp")) + 1))
            self._contents[id(event)] = content

    def _selects(self, event: dict[str, Any], body: dict[str, Any]) -> bool:
        """Phase 1 of MISP's restSearch: does the event match the filters (no copying)?"""
        return self._search(body).selects(event)

    def _search(self, body: dict[str, Any]) -> Search:
        """One Search per request body (its tag and org tables are read once per request)."""
        if self._last_search is None or self._last_search[0] is not body:
            self._last_search = (body, Search(body, self.events))
        return self._last_search[1]


def _sighting_problem(body: dict[str, Any]) -> str:
    """What saveSightings refuses before it looks for attributes ("" when nothing)."""
    if str(body.get("type", "0")) not in ("0", "1", "2"):
        return "Invalid type, please change it before you POST 1000000 sightings."
    if len(str(body.get("source", "")).strip()) > SIGHTING_SOURCE_MAX:
        return f"source is longer than {SIGHTING_SOURCE_MAX} characters."
    try:
        _sighting_moment(body)
    except ValueError:
        return "Invalid date, time or timestamp."
    return ""


def _sighting_moment(body: dict[str, Any]) -> int:
    """`date` + `time` (Y-m-d, H:i:s, the server's UTC here), else `timestamp`, else now."""
    if body.get("date") and body.get("time"):
        moment = datetime.datetime.strptime(f"{body['date']}:{body['time']}", "%Y-%m-%d:%H:%M:%S")
        return int(moment.replace(tzinfo=datetime.UTC).timestamp())
    return int(str(body["timestamp"])) if body.get("timestamp") not in (None, "") else int(time.time())


def _attributes_of(event: dict[str, Any], deleted: bool) -> list[dict[str, Any]]:
    """The event's attributes and those of its objects (of deleted objects only if asked)."""
    return event.get("Attribute", []) + [a for o in event.get("Object", [])
                                         if deleted or not _truthy(o.get("deleted"))
                                         for a in o.get("Attribute", [])]


def _all_attributes(event: dict[str, Any], deleted: bool) -> list[dict[str, Any]]:
    """What an attribute search looks at: deleted attributes only when asked."""
    return [a for a in _attributes_of(event, deleted) if deleted or not _truthy(a.get("deleted"))]


def _value_matches(attribute: dict[str, Any], values: set[str]) -> bool:
    value = str(attribute.get("value", "")).lower()
    return value in values or any(part in values for part in value.split("|"))


def _flat(event: dict[str, Any], attribute: dict[str, Any]) -> dict[str, Any]:
    """An attribute as attributes/restSearch returns it: its columns plus the event header."""
    header = {key: event.get(key) for key in ("id", "info", "org_id", "orgc_id", "uuid", "distribution", "publish_timestamp")}
    return {**copy.deepcopy(attribute), "Event": header}


def _error(status: int, message: str, path: str) -> Reply:
    """MISP's RestResponseComponent::throwException shape."""
    return json_reply(status, {"name": message, "message": message, "url": path})


def _fault_reply(mode: str, path: str) -> Reply:
    if mode == "500":
        return json_reply(500, {"name": "Internal error",
                                "message": "An internal error has occurred.", "url": path})
    if mode == "502-html":
        return html_reply(502, _BAD_GATEWAY)
    if mode == "html-200":
        return html_reply(200, _LOGIN_PAGE)
    if mode == "403":
        return _error(403, AUTH_FAILED, path)
    if mode == "errors-200":
        return json_reply(200, {"errors": "something went wrong"})
    if mode == "non-events":
        return json_reply(200, {"response": _NON_EVENTS})
    return Reply(0, reset=True)

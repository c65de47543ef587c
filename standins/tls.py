"""TLS plumbing shared by the stand-ins: a private CA and a small HTTPS server base class.

The stand-ins are real HTTPS servers so that the tool's real clients (PyMISP, MSAL,
requests) exercise certificate verification, keep-alive and error paths exactly as in
production. Subclasses only implement `respond(request) -> Reply`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import trustme

__all__ = ["Fault", "HttpsStandIn", "PrivateCA", "Reply", "SeenRequest", "html_reply", "json_reply"]


class PrivateCA:
    """A throw-away CA plus one server certificate valid for 127.0.0.1 and localhost."""

    def __init__(self) -> None:
        self._ca = trustme.CA()
        self._leaf = self._ca.issue_cert("127.0.0.1", "localhost")

    def ca_bundle_path(self, directory: Path | str) -> Path:
        """Write the CA certificate (PEM) into `directory` and return the file's path.

        Point REQUESTS_CA_BUNDLE (or PyMISP's `ssl=`) at it so clients trust the stand-ins.
        """
        path = Path(directory) / "standins-ca.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._ca.cert_pem.write_to_path(str(path))
        return path

    def server_context(self) -> ssl.SSLContext:
        """An SSLContext serving the 127.0.0.1/localhost certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._leaf.configure_cert(context)
        return context


class Headers(dict[str, str]):
    """Request headers keyed by lower-case name; lookups ignore case, as HTTP does."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__((name.lower(), value) for name, value in items)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


@dataclass(frozen=True)
class SeenRequest:
    """One request as it arrived on the wire (path without query; `json` is None if not JSON)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Headers
    body: bytes
    json: Any  # the parsed body, whatever JSON shape the client sent (None if none)


@dataclass(frozen=True)
class Reply:
    """What a stand-in answers; `reset=True` closes the socket without any answer."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False


@dataclass
class Fault:
    """An injected answer for the next `times` requests whose path ends with `path_suffix`."""

    status: int
    body: Any
    headers: dict[str, str]
    times: int
    path_suffix: str = ""


class Armed(Protocol):
    """Anything injected for the next `times` requests whose path ends with `path_suffix`."""

    times: int
    path_suffix: str


ArmedT = TypeVar("ArmedT", bound=Armed)


def json_reply(status: int, payload: object, headers: dict[str, str] | None = None,
               content_type: str = "application/json; charset=utf-8") -> Reply:
    """A JSON answer."""
    return Reply(status, json.dumps(payload).encode(), content_type, dict(headers or {}))


def html_reply(status: int, html: str) -> Reply:
    """An HTML answer, e.g. a proxy error page or a login redirect target."""
    return Reply(status, html.encode(), "text/html; charset=UTF-8")


class _Handler(BaseHTTPRequestHandler):
    """Reads the whole request, records it, asks the stand-in for a reply, writes it."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real services
    timeout = 30  # idle keep-alive connections end eventually
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        # Headers and body go out as two writes; without NODELAY, Nagle plus the client's
        # delayed ACK stalls every keep-alive answer by ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request.do_handshake()  # in this worker thread, not in the accept loop
        super().setup()
        self.server.stand_in._track(self.request, add=True)

    def finish(self) -> None:
        self.server.stand_in._track(self.request, add=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        seen = SeenRequest(self.command, split.path, parse_qs(split.query, keep_blank_values=True),
                           Headers(self.headers.items()), body, parsed)
        stand_in = self.server.stand_in
        stand_in._record(seen)
        with stand_in.lock:
            stand_in.in_flight += 1
            stand_in.max_in_flight = max(stand_in.max_in_flight, stand_in.in_flight)
        try:
            reply = stand_in.respond(seen)
            if stand_in.latency:  # a slow service: the work is done, the answer comes late
                time.sleep(stand_in.latency)
        finally:
            with stand_in.lock:
                stand_in.in_flight -= 1
        if reply.reset:
            # SO_LINGER 0 turns the close into a TCP RST: the client sees a reset connection.
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop makefile()'s reference so close() really closes now
            socket.socket.close(self.request)  # skip the TLS close_notify
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
        with stand_in.lock:
            stand_in.replies.append((seen, len(reply.body)))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    block_on_close = False  # close() must not wait for clients' idle keep-alive connections
    stand_in: HttpsStandIn

    def server_bind(self) -> None:
        """Skip HTTPServer's reverse-DNS lookup of 127.0.0.1 (slow on some hosts)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Network noise (resets, TLS failures, our own close) is expected; bugs still print."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class HttpsStandIn:
    """A ThreadingHTTPServer over TLS on 127.0.0.1:<ephemeral>, served from a daemon thread.

    The socket is bound at construction so `url` is known before `start()`.
    """

    def __init__(self, ca: PrivateCA | None = None) -> None:
        self.ca = ca or PrivateCA()
        self.lock = threading.RLock()  # guards subclass state touched by handler threads
        self.latency = 0.0  # seconds every answer waits after the work is done (a slow service)
        self.per_minute: int | None = None  # requests per client and window; None = no limit
        self.window_seconds = 60.0
        self.clock: Callable[[], float] = time.monotonic
        self.throttled = 0  # 429s the limit sent (injected faults excluded)
        self.in_flight = 0
        self.max_in_flight = 0  # most requests being answered at the same time
        self._admitted: dict[str, collections.deque[float]] = {}
        self._seen: list[SeenRequest] = []
        self.replies: list[tuple[SeenRequest, int]] = []  # each answered request and its body's bytes
        self._open: set[socket.socket] = set()
        self._faults: list[Fault] = []
        self._server = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=True)
        self._server.socket = self.ca.server_context().wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False)
        self._server.stand_in = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. https://127.0.0.1:43121."""
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests_seen(self) -> list[SeenRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self.lock:
            return list(self._seen)

    def clear_requests(self) -> None:
        """Forget recorded requests, e.g. between two phases of a test."""
        with self.lock:
            self._seen.clear()

    def respond(self, request: SeenRequest) -> Reply:
        """Answer one request; implemented by each stand-in."""
        raise NotImplementedError

    def start(self) -> HttpsStandIn:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                            name=f"{type(self).__name__}-{self.url}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and cut open keep-alive connections so clients see the server go away."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        with self.lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def __enter__(self) -> HttpsStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _queue_fault(self, fault: Fault) -> None:
        with self.lock:
            self._faults.append(fault)

    def _take_fault(self, path: str) -> Fault | None:
        """The oldest injected fault still armed for `path`, consuming one of its `times`."""
        return self._take_armed(self._faults, path)

    def _take_armed(self, queue: list[ArmedT], path: str) -> ArmedT | None:
        """The oldest entry of `queue` still armed for `path`, consuming one of its `times`."""
        with self.lock:
            for armed in queue:
                if armed.times > 0 and path.endswith(armed.path_suffix):
                    armed.times -= 1
                    return armed
        return None

    def admit(self, client_id: str) -> int:
        """0 when the request fits the client's per-minute budget (and is counted), else the
        whole seconds until a slot frees, for the 429."""
        if self.per_minute is None:
            return 0
        with self.lock:
            now = self.clock()
            admitted = self._admitted.setdefault(client_id, collections.deque())
            while admitted and admitted[0] <= now - self.window_seconds:
                admitted.popleft()
            if len(admitted) < self.per_minute:
                admitted.append(now)
                return 0
            self.throttled += 1
            return max(1, math.ceil(admitted[0] + self.window_seconds - now))

    def _record(self, request: SeenRequest) -> None:
        with self.lock:
            self._seen.append(request)

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self.lock:
            (self._open.add if add else self._open.discard)(connection)

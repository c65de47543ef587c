"""JSON files under log_dir: one per request (when asked), one per error (always).

Every text that reaches a file or the terminal goes through `scrub`, so a key, secret or token
that slipped into an error message is replaced before it is written.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import constants as C
from private_files import UnsafePath, is_tool_file, open_private, private_dir

REDACTED = "[redacted]"
_URL_CREDENTIALS_HINT = re.compile(r"://[^\s/'\"]+@")  # in every match of C.URL_CREDENTIALS_RE
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # one for every record: json.dumps with options builds one per call


class LogWriteError(Exception):
    """The log directory cannot be written; the run must not go on without its records."""


class RequestLog:
    """Writes request/response and error records as JSON files; never writes a secret."""

    def __init__(self, directory: Path, write_requests: bool, verbose: bool, secrets: tuple[str, ...] = (),
                 out: TextIO | None = None) -> None:
        self.directory = directory
        self.write_requests = write_requests
        self.verbose = verbose
        self._secrets: list[str] = []
        for secret in secrets:
            self.add_secret(secret)
        self._sequence = itertools.count(1)
        self._out = out

    def prune(self, retention_days: int) -> None:
        """Remove this tool's files (the name prefix, regular files only: never a symlink or a
        stranger's file in a shared folder) older than the retention period."""
        if not self.directory.exists() and not self.directory.is_symlink():
            return
        self.ensure_directory()
        cutoff = time.time() - retention_days * 86400
        for path in self.directory.glob(f"{C.LOG_FILE_PREFIX}*"):
            if _old_tool_file(path, cutoff):
                path.unlink(missing_ok=True)

    def ensure_directory(self) -> None:
        try:
            private_dir(self.directory)
        except UnsafePath as exc:
            raise LogWriteError(str(exc)) from None
        except OSError as exc:
            raise LogWriteError(f"cannot create {self.directory}: {exc.strerror}") from None

    def path(self, name: str, suffix: str) -> Path:
        """A new file name in the (private) log directory: prefix, UTC time, kind, sequence number."""
        self.ensure_directory()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return self.directory / f"{C.LOG_FILE_PREFIX}{stamp}_{name}_{next(self._sequence):05d}.{suffix}"

    def replace(self, filename: str, payload: Any) -> Path:
        """A fixed-name file (last-run.json) replaced atomically, so a reader never sees half of it."""
        self.ensure_directory()
        path = self.directory / filename
        temporary = path.with_name(f".{filename}.{os.getpid()}.tmp")
        try:
            with os.fdopen(open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w", encoding="utf-8") as handle:
                handle.write(self.scrub(_dump(payload)) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except (OSError, UnsafePath) as exc:
            temporary.unlink(missing_ok=True)
            raise LogWriteError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
        return path

    def read(self, filename: str) -> Any:
        """A fixed-name file written by `replace`; None when it is missing or damaged."""
        try:
            return json.loads((self.directory / filename).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def open_new(self, path: Path) -> TextIO:
        """A new owner-only file, never through a symlink planted at its name."""
        try:
            return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w", encoding="utf-8",
                             errors="backslashreplace")  # a lone surrogate in a record never stops the run
        except (OSError, UnsafePath) as exc:
            raise LogWriteError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None

    def add_secret(self, value: str) -> None:
        """Register a value learnt at run time (an access token) for scrubbing, as it is and as
        JSON writes it: a record is scrubbed after encoding, where a secret holding `"`, `\\` or a
        control character appears escaped and its raw text is not found."""
        if not value:
            return
        for form in (value, _ENCODER.encode(value)[1:-1]):
            if form not in self._secrets:
                self._secrets.append(form)

    def scrub(self, text: str) -> str:
        """Known secrets out, also a secret's start left by a cut (a server that echoes the key
        in a text truncated to N characters), and `user:password@` out of every URL."""
        for secret in self._secrets:
            text = _without_fragments(text.replace(secret, REDACTED), secret)
        return redact_url_credentials(text)

    def request(self, name: str, method: str, url: str, body: Any, status: int | None, response: Any, seconds: float) -> None:
        """Record one HTTP exchange: to a file when write_post_json, to stderr when verbose
        (stdout stays machine-readable for `-r`)."""
        record = {
            "time": _now_iso(), "method": method, "url": url, "request_body": body,
            "status": status, "response_body": response, "seconds": round(seconds, 3),
        }
        if self.verbose:
            (self._out or sys.stderr).write(self.scrub(f"{method} {url} -> {status}\n{_dump(body)}\n{_dump(response)}\n"))
        if self.write_requests:
            self.write(name, record)

    def error(self, context: str, message: str, **details: Any) -> Path:
        """Every error gets its own file, whatever write_post_json says."""
        return self.write("error", {"time": _now_iso(), "context": context, "error": message, **details})

    def write(self, name: str, payload: Any) -> Path:
        """A JSON file named by the prefix, UTC time, `name` and a sequence number (so `cat logs/*_error_*`
        works as it did with the 2018 sample); owner-only permissions."""
        path = self.path(name, "json")
        text = self.scrub(_dump(payload))
        handle = self.open_new(path)
        try:
            with handle:  # closing flushes: a full disk may show only then
                handle.write(text + "\n")
        except OSError as exc:
            raise LogWriteError(f"cannot write {path}: {exc.strerror}") from None
        return path


class JsonLines:
    """An append-only JSON Lines file for records that come a page at a time (skipped
    attributes): nothing accumulates in memory, the file is created on the first record."""

    def __init__(self, log: RequestLog, name: str) -> None:
        self.log = log
        self.name = name
        self._handle: TextIO | None = None
        self._path: Path | None = None

    def write(self, records: list[Any]) -> None:
        if not records:
            return
        if self._handle is None:
            self._path = self.log.path(self.name, "jsonl")
            self._handle = self.log.open_new(self._path)
        with self._write_errors():
            self._handle.writelines(self.log.scrub(_ENCODER.encode(record)) + "\n" for record in records)

    def close(self) -> None:
        if self._handle is not None:
            with self._write_errors():  # closing flushes: a full disk may show only then
                self._handle.close()

    @contextlib.contextmanager
    def _write_errors(self) -> Iterator[None]:
        """A full disk under log_dir is the log folder's problem (exit 2), not a bug."""
        try:
            yield
        except OSError as exc:
            raise LogWriteError(f"cannot write {self._path}: {exc.strerror}") from None


def redact_url_credentials(text: str) -> str:
    """`https://user:password@host` -> `https://[redacted]@host`, wherever a URL appears. Most
    texts hold no `://…@` at all: a search led by that literal rules it out at C speed, where the
    full pattern tries a scheme at every word (it cost more than encoding a dry-run file)."""
    if not _URL_CREDENTIALS_HINT.search(text):
        return text
    return C.URL_CREDENTIALS_RE.sub(rf"\1{REDACTED}@", text)


def strip_url_credentials(url: str) -> str:
    """The URL without its `user:password@`, for links that leave the tool (STIX references)."""
    return C.URL_CREDENTIALS_RE.sub(r"\1", url)


def _without_fragments(text: str, secret: str) -> str:
    """Redact every run of text that is the first SECRET_FRAGMENT_MIN or more characters of
    `secret` (what truncation leaves of it); shorter secrets are only redacted whole."""
    if len(secret) <= C.SECRET_FRAGMENT_MIN:
        return text
    head, start = secret[:C.SECRET_FRAGMENT_MIN], 0
    while (found := text.find(head, start)) >= 0:
        length = next(n for n in range(len(secret), C.SECRET_FRAGMENT_MIN - 1, -1) if text.startswith(secret[:n], found))
        text = text[:found] + REDACTED + text[found + length:]
        start = found + len(REDACTED)
    return text


def _old_tool_file(path: Path, cutoff: float) -> bool:
    """A tool file last changed before `cutoff`; one that another run sharing log_dir has just
    pruned is not (its disappearance stopped the run with exit 2)."""
    try:
        return is_tool_file(path) and path.lstat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dump(payload: Any) -> str:
    """JSON with one top-level member per line (a dry-run file: one indicator a line), each
    member compact. `indent` would take json's pure-Python encoder, which cost a dry run half
    its CPU; this layout stays on the C encoder and stays readable with `grep` and `jq`."""
    if isinstance(payload, dict) and payload:
        return "{\n" + ",\n".join(_ENCODER.encode({key: value})[1:-1] for key, value in payload.items()) + "\n}"
    if isinstance(payload, list | tuple) and payload:
        return "[\n" + ",\n".join(map(_ENCODER.encode, payload)) + "\n]"
    return _ENCODER.encode(payload)

"""What this tool owns in one target: an SQLite file per target, written transactionally.

A row is written as `pending` before its indicator is sent and as `sent` once the service has
answered, and as `deleting` before a delete or revocation: after a crash (kill -9 at any point)
the next run finds those rows and finishes or undoes the work, so no duplicate is left behind.
`external_id` is our key (the MISP attribute UUID, or the base STIX id); `remote_id` is the
service's id (Graph's id, or the STIX id in use); `body` keeps the last STIX object sent, which a
revocation must repeat. `events` holds, per MISP event this target has fully settled, the two
clocks of the body it processed: an incremental run fetches only events whose clocks differ. A
`pending` row may or may not have reached the service, so it is still
owned: planning sends it again and removal revokes or deletes it. Revoked STIX ids are kept per key
in their own table: they can never be reused, whatever happens to the key's row.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import constants as C
from private_files import UnsafePath, open_private, private_dir

SENT, PENDING, DELETING = "sent", "pending", "deleting"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suspects (external_id TEXT PRIMARY KEY, since TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS indicators (
    external_id TEXT PRIMARY KEY,
    remote_id TEXT,
    content_hash TEXT NOT NULL,
    fixed_hash TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    event_uuid TEXT NOT NULL,
    status TEXT NOT NULL,
    seen_run INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS indicators_seen ON indicators (seen_run);
CREATE INDEX IF NOT EXISTS indicators_event ON indicators (event_uuid);
CREATE TABLE IF NOT EXISTS events (uuid TEXT PRIMARY KEY, timestamp INTEGER NOT NULL, publish_timestamp INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revoked (external_id TEXT PRIMARY KEY, remote_id TEXT NOT NULL);
INSERT OR REPLACE INTO revoked SELECT external_id, remote_id FROM indicators WHERE status = 'revoked';
DELETE FROM indicators WHERE status = 'revoked';
"""

# `fixed_hash` is the column of StateRow.immutable_hash (the name older state files carry).
_ROW = "external_id, COALESCE(remote_id, ''), content_hash, fixed_hash, expires_at, event_uuid, sent_at, body, status"
_OWNED = "status IN ('sent', 'pending')"
# Created by the first verification, so a store that never ran one stays as older versions wrote it.
_DELIVERIES = ("CREATE TABLE IF NOT EXISTS deliveries (external_id TEXT PRIMARY KEY, remote_id TEXT NOT NULL, "
               "status TEXT NOT NULL, detail TEXT NOT NULL, checked_at TEXT NOT NULL)")
# Created by the first sightings run: (attribute, UTC day) -> the match posted, `pending` or `posted`.
_SIGHTINGS = ("CREATE TABLE IF NOT EXISTS sightings (attribute_uuid TEXT NOT NULL, day TEXT NOT NULL, moment INTEGER NOT NULL, "
              "status TEXT NOT NULL, PRIMARY KEY (attribute_uuid, day))")
_FORGET_EVENT_OF = "DELETE FROM events WHERE uuid IN (SELECT event_uuid FROM indicators WHERE external_id = ?)"


class StoreLocked(Exception):
    """Another run (an overlapping cron job) holds this target's lock."""


class StoreError(Exception):
    """The state file cannot be opened or is not ours."""


class StoreUnavailable(StoreError):
    """The state file is sound but cannot be used now (a full disk, permissions): it is kept."""


def sqlite_fix(exc: sqlite3.Error) -> str:
    """"; <fix>" for an SQLite error the operator can fix (a full disk, permissions), else ""."""
    code = getattr(exc, "sqlite_errorcode", None)
    fix = C.SQLITE_ERROR_FIXES.get(code & 0xFF) if isinstance(code, int) else None
    return f"; {fix}" if fix else ""


class StoreUnsafe(StoreError):
    """The state folder or file is a symlink or writable by others: never moved aside, refused."""


@dataclasses.dataclass(frozen=True)
class StateRow:
    """One indicator this tool owns (or is sending or removing), as last sent."""

    external_id: str
    remote_id: str
    content_hash: str
    immutable_hash: str  # of the fields an update cannot change (reconcile.immutable_hash)
    expires_at: str
    event_uuid: str
    sent_at: str
    body: str
    status: str = SENT


def _private_dir(path: Path) -> None:
    """state_dir, owner-only and not a symlink (a planted link would move the state elsewhere)."""
    try:
        private_dir(path)
    except UnsafePath as exc:
        raise StoreUnsafe(str(exc)) from None


def _open_private(path: Path, flags: int) -> int:
    try:
        return open_private(path, flags)
    except UnsafePath as exc:
        raise StoreUnsafe(str(exc)) from None


def refuse_symlinks(path: Path) -> None:
    """A state or lock file, or its state_dir, that is a symlink (even a dangling one) is refused."""
    for where in (path.parent, path):
        if where.is_symlink():
            raise StoreUnsafe(f"{where} is a symlink; remove it and point state_dir at the real folder")


@contextlib.contextmanager
def target_lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock: a second cron run fails fast instead of interleaving."""
    _private_dir(path.parent)
    descriptor = _open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreLocked(f"another misp2sentinel run holds {path}") from None
            raise
        yield
    finally:
        os.close(descriptor)


class StateStore:
    """Rows of owned indicators plus a run counter, in one SQLite file."""

    def __init__(self, path: Path | None) -> None:
        """Open (creating owner-only) the file at `path`; None gives an empty in-memory store."""
        if path is not None:
            _private_dir(path.parent)
            os.close(_open_private(path, os.O_RDONLY | os.O_CREAT))
        try:
            self.db = sqlite3.connect(":memory:" if path is None else path, isolation_level=None)
            self.db.execute("PRAGMA synchronous = FULL")
            damage = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if damage != "ok":
                raise sqlite3.DatabaseError(damage)
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            if sqlite_fix(exc):
                raise StoreUnavailable(f"state file {path}: {exc}{sqlite_fix(exc)}") from None
            raise StoreError(f"state file {path} is unreadable ({exc})") from None

    @classmethod
    def read_only(cls, path: Path) -> StateStore:
        """The file as it is, opened so that nothing can be written (for --explain, which may
        run beside a sync); a missing file reads as an empty store. Like a sync, it never reads
        through a symlink planted at the file or at state_dir."""
        refuse_symlinks(path)
        if not path.exists():
            return cls(None)
        store = cls.__new__(cls)
        try:
            store.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            store.db.execute("SELECT 1 FROM indicators LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state file {path} is unreadable ({exc})") from None
        return store

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        """All-or-nothing: a crash inside leaves the file as it was before."""
        self.db.execute(begin)
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- runs ----------------------------------------------------------------------------
    def next_run(self) -> int:
        """The number the next run will get, without taking it (for a dry run)."""
        run = self.meta("run")
        return int(run) + 1 if run else 1

    def begin_run(self, started: str) -> tuple[int, str | None]:
        """Take the next run number and record when it started; returns the number and when
        the previous run started (None on a first run), for the clock check."""
        with self.transaction():
            run, previous = self.next_run(), self.meta("started")
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", (("run", str(run)), ("started", started)))
        return run, previous

    def is_fresh(self) -> bool:
        """No run was ever recorded and nothing is owned: a first run, or a lost state file."""
        return self.meta("run") is None and self.db.execute("SELECT 1 FROM indicators LIMIT 1").fetchone() is None

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def known(self, external_id: str) -> StateRow | None:
        """The owned row of a key, sent or maybe sent (`pending`)."""
        row = self.db.execute(f"SELECT {_ROW} FROM indicators WHERE external_id = ? AND {_OWNED}", (external_id,)).fetchone()
        return StateRow(*row) if row else None

    def revoked_id(self, external_id: str) -> str | None:
        """The STIX id last revoked for this key: a revived indicator must not reuse it."""
        row = self.db.execute("SELECT remote_id FROM revoked WHERE external_id = ?", (external_id,)).fetchone()
        return row[0] if row else None

    def rows(self, external_ids: Iterable[str]) -> list[StateRow]:
        return [row for key in external_ids if (row := self._any(key)) is not None]

    def _any(self, external_id: str) -> StateRow | None:
        row = self.db.execute(f"SELECT {_ROW} FROM indicators WHERE external_id = ?", (external_id,)).fetchone()
        return StateRow(*row) if row else None

    def seen_in_run(self, external_id: str, run: int) -> bool:
        row = self.db.execute("SELECT 1 FROM indicators WHERE external_id = ? AND seen_run = ?", (external_id, run)).fetchone()
        return row is not None

    def owned_count(self) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM indicators WHERE {_OWNED}").fetchone()[0]

    def unfinished(self) -> list[StateRow]:
        """Rows a killed run left half done: `pending` (maybe sent) or `deleting` (maybe removed)."""
        rows = self.db.execute(f"SELECT {_ROW} FROM indicators WHERE status != ? ORDER BY external_id", (SENT,))
        return [StateRow(*row) for row in rows]

    def unseen(self, run: int) -> Iterator[StateRow]:
        """Owned rows no desired indicator touched in this run: candidates for removal, read
        row by row (most are usually outside the filter window and only counted)."""
        rows = self.db.execute(f"SELECT {_ROW} FROM indicators WHERE {_OWNED} AND seen_run != ? ORDER BY external_id", (run,))
        return (StateRow(*row) for row in rows)

    def forget_expired(self, run: int, now: str, dry_run: bool) -> int:
        """Unseen rows whose expiry has passed: the service has expired them, nothing to do
        but forget them. Returns how many (a dry run only counts)."""
        where = f"FROM indicators WHERE {_OWNED} AND seen_run != ? AND expires_at <= ?"
        if dry_run:
            return self.db.execute(f"SELECT COUNT(*) {where}", (run, now)).fetchone()[0]
        with self.transaction():
            return self.db.execute(f"DELETE {where}", (run, now)).rowcount

    # --- writes --------------------------------------------------------------------------
    def mark_seen(self, seen: Iterable[tuple[str, str]], run: int) -> None:
        """(key, event) pairs this run wants. The row names the event that yields it now: an
        attribute two events share, or a row rebuilt without its event, would otherwise be
        judged by an event that no longer holds it (and removed when that one goes)."""
        with self.transaction():
            self.db.executemany("UPDATE indicators SET seen_run = ?, event_uuid = ? WHERE external_id = ?",
                                ((run, event_uuid, key) for key, event_uuid in seen))

    def mark_pending(self, rows: Iterable[StateRow], run: int) -> None:
        """Before a submit or upload of new indicators."""
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO indicators VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((k.external_id, k.remote_id or None, k.content_hash, k.immutable_hash, k.expires_at, k.sent_at, k.event_uuid,
                  PENDING, run, k.body) for k in rows),
            )

    def mark_deleting(self, external_ids: Iterable[str]) -> None:
        with self.transaction():
            self.db.executemany("UPDATE indicators SET status = ? WHERE external_id = ?", ((DELETING, e) for e in external_ids))

    def record_sent(self, sent: Iterable[tuple[str, str]], failed: Iterable[str]) -> None:
        """After a submit: (external_id, remote_id) became owned; failed ones are forgotten."""
        with self.transaction():
            self.db.executemany("UPDATE indicators SET remote_id = ?, status = ? WHERE external_id = ?", ((r, SENT, e) for e, r in sent))
            self.db.executemany("DELETE FROM indicators WHERE external_id = ?", ((e,) for e in failed))

    def record_updated(self, rows: Iterable[StateRow]) -> None:
        """After an update, renewal or re-upload of indicators already owned (under the id the
        service answered with, when it named one)."""
        with self.transaction():
            self.db.executemany(
                "UPDATE indicators SET remote_id = COALESCE(?, remote_id), content_hash = ?, fixed_hash = ?, expires_at = ?, "
                "sent_at = ?, body = ? WHERE external_id = ?",
                ((k.remote_id or None, k.content_hash, k.immutable_hash, k.expires_at, k.sent_at, k.body, k.external_id)
                 for k in rows),
            )

    def record_revoked(self, revoked: Iterable[tuple[str, str]]) -> None:
        """(key, STIX id) pairs now revoked: the rows go, the ids are remembered for good, and
        their events are read again on the next run (which revives what MISP still wants)."""
        with self.transaction():
            for external_id, remote_id in revoked:
                self.db.execute("INSERT OR REPLACE INTO revoked VALUES (?, ?)", (external_id, remote_id))
                self.db.execute(_FORGET_EVENT_OF, (external_id,))
                self.db.execute("DELETE FROM indicators WHERE external_id = ?", (external_id,))

    def keys_of_remote(self, remote_ids: Iterable[str]) -> dict[str, str]:
        """Service id -> our key, for the owned rows among `remote_ids` (-d by service id)."""
        found = {}
        for remote_id in remote_ids:
            row = self.db.execute(f"SELECT external_id FROM indicators WHERE remote_id = ? AND {_OWNED}", (remote_id,)).fetchone()
            if row:
                found[remote_id] = row[0]
        return found

    def remove(self, external_ids: Iterable[str]) -> None:
        """Rows deleted from the service: their events are read again on the next run, which
        re-sends what MISP still wants, as a full read would."""
        with self.transaction():
            for external_id in external_ids:
                self.db.execute(_FORGET_EVENT_OF, (external_id,))
                self.db.execute("DELETE FROM indicators WHERE external_id = ?", (external_id,))

    def replace_all(self, rows: Iterable[StateRow], revoked: Iterable[tuple[str, str]] = ()) -> None:
        """A rebuild from the service's listing: exactly these owned rows and revoked ids."""
        with self.transaction():
            self.db.execute("DELETE FROM indicators")
            self.db.execute("DELETE FROM revoked")
            self.db.execute("DELETE FROM events")
            self.db.execute("DELETE FROM meta WHERE key IN ('fingerprint', 'full_read')")
            self.db.executemany(
                "INSERT INTO indicators VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                ((k.external_id, k.remote_id, k.content_hash, k.immutable_hash, k.expires_at, k.sent_at, k.event_uuid, SENT, k.body)
                 for k in rows),
            )
            self.db.executemany("INSERT OR REPLACE INTO revoked VALUES (?, ?)", revoked)

    # --- events: what an incremental run may leave unread ----------------------------------
    def event_stamps(self) -> dict[str, tuple[int, int]]:
        """uuid -> (timestamp, publish_timestamp) of each settled event."""
        return {uuid: (stamp, published) for uuid, stamp, published in self.db.execute("SELECT * FROM events")}

    def events_due(self, before: str) -> set[str]:
        """Events read even though they did not change: those holding an owned row that expires
        before `before` (ISO UTC), to renew it, or a row a killed run left half done."""
        rows = self.db.execute(f"SELECT DISTINCT event_uuid FROM indicators WHERE status != ? OR ({_OWNED} AND expires_at <= ?)",
                               (SENT, before))
        return {row[0] for row in rows}

    def unsettled_events(self, run: int) -> set[str]:
        """Events with a row this run left half done (pending, deleting) or unseen and still owned
        (a removal the safety valve or a clock problem held back)."""
        rows = self.db.execute(f"SELECT DISTINCT event_uuid FROM indicators WHERE status != ? OR ({_OWNED} AND seen_run != ?)",
                               (SENT, run))
        return {row[0] for row in rows}

    # --- a dry run's marks: a temporary table, never the state file ----------------------
    def open_dry_marks(self) -> None:
        """A dry run's seen marks go to a temporary table that SQLite keeps in a file of its own,
        deleted on close: memory stays flat however large the MISP (a set of every key grew by
        about 110 bytes per indicator), and the state file is never written."""
        self.db.execute("PRAGMA temp_store = FILE")
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS dry_seen (external_id TEXT PRIMARY KEY) WITHOUT ROWID")

    def mark_seen_dry(self, external_ids: Iterable[str]) -> None:
        with self.transaction("BEGIN"):  # deferred: only the temporary table is written, no lock on the state
            self.db.executemany("INSERT OR IGNORE INTO dry_seen VALUES (?)", ((key,) for key in external_ids))

    def mark_events_seen_dry(self, event_uuids: Iterable[str]) -> None:
        """The rows of events an incremental dry run did not read because they did not change."""
        with self.transaction("BEGIN"):
            self.db.executemany(f"INSERT OR IGNORE INTO dry_seen SELECT external_id FROM indicators WHERE event_uuid = ? AND {_OWNED}",
                                ((uuid,) for uuid in event_uuids))

    def seen_dry(self, external_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM dry_seen WHERE external_id = ?", (external_id,)).fetchone() is not None

    def mark_events_seen(self, event_uuids: Iterable[str], run: int) -> None:
        """The rows of events an incremental run did not read because they did not change."""
        with self.transaction():
            self.db.executemany(f"UPDATE indicators SET seen_run = ? WHERE event_uuid = ? AND {_OWNED}",
                                ((run, uuid) for uuid in event_uuids))

    def settle_events(self, stamps: dict[str, tuple[int, int]], unsettled: Iterable[str], kept: Iterable[str] | None,
                      meta: dict[str, str]) -> None:
        """Record the clocks of events this run settled and forget `unsettled` ones. `kept`: the
        recorded events still listed (a full read records exactly what it read, so none); None
        keeps every record (an `--event` run lists one event, the others are not gone)."""
        with self.transaction():
            if kept is not None:
                self.db.execute("CREATE TEMP TABLE IF NOT EXISTS kept (uuid TEXT PRIMARY KEY)")
                self.db.execute("DELETE FROM kept")
                self.db.executemany("INSERT OR IGNORE INTO kept VALUES (?)", ((uuid,) for uuid in kept))
                self.db.execute("DELETE FROM events WHERE uuid NOT IN (SELECT uuid FROM kept)")
            self.db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?)",
                                ((uuid, stamp, published) for uuid, (stamp, published) in stamps.items()))
            self.db.executemany("DELETE FROM events WHERE uuid = ?", ((uuid,) for uuid in unsettled))
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())

    # --- a budgeted target's candidates: a temporary table, ranked once MISP is read ------
    def open_candidates(self) -> None:
        """Every indicator a budgeted target was offered in this run, with its rank; newcomers
        keep their body until the budget says which are sent. Kept in a file of SQLite's own,
        deleted on close: memory stays flat however much MISP wants."""
        self.db.execute("PRAGMA temp_store = FILE")
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS candidates (key TEXT PRIMARY KEY, event_uuid TEXT, r0 INT, r1 INT, "
                        "r2 INT, recency INT, incumbent INT, planned TEXT, body TEXT) WITHOUT ROWID")
        self.db.execute("DELETE FROM candidates")  # a run's own: nothing of an earlier run on this connection

    def add_candidates(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """(key, event, r0, r1, r2, recency, incumbent, planned action, body) rows."""
        with self.transaction("BEGIN"):  # only the temporary table is written
            self.db.executemany("INSERT OR IGNORE INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def candidate_event(self, key: str) -> str | None:
        """The event that offered `key` as a candidate, None when none did."""
        row = self.db.execute("SELECT event_uuid FROM candidates WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def held_count(self) -> int:
        """Rows the service may hold: owned ones and those whose removal is not confirmed."""
        return self.db.execute("SELECT COUNT(*) FROM indicators").fetchone()[0]

    def candidate_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]

    def incumbent_candidates(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM candidates WHERE incumbent = 1").fetchone()[0]

    def ranked_candidates(self) -> Iterator[tuple[str, str, bool, str, str]]:
        """(key, event, incumbent, planned action, body), most valuable first: by the rank's
        first three parts, then incumbents before newcomers, then recency. So a newcomer takes
        an incumbent's place only when it is better in a part other than its age, and the same
        MISP gives the same choice on every run (ties broken by key)."""
        rows = self.db.execute("SELECT key, event_uuid, incumbent, planned, body FROM candidates "
                               "ORDER BY r0 DESC, r1 DESC, r2 DESC, incumbent DESC, recency DESC, key")
        return ((key, event, bool(incumbent), planned, body) for key, event, incumbent, planned, body in rows)

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # --- suspects: keys whose submit had an ambiguous answer -----------------------------
    def mark_suspects(self, external_ids: Iterable[str], since: str) -> None:
        """Graph may still create a late copy of these; `since` (ISO UTC) is when we learnt it."""
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO suspects VALUES (?, ?)", ((e, since) for e in external_ids))

    def suspects(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT external_id FROM suspects")}

    def clear_suspects(self, before: str) -> None:
        """A listing found these clean long enough after their ambiguous answer: no copy can come now."""
        with self.transaction():
            self.db.execute("DELETE FROM suspects WHERE since < ?", (before,))

    # --- deliveries: the last verification's verdict per indicator (delivery.py) ----------
    def owned_rows(self) -> list[StateRow]:
        """Every owned row (sent or maybe sent), as a verification checks them."""
        return list(self.each_owned())

    def each_owned(self) -> Iterator[StateRow]:
        """The owned rows one at a time: sightings read them all, and memory need not hold every body."""
        return (StateRow(*row) for row in self.db.execute(f"SELECT {_ROW} FROM indicators WHERE {_OWNED} ORDER BY external_id"))

    def record_deliveries(self, verdicts: Iterable[tuple[str, str, str, str]], checked_at: str) -> None:
        """(key, service id, status, detail) of one verification, replacing the previous one's."""
        with self.transaction():
            self.db.execute(_DELIVERIES)
            self.db.execute("DELETE FROM deliveries")
            self.db.executemany("INSERT INTO deliveries VALUES (?, ?, ?, ?, ?)",
                                ((key, remote_id, status, detail, checked_at) for key, remote_id, status, detail in verdicts))

    def deliveries(self) -> dict[str, str]:
        """Service id -> last verdict; empty when no verification ever ran."""
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'deliveries'").fetchone() is None:
            return {}
        return dict(self.db.execute("SELECT remote_id, status FROM deliveries"))


    # --- sightings posted to MISP (sightings.py) ---------------------------------------
    def open_sightings(self) -> None:
        """The table of posted sightings, made by the first sightings run (older files stay as they were)."""
        self.db.execute(_SIGHTINGS)

    def sighting_status(self, attribute_uuid: str, day: str) -> str | None:
        row = self.db.execute("SELECT status FROM sightings WHERE attribute_uuid = ? AND day = ?", (attribute_uuid, day)).fetchone()
        return row[0] if row else None

    def mark_sighting(self, attribute_uuid: str, day: str, moment: dt.datetime, status: str) -> None:
        """Committed before the post (`pending`: maybe posted) and after it (`posted`)."""
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO sightings VALUES (?, ?, ?, ?)",
                            (attribute_uuid, day, int(moment.timestamp()), status))

    def forget_sighting(self, attribute_uuid: str, day: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM sightings WHERE attribute_uuid = ? AND day = ?", (attribute_uuid, day))

    def pending_sightings(self) -> list[tuple[str, str, dt.datetime]]:
        """Posts a killed run left unconfirmed: (attribute uuid, day, moment)."""
        rows = self.db.execute("SELECT attribute_uuid, day, moment FROM sightings WHERE status = 'pending' ORDER BY day")
        return [(uuid, day, dt.datetime.fromtimestamp(moment, dt.UTC)) for uuid, day, moment in rows]

    def prune_sightings(self, before_day: str) -> None:
        """Days no window reaches any more: a match there is never read again."""
        with self.transaction():
            self.db.execute("DELETE FROM sightings WHERE day < ? AND status = 'posted'", (before_day,))


def adopt_case_variant(store: Path) -> None:
    """Rename a store file whose name differs only in letter case to the canonical name."""
    if store.exists() or not store.parent.is_dir():
        return
    variant = next((path for path in store.parent.glob("*.sqlite") if path.name.lower() == store.name), None)
    if variant is not None:
        variant.rename(store)


def open_store(path: Path, dry_run: bool, now: dt.datetime) -> tuple[StateStore, str]:
    """The target's store, and a note when an unreadable file had to be moved aside (the run
    then rebuilds from the service). A dry run never moves anything."""
    adopt_case_variant(path)
    if dry_run:
        return StateStore(path if path.exists() else None), ""
    try:
        return StateStore(path), ""
    except (StoreUnavailable, StoreUnsafe):  # sound but unusable now, or refused: never moved aside
        raise
    except StoreError as exc:
        aside = path.with_name(f"{path.name}.unreadable-{now.strftime('%Y%m%dT%H%M%SZ')}")
        path.rename(aside)
        return StateStore(path), f"{exc}; moved to {aside.name}"

"""The mirror's memory: sessions, the ordered event log and full results, in one SQLite file (WAL).

Events are appended with a monotonically increasing `seq` (the SSE event id a reconnecting page
resumes from) and stored once per `event_id`, so a client replaying its spool cannot duplicate a card.
A `tool.result`'s full envelope is split off into `results` and never travels with cards or the stream.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolserver.contract import ToolError
from web_mirror.events import Event
from web_mirror.wire import dumps, wire_value

DB_NAME = "mirror.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    n_events INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,  -- never deleted from, so rowids only grow (and ignored replays leave no gaps)
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    session TEXT NOT NULL,
    call_id TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session, seq);
CREATE TABLE IF NOT EXISTS cards (
    session TEXT NOT NULL,
    call_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    PRIMARY KEY (session, call_id)
);
CREATE TABLE IF NOT EXISTS results (
    call_id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StoredEvent:
    """An event as the page sees it: its position in the log and its slim data."""

    seq: int
    event_id: str
    type: str
    session: str
    call_id: str
    ts: float
    data: dict[str, Any]


@dataclass(frozen=True)
class SessionInfo:
    """A session as listed: when it was active, where its log ends, how many events and cards it holds."""

    id: str
    first_ts: float
    last_ts: float
    last_seq: int
    n_events: int
    n_cards: int


class Store:
    """One connection, serialised by a lock: SQLite writes are serial anyway and reads are microseconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise ToolError(
                f"cannot open the mirror's database {path}: {e}",
                "point $TRAINSPECT_HOME (or --home) at a writable directory, or move a damaged file aside",
            ) from None

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, (re)opened on first use: an app can go through several lifespans."""
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it consistent
            self._conn.execute("PRAGMA busy_timeout=5000")
        return self._conn

    @classmethod
    def in_home(cls, home: Path) -> Store:
        return cls(home / DB_NAME)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ingest(self, events: Iterable[Event]) -> tuple[list[StoredEvent], int]:
        """Append new events in order in one transaction; returns (stored, duplicates skipped)."""
        stored: list[StoredEvent] = []
        duplicates = 0
        with self._lock, _transaction(self._db) as db:
            for ev in events:
                data = dict(ev.data)
                full = data.pop("result", None) if ev.type == "tool.result" else None
                if full is not None:
                    data["has_result"] = True
                slim = wire_value(data)
                cur = db.execute(
                    "INSERT OR IGNORE INTO events (event_id, type, session, call_id, ts, data) VALUES (?,?,?,?,?,?)",
                    (ev.event_id, ev.type, ev.session, ev.call_id, ev.ts, dumps(slim)),
                )
                if cur.rowcount == 0:
                    duplicates += 1
                    continue
                seq = int(cur.lastrowid or 0)
                db.execute(
                    "INSERT INTO sessions (id, first_seq, last_seq, first_ts, last_ts, n_events) VALUES (?,?,?,?,?,1)"
                    " ON CONFLICT(id) DO UPDATE SET last_seq=excluded.last_seq,"
                    " last_ts=max(last_ts, excluded.last_ts), n_events=n_events+1",
                    (ev.session, seq, seq, ev.ts, ev.ts),
                )
                db.execute(
                    "INSERT OR IGNORE INTO cards (session, call_id, first_seq) VALUES (?,?,?)",
                    (ev.session, ev.call_id, seq),
                )
                if full is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO results (call_id, session, body) VALUES (?,?,?)",
                        (ev.call_id, ev.session, dumps(full)),
                    )
                stored.append(StoredEvent(seq, ev.event_id, ev.type, ev.session, ev.call_id, ev.ts, slim))
        return stored, duplicates

    def sessions(self) -> list[SessionInfo]:
        """Every session, most recently active first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.first_ts, s.last_ts, s.last_seq, s.n_events,"
                " (SELECT count(*) FROM cards c WHERE c.session = s.id)"
                " FROM sessions s ORDER BY s.last_seq DESC"
            ).fetchall()
        return [SessionInfo(*row) for row in rows]

    def events(self, session_id: str, after: int = 0) -> list[StoredEvent]:
        """The session's event log after seq `after` (by default the whole log), in order: what cards fold from."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, type, session, call_id, ts, data FROM events WHERE session = ? AND seq > ? "
                "ORDER BY seq",
                (session_id, after),
            ).fetchall()
        return [StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def events_json(self, session_id: str, after: int, limit: int) -> tuple[int, str] | None:
        """The next events as one JSON array, built by SQLite (the stream's hot path), and the last seq in it."""
        with self._lock:
            row = self._db.execute(
                "SELECT max(seq), '[' || group_concat(ev, ',') || ']' FROM (SELECT seq, json_object("
                "'seq', seq, 'event_id', event_id, 'type', type, 'session', session, 'call_id', call_id, 'ts', ts, "
                "'data', json(data)"
                ") AS ev FROM events WHERE session = ? AND seq > ? ORDER BY seq LIMIT ?)",
                (session_id, after, limit),
            ).fetchone()
        return (int(row[0]), row[1]) if row and row[0] is not None else None

    def result(self, call_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM results WHERE call_id = ?", (call_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

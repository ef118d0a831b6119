"""The collector's SQLite log: every node's sessions and events, unique per (node, origin, id), so a replay is
harmless and a session id that repeats after a restore is a record of its own."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from lampctl.fleet import inbound
from lampctl.fleet.outbox import EVENT_COLUMNS, SESSION_COLUMNS
from lampctl.platform.runtime import private_dir
from lampctl.storage.db import connect, transaction

# A record's identity is (node, origin, id): `origin` names the node's database (a restore
# gives it a new one), '' for records of nodes older than origins. Version 1 of this file
# (PRAGMA user_version) is the first with origin; an older central log is rebuilt into it.
VERSION = 1
TABLES = {
    "sessions": """
CREATE TABLE sessions (
    node TEXT NOT NULL, id INTEGER NOT NULL, lamp_id TEXT NOT NULL, user TEXT NOT NULL,
    started_at TEXT NOT NULL, ended_at TEXT, planned_s REAL NOT NULL, actual_s REAL, end_reason TEXT,
    continues INTEGER, received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    origin TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (node, origin, id)
)""",
    "events": """
CREATE TABLE events (
    node TEXT NOT NULL, id INTEGER NOT NULL, at TEXT NOT NULL, lamp_id TEXT, from_state TEXT, to_state TEXT,
    who TEXT NOT NULL, why TEXT NOT NULL, origin TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (node, origin, id)
)""",
}
INDEXES = (
    "CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (started_at)",
    "CREATE INDEX IF NOT EXISTS events_by_time ON events (at)",
)
MAX_ORIGIN = 64
_REQUIRED = {"session": ("id", "lamp_id", "user", "started_at", "planned_s"), "event": ("id", "at", "who", "why")}


class BadRecord(ValueError):
    """A published record the central log cannot take; str() is one sentence."""


def check_record(kind: str, node: str, record) -> tuple:
    """The row to insert for a session or event JSON from `node`, or BadRecord naming the field.

    Every column is checked (lampctl.fleet.inbound.RECORD_FIELDS): finite durations in range,
    ISO-8601 times with a zone (kept as UTC with milliseconds, so they sort), bounded text,
    known end reasons and states.
    """
    if not isinstance(record, dict):
        raise BadRecord("a record must be a JSON object")
    columns = SESSION_COLUMNS if kind == "session" else EVENT_COLUMNS
    if record.get("node", node) != node:
        raise BadRecord(f"record names node {str(record.get('node'))[:40]!r} but came on {node[:64]!r}'s topic")
    for key in _REQUIRED[kind]:
        if record.get(key) is None:
            raise BadRecord(f"{kind} record without {key!r}")
    try:
        row: list[object] = [inbound.text("node", node), _origin(kind, record)]
        for key in columns:
            value = record.get(key)
            row.append(None if value is None else inbound.RECORD_FIELDS[key](key, value))
    except inbound.BadField as exc:
        raise BadRecord(f"{kind} record: {exc}") from None
    return tuple(row)


def _origin(kind: str, record: dict) -> str:
    origin = record.get("origin", "")
    if not isinstance(origin, str) or len(origin) > MAX_ORIGIN or not origin.isprintable():
        raise BadRecord(f"{kind} record: 'origin' must be a text of at most {MAX_ORIGIN} characters")
    return origin


def _upgrade(conn: sqlite3.Connection) -> None:
    """Create the tables, or rebuild a central log keyed on (node, id) into (node, origin, id), keeping every row."""
    with transaction(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] >= VERSION:
            return
        for table, create in TABLES.items():
            columns = [r["name"] for r in conn.execute(f"PRAGMA table_info({table})")]
            if not columns:
                conn.execute(create)
                continue
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
            conn.execute(create)
            kept = ", ".join(columns)
            conn.execute(f"INSERT INTO {table} ({kept}) SELECT {kept} FROM {table}_v0")
            conn.execute(f"DROP TABLE {table}_v0")  # its index goes with it
        for index in INDEXES:
            conn.execute(index)
        conn.execute(f"PRAGMA user_version = {VERSION}")


class CentralLog:
    """One writer connection (the collector's writer thread) and short-lived readers (the pages)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        private_dir(self.path.parent)
        conn = connect(self.path, create=True)
        try:
            _upgrade(conn)
        finally:
            conn.close()
        self._conn: sqlite3.Connection | None = None

    def write(self, rows: list[tuple[str, tuple]]) -> int:
        """Insert (kind, row) pairs in one transaction; a row already stored is skipped. Returns new rows."""
        if self._conn is None:
            self._conn = connect(self.path)
        before = self._conn.total_changes
        try:
            with transaction(self._conn):
                for kind, row in rows:
                    columns = ("node", "origin") + (SESSION_COLUMNS if kind == "session" else EVENT_COLUMNS)
                    table = "sessions" if kind == "session" else "events"
                    self._conn.execute(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                        f"({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING",
                        row,
                    )
        except sqlite3.Error:
            self.close()
            raise
        return self._conn.total_changes - before

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- reads for the pages ---------------------------------------------------------------
    def sessions(
        self,
        *,
        node: str | None = None,
        lamp: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict]:
        where, params = _filters(node, lamp, start, end)
        sql = f"SELECT * FROM sessions{where} ORDER BY started_at DESC, node, id DESC"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        return self._read(sql, params)

    def count(
        self, *, node: str | None = None, lamp: str | None = None, start: str | None = None, end: str | None = None
    ) -> int:
        where, params = _filters(node, lamp, start, end)
        return self._read(f"SELECT count(*) AS n FROM sessions{where}", params)[0]["n"]

    def usage(self, *, node: str | None = None, start: str | None = None, end: str | None = None) -> list[dict]:
        """Minutes per node, lamp and day."""
        where, params = _filters(node, None, start, end)
        return self._read(
            "SELECT node, lamp_id, substr(started_at, 1, 10) AS day, count(*) AS sessions, "
            f"round(sum(coalesce(actual_s, 0)) / 60.0, 1) AS minutes FROM sessions{where} "
            "GROUP BY node, lamp_id, day ORDER BY day DESC, node, lamp_id",
            params,
        )

    def session_batches(
        self,
        columns: tuple[str, ...],
        *,
        node: str | None = None,
        lamp: str | None = None,
        start: str | None = None,
        end: str | None = None,
        batch: int = 500,
    ) -> Iterator[list[tuple]]:
        """The sessions() rows as tuples of `columns`, `batch` rows at a time: memory stays flat.

        The query starts before this returns, so a log that cannot be read fails here, not midway.
        """
        unknown = set(columns) - {"node", "origin", "received_at", *SESSION_COLUMNS}
        if unknown:
            raise ValueError(f"no such session columns: {sorted(unknown)}")
        where, params = _filters(node, lamp, start, end)
        conn = self._reader()
        try:
            cursor = conn.execute(
                f"SELECT {', '.join(columns)} FROM sessions{where} ORDER BY started_at DESC, node, id DESC", params
            )
            cursor.row_factory = None
        except sqlite3.Error:
            conn.close()
            raise
        return _batches(conn, cursor, batch)

    def nodes(self) -> list[str]:
        return [r["node"] for r in self._read("SELECT DISTINCT node FROM sessions ORDER BY node", [])]

    def _reader(self) -> sqlite3.Connection:
        conn = connect(self.path)
        # A row stored before every field was checked may hold bytes that are not UTF-8: shown
        # with U+FFFD instead of failing the whole page.
        conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        return conn

    def _read(self, sql: str, params: list) -> list[dict]:
        conn = self._reader()
        try:
            return [dict(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()


def _batches(conn: sqlite3.Connection, cursor: sqlite3.Cursor, size: int) -> Iterator[list[tuple]]:
    try:
        while rows := cursor.fetchmany(size):
            yield rows
    finally:
        conn.close()


def _filters(node, lamp, start, end) -> tuple[str, list]:
    clauses, params = [], []
    for clause, value in (
        ("node = ?", node),
        ("lamp_id = ?", lamp),
        ("started_at >= ?", start),
        ("started_at <= ?", end),
    ):
        if value:
            clauses.append(clause)
            params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

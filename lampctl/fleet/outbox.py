"""The fleet's durable outbox: ended sessions and audit rows waiting in SQLite to be published at QoS 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lampctl.storage.db import connect, transaction

SESSION_COLUMNS = (
    "id",
    "lamp_id",
    "user",
    "started_at",
    "ended_at",
    "planned_s",
    "actual_s",
    "end_reason",
    "continues",
)
EVENT_COLUMNS = ("id", "at", "lamp_id", "from_state", "to_state", "who", "why")


def set_enabled(path: Path, enabled: bool) -> None:
    """Queue records for the broker from now on (the service runs with [mqtt]) or not.

    Called by the service after the schema is migrated and before sessions left open are
    closed, so those `interrupted` records reach the fleet log too.
    """
    conn = connect(path)
    try:
        with transaction(conn):
            conn.execute("UPDATE outbox_switch SET enabled = ? WHERE id = 1", (1 if enabled else 0,))
    finally:
        conn.close()


class Outbox:
    """Reads the outbox in order and deletes what the broker acknowledged.

    One owner thread (the MQTT publisher) uses it; its connection is opened on first use
    and reopened after an error, so a failing disk delays records but never loses them.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _guard(self, fn):
        try:
            return fn(self._db())
        except sqlite3.Error:
            self.close()
            raise

    def count(self) -> int:
        return self._guard(lambda c: c.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def after(self, last_id: int, limit: int) -> list[tuple[int, str, dict | None]]:
        """Up to `limit` records after outbox id `last_id`, oldest first: (id, kind, record).

        The record is None when its row is gone (events pruned by an admin): such an entry
        is acknowledged without sending anything.
        """

        def read(conn):
            rows = conn.execute(
                "SELECT id, kind, ref FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)
            ).fetchall()
            return [(row["id"], row["kind"], _record(conn, row["kind"], row["ref"])) for row in rows]

        return self._guard(read)

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return

        def act(conn):
            with transaction(conn):
                conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

        self._guard(act)


def _record(conn: sqlite3.Connection, kind: str, ref: int) -> dict | None:
    table, columns = ("sessions", SESSION_COLUMNS) if kind == "session" else ("events", EVENT_COLUMNS)
    row = conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE id = ?", (ref,)).fetchone()
    return None if row is None else {k: row[k] for k in columns}

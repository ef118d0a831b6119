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

    def span(self) -> tuple[int, int, int]:
        """(rows waiting, lowest id, highest id); ids are 0 when the outbox is empty."""

        def read(conn):
            n, low, high = conn.execute("SELECT count(*), min(id), max(id) FROM outbox").fetchone()
            return n, low or 0, high or 0

        return self._guard(read)

    def unsent(self, limit: int, sending=frozenset()) -> list[tuple[int, str, dict | None]]:
        """Up to `limit` records not in `sending` (ids sent and not yet acknowledged), oldest first:
        (id, kind, record).

        Every row still in the outbox is unacknowledged, so the oldest `limit + len(sending)`
        rows hold every candidate: no row is passed over, whatever its id. The record carries
        the `origin` it was queued under (none for rows queued before origins existed). It is
        None when its row is gone (events pruned by an admin): such an entry is acknowledged
        without sending anything.
        """

        def read(conn):
            rows = conn.execute(
                "SELECT id, kind, ref, origin FROM outbox ORDER BY id LIMIT ?", (limit + len(sending),)
            ).fetchall()
            rows = [row for row in rows if row["id"] not in sending][:limit]
            return [(row["id"], row["kind"], _record(conn, row["kind"], row["ref"], row["origin"])) for row in rows]

        return self._guard(read)

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return

        def act(conn):
            with transaction(conn):
                conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

        self._guard(act)


def _record(conn: sqlite3.Connection, kind: str, ref: int, origin: str) -> dict | None:
    table, columns = ("sessions", SESSION_COLUMNS) if kind == "session" else ("events", EVENT_COLUMNS)
    row = conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE id = ?", (ref,)).fetchone()
    if row is None:
        return None
    record = {k: row[k] for k in columns}
    if origin:
        record["origin"] = origin
    return record

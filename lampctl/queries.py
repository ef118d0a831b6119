"""Read queries on the usage log for pages, the API and the CLI: sessions with filters, events, bulb records.

Every read opens its own short-lived connection with mode=rw (never creating a file) and
turns SQLite errors into LogUnavailable, which the web answers with 503 and a sentence.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator

from lampctl.db import LogUnavailable, connect, parse_bound, reading


def _session_filter(start=None, end=None, lamp=None, user=None, reason=None) -> tuple[str, list]:
    where, params = [], []
    if start:
        where.append("started_at >= ?")
        params.append(parse_bound(start))
    if end:
        where.append("started_at <= ?")
        params.append(parse_bound(end, upper=True))
    for column, value in (("lamp_id", lamp), ("user", user), ("end_reason", reason)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(where)) if where else "", params


def iter_sessions(path: Path, *, start=None, end=None, lamp=None, user=None, reason=None, limit=None,
                  offset=0) -> Iterator[dict]:
    """Sessions oldest first, one row at a time (the CSV export streams from this).

    Bounds are checked and the query is started before this returns, so a bad bound raises
    StoreError and a missing file LogUnavailable here, not half-way through a streamed reply.
    """
    clause, params = _session_filter(start, end, lamp, user, reason)
    sql = f"SELECT * FROM sessions{clause} ORDER BY started_at, id"
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [limit, offset]
    try:
        conn = connect(path)
    except sqlite3.Error as exc:
        raise LogUnavailable(f"The usage log {path} cannot be opened ({exc}); tell an admin.") from None
    try:
        cursor = conn.execute(sql, params)
    except sqlite3.Error as exc:
        conn.close()
        raise LogUnavailable(f"The usage log {path} cannot be read ({exc}); tell an admin.") from None
    return _rows(conn, cursor)


def _rows(conn: sqlite3.Connection, cursor) -> Iterator[dict]:
    try:
        for row in cursor:
            yield dict(row)
    finally:
        conn.close()


def sessions(path: Path, **filters) -> list[dict]:
    try:
        return list(iter_sessions(path, **filters))
    except sqlite3.Error as exc:
        raise LogUnavailable(f"The usage log {path} cannot be read ({exc}); tell an admin.") from None


def count_sessions(path: Path, *, start=None, end=None, lamp=None, user=None, reason=None) -> int:
    clause, params = _session_filter(start, end, lamp, user, reason)
    with reading(path) as conn:
        return conn.execute(f"SELECT count(*) FROM sessions{clause}", params).fetchone()[0]


def events(path: Path, *, limit: int = 200, offset: int = 0, lamp: str | None = None) -> list[dict]:
    """Audit events newest first."""
    sql, params = "SELECT * FROM events", []
    if lamp:
        sql += " WHERE lamp_id = ?"
        params.append(lamp)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    with reading(path) as conn:
        return [dict(r) for r in conn.execute(sql, [*params, limit, offset])]


def bulb_replacements(path: Path, lamp_id: str | None = None) -> list[dict]:
    """Replacements newest first, optionally for one lamp."""
    sql, params = "SELECT * FROM bulb_replacements", []
    if lamp_id:
        sql += " WHERE lamp_id = ?"
        params.append(lamp_id)
    sql += " ORDER BY at DESC, id DESC"
    with reading(path) as conn:
        return [dict(r) for r in conn.execute(sql, params)]

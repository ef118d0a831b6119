"""Read queries on the usage log for pages, the API and the CLI: sessions with filters, events, bulb records.

Every read opens its own short-lived connection with mode=rw (never creating a file) and
turns SQLite errors into LogUnavailable, which the web answers with 503 and a sentence.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from lampctl.storage.db import LogUnavailable, StoreError, connect, parse_bound, reading
from lampctl.storage.export import SESSION_COLUMNS, csv_cell


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


def iter_sessions(
    path: Path, *, start=None, end=None, lamp=None, user=None, reason=None, limit=None, offset=0
) -> Iterator[dict]:
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
            yield _session(row)
    finally:
        conn.close()


def _session(row: sqlite3.Row) -> dict:
    """A session as the API and the pages show it: new_patient is a boolean (SQLite keeps 0/1)."""
    out = dict(row)
    if "new_patient" in out:
        out["new_patient"] = bool(out["new_patient"])
    return out


def sessions(path: Path, **filters) -> list[dict]:
    try:
        return list(iter_sessions(path, **filters))
    except sqlite3.Error as exc:
        raise LogUnavailable(f"The usage log {path} cannot be read ({exc}); tell an admin.") from None


def count_sessions(
    path: Path, *, start=None, end=None, lamp=None, user=None, reason=None, cap: int | None = None
) -> int:
    """Sessions matching the filters; with cap, counting stops there (a decade's count is a full scan)."""
    clause, params = _session_filter(start, end, lamp, user, reason)
    sql = f"SELECT count(*) FROM sessions{clause}"
    if cap is not None:
        sql = f"SELECT count(*) FROM (SELECT 1 FROM sessions{clause} LIMIT ?)"
        params.append(cap)
    with reading(path) as conn:
        return conn.execute(sql, params).fetchone()[0]


def session_page(
    path: Path, size: int, *, before: int | None = None, after: int | None = None, **filters
) -> tuple[list[dict], bool]:
    """One page of the log, newest first, by keyset: (rows, whether more lie beyond them).

    `before` is the id of the oldest row already shown (the page goes on to older rows),
    `after` the id of the newest (the page goes back to newer ones); with neither, the newest
    rows. The key is (started_at, id), the log's order, so a page reads `size` rows from an
    index instead of skipping every row ahead of it. An id not in the log is a StoreError.
    """
    clause, params = _session_filter(**filters)
    with reading(path) as conn:
        if before is None and after is None:
            sql = f"SELECT * FROM sessions{clause} ORDER BY started_at DESC, id DESC LIMIT ?"
            rows = [_session(r) for r in conn.execute(sql, [*params, size + 1])]
            return rows[:size], len(rows) > size
        key_id = before if before is not None else after
        key = conn.execute("SELECT started_at, id FROM sessions WHERE id = ?", (key_id,)).fetchone()
        if key is None:
            raise StoreError(f"There is no session {key_id} in the log; start again from the newest page.")
        op, order = ("<", "DESC") if before is not None else (">", "ASC")
        clause = (clause + " AND " if clause else " WHERE ") + f"(started_at, id) {op} (?, ?)"
        sql = f"SELECT * FROM sessions{clause} ORDER BY started_at {order}, id {order} LIMIT ?"
        rows = [_session(r) for r in conn.execute(sql, [*params, key[0], key[1], size + 1])]
    more = len(rows) > size
    rows = rows[:size]
    return (rows if before is not None else rows[::-1]), more


def csv_text(value: str) -> str:
    """A free-text cell as csv.writer writes export.csv_cell(value), CR quoted too.

    Text a spreadsheet would run as a formula gets a leading '; a cell holding a comma, a
    quote, CR or LF is quoted with its quotes doubled.
    """
    cell = csv_cell(value)
    if "," in cell or '"' in cell or "\n" in cell or "\r" in cell:
        return '"' + cell.replace('"', '""') + '"'
    return cell


# The free-text columns of a CSV line (TEXT a name or a config chose), and how to list the
# names each holds: lamp_id and user by a skip-scan of their index (one seek per name),
# new_patient_by, which has no index, by one pass.
_NAME_COLUMNS = {
    "lamp_id": "WITH RECURSIVE names(name) AS (SELECT min(lamp_id) FROM sessions UNION ALL "
    "SELECT (SELECT min(lamp_id) FROM sessions WHERE lamp_id > name) FROM names WHERE name IS NOT NULL) "
    "SELECT name FROM names WHERE name IS NOT NULL",
    "user": "WITH RECURSIVE names(name) AS (SELECT min(user) FROM sessions UNION ALL "
    "SELECT (SELECT min(user) FROM sessions WHERE user > name) FROM names WHERE name IS NOT NULL) "
    "SELECT name FROM names WHERE name IS NOT NULL",
    "new_patient_by": "SELECT DISTINCT new_patient_by FROM sessions WHERE new_patient_by IS NOT NULL",
}


def _name_cell_sql(conn: sqlite3.Connection, column: str, params: list) -> str:
    """`column` as its CSV cell in SQL: a CASE over only the names in the log that are not their own
    cell (csv_text), so an ordinary name costs SQLite one comparison per listed name, not the escaping."""
    special = []
    for (name,) in conn.execute(_NAME_COLUMNS[column]):
        cell = csv_text(name) if isinstance(name, str) else name
        if cell != name:
            special.append((name, cell))
    if not special:
        return column
    for name, cell in special:
        params += [name, cell]
    return f"CASE {column} {' '.join('WHEN ? THEN ?' for _ in special)} ELSE {column} END"


def csv_line_sql(conn: sqlite3.Connection) -> tuple[str, list]:
    """(one CSV line per session as an SQLite expression, its parameters), export.SESSION_COLUMNS in order.

    lamp_id, user and new_patient_by are free text (_name_cell_sql, from the names read on
    `conn`: read them in the transaction the lines are read in); the others hold what the
    store alone writes and the schema constrains: integer ids, iso() timestamps, REAL
    seconds, end reasons from a CHECK list, new_patient as true/false, none of which can
    start a formula or hold a comma. printf's %s writes NULL as an empty cell and a REAL as
    SQLite's shortest text (600.0, 192.61), as csv.writer did.
    """
    params: list = []
    lamp, user, by = (_name_cell_sql(conn, c, params) for c in ("lamp_id", "user", "new_patient_by"))
    sql = (
        f"printf('%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s', id, {lamp}, {user}, "
        "started_at, ended_at, planned_s, actual_s, end_reason, continues, "
        f"CASE new_patient WHEN 1 THEN 'true' ELSE 'false' END, {by})"
    )
    return sql, params


def csv_chunks(path: Path, *, batch: int = 500, **filters) -> Iterator[str]:
    """Sessions oldest first as CSV text: the header (export.SESSION_COLUMNS), then `batch` lines a chunk.

    The export's fast path: SQLite builds each line, so Python handles one string per
    session instead of a dict and eight cells, and memory stays flat whatever the log's
    size. The names and the lines are read in one transaction (one snapshot): a name
    written in between cannot miss its escaping. Like iter_sessions, the query starts
    before this returns.
    """
    clause, params = _session_filter(**filters)
    try:
        conn = connect(path)
    except sqlite3.Error as exc:
        raise LogUnavailable(f"The usage log {path} cannot be opened ({exc}); tell an admin.") from None
    try:
        conn.execute("BEGIN")
        line, line_params = csv_line_sql(conn)
        cursor = conn.execute(f"SELECT {line} FROM sessions{clause} ORDER BY started_at, id", [*line_params, *params])
        cursor.row_factory = None
    except sqlite3.Error as exc:
        conn.close()
        raise LogUnavailable(f"The usage log {path} cannot be read ({exc}); tell an admin.") from None
    return _chunks(path, conn, cursor, batch)


def _chunks(path: Path, conn: sqlite3.Connection, cursor, size: int) -> Iterator[str]:
    try:
        yield ",".join(SESSION_COLUMNS) + "\n"
        while rows := cursor.fetchmany(size):
            yield "\n".join([r[0] for r in rows]) + "\n"
    except sqlite3.Error as exc:
        raise LogUnavailable(f"The usage log {path} cannot be read ({exc}); tell an admin.") from None
    finally:
        conn.close()


# A chain of continued sessions cannot be longer than this in practice (each continues the one
# before within max_minutes); the bound only keeps a damaged record from looping.
CHAIN_LIMIT = 1000


def last_sessions(path: Path, lamp_ids) -> list[dict]:
    """S20: per lamp its newest session (by id: no clock step can reorder ids), its clock anchor,
    and `chain_used_s`, the time used by it and every session it continues (the patient's budget)."""
    out = []
    with reading(path) as conn:
        for lamp_id in lamp_ids:
            row = conn.execute(
                "SELECT s.id, s.lamp_id, s.ended_at, s.actual_s, s.end_reason, s.continues, c.boot_id, "
                "c.started_mono, c.wall_synced FROM sessions s LEFT JOIN session_clocks c ON c.session_id = s.id "
                "WHERE s.lamp_id = ? ORDER BY s.id DESC LIMIT 1",
                (lamp_id,),
            ).fetchone()
            if row is None:
                continue
            used = conn.execute(
                "WITH RECURSIVE chain (id, continues, actual_s, depth) AS ("
                " SELECT id, continues, actual_s, 0 FROM sessions WHERE id = ?"
                " UNION ALL SELECT s.id, s.continues, s.actual_s, chain.depth + 1 FROM sessions s"
                " JOIN chain ON s.id = chain.continues AND s.id < chain.id"
                " WHERE s.lamp_id = ? AND chain.depth < ?)"
                " SELECT coalesce(sum(actual_s), 0) FROM chain",
                (row["id"], lamp_id, CHAIN_LIMIT),
            ).fetchone()[0]
            out.append({**dict(row), "chain_used_s": used})
    return out


def events(path: Path, *, limit: int = 200, offset: int = 0, lamp: str | None = None) -> list[dict]:
    """Audit events newest first."""
    sql, params = "SELECT * FROM events", []
    if lamp:
        sql += " WHERE lamp_id = ?"
        params.append(lamp)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    with reading(path) as conn:
        return [dict(r) for r in conn.execute(sql, [*params, limit, offset])]

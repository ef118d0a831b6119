"""The log's read queries at scale: migration 4's indexes in the plans, keyset pages, capped counts, the CSV fast path."""

from __future__ import annotations

import csv
import io
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lampctl.storage import export, queries, reports
from lampctl.storage.db import connect, open_database

SESSION_INSERT = (
    "INSERT INTO sessions (lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def plan(path, sql: str, params=()) -> str:
    conn = connect(path)
    try:
        return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    finally:
        conn.close()


def fill(path, rows) -> None:
    conn = connect(path)
    try:
        conn.executemany(SESSION_INSERT, rows)
    finally:
        conn.close()


def random_sessions(n: int, seed: int = 3) -> list[tuple]:
    """Sessions with many equal start times, so the keyset's tie-break on id matters."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start = f"2026-01-{rng.randint(1, 4):02d}T10:00:0{rng.randint(0, 2)}.000Z"
        reason = rng.choice(["completed", "stopped", "estop", None])
        ended = None if reason is None else start.replace("T10", "T11")
        rows.append(
            (
                rng.choice(["room1", "room2"]),
                rng.choice(["ann", "bob", "-cy"]),
                start,
                ended,
                600.0,
                None if reason is None else 599.5,
                reason,
            )
        )
    return rows


def test_migration_4_puts_the_log_pages_on_indexes(tmp_path):
    db = tmp_path / "l.db"
    open_database(db)
    assert "sessions_open" in plan(db, "SELECT id, started_at, planned_s FROM sessions WHERE ended_at IS NULL")
    assert "COVERING INDEX sessions_by_lamp" in plan(
        db,
        "SELECT coalesce(sum(actual_s), 0) FROM sessions WHERE lamp_id = ? AND started_at >= ? "
        "AND actual_s IS NOT NULL",
        ("room1", ""),
    )
    newest = "SELECT * FROM sessions WHERE {} = ? ORDER BY started_at DESC, id DESC LIMIT 51"
    assert "sessions_by_user" in plan(db, newest.format("user"), ("ann",))
    assert "sessions_by_reason" in plan(db, newest.format("end_reason"), ("estop",))


def test_session_users_is_a_skip_scan_listing_each_name_once(tmp_path):
    db = tmp_path / "l.db"
    open_database(db)
    rows = random_sessions(200)
    fill(db, rows)
    assert reports.session_users(db) == sorted({r[1] for r in rows})
    conn = connect(db)
    try:
        text = " | ".join(
            r[3]
            for r in conn.execute("EXPLAIN QUERY PLAN SELECT (SELECT min(user) FROM sessions WHERE user > ?)", ("ann",))
        )
    finally:
        conn.close()
    assert "sessions_by_user" in text and "SCAN sessions" not in text.replace("SCAN sessions USING", "")


def test_session_users_of_an_empty_log_is_empty(tmp_path):
    db = tmp_path / "l.db"
    open_database(db)
    assert reports.session_users(db) == []


def _walk(db, size: int, **filters) -> tuple[list[int], list[list[int]]]:
    """Every page from the newest, going older; then the same pages walked back newer."""
    pages, before = [], None
    while True:
        rows, more = queries.session_page(db, size, before=before, **filters)
        pages.append([r["id"] for r in rows])
        if not more:
            break
        before = rows[-1]["id"]
    back = [pages[-1]]
    while len(back) < len(pages):
        rows, _more = queries.session_page(db, size, after=back[-1][0], **filters)
        back.append([r["id"] for r in rows])
    return [i for page in pages for i in page], back[::-1]


def test_session_page_keyset_walks_the_whole_log_newest_first_both_ways(tmp_path):
    db = tmp_path / "l.db"
    open_database(db)
    rows = random_sessions(57)
    fill(db, rows)
    ordered = sorted(range(1, 58), key=lambda i: (rows[i - 1][2], i), reverse=True)
    for filters in ({}, {"lamp": "room2"}, {"user": "-cy", "reason": "estop"}, {"start": "2026-01-02"}):
        expect = [
            i
            for i in ordered
            if all(
                {"lamp": rows[i - 1][0], "user": rows[i - 1][1], "reason": rows[i - 1][6]}.get(k, v) == v
                for k, v in filters.items()
                if k != "start"
            )
            and rows[i - 1][2] >= filters.get("start", "")
        ]
        seen, back = _walk(db, 5, **filters)
        assert seen == expect, filters
        # Walking back towards the newest shows each page's rows again, in the same order.
        assert [i for page in back for i in page] == expect[: len([i for page in back for i in page])]


def test_count_sessions_stops_at_its_cap(tmp_path):
    db = tmp_path / "l.db"
    open_database(db)
    fill(db, random_sessions(30))
    assert queries.count_sessions(db) == 30
    assert queries.count_sessions(db, cap=11) == 11
    assert queries.count_sessions(db, cap=100) == 30


# NUL is left out: SQLite's text functions end a string there, and no name or lamp id can hold one.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(texts, texts, st.none() | st.floats(0, 3600).map(lambda x: round(x, 3))), min_size=1, max_size=8)
)
def test_csv_chunks_write_what_csv_cell_would_for_any_name(tmp_path_factory, cells):
    # Every free-text cell, formulas, commas, quotes, CR and LF included, reads back as csv_cell made it.
    db = tmp_path_factory.mktemp("csv") / "l.db"
    open_database(db)
    fill(db, [(lamp, user, "2026-01-05T10:00:00.000Z", None, 60.0, actual, None) for lamp, user, actual in cells])
    text = "".join(queries.csv_chunks(db, batch=3))
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == export.SESSION_COLUMNS
    assert [r[1:3] for r in rows[1:]] == [
        [str(export.csv_cell(lamp)), str(export.csv_cell(user))] for lamp, user, _ in cells
    ]
    assert [float(r[6]) if r[6] else None for r in rows[1:]] == [actual for _, _, actual in cells]
    assert {r[7] for r in rows[1:]} == {""}


def _csv_rows(db, **filters) -> list[list[str]]:
    return list(csv.reader(io.StringIO("".join(queries.csv_chunks(db, batch=2, **filters)), newline="")))


def test_csv_new_patient_by_is_escaped_and_quoted_like_the_other_names(tmp_path):
    db = tmp_path / "l.db"
    open_database(db)
    by = ["=HYPERLINK(1)", "ann, the first", 'say "hi"', "plain", None]
    fill(db, [("room1", "ann", f"2026-01-05T10:0{i}:00.000Z", None, 60.0, None, None) for i in range(len(by))])
    conn = connect(db)
    for i, name in enumerate(by, 1):
        conn.execute("UPDATE sessions SET new_patient = 1, new_patient_by = ? WHERE id = ?", (name, i))
    conn.close()
    rows = _csv_rows(db)
    assert [r[10] for r in rows[1:]] == ["'=HYPERLINK(1)", "ann, the first", 'say "hi"', "plain", ""]
    assert [r[9] for r in rows[1:]] == ["true"] * 5


def test_csv_names_and_lines_are_read_in_one_snapshot(tmp_path, monkeypatch):
    """A session written between reading the names and reading the lines must not come out unescaped."""
    db = tmp_path / "l.db"
    open_database(db)
    fill(db, [("room1", "ann", "2026-01-05T10:00:00.000Z", None, 60.0, 60.0, "completed")])
    read_names = queries._name_cell_sql

    def then_a_write(conn, column, params):
        sql = read_names(conn, column, params)
        if column == "new_patient_by":  # the last names read, before the lines are
            fill(db, [("room1", "=evil", "2026-01-05T11:00:00.000Z", None, 60.0, 60.0, "completed")])
        return sql

    monkeypatch.setattr(queries, "_name_cell_sql", then_a_write)
    rows = _csv_rows(db)
    assert [r[2] for r in rows[1:]] == ["ann"]  # the later session is not in this snapshot at all
    monkeypatch.setattr(queries, "_name_cell_sql", read_names)
    assert [r[2] for r in _csv_rows(db)[1:]] == ["ann", "'=evil"]

"""Migration 9: each lamp's bulb hours kept as the sessions end equal the sum over the sessions, whatever happens."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lampctl.storage import db
from lampctl.storage.reports import BULB_SECONDS_SQL
from tests.test_migration_8 import _at_version

LAMPS = ("a", "b", "c")


def _since(conn, lamp: str) -> str:
    row = conn.execute(
        "SELECT at FROM bulb_replacements WHERE lamp_id = ? ORDER BY at DESC, id DESC LIMIT 1", (lamp,)
    ).fetchone()
    return row[0] if row else ""


def _check(conn) -> None:
    for lamp in LAMPS:
        expected = conn.execute(BULB_SECONDS_SQL, (lamp, _since(conn, lamp))).fetchone()[0]
        kept = conn.execute("SELECT since, seconds FROM bulb_totals WHERE lamp_id = ?", (lamp,)).fetchone()
        if kept is None:
            assert expected == 0, lamp
        else:
            assert kept[0] == _since(conn, lamp), lamp
            assert kept[1] == pytest.approx(expected, abs=1e-6), lamp


def _day(n: int) -> str:
    return f"2026-01-{n:02d}T09:00:00.000Z"


def test_migration_9_counts_what_was_there_before_it(tmp_path):
    conn = _at_version(tmp_path / "v8.db", 8)
    rows = [(1, "a", _day(2), 600.0), (2, "a", _day(5), 300.0), (3, "b", _day(3), 120.0), (4, "a", _day(6), None)]
    for sid, lamp, started, actual in rows:
        conn.execute(
            "INSERT INTO sessions (id, lamp_id, user, started_at, planned_s, actual_s) VALUES (?, ?, 'ann', ?, 600, ?)",
            (sid, lamp, started, actual),
        )
    conn.execute("INSERT INTO bulb_replacements (lamp_id, at, who, hours) VALUES ('a', ?, 'admin', 1)", (_day(4),))
    conn.execute("INSERT INTO bulb_replacements (lamp_id, at, who, hours) VALUES ('c', ?, 'admin', 1)", (_day(1),))
    db.migrate(conn)
    kept = dict(conn.execute("SELECT lamp_id, seconds FROM bulb_totals").fetchall())
    assert kept == {"a": 300.0, "b": 120.0, "c": 0.0}  # a: only the session after its new bulb, the open one not yet
    _check(conn)


# One step on the log: what the service, the CLI's prune and an admin's bulb record do to it.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.sampled_from(LAMPS), st.integers(1, 28)),
        st.tuples(st.just("end"), st.integers(0, 40), st.floats(0, 3600, allow_nan=False)),
        st.tuples(st.just("whole"), st.sampled_from(LAMPS), st.integers(1, 28), st.floats(0, 3600, allow_nan=False)),
        st.tuples(st.just("prune"), st.integers(1, 28)),
        st.tuples(st.just("bulb"), st.sampled_from(LAMPS), st.integers(1, 28)),
        st.tuples(st.just("unbulb"), st.sampled_from(LAMPS)),
        st.tuples(st.just("move"), st.integers(0, 40), st.sampled_from(LAMPS)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(steps=STEPS)
def test_bulb_totals_always_equal_the_sum_over_the_sessions(tmp_path_factory, steps):
    conn = sqlite3.connect(tmp_path_factory.mktemp("bulbs") / "l.db", isolation_level=None)
    db.migrate(conn)
    for step in steps:
        kind = step[0]
        if kind == "start":
            conn.execute(
                "INSERT INTO sessions (lamp_id, user, started_at, planned_s) VALUES (?, 'ann', ?, 600)",
                (step[1], _day(step[2])),
            )
        elif kind == "end":
            conn.execute(
                "UPDATE sessions SET ended_at = started_at, actual_s = ? WHERE id = ? AND actual_s IS NULL",
                (step[2], step[1]),
            )
        elif kind == "whole":
            conn.execute(
                "INSERT INTO sessions (lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason)"
                " VALUES (?, 'ann', ?, ?, 600, ?, 'completed')",
                (step[1], _day(step[2]), _day(step[2]), step[3]),
            )
        elif kind == "prune":
            conn.execute("DELETE FROM sessions WHERE started_at < ?", (_day(step[1]),))
        elif kind == "bulb":
            conn.execute(
                "INSERT INTO bulb_replacements (lamp_id, at, who, hours) VALUES (?, ?, 'admin', 0)",
                (step[1], _day(step[2])),
            )
        elif kind == "unbulb":
            conn.execute(
                "DELETE FROM bulb_replacements WHERE id = (SELECT max(id) FROM bulb_replacements WHERE lamp_id = ?)",
                (step[1],),
            )
        else:
            conn.execute("UPDATE sessions SET lamp_id = ? WHERE id = ?", (step[2], step[1]))
        _check(conn)
    conn.close()

"""Migration 8 widens the sessions' end reasons (S23, S24) and keeps what hangs on the table."""

from __future__ import annotations

import sqlite3

import pytest

from lampctl.storage import db


def _at_version(path, version: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for number in range(version):
        db.apply(conn, number)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def test_migration_8_keeps_rows_indexes_and_triggers_and_takes_the_new_end_reasons(tmp_path):
    conn = _at_version(tmp_path / "v7.db", 7)
    conn.execute(
        "INSERT INTO sessions (id, lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason, continues,"
        " new_patient, new_patient_by) VALUES (1, 'a', 'ann', '2026-01-05T09:00:00Z', '2026-01-05T09:10:00Z', 600,"
        " 600, 'completed', NULL, 1, 'ann')"
    )
    conn.execute("INSERT INTO sessions (id, lamp_id, user, started_at, planned_s) VALUES (2, 'a', 'ann', 'x', 60)")
    conn.execute("INSERT INTO session_clocks (session_id, started_mono) VALUES (2, 5.0)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE sessions SET end_reason = 'patient' WHERE id = 1")
    assert db.migrate(conn) == len(db.MIGRATIONS) >= 8
    assert conn.execute("SELECT * FROM sessions WHERE id = 1").fetchone() == (
        1, "a", "ann", "2026-01-05T09:00:00Z", "2026-01-05T09:10:00Z", 600.0, 600.0, "completed", None, 1, "ann"
    )  # fmt: skip
    indexes = {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sessions'")
    }
    assert {
        "sessions_by_start",
        "sessions_by_user",
        "sessions_by_lamp",
        "sessions_by_reason",
        "sessions_open",
    } <= indexes
    for reason in ("patient", "over-temperature", "over-current"):
        conn.execute("UPDATE sessions SET end_reason = ? WHERE id = 1", (reason,))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE sessions SET end_reason = 'tilted' WHERE id = 1")
    # The triggers that hang on the table came back: the outbox queues an ended session ...
    conn.execute("UPDATE outbox_switch SET enabled = 1")
    conn.execute("UPDATE sessions SET ended_at = 'y', end_reason = 'patient' WHERE id = 2")
    assert conn.execute("SELECT kind, ref FROM outbox").fetchall() == [("session", 2)]
    # ... and a deleted session takes its clock anchor with it.
    conn.execute("DELETE FROM sessions WHERE id = 2")
    assert conn.execute("SELECT count(*) FROM session_clocks").fetchone() == (0,)
    assert db.END_REASONS == (
        "completed", "stopped", "estop", "fault", "interrupted", "firmware", "patient", "over-temperature", "over-current"
    )  # fmt: skip

"""The usage log: migrations, S4 recovery, S9 a failing disk loses nothing that fits the queue, users and tokens."""
from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest

from lampctl.store import MIGRATIONS, StoreError, UsageLog, connect, iso, parse_bound

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def test_store_migrations_are_versioned_and_idempotent(tmp_path):
    db = tmp_path / "l.db"
    UsageLog(db).close()
    UsageLog(db).close()
    conn = connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sessions", "events", "users", "api_tokens", "alive"} <= tables
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    finally:
        conn.close()
    with pytest.raises(StoreError, match="newer than this lampctl"):
        UsageLog(db)


def _open_session(db, sid, started, planned, alive_at=None):
    conn = connect(db)
    conn.execute("INSERT INTO sessions (id, lamp_id, user, started_at, planned_s) VALUES (?, 'room1', 'ann', ?, ?)",
                 (sid, iso(started), planned))
    if alive_at:
        conn.execute("INSERT OR REPLACE INTO alive (id, at) VALUES (1, ?)", (iso(alive_at),))
    conn.close()


def test_s4_open_session_marked_interrupted_no_later_than_last_alive(tmp_path):
    db = tmp_path / "l.db"
    UsageLog(db).close()
    _open_session(db, 1, T0, 1200, alive_at=T0 + timedelta(seconds=300))
    _open_session(db, 2, T0 + timedelta(seconds=10), 60)  # would have ended before the crash
    log = UsageLog(db, wall=lambda: T0 + timedelta(hours=2))
    try:
        assert log.recover_interrupted() == [1, 2]
        rows = {r["id"]: r for r in log.sessions()}
        assert rows[1]["end_reason"] == "interrupted" and rows[1]["ended_at"] == iso(T0 + timedelta(seconds=300))
        assert rows[1]["actual_s"] == 300
        assert rows[2]["ended_at"] == iso(T0 + timedelta(seconds=70)) and rows[2]["actual_s"] == 60
        assert log.recover_interrupted() == []
        assert sum("interrupted" in e["why"] for e in log.events()) == 2
    finally:
        log.close()


def test_store_writer_stamps_alive_and_ids_continue_after_restart(tmp_path):
    db = tmp_path / "l.db"
    log = UsageLog(db, wall=lambda: T0)
    log.start()
    sid = log.new_session_id()
    log.session_started(sid, "room1", "ann", T0, 60)
    assert log.flush(5)
    log.close()
    conn = connect(db)
    assert conn.execute("SELECT at FROM alive").fetchone()[0] == iso(T0)
    conn.close()
    assert UsageLog(db).new_session_id() == sid + 1


class FlakyDisk:
    """A connect() that fails while `broken` is set, as a full or unplugged disk would."""

    def __init__(self):
        self.broken = threading.Event()

    def __call__(self, path):
        conn = connect(path)
        if self.broken.is_set():
            conn.close()
            raise sqlite3.OperationalError("disk I/O error")
        return conn


def test_s9_failing_disk_never_blocks_and_loses_nothing_that_fits_the_queue(tmp_path):
    db = tmp_path / "l.db"
    log = UsageLog(db, queue_size=100, wall=lambda: T0)
    disk = FlakyDisk()
    log._connect = disk
    disk.broken.set()
    log.start()
    try:
        for i in range(1, 101):
            log.session_started(log.new_session_id(), "room1", "ann", T0, 60)  # returns at once
        assert not log.flush(0.3)
        assert log.write_errors >= 1 and "disk I/O error" in log.last_error
        for _ in range(5):  # beyond the queue: counted as lost, never blocking
            log.event("room1", "on", "off", "system", "overflow")
        assert log.dropped == 5
        disk.broken.clear()
        assert log.flush(15)
        assert [r["id"] for r in log.sessions()] == list(range(1, 101))
    finally:
        log.close()


def test_store_users_pins_and_tokens(usage_log):
    usage_log.add_user("ann", "practitioner", "2468")
    with pytest.raises(StoreError, match="already exists"):
        usage_log.add_user("ann", "admin", "1111")
    for name, role, pin, words in [("a b", "admin", "1234", "letters"), ("bob", "boss", "1234", "Role"),
                                   ("bob", "admin", "12", "4 to 8 digits"), ("bob", "admin", "12ab", "digits")]:
        with pytest.raises(StoreError, match=words):
            usage_log.add_user(name, role, pin)
    assert usage_log.check_pin("ann", "2468") == {"name": "ann", "role": "practitioner"}
    assert usage_log.check_pin("ann", "0000") is None and usage_log.check_pin("nobody", "2468") is None
    conn = connect(usage_log.path)
    assert "2468" not in conn.execute("SELECT pin_hash FROM users").fetchone()[0]
    token = usage_log.create_token("ann")
    assert token not in str(conn.execute("SELECT * FROM api_tokens").fetchall()[0][:])
    conn.close()
    assert usage_log.user_for_token(token)["name"] == "ann"
    usage_log.remove_user("ann")
    assert usage_log.user_for_token(token) is None  # tokens go with their user
    with pytest.raises(StoreError, match="no user"):
        usage_log.create_token("ann")


def test_store_parse_bound_dates_times_and_garbage():
    assert parse_bound("2026-03-02T09:00:00+00:00") == "2026-03-02T09:00:00.000Z"
    assert parse_bound("2026-03-02T09:00Z") == "2026-03-02T09:00:00.000Z"
    upper = parse_bound("2026-03-02T00:00:00+00:00", upper=False)
    assert upper < parse_bound("2026-03-02", upper=True)
    with pytest.raises(StoreError, match="ISO-8601"):
        parse_bound("yesterday")

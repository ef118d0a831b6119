"""The usage log: migrations, S4 recovery, S9 a failing disk loses nothing that fits the queue, S17 latches,
honest flush and health, a database file deleted while serving, and user-given date bounds."""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lampctl.core.clock import FakeClock
from lampctl.storage import queries
from lampctl.storage.db import LogUnavailable, _statements, migrate
from lampctl.storage.store import END_REASONS, MIGRATIONS, StoreError, UsageLog, connect, iso, parse_bound
from tests.procs import wait_until

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


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
    conn.execute(
        "INSERT INTO sessions (id, lamp_id, user, started_at, planned_s) VALUES (?, 'room1', 'ann', ?, ?)",
        (sid, iso(started), planned),
    )
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
        for _ in range(1, 101):
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


def test_store_migration_3_keeps_old_sessions_and_accepts_firmware_and_continues(tmp_path):
    db = tmp_path / "l.db"
    conn = connect(db, create=True)
    for number in (0, 1):  # a database as the previous release left it
        for statement in _statements(MIGRATIONS[number]):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO sessions (id, lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason) "
        "VALUES (7, 'room1', 'ann', ?, ?, 60, 60, 'completed')",
        (iso(T0), iso(T0 + timedelta(seconds=60))),
    )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE sessions SET end_reason = 'firmware' WHERE id = 7")
    conn.close()
    log = UsageLog(db, wall=lambda: T0)
    try:
        [old] = log.sessions()
        assert (old["id"], old["end_reason"], old["continues"]) == (7, "completed", None)
        assert log.new_session_id() == 8
        log.session_started(8, "room1", "ann", T0, 120, continues=7)
        log.session_ended(8, T0 + timedelta(seconds=30), 30, "firmware")
        rows = {r["id"]: r for r in log.sessions()}
        assert (rows[8]["continues"], rows[8]["end_reason"]) == (7, "firmware")
        assert "firmware" in END_REASONS
    finally:
        log.close()


def test_s17_latched_faults_are_queued_and_survive_a_restart(tmp_path):
    db = tmp_path / "l.db"
    log = UsageLog(db, wall=lambda: T0)
    log.start()
    log.fault_latched("room1", "emergency stop by ann", T0)
    log.fault_latched("room2", "relay stuck on", T0)
    log.fault_latched("room2", "firmware link lost", T0)
    log.fault_cleared("room1")
    assert log.flush(5)
    log.close()
    assert UsageLog(db).latched_faults() == {"room2": "firmware link lost"}


class BlockingDisk:
    """A connect() that hangs while `frozen` is set, as a frozen filesystem does (it blocks, it does not fail)."""

    def __init__(self):
        self.frozen = threading.Event()
        self.thawed = threading.Event()
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        if self.frozen.is_set():
            self.thawed.wait(30)
        return connect(path)


def test_s9_flush_is_true_only_once_every_earlier_record_is_committed(tmp_path):
    clock = FakeClock()
    log = UsageLog(tmp_path / "l.db", wall=clock.wall, monotonic=clock.monotonic)
    disk = BlockingDisk()
    disk.frozen.set()
    log._connect = disk
    log.start()
    try:
        log.session_started(log.new_session_id(), "room1", "ann", T0, 60)
        assert not log.flush(0.2)
        assert log.health()["pending"] == 1 and log.health()["problems"] == []
        clock.advance(2.5)  # the record has now waited past STUCK_AFTER_S on a disk that never answers
        [problem] = log.health()["problems"]
        assert problem.startswith("The usage log has written nothing for 2 s (1 record waiting)")
        disk.thawed.set()
        assert log.flush(5)
        assert [r["id"] for r in log.sessions()] == [1] and log.health()["problems"] == []
    finally:
        disk.thawed.set()
        log.close()


def test_s9_health_reports_write_errors_and_dropped_records(tmp_path):
    log = UsageLog(tmp_path / "l.db", queue_size=2, wall=lambda: T0)
    disk = FlakyDisk()
    disk.broken.set()
    log._connect = disk
    log.start()
    try:
        for _ in range(3):
            log.event(None, None, None, "system", "x")
        wait_until(lambda: log.write_errors, 5, "a write error")
        health = log.health()
        assert (health["pending"], health["dropped"]) == (2, 1) and health["write_errors"] >= 1
        assert health["problems"] == [
            "The usage log cannot write to disk (disk I/O error); 2 records waiting.",
            "1 record lost (the usage log queue was full or the database refused them); see the service log.",
        ]
        disk.broken.clear()
        assert log.flush(10)
        assert log.health()["problems"] == [
            "1 record lost (the usage log queue was full or the database refused them); see the service log."
        ]
    finally:
        log.close()


def test_store_database_deleted_while_serving_is_reported_and_never_recreated_empty(tmp_path):
    db = tmp_path / "l.db"
    log = UsageLog(db, wall=lambda: T0, alive_every_s=0.05)
    log.start()
    try:
        log.session_started(log.new_session_id(), "room1", "ann", T0, 60)
        assert log.flush(5)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{db}{suffix}"):
                os.unlink(f"{db}{suffix}")
        wait_until(lambda: log.health()["problems"], 5, "the deletion noticed on the alive tick")
        assert log.health()["problems"][0].startswith(f"The database file {db} was deleted while the service")
        with pytest.raises(LogUnavailable, match="cannot be opened"):
            queries.sessions(db)
        with pytest.raises(LogUnavailable):
            queries.count_sessions(db)
        log.event(None, None, None, "system", "after the deletion")
        assert not log.flush(0.3)  # waits in the queue rather than going into a new empty file
        assert not db.exists()
    finally:
        log.close(timeout=0.5)


def test_store_database_replaced_while_serving_is_reported(tmp_path):
    db = tmp_path / "l.db"
    log = UsageLog(db, wall=lambda: T0, alive_every_s=0.05)
    log.start()
    try:
        log.event(None, None, None, "system", "before")
        assert log.flush(5)
        other = tmp_path / "restored.db"
        UsageLog(other).close()
        os.replace(other, db)
        wait_until(lambda: log.health()["problems"], 5, "the replacement noticed on the alive tick")
        assert "was replaced while the service was running" in log.health()["problems"][0]
    finally:
        log.close()


def test_store_parse_bound_dates_times_and_garbage():
    assert parse_bound("2026-03-02T09:00:00+00:00") == "2026-03-02T09:00:00.000Z"
    assert parse_bound("2026-03-02T09:00Z") == "2026-03-02T09:00:00.000Z"
    upper = parse_bound("2026-03-02T00:00:00+00:00", upper=False)
    assert upper < parse_bound("2026-03-02", upper=True)
    with pytest.raises(StoreError, match="ISO-8601"):
        parse_bound("yesterday")


def test_store_parse_bound_calendar_ends_and_compact_dates():
    assert parse_bound("0001-01-01") == "0001-01-01T00:00:00.000Z"
    assert parse_bound("9999-12-31T23:59:59-10:00", upper=True) == "9999-12-31T23:59:59.999Z"
    assert parse_bound("9999-12-31", upper=True) == "9999-12-31T23:59:59.999Z"
    # The compact form means the whole day, as the dashed one does.
    assert parse_bound("20261125") == parse_bound("2026-11-25")
    assert parse_bound("20261125", upper=True) == parse_bound("2026-11-25", upper=True)
    inside = iso(datetime(2026, 11, 25, 18, 0).astimezone())
    assert parse_bound("20261125") <= inside <= parse_bound("20261125", upper=True)
    for bad in ("", "\x00", "2026-02-30", "9" * 400, "2026-03-02T25:00", None):
        with pytest.raises(StoreError):
            parse_bound(bad)


@given(st.text(), st.booleans())
def test_store_parse_bound_raises_only_store_error_on_any_text(text, upper):
    try:
        out = parse_bound(text, upper=upper)
    except StoreError as exc:
        assert str(exc).endswith(".") and "\n" not in str(exc)
    else:
        assert len(out) == 24 and out.endswith("Z")


_aware = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-10)), timezone(timedelta(hours=13, minutes=45))])
)


_dates = st.dates(min_value=date(1900, 1, 1), max_value=date(9000, 12, 31))


@given(st.one_of(_aware, _dates), st.one_of(_aware, _dates))
def test_store_parse_bound_keeps_the_order_of_bounds(a, b):
    def moment(x, upper):
        if isinstance(x, datetime):
            return x
        # A bare date is a day of the Pi's local time.
        return datetime.combine(x, datetime.max.time() if upper else datetime.min.time()).astimezone()

    if moment(a, False) <= moment(b, True):
        assert parse_bound(a.isoformat()) <= parse_bound(b.isoformat(), upper=True)


def test_store_migration_run_twice_at_once_by_two_processes_is_harmless(tmp_path):
    db = tmp_path / "l.db"
    first, second = connect(db, create=True), connect(db, create=True)
    try:
        assert first.execute("PRAGMA user_version").fetchone()[0] == 0
        real_execute = second.execute
        assert migrate(first) == len(MIGRATIONS)
        seen = iter([0])  # the second migrator read version 0 before the first one finished

        class Stale:
            def execute(self, sql, *args):
                if sql == "PRAGMA user_version" and (v := next(seen, None)) is not None:
                    return real_execute(f"SELECT {v}")
                return real_execute(sql, *args)

        assert migrate(Stale()) == len(MIGRATIONS)
        assert second.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        first.close()
        second.close()


def test_s9_a_record_the_database_refuses_does_not_block_the_records_behind_it(tmp_path):
    log = UsageLog(tmp_path / "l.db", wall=lambda: T0)
    log.start()
    try:
        log.session_started(1, "room1", "ann", T0, 60)
        assert log.flush(5)
        log.event("room1", None, None, "system", "before")
        log.session_started(1, "room1", "ann", T0, 60)  # the same id again: a constraint refuses it
        log.event("room1", None, None, "system", "after")
        assert log.flush(10)
        assert [e["why"] for e in reversed(log.events())] == ["before", "after"]
        assert log.health()["dropped"] == 1 and len(log.health()["problems"]) == 1
        log.event("room1", None, None, "system", "later")
        assert log.flush(5)
    finally:
        log.close()

"""The usage log: sessions, audit events and fault latches, written through one bounded queue by one writer."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

from lampctl.core.carryover import read_boot_id
from lampctl.storage import queries
from lampctl.storage.db import (  # noqa: F401
    MIGRATIONS,
    LogUnavailable,
    StoreError,
    connect,
    iso,
    open_database,
    parse_bound,
    reading,
    transaction,
)

log = logging.getLogger(__name__)

END_REASONS = ("completed", "stopped", "estop", "fault", "interrupted", "firmware")
ALIVE_EVERY_S = 2.0
RETRY_MAX_S = 5.0
# A record older than this still waiting means the writer is stuck (a hung disk blocks, it does not fail).
STUCK_AFTER_S = 2.0
BATCH_MAX = 500  # records committed in one transaction

# One SQL statement with its parameters; a record is the statements that commit together.
Statement = tuple[str, tuple[object, ...]]
Record = tuple[Statement, ...]


class _Queue:
    """The bounded queue between the callers and the one writer (S9), and its counters, under one condition.

    Records stay queued until they are committed, so the bound is exact: at most `size`
    records wait, and only a record beyond that is lost (counted in `dropped`).
    """

    def __init__(self, size: int):
        self.size = size
        self._cond = threading.Condition()
        self._records: deque[tuple[float, Record]] = deque()  # (when it was queued, monotonic; the record)
        self._enqueued = 0
        self._committed = 0
        self.dropped = 0
        self._stopping = False

    def put(self, at: float, record: Record) -> bool:
        """Queue a record; False when the queue is full and it is lost (counted)."""
        with self._cond:
            if len(self._records) >= self.size:
                self.dropped += 1
                return False
            self._records.append((at, record))
            self._enqueued += 1
            self._cond.notify_all()
            return True

    def __len__(self) -> int:
        return len(self._records)  # one read of a deque: no lock needed

    def oldest(self) -> tuple[int, float | None]:
        """(records waiting, when the oldest of them was queued)."""
        with self._cond:
            return len(self._records), self._records[0][0] if self._records else None

    def flush(self, timeout: float) -> bool:
        """True once every record queued before this call is committed; False on timeout."""
        with self._cond:
            target = self._enqueued
            return self._cond.wait_for(lambda: self._committed >= target, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def take(self, timeout: float) -> list[Record] | None:
        """The oldest records (left queued until done()), waiting up to timeout for one; None once
        stopping with nothing left to write."""
        with self._cond:
            self._cond.wait_for(lambda: self._records or self._stopping, timeout)
            if self._stopping and not self._records:
                return None
            return [record for _at, record in islice(self._records, BATCH_MAX)]

    def done(self, count: int) -> None:
        """The oldest `count` records are committed (or given up on)."""
        with self._cond:
            for _ in range(count):
                self._records.popleft()
            self._committed += count
            self._cond.notify_all()

    def refused(self) -> None:
        """A record the database refused is lost: counted with those that did not fit."""
        with self._cond:
            self.dropped += 1

    def stopping_else_wait(self, timeout: float) -> bool:
        """True when stopping; else wait up to timeout (a stop ends the wait early) and False."""
        with self._cond:
            if self._stopping:
                return True
            self._cond.wait_for(lambda: self._stopping, timeout)
            return False


@dataclass
class _WriterHealth:
    """What the writer thread reports, read by health() from memory."""

    write_errors: int = 0
    last_error: str | None = None
    failing: bool = False
    file_problem: str | None = None


class UsageLog:
    """Sessions, events and latches go through a bounded queue to one writer thread (S9).

    The controller never waits for the disk: enqueueing is non-blocking. If the disk
    fails, records wait in the queue and are retried until it is back; only records
    that do not fit the queue are lost, and those are counted and logged.
    """

    def __init__(
        self,
        path: Path,
        *,
        queue_size: int = 10000,
        wall=None,
        monotonic=time.monotonic,
        alive_every_s: float = ALIVE_EVERY_S,
        boot_id: str | None | bool = True,
        clock_synced: Callable[[], bool | None] = lambda: None,
    ):
        self.path = Path(path)
        # The clock anchor of each session (S20): this boot, and whether the wall clock is synchronised.
        self.boot_id = read_boot_id() if boot_id is True else (boot_id or None)
        self._clock_synced = clock_synced
        # S4/S13: the newest progress mark of each open session, saved by the writer with "alive".
        self._marks: dict[int, float] = {}
        self._marks_lock = threading.Lock()
        open_database(self.path)
        with reading(self.path) as conn:
            self._next_id = (conn.execute("SELECT max(id) FROM sessions").fetchone()[0] or 0) + 1
        self._wall = wall or (lambda: datetime.now(UTC))
        self._monotonic = monotonic  # ages of waiting records (health); the writer keeps real time
        self.alive_every_s = alive_every_s
        self._id_lock = threading.Lock()
        self._queue = _Queue(queue_size)
        self._health = _WriterHealth()
        self._writer: threading.Thread | None = None
        self._connect = connect  # swapped by tests to simulate a failing disk

    # ---- writer ------------------------------------------------------------------------
    def start(self) -> None:
        writer = _Writer(
            self._queue,
            self._health,
            self.path,
            lambda path: self._connect(path),
            self._wall,
            self.alive_every_s,
            self.progress_marks,
        )
        self._writer = threading.Thread(target=writer.run, name="usage-log-writer", daemon=True)
        self._writer.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting up to timeout), then stop the writer."""
        if self._writer is not None:
            self.flush(timeout)
            self._queue.stop()
            self._writer.join(timeout)
            self._writer = None

    def _put(self, *statements: Statement) -> None:
        """Queue statements that must commit together (one record)."""
        if self._writer is None:
            # No writer thread (a CLI command, start-up): write straight through.
            conn = connect(self.path)
            try:
                with transaction(conn):
                    for sql, params in statements:
                        conn.execute(sql, params)
            finally:
                conn.close()
            return
        if not self._queue.put(self._monotonic(), statements):
            # Logged outside the lock: a slow log sink must not hold up the next record.
            log.error("usage log queue full (%d records): record lost: %r", self._queue.size, statements)

    def flush(self, timeout: float) -> bool:
        """True once every record enqueued before this call is committed; False on timeout."""
        if self._writer is None:
            return not self._queue
        return self._queue.flush(timeout)

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    @property
    def write_errors(self) -> int:
        return self._health.write_errors

    @property
    def last_error(self) -> str | None:
        return self._health.last_error

    @property
    def file_problem(self) -> str | None:
        return self._health.file_problem

    # ---- health (memory only: never touches the disk) -------------------------------------
    def health(self) -> dict:
        """{"pending", "write_errors", "dropped", "problems": [sentences]} from memory alone."""
        pending, oldest = self._queue.oldest()
        problems = []
        if self.file_problem:
            problems.append(self.file_problem)
        if self._health.failing:
            problems.append(f"The usage log cannot write to disk ({self.last_error}); {_records(pending)} waiting.")
        elif oldest is not None and self._monotonic() - oldest > STUCK_AFTER_S:
            problems.append(
                f"The usage log has written nothing for {self._monotonic() - oldest:.0f} s "
                f"({_records(pending)} waiting): the disk may be hung."
            )
        if self._writer is not None and not self._writer.is_alive():
            problems.append("The usage log writer has stopped: records are not being saved; restart the service.")
        if self.dropped:
            problems.append(
                f"{_records(self.dropped)} lost (the usage log queue was full or the database "
                "refused them); see the service log."
            )
        return {"pending": pending, "write_errors": self.write_errors, "dropped": self.dropped, "problems": problems}

    # ---- records written through the queue ---------------------------------------------
    def new_session_id(self) -> int:
        # Ids are handed out in memory so a start never waits for the disk.
        with self._id_lock:
            sid = self._next_id
            self._next_id += 1
            return sid

    def session_started(
        self,
        session_id: int,
        lamp_id: str,
        user: str,
        started_at: datetime,
        planned_s: float,
        continues: int | None = None,
        *,
        new_patient: bool = False,
        new_patient_by: str | None = None,
        started_mono: float | None = None,
    ) -> None:
        """A session begins; with started_mono its clock anchor is recorded with it (S20)."""
        statements: list[Statement] = [
            (
                "INSERT INTO sessions (id, lamp_id, user, started_at, planned_s, continues, new_patient, "
                "new_patient_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    lamp_id,
                    user,
                    iso(started_at),
                    planned_s,
                    continues,
                    int(bool(new_patient)),
                    new_patient_by,
                ),
            )
        ]
        if started_mono is not None:
            synced = self._clock_synced()
            statements.append(
                (
                    "INSERT INTO session_clocks (session_id, boot_id, started_mono, wall_synced) VALUES (?, ?, ?, ?)",
                    (session_id, self.boot_id, started_mono, None if synced is None else int(synced)),
                )
            )
        self._put(*statements)

    def session_progress(self, session_id: int, elapsed_s: float) -> None:
        """S4/S13: the monotonic time a running session has run; in memory, saved by the writer with each
        "alive" stamp (one mark per open session however long the disk is away: it never fills the queue)."""
        with self._marks_lock:
            self._marks[session_id] = elapsed_s

    def progress_marks(self) -> list[tuple[float, int]]:
        """(elapsed, session id) of every open session; kept until it ends, so a mark whose start was
        not yet on disk is written again with the next "alive"."""
        with self._marks_lock:
            return [(round(elapsed, 3), sid) for sid, elapsed in self._marks.items()]

    def session_extended(self, session_id: int, planned_s: float) -> None:
        self._put(("UPDATE sessions SET planned_s = ? WHERE id = ?", (planned_s, session_id)))

    def session_ended(self, session_id: int, ended_at: datetime, actual_s: float, reason: str) -> None:
        if reason not in END_REASONS:
            raise ValueError(f"unknown end reason {reason!r}")
        with self._marks_lock:
            self._marks.pop(session_id, None)
        self._put(
            (
                "UPDATE sessions SET ended_at = ?, actual_s = ?, end_reason = ? WHERE id = ?",
                (iso(ended_at), round(actual_s, 3), reason, session_id),
            )
        )

    def event(
        self,
        lamp_id: str | None,
        from_state: str | None,
        to_state: str | None,
        who: str,
        why: str,
        at: datetime | None = None,
    ) -> None:
        self._put(_event_row(iso(at or self._wall()), lamp_id, from_state, to_state, who, why))

    def fault_latched(self, lamp_id: str, reason: str, at: datetime | None = None) -> None:
        """S17: remember a latched fault so a restart keeps the lamp in fault."""
        self._put(
            (
                "INSERT INTO latches (lamp_id, reason, at) VALUES (?, ?, ?) ON CONFLICT (lamp_id) "
                "DO UPDATE SET reason = excluded.reason, at = excluded.at",
                (lamp_id, reason, iso(at or self._wall())),
            )
        )

    def fault_cleared(self, lamp_id: str) -> None:
        self._put(("DELETE FROM latches WHERE lamp_id = ?", (lamp_id,)))

    def record_bulb_replacement(self, lamp_id: str, who: str, hours: float) -> str:
        """Note that a lamp's bulb was replaced after `hours` of use; returns the time recorded."""
        at = iso(self._wall())
        self._put(
            (
                "INSERT INTO bulb_replacements (lamp_id, at, who, hours) VALUES (?, ?, ?, ?)",
                (lamp_id, at, who, round(hours, 3)),
            ),
            _event_row(at, lamp_id, None, None, who, f"bulb replaced after {hours:.1f} h"),
        )
        return at

    # ---- direct reads and start-up work (before the writer runs; never on the safety path) ----
    def latched_faults(self) -> dict[str, str]:
        """{lamp_id: reason} of the faults latched when the service last ran (read at start-up)."""
        with reading(self.path) as conn:
            return {r["lamp_id"]: r["reason"] for r in conn.execute("SELECT lamp_id, reason FROM latches")}

    def last_sessions(self, lamp_ids) -> list[dict]:
        """Each lamp's newest session with its clock anchor and its patient's time used (read at start-up, S20)."""
        return queries.last_sessions(self.path, lamp_ids)

    def recover_interrupted(self) -> list[int]:
        """S4: close sessions left open by a crash as `interrupted`.

        ended_at is started_at plus the session's last progress mark, the monotonic time it
        had run (S13: a wall-clock step cannot lengthen or shorten it); a session with no mark
        yet ends at the last moment the service was known alive. Never before the start,
        never after the planned end, so the log does not claim time the lamp may not have run.
        """
        conn = connect(self.path)
        try:
            alive_row = conn.execute("SELECT at FROM alive WHERE id = 1").fetchone()
            rows = conn.execute(
                "SELECT s.id, s.started_at, s.planned_s, c.progress_s FROM sessions s "
                "LEFT JOIN session_clocks c ON c.session_id = s.id "
                "WHERE s.ended_at IS NULL"
            ).fetchall()
            closed = []
            for row in rows:
                started = datetime.fromisoformat(row["started_at"])
                ended = started + timedelta(seconds=row["planned_s"])
                if row["progress_s"] is not None:
                    ended = min(ended, started + timedelta(seconds=max(0.0, row["progress_s"])))
                elif alive_row is not None:
                    ended = min(ended, datetime.fromisoformat(alive_row["at"]))
                ended = max(ended, started)
                with transaction(conn):
                    conn.execute(
                        "UPDATE sessions SET ended_at = ?, actual_s = ?, end_reason = 'interrupted' WHERE id = ?",
                        (iso(ended), round((ended - started).total_seconds(), 3), row["id"]),
                    )
                    conn.execute(
                        "INSERT INTO events (at, lamp_id, from_state, to_state, who, why) "
                        "SELECT ?, lamp_id, 'on', 'off', 'system', ? FROM sessions WHERE id = ?",
                        (
                            iso(self._wall()),
                            f"interrupted: service was not running (last known alive {iso(ended)})",
                            row["id"],
                        ),
                    )
                closed.append(row["id"])
            return closed
        finally:
            conn.close()

    # Reads for callers that hold a log (tests, the API); the queries live in lampctl.storage.queries.
    def sessions(self, **filters) -> list[dict]:
        return queries.sessions(self.path, **filters)

    def events(self, **filters) -> list[dict]:
        return queries.events(self.path, **filters)


def _records(n: int) -> str:
    return f"{n} record{'' if n == 1 else 's'}"


def _event_row(at: str, lamp_id, from_state, to_state, who: str, why: str) -> tuple[str, tuple]:
    return (
        "INSERT INTO events (at, lamp_id, from_state, to_state, who, why) VALUES (?, ?, ?, ?, ?, ?)",
        (at, lamp_id, from_state, to_state, who, why),
    )


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Writer:
    """The writer thread's loop and its one connection (owned by that thread alone).

    It takes records from the queue, commits them, and every alive_every_s stamps "alive"
    with each open session's progress mark (marks()); what goes wrong goes into health.
    """

    def __init__(
        self,
        queue: _Queue,
        health: _WriterHealth,
        path: Path,
        connect: Callable[[Path], sqlite3.Connection],
        wall: Callable[[], datetime],
        alive_every_s: float,
        marks: Callable[[], list[tuple[float, int]]],
    ):
        self.queue = queue
        self.health = health
        self.path = path
        self.connect = connect
        self.wall = wall
        self.alive_every_s = alive_every_s
        self.marks = marks
        self.conn: sqlite3.Connection | None = None
        self.file_id: tuple[int, int] | None = None
        self.backoff = 0.05
        self.next_alive = 0.0

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    def run(self) -> None:
        try:
            self.loop()
        finally:
            self.close()

    def loop(self) -> None:
        while True:
            batch = self.queue.take(max(0.0, self.next_alive - time.monotonic()))
            if batch is None:
                return
            now = time.monotonic()
            alive = now >= self.next_alive
            if not batch and not alive:
                continue
            if alive:
                self.check_file()
            try:
                try:
                    self.write(batch, alive)
                except sqlite3.IntegrityError:
                    self.one_by_one(batch)
                    continue
            except sqlite3.Error as exc:
                if not self.failed(exc):
                    return
                continue
            self.backoff = 0.05
            self.health.failing = False
            if alive:
                self.next_alive = now + self.alive_every_s
            self.queue.done(len(batch))

    def open(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = self.connect(self.path)
            self.file_id = _file_id(self.path)
        return self.conn

    def one_by_one(self, batch: list[Record]) -> None:
        """A record the database refuses (a constraint) would block every record behind it for
        ever: write the batch one record at a time and give up on that record alone, counted as lost."""
        conn = self.open()
        for statements in batch:
            try:
                with transaction(conn):
                    for sql, params in statements:
                        conn.execute(sql, params)
            except sqlite3.IntegrityError as exc:
                self.queue.refused()
                log.error("usage log record refused by the database (%s); record lost: %r", exc, statements)
            self.queue.done(1)  # an OperationalError stops here: the records behind it stay queued

    def write(self, batch: list[Record], alive: bool) -> None:
        conn = self.open()
        with transaction(conn):
            for statements in batch:
                for sql, params in statements:
                    conn.execute(sql, params)
            if alive:
                conn.execute(
                    "INSERT INTO alive (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    (iso(self.wall()),),
                )
                # S4/S13: each open session's newest progress mark, after the batch that may hold its start.
                conn.executemany("UPDATE session_clocks SET progress_s = ? WHERE session_id = ?", self.marks())

    def check_file(self) -> None:
        """Item 10: the file at the path must still be the one this connection writes to."""
        if self.conn is None or self.file_id is None:
            return
        now_id = _file_id(self.path)
        if now_id == self.file_id:
            return
        what = "deleted" if now_id is None else "replaced"
        self.health.file_problem = (
            f"The database file {self.path} was {what} while the service was running; "
            "records written before are in the lost file. Restore it and restart the "
            "service."
        )
        log.error("%s", self.health.file_problem)
        # Writing on into an unlinked file would lose every record at close: reopen by path
        # (mode=rw, so a missing file is an error and records wait in the queue).
        self.close()

    def failed(self, exc: sqlite3.Error) -> bool:
        """Keep the records and retry: the disk may come back (S9). False when stopping."""
        self.health.write_errors += 1
        self.health.last_error = str(exc)
        self.health.failing = True
        log.error(
            "usage log write failed (%s); %d records waiting, retrying in %.2f s", exc, len(self.queue), self.backoff
        )
        self.close()
        if self.queue.stopping_else_wait(self.backoff):
            log.error("usage log stopping with %d records unwritten", len(self.queue))
            return False
        self.backoff = min(self.backoff * 2, RETRY_MAX_S)
        return True

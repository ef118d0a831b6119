"""The usage log in SQLite: sessions, audit events, users and tokens, written by one writer thread."""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections import deque
from contextlib import contextmanager
from itertools import islice
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from werkzeug.security import check_password_hash, generate_password_hash

log = logging.getLogger(__name__)

END_REASONS = ("completed", "stopped", "estop", "fault", "interrupted", "firmware")
ROLES = ("practitioner", "admin")
USER_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
PIN_RE = re.compile(r"^[0-9]{4,8}$")
# PINs are short, so the hash buys little offline; the login lockout is the real guard.
# 100k rounds keep a login under a second on a Pi Zero 2 W.
PIN_HASH_METHOD = "pbkdf2:sha256:100000"
ALIVE_EVERY_S = 2.0
RETRY_MAX_S = 5.0

MIGRATIONS = [
    # 1: the first schema
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        lamp_id TEXT NOT NULL,
        user TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        planned_s REAL NOT NULL,
        actual_s REAL,
        end_reason TEXT CHECK (end_reason IN ('completed','stopped','estop','fault','interrupted'))
    );
    CREATE INDEX sessions_by_start ON sessions (started_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        lamp_id TEXT,
        from_state TEXT,
        to_state TEXT,
        who TEXT NOT NULL,
        why TEXT NOT NULL
    );
    CREATE INDEX events_by_time ON events (at);
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('practitioner','admin')),
        pin_hash TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE alive (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at TEXT NOT NULL
    );
    """,
    # 2: bulb replacements, so bulb hours count from the newest bulb
    """
    CREATE TABLE bulb_replacements (
        id INTEGER PRIMARY KEY,
        lamp_id TEXT NOT NULL,
        at TEXT NOT NULL,
        who TEXT NOT NULL,
        hours REAL NOT NULL
    );
    CREATE INDEX bulb_replacements_by_lamp ON bulb_replacements (lamp_id, at);
    """,
    # 3: end reason `firmware` and `continues` (S13, S18); latched faults survive a restart (S17)
    """
    CREATE TABLE sessions_v3 (
        id INTEGER PRIMARY KEY,
        lamp_id TEXT NOT NULL,
        user TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        planned_s REAL NOT NULL,
        actual_s REAL,
        end_reason TEXT CHECK (end_reason IN ('completed','stopped','estop','fault','interrupted','firmware')),
        continues INTEGER
    );
    INSERT INTO sessions_v3 (id, lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason)
        SELECT id, lamp_id, user, started_at, ended_at, planned_s, actual_s, end_reason FROM sessions;
    DROP TABLE sessions;
    ALTER TABLE sessions_v3 RENAME TO sessions;
    CREATE INDEX sessions_by_start ON sessions (started_at);
    CREATE TABLE latches (
        lamp_id TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        at TEXT NOT NULL
    );
    """,
]


class StoreError(Exception):
    """A user-caused problem with a store request; str() is one sentence."""


def iso(dt: datetime) -> str:
    """The one timestamp format in the database: UTC, milliseconds, so strings sort by time."""
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_bound(text: str, *, upper: bool = False) -> str:
    """An ISO-8601 date or time from a user as a database timestamp.

    A bare date as an upper bound means the end of that day; times without a zone are
    the Pi's local time.
    """
    try:
        dt = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise StoreError(f"{text!r} is not an ISO-8601 date or time such as 2026-03-01 or 2026-03-01T14:30.") from None
    if upper and len(text) == 10:
        dt += timedelta(days=1) - timedelta(milliseconds=1)
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return iso(dt)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough to keep a stolen DB useless.
    return hashlib.sha256(token.encode()).hexdigest()


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (connections are in autocommit mode)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; return that version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(f"The database is schema version {version}, newer than this lampctl knows ({len(MIGRATIONS)}).")
    for number in range(version, len(MIGRATIONS)):
        with transaction(conn):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
    return len(MIGRATIONS)


class UsageLog:
    """Sessions and events go through a bounded queue to one writer thread (S9).

    The controller never waits for the disk: enqueueing is non-blocking. If the disk
    fails, records wait in the queue and are retried until it is back; only records
    that do not fit the queue are lost, and those are counted and logged.
    """

    def __init__(self, path: Path, *, queue_size: int = 10000, wall=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        try:
            migrate(conn)
            self._next_id = (conn.execute("SELECT max(id) FROM sessions").fetchone()[0] or 0) + 1
        finally:
            conn.close()
        self._wall = wall or (lambda: datetime.now(timezone.utc))
        self._id_lock = threading.Lock()
        # Records stay in this deque until they are committed, so the bound is exact:
        # at most queue_size records wait, and only a record beyond that is lost.
        self._queue_size = queue_size
        self._pending: deque = deque()
        self._cond = threading.Condition()
        self._enqueued = 0
        self._committed = 0
        self.dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._writer: threading.Thread | None = None
        self._stop = False
        self._local = threading.local()
        self._connect = connect  # swapped by tests to simulate a failing disk

    # ---- writer ------------------------------------------------------------------------
    def start(self) -> None:
        self._writer = threading.Thread(target=self._run_writer, name="usage-log-writer", daemon=True)
        self._writer.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting up to timeout), then stop the writer."""
        if self._writer is not None:
            self.flush(timeout)
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._writer.join(timeout)
            self._writer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _put(self, sql: str, params: tuple) -> None:
        if self._writer is None:
            # No writer thread (a CLI command): write straight through.
            self._conn().execute(sql, params)
            return
        with self._cond:
            if len(self._pending) >= self._queue_size:
                self.dropped += 1
                log.error("usage log queue full (%d records): record lost: %s %r",
                          self._queue_size, sql.split()[0], params)
                return
            self._pending.append((sql, params))
            self._enqueued += 1
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued before this call is on disk; False on timeout."""
        with self._cond:
            if self._writer is None:
                return not self._pending
            target = self._enqueued
            return self._cond.wait_for(lambda: self._committed >= target, timeout)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _run_writer(self) -> None:
        conn = None
        backoff = 0.05
        next_alive = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stop,
                                    max(0.0, next_alive - time.monotonic()))
                if self._stop and not self._pending:
                    break
                batch = list(islice(self._pending, 500))
            now = time.monotonic()
            alive = now >= next_alive
            if not batch and not alive:
                continue
            try:
                if conn is None:
                    conn = self._connect(self.path)
                with transaction(conn):
                    for sql, params in batch:
                        conn.execute(sql, params)
                    if alive:
                        conn.execute("INSERT INTO alive (id, at) VALUES (1, ?) "
                                     "ON CONFLICT (id) DO UPDATE SET at = excluded.at", (iso(self._wall()),))
            except sqlite3.Error as exc:
                # Keep the records and retry: the disk may come back (S9).
                self.write_errors += 1
                self.last_error = str(exc)
                log.error("usage log write failed (%s); %d records waiting, retrying in %.2f s",
                          exc, self.pending, backoff)
                try:
                    if conn is not None:
                        conn.close()
                except sqlite3.Error:
                    pass
                conn = None
                with self._cond:
                    if self._stop:
                        log.error("usage log stopping with %d records unwritten", self.pending)
                        break
                    self._cond.wait_for(lambda: self._stop, backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
                continue
            backoff = 0.05
            if alive:
                next_alive = now + ALIVE_EVERY_S
            with self._cond:
                for _ in batch:
                    self._pending.popleft()
                self._committed += len(batch)
                self._cond.notify_all()
        if conn is not None:
            conn.close()

    # ---- records written through the queue ---------------------------------------------
    def new_session_id(self) -> int:
        # Ids are handed out in memory so a start never waits for the disk.
        with self._id_lock:
            sid = self._next_id
            self._next_id += 1
            return sid

    def session_started(self, session_id: int, lamp_id: str, user: str, started_at: datetime, planned_s: float,
                        continues: int | None = None) -> None:
        self._put("INSERT INTO sessions (id, lamp_id, user, started_at, planned_s, continues) VALUES (?, ?, ?, ?, ?, ?)",
                  (session_id, lamp_id, user, iso(started_at), planned_s, continues))

    def session_extended(self, session_id: int, planned_s: float) -> None:
        self._put("UPDATE sessions SET planned_s = ? WHERE id = ?", (planned_s, session_id))

    def session_ended(self, session_id: int, ended_at: datetime, actual_s: float, reason: str) -> None:
        if reason not in END_REASONS:
            raise ValueError(f"unknown end reason {reason!r}")
        self._put("UPDATE sessions SET ended_at = ?, actual_s = ?, end_reason = ? WHERE id = ?",
                  (iso(ended_at), round(actual_s, 3), reason, session_id))

    def event(self, lamp_id: str | None, from_state: str | None, to_state: str | None, who: str, why: str,
              at: datetime | None = None) -> None:
        self._put("INSERT INTO events (at, lamp_id, from_state, to_state, who, why) VALUES (?, ?, ?, ?, ?, ?)",
                  (iso(at or self._wall()), lamp_id, from_state, to_state, who, why))

    def fault_latched(self, lamp_id: str, reason: str, at: datetime) -> None:
        """S17: a latched fault, kept until fault_cleared so it survives a restart."""
        self._put("INSERT INTO latches (lamp_id, reason, at) VALUES (?, ?, ?) "
                  "ON CONFLICT (lamp_id) DO UPDATE SET reason = excluded.reason, at = excluded.at",
                  (lamp_id, reason, iso(at)))

    def fault_cleared(self, lamp_id: str) -> None:
        self._put("DELETE FROM latches WHERE lamp_id = ?", (lamp_id,))

    def latched_faults(self) -> dict[str, str]:
        """S17: {lamp_id: reason} of the faults latched when the service last ran."""
        return {r["lamp_id"]: r["reason"] for r in self._conn().execute("SELECT lamp_id, reason FROM latches")}

    # ---- direct reads and writes (not on the safety path) -------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    def recover_interrupted(self) -> list[int]:
        """S4: close sessions left open by a crash as `interrupted`.

        ended_at is the last moment the service was known alive (never before the start,
        never after the planned end), so the log does not claim time the lamp may not have run.
        """
        conn = self._conn()
        alive_row = conn.execute("SELECT at FROM alive WHERE id = 1").fetchone()
        rows = conn.execute("SELECT id, started_at, planned_s FROM sessions WHERE ended_at IS NULL").fetchall()
        closed = []
        for row in rows:
            started = datetime.fromisoformat(row["started_at"])
            ended = started + timedelta(seconds=row["planned_s"])
            if alive_row is not None:
                ended = min(ended, datetime.fromisoformat(alive_row["at"]))
            ended = max(ended, started)
            actual = (ended - started).total_seconds()
            with transaction(conn):
                conn.execute("UPDATE sessions SET ended_at = ?, actual_s = ?, end_reason = 'interrupted' WHERE id = ?",
                             (iso(ended), round(actual, 3), row["id"]))
                conn.execute("INSERT INTO events (at, lamp_id, from_state, to_state, who, why) "
                             "SELECT ?, lamp_id, 'on', 'off', 'system', ? FROM sessions WHERE id = ?",
                             (iso(self._wall()),
                              f"interrupted: service was not running (last known alive {iso(ended)})", row["id"]))
            closed.append(row["id"])
        return closed

    def sessions(self, *, start: str | None = None, end: str | None = None, lamp: str | None = None,
                 user: str | None = None, reason: str | None = None, limit: int | None = None,
                 offset: int = 0) -> list[dict]:
        return list(self.iter_sessions(start=start, end=end, lamp=lamp, user=user, reason=reason,
                                       limit=limit, offset=offset))

    def _session_filter(self, start, end, lamp, user, reason) -> tuple[str, list]:
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

    def iter_sessions(self, *, start=None, end=None, lamp=None, user=None, reason=None, limit=None,
                      offset=0) -> Iterator[dict]:
        """Sessions oldest first, one row at a time (the CSV export streams from this)."""
        clause, params = self._session_filter(start, end, lamp, user, reason)
        sql = f"SELECT * FROM sessions{clause} ORDER BY started_at, id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        conn = connect(self.path)
        try:
            for row in conn.execute(sql, params):
                yield dict(row)
        finally:
            conn.close()

    def count_sessions(self, **filters) -> int:
        clause, params = self._session_filter(filters.get("start"), filters.get("end"), filters.get("lamp"),
                                              filters.get("user"), filters.get("reason"))
        return self._conn().execute(f"SELECT count(*) FROM sessions{clause}", params).fetchone()[0]

    def events(self, *, limit: int = 200, offset: int = 0, lamp: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM events", []
        if lamp:
            sql += " WHERE lamp_id = ?"
            params.append(lamp)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        return [dict(r) for r in self._conn().execute(sql, [*params, limit, offset])]

    # users and tokens
    def add_user(self, name: str, role: str, pin: str, by: str = "admin") -> None:
        check_user_name(name)
        if role not in ROLES:
            raise StoreError(f"Role {role!r} is not one of: {', '.join(ROLES)}.")
        check_pin(pin)
        try:
            self._conn().execute("INSERT INTO users (name, role, pin_hash, created_at) VALUES (?, ?, ?, ?)",
                                 (name, role, generate_password_hash(pin, PIN_HASH_METHOD), iso(self._wall())))
        except sqlite3.IntegrityError:
            raise StoreError(f"A user named {name!r} already exists.") from None
        self.event(None, None, None, by, f"user {name} added as {role}")

    def set_pin(self, name: str, pin: str) -> None:
        check_pin(pin)
        cur = self._conn().execute("UPDATE users SET pin_hash = ? WHERE name = ?",
                                   (generate_password_hash(pin, PIN_HASH_METHOD), name))
        if cur.rowcount == 0:
            raise StoreError(f"There is no user named {name!r}.")

    def set_role(self, name: str, role: str) -> None:
        if role not in ROLES:
            raise StoreError(f"Role {role!r} is not one of: {', '.join(ROLES)}.")
        cur = self._conn().execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
        if cur.rowcount == 0:
            raise StoreError(f"There is no user named {name!r}.")

    def remove_user(self, name: str) -> None:
        cur = self._conn().execute("DELETE FROM users WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise StoreError(f"There is no user named {name!r}.")

    def users(self) -> list[dict]:
        return [dict(r) for r in self._conn().execute("SELECT name, role, created_at FROM users ORDER BY name")]

    def user(self, name: str) -> dict | None:
        row = self._conn().execute("SELECT name, role, created_at FROM users WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def check_pin(self, name: str, pin: str) -> dict | None:
        """The user if name and PIN match, else None."""
        row = self._conn().execute("SELECT name, role, pin_hash FROM users WHERE name = ?", (name,)).fetchone()
        # Hash even for an unknown name, so reply time does not tell which names exist.
        ok = check_password_hash(row["pin_hash"] if row else _dummy_pin_hash(), pin or "")
        if row is None or not ok:
            return None
        return {"name": row["name"], "role": row["role"]}

    def create_token(self, name: str) -> str:
        if self.user(name) is None:
            raise StoreError(f"There is no user named {name!r}; add one with 'lampctl user add'.")
        return self._insert_token(self._conn(), name)

    def _insert_token(self, conn: sqlite3.Connection, name: str) -> str:
        token = secrets.token_urlsafe(32)
        conn.execute("INSERT INTO api_tokens (token_hash, user, created_at) VALUES (?, ?, ?)",
                     (hash_token(token), name, iso(self._wall())))
        return token

    def replace_system_token(self, name: str) -> str:
        """The only token of a built-in admin account, created if need be; its old tokens are revoked.

        '!' is no valid hash, so this account can never log in with a PIN.
        """
        conn = self._conn()
        with transaction(conn):
            conn.execute("INSERT INTO users (name, role, pin_hash, created_at) VALUES (?, 'admin', '!', ?) "
                         "ON CONFLICT (name) DO NOTHING", (name, iso(self._wall())))
            conn.execute("DELETE FROM api_tokens WHERE user = ?", (name,))
            return self._insert_token(conn, name)

    def user_for_token(self, token: str) -> dict | None:
        row = self._conn().execute(
            "SELECT users.name, users.role FROM api_tokens JOIN users ON users.name = api_tokens.user "
            "WHERE token_hash = ?", (hash_token(token),)).fetchone()
        return dict(row) if row else None

    # bulb replacements (admin pages)
    def record_bulb_replacement(self, lamp_id: str, who: str, hours: float) -> str:
        """Note that a lamp's bulb was replaced after `hours` of use; returns the time recorded."""
        at = iso(self._wall())
        self._conn().execute("INSERT INTO bulb_replacements (lamp_id, at, who, hours) VALUES (?, ?, ?, ?)",
                             (lamp_id, at, who, round(hours, 3)))
        self.event(lamp_id, None, None, who, f"bulb replaced after {hours:.1f} h")
        return at

    def bulb_replacements(self, lamp_id: str | None = None) -> list[dict]:
        """Replacements newest first, optionally for one lamp."""
        sql, params = "SELECT * FROM bulb_replacements", []
        if lamp_id:
            sql += " WHERE lamp_id = ?"
            params.append(lamp_id)
        sql += " ORDER BY at DESC, id DESC"
        return [dict(r) for r in self._conn().execute(sql, params)]


@functools.cache
def _dummy_pin_hash() -> str:
    return generate_password_hash(secrets.token_hex(8), PIN_HASH_METHOD)


def check_user_name(name: str) -> None:
    if not USER_RE.match(name or ""):
        raise StoreError(f"User name {name!r} must be 1-32 letters, digits, '.', '_' or '-'.")


def check_pin(pin: str) -> None:
    if not PIN_RE.match(pin or ""):
        raise StoreError("A PIN must be 4 to 8 digits.")

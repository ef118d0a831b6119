"""The SQLite file: connections, transactions, schema migrations, and the timestamp format."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from pathlib import Path
from urllib.parse import quote

from lampctl.platform.runtime import private_dir, private_file, private_if_present

# What migration 8 widens the sessions' CHECK from and to.
_END_REASONS_7 = "CHECK (end_reason IN ('completed','stopped','estop','fault','interrupted','firmware'))"
_END_REASONS_8 = (
    "CHECK (end_reason IN ('completed','stopped','estop','fault','interrupted','firmware',"
    "'patient','over-temperature','over-current'))"
)


def _widen_end_reasons(conn: sqlite3.Connection) -> None:
    """Migration 8, inside its transaction: the sessions table's CHECK takes the new end reasons.

    SQLite's own procedure for a change that leaves every stored row valid (its "other kinds
    of table schema changes"): the table's SQL is rewritten in sqlite_schema and the schema
    version bumped, so every connection reads the new SQL; no row is copied.
    """
    (sql,) = conn.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'sessions'").fetchone()
    if _END_REASONS_7 not in sql:
        raise StoreError("The sessions table's end reasons are not the ones migration 8 knows; restore a backup.")
    (version,) = conn.execute("PRAGMA schema_version").fetchone()
    conn.execute("PRAGMA writable_schema = ON")
    try:
        conn.execute(
            "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = 'sessions'",
            (sql.replace(_END_REASONS_7, _END_REASONS_8),),
        )
        conn.execute(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        conn.execute("PRAGMA writable_schema = OFF")
    conn.execute("SELECT count(*) FROM sessions WHERE 0")  # the new SQL parses


def _bulb_recount(row: str) -> str:
    """Migration 9: set the bulb total of `row`'s lamp (a trigger's new or old bulb record) afresh from
    its sessions since its newest bulb record, what the bulb records' triggers do after any change."""
    return f"""
        INSERT OR REPLACE INTO bulb_totals (lamp_id, since, seconds)
            SELECT k.lamp_id, k.since,
                   (SELECT coalesce(sum(s.actual_s), 0) FROM sessions s
                     WHERE s.lamp_id = k.lamp_id AND s.started_at >= k.since AND s.actual_s IS NOT NULL)
              FROM (SELECT {row}.lamp_id AS lamp_id,
                           coalesce((SELECT at FROM bulb_replacements b WHERE b.lamp_id = {row}.lamp_id
                                      ORDER BY at DESC, id DESC LIMIT 1), '') AS since) k;
    """


# Each a script of statements, or a function that migrates the connection itself.
MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
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
    # 3: end reason 'firmware' and the session a start continues (S13, S18): SQLite cannot
    # change a CHECK in place, so the table is rebuilt. Latched faults outlive a restart (S17).
    # Browser logins live server-side so a logout ends a copied cookie. accounts_version is
    # bumped by triggers on every account change, so a running service notices the CLI's.
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
    CREATE TABLE logins (
        login_hash TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE accounts_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO accounts_version (id, version) VALUES (1, 1);
    CREATE TRIGGER users_ins AFTER INSERT ON users BEGIN UPDATE accounts_version SET version = version + 1; END;
    CREATE TRIGGER users_upd AFTER UPDATE ON users BEGIN UPDATE accounts_version SET version = version + 1; END;
    CREATE TRIGGER users_del AFTER DELETE ON users BEGIN UPDATE accounts_version SET version = version + 1; END;
    CREATE TRIGGER tokens_ins AFTER INSERT ON api_tokens BEGIN UPDATE accounts_version SET version = version + 1; END;
    CREATE TRIGGER tokens_del AFTER DELETE ON api_tokens BEGIN UPDATE accounts_version SET version = version + 1; END;
    CREATE TRIGGER logins_ins AFTER INSERT ON logins BEGIN UPDATE accounts_version SET version = version + 1; END;
    CREATE TRIGGER logins_del AFTER DELETE ON logins BEGIN UPDATE accounts_version SET version = version + 1; END;
    """,
    # 4: indexes for a decade of sessions. The log page filters by user, lamp or end reason
    # newest first; the practitioner list is a skip-scan of sessions_by_user; bulb hours sum
    # actual_s from sessions_by_lamp alone (covering); start-up finds open sessions (S4)
    # through a partial index instead of reading every row.
    """
    CREATE INDEX sessions_by_user ON sessions (user, started_at);
    CREATE INDEX sessions_by_lamp ON sessions (lamp_id, started_at, actual_s);
    CREATE INDEX sessions_by_reason ON sessions (end_reason, started_at);
    CREATE INDEX sessions_open ON sessions (started_at) WHERE ended_at IS NULL;
    """,
    # 5: the fleet's durable outbox. Triggers queue every ended session
    # and every audit row in the same transaction that writes it, so a record cannot be
    # committed without its outbox row (nothing lost across a broker outage or a restart).
    # They fire only while the service runs with [mqtt] (outbox_switch), so a Pi without a
    # broker keeps no backlog.
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('session','event')),
        ref INTEGER NOT NULL
    );
    CREATE TABLE outbox_switch (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        enabled INTEGER NOT NULL
    );
    INSERT INTO outbox_switch (id, enabled) VALUES (1, 0);
    CREATE TRIGGER outbox_session AFTER UPDATE OF ended_at ON sessions
        WHEN old.ended_at IS NULL AND new.ended_at IS NOT NULL
         AND (SELECT enabled FROM outbox_switch WHERE id = 1)
        BEGIN INSERT INTO outbox (kind, ref) VALUES ('session', new.id); END;
    CREATE TRIGGER outbox_event AFTER INSERT ON events
        WHEN (SELECT enabled FROM outbox_switch WHERE id = 1)
        BEGIN INSERT INTO outbox (kind, ref) VALUES ('event', new.id); END;
    """,
    # 6: what must outlive a restart is derived from the record (S20, S22). A session records
    # whether it was declared a new patient inside the rest window, and by whom (S18). Its
    # clock anchor (boot id, monotonic start, whether the wall clock was synchronised) tells
    # at the next start how long ago it ended; its progress mark (monotonic seconds run,
    # refreshed while it runs) bounds an `interrupted` record whatever the wall clock did (S4,
    # S13). They live beside the sessions, not in them, so the log's columns stay the record's.
    # Login lockouts are kept with the same kind of anchor, so a restart keeps them.
    """
    ALTER TABLE sessions ADD COLUMN new_patient INTEGER NOT NULL DEFAULT 0 CHECK (new_patient IN (0, 1));
    ALTER TABLE sessions ADD COLUMN new_patient_by TEXT;
    CREATE TABLE session_clocks (
        session_id INTEGER PRIMARY KEY,
        boot_id TEXT,
        started_mono REAL NOT NULL,
        wall_synced INTEGER,
        progress_s REAL
    );
    CREATE TRIGGER session_clocks_del AFTER DELETE ON sessions
        BEGIN DELETE FROM session_clocks WHERE session_id = old.id; END;
    CREATE TABLE login_lockouts (
        name_key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        locked INTEGER NOT NULL CHECK (locked IN (0, 1)),
        left_s REAL NOT NULL,
        at TEXT NOT NULL,
        boot_id TEXT,
        mono REAL NOT NULL,
        wall_synced INTEGER
    );
    """,
    # 7: records that arrive once and at once. Outbox ids are never reused (AUTOINCREMENT):
    # without it an emptied outbox numbered its next rows from 1 again, below what the
    # publisher had sent. `origin` is this database's identity, minted here and re-minted by
    # `lampctl restore`, so a session id that repeats after a restore is a new record at the
    # collector, not a replay; each outbox row keeps the origin it was queued under, so a
    # record sent again after a restore is still the same record. Rows queued before this
    # migration keep the empty origin older lampctl sent (none).
    """
    CREATE TABLE origin (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        origin TEXT NOT NULL
    );
    INSERT INTO origin (id, origin) VALUES (1, lower(hex(randomblob(8))));
    DROP TRIGGER outbox_session;
    DROP TRIGGER outbox_event;
    CREATE TABLE outbox_v7 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('session','event')),
        ref INTEGER NOT NULL,
        origin TEXT NOT NULL
    );
    INSERT INTO outbox_v7 (id, kind, ref, origin) SELECT id, kind, ref, '' FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v7 RENAME TO outbox;
    CREATE TRIGGER outbox_session AFTER UPDATE OF ended_at ON sessions
        WHEN old.ended_at IS NULL AND new.ended_at IS NOT NULL
         AND (SELECT enabled FROM outbox_switch WHERE id = 1)
        BEGIN INSERT INTO outbox (kind, ref, origin) VALUES ('session', new.id, (SELECT origin FROM origin WHERE id = 1));
        END;
    CREATE TRIGGER outbox_event AFTER INSERT ON events
        WHEN (SELECT enabled FROM outbox_switch WHERE id = 1)
        BEGIN INSERT INTO outbox (kind, ref, origin) VALUES ('event', new.id, (SELECT origin FROM origin WHERE id = 1));
        END;
    """,
    # 8: the ends the couch's own guards give (S23, S24): a press of the patient's stop button,
    # the firmware's thermal and current guards. Only the CHECK is widened, in place
    # (_widen_end_reasons): every row it held holds under the wider one, and rebuilding a
    # decade's table took 16 s at 1M sessions.
    _widen_end_reasons,
    # 9: each lamp's current bulb hours kept as the sessions end, so the bulbs page reads one row
    # per lamp whatever the spread of sessions (the sum since the last replacement read up to
    # every session of a decade). `seconds` is, by its triggers, always what the sum over the
    # sessions gives: every insert, end, change or delete of a session and every bulb record
    # moves it; `since` is the current bulb's replacement time ('' for the first bulb).
    """
    CREATE TABLE bulb_totals (
        lamp_id TEXT PRIMARY KEY,
        since TEXT NOT NULL,
        seconds REAL NOT NULL
    );
    INSERT INTO bulb_totals (lamp_id, since, seconds)
        SELECT k.lamp_id, k.since,
               (SELECT coalesce(sum(s.actual_s), 0) FROM sessions s
                 WHERE s.lamp_id = k.lamp_id AND s.started_at >= k.since AND s.actual_s IS NOT NULL)
          FROM (SELECT lamp_id,
                       coalesce((SELECT at FROM bulb_replacements b WHERE b.lamp_id = ids.lamp_id
                                  ORDER BY at DESC, id DESC LIMIT 1), '') AS since
                  FROM (SELECT DISTINCT lamp_id FROM sessions UNION SELECT DISTINCT lamp_id FROM bulb_replacements) ids) k;
    CREATE TRIGGER bulb_totals_session_ins AFTER INSERT ON sessions WHEN new.actual_s IS NOT NULL
    BEGIN
        INSERT OR IGNORE INTO bulb_totals (lamp_id, since, seconds) VALUES (new.lamp_id, '', 0);
        UPDATE bulb_totals SET seconds = seconds + new.actual_s
         WHERE lamp_id = new.lamp_id AND new.started_at >= since;
    END;
    CREATE TRIGGER bulb_totals_session_upd AFTER UPDATE OF lamp_id, started_at, actual_s ON sessions
    BEGIN
        UPDATE bulb_totals SET seconds = seconds - old.actual_s
         WHERE lamp_id = old.lamp_id AND old.actual_s IS NOT NULL AND old.started_at >= since;
        INSERT OR IGNORE INTO bulb_totals (lamp_id, since, seconds) VALUES (new.lamp_id, '', 0);
        UPDATE bulb_totals SET seconds = seconds + new.actual_s
         WHERE lamp_id = new.lamp_id AND new.actual_s IS NOT NULL AND new.started_at >= since;
    END;
    CREATE TRIGGER bulb_totals_session_del AFTER DELETE ON sessions WHEN old.actual_s IS NOT NULL
    BEGIN
        UPDATE bulb_totals SET seconds = seconds - old.actual_s
         WHERE lamp_id = old.lamp_id AND old.started_at >= since;
    END;
    """
    + f"""
    CREATE TRIGGER bulb_totals_replaced AFTER INSERT ON bulb_replacements
    BEGIN {_bulb_recount("new")} END;
    CREATE TRIGGER bulb_totals_unreplaced AFTER DELETE ON bulb_replacements
    BEGIN {_bulb_recount("old")} END;
    """,
]


def new_origin(conn: sqlite3.Connection) -> str:
    """Give the database a new origin (a restore does: its copy is a database of its own from now on)."""
    origin = conn.execute("SELECT lower(hex(randomblob(8)))").fetchone()[0]
    conn.execute("UPDATE origin SET origin = ? WHERE id = 1", (origin,))
    return origin


MIN_UTC = datetime.min.replace(tzinfo=UTC)
MAX_UTC = datetime.max.replace(tzinfo=UTC)


class StoreError(Exception):
    """A user-caused problem with a store request; str() is one sentence."""


class LogUnavailable(Exception):
    """The database cannot be read right now (file missing, disk failing); str() is one sentence."""


# How a session can end: the sessions table's CHECK (migration 8) holds the same list.
END_REASONS = (
    "completed",
    "stopped",
    "estop",
    "fault",
    "interrupted",
    "firmware",
    "patient",
    "over-temperature",
    "over-current",
)


def iso(dt: datetime) -> str:
    """The one timestamp format in the database: UTC, milliseconds, so strings sort by time."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_utc(dt: datetime) -> datetime:
    try:
        return (dt if dt.tzinfo else dt.astimezone()).astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        # Only the first and last days of the calendar land here: they mean "no bound".
        return MIN_UTC if dt.year < 5000 else MAX_UTC


def parse_bound(text: str, *, upper: bool = False) -> str:
    """An ISO-8601 date or time from a user as a database timestamp; raises only StoreError.

    A bare date (2026-11-25 or 20261125) as an upper bound means the end of that day; times
    without a zone are the Pi's local time; bounds past the calendar's ends are clamped to them.
    """
    if not isinstance(text, str):
        raise StoreError(f"{text!r} is not an ISO-8601 date or time such as 2026-03-01 or 2026-03-01T14:30.")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    try:
        if day is not None:
            dt = datetime.combine(day, time(23, 59, 59, 999000) if upper else time())
        else:
            dt = datetime.fromisoformat(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise StoreError(f"{shown!r} is not an ISO-8601 date or time such as 2026-03-01 or 2026-03-01T14:30.") from None
    return iso(_to_utc(dt))


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(Path(path).absolute()))}?mode={mode}"


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode with WAL and synchronous=FULL.

    Only the code that creates the database passes create=True: every other connection is
    opened with mode=rw, so a file deleted while serving is an error, never a new empty log.
    """
    if create:
        private_file(path)  # before SQLite: it creates files 0644 less the umask
    conn = sqlite3.connect(
        _uri(path, "rwc" if create else "rw"), uri=True, timeout=10, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
    except BaseException:
        conn.close()
        raise
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


@contextmanager
def reading(path: Path, connect_fn=None):
    """A short-lived read connection; any SQLite error becomes LogUnavailable with one sentence."""
    try:
        conn = (connect_fn or connect)(path)
    except sqlite3.Error as exc:
        raise LogUnavailable(f"The usage log {path} cannot be opened ({exc}); tell an admin.") from None
    try:
        yield conn
    except sqlite3.Error as exc:
        raise LogUnavailable(f"The usage log {path} cannot be read ({exc}); tell an admin.") from None
    finally:
        conn.close()


def _statements(script: str):
    """The statements of a migration, trigger bodies kept whole."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {buf.strip()[:60]}")


def apply(conn: sqlite3.Connection, number: int) -> None:
    """Run migration `number` (0-based) on conn, inside the caller's transaction."""
    step = MIGRATIONS[number]
    if callable(step):
        step(conn)
        return
    for statement in _statements(step):
        conn.execute(statement)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; return that version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"The database is schema version {version}, newer than this lampctl knows ({len(MIGRATIONS)})."
        )
    for number in range(version, len(MIGRATIONS)):
        with transaction(conn):
            # Read again under the write lock: another process (the CLI, the service) may have just done it.
            if conn.execute("PRAGMA user_version").fetchone()[0] > number:
                continue
            apply(conn, number)
            conn.execute(f"PRAGMA user_version = {number + 1}")
    return len(MIGRATIONS)


def open_database(path: Path) -> None:
    """Create the database file if need be and bring its schema up to date.

    It holds the PIN hashes: the folder is made 0700 and the database, its -wal and -shm 0600,
    whatever the umask (an offline attack on a 4-digit PIN takes a minute).
    """
    path = Path(path)
    private_dir(path.parent)
    conn = connect(path, create=True)
    try:
        migrate(conn)
    finally:
        conn.close()
    private_if_present(path, Path(f"{path}-wal"), Path(f"{path}-shm"))

"""`lampctl backup`, `restore` and `prune-events`: consistent copies of the usage log, safe while serving."""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lampctl.platform.runtime import private_dir, private_file, private_if_present
from lampctl.tools import ToolFailed

BACKUP_RE = re.compile(r"^lampctl-\d{8}T\d{6}\.\d{6}Z\.db$")
DEFAULT_KEEP = 14
PRUNE_BATCH = 5000  # rows per transaction, so the service's writer never waits long
PRUNE_MOST_DAYS = 36500  # a hundred years: older than that, no record of a Pi can be


@dataclass
class BackupResult:
    path: Path
    sessions: int | None
    events: int | None
    removed: list[Path] = field(default_factory=list)
    kept_latches: int = 0  # a restore: latches from before it that it kept (S20)


def _open(path: Path, mode: str) -> sqlite3.Connection:
    """A connection that never creates the file (mode "ro" or "rw")."""
    if not path.is_file():
        raise ToolFailed(f"there is no database at {path} (has the service run yet? check service.database)")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode={mode}", uri=True, timeout=10, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")
    except sqlite3.Error as exc:
        raise ToolFailed(f"cannot open the database {path}: {exc}") from None
    return conn


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """PRAGMA integrity_check's complaints, one per line; an empty list means the file is sound."""
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    if rows == ["ok"]:
        return []
    lines = [line for row in rows for line in row.splitlines()]
    return [line for line in lines if not line.startswith("*** in database")] or lines


def _summary(problems: list[str]) -> str:
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"{problems[0]}{more}"


def _count(conn: sqlite3.Connection, table: str) -> int | None:
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup_name(dest: Path, now: datetime) -> Path:
    stamp = now.astimezone(UTC)
    while True:
        path = dest / f"lampctl-{stamp.strftime('%Y%m%dT%H%M%S.%f')}Z.db"
        if not path.exists():
            return path
        stamp += timedelta(microseconds=1)


def copy_database(source: sqlite3.Connection, target: Path) -> tuple[int | None, int | None]:
    """Online-backup `source` into the new single file `target`, check it, return (sessions, events).

    One backup step copies every page inside one read transaction: in WAL mode that is a
    consistent snapshot, and the service's writer is never blocked by it.
    """
    private_file(target)  # a backup holds the PIN hashes too: 0600 whatever the umask
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        source.backup(dst)
        # A backup is one self-contained file: no -wal beside it.
        dst.execute("PRAGMA journal_mode=DELETE")
        problems = integrity_problems(dst)
        if problems:
            raise ToolFailed(
                f"the copy failed PRAGMA integrity_check ({_summary(problems)}); "
                f"the database itself may be damaged: keep the older backups"
            )
        counts = _count(dst, "sessions"), _count(dst, "events")
    except sqlite3.Error as exc:
        raise ToolFailed(f"the backup into {target.parent} failed: {exc}") from None
    finally:
        dst.close()
    with open(target, "rb+") as fh:
        os.fsync(fh.fileno())
    return counts


def backup_database(database: Path, dest: Path, keep: int, now: datetime | None = None) -> BackupResult:
    """A checked, timestamped copy of `database` in `dest`; then only the newest `keep` copies stay."""
    try:
        private_dir(dest)  # made 0700; a folder that exists is left as it is (its files are 0600)
    except OSError as exc:
        raise ToolFailed(f"cannot use {dest} as the backup directory: {exc.strerror or exc}") from None
    if not dest.is_dir():
        raise ToolFailed(f"{dest} is not a directory")
    final = _backup_name(dest, now or datetime.now(UTC))
    partial = dest / f".{final.name}.partial"
    source = _open(database, "ro")
    try:
        sessions, events = copy_database(source, partial)
        os.replace(partial, final)
        _fsync_dir(dest)
    except OSError as exc:
        raise ToolFailed(f"cannot write the backup in {dest}: {exc.strerror or exc}") from None
    finally:
        source.close()
        partial.unlink(missing_ok=True)
    backups = sorted(p for p in dest.iterdir() if BACKUP_RE.match(p.name))
    removed = backups[:-keep]
    for old in removed:
        old.unlink(missing_ok=True)
    return BackupResult(final, sessions, events, removed)


def restore_database(database: Path, backup: Path, now: datetime | None = None) -> tuple[BackupResult, Path | None]:
    """Replace the contents of `database` with `backup` (checked first); the old contents are saved beside it.

    Returns (what the database holds now, the path of the saved previous database or None).
    """
    src = _open(backup, "ro")
    try:
        try:
            problems = integrity_problems(src)
            has_sessions = _count(src, "sessions") is not None
        except sqlite3.Error as exc:
            raise ToolFailed(f"{backup} is not a lampctl backup ({exc}); nothing was changed") from None
        if problems or not has_sessions:
            raise ToolFailed(
                f"{backup} is not a sound lampctl backup "
                f"({_summary(problems) if problems else 'no sessions table'}); nothing was changed"
            )
        saved = None
        kept = KeptState()
        if database.exists():
            saved = backup_database(database, database.parent / "before-restore", keep=1000, now=now).path
            kept = s20_kept_state(saved)
        private_dir(database.parent)
        private_file(database)
        try:
            dst = sqlite3.connect(database, timeout=10, isolation_level=None)
        except sqlite3.Error as exc:
            raise ToolFailed(f"cannot open {database}: {exc}") from None
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")
            s20_keep(dst, kept)
            new_identity(dst)
            problems = integrity_problems(dst)
            counts = _count(dst, "sessions"), _count(dst, "events")
        except sqlite3.Error as exc:
            raise ToolFailed(f"the restore into {database} failed: {exc}") from None
        finally:
            dst.close()
    finally:
        src.close()
    if problems:
        raise ToolFailed(
            f"the restored {database} failed PRAGMA integrity_check ({_summary(problems)}); "
            f"the previous database is in {saved}"
        )
    keep_service_ownership(database)
    private_if_present(database, Path(f"{database}-wal"), Path(f"{database}-shm"))
    result = BackupResult(database, *counts)
    result.kept_latches = len(kept.latches)
    return result, saved


@dataclass
class KeptState:
    """What a restore must not roll back (S20): the latches and the login lockouts from before it."""

    latches: list[tuple] = field(default_factory=list)
    lockouts: list[tuple] = field(default_factory=list)


LOCKOUT_COLUMNS = "name_key, failures, locked, left_s, at, boot_id, mono, wall_synced"


def s20_kept_state(previous: Path) -> KeptState:
    """The latches and lockouts of the database being replaced (read from its checked copy)."""
    conn = _open(previous, "ro")
    try:
        kept = KeptState()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "latches" in tables:
            kept.latches = conn.execute("SELECT lamp_id, reason, at FROM latches").fetchall()
        if "login_lockouts" in tables:
            kept.lockouts = conn.execute(f"SELECT {LOCKOUT_COLUMNS} FROM login_lockouts").fetchall()
        return kept
    except sqlite3.Error as exc:
        raise ToolFailed(
            f"cannot read the latches of the database being replaced ({exc}); nothing was changed"
        ) from None
    finally:
        conn.close()


def s20_keep(conn: sqlite3.Connection, kept: KeptState) -> None:
    """S20: a restore never unlatches and never lifts a lockout: the union of before and after is kept
    (where both hold one, the one from before the restore, the newer, stands)."""
    from lampctl.storage.db import StoreError, migrate, transaction

    try:
        migrate(conn)  # a backup from an older lampctl gains the tables first
    except StoreError as exc:
        raise ToolFailed(f"{exc} Upgrade lampctl before restoring this backup.") from None
    with transaction(conn):
        conn.executemany(
            "INSERT INTO latches (lamp_id, reason, at) VALUES (?, ?, ?) ON CONFLICT (lamp_id) "
            "DO UPDATE SET reason = excluded.reason, at = excluded.at",
            kept.latches,
        )
        conn.executemany(
            f"INSERT OR REPLACE INTO login_lockouts ({LOCKOUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", kept.lockouts
        )


def new_identity(conn: sqlite3.Connection) -> None:
    """A restored database is a database of its own: it gets a new origin, so the sessions it
    numbers from here on (the ids after the backup's, which the replaced database may have
    used and sent already) are new records at the fleet's collector, not replays. Its
    waiting outbox rows keep the origin they were queued under: sent again, they are the
    same records. (s20_keep has migrated the copy, so the origin table exists.)"""
    from lampctl.storage.db import new_origin, transaction

    with transaction(conn):
        new_origin(conn)


def keep_service_ownership(database: Path) -> None:
    """Give a database that root created (sudo lampctl restore) to the owner of its directory.

    SQLite already gives the -wal and -shm files of an existing database to the database's
    owner when it runs as root; a database file it creates is root's, and the service
    (user lampctl) could not write it.
    """
    if os.geteuid() != 0:
        return
    owner = database.parent.stat()
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if path.exists():
            os.chown(path, owner.st_uid, owner.st_gid)


def prune_events(
    database: Path, older_than_days: float, *, sessions: bool = False, now: datetime | None = None, who: str = "cli"
) -> tuple[int, int]:
    """Delete audit events (and, when asked, ended sessions) older than the cutoff; returns (events, sessions)."""
    # Imported here: cli.py imports this module before `serve` claims the relays (S1).
    from lampctl.storage.store import iso

    now = now or datetime.now(UTC)
    cutoff = iso(now - timedelta(days=older_than_days))
    conn = _open(database, "rw")
    try:
        events = _delete_in_batches(conn, "events", "at < ?", cutoff)
        ended = (
            _delete_in_batches(conn, "sessions", "ended_at IS NOT NULL AND started_at < ?", cutoff) if sessions else 0
        )
        what = f"{events} event(s)" + (f" and {ended} session(s)" if sessions else "")
        # The pruning itself is on the record.
        conn.execute(
            "INSERT INTO events (at, lamp_id, from_state, to_state, who, why) VALUES (?, NULL, NULL, NULL, ?, ?)",
            (iso(now), who, f"retention: {what} older than {cutoff} deleted"),
        )
    except sqlite3.Error as exc:
        raise ToolFailed(f"cannot prune {database}: {exc}") from None
    finally:
        conn.close()
    return events, ended


def _delete_in_batches(conn: sqlite3.Connection, table: str, where: str, cutoff: str) -> int:
    total = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} LIMIT ?)", (cutoff, PRUNE_BATCH)
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        total += cur.rowcount
        if cur.rowcount < PRUNE_BATCH:
            return total


# ---- commands ------------------------------------------------------------------------------

"""`lampctl backup`, `restore` and `prune-events`: consistent copies of the usage log, safe while serving."""
from __future__ import annotations

import argparse
import os
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lampctl.runtime import private_dir, private_file, private_if_present
from lampctl.toolcli import (
    EXIT_OK,
    ToolFailed,
    add_config,
    count_in,
    guarded,
    load_config,
    positive_number,
    service_stopped,
)

BACKUP_RE = re.compile(r"^lampctl-\d{8}T\d{6}\.\d{6}Z\.db$")
DEFAULT_KEEP = 14
PRUNE_BATCH = 5000      # rows per transaction, so the service's writer never waits long


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
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode={mode}", uri=True, timeout=10,
                               isolation_level=None)
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
            raise ToolFailed(f"the copy failed PRAGMA integrity_check ({_summary(problems)}); "
                             f"the database itself may be damaged: keep the older backups")
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
            raise ToolFailed(f"{backup} is not a sound lampctl backup "
                             f"({_summary(problems) if problems else 'no sessions table'}); nothing was changed")
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
            problems = integrity_problems(dst)
            counts = _count(dst, "sessions"), _count(dst, "events")
        except sqlite3.Error as exc:
            raise ToolFailed(f"the restore into {database} failed: {exc}") from None
        finally:
            dst.close()
    finally:
        src.close()
    if problems:
        raise ToolFailed(f"the restored {database} failed PRAGMA integrity_check ({_summary(problems)}); "
                         f"the previous database is in {saved}")
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
        raise ToolFailed(f"cannot read the latches of the database being replaced ({exc}); nothing was changed") \
            from None
    finally:
        conn.close()


def s20_keep(conn: sqlite3.Connection, kept: KeptState) -> None:
    """S20: a restore never unlatches and never lifts a lockout: the union of before and after is kept
    (where both hold one, the one from before the restore, the newer, stands)."""
    from lampctl.db import StoreError, migrate, transaction

    try:
        migrate(conn)  # a backup from an older lampctl gains the tables first
    except StoreError as exc:
        raise ToolFailed(f"{exc} Upgrade lampctl before restoring this backup.") from None
    with transaction(conn):
        conn.executemany("INSERT INTO latches (lamp_id, reason, at) VALUES (?, ?, ?) ON CONFLICT (lamp_id) "
                         "DO UPDATE SET reason = excluded.reason, at = excluded.at", kept.latches)
        conn.executemany(f"INSERT OR REPLACE INTO login_lockouts ({LOCKOUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         kept.lockouts)


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


def prune_events(database: Path, older_than_days: float, *, sessions: bool = False,
                 now: datetime | None = None, who: str = "cli") -> tuple[int, int]:
    """Delete audit events (and, when asked, ended sessions) older than the cutoff; returns (events, sessions)."""
    # Imported here: cli.py imports this module before `serve` claims the relays (S1).
    from lampctl.store import iso

    now = now or datetime.now(UTC)
    cutoff = iso(now - timedelta(days=older_than_days))
    conn = _open(database, "rw")
    try:
        events = _delete_in_batches(conn, "events", "at < ?", cutoff)
        ended = _delete_in_batches(conn, "sessions", "ended_at IS NOT NULL AND started_at < ?", cutoff) if sessions else 0
        what = f"{events} event(s)" + (f" and {ended} session(s)" if sessions else "")
        # The pruning itself is on the record.
        conn.execute("INSERT INTO events (at, lamp_id, from_state, to_state, who, why) VALUES (?, NULL, NULL, NULL, ?, ?)",
                     (iso(now), who, f"retention: {what} older than {cutoff} deleted"))
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
            cur = conn.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} LIMIT ?)",
                               (cutoff, PRUNE_BATCH))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        total += cur.rowcount
        if cur.rowcount < PRUNE_BATCH:
            return total


# ---- commands ------------------------------------------------------------------------------
def _counts(result: BackupResult) -> str:
    return f"{result.sessions} session(s), {result.events} event(s), integrity ok"


@guarded
def run_backup(args) -> int:
    cfg = load_config(args)
    result = backup_database(cfg.service.database, Path(args.dest), args.keep)
    print(f"backup: {result.path} ({_counts(result)})")
    for old in result.removed:
        print(f"removed old backup {old}")
    return EXIT_OK


@guarded
def run_restore(args) -> int:
    cfg = load_config(args)
    with service_stopped(cfg, "restoring"):
        result, saved = restore_database(cfg.service.database, Path(args.backup))
    print(f"restored {result.path} from {args.backup} ({_counts(result)})")
    if saved:
        print(f"the previous database was saved as {saved}")
    if result.kept_latches:
        print(f"kept {result.kept_latches} latched fault(s) from before the restore: "
              "an admin resets each lamp once its cause is checked")
    return EXIT_OK


@guarded
def run_prune(args) -> int:
    cfg = load_config(args)
    events, sessions = prune_events(cfg.service.database, args.older_than, sessions=args.sessions)
    print(f"deleted {events} event(s)" + (f" and {sessions} ended session(s)" if args.sessions else "")
          + f" older than {args.older_than:g} day(s)")
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("backup", help="copy the database into DEST (safe while serving), keep the newest N",
                       description="SQLite online backup into DEST/lampctl-<UTC time>.db, checked with "
                                   "PRAGMA integrity_check; older copies beyond --keep are removed.")
    p.add_argument("dest", metavar="DEST", help="directory for the backups (created if missing)")
    p.add_argument("--keep", type=count_in(1, 10000), default=DEFAULT_KEEP,
                   help=f"how many backups to keep (default {DEFAULT_KEEP})")
    add_config(p)
    p = sub.add_parser("restore", help="replace the database with a backup (the service must be stopped)",
                       description="Checks BACKUP, saves the current database under before-restore/ beside it, "
                                   "then copies BACKUP in, keeping the current latched faults and login lockouts "
                                   "(a restore never unlatches). Stop the service first; run as its user.")
    p.add_argument("backup", metavar="BACKUP", help="a file made by lampctl backup")
    add_config(p)
    p = sub.add_parser("prune-events", help="delete audit events older than DAYS (sessions too with --sessions)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--older-than", type=positive_number, required=True, metavar="DAYS",
                   help="age in days of the oldest event to keep")
    p.add_argument("--sessions", action="store_true",
                   help="also delete ended sessions older than DAYS (they are kept otherwise)")
    add_config(p)


COMMANDS = {"backup": run_backup, "restore": run_restore, "prune-events": run_prune}

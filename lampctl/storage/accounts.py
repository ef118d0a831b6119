"""Accounts: users, PINs, API tokens and browser logins, answered from memory and reloaded when the database changes.

Auth on a request (bearer token, login cookie) never touches the disk, so a hung disk
cannot delay a Stop (S10). Writes go to the database first, then memory is refreshed at once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import overload

from werkzeug.security import check_password_hash, generate_password_hash

from lampctl.core.carryover import ClockRef, read_boot_id, s20_elapsed_s
from lampctl.platform.runtime import CLI_USER
from lampctl.storage.db import StoreError, connect, iso, open_database, transaction
from lampctl.storage.user_names import matching, name_key, taken, user_name

log = logging.getLogger(__name__)

# The command line's own admin account: its only token is replaced at each service start,
# and it can never log in, be added, removed, demoted or given a PIN by anyone.
BUILTIN_USER = CLI_USER  # one name for the CLI's built-in account
ROLES = ("practitioner", "admin")
PIN_RE = re.compile(r"^[0-9]{4,8}$")
# PINs are short, so the hash buys little offline; the login lockout is the real guard.
# 100k rounds keep a login under a second on a Pi Zero 2 W.
PIN_HASH_METHOD = "pbkdf2:sha256:100000"
# A shift at the couch, counted on the monotonic clock (S22); the cookie lives as long
# (web's PERMANENT_SESSION_LIFETIME).
LOGIN_LIFETIME = timedelta(hours=12)
LOGIN_LIFETIME_S = LOGIN_LIFETIME.total_seconds()
POLL_S = 0.5
# Saved lockouts that have run out are deleted every this many polls (30 s).
LOCKOUT_PURGE_POLLS = 60


def hash_token(token: str) -> str:
    # Tokens and login ids carry 256 random bits, so a fast hash keeps a stolen DB useless.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@functools.cache
def _dummy_pin_hash() -> str:
    return generate_password_hash(secrets.token_hex(8), PIN_HASH_METHOD)


def check_user_name(name: str) -> None:
    """NameRefused (a StoreError) with one sentence unless `name` may be a user's name (lampctl.storage.user_names)."""
    user_name(name)


def check_pin(pin: str) -> None:
    if not isinstance(pin, str) or not PIN_RE.fullmatch(pin):
        raise StoreError("A PIN must be 4 to 8 digits.")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise StoreError(f"Role {role!r} is not one of: {', '.join(ROLES)}.")


def _refuse_builtin(name: str, what: str) -> None:
    if isinstance(name, str) and name_key(name) == name_key(BUILTIN_USER):
        raise StoreError(f"{BUILTIN_USER} is the built-in account of the command line; it cannot be {what}.")


@dataclass(frozen=True)
class _Snapshot:
    version: int = 0
    users: dict = field(default_factory=dict)  # name -> {name, role, created_at, pin_hash}
    tokens: dict = field(default_factory=dict)  # token hash -> user name
    logins: dict = field(default_factory=dict)  # login hash -> (user name, created datetime)


def _read_snapshot(conn: sqlite3.Connection) -> _Snapshot:
    conn.execute("BEGIN")  # one read snapshot of all four tables
    try:
        version = conn.execute("SELECT version FROM accounts_version").fetchone()[0]
        users = {r["name"]: dict(r) for r in conn.execute("SELECT name, role, created_at, pin_hash FROM users")}
        tokens = {r[0]: r[1] for r in conn.execute("SELECT token_hash, user FROM api_tokens")}
        logins = {
            r[0]: (r[1], datetime.fromisoformat(r[2]))
            for r in conn.execute("SELECT login_hash, user, created_at FROM logins")
        }
    finally:
        conn.execute("COMMIT")
    return _Snapshot(version, users, tokens, logins)


@overload
def _public(row: dict) -> dict: ...
@overload
def _public(row: None) -> None: ...
def _public(row: dict | None) -> dict | None:
    return None if row is None else {"name": row["name"], "role": row["role"], "created_at": row["created_at"]}


class Accounts:
    """Users, PINs, tokens and logins; reads from memory, writes through the database."""

    def __init__(
        self,
        db_path: Path,
        *,
        wall: Callable[[], datetime] | None = None,
        audit: Callable[..., None] | None = None,
        poll_s: float = POLL_S,
        connect_fn=None,
        clock_synced: Callable[[], bool | None] = lambda: None,
        monotonic: Callable[[], float] | None = None,
    ):
        self.path = Path(db_path)
        # The clock anchor of a saved lockout (S20): this boot, its monotonic clock, the wall's state.
        self._boot_id = read_boot_id()
        self._clock_synced = clock_synced
        self._monotonic = monotonic or time.monotonic
        open_database(self.path)
        self._wall = wall or (lambda: datetime.now(UTC))
        # S22: when each login began, on the monotonic clock; its age never comes from the wall clock.
        self._login_born: dict[str, float] = {}
        self._audit = audit  # UsageLog.event: account changes go to the audit log through its owner
        self._poll_s = poll_s
        self._connect = connect_fn or connect  # tests swap it to simulate a hung disk
        # Held across I/O only by writers and the reloader, never by a lookup.
        self._write_lock = threading.Lock()
        self._revoked: set[str] = set()  # logouts not yet seen in a reloaded snapshot
        self._revoked_lock = threading.Lock()
        self._stop = threading.Event()
        self._polled = threading.Condition()
        self._polls = 0
        self._thread: threading.Thread | None = None
        self.reload_error: str | None = None
        self._snap = _Snapshot()
        self.reload()
        self._lockouts_at_start = self._load_lockouts()  # S20

    # ---- answers from memory (no disk, no lock held across I/O) ----------------------------
    def user(self, name: str) -> dict | None:
        return _public(self._snap.users.get(name))

    def find(self, name: str) -> str | None:
        """The stored name that `name` means: itself, else the one user whose name has its key (typed in
        another case or Unicode spelling, lampctl.storage.user_names.name_key); None for no user or several."""
        found = matching(self._snap.users, name)
        return found[0] if len(found) == 1 else None

    def users(self) -> list[dict]:
        snap = self._snap
        return [_public(snap.users[n]) for n in sorted(snap.users)]

    def check_pin(self, name: str, pin: str) -> dict | None:
        """{"name", "role"} if name and PIN match, else None; the built-in account never matches.

        The name is found whatever its case (`find`): "maria" logs in as "Maria".
        """
        stored = self.find(name)
        row = self._snap.users.get(stored) if stored is not None and stored != BUILTIN_USER else None
        # Hash even for an unknown name, so reply time does not tell which names exist.
        ok = check_password_hash(row["pin_hash"] if row else _dummy_pin_hash(), pin if isinstance(pin, str) else "")
        if row is None or not ok:
            return None
        return {"name": row["name"], "role": row["role"]}

    def user_for_token(self, token: str) -> dict | None:
        snap = self._snap
        name = snap.tokens.get(hash_token(token))
        return _public(snap.users.get(name)) if name else None

    def user_for_login(self, login_id: object) -> dict | None:
        """The user of a live browser login, or None (logged out, expired, user removed or PIN changed)."""
        if not isinstance(login_id, str) or not login_id:
            return None
        key = hash_token(login_id)
        snap = self._snap
        entry = snap.logins.get(key)
        if entry is None or key in self._revoked or self.login_expired(key):
            return None
        return _public(snap.users.get(entry[0]))

    def login_expired(self, key: str) -> bool:
        """S22: a login ends LOGIN_LIFETIME after it began on the monotonic clock; a wall-clock step moves nothing."""
        born = self._login_born.get(key)
        return born is None or self._monotonic() - born > LOGIN_LIFETIME_S

    # ---- reloading ----------------------------------------------------------------------
    def start(self) -> None:
        """Reload in the background whenever another process (the CLI) changes the accounts."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="accounts-reload", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _poll(self) -> None:
        polls = 0
        while not self._stop.wait(self._poll_s):
            self.poll_once()
            polls += 1
            if polls % LOCKOUT_PURGE_POLLS == 0:
                self.purge_lockouts()
            with self._polled:
                self._polls += 1
                self._polled.notify_all()

    def wait_fresh(self, timeout: float) -> bool:
        """Wait (up to timeout) for a reload that began after this call; True if one completed.

        For a token or login not known in memory: it may have been made by the CLI a moment
        ago. The caller's thread waits on memory, never on the disk itself.
        """
        if self._thread is None:
            return False
        with self._polled:
            # The poll running now may have read before the change: wait for the one after it.
            target = self._polls + 2
            return self._polled.wait_for(lambda: self._polls >= target, timeout)

    def poll_once(self) -> None:
        """Reload if the accounts changed; a failure is kept in reload_error (shown by /api/health)."""
        try:
            self.reload(only_if_changed=True)
            self.reload_error = None
        except (sqlite3.Error, OSError) as exc:
            if str(exc) != self.reload_error:
                log.warning("accounts cannot be reloaded (%s); answering from memory", exc)
            self.reload_error = str(exc)

    def reload(self, only_if_changed: bool = False) -> bool:
        """Read the accounts from the database into memory; True if memory changed."""
        with self._write_lock:
            conn = self._connect(self.path)
            try:
                if only_if_changed:
                    version = conn.execute("SELECT version FROM accounts_version").fetchone()[0]
                    if version == self._snap.version:
                        return False
                self._install(_read_snapshot(conn))
            finally:
                conn.close()
        return True

    def _install(self, snap: _Snapshot) -> None:
        with self._revoked_lock:
            self._revoked = {key for key in self._revoked if key in snap.logins}
        self._date_logins(snap)
        self._snap = snap

    def _date_logins(self, snap: _Snapshot) -> None:
        """Give each login first seen its monotonic birth (S22); forget logins no longer on disk.

        A login made here is born now. One read from the database at start is from before
        this boot of the monotonic clock, so its age cannot be carried over exactly: it counts
        the age its wall-clock record gives, held within 0..LOGIN_LIFETIME. So a restart ends
        a login that is past its shift by the record, but a record "from the future" (the
        clock was stepped back while the service was down) counts as fresh rather than
        logging a tablet out; once running, the wall clock never moves a login's age again.
        """
        now_mono, now_wall = self._monotonic(), self._wall()
        born = {key: b for key, b in self._login_born.items() if key in snap.logins}
        for key, (_user, created) in snap.logins.items():
            if key not in born:
                age = min(max((now_wall - created).total_seconds(), 0.0), LOGIN_LIFETIME_S + 1.0)
                born[key] = now_mono - age
        self._login_born = born

    # ---- writes: database first, then memory at once -------------------------------------
    def _write(self, action: Callable[[sqlite3.Connection], object]):
        """Run action(conn) in one transaction, then refresh memory from the same connection."""
        with self._write_lock:
            conn = self._connect(self.path)
            try:
                with transaction(conn):
                    result = action(conn)
                self._install(_read_snapshot(conn))
            finally:
                conn.close()
        return result

    def _record(self, who: str, why: str) -> None:
        if self._audit is not None:
            self._audit(None, None, None, who, why)

    def add_user(self, name: str, role: str, pin: str, by: str = "admin") -> str:
        """Add a user; returns the name as kept (NFC). Refused when a user has it in any case."""
        name = user_name(name)
        _refuse_builtin(name, "added")
        _check_role(role)
        check_pin(pin)
        pin_hash = generate_password_hash(pin, PIN_HASH_METHOD)

        def act(conn):
            # Checked inside the write transaction, so two adds (the CLI and a page) cannot both pass.
            # Names that differ only in case and were added before this rule stay; none is refused afresh.
            taken(name, [r[0] for r in conn.execute("SELECT name FROM users")])
            conn.execute(
                "INSERT INTO users (name, role, pin_hash, created_at) VALUES (?, ?, ?, ?)",
                (name, role, pin_hash, iso(self._wall())),
            )

        self._write(act)
        self._record(by, f"user {name} added as {role}")
        return name

    # Each write that names an existing user finds it as `find` does (typed in any case), and
    # records and answers with the name as kept.
    def remove_user(self, name: str, by: str = "admin") -> str:
        """Remove a user with their tokens and logins; never the built-in account or the last admin."""
        _refuse_builtin(name, "removed")

        def act(conn):
            stored = _resolve(conn, name)
            if _role_of(conn, stored) == "admin":
                _keep_an_admin(conn, stored, "removed")
            conn.execute("DELETE FROM users WHERE name = ?", (stored,))  # tokens and logins cascade
            return stored

        stored = self._write(act)
        self._record(by, f"user {stored} removed")
        return stored

    def set_role(self, name: str, role: str, by: str = "admin") -> str:
        _check_role(role)
        _refuse_builtin(name, "changed")

        def act(conn):
            stored = _resolve(conn, name)
            if _role_of(conn, stored) == "admin" and role != "admin":
                _keep_an_admin(conn, stored, "demoted")
            conn.execute("UPDATE users SET role = ? WHERE name = ?", (role, stored))
            return stored

        stored = self._write(act)
        self._record(by, f"role of {stored} set to {role}")
        return stored

    def set_pin(self, name: str, pin: str, by: str = "admin") -> str:
        """A new PIN; every browser login of that user ends."""
        _refuse_builtin(name, "given a PIN")
        check_pin(pin)
        pin_hash = generate_password_hash(pin, PIN_HASH_METHOD)

        def act(conn):
            stored = _resolve(conn, name)
            conn.execute("UPDATE users SET pin_hash = ? WHERE name = ?", (pin_hash, stored))
            conn.execute("DELETE FROM logins WHERE user = ?", (stored,))
            return stored

        stored = self._write(act)
        self._record(by, f"PIN of {stored} reset")
        return stored

    def create_token(self, name: str) -> str:
        _refuse_builtin(name, "given another token; create one for a named user")
        token = secrets.token_urlsafe(32)

        def act(conn):
            self._insert_token(conn, _resolve(conn, name, "; add one with 'lampctl user add'"), token)

        self._write(act)
        return token

    def _insert_token(self, conn: sqlite3.Connection, name: str, token: str) -> None:
        conn.execute(
            "INSERT INTO api_tokens (token_hash, user, created_at) VALUES (?, ?, ?)",
            (hash_token(token), name, iso(self._wall())),
        )

    def replace_system_token(self, name: str = BUILTIN_USER) -> str:
        """The only token of the built-in admin account, created if need be; its old tokens are revoked.

        '!' is no valid hash, so this account can never log in with a PIN (a row added by an
        older version with a real PIN or another role is put right here).
        """
        if name != BUILTIN_USER:
            raise ValueError(f"the built-in account is {BUILTIN_USER!r}, not {name!r}")
        token = secrets.token_urlsafe(32)

        def act(conn):
            conn.execute(
                "INSERT INTO users (name, role, pin_hash, created_at) VALUES (?, 'admin', '!', ?) "
                "ON CONFLICT (name) DO UPDATE SET role = 'admin', pin_hash = '!'",
                (name, iso(self._wall())),
            )
            conn.execute("DELETE FROM api_tokens WHERE user = ?", (name,))
            conn.execute("DELETE FROM logins WHERE user = ?", (name,))
            self._insert_token(conn, name, token)

        self._write(act)
        return token

    def create_login(self, name: str) -> str:
        """A new browser login for a user who just gave the right PIN; the id goes in the cookie."""
        _refuse_builtin(name, "logged in with")
        login_id = secrets.token_urlsafe(32)
        key = hash_token(login_id)
        # Expired by their monotonic age (S22), never by the wall clock, which a step can move.
        expired = [k for k in self._login_born if self.login_expired(k)]

        def act(conn):
            stored = _resolve(conn, name)
            conn.executemany("DELETE FROM logins WHERE login_hash = ?", [(k,) for k in expired])
            conn.execute(
                "INSERT INTO logins (login_hash, user, created_at) VALUES (?, ?, ?)", (key, stored, iso(self._wall()))
            )

        self._write(act)
        self._login_born = {**self._login_born, key: self._monotonic()}  # replaced whole: readers never lock
        return login_id

    def end_login(self, login_id: str) -> None:
        """Log out: the login stops working at once in memory, then is deleted on disk."""
        if not isinstance(login_id, str) or not login_id:
            return
        key = hash_token(login_id)
        with self._revoked_lock:
            self._revoked.add(key)
        try:
            self._write(lambda conn: conn.execute("DELETE FROM logins WHERE login_hash = ?", (key,)))
        except sqlite3.Error as exc:
            # Memory already refuses it; a restart before the disk is back would accept it again.
            log.error("logout not saved (%s); the login is refused until the next restart", exc)

    # ---- login lockouts (S20): the rules run in memory (web.auth.LoginGuard, monotonic clock);
    # these keep their state across a restart. Only a login's own thread waits for them, never a Stop.
    def _now_ref(self) -> ClockRef:
        return ClockRef(self._boot_id, self._monotonic(), self._wall(), self._clock_synced())

    def lockouts(self) -> dict[str, tuple[int, bool, float]]:
        """The saved lockouts as read when these accounts were opened (memory: building the web app
        never waits for the disk)."""
        return dict(self._lockouts_at_start)

    def _load_lockouts(self) -> dict[str, tuple[int, bool, float]]:
        """{name key: (wrong PINs, locked, seconds left)} as saved, aged since; read at start-up.

        S20: an age that cannot be trusted (another boot and an unsynchronised wall clock, or a
        record from the future) counts as none: the name is still locked for what it had left.
        What has run out is deleted; the rest is anchored again on this boot's clock.
        """
        now = self._now_ref()
        out = {}
        with self._write_lock:
            conn = self._connect(self.path)
            try:
                with transaction(conn):
                    for row in conn.execute("SELECT * FROM login_lockouts").fetchall():
                        then = ClockRef(
                            row["boot_id"],
                            row["mono"],
                            datetime.fromisoformat(row["at"]),
                            None if row["wall_synced"] is None else bool(row["wall_synced"]),
                        )
                        left = row["left_s"] - (s20_elapsed_s(then, now) or 0.0)
                        if left <= 0:
                            conn.execute("DELETE FROM login_lockouts WHERE name_key = ?", (row["name_key"],))
                            continue
                        out[row["name_key"]] = (row["failures"], bool(row["locked"]), left)
                        self._save_lockout(conn, row["name_key"], row["failures"], bool(row["locked"]), left, now)
            finally:
                conn.close()
        return out

    def _save_lockout(self, conn, key: str, failures: int, locked: bool, left_s: float, now: ClockRef) -> None:
        assert now.wall is not None  # _now_ref() always reads the wall clock
        conn.execute(
            "INSERT OR REPLACE INTO login_lockouts (name_key, failures, locked, left_s, at, boot_id, mono, "
            "wall_synced) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                failures,
                int(locked),
                left_s,
                iso(now.wall),
                now.boot_id,
                now.mono,
                None if now.synced is None else int(now.synced),
            ),
        )

    def save_lockout(self, key: str, failures: int, locked: bool, left_s: float) -> None:
        """Keep a name's wrong PINs (or its lock) and how long they still count; raises sqlite3.Error."""
        now = self._now_ref()
        with self._write_lock:
            conn = self._connect(self.path)
            try:
                with transaction(conn):
                    self._save_lockout(conn, key, failures, locked, left_s, now)
            finally:
                conn.close()

    def forget_lockout(self, key: str) -> None:
        with self._write_lock:
            conn = self._connect(self.path)
            try:
                conn.execute("DELETE FROM login_lockouts WHERE name_key = ?", (key,))
            finally:
                conn.close()

    def purge_lockouts(self) -> None:
        """Delete saved lockouts of this boot that have run out (so a later boot cannot revive them)."""
        try:
            now = self._now_ref()
            conn = self._connect(self.path)
            try:
                expired = "FROM login_lockouts WHERE boot_id = ? AND mono + left_s <= ?"
                if conn.execute(f"SELECT count(*) {expired}", (now.boot_id, now.mono)).fetchone()[0]:
                    conn.execute(f"DELETE {expired}", (now.boot_id, now.mono))
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            log.warning("expired login lockouts cannot be deleted now (%s)", exc)


def _resolve(conn: sqlite3.Connection, name: str, hint: str = "") -> str:
    """The stored name of the one user `name` means (lampctl.storage.user_names.matching), or StoreError with a sentence."""
    found = matching([r[0] for r in conn.execute("SELECT name FROM users")], name)
    if not found:
        raise StoreError(f"There is no user named {name!r}{hint}.")
    if len(found) > 1:
        raise StoreError(
            f"{name!r} could be any of {', '.join(map(repr, found))}, whose names differ only in case; "
            "give the name exactly as 'lampctl user list' shows it."
        )
    return found[0]


def _role_of(conn: sqlite3.Connection, name: str) -> str:
    row = conn.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise StoreError(f"There is no user named {name!r}.")
    return row[0]


def _keep_an_admin(conn: sqlite3.Connection, name: str, what: str) -> None:
    others = conn.execute(
        "SELECT count(*) FROM users WHERE role = 'admin' AND name NOT IN (?, ?)", (name, BUILTIN_USER)
    ).fetchone()[0]
    if others == 0:
        raise StoreError(f"{name} is the last admin and cannot be {what}; make another user admin first.")

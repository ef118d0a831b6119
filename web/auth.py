"""PIN login and logout, the per-name lockout, login-required by default, and CSRF tokens on every form."""

from __future__ import annotations

import hmac
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable

from flask import Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext, ngettext
from werkzeug.exceptions import BadRequest

from lampctl.storage.accounts import BUILTIN_USER
from lampctl.storage.db import LogUnavailable, StoreError
from lampctl.storage.user_names import name_key
from web import accounts, services
from web.params import safe_next

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)

MAX_FAILURES = 5
FAILURE_WINDOW_S = 300.0
LOCKOUT_S = 300.0
# Views anyone may reach; every other endpoint needs a login (the API checks its own tokens).
PUBLIC_ENDPOINTS = {"auth.login", "static", "api.health", "i18n.language", "panel.running_json"}
# S21: carried out whatever the cookie (none, unknown, expired) and without a CSRF token: a forged
# Stop is safe, a refused one is not. Recorded under the user when known, else unauthenticated.
STOP_ENDPOINTS = {"panel.stop", "panel.stop_all", "panel.estop"}
CSRF_FIELD = "csrf_token"
AUDIT_KEY = "lampctl.audit"


class LoginGuard:
    """Counts wrong PINs per name; MAX_FAILURES within the window lock that name for LOCKOUT_S.

    The rules run in memory on the monotonic clock (S22). With a store (the Accounts), every
    wrong PIN and every lock is also saved, and read back at start, so a restart or a power
    cut clears neither (S20); a saved age that cannot be trusted counts as none (still locked).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        lockout_s: float = LOCKOUT_S,
        store=None,
    ):
        self._clock = clock
        self.max_failures, self.window_s, self.lockout_s = max_failures, window_s, lockout_s
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()
        # Saves run outside _lock, one at a time, so the newest state is the one on disk.
        self._store = store
        self._save_lock = threading.Lock()
        if store is not None:
            self._restore(store.lockouts())

    def _restore(self, saved: dict[str, tuple[int, bool, float]]) -> None:
        """S20: the saved wrong PINs and locks, mapped onto this clock (a saved count ages from its newest)."""
        now = self._clock()
        for key, (failures, locked, left) in saved.items():
            if locked:
                self._locked_until[key] = now + min(left, self.lockout_s)
            elif failures > 0:
                self._failures[key] = [now - self.window_s + min(left, self.window_s)] * failures

    def _save(self, key: str, state: tuple[int, bool, float] | None) -> None:
        if self._store is None:
            return
        try:
            if state is None:
                self._store.forget_lockout(key)
            else:
                self._store.save_lockout(key, *state)
        except (sqlite3.Error, OSError) as exc:  # memory still counts; only a restart would forget
            log.error("login lockout of %r not saved (%s); it holds until the service restarts", key, exc)

    # The lockout counts per person, under the key that finds the user at login (any case, any
    # Unicode spelling), so typing "MARIA" gets no fresh tries for "Maria".
    _key = staticmethod(name_key)

    def locked_for(self, name: str) -> float:
        """Seconds this name stays locked; 0 when it may try."""
        with self._lock:
            until = self._locked_until.get(self._key(name), 0.0)
            left = until - self._clock()
            if left <= 0:
                self._locked_until.pop(self._key(name), None)
                return 0.0
            return left

    def reserve(self, name: str) -> float:
        """Count an attempt BEFORE its PIN is checked; seconds the name is locked (0: go on and check).

        Counting first, under the lock, means parallel guesses cannot all pass the check
        while the slow hash runs: at most max_failures attempts are ever in the window.
        """
        key, now = self._key(name), self._clock()
        with self._lock:
            left = self._locked_until.get(key, 0.0) - now
            if left > 0:
                return left
            self._locked_until.pop(key, None)
            if len(self._failures) > 1000:  # names typed at random must not grow memory without end
                self._prune(now)
            recent = [t for t in self._failures.get(key, []) if now - t < self.window_s]
            if len(recent) >= self.max_failures:
                return self.lockout_s  # attempts still being checked use up every try
            recent.append(now)
            self._failures[key] = recent
            return 0.0

    def failed(self, name: str) -> tuple[int, bool]:
        """After a wrong PIN whose attempt was reserved: (tries left, whether this failure locked the name)."""
        key = self._key(name)
        with self._save_lock:
            now = self._clock()
            with self._lock:
                if self._locked_until.get(key, 0.0) > now:
                    return 0, False
                recent = [t for t in self._failures.get(key, []) if now - t < self.window_s]
                if len(recent) >= self.max_failures:
                    self._failures.pop(key, None)
                    self._locked_until[key] = now + self.lockout_s
                    result, state = (0, True), (0, True, self.lockout_s)
                else:
                    newest = max(recent, default=now)
                    result = self.max_failures - len(recent), False
                    state = (len(recent), False, self.window_s - (now - newest))
            self._save(key, state)
        return result

    def succeeded(self, name: str) -> None:
        key = self._key(name)
        with self._save_lock:
            with self._lock:
                known = self._failures.pop(key, None) is not None
            if known:
                self._save(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, ts in self._failures.items() if not ts or now - ts[-1] >= self.window_s]:
            del self._failures[key]
        for key in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]


def guard() -> LoginGuard:
    return current_app.extensions["lampctl.login_guard"]


def csrf_token() -> str:
    token = session.get(CSRF_FIELD)
    if not token:
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


class CsrfError(BadRequest):
    sentence = "The form was missing its security token or it had expired; reload the page and try again."


def _check_csrf() -> None:
    sent = request.form.get(CSRF_FIELD) or request.headers.get("X-CSRF-Token") or ""
    expected = session.get(CSRF_FIELD) or ""
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfError()


def wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json" or request.path.endswith(".json")


def _load_user() -> None:
    """g.user from the accounts in memory (never the disk): a logout, a removed user, a new PIN
    or a changed role counts on the very next request."""
    g.user = None
    if "user" not in session:
        return
    user = accounts().user_for_login(session.get("login"))
    if user is None or user["name"] != session.get("user"):
        session.clear()
    else:
        g.user = user


def unauthenticated() -> str:
    """Who a Stop without known credentials is recorded under (S21)."""
    return f"unauthenticated ({request.remote_addr or 'unknown address'})"


def arrived() -> float | None:
    """When this request arrived (time.monotonic, stamped by lampctl.platform.httpserver), or None: now (S19)."""
    from lampctl.platform.httpserver import ARRIVED_KEY

    value = request.environ.get(ARRIVED_KEY)
    return value if isinstance(value, float) else None


def _before_request():
    if request.path.startswith("/api/") or request.blueprint == "api":
        # Bearer tokens, checked in web.api; a wrong method on an API URL is a 405, never a CSRF refusal.
        return None
    _load_user()
    if request.endpoint in STOP_ENDPOINTS:
        return None  # S21: no login, no CSRF, nothing waited for
    if request.endpoint is not None and request.endpoint not in PUBLIC_ENDPOINTS and g.user is None:
        if wants_json():
            return jsonify(error="Log in first.", code="unauthorized"), 401
        target = request.full_path if request.query_string else request.path
        return redirect(url_for("auth.login", next=target if request.method == "GET" else None))
    if request.method == "POST":
        _check_csrf()
    return None


def require_admin() -> None:
    if g.user is None or g.user["role"] != "admin":
        abort(403)


def _unavailable(exc):
    message = str(exc) if isinstance(exc, LogUnavailable) else "The usage log cannot be read right now; tell an admin."
    if request.path.startswith("/api/") or wants_json():
        return jsonify(error=message, code="log-unavailable"), 503
    return render_template("error.html", status=503, title="Service Unavailable", message=message), 503


def audit(who: str, why: str) -> None:
    """A login, a logout or a lockout, in the app's audit log (the node's usage log, or the collector's)."""
    current_app.extensions[AUDIT_KEY](who, why)


def init_login(app, accounts, audit_fn: Callable[[str, str], None]) -> None:
    """What every app with PIN logins shares (the node's, the collector's): the lockout kept in
    `accounts`, the audit log, and the CSRF token and the user in every template."""
    app.extensions["lampctl.login_guard"] = LoginGuard(app.config.get("LOGIN_CLOCK") or time.monotonic, store=accounts)
    app.extensions[AUDIT_KEY] = audit_fn

    @app.context_processor
    def _template_globals():
        return {"csrf_token": csrf_token, "current_user": g.get("user")}


def init_app(app) -> None:
    if app.extensions["lampctl"].accounts is None:
        raise ValueError("create_app needs Services(accounts=...): logins and tokens are answered from memory")
    init_login(
        app, app.extensions["lampctl"].accounts, lambda who, why: services().usage_log.event(None, None, None, who, why)
    )
    app.before_request(_before_request)
    # A page that cannot read the log answers 503 with a sentence, never 500 (item 10).
    app.register_error_handler(LogUnavailable, _unavailable)
    app.register_error_handler(sqlite3.Error, _unavailable)


def _check_login(name: str, pin: str) -> tuple[dict | None, str, int]:
    """(the user, "", 200) for a right name and PIN, else (None, the sentence, the status); counts failures."""
    if not name or not pin:
        return None, gettext("Enter your name and your PIN."), 400
    left = guard().reserve(name)
    if left:
        minutes = max(1, round(left / 60))
        return (
            None,
            ngettext(
                "Too many wrong PINs for %(name)s: this name is locked for about %(num)s more minute.",
                "Too many wrong PINs for %(name)s: this name is locked for about %(num)s more minutes.",
                minutes,
                name=name,
            ),
            429,
        )
    user = accounts().check_pin(name, pin)
    if user is None:
        tries, locked_now = guard().failed(name)
        if locked_now:
            audit(name, f"login locked out after {MAX_FAILURES} wrong PINs")
        if tries == 0:
            return (
                None,
                gettext(
                    "Too many wrong PINs for %(name)s: this name is locked for %(num)s minutes.",
                    name=name,
                    num=round(LOCKOUT_S / 60),
                ),
                429,
            )
        return (
            None,
            ngettext(
                "That name and PIN do not match (%(num)s try left before this name is locked for %(minutes)s minutes).",
                "That name and PIN do not match (%(num)s tries left before "
                "this name is locked for %(minutes)s minutes).",
                tries,
                minutes=round(LOCKOUT_S / 60),
            ),
            401,
        )
    guard().succeeded(name)
    return user, "", 200


def _begin_login(user: dict, why: str) -> str | None:
    """A fresh cookie session for `user`; None, or the sentence when the login could not be saved."""
    try:
        login_id = accounts().create_login(user["name"])
    except (StoreError, sqlite3.Error):
        return gettext("The login could not be saved (the database is not answering); try again in a minute.")
    session.clear()  # a fresh session (and CSRF token) for the new login
    session.permanent = True
    session["user"] = user["name"]
    session["login"] = login_id  # checked against the server's live logins on every request
    csrf_token()
    touch()
    audit(user["name"], why)
    return None


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if g.user is not None:
            return redirect(url_for("panel.panel"))
        return render_template("login.html", name="", next=request.args.get("next", ""))
    name = (request.form.get("name") or "").strip()
    nxt = request.form.get("next", "")
    user, message, status = _check_login(name, request.form.get("pin") or "")
    if user is not None:
        message = _begin_login(user, "logged in to the panel")
        status = 503
    if message:
        return render_template("login.html", name=name, next=nxt, error=message), status
    return redirect(safe_next(nxt), code=303)


# ---- the shared tablet: idle lock and quick switch ------------------------------------------
def _panel_clock() -> float:
    # Monotonic (S22): a wall-clock step neither locks nor unlocks the panel.
    return (current_app.config.get("PANEL_CLOCK") or current_app.config.get("LOGIN_CLOCK") or time.monotonic)()


def touch() -> None:
    """Someone is at the panel: restart the idle lock's count."""
    session["active_at"] = _panel_clock()


def panel_locked() -> bool:
    """The idle lock (panel.lock_after_s): a locked panel can stop lamps but not start or extend one."""
    limit = services().config.panel.lock_after_s
    if not limit or g.get("user") is None:
        return False
    at = session.get("active_at")
    if not isinstance(at, (int, float)):
        return True
    idle = _panel_clock() - at
    return idle > limit or idle < 0  # a time from before a restart (another boot's monotonic clock): ask again


def _switch_names() -> list[str]:
    return [u["name"] for u in accounts().users() if u["name"] != BUILTIN_USER]


@bp.route("/switch", methods=["GET", "POST"])
def switch():
    """Tap your name, enter your PIN: the tablet works under that name from now on (also unlocks it)."""
    names = _switch_names()
    if request.method == "GET":
        return render_template("switch.html", names=names, chosen=g.user["name"], locked=panel_locked())
    name = (request.form.get("name") or "").strip()
    user, message, status = _check_login(name, request.form.get("pin") or "")
    if user is not None:
        before = g.user["name"]
        old_login = session.get("login")
        message = _begin_login(
            user, f"took over the panel from {before}" if before != user["name"] else "unlocked the panel"
        )
        status = 503
        if message is None:
            if old_login != session.get("login"):
                accounts().end_login(old_login)
            flash(gettext("The panel now works under %(name)s.", name=user["name"]), "ok")
            return redirect(url_for("panel.panel"), code=303)
    return render_template("switch.html", names=names, chosen=name, locked=panel_locked(), error=message), status


@bp.post("/logout")
def logout():
    """Log out; while a lamp is on, ask first (the tablet then shows it with its Stop on the login page)."""
    if request.form.get("confirm") != "1" and any(view.heating for view in services().controller.lamps()):
        return render_template("logout.html")
    name = g.user["name"]
    accounts().end_login(session.get("login"))  # a copy of this cookie stops working too
    session.clear()
    services().usage_log.event(None, None, None, name, "logged out")
    flash(gettext("You are logged out."), "ok")
    return redirect(url_for("auth.login"), code=303)

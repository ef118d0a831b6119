"""The collector's pages: every lamp's live state, and the central log, CSV and usage across nodes."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from datetime import date
from pathlib import Path

from flask import Blueprint, Flask, Response, abort, current_app, render_template, request, stream_with_context
from flask_babel import Babel

from lampctl.storage import export, reports
from lampctl.storage.accounts import LOGIN_LIFETIME
from lampctl.storage.db import StoreError, parse_bound
from web import ACCOUNTS_KEY, fleet_auth, load_secret_key
from web.auth import init_login
from web.login_cookie import LoginCookieSessions
from web.params import MAX_PAGE, page_number

PAGE_SIZE = 50
CSV_COLUMNS = (
    "node",
    "id",
    "lamp_id",
    "user",
    "started_at",
    "ended_at",
    "planned_s",
    "actual_s",
    "end_reason",
    "continues",
    "origin",
)
CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"

bp = Blueprint("fleet", __name__)
logger = logging.getLogger(__name__)


def create_fleet_app(
    collector, accounts, test_config: dict | None = None, *, audit: Callable[[str, str], None] | None = None
) -> Flask:
    """collector: lampctl.fleet.collector.Collector (its central log and the live states it heard);
    accounts: the collector's own (lampctl.fleet.logins), whose admins alone may log in;
    audit(who, why): where logins, logouts and lockouts are recorded."""
    if accounts is None:
        raise ValueError("create_fleet_app needs the collector's accounts: its pages are for its admins")
    web_dir = Path(__file__).parent
    app = Flask(__name__, template_folder=str(web_dir / "templates"), static_folder=str(web_dir / "static"))
    # The node's cookie settings, under another name: a node and a collector on one host keep both logins.
    app.config.update(
        SESSION_COOKIE_NAME="lampctl_fleet_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=LOGIN_LIFETIME,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.config.update(test_config or {})
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(Path(collector.central.path).parent)
    app.extensions["fleet"] = collector
    app.extensions[ACCOUNTS_KEY] = accounts
    app.session_interface = LoginCookieSessions()  # S22: no wall-clock age on the cookie
    Babel(app, locale_selector=lambda: "en")  # the fleet pages are English only
    init_login(app, accounts, audit or (lambda who, why: logger.info("fleet pages: %s %s", who, why)))
    app.before_request(fleet_auth.before_request)
    app.add_template_filter(_or_placeholder(reports.local_time), "local_time")
    app.add_template_filter(_or_placeholder(reports.duration_text), "duration")
    app.register_blueprint(bp)
    app.register_blueprint(fleet_auth.bp)

    @app.after_request
    def headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app


# What a cell shows for a value it cannot read: rows stored before every field was checked on
# arrival may hold "yesterday" as a time or Infinity as a duration, and a page never fails on them.
PLACEHOLDER = "?"


def _or_placeholder(fmt):
    def shown(value):
        try:
            return fmt(value)
        except (ValueError, TypeError, OverflowError, AttributeError):
            return PLACEHOLDER

    shown.__name__ = fmt.__name__
    return shown


def _collector():
    return current_app.extensions["fleet"]


def _filters() -> tuple[dict, dict, str | None]:
    """(filters for CentralLog, the form's values, an error sentence or None)."""
    form = {k: (request.args.get(k) or "").strip()[:80] for k in ("node", "lamp", "from", "to")}
    found = {"node": form["node"] or None, "lamp": form["lamp"] or None, "start": None, "end": None}
    try:
        if form["from"]:
            found["start"] = parse_bound(form["from"])
        if form["to"]:
            found["end"] = parse_bound(form["to"], upper=True)
    except StoreError as exc:
        return {"node": found["node"], "lamp": found["lamp"]}, form, str(exc)
    return found, form, None


@bp.get("/")
def fleet():
    collector = _collector()
    return render_template(
        "fleet/fleet.html",
        lamps=collector.fleet(),
        status=dict(collector.status),
        refused=(collector.rejected, collector.rejected_states),
    )


@bp.get("/log")
def log():
    central = _collector().central
    found, form, error = _filters()
    page = page_number(request.args)
    if page is None:
        abort(400, f"The page must be a whole number from 1 to {MAX_PAGE}.")  # the fleet pages are English only
    total = central.count(**found)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(page, pages)
    rows = central.sessions(**found, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    args = {k: v for k, v in form.items() if v}
    return render_template(
        "fleet/log.html",
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        form=form,
        args=args,
        error=error,
        nodes=central.nodes(),
    )


@bp.get("/log.csv")
def log_csv():
    found, _form, error = _filters()
    if error:
        abort(400, error)
    # Opened here, not in the generator: a log that cannot be read fails before any byte is sent.
    batches = _collector().central.session_batches(CSV_COLUMNS, **found)

    def generate():
        # One batch of rows at a time: the log is never loaded or written out whole in memory.
        buf = io.StringIO()
        # CRLF (RFC 4180): csv.writer quotes a cell holding a character of its line ending, so a
        # lone CR in a name is quoted too; with "\n" it was not, and a spreadsheet split the cell
        # there and ran the rest ("'\r=1+1" became "'" and a formula "=1+1").
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for rows in batches:
            writer.writerows([export.csv_cell(v) for v in row] for row in rows)
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        if buf.tell():
            yield buf.getvalue()

    name = f"lampctl-fleet-sessions-{date.today().isoformat()}.csv"
    return Response(
        stream_with_context(generate()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/usage")
def usage():
    central = _collector().central
    found, form, error = _filters()
    rows = central.usage(node=found["node"], start=found["start"], end=found["end"])
    return render_template("fleet/usage.html", rows=rows, form=form, error=error, nodes=central.nodes())


@bp.get("/api/fleet")
def api_fleet():
    collector = _collector()
    return {
        "lamps": collector.fleet(),
        "nodes": dict(collector.status),
        "stored": collector.stored,
        "duplicates": collector.duplicates,
        "rejected": collector.rejected,
        "rejected_states": collector.rejected_states,
        "subscribed": collector.subscribed.is_set(),
    }

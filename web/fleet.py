"""The collector's pages: every lamp's live state, and the central log, CSV and usage across nodes."""

from __future__ import annotations

import csv
import io
import math
from datetime import date
from pathlib import Path

from flask import Blueprint, Flask, Response, abort, current_app, render_template, request

from lampctl.storage import export, reports
from lampctl.storage.db import StoreError, parse_bound
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


def create_fleet_app(collector, test_config: dict | None = None) -> Flask:
    """collector: lampctl.fleet.collector.Collector (its central log and the live states it heard)."""
    web_dir = Path(__file__).parent
    app = Flask(__name__, template_folder=str(web_dir / "templates"), static_folder=str(web_dir / "static"))
    app.config.update(test_config or {})
    app.extensions["fleet"] = collector
    app.add_template_filter(reports.local_time, "local_time")
    app.add_template_filter(reports.duration_text, "duration")
    app.register_blueprint(bp)

    @app.after_request
    def headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app


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
    return render_template("fleet/fleet.html", lamps=collector.fleet(), status=dict(collector.status))


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
    buf = io.StringIO()
    # CRLF (RFC 4180): csv.writer quotes a cell holding a character of its line ending, so a
    # lone CR in a name is quoted too; with "\n" it was not, and a spreadsheet split the cell
    # there and ran the rest ("'\r=1+1" became "'" and a formula "=1+1").
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in _collector().central.sessions(**found):
        writer.writerow([export.csv_cell(row[c]) for c in CSV_COLUMNS])
    name = f"lampctl-fleet-sessions-{date.today().isoformat()}.csv"
    return Response(
        buf.getvalue(), mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'}
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
        "subscribed": collector.subscribed.is_set(),
    }

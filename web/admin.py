"""Admin pages: session log with CSV export, usage charts, bulb hours, the audit log, users, and fault resets."""

from __future__ import annotations

from datetime import date

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import gettext, lazy_gettext, ngettext
from werkzeug.exceptions import BadRequest

from lampctl.core.controller import Refused
from lampctl.storage import export, queries, reports
from lampctl.storage.accounts import BUILTIN_USER, ROLES
from lampctl.storage.db import StoreError, parse_bound, reading
from lampctl.storage.store import END_REASONS
from lampctl.storage.user_names import NameRefused
from web import accounts, services
from web.auth import require_admin
from web.charts import colour, stacked_days_svg
from web.codes import status_for
from web.params import MAX_PAGE, page_number
from web.words import guards_text, name_refusal, seconds_text

bp = Blueprint("admin", __name__, url_prefix="/admin")
bp.before_request(require_admin)


@bp.context_processor
def _clock_warning():
    """Every admin page says so while the system clock is not synchronised: log times may be wrong."""
    # lampctl.platform.clocksync.describe(False) says the same for the command line, in English.
    warning = gettext(
        "The system clock is not synchronised: log times may be wrong until it is (check the network "
        "and `timedatectl timesync-status`); sessions stay timed correctly."
    )
    return {"clock_warning": warning if services().clock_synchronised() is False else None}


# What the pages show for the codes the records keep (the CSV, the API and the form values keep the codes).
END_REASON_LABELS = {
    "completed": lazy_gettext("completed"),
    "stopped": lazy_gettext("stopped"),
    "estop": lazy_gettext("estop"),
    "fault": lazy_gettext("fault"),
    "interrupted": lazy_gettext("interrupted"),
    "firmware": lazy_gettext("firmware"),
    "patient": lazy_gettext("patient"),
    "over-temperature": lazy_gettext("over-temperature"),
    "over-current": lazy_gettext("over-current"),
    None: lazy_gettext("running"),
}
STATE_LABELS = {
    "off": lazy_gettext("off"),
    "on": lazy_gettext("on"),
    "cooldown": lazy_gettext("cooldown"),
    "fault": lazy_gettext("fault"),
}
ROLE_LABELS = {"practitioner": lazy_gettext("practitioner"), "admin": lazy_gettext("admin")}
FIRMWARE_LABELS = {"ok": lazy_gettext("ok"), "lost": lazy_gettext("lost"), "absent": lazy_gettext("absent")}


def _label(labels: dict, code) -> str:
    """The page's word for a code; a code the page does not know is shown as it is."""
    return str(labels[code]) if code in labels else ("" if code is None else str(code))


@bp.app_template_filter("reason_label")
def _reason_label(code):
    return _label(END_REASON_LABELS, code or None)


@bp.app_template_filter("state_label")
def _state_label(code):
    return _label(STATE_LABELS, code)


@bp.app_template_filter("guards_text")
def _guards_text(view):
    return guards_text(view)


@bp.app_template_filter("role_label")
def _role_label(code):
    return _label(ROLE_LABELS, code)


@bp.app_template_filter("firmware_label")
def _firmware_label(code):
    return _label(FIRMWARE_LABELS, code)


USAGE_DAYS = 30
EVENTS_PAGE_SIZE = 100
# The log page counts matching sessions up to this many: an exact count of a decade is a full scan.
COUNT_CAP = 10000


def _confirmed() -> bool:
    return request.form.get("confirm") == "1"


def _confirm(question: str, detail: str, button: str, back: str, *, items: list[str] | None = None, **fields):
    """Ask before an action that cannot be undone: the page's form posts the same action again with confirm=1,
    so the step works without JavaScript. `items`, when given, lists what the action applies to."""
    return render_template(
        "admin/confirm.html",
        question=question,
        detail=detail,
        button=button,
        back=back,
        action=request.path,
        fields=fields,
        items=items or [],
    )


def _lamp_names() -> dict[str, str]:
    return {lamp.id: lamp.name for lamp in services().config.lamps}


@bp.app_template_filter("local_time")
def _local_time(text):
    return reports.local_time(text)


@bp.app_template_filter("duration")
def _duration(seconds):
    """One format with its unit, as the panel says it ("30 s", "4 min 57 s"), in the page's language."""
    return "" if seconds is None else seconds_text(round(seconds))


@bp.get("/")
def index():
    return redirect(url_for("admin.log"))


# ---- session log -------------------------------------------------------------------------
def _log_filters() -> tuple[dict, dict, str | None]:
    """(filters for lampctl.storage.queries, the form's values, an error sentence or None)."""
    args = request.args
    form = {k: (args.get(k) or "").strip() for k in ("from", "to", "lamp", "user", "reason")}
    filters = {
        "start": form["from"] or None,
        "end": form["to"] or None,
        "lamp": form["lamp"] or None,
        "user": form["user"] or None,
        "reason": form["reason"] or None,
    }
    try:
        for key, upper in (("start", False), ("end", True)):
            bound = filters[key]
            if bound:
                parse_bound(bound, upper=upper)
    except StoreError as exc:
        return filters, form, str(exc)
    if filters["reason"] and filters["reason"] not in END_REASONS:
        return filters, form, gettext("End reason must be one of: %(reasons)s.", reasons=", ".join(END_REASONS))
    if filters["lamp"] and filters["lamp"] not in _lamp_names():
        return filters, form, gettext("There is no lamp %(lamp)s.", lamp=repr(filters["lamp"]))
    return filters, form, None


def _page_keys() -> tuple[int | None, int | None, str | None]:
    """(before, after, an error sentence or None): the keyset cursor of a log page."""
    keys = {}
    for name in ("before", "after"):
        text = (request.args.get(name) or "").strip()
        if text and not (text.isascii() and text.isdigit() and len(text) <= 18):
            return (
                None,
                None,
                gettext("%(text)s is not a session number; start again from the newest page.", text=repr(text[:20])),
            )
        keys[name] = int(text) if text else None
    return keys["before"], keys["after"], None


def _pager(rows, more: bool, before, after) -> tuple[int | None, int | None]:
    """(the id to go newer from, the id to go older from), None where there is nothing that way."""
    if not rows:
        return None, None
    if after is not None:  # came back towards the newest: older rows exist, newer ones if more
        return (rows[0]["id"] if more else None), rows[-1]["id"]
    return (rows[0]["id"] if before is not None else None), (rows[-1]["id"] if more else None)


@bp.get("/log")
def log():
    filters, form, error = _log_filters()
    path = services().usage_log.path
    size = current_app.config["LOG_PAGE_SIZE"]
    rows, more, total = [], False, 0
    before, after, key_error = _page_keys()
    error = error or key_error
    if error is None:
        try:
            # Keyset paging newest first: a page reads its own rows from an index, wherever it is.
            rows, more = queries.session_page(path, size, before=before, after=after, **filters)
        except StoreError as exc:
            error = str(exc)
        total = queries.count_sessions(path, **filters, cap=COUNT_CAP + 1)
    newer, older = _pager(rows, more, before, after)
    args = {k: v for k, v in form.items() if v}
    return render_template(
        "admin/log.html",
        rows=rows,
        total=total,
        capped=total > COUNT_CAP,
        newer=newer,
        older=older,
        paged=bool(before or after),
        form=form,
        args=args,
        error=error,
        lamps=_lamp_names(),
        users=reports.session_users(path),
        reasons=END_REASONS,
        columns=export.SESSION_COLUMNS,
    ), (400 if error else 200)


@bp.get("/log.csv")
def log_csv():
    filters, _form, error = _log_filters()
    if error:
        flash(error, "error")
        return redirect(url_for("admin.log", **{k: v for k, v in request.args.items()}), code=303)
    # Opened here, not in the generator: a log that cannot be read is a 503 before any byte is sent.
    chunks = queries.csv_chunks(services().usage_log.path, **filters)

    def generate():
        # A few thousand lines at a time, built by SQLite: the table is never loaded whole.
        yield from chunks

    name = f"lampctl-sessions-{date.today().isoformat()}.csv"
    return Response(
        stream_with_context(generate()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ---- usage -------------------------------------------------------------------------------
@bp.get("/usage")
def usage():
    path = services().usage_log.path
    days = reports.day_range(USAGE_DAYS)
    per_day = reports.minutes_per_lamp_per_day(path, days)
    lamps = services().config.lamps
    series = [(lamp.name, per_day.get(lamp.id, {})) for lamp in lamps]
    chart = stacked_days_svg(
        days,
        series,
        title=ngettext(
            "Minutes per lamp per day, last %(num)s day", "Minutes per lamp per day, last %(num)s days", USAGE_DAYS
        ),
    )
    start, end = days[0].isoformat(), days[-1].isoformat()
    return render_template(
        "admin/usage.html",
        chart=chart,
        days=days,
        series=series,
        legend=[(name, colour(i)) for i, (name, _) in enumerate(series)],
        totals={name: sum(data.values()) for name, data in series},
        practitioners=reports.per_practitioner(path, start, end),
        reasons=reports.end_reasons(path, start, end),
        start=start,
        end=end,
    )


# ---- bulbs -------------------------------------------------------------------------------
@bp.get("/bulbs")
def bulbs():
    blown = {view.id for view in services().controller.lamps() if view.bulb_blown}
    return render_template(
        "admin/bulbs.html", bulbs=reports.bulb_hours(services().usage_log.path, services().config.lamps), blown=blown
    )


@bp.post("/bulbs/<lamp_id>/replaced")
def bulb_replaced(lamp_id):
    lamps = {lamp.id: lamp for lamp in services().config.lamps}
    if lamp_id not in lamps:
        flash(gettext("There is no lamp %(lamp)s.", lamp=repr(lamp_id)), "error")
        return redirect(url_for("admin.bulbs"), code=303)
    hours = reports.bulb_hours(services().usage_log.path, [lamps[lamp_id]])[0].hours
    if not _confirmed():
        return _confirm(
            gettext("Record a new bulb in %(name)s?", name=lamps[lamp_id].name),
            gettext(
                "Its hour count (%(hours)s h now) starts again at 0. Only do this after fitting a new bulb.",
                hours=format(hours, ".1f"),
            ),
            gettext("Yes, bulb replaced"),
            url_for("admin.bulbs"),
        )
    services().usage_log.record_bulb_replacement(lamp_id, g.user["name"], hours)
    services().controller.bulb_replaced(lamp_id)
    services().usage_log.flush(1.0)  # the page this redirects to reads the record back
    flash(
        gettext(
            "%(name)s: bulb replacement recorded after %(hours)s h; its count starts again at 0.",
            name=lamps[lamp_id].name,
            hours=format(hours, ".1f"),
        ),
        "ok",
    )
    return redirect(url_for("admin.bulbs"), code=303)


# ---- events ------------------------------------------------------------------------------
@bp.get("/events")
def events():
    lamp = request.args.get("lamp") or None
    page = page_number(request.args)
    if page is None:
        bad = BadRequest()
        bad.sentence = gettext("The page must be a whole number from 1 to %(most)s.", most=MAX_PAGE)
        raise bad
    # One row more than shown tells whether an older page exists.
    rows = queries.events(
        services().usage_log.path, limit=EVENTS_PAGE_SIZE + 1, offset=(page - 1) * EVENTS_PAGE_SIZE, lamp=lamp
    )
    return render_template(
        "admin/events.html",
        rows=rows[:EVENTS_PAGE_SIZE],
        more=len(rows) > EVENTS_PAGE_SIZE,
        page=page,
        lamp=lamp or "",
        lamps=_lamp_names(),
    )


# ---- users -------------------------------------------------------------------------------
def _users_page(status: int = 200, **form):
    return render_template(
        "admin/users.html", users=accounts().users(), roles=ROLES, builtin=BUILTIN_USER, form=form
    ), status


@bp.get("/users")
def users():
    return _users_page()


def _user_action(action, success: str):
    try:
        action()
    except StoreError as exc:
        flash(str(exc), "error")
    else:
        flash(success, "ok")
    return redirect(url_for("admin.users"), code=303)


def _target(name: str) -> str | None:
    """Why `name` may not be changed here, or None (Accounts keeps the rules for every caller).

    The name is looked up as the accounts find it (any case), so "ADMIN" is still your own "admin".
    """
    if (accounts().find(name) or name) == g.user["name"]:
        return gettext("You cannot remove or demote your own account here; ask another admin.")
    return None


@bp.post("/users")
def add_user():
    # Trimmed as the login form trims what it is given: a phone keyboard adds a space after a word it suggests.
    name = (request.form.get("name") or "").strip()
    role = request.form.get("role") or ""
    pin = request.form.get("pin") or ""
    try:
        name = accounts().add_user(name, role, pin, by=g.user["name"])
    except NameRefused as exc:
        return _users_page(400, name=name, role=role, error=name_refusal(exc))
    except StoreError as exc:
        return _users_page(400, name=name, role=role, error=str(exc))
    flash(gettext("%(name)s added as %(role)s.", name=name, role=_role_label(role)), "ok")
    return redirect(url_for("admin.users"), code=303)


@bp.post("/users/<name>/remove")
def remove_user(name):
    why = _target(name)
    if why:
        flash(why, "error")
        return redirect(url_for("admin.users"), code=303)
    # Only a removal that can happen is asked about; the others get their refusal at once.
    if not _confirmed() and name != BUILTIN_USER and accounts().find(name) is not None:
        return _confirm(
            gettext("Remove %(name)s?", name=name),
            gettext("Their login and API tokens stop working at once; the sessions they ran stay in the log."),
            gettext("Yes, remove %(name)s", name=name),
            url_for("admin.users"),
        )
    return _user_action(
        lambda: accounts().remove_user(name, by=g.user["name"]),
        gettext("%(name)s removed; their login and API tokens stop working now.", name=name),
    )


@bp.post("/users/<name>/pin")
def reset_pin(name):
    return _user_action(
        lambda: accounts().set_pin(name, request.form.get("pin") or "", by=g.user["name"]),
        gettext("New PIN set for %(name)s; their logins have ended.", name=name),
    )


@bp.post("/users/<name>/role")
def set_role(name):
    role = request.form.get("role") or ""
    why = _target(name)
    if why:
        flash(why, "error")
        return redirect(url_for("admin.users"), code=303)

    return _user_action(
        lambda: accounts().set_role(name, role, by=g.user["name"]),
        gettext("%(name)s is now %(role)s.", name=name, role=_role_label(role)),
    )


# ---- lamps and faults --------------------------------------------------------------------
def _latches() -> dict[str, dict]:
    """{lamp_id: {"reason", "at"}}: when and why each fault latched, as the log keeps it (S17)."""
    with reading(services().usage_log.path) as conn:
        return {
            r["lamp_id"]: {"reason": r["reason"], "at": r["at"]}
            for r in conn.execute("SELECT lamp_id, reason, at FROM latches")
        }


def _lamps_page(status: int = 200, error: str | None = None):
    return render_template(
        "admin/lamps.html",
        lamps=services().controller.lamps(),
        latches=_latches(),
        firmware=services().firmware_status(),
        error=error,
    ), status


@bp.get("/lamps")
def lamps():
    return _lamps_page()


@bp.post("/lamps/<lamp_id>/reset")
def reset_fault(lamp_id):
    target = url_for("panel.panel") if request.form.get("next") == "panel" else url_for("admin.lamps")
    if not _confirmed():
        try:
            view = services().controller.lamp(lamp_id)
        except Refused as exc:
            flash(str(exc), "error")
            return redirect(target, code=303)
        latch = _latches().get(lamp_id)
        reason = view.fault_reason or gettext("no fault now")
        latched = (
            gettext("Latched since %(since)s: %(reason)s.", since=reports.local_time(latch["at"]), reason=reason)
            if latch
            else gettext("Latched: %(reason)s.", reason=reason)
        )
        return _confirm(
            gettext("Reset the fault of %(name)s?", name=view.name),
            latched + " " + gettext("Reset only when the cause is found and fixed: the lamp becomes ready to start."),
            gettext("Yes, reset fault"),
            target,
            next=request.form.get("next", ""),
        )
    try:
        view = services().controller.reset_fault(lamp_id, g.user["name"])
    except Refused as exc:
        flash(str(exc), "error")
    else:
        flash(gettext("%(name)s: fault cleared; the lamp is off and ready.", name=view.name), "ok")
    return redirect(target, code=303)


LATCHED_FIELD = "latched-"  # confirmation fields: latched-<lamp id> = the reason the admin was shown


@bp.post("/lamps/reset-all")
def reset_all():
    """After an E-stop: one confirmation listing every latched lamp with its reason, one POST that clears them all.

    The confirmation carries what it listed; a lamp latched or reset since refuses the whole reset
    (409), as does a cause that persists (the E-stop still pressed): then nothing is cleared.
    """
    controller = services().controller
    if not _confirmed():
        try:
            latched = controller.check_reset_all()
        except Refused as exc:
            return _lamps_page(status_for(exc.code), str(exc))
        names, latches = _lamp_names(), _latches()
        items = [
            gettext(
                "%(name)s, latched since %(since)s: %(reason)s",
                name=names[lamp_id],
                since=reports.local_time(latches[lamp_id]["at"]),
                reason=reason,
            )
            if lamp_id in latches
            else gettext("%(name)s: %(reason)s", name=names[lamp_id], reason=reason)
            for lamp_id, reason in latched.items()
        ]
        n = len(latched)
        return _confirm(
            ngettext("Reset the fault of %(num)s lamp?", "Reset the faults of all %(num)s latched lamps?", n),
            gettext("Reset only when each cause is found and fixed: every lamp listed becomes ready to start."),
            ngettext("Yes, reset %(num)s fault", "Yes, reset all %(num)s faults", n),
            url_for("admin.lamps"),
            items=items,
            **{LATCHED_FIELD + lamp_id: reason for lamp_id, reason in latched.items()},
        )
    expected = {
        key.removeprefix(LATCHED_FIELD): value for key, value in request.form.items() if key.startswith(LATCHED_FIELD)
    }
    try:
        views = controller.reset_all(g.user["name"], expected)
    except Refused as exc:
        return _lamps_page(status_for(exc.code), str(exc))
    flash(
        ngettext(
            "Fault cleared on %(names)s; the lamp is off and ready.",
            "Faults cleared on %(names)s; the lamps are off and ready.",
            len(views),
            names=", ".join(view.name for view in views),
        ),
        "ok",
    )
    return redirect(url_for("admin.lamps"), code=303)

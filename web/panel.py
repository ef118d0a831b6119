"""The practitioner panel: one region per lamp with presets, +5 min and Stop, a page-wide Stop all, and its live state."""

from __future__ import annotations

import functools
import math
import time
from typing import Any

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, url_for
from flask_babel import get_locale, gettext
from werkzeug.exceptions import BadRequest

from lampctl.core.errors import BadDuration, Refused
from lampctl.core.lamp import EXTEND_STEP_S, estop_reason, is_estop
from web import services
from web.auth import arrived, panel_locked, touch, unauthenticated, wants_json
from web.codes import REPLY_WAIT_S, status_for
from web.words import STATE_LABELS, clock_text, end_alarm, fault_text, guards_text, minutes_text, seconds_text

bp = Blueprint("panel", __name__, url_prefix="/panel")

# "Same patient" is offered while at least this much of the limit is left.
MIN_SAME_S = 1.0
# The countdown turns to its warning look this long before the end (the buzzer's warning too).
WARN_S = 60
# A start or an extension the page sent more than this long ago (a frozen service, a stalled
# network) is refused when it finally arrives: nobody at the couch is waiting for it any more.
STALE_ACTION_S = 5.0

__all__ = ["bp", "clock_text", "preset_label"]


def preset_label(minutes: float) -> str:
    return minutes_text(minutes)


def _running_info(view, d: dict, locked: bool) -> None:
    # What still fits is the controller's to say (S3: lampctl.core.safety); the page only words it.
    left = view.extend_left_s or 0.0
    d["extend_ok"] = view.extend_ok and not locked
    if view.extend_ok:
        more = gettext("%(left)s more may be added", left=seconds_text(left))
    elif left >= 1:  # time is left, only +5 min no longer fits: say so, not "at its limit"
        more = gettext("only %(left)s more may be added, too little for +5 min", left=seconds_text(left))
    else:
        more = gettext("at its %(limit)s limit: no more time can be added", limit=d["limit"])
    d["note"] = gettext(
        "Started by %(user)s · %(planned)s planned · %(more)s.",
        user=view.user,
        planned=seconds_text(view.planned_s or 0),
        more=more,
    )
    d["clock"] = view.remaining_s
    d["warning"] = view.remaining_s is not None and (view.planned_s or 0) > WARN_S and view.remaining_s <= WARN_S


@functools.lru_cache(maxsize=512)
def _fixed_labels(locale: str, state: str, presets: tuple[float, ...], max_minutes: float) -> tuple:
    """What a lamp's card says that only its config, its state and the page's language decide: worded
    once per language, not on every poll (each Babel lookup costs more than the rest of a lamp).
    `locale` is the key only: the words come from the request's own language, which it names."""
    labels = tuple((p, minutes_text(p)) for p in presets)
    limit = minutes_text(max_minutes)
    idle = gettext("Fault") if state == "fault" else gettext("Off")
    ready = gettext("Ready. Limit %(limit)s per session.", limit=limit)
    return str(STATE_LABELS.get(state, state)), labels, limit, idle, ready


def lamp_info(view, locked: bool = False) -> dict:
    """A lamp as the page and the state poll show it: the controller's view plus labels in plain words."""
    d = view.as_dict()
    label, presets, limit, idle, ready = _fixed_labels(
        str(get_locale()), view.state, tuple(view.presets), view.max_minutes
    )
    d["label"] = label
    d["presets"] = [{"minutes": p, "label": text} for p, text in presets]
    d["limit"] = limit
    # S24, S25: a held patient button or a tilted stand refuses a start; the buttons say so first.
    d["start_ok"] = view.state == "off" and not locked and not view.patient_pressed and not view.tilted
    d["guards"] = guards_text(view)
    d["has_guards"] = any(
        x is not None for x in (view.patient_pressed, view.tilted, view.temperature_c, view.current_a, view.guard)
    )
    d["extend_ok"] = False
    d["warning"] = False
    d["clock"] = None
    if view.state == "on":
        _running_info(view, d, locked)
    elif view.state == "cooldown":
        d["note"] = gettext("Resting after the last session; it can start again when the timer reaches 0:00.")
        d["clock"] = view.cooldown_remaining_s
    elif view.state == "fault":
        d["note"] = fault_text(view.fault_reason)
    elif view.continue_left_s is not None:
        d["note"] = gettext(
            "Ready. The same patient has %(left)s left of %(limit)s; a new patient starts afresh.",
            left=seconds_text(view.continue_left_s),
            limit=d["limit"],
        )
    else:
        d["note"] = ready
    # With no timer running the big display names the state, readable from across the room.
    d["end_alarm"] = end_alarm(view)  # how the last session ended, when that was an alarm
    # Which session that alarm was, and how long ago: a page loaded later marks it again until OK is
    # tapped on it (the tablet remembers which it acknowledged), if it is recent and still stands: the
    # lamp still latched, or a patient's stop with no session since (an admin's reset ends the others).
    standing = view.state == "fault" or view.last_end_reason == "patient"
    alarmed = (
        d["end_alarm"] is not None and standing and view.last_session_id is not None and view.last_end_mono is not None
    )
    d["alarm_session"] = view.last_session_id if alarmed else None
    d["alarm_ago_s"] = round(services().controller.now() - view.last_end_mono, 1) if alarmed else None
    d["estop"] = view.state == "fault" and is_estop(view.fault_reason)  # said by the page's E-stop banner
    d["idle_text"] = idle
    d["clock_text"] = d["idle_text"] if d["clock"] is None else clock_text(d["clock"])
    return d


def page_banners(views) -> list[dict]:
    """The page's alerts, most severe first; each with a short form for when several share the status slot.

    `views`: the lamps as the same page or poll shows them (one snapshot, one trip through the controller's lock).
    """
    s = services()
    banners = []
    estops = {v.fault_reason for v in views if v.state == "fault" and is_estop(v.fault_reason)}
    for reason in sorted(estops):
        banners.append(
            {
                "kind": "estop",
                "text": fault_text(reason),
                "short": gettext("EMERGENCY STOP: every lamp locked off until an admin resets it."),
            }
        )
    if s.firmware_status() == "lost":
        banners.append(
            {
                "kind": "firmware",
                "text": gettext(
                    "The safety controller is not answering: lamps that were on are off, and new sessions may be refused "
                    "until it is back. Tell an admin."
                ),
                "short": gettext("Safety controller not answering: lamps off. Tell an admin."),
            }
        )
    log = s.usage_log
    if getattr(log, "write_errors", 0) and getattr(log, "pending", 0):
        banners.append(
            {
                "kind": "log",
                "text": gettext(
                    "The usage log cannot be saved right now (%(num)s records waiting); lamps still work. Tell an admin.",
                    num=log.pending,
                ),
                "short": gettext("Usage log not saving (%(num)s waiting). Tell an admin.", num=log.pending),
            }
        )
    return banners


def state() -> dict:
    locked = panel_locked()
    views = services().controller.lamps()
    return {
        "lamps": [lamp_info(v, locked) for v in views],
        "firmware": services().firmware_status(),
        "banners": page_banners(views),
        "locked": locked,
        "server_time": round(time.time(), 3),
    }


def running() -> list[dict]:
    """Every lamp as the login, lock and switch pages list it: only whether it heats and how long is left (S21).

    Shown to whoever is at the tablet, logged in or not, so it carries no user names and no notes.
    """
    out = []
    for view in services().controller.lamps():
        on = view.heating
        out.append(
            {
                "id": view.id,
                "name": view.name,
                "on": on,
                "remaining_s": view.remaining_s,
                "clock_text": clock_text(view.remaining_s)
                if on and view.remaining_s is not None
                else str(STATE_LABELS["on"])
                if on
                else "",
            }
        )
    return out


def index():
    return redirect(url_for("panel.panel"))


def _question(lamp_id: str, minutes_arg: str, step: str = "choose") -> dict | None:
    """The continuation question (S18) for a preset of a lamp in its rest window, or None when it does not arise.

    "Same patient" always offers what is left: the preset, or the rest of the limit when the preset
    is longer. "New patient" takes a second, deliberate step (step="new"), which is recorded.
    """
    view = services().controller.lamp(lamp_id)  # an unknown lamp: 404 with its sentence
    minutes = _preset(view, minutes_arg)
    if view.state != "off" or view.continue_left_s is None:
        return None
    left = view.continue_left_s
    same_s = view.same_patient_s(minutes * 60)
    if same_s is None:
        return None
    return {
        "lamp": view.id,
        "name": view.name,
        "minutes": minutes,
        "label": minutes_text(minutes),
        "left": seconds_text(left),
        "limit": minutes_text(view.max_minutes),
        "same_ok": same_s >= MIN_SAME_S,
        "same_fits": same_s < minutes * 60,
        "same_label": seconds_text(same_s),
        "step": "new" if step == "new" else "choose",
    }


@bp.get("/")
def panel():
    ask = None
    if "ask" in request.args:
        try:
            ask = _question(request.args.get("ask", ""), request.args.get("minutes", ""), request.args.get("step", ""))
        except Refused as exc:
            bad = BadRequest()
            bad.sentence = str(exc)  # the error page shows this sentence
            raise bad from None
    st = state()
    # Without JavaScript the page reloads itself while a timer runs, so the countdown stays roughly true.
    live = any(l["state"] in ("on", "cooldown") for l in st["lamps"]) and ask is None
    return render_template("panel.html", refresh=live, ask=ask, lock_after_s=services().config.panel.lock_after_s, **st)


@bp.get("/state.json")
def state_json():
    return jsonify(state())


@bp.app_context_processor
def _running_lamps():
    return {"running_lamps": running}


@bp.get("/running.json")
def running_json():
    """The running lamps for the login, lock and switch pages' live list; no login needed (S21)."""
    return jsonify(lamps=running())


def _done(message: str, ok: bool = True, status: int = 200, recorded: bool | None = None):
    if wants_json():
        extra = {} if recorded is None else {"recorded": recorded}
        return jsonify(ok=ok, message=message, **extra, **state()), status
    flash(message, "ok" if ok else "error")
    # A Stop from the login page of a logged-out tablet goes back there (S21).
    return redirect(url_for("panel.panel" if g.get("user") else "auth.login"), code=303)


def _act(action, *, starts: bool = False):
    """Run an action; once the relay has switched, wait (bounded) for its record, as the API does.

    A start or an extension is refused on a locked panel; a Stop never is (and does not unlock it).
    """
    locked = panel_locked()
    try:
        if starts:
            _check_fresh(locked)
        message = action()
    except Refused as exc:
        return _done(str(exc), ok=False, status=status_for(exc.code))
    if not locked and g.get("user") is not None:
        touch()
    return _done(message, recorded=bool(services().usage_log.flush(REPLY_WAIT_S)))


def _check_fresh(locked: bool) -> None:
    if locked:
        raise Refused(
            gettext(
                "The panel is locked: tap Unlock, then your name and PIN, to start a lamp. Stop works while locked."
            ),
            "locked",
        )
    sent = request.form.get("sent_at", "")
    if not sent:
        return  # a page without JavaScript sends no time; its form post cannot sit in a script's queue
    try:
        late = time.time() - float(sent)
    except ValueError:
        raise Refused(gettext("The sent_at field must be a time in seconds."), "bad-form") from None
    if not math.isfinite(late) or late > STALE_ACTION_S:
        raise Refused(
            gettext(
                "That tap reached the lamp controller too late (the connection stalled), so it was "
                "not carried out; tap again if you still want it."
            ),
            "stale",
        )


def _new_patient() -> bool | None:
    """The form's answer to "same patient or new?": True, False, or None when it was not asked yet."""
    value = request.form.get("new_patient")
    if value is None or value == "":
        return None
    if value not in ("0", "1", "on", "true"):
        raise Refused(gettext("The new patient field must be 1 or 0."), "bad-form")
    return value in ("1", "on", "true")


def _preset(view, text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    for p in view.presets:
        if math.isclose(minutes, p):
            return p
    raise BadDuration(gettext("Choose one of %(name)s's preset durations.", name=view.name))


def _ask(question: dict):
    """Ask the continuation question: in the JSON reply for the script, or on the panel page without it."""
    if wants_json():
        html = render_template("_ask.html", ask=question)
        return jsonify(ok=False, ask=question, ask_html=html, message="", **state()), 200
    step: dict[str, Any] = {"step": "new"} if question["step"] == "new" else {}
    return redirect(url_for("panel.panel", ask=question["lamp"], minutes=f"{question['minutes']:g}", **step), code=303)


@bp.post("/lamps/<lamp_id>/start")
def start(lamp_id):
    """A preset; within the rest window first the continuation question, and for a new patient a second step."""
    try:
        new_patient = _new_patient()
        question = None
        if new_patient is None:
            question = _question(lamp_id, request.form.get("minutes", ""))
        elif new_patient and request.form.get("confirmed") != "1":
            question = _question(lamp_id, request.form.get("minutes", ""), "new")
    except Refused as exc:
        return _done(str(exc), ok=False, status=status_for(exc.code))
    if question is not None and not panel_locked():
        return _ask(question)
    fit = request.form.get("fit") == "1" and new_patient is False

    def act():
        s = services()
        view = s.controller.lamp(lamp_id)
        minutes = _preset(view, request.form.get("minutes", ""))
        seconds = minutes * 60
        # "Same patient" for a preset longer than what is left: what is left (S18).
        same_s = view.same_patient_s(seconds) if fit else None
        fitted = same_s is not None and same_s < seconds
        if fitted:
            seconds = same_s
        s.controller.start(lamp_id, seconds, g.user["name"], new_patient=bool(new_patient), arrived=arrived())
        if fitted:
            return gettext(
                "%(name)s started for %(time)s, what the same patient had left.",
                name=view.name,
                time=seconds_text(seconds),
            )
        if new_patient and view.continue_left_s is not None:
            return gettext(
                "%(name)s started for %(time)s for a new patient (recorded).",
                name=view.name,
                time=minutes_text(minutes),
            )
        return gettext("%(name)s started for %(time)s.", name=view.name, time=minutes_text(minutes))

    return _act(act, starts=True)


@bp.post("/lamps/<lamp_id>/extend")
def extend(lamp_id):
    def act():
        view = services().controller.extend(lamp_id, EXTEND_STEP_S, g.user["name"], arrived=arrived())
        return gettext("%(name)s: 5 min added, %(left)s left.", name=view.name, left=clock_text(view.remaining_s))

    return _act(act, starts=True)


# ---- Stops: from every page, whatever the login (S21), and saying what they did -------------------
def _stop_who() -> str:
    user = g.get("user")
    return user["name"] if user else unauthenticated()


def stop_text(view) -> str:
    """What one lamp's Stop did, in plain words."""
    if view.result == "ended":
        return gettext("%(name)s stopped: the session ended and the lamp is off.", name=view.name)
    if view.result == "cancelled-start":
        return gettext("%(name)s: the start was cancelled; the lamp stays off.", name=view.name)
    return gettext("%(name)s was already off.", name=view.name)


def _stop_all_details(views) -> str:
    ended = [v.name for v in views if v.result == "ended"]
    cancelled = [v.name for v in views if v.result == "cancelled-start"]
    parts = []
    if ended:
        parts.append(gettext("Sessions ended: %(names)s.", names=", ".join(ended)))
    if cancelled:
        parts.append(gettext("Starts cancelled: %(names)s.", names=", ".join(cancelled)))
    if not parts:
        parts.append(gettext("None was running."))
    return " ".join(parts)


@bp.post("/lamps/<lamp_id>/stop")
def stop(lamp_id):
    return _act(lambda: stop_text(services().controller.stop(lamp_id, _stop_who(), arrived=arrived())))


@bp.post("/stop-all")
def stop_all():
    def act():
        views = services().controller.stop_all(_stop_who(), "stop all (panel)", arrived=arrived())
        return gettext("All lamps are off.") + " " + _stop_all_details(views)

    return _act(act)


@bp.post("/estop")
def estop():
    def act():
        who = _stop_who()
        views = services().controller.estop(who, estop_reason(who, "from the panel"), arrived=arrived())
        return (
            gettext("Emergency stop: every lamp is off and locked until an admin resets it.")
            + " "
            + _stop_all_details(views)
        )

    return _act(act)

"""The practitioner panel: one region per lamp with presets, +5 min and Stop, a page-wide Stop all, and its live state."""
from __future__ import annotations

import math

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, url_for

from lampctl.errors import BadDuration, Refused
from web import services
from web.auth import wants_json
from web.codes import REPLY_WAIT_S, status_for

bp = Blueprint("panel", __name__, url_prefix="/panel")

EXTEND_S = 300
STATE_LABELS = {"off": "Off · ready", "on": "ON · heating", "cooldown": "Cooling down", "fault": "FAULT · locked off"}


def preset_label(minutes: float) -> str:
    """A button label: "10 min"; under a minute in seconds ("3 s")."""
    if minutes < 1:
        return f"{round(minutes * 60):g} s"
    return f"{minutes:g} min"


def clock_text(seconds: float | None) -> str:
    """Seconds as m:ss, rounded up so 0:00 shows only when time is really up."""
    if seconds is None:
        return "--:--"
    whole = max(0, math.ceil(seconds - 1e-6))
    return f"{whole // 60}:{whole % 60:02d}"


def lamp_info(view) -> dict:
    """A lamp as the page and the state poll show it: the controller's view plus labels."""
    d = view.as_dict()
    d["label"] = STATE_LABELS.get(view.state, view.state)
    d["presets"] = [{"minutes": p, "label": preset_label(p)} for p in view.presets]
    d["limit"] = preset_label(view.max_minutes)
    if view.state == "on":
        d["note"] = f"Started by {view.user} · {preset_label((view.planned_s or 0) / 60)} planned · limit {d['limit']}"
        d["clock"] = view.remaining_s
    elif view.state == "cooldown":
        d["note"] = "Resting after the last session; it can start again when the timer reaches 0:00."
        d["clock"] = view.cooldown_remaining_s
    elif view.state == "fault":
        d["note"] = f"{view.fault_reason}. The lamp stays off until an admin resets it."
        d["clock"] = None
    else:
        d["note"] = f"Ready. Limit {d['limit']} per session."
        d["clock"] = None
    # With no timer running the big display names the state, readable from across the room.
    d["idle_text"] = "Fault" if view.state == "fault" else "Off"
    d["clock_text"] = d["idle_text"] if d["clock"] is None else clock_text(d["clock"])
    return d


def page_banners() -> list[dict]:
    s = services()
    banners = []
    if s.firmware_status() == "lost":
        banners.append({"kind": "firmware", "text": "Link to the safety microcontroller lost: lamps that were on "
                                                     "are off, and new sessions may be refused until it is back."})
    log = s.usage_log
    if getattr(log, "write_errors", 0) and getattr(log, "pending", 0):
        banners.append({"kind": "log", "text": f"The usage log cannot be written to disk ({log.pending} records "
                                               "waiting); lamps still work. Tell an admin."})
    return banners


def state() -> dict:
    return {"lamps": [lamp_info(v) for v in services().controller.lamps()],
            "firmware": services().firmware_status(), "banners": page_banners()}


def index():
    return redirect(url_for("panel.panel"))


@bp.get("/")
def panel():
    st = state()
    # Without JavaScript the page reloads itself while a timer runs, so the countdown stays roughly true.
    live = any(l["state"] in ("on", "cooldown") for l in st["lamps"])
    return render_template("panel.html", refresh=live, **st)


@bp.get("/state.json")
def state_json():
    return jsonify(state())


def _done(message: str, ok: bool = True, status: int = 200, recorded: bool | None = None):
    if wants_json():
        extra = {} if recorded is None else {"recorded": recorded}
        return jsonify(ok=ok, message=message, **extra, **state()), status
    flash(message, "ok" if ok else "error")
    return redirect(url_for("panel.panel"), code=303)


def _act(action):
    """Run an action; once the relay has switched, wait (bounded) for its record, as the API does."""
    try:
        message = action()
    except Refused as exc:
        return _done(str(exc), ok=False, status=status_for(exc.code))
    return _done(message, recorded=bool(services().usage_log.flush(REPLY_WAIT_S)))


def _new_patient() -> bool:
    value = request.form.get("new_patient", "")
    if value not in ("", "0", "1", "on", "true"):
        raise Refused("The new patient field must be 1 or 0.", "bad-form")
    return value in ("1", "on", "true")


@bp.post("/lamps/<lamp_id>/start")
def start(lamp_id):
    def act():
        s = services()
        lamp = s.controller.lamp(lamp_id)
        try:
            minutes = float(request.form.get("minutes", ""))
        except ValueError:
            minutes = math.nan
        if not any(math.isclose(minutes, p) for p in lamp.presets):
            raise BadDuration(f"Choose one of {lamp.name}'s preset durations.")
        s.controller.start(lamp_id, minutes * 60, g.user["name"], new_patient=_new_patient())
        return f"{lamp.name} started for {preset_label(minutes)}."
    return _act(act)


@bp.post("/lamps/<lamp_id>/extend")
def extend(lamp_id):
    def act():
        view = services().controller.extend(lamp_id, EXTEND_S, g.user["name"])
        return f"{view.name}: 5 min added, {clock_text(view.remaining_s)} left."
    return _act(act)


@bp.post("/lamps/<lamp_id>/stop")
def stop(lamp_id):
    return _act(lambda: f"{services().controller.stop(lamp_id, g.user['name']).name} stopped.")


@bp.post("/stop-all")
def stop_all():
    def act():
        services().controller.stop_all(g.user["name"], "stop all (panel)")
        return "All lamps stopped."
    return _act(act)


@bp.post("/estop")
def estop():
    def act():
        user = g.user["name"]
        services().controller.estop(user, f"emergency stop by {user}")
        return "Emergency stop: every lamp is off and locked until an admin resets it."
    return _act(act)

"""The JSON API under /api: bearer tokens, roles, contract status codes and error bodies."""

from __future__ import annotations

import functools
import json

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from lampctl.core.errors import Refused, duration_from
from lampctl.core.lamp import estop_reason
from lampctl.platform.runtime import CLI_USER
from lampctl.storage import queries
from lampctl.storage.db import LogUnavailable
from lampctl.storage.store import END_REASONS, StoreError
from web import accounts, lamp_json, services
from web.auth import arrived, unauthenticated
from web.codes import REPLY_WAIT_S, status_for

bp = Blueprint("api", __name__, url_prefix="/api")
# An unknown token may be one `lampctl token create` made a moment ago: wait for the next reload.
UNKNOWN_TOKEN_WAIT_S = 1.5


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def error(status: int, code: str, message: str):
    return jsonify(error=message, code=code), status


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    resp = error(exc.status, exc.code, str(exc))
    if exc.status == 401:
        resp[0].headers["WWW-Authenticate"] = 'Bearer realm="lampctl"'
    return resp


@bp.errorhandler(Refused)
def _refused(exc: Refused):
    return error(status_for(exc.code), exc.code, str(exc))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    messages = {
        404: "No such API endpoint.",
        405: f"Method {request.method} is not allowed here.",
        413: "The request body is too large.",
    }
    code = (exc.name or "error").lower().replace(" ", "-")
    return error(exc.code or 500, code, messages.get(exc.code or 500, exc.description or exc.name))


def require_token(role: str | None = None):
    """Bearer-token auth; role "admin" further restricts the view."""

    def wrap(view):
        @functools.wraps(view)
        def inner(*args, **kwargs):
            header = request.environ.get("HTTP_AUTHORIZATION", "")  # request.headers["Authorization"], read directly
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "unauthorized", "Send an API token as 'Authorization: Bearer <token>'.")
            # From memory: a hung disk cannot delay an API Stop (S10).
            store = accounts()
            user = store.user_for_token(token.strip())
            if user is None and store.wait_fresh(UNKNOWN_TOKEN_WAIT_S):
                user = store.user_for_token(token.strip())  # made by the CLI a moment ago
            if user is None:
                raise ApiError(401, "unauthorized", "The API token is not valid.")
            if role and user["role"] != role:
                raise ApiError(403, "forbidden", f"This needs the {role} role; {user['name']} is {user['role']}.")
            g.user = user
            return view(*args, **kwargs)

        return inner

    return wrap


def _json_body() -> dict:
    """The request body as a JSON object, or a 400 with one sentence; never a 500 whatever is sent."""
    try:
        body = json.loads(request.get_data(cache=True) or b"null")
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "bad-body", 'The request body must be a JSON object such as {"minutes": 10}.')
    return body


def parse_duration(body: dict, allowed: tuple[str, ...] = ()) -> float:
    """Seconds from {"minutes": n} or {"seconds": n} (lampctl.core.errors.duration_from); other keys only from `allowed`."""
    extra = sorted(set(body) - {"minutes", "seconds", *allowed})
    if extra:
        names = " or ".join(f'"{k}"' for k in ("minutes", "seconds", *allowed))
        raise ApiError(400, "bad-body", f"Unknown field {extra[0][:40]!r}: send only {names}.")
    return duration_from(body)  # BadDuration is a Refused: 400 bad-duration or too-long


def _new_patient(body: dict) -> bool:
    value = body.get("new_patient", False)
    if not isinstance(value, bool):
        raise ApiError(400, "bad-body", '"new_patient" must be true or false.')
    return value


def _recorded() -> bool:
    """Wait (bounded) until the action's record is committed; the relay has already switched."""
    return bool(services().usage_log.flush(REPLY_WAIT_S))


@bp.get("/health")
def health():
    """No auth, no disk: lamps and firmware from the controller, the log's state from memory."""
    s = services()
    lamps = s.controller.lamps()
    firmware = s.firmware_status()
    log_health = s.usage_log.health()
    problems = [
        f"{l.name} is latched in fault ({l.fault_reason}); an admin must reset it." for l in lamps if l.state == "fault"
    ]
    if firmware == "lost":
        problems.append("The link to the safety microcontroller is lost.")
    problems += log_health["problems"]
    clock = s.clock_synchronised()
    if clock is False:
        from lampctl.platform.clocksync import describe

        problems.append(describe(False))
    if getattr(s.accounts, "reload_error", None):
        problems.append(
            f"Account changes cannot be read from the database ({s.accounts.reload_error}); "
            "logins and tokens are checked against the accounts last read."
        )
    mqtt = s.mqtt_health() if s.mqtt_health is not None else None
    if mqtt is not None:
        problems += mqtt["problems"]
    if any(l.state == "fault" for l in lamps):
        status = "fault"
    else:
        status = "degraded" if problems else "ok"
    return jsonify(
        status=status,
        problems=problems,
        lamps=[{"id": l.id, "state": l.state, "relay_on": l.relay_on} for l in lamps],
        firmware=firmware,
        clock={True: "synchronised", False: "unsynchronised", None: "unknown"}[clock],
        log={k: log_health[k] for k in ("pending", "write_errors", "dropped")},
        **({} if mqtt is None else {"mqtt": {k: mqtt[k] for k in ("connected", "backlog", "oldest_unsent_s")}}),
    )


@bp.get("/openapi.json")
def openapi():
    """The API's own OpenAPI 3.1 description (web/openapi.json); no auth, it holds no secret."""
    with bp.open_resource("openapi.json") as spec:
        return Response(spec.read(), mimetype="application/json")


@bp.get("/lamps")
@require_token()
def lamps():
    # The views are read now (relays read back); only their JSON is reused (web.lamp_json).
    return Response(lamp_json.lamps_bytes(services().controller.lamps()), mimetype="application/json")


@bp.get("/lamps/<lamp_id>")
@require_token()
def lamp(lamp_id):
    return Response(lamp_json.lamp_bytes(services().controller.lamp(lamp_id)) + b"\n", mimetype="application/json")


@bp.post("/lamps/<lamp_id>/start")
@require_token()
def start(lamp_id):
    s = services()
    s.controller.lamp(lamp_id)  # 404 before 400 for an unknown lamp
    body = _json_body()
    seconds = parse_duration(body, ("new_patient",))
    session_id, view = s.controller.start(
        lamp_id, seconds, g.user["name"], new_patient=_new_patient(body), arrived=arrived()
    )
    # A 201 means the session is recorded unless "recorded" says otherwise; a slow disk
    # delays this reply, never the lamp.
    return jsonify(session_id=session_id, lamp=view.as_dict(), recorded=_recorded()), 201


@bp.post("/lamps/<lamp_id>/extend")
@require_token()
def extend(lamp_id):
    s = services()
    s.controller.lamp(lamp_id)
    seconds = parse_duration(_json_body())
    view = s.controller.extend(lamp_id, seconds, g.user["name"], arrived=arrived())
    return jsonify(lamp=view.as_dict(), recorded=_recorded())


# ---- Stops: no credentials needed, none waited for (S21) ---------------------------------------
def stop_who() -> str:
    """S21: who a Stop is recorded under: the token's user if memory knows it (never waiting for a
    reload, never refusing), else "unauthenticated (<client address>)"."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    user = None
    if scheme.lower() == "bearer" and token.strip():
        user = accounts().user_for_token(token.strip())
    return user["name"] if user else unauthenticated()


@bp.post("/lamps/<lamp_id>/stop")
def stop(lamp_id):
    view = services().controller.stop(lamp_id, stop_who(), arrived=arrived())
    return jsonify(lamp=view.as_dict(), result=view.result, recorded=_recorded())


@bp.post("/stop-all")
def stop_all():
    views = services().controller.stop_all(stop_who(), "stop all (API)", arrived=arrived())
    return jsonify(lamps=[v.as_dict() for v in views], results={v.id: v.result for v in views}, recorded=_recorded())


@bp.post("/estop")
def estop():
    who = stop_who()
    via = "from the command line" if who == CLI_USER else "from the API"
    views = services().controller.estop(who, estop_reason(who, via), arrived=arrived())
    return jsonify(lamps=[v.as_dict() for v in views], results={v.id: v.result for v in views}, recorded=_recorded())


@bp.post("/lamps/<lamp_id>/reset")
@require_token("admin")
def reset(lamp_id):
    view = services().controller.reset_fault(lamp_id, g.user["name"])
    return jsonify(lamp=view.as_dict(), recorded=_recorded())


@bp.post("/reset-all")
@require_token("admin")
def reset_all():
    """Clear every latched fault at once (after an E-stop), by the rule of one reset; 409 and nothing cleared
    while a cause persists (the E-stop still pressed) or when no lamp is latched."""
    views = services().controller.reset_all(g.user["name"])
    return jsonify(lamps=[v.as_dict() for v in views], recorded=_recorded())


@bp.get("/sessions")
@require_token("admin")
def sessions():
    args = request.args
    reason = args.get("reason") or None
    if reason and reason not in END_REASONS:
        raise ApiError(400, "bad-query", f"reason must be one of: {', '.join(END_REASONS)}.")
    lamp = args.get("lamp") or None
    if lamp:
        services().controller.lamp(lamp)
    try:
        rows = queries.sessions(
            services().usage_log.path,
            start=args.get("from") or None,
            end=args.get("to") or None,
            lamp=lamp,
            user=args.get("user") or None,
            reason=reason,
        )
    except StoreError as exc:
        raise ApiError(400, "bad-query", str(exc)) from None
    except LogUnavailable as exc:
        raise ApiError(503, "log-unavailable", str(exc)) from None
    return jsonify(sessions=rows)

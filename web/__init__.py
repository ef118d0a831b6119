"""Flask web front end of lampctl: app factory wiring the JSON API, panel and admin pages."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, current_app, jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException

if TYPE_CHECKING:
    from lampctl.config import Config
    from lampctl.core.controller import SessionController
    from lampctl.storage.accounts import Accounts
    from lampctl.storage.store import UsageLog

SECRET_KEY_FILE = "secret.key"
# No inline script or style anywhere: the pages load web/static only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
ERROR_SENTENCES = {
    400: "The request was not understood.",
    403: "Your account may not open this page; ask an admin.",
    404: "There is no such page.",
    405: "That action is not allowed here.",
    413: "The request was too large.",
    429: "Too many attempts; wait and try again.",
}


@dataclass
class Services:
    """What the views are handed: the controller, the usage log, the config, and status probes."""

    controller: SessionController
    usage_log: UsageLog
    config: Config
    firmware_status: Callable[[], str] = lambda: "absent"
    # True synchronised, False known not to be, None cannot tell (lampctl.platform.clocksync.ClockProbe).
    clock_synchronised: Callable[[], bool | None] = lambda: True
    accounts: Accounts | None = None  # required by create_app: logins and tokens are answered from it
    # With [mqtt]: the link's state for /api/health (lampctl.fleet.mqtt.MqttLink.health); None without.
    mqtt_health: Callable[[], dict] | None = None


def services() -> Services:
    """The Services handed to create_app, for the request being served."""
    return current_app.extensions["lampctl"]


ACCOUNTS_KEY = "lampctl.accounts"  # the collector's accounts (web.fleet); a node's are its Services'


def accounts() -> Accounts:
    """The accounts of the app being served: create_app and create_fleet_app refuse an app without them."""
    extensions = current_app.extensions  # one look-up of the app: this runs on every API request
    found = extensions[ACCOUNTS_KEY] if ACCOUNTS_KEY in extensions else extensions["lampctl"].accounts
    if found is None:
        raise RuntimeError("the app was created without accounts")
    return found


def load_secret_key(directory: Path) -> str:
    """The cookie-signing key from `secret.key` next to the database, created (mode 0600) on first run."""
    from lampctl.platform.runtime import DamagedFile, write_secret_file

    path = Path(directory) / SECRET_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise DamagedFile(
            f"{path} is not a key file ({exc.__class__.__name__}): remove it and start again; a new "
            "key is made, and every tablet logs in once more."
        ) from None
    if not key:
        key = secrets.token_hex(32)
        write_secret_file(path, key + "\n")
    return key


def http_error(exc: HTTPException):
    """Every HTTP error: our body, the exception's other headers (a 405 must name the allowed methods, RFC 9110)."""
    resp = make_response(_error_reply(exc))
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            resp.headers[name] = value
    return resp


def _error_reply(exc: HTTPException):
    from web import api
    from web.auth import wants_json

    status = exc.code or 500
    if request.path.startswith("/api/"):
        return api._http_error(exc)  # the API's own JSON error bodies
    message = getattr(exc, "sentence", None) or ERROR_SENTENCES.get(status, exc.description)
    if wants_json():
        return jsonify(error=message, code=(exc.name or "error").lower().replace(" ", "-")), status
    return render_template("error.html", status=status, title=exc.name, message=message), status


# Every reply carries these unless its view set its own; static files may be cached, nothing else
# may (lamp states and logs must never come from a cache, nor the back button after logout).
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)
NO_STORE = ("Cache-Control", "no-store")
_MISSING = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS)


class SecurityHeaders:
    """WSGI middleware: SECURITY_HEADERS (and NO_STORE off /static/) on every reply whose view did
    not set its own, error replies and werkzeug's own included.

    Added to the reply's plain list of headers as it starts, in one pass over the names it has:
    as an after_request hook on werkzeug's Headers each header cost a lookup by name and a
    checked add, 5 % of a GET /api/lamps in process.
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        cacheable = environ.get("PATH_INFO", "").startswith("/static/")

        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers.extend([(name, value) for lower, name, value in _MISSING if lower not in present])
            if not cacheable and "cache-control" not in present:
                headers.append(NO_STORE)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


def create_app(services: Services, test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=64 * 1024,
        SESSION_COOKIE_NAME="lampctl_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        # A shift at the couch; after that the tablet asks for the PIN again.
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        LOG_PAGE_SIZE=50,
    )
    # Mark the login cookie Secure when the panel is served over HTTPS (service.secure_cookies).
    app.config["SESSION_COOKIE_SECURE"] = bool(getattr(services.config.service, "secure_cookies", False))
    if test_config:
        app.config.update(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(Path(services.config.service.database).parent)
    app.extensions["lampctl"] = services
    from web.login_cookie import LoginCookieSessions

    # S22: no wall-clock age on the cookie; the API answers bearer tokens and opens no cookie session.
    app.session_interface = LoginCookieSessions(cookieless="/api/")

    from web import admin, api, auth, i18n, panel

    i18n.init_app(app)
    auth.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(panel.bp)
    app.register_blueprint(admin.bp)
    app.add_url_rule("/", endpoint="index", view_func=panel.index)

    app.wsgi_app = SecurityHeaders(app.wsgi_app)  # type: ignore[method-assign]

    # Registered last so these replace the API's routing-error handlers, which answer JSON only under /api.
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(404, http_error)
    app.register_error_handler(405, http_error)
    return app

"""The browser's login cookie: signed, but with no timestamp a wall-clock step could make "too old" or "from the future" (S22)."""

from __future__ import annotations

from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature, URLSafeSerializer


class LoginCookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session without its timestamp check.

    Flask refuses a cookie whose signing time is older than PERMANENT_SESSION_LIFETIME
    or later than now, on the wall clock: a Pi that boots at 1970 and is stepped by NTP,
    or a clock 2 s fast stepped back, logged the tablet out. The cookie now carries the
    login id, and the login's age is kept by the server on the monotonic clock
    (lampctl.storage.accounts.Accounts.login_expired). The browser is told Max-Age, which it
    counts from its own receipt and which takes precedence over the Expires date (from the
    Pi's wall clock) that Werkzeug adds beside it (RFC 6265, 5.3).

    Paths under `cookieless` (the node's bearer-token API, "/api/") get no cookie session at
    all: nothing there reads one, and neither the signer nor a Set-Cookie is made for them.
    """

    def __init__(self, cookieless: str | None = None) -> None:
        self.cookieless = cookieless

    def get_signing_serializer(self, app):
        if not app.secret_key:
            return None
        return URLSafeSerializer(
            app.secret_key,
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method},
        )

    def open_session(self, app, request):
        if self.cookieless is not None and request.path.startswith(self.cookieless):
            return None  # Flask's NullSession: read as empty, refused if written, never saved
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        value = request.cookies.get(self.get_cookie_name(app))
        if not value:
            return self.session_class()
        try:
            return self.session_class(serializer.loads(value))
        except BadSignature:  # a forged cookie, another key, or one signed with Flask's timestamp
            return self.session_class()

    def save_session(self, app, session, response):
        """Flask's save_session, with Max-Age in place of an Expires date."""
        name, path, domain = self.get_cookie_name(app), self.get_cookie_path(app), self.get_cookie_domain(app)
        options = dict(
            domain=domain,
            path=path,
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            httponly=self.get_cookie_httponly(app),
        )
        if session.accessed:
            response.vary.add("Cookie")
        if not session:
            if session.modified:
                response.delete_cookie(name, **options)
                response.vary.add("Cookie")
            return
        if not self.should_set_cookie(app, session):
            return
        max_age = int(app.permanent_session_lifetime.total_seconds()) if session.permanent else None
        response.set_cookie(name, self.get_signing_serializer(app).dumps(dict(session)), max_age=max_age, **options)
        response.vary.add("Cookie")

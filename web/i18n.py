"""The pages in the practitioner's language: English, Simplified Chinese, German (browser's choice or a cookie)."""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, request
from flask_babel import Babel, get_locale
from werkzeug.exceptions import NotFound

from web.params import safe_next

bp = Blueprint("i18n", __name__)

# (code, the language's own name). Catalogs live in web/translations/<code>/LC_MESSAGES/messages.mo.
LANGUAGES = [("en", "English"), ("zh", "中文"), ("de", "Deutsch")]
CODES = [code for code, _ in LANGUAGES]
COOKIE = "lampctl_lang"
COOKIE_AGE_S = 400 * 24 * 3600  # a tablet keeps its language for good


def select_locale() -> str:
    chosen = request.cookies.get(COOKIE)
    if chosen in CODES:
        return chosen
    return request.accept_languages.best_match(CODES) or "en"


@bp.get("/language/<code>")
def language(code: str):
    """Keep a language on this device (a cookie), then go back where the link was."""
    if code not in CODES:
        raise _unknown(code)
    resp = redirect(safe_next(request.args.get("next")), code=303)
    resp.set_cookie(
        COOKIE,
        code,
        max_age=COOKIE_AGE_S,
        httponly=True,
        samesite="Strict",
        secure=current_app.config["SESSION_COOKIE_SECURE"],
    )
    return resp


class _UnknownLanguage(NotFound):
    """A 404 whose page names the languages there are (web._error_reply shows its `sentence`)."""

    def __init__(self, sentence: str) -> None:
        super().__init__()
        self.sentence = sentence


def _unknown(code: str) -> NotFound:
    return _UnknownLanguage(f"There is no language {code!r}; choose one of: {', '.join(CODES)}.")


def init_app(app) -> None:
    Babel(app, locale_selector=select_locale, default_translation_directories="translations")
    app.register_blueprint(bp)

    @app.context_processor
    def _language_globals():
        return {"page_lang": str(get_locale() or "en").replace("_", "-"), "languages": LANGUAGES}

"""Whole numbers on the panel (minutes, seconds) read as Babel writes them, without loading its locale data below 1000."""

from __future__ import annotations

import babel.numbers
import pytest
from flask import Flask
from flask_babel import Babel

from web import words
from web.i18n import CODES

# Below 1000, at the groupings (1000, 10000: some locales group only from five digits) and past them.
FIGURES = [0, 1, 7, 59, 60, 999, 1000, 1440, 9999, 10000, 123456]


def _app(code: str) -> Flask:
    app = Flask(__name__)
    Babel(app, locale_selector=lambda: code)
    return app


@pytest.mark.parametrize("code", CODES)
def test_a_whole_number_reads_as_babel_writes_it_in_every_panel_language(code):
    with _app(code).test_request_context():
        got = {n: words.number(n) for n in FIGURES}
    assert got == {n: babel.numbers.format_decimal(n, locale=code) for n in FIGURES}


def test_the_panels_minutes_and_seconds_leave_babel_s_locale_data_unloaded(monkeypatch):
    # Babel's formatting is what loads its locale data (4-5 MiB kept for the service's life).
    called: list[int] = []
    monkeypatch.setattr(words, "format_decimal", lambda n: called.append(n) or str(n))
    with _app("de").test_request_context():
        texts = [words.minutes_text(m) for m in (0.5, 1.25, 10, 20, 60)] + [words.seconds_text(s) for s in (3, 297)]
        assert texts == ["30 s", "1 min 15 s", "10 min", "20 min", "60 min", "3 s", "4 min 57 s"]
        assert called == []
        words.number(1440)  # past 999 Babel groups the digits as the locale does
    assert called == [1440]

"""Query parameters of the pages, one rule each: numbers (?page=), so no value can reach SQLite as an
overflow (a 500), and where to go next (?next=), so no link leads off this site."""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

from flask import url_for

# Far past any log a clinic keeps (100 events a page), and small enough that page x page size
# stays inside SQLite's 64-bit OFFSET.
MAX_PAGE = 1_000_000


def page_number(args, name: str = "page") -> int | None:
    """The 1-based page named in the query (1 when absent or empty), or None when it is not a whole number
    from 1 to MAX_PAGE: the caller answers 400 with a sentence."""
    text = (args.get(name) or "").strip()
    if not text:
        return 1
    # isascii: int() would also read Arabic-Indic or full-width digits, and any number of them.
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_PAGE))):
        return None
    page = int(text)
    return page if 1 <= page <= MAX_PAGE else None


def safe_next(target: str | None) -> str:
    """Only a path on this site: never redirect to another host after a login.

    Control characters and whitespace are refused before parsing, because Werkzeug strips
    tabs and CR/LF from the Location header after this check: "/", TAB, "/evil" would become "//evil".
    """
    fallback = url_for("panel.panel")
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
        return fallback
    if any(c == "\\" or c.isspace() or unicodedata.category(c)[0] in "CZ" for c in target):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return fallback
    return target

"""Number query parameters of the pages (?page=): one rule, so no value can reach SQLite as an overflow (a 500)."""
from __future__ import annotations

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

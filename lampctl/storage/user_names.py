"""User names: what a name may hold, the one form it is kept in, and the key under which two names are one person.

A clinic's staff are "Dr. Müller", "王医生" or "maria schmidt": letters of any script, digits,
spaces and . - ' _ (the underscore because older versions allowed it and databases hold such
names). Two names that differ only in case, or only in how Unicode spells an accent, are the
same person: `name_key` is the one place that decides it, for adding a user, for looking a
name up at login, and for the login lockout of a name (web.auth.LoginGuard).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from lampctl.storage.db import StoreError

MAX_CHARS = 32
PUNCTUATION = " .-'_"
ALLOWED = "letters, digits, spaces and . - ' _"
# A phone or tablet keyboard types the apostrophe of "O'Brien" as the typographic one.
_SAME_CHAR = str.maketrans({"\u2019": "'"})
# Who the records name when no user acted (lampctl.core.controller, lampctl.service, lampctl.fleet.commands,
# web.auth.unauthenticated): a user of that name would make the log say what did not happen.
RESERVED = ("system", "E-stop button", "mqtt", "unauthenticated")


class NameRefused(StoreError):
    """A user name the rule refuses; str() is one sentence, `why` and `params` let a page say it in its language."""

    def __init__(self, why: str, sentence: str, **params: str):
        super().__init__(sentence)
        self.why, self.params = why, params


def normal_form(name: str) -> str:
    """The form a name is kept and compared in: Unicode NFC (an accent typed as two code points is one)."""
    return unicodedata.normalize("NFC", name.translate(_SAME_CHAR))


def name_key(name: str) -> str:
    """The key under which two names are the same person: NFC, case folded (Maria = maria = MARIA), trimmed."""
    folded = normal_form(name.strip()).casefold()
    return unicodedata.normalize("NFC", folded)  # case folding may leave a string that is no longer NFC


def _shown_char(char: str) -> str:
    """A character for a sentence: quoted if it can be seen, else its code point (a control character, a tab)."""
    return repr(char) if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"


def _first_refused(text: str) -> str | None:
    """The first character the rule refuses: letters (L*), combining marks after a letter (M*: Hindi, Thai),
    decimal digits of any script (Nd), and PUNCTUATION; anything else (control characters, other spaces,
    symbols, emoji) is refused."""
    previous = ""
    for char in text:
        kind = unicodedata.category(char)
        ok = kind[0] == "L" or kind == "Nd" or char in PUNCTUATION or (kind[0] == "M" and previous[:1] in ("L", "M"))
        if not ok:
            return char
        previous = kind
    return None


def user_name(name: object) -> str:
    """The name as it is kept (NFC), or NameRefused with one sentence saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise NameRefused("empty", f"Enter a name: {ALLOWED}, at most {MAX_CHARS} characters.", most=str(MAX_CHARS))
    text = normal_form(name)
    shown = repr(text if len(text) <= 40 else text[:40] + "…")
    bad = _first_refused(text)
    if bad is not None:
        raise NameRefused(
            "bad-char",
            f"A name may hold {ALLOWED} only: {shown} has {_shown_char(bad)}.",
            name=shown,
            char=_shown_char(bad),
        )
    if len(text) > MAX_CHARS:
        raise NameRefused(
            "too-long",
            f"A name may have at most {MAX_CHARS} characters: {shown} has {len(text)}.",
            name=shown,
            most=str(MAX_CHARS),
            count=str(len(text)),
        )
    if text != text.strip(" "):
        raise NameRefused("edge-space", f"A name may not begin or end with a space: {shown}.", name=shown)
    if "  " in text:
        raise NameRefused("double-space", f"A name may not hold two spaces in a row: {shown}.", name=shown)
    if not any(unicodedata.category(c)[0] == "L" or unicodedata.category(c) == "Nd" for c in text):
        raise NameRefused("no-letter", f"A name needs at least one letter or digit: {shown} has none.", name=shown)
    if name_key(text) in {name_key(r) for r in RESERVED}:
        raise NameRefused(
            "reserved", f"{shown} is how the records name the system, not a person; choose another name.", name=shown
        )
    return text


def taken(name: str, existing: Iterable[str]) -> None:
    """NameRefused if a user already has this name, or one that differs only in case or Unicode spelling."""
    key = name_key(name)
    for other in existing:
        if other == name:
            raise NameRefused("taken", f"A user named {other!r} already exists.", existing=repr(other))
        if name_key(other) == key:
            raise NameRefused(
                "taken-case",
                f"A user named {other!r} already exists; {name!r} differs only in "
                "case, and names count as the same whatever their case.",
                existing=repr(other),
                name=repr(name),
            )


def matching(existing: Iterable[str], typed: str) -> list[str]:
    """The stored names that `typed` means: itself when it is one, else every name with its key.

    More than one only where a database from before this rule holds names that differ only in
    case ("Maria" and "maria"): each is still found when typed exactly, neither by a third spelling.
    """
    names = list(existing)
    if not isinstance(typed, str):
        return []
    if typed in names:
        return [typed]
    key = name_key(typed)
    return [n for n in names if name_key(n) == key]

"""The committed catalogs: every panel string translated in each language, and the .mo files built from the .po."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from web.i18n import CODES

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "web" / "translations"


def _source_ids() -> set[str]:
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "lazy_gettext": None}
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(ROOT / "web", method_map, keywords=keywords):
        found.add(message[0] if isinstance(message, (tuple, list)) else message)
    return found


def _pairs(catalog) -> dict:
    return {str(m.id): str(m.string) for m in catalog if m.id}


@pytest.mark.parametrize("code", [c for c in CODES if c != "en"])
def test_i18n_catalog_translates_every_string_and_its_mo_is_current(code):
    folder = TRANSLATIONS / code / "LC_MESSAGES"
    with (folder / "messages.po").open("rb") as fh:
        po = read_po(fh, locale=code)
    translated = {(m.id[0] if isinstance(m.id, tuple) else m.id) for m in po if m.id and m.string and not m.fuzzy}
    missing = _source_ids() - translated
    assert not missing, f"{code}: untranslated strings (see web/translations/README.md): {sorted(missing)[:5]}"
    built = io.BytesIO()
    write_mo(built, po)
    built.seek(0)
    with (folder / "messages.mo").open("rb") as fh:
        committed = read_mo(fh)
    assert _pairs(read_mo(built)) == _pairs(committed), (
        f"{folder}/messages.mo is older than its .po: run pybabel compile -d web/translations"
    )

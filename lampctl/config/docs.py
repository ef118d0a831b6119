"""The settings' docs rendered from their rows (lampctl.config.SETTINGS): the README's table, config.toml's comments.

Both are generated text: `scripts/config_docs.py --write` rewrites them from the schema, and
tests/test_config_docs.py fails while README.md or config.toml differ from what this renders.
In config.toml only the keys, their values and their order are written by hand; every comment
is rendered here.
"""

from __future__ import annotations

import re
import textwrap

from lampctl import config

README_START = "<!-- settings table: generated from lampctl/config/__init__.py by scripts/config_docs.py --write -->"
README_END = "<!-- end of the generated settings table -->"
COMMENT_COLUMN = 31  # where a key's comment starts in config.toml
WIDTH = 112  # config.toml's longest line


def _literal(value) -> str:
    """A value as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return config._shown(value) if isinstance(value, int) else repr(value)


def default_words(row: config.Setting) -> str:
    """The default as the README shows it."""
    if row.default_words:
        return row.default_words
    if row.default is config.REQUIRED:
        return "required"
    if row.default is None:
        return "none"
    return f"`{_literal(row.default)}`"


def allowed(row: config.Setting) -> str:
    """What a key accepts, in words (markdown), its constraints included."""
    unit = f" {row.unit}" if row.unit else ""
    if row.kind == "bool":
        parts = ["`true` or `false`"]
    elif row.kind == "pin":
        parts = [f"BCM {config.PIN.short()}"]
    elif row.at_most:  # bounded by its own range and, within it, by another key
        low = f"greater than {config._shown(row.span.low)}" if row.span.low_open else f"{row.span.low} or more"
        parts = [f"{low}, at most `{row.at_most}`"]
        if row.kind == "minutes":
            parts = [f"1-{row.max_len} distinct values, each {parts[0]}"]
    elif row.kind in ("int", "number"):
        parts = [row.span.short() + unit]
    elif row.choices:
        parts = ["one of " + ", ".join(f"`{c}`" for c in row.choices)]
    elif row.range is not None:
        parts = [f"{row.form}, port {row.range.short()}"]
    else:
        parts = [row.form]
    if row.reason:
        parts[0] += f" ({row.reason})"
    parts += config.notes(row.name)
    return ", ".join(p for p in parts if p)


def readme_table() -> str:
    """The README's configuration table, one row per setting, and the tables' counts."""
    lines = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for row in config.SETTINGS:
        lines.append(f"| `{row.name}` | {default_words(row)} | {allowed(row)} | {row.doc} |")
    many = [f"`[[{t.name}]]`: one table per lamp, {t.many[0]} to {t.many[1]}" for t in config.TABLES if t.many]
    optional = [f"`[{t.name}]`" for t in config.TABLES if not t.many]
    lines += [
        "",
        f"{'; '.join(many)}. {', '.join(optional)}: optional tables, each key with its default "
        "(a key marked required is required when its table is there).",
    ]
    return "\n".join(lines)


def render_readme(text: str) -> str:
    """README.md with the text between its two markers replaced by readme_table()."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {README_START!r} ... {README_END!r}")
    return text[: start + len(README_START)] + "\n" + readme_table() + "\n" + text[end:]


# ---- config.toml ------------------------------------------------------------------------------
_TABLE_LINE = re.compile(r"^(# ?)?\[(\[?)([a-z_]+)\]?\]\s*$")
_KEY_LINE = re.compile(r"^(# ?)?([a-z_]+) = (.*)$")


def header() -> list[str]:
    return [
        "# lampctl configuration. Validate with: lampctl check-config --config config.toml",
        "# Unknown keys are errors (a typo must not silently drop a safety setting), and so is any",
        "# number that is not finite or outside its range (S14): one line naming the key, exit 2.",
        f"# Pins are BCM GPIO numbers {config.PIN.short()}, each used once. At most {config.MAX_LAMPS} [[lamps]]. "
        "Ranges include both ends unless marked.",
        "# Keys left out take their defaults; the README's configuration table lists every key.",
    ]


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


def comment(row: config.Setting) -> str:
    """A key's comment in config.toml: what it does and what it accepts.

    Pins go without their range (the header says it once), as do a bare form ("a file path")
    and true or false; a key that may be left out with nothing in its place says so.
    """
    text = row.doc
    if row.default is None and not row.default_words:
        text += "; optional"
    if row.kind not in ("bool", "pin") and not (row.kind == "text" and not (row.choices or row.pattern or row.range)):
        text += f"; {allowed(row)}"
    return _plain(text)


def _wrap(text: str, initial: str, subsequent: str) -> list[str]:
    # A number keeps its unit on its line ("0-10 s"): a no-break space, which textwrap does not split at.
    text = re.sub(r"(\d) (s|min|h|records)\b", "\\1\u00a0\\2", text)
    lines = textwrap.wrap(text, WIDTH, initial_indent=initial, subsequent_indent=subsequent, break_on_hyphens=False)
    return [line.replace("\u00a0", " ") for line in lines]


def _split_value(rest: str) -> str:
    """The value of `key = value  # comment`: up to the first # outside a string."""
    quote = None
    escaped = False
    for i, ch in enumerate(rest):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return rest[:i].rstrip()
    return rest.rstrip()


def render_config_toml(text: str) -> str:
    """config.toml with every comment rendered from the schema; keys, values and their order kept.

    The header, then each table's doc above its first header, then each key's comment on its
    first line (the second lamp's keys carry none). A commented-out table or key (`# [mqtt]`,
    `# buzzer_pin = 23`) is documented as any other. Any other comment line is dropped.
    """
    rows = {row.name: row for row in config.SETTINGS}
    tables = {t.name: t for t in config.TABLES}
    out = [*header(), ""]
    table = None
    documented: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if out[-1] != "":
                out.append("")
            continue
        if m := _TABLE_LINE.match(line):
            name = m.group(3)
            if name not in tables:
                raise ValueError(f"config.toml line {number}: there is no table [{name}] in the schema")
            table = f"{name}[]" if m.group(2) else name
            if name not in documented:
                documented.add(name)
                out += _wrap(_plain(tables[name].doc), "# ", "# ")
            out.append(line.rstrip())
            continue
        m = _KEY_LINE.match(line)
        if m and table and f"{table}.{m.group(2)}" in rows:
            row = rows[f"{table}.{m.group(2)}"]
            left = f"{m.group(1) or ''}{row.key} = {_split_value(m.group(3))}"
            if row.name in documented:
                out.append(left)
                continue
            documented.add(row.name)
            out += _wrap(comment(row), left.ljust(COMMENT_COLUMN - 2) + "  # ", " " * COMMENT_COLUMN + "# ")
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment not rendered here: rendered afresh, or gone
        raise ValueError(f"config.toml line {number}: {line[:60]!r} is not a key of the schema's [{table}]")
    while out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"

"""Property tests of config parsing (S14): any document gives a Config or a ConfigError, and any accepted Config
keeps every documented range."""

from __future__ import annotations

import copy
import json
import math
import tomllib
from datetime import date, datetime, time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lampctl import config as config_mod
from tests.test_config import FULL_CONFIG

PATH = Path("/etc/lampctl/config.toml")
BASE = tomllib.loads(FULL_CONFIG)
PROPS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

# The documented ranges, written out again on purpose: an oracle independent of config.RANGES.
DOCUMENTED = {
    ("firmware", "watchdog_s"): (0.2, 10),
    ("firmware", "grace_s"): (0, 10),
    ("firmware", "reply_timeout_s"): (0.05, 5),
    ("safety", "heartbeat_s"): (0.05, 5),
    ("service", "log_queue"): (100, 1_000_000),
    ("panel", "lock_after_s"): (0, 86400),
    ("lamp", "cooldown_s"): (0, 3600),
    ("lamp", "rest_window_s"): (0, 86400),
    ("lamp", "bulb_life_h"): (1, 100_000),
    ("lamp", "max_minutes"): (1, 60),
}
KNOWN = {
    "service": ["bind", "database", "pin_factory", "log_queue", "secure_cookies"],
    "safety": ["estop_pin", "heartbeat_s", "indicator_pin"],
    "firmware": ["port", "watchdog_s", "grace_s", "reply_timeout_s"],
    "panel": ["lock_after_s"],
    "lamp": [
        "id",
        "name",
        "relay_pin",
        "active_high",
        "max_minutes",
        "default_minutes",
        "presets",
        "cooldown_s",
        "feedback_pin",
        "bulb_life_h",
        "rest_window_s",
        "buzzer_pin",
        "indicator_pin",
    ],
}

numbers = st.one_of(
    st.floats(min_value=0, max_value=100),
    st.integers(min_value=-5, max_value=100),
    st.floats(),
    st.integers(),
    st.sampled_from(
        [0, 0.05, 0.1, 0.2, 1, 2.5, 5, 10, 60, 61, 3600, 86400, 1e9, -0.0, math.nan, math.inf, -math.inf, 10**400]
    ),
)
scalars = st.one_of(numbers, st.booleans(), st.text(max_size=12), st.dates(), st.datetimes(), st.times())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def documents(draw) -> dict:
    """The valid full config with a few keys set to numbers or to any TOML value, or dropped."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.sampled_from(["service", "safety", "firmware", "panel", "lamp", "top"]))
        if where == "top":
            target, keys = doc, ["service", "safety", "firmware", "panel", "lamps"]
        elif where == "lamp":
            lamps = doc.get("lamps")
            if not isinstance(lamps, list) or len(lamps) < 2:
                continue
            target, keys = lamps[draw(st.integers(0, 1))], KNOWN["lamp"]
        else:
            target, keys = doc.setdefault(where, {}), KNOWN[where]
        if not isinstance(target, dict):
            continue
        key = draw(st.sampled_from(keys) | st.text(max_size=6))
        action = draw(st.sampled_from(["number", "number", "number", "value", "drop"]))
        if action == "drop":
            target.pop(key, None)
        elif key == "presets" and action == "number":
            target[key] = draw(st.lists(numbers, min_size=0, max_size=9))
        else:
            target[key] = draw(numbers if action == "number" else values)
    return doc


NUMERIC = [(t, k) for (t, k) in DOCUMENTED] + [("lamp", "default_minutes"), ("lamp", "presets")]


@st.composite
def tuned(draw) -> dict:
    """The valid full config with one to three of its numbers changed: many are accepted, at the edges."""
    doc = copy.deepcopy(BASE)
    for table, key in draw(st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=3)):
        target = doc["lamps"][draw(st.integers(0, 1))] if table == "lamp" else doc[table]
        target[key] = draw(st.lists(numbers, min_size=1, max_size=3) if key == "presets" else numbers)
    return doc


def toml_text(doc: dict) -> str:
    """A minimal TOML writer for the generated documents (tables, arrays of tables, inline values)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not _is_table(v) and not _is_tables(v)]
    for name, value in doc.items():
        if _is_table(value):
            lines += [f"[{_key(name)}]"] + [f"{_key(k)} = {_value(v)}" for k, v in value.items()]
        elif _is_tables(value):
            for table in value:
                lines += [f"[[{_key(name)}]]"] + [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _is_table(v) -> bool:
    return isinstance(v, dict)


def _is_tables(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(t, dict) for t in v)


def _key(k: str) -> str:
    return json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (datetime, date, time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"


def accepted(raw: bytes):
    """The Config, or None for a ConfigError; anything else raised fails the test."""
    try:
        return config_mod.from_bytes(raw, PATH)
    except config_mod.ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(PATH)) and len(str(exc)) < 400
        return None


def test_s14_generated_toml_round_trips_through_the_writer():
    assert tomllib.loads(toml_text(BASE)) == BASE
    assert accepted(toml_text(BASE).encode()) is not None


@PROPS
@given(documents())
def test_s14_any_toml_document_gives_config_or_config_error(doc):
    accepted(toml_text(doc).encode())


@PROPS
@given(st.binary(max_size=300) | st.text(alphabet='[]{}=".,:#\n 0123456789aefilnrstux-_', max_size=200).map(str.encode))
def test_s14_any_bytes_give_config_or_config_error(raw):
    accepted(raw)


def test_s14_pathological_toml_gives_config_error():
    for raw in ["a = " + "1" * 5000, "a = " + "[" * 5000 + "]" * 5000, "\xff", "[lamps]\n", "lamps = 3"]:
        assert accepted(raw.encode("utf-8", "surrogateescape") if raw != "\xff" else b"\xff") is None


@PROPS
@given(documents() | tuned())
def test_s14_every_accepted_config_keeps_the_documented_ranges(doc):
    cfg = accepted(toml_text(doc).encode())
    if cfg is None:
        return
    tables = {"service": cfg.service, "safety": cfg.safety, "firmware": cfg.firmware, "panel": cfg.panel}
    for (table, key), (low, high) in DOCUMENTED.items():
        for owner in cfg.lamps if table == "lamp" else [tables[table]]:
            if owner is None:
                continue
            value = getattr(owner, key)
            assert math.isfinite(value) and low <= value <= high, (table, key, value)
    if cfg.firmware is not None:
        assert cfg.safety.heartbeat_s < cfg.firmware.watchdog_s / 2
    pins = [cfg.safety.estop_pin, cfg.safety.indicator_pin]
    for lamp in cfg.lamps:
        assert all(math.isfinite(m) and 0 < m <= lamp.max_minutes for m in (lamp.default_minutes, *lamp.presets))
        pins += [lamp.relay_pin, lamp.feedback_pin, lamp.buzzer_pin, lamp.indicator_pin]
    pins = [p for p in pins if p is not None]
    assert len(pins) == len(set(pins)) and all(0 <= p <= 53 for p in pins)
    assert 0 <= cfg.service.port <= 65535 and isinstance(cfg.service.secure_cookies, bool)


def _row(table: str, key: str):
    return config_mod.setting(f"lamps[].{key}" if table == "lamp" else f"{table}.{key}")


@PROPS
@given(st.sampled_from(sorted(DOCUMENTED)), st.data())
def test_config_schema_each_row_accepts_its_documented_range_and_refuses_the_rest(where, data):
    # The rows against the ranges written out above: any number strictly inside is taken as it is, any
    # finite number outside is refused with one line naming the key and the value.
    low, high = DOCUMENTED[where]
    row = _row(*where)
    reader = config_mod._Reader(PATH)
    integer = row.kind == "int"
    inside = data.draw(
        st.integers(low + 1, high - 1) if integer else st.floats(low, high, exclude_min=True, exclude_max=True)
    )
    assert reader.value(row.name, row, inside) == inside
    outside = data.draw(
        st.integers(max_value=low - 1) | st.integers(min_value=high + 1)
        if integer
        else st.floats(max_value=low, exclude_max=True, allow_infinity=False)
        | st.floats(min_value=high, exclude_min=True, allow_infinity=False)
    )
    try:
        reader.value(row.name, row, outside)
    except config_mod.ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and f": {row.name}: " in message and config_mod._shown(outside) in message
    else:
        raise AssertionError(f"{row.name} accepted {outside!r}, outside {low}..{high}")


def test_config_schema_every_default_is_taken_by_its_own_row():
    reader = config_mod._Reader(PATH)
    for row in config_mod.SETTINGS:
        if row.default not in (None, config_mod.REQUIRED):
            assert reader.value(row.name, row, row.default) == row.default, row.name

"""What the collector takes from the broker: each field of a record, a lamp state and a node status, checked.

A field that fails is refused with one sentence naming it; nothing unchecked reaches the
central log or the fleet pages, so no message a node (or anyone who can publish) sends can
make a page fail for as long as it is stored or retained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from lampctl.storage.db import END_REASONS, iso

# A payload larger than this is refused unread: a session JSON is a few hundred bytes.
MAX_PAYLOAD = 64 * 1024
# Far above any lamp's ceiling (an hour, S3): a longer duration is a damaged record, not a session.
MAX_DURATION_S = 86_400.0
MAX_ID = 2**63 - 1  # SQLite's largest integer
NAME_CHARS = 64  # lamp ids, lamp and user names, who acted
TEXT_CHARS = 1000  # an event's why, a fault's reason
TIME_CHARS = 40
# lampctl.core.lamp.LampState's values, the MQTT contract's list (not imported: the collector's
# import chain stays short; tests/test_fleet_bad_input.py holds the two equal).
STATES = ("off", "on", "cooldown", "fault")
STATUSES = ("online", "offline")


class BadField(ValueError):
    """One field (or the whole message) refused; str() is one sentence naming it."""


def _shown(value) -> str:
    return repr(value)[:40]


def parse(payload: bytes) -> object:
    """A message's JSON, or BadField: too large, not UTF-8, not JSON, or nested past what the parser takes."""
    if len(payload) > MAX_PAYLOAD:
        raise BadField(f"the message is {len(payload)} bytes, more than the {MAX_PAYLOAD} taken")
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadField("the message is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise BadField(f"the message is not JSON ({str(exc)[:60]})") from None


def whole(key: str, value, *, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadField(f"{key!r} has the wrong type: a whole number is needed, got {_shown(value)}")
    if not low <= value <= MAX_ID:
        raise BadField(f"{key!r} must be a whole number from {low}, got {_shown(value)}")
    return value


def seconds(key: str, value, *, high: float = MAX_DURATION_S) -> float:
    """A finite number of seconds from 0 to `high` (JSON's NaN and Infinity are refused here)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BadField(f"{key!r} has the wrong type: a number of seconds is needed, got {_shown(value)}")
    if not (math.isfinite(value) and 0 <= value <= high):
        raise BadField(f"{key!r} must be a number of seconds from 0 to {high:g}, got {_shown(value)}")
    return value


def text(key: str, value, *, chars: int = NAME_CHARS, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise BadField(f"{key!r} has the wrong type: text is needed, got {_shown(value)}")
    if len(value) > chars or (not value and not empty):
        raise BadField(f"{key!r} must be text of {0 if empty else 1} to {chars} characters, got {len(value)}")
    try:
        value.encode("utf-8")  # a lone surrogate ("\ud800" in JSON) can be neither stored nor shown
    except UnicodeEncodeError:
        raise BadField(f"{key!r} holds a character that is not Unicode text") from None
    if "\x00" in value:
        raise BadField(f"{key!r} holds a NUL character")
    return value


def timestamp(key: str, value) -> str:
    """An ISO-8601 time with its zone, kept as the database's one format (UTC, milliseconds) so it sorts."""
    if not isinstance(value, str):
        raise BadField(f"{key!r} has the wrong type: an ISO-8601 time is needed, got {_shown(value)}")
    try:
        if len(value) > TIME_CHARS:
            raise ValueError
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError
        return iso(moment)
    except (ValueError, OverflowError):
        raise BadField(f"{key!r} must be an ISO-8601 time with its time zone, got {_shown(value)}") from None


def choice(key: str, value, options: tuple[str, ...]) -> str:
    if value not in options:
        raise BadField(f"{key!r} must be one of {', '.join(options)}, got {_shown(value)}")
    return value


def flag(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise BadField(f"{key!r} has the wrong type: true or false is needed, got {_shown(value)}")
    return value


# Each column of a record and what it must hold (None is allowed where the column may be empty).
RECORD_FIELDS: dict[str, Callable[[str, Any], object]] = {
    "id": whole,
    "lamp_id": text,
    "user": text,
    "who": text,
    "why": lambda k, v: text(k, v, chars=TEXT_CHARS, empty=True),
    "started_at": timestamp,
    "ended_at": timestamp,
    "at": timestamp,
    "planned_s": seconds,
    "actual_s": seconds,
    "end_reason": lambda k, v: choice(k, v, END_REASONS),
    "continues": whole,
    "from_state": lambda k, v: choice(k, v, STATES),
    "to_state": lambda k, v: choice(k, v, STATES),
}

# A lamp state: the lamp JSON of the API plus node and ends_at. Keys not named here are dropped.
STATE_FIELDS: dict[str, Callable[[str, Any], object]] = {
    "id": text,
    "node": text,
    "name": text,
    "state": lambda k, v: choice(k, v, STATES),
    "relay_on": flag,
    "feedback_on": flag,
    "remaining_s": seconds,
    "planned_s": seconds,
    "cooldown_remaining_s": seconds,
    "continue_left_s": seconds,
    "extend_left_s": seconds,
    "max_minutes": lambda k, v: seconds(k, v, high=MAX_DURATION_S / 60),
    "default_minutes": lambda k, v: seconds(k, v, high=MAX_DURATION_S / 60),
    "session_id": whole,
    "continues": whole,
    "user": text,
    "fault_reason": lambda k, v: text(k, v, chars=TEXT_CHARS, empty=True),
    "ends_at": timestamp,
}
MAX_PRESETS = 20


def check_state(node: str, lamp_id: str, view) -> dict:
    """The lamp state to keep for the fleet page from a retained state message, or BadField."""
    if not isinstance(view, dict):
        raise BadField("a lamp state must be a JSON object")
    if view.get("state") is None:
        raise BadField("a lamp state without 'state'")
    out: dict = {}
    for key, check in STATE_FIELDS.items():
        value = view.get(key)
        out[key] = None if value is None else check(key, value)
    if out["id"] not in (None, lamp_id) or out["node"] not in (None, node):
        raise BadField(
            f"the state names lamp {_shown(out['id'])} of node {_shown(out['node'])} "
            f"but came on {lamp_id!r} of {node!r}"
        )
    presets = view.get("presets") or []
    if not isinstance(presets, list) or len(presets) > MAX_PRESETS:
        raise BadField(f"'presets' must be a list of at most {MAX_PRESETS} numbers")
    out["presets"] = [seconds("presets", p, high=MAX_DURATION_S / 60) for p in presets]
    out["id"] = lamp_id
    return out


def check_status(payload: bytes) -> str:
    """A node's status message: online or offline."""
    try:
        word = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadField("a status must be online or offline, got bytes that are not UTF-8") from None
    return choice("status", word, STATUSES)

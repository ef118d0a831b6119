"""Why the controller refused an action: one sentence and a code slug; web/ maps codes to HTTP statuses."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lampctl.core.safety import is_duration


class Refused(Exception):
    """An action the lamp's state, the request or the hardware forbids; str() is one sentence."""

    code = "conflict"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


class UnknownLamp(Refused):
    code = "unknown-lamp"


class BadDuration(Refused):
    code = "bad-duration"


class Unavailable(Refused):
    code = "firmware-unavailable"


def check_seconds(seconds: object) -> float:
    """A requested duration as float seconds, or BadDuration with one sentence (the controller's own guard)."""
    return duration_from({"seconds": seconds})


def duration_from(body: Mapping[str, Any]) -> float:
    """Seconds from {"minutes": n} or {"seconds": n}: the one rule for a duration a request asks for (API, MQTT)."""
    keys = [k for k in ("minutes", "seconds") if k in body]
    if len(keys) != 1:
        raise BadDuration('Send exactly one of "minutes" or "seconds", e.g. {"minutes": 10}.')
    value = body[keys[0]]
    if not is_duration(value):
        raise BadDuration(f'"{keys[0]}" must be a number greater than 0, got {shown(value)}.')
    try:
        seconds = float(value) * (60 if keys[0] == "minutes" else 1)
    except OverflowError:  # an integer of hundreds of digits
        seconds = math.inf
    if not math.isfinite(seconds):
        raise BadDuration(f'"{keys[0]}" is far longer than any lamp\'s limit.', "too-long")
    return seconds


def shown(value: object, limit: int = 40) -> str:
    """A value a request sent, short enough for a one-sentence error (never the repr of a deep structure)."""
    if value is None or isinstance(value, (bool, float)):
        return str(value)
    if isinstance(value, int):
        # str() of an int past 4,300 digits raises; the digit count is enough to say what was wrong.
        return str(value)[:limit] if value.bit_length() < 130 else f"a number of {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, str):
        return repr(value[:limit])
    return f"a JSON {'object' if isinstance(value, dict) else 'array' if isinstance(value, list) else 'value'}"


def backstop_refusal(exc: Exception, what: str) -> Refused:
    """The backstop's own Refused (refused, no answer) keeps its class and code; anything else is unavailable."""
    detail = str(exc).rstrip(".")
    if isinstance(exc, Refused):
        return type(exc)(f"{what}: {detail[:1].lower()}{detail[1:]}.", exc.code)
    return Unavailable(f"{what}: the safety microcontroller did not accept it ({detail}).")

"""Why the controller refused an action: one sentence and a code slug; web/ maps codes to HTTP statuses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lampctl.core.safety import is_duration, s3_allows


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


# What a duration may be counted in, and its seconds.
UNIT_S = {"seconds": 1, "minutes": 60, "days": 86400}


def check_duration(value: object, name: str, *, unit: str = "seconds", most: tuple[float, str] | None = None) -> float:
    """The one check of a duration anyone asks for (API, MQTT, the command line, the controller).

    `value`, counted in `unit`, as float seconds: a finite number greater than 0 (never a
    boolean or a string), at most most[0] seconds when a limit is given (most[1] words it).
    Else BadDuration with the one sentence every path shares: "`name` must be a number of
    `unit` greater than 0[ and at most ...], got `value`." A limit passed, or a number too
    large to count in seconds, is code too-long.
    """
    span = f"a number of {unit} greater than 0" + (f" and at most {most[1]}" if most else "")
    if not is_duration(value):
        raise BadDuration(f"{name} must be {span}, got {_count(value)}.")
    try:
        seconds = float(value) * UNIT_S[unit]
    except OverflowError:  # an integer of hundreds of digits
        seconds = math.inf
    if not math.isfinite(seconds):
        raise BadDuration(f"{name} must be {span}, got {_count(value)}, far longer than any limit.", "too-long")
    if most is not None and not s3_allows(seconds, most[0]):
        got = fmt_s(seconds) if unit == "seconds" else _count(value)  # "31 min", not 1860
        raise BadDuration(f"{name} must be {span}, got {got}.", "too-long")
    return seconds


def _count(value: object) -> str:
    """A value as a sentence shows it: 1860 rather than 1860.0, never hundreds of digits (shown)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return shown(value)


def duration_from(body: Mapping[str, Any]) -> float:
    """Seconds from {"minutes": n} or {"seconds": n}: the one rule for a duration a request asks for (API, MQTT)."""
    keys = [k for k in ("minutes", "seconds") if k in body]
    if len(keys) != 1:
        raise BadDuration('Send exactly one of "minutes" or "seconds", e.g. {"minutes": 10}.')
    return check_duration(body[keys[0]], f'"{keys[0]}"', unit=keys[0])


def shown(value: object, limit: int = 40) -> str:
    """A value a request sent, short enough for a one-sentence error (never the repr of a deep structure)."""
    if value is None or isinstance(value, (bool, float)):
        return str(value)
    if isinstance(value, int):
        # str() of an int past 4,300 digits raises; the digit count is enough to say what was wrong.
        if value.bit_length() < 130:
            return str(value)[:limit]
        digits = int(value.bit_length() * 0.30103)  # the count, or one short of it
        return f"a number of {digits + (abs(value) >= 10**digits)} digits"
    if isinstance(value, str):
        return repr(value[:limit])
    return f"a JSON {'object' if isinstance(value, dict) else 'array' if isinstance(value, list) else 'value'}"


def backstop_refusal(exc: Exception, what: str) -> Refused:
    """The backstop's own Refused (refused, no answer) keeps its class and code; anything else is unavailable."""
    detail = str(exc).rstrip(".")
    if isinstance(exc, Refused):
        return type(exc)(f"{what}: {detail[:1].lower()}{detail[1:]}.", exc.code)
    return Unavailable(f"{what}: the safety microcontroller did not accept it ({detail}).")


# Past this a duration is only "over 100 h": a sentence never carries a number of 300 digits.
FMT_LIMIT_S = 100 * 3600


def fmt_s(seconds: float) -> str:
    """ "20 min", "4 min 57 s", "3 s": a rounded "5.0 min" would promise time that is not there."""
    if seconds > FMT_LIMIT_S:
        return "over 100 h"
    if seconds < 60:
        return f"{seconds:g} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def fmt_min(minutes: float) -> str:
    return fmt_s(minutes * 60)

"""Why the controller refused an action: one sentence and a code slug; web/ maps codes to HTTP statuses."""
from __future__ import annotations

from lampctl.safety import is_duration


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


def check_seconds(seconds) -> float:
    """A requested duration as float seconds, or BadDuration with one sentence."""
    if not is_duration(seconds):
        raise BadDuration(f"A duration must be a number of seconds greater than 0, got {seconds!r}.")
    try:
        return float(seconds)
    except OverflowError:  # an int with hundreds of digits
        raise BadDuration("That duration is far longer than any lamp's limit.", "too-long") from None


def backstop_refusal(exc: Exception, what: str) -> Refused:
    """The backstop's own Refused (refused, no answer) keeps its class and code; anything else is unavailable."""
    detail = str(exc).rstrip(".")
    if isinstance(exc, Refused):
        return type(exc)(f"{what}: {detail[:1].lower()}{detail[1:]}.", exc.code)
    return Unavailable(f"{what}: the safety microcontroller did not accept it ({detail}).")

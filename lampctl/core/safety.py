"""The safety rules that are pure arithmetic or process wiring, each named for its invariant."""

from __future__ import annotations

import math
from typing import TypeGuard

# The longest timer on commercial clinic IR lamps; no config may exceed it (S3).
HARD_CEILING_MINUTES = 60
# Backstop on the microcontroller: planned duration x 1.10 + grace (S7), as tanning
# units keep a second timer at 110 %.
S7_BACKSTOP_FACTOR = 1.10


def is_duration(value: object) -> TypeGuard[int | float]:
    """A finite number greater than 0 (and not a boolean, which JSON and Python count as numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # math.isfinite(int) converts to float, which overflows for an int of hundreds of digits.
    return value > 0 and (isinstance(value, int) or math.isfinite(value))


def s3_allows(total_s: float, max_s: float) -> bool:
    """S3: a session, extensions included, never exceeds the lamp's max_minutes."""
    # A microsecond of float slack so "60 min" built from 12 x 5 min is allowed.
    return total_s <= max_s + 1e-6


def s3_left_s(used_s: float, max_s: float) -> float:
    """S3: a patient's budget, what may still be given of the lamp's max_minutes after `used_s`.

    `used_s` is the time the patient already has: the sessions a start continues (S18) and,
    while on, the running session's plan. Never below 0.
    """
    return max(0.0, max_s - used_s)


def s7_backstop_ms(planned_s: float, grace_s: float) -> int:
    """S7: how long the microcontroller may hold the lamp on by itself."""
    # Round away float noise (840 x 1.1 = 924.0000000000001) before rounding up to whole ms.
    return int(math.ceil(round((planned_s * S7_BACKSTOP_FACTOR + grace_s) * 1000, 6)))


def s19_overtaken(arrived: float, stopped_at: float | None) -> bool:
    """S19: a start or extension that arrived before the lamp's latest Stop is never carried out.

    Both times are arrivals on the monotonic clock, whatever order the requests reach the
    controller in: a Stop served ahead of a queued start still cancels it.
    """
    return stopped_at is not None and arrived < stopped_at


def s7_arm_holds(now: float, sent: float, ms: int, cut: float | None) -> bool:
    """S7: is the firmware surely still holding the ARM asked for at `sent` (monotonic)?

    The firmware's own timer started when the ARM reached it, no sooner than `sent`, so it
    runs at least until sent + ms; `cut` is when its watchdog surely cut every lamp after
    `sent` (the host's silence past the watchdog), or None. A host held up between the
    ARM's reply and its relay (a frozen process, a starved thread) must not close its relay
    once either has passed: the lamp would be on with no second channel behind it.
    """
    return now < sent + ms / 1000 and (cut is None or now < cut)

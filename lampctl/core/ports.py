"""What the controller is handed: relay hardware, the firmware backstop and a clock, as Protocols."""
from __future__ import annotations

import threading
from typing import Protocol


class Hardware(Protocol):
    """Relay outputs; set() and all_off() are thread-safe and idempotent, so a Stop calls them unlocked."""

    def set(self, index: int, on: bool) -> None: ...
    def all_off(self) -> None: ...
    def is_on(self, index: int) -> bool: ...
    def feedback_on(self, index: int) -> bool | None: ...
    def beep(self, index: int, pattern: str) -> None: ...  # "end", "warn", "fault"; never blocks
    @property
    def estop_pressed(self) -> bool: ...


class Backstop(Protocol):
    """The independent second channel (S7).

    arm() blocks and may raise. release() never blocks (a queue put) and its OFF reaches
    the firmware after every ARM asked for before it, even one whose arm() gave up (S12).
    cut_at() is lock-free and in memory: the monotonic time by which the firmware has
    surely cut that lamp (its armed deadline, or the host's silence past the watchdog
    since `since`), or None (S13).
    """

    grace_s: float

    def arm(self, index: int, ms: int) -> None: ...
    def release(self, index: int) -> None: ...
    def cut_at(self, index: int, since: float) -> float | None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self): ...
    def wait(self, condition: threading.Condition, timeout: float | None) -> None: ...
